"""napari readers: MRC volumes, ``.mrcs`` stacks, STAR / ``.cs`` particle sets, run folders.

Each reader returns napari layer data tuples ``(data, kwargs, layer_type)``.
Volumes get ``scale`` = voxel size in Å (``[z, y, x]``), stacks get the
pixel size on the image axes; stacks are read lazily (dask), never whole.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import dask
import dask.array as da
import numpy as np

from cryoviz import api

from ._session import RunSession

__all__ = ["get_reader", "read_volume_layers", "read_stack_layers", "read_run_layers",
           "read_algorithm_run_layers"]

VOLUME_SUFFIXES = (".mrc", ".map")
PARTICLE_SUFFIXES = (".star", ".cs")
STACK_SUFFIXES = (".mrcs",)
CHUNK_IMAGES = 64

LayerData = tuple[object, dict, str]


def _is_run(path: Path) -> bool:
    return path.is_dir() and (path / "config.toml").is_file()


def _is_algorithm_run(path: Path) -> bool:
    """A run of a recipe with its own algorithm (``cryogan``, ``relion-refine``, ...)."""
    return (path.is_dir() and not (path / "config.toml").is_file()
            and (path / "metrics.json").is_file() and (path / "volumes").is_dir())


def get_reader(path: str | list[str]) -> Callable[[str], list[LayerData]] | None:
    """The reader for ``path``, or None when cryoviz cannot read it (napari tries others)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if _is_run(p):
        return read_run_layers
    if _is_algorithm_run(p):
        return read_algorithm_run_layers
    suffix = p.suffix.lower()
    if suffix in VOLUME_SUFFIXES and p.is_file():
        return read_volume_layers
    if suffix in STACK_SUFFIXES + PARTICLE_SUFFIXES and p.is_file():
        return read_stack_layers
    return None


def _path_of(path: str | list[str]) -> Path:
    return Path(path[0] if isinstance(path, list) else path)


def volume_layer(volume: np.ndarray, voxel_size_angstrom: float | None, name: str,
                 **extra) -> LayerData:
    """An image layer tuple for a ``(D, D, D)`` map with its voxel size as scale."""
    scale = 1.0 if voxel_size_angstrom is None else float(voxel_size_angstrom)
    meta = {"voxel_size_angstrom": voxel_size_angstrom, **extra.pop("metadata", {})}
    kwargs = {"name": name, "scale": (scale, scale, scale), "metadata": meta,
              "colormap": "gray", **extra}
    return (np.asarray(volume, dtype=np.float32), kwargs, "image")


def read_volume_layers(path: str | list[str]) -> list[LayerData]:
    """One image layer for an ``.mrc`` / ``.map`` volume (scale = voxel size in Å)."""
    p = _path_of(path)
    volume, voxel = api.read_volume(p)
    return [volume_layer(volume, voxel, p.stem, metadata={"path": str(p)})]


def lazy_stack(particles: api.ParticleSet) -> da.Array:
    """``(N, D, D)`` float32 dask array of a particle set's images (read in chunks)."""
    n, box = len(particles), particles.box_size

    def read(start: int, stop: int) -> np.ndarray:
        with api.ImageSource(particles) as source:
            return source.images(np.arange(start, stop)).numpy().astype(np.float32)

    chunks = [da.from_delayed(dask.delayed(read)(s, min(n, s + CHUNK_IMAGES)),
                              shape=(min(n, s + CHUNK_IMAGES) - s, box, box), dtype=np.float32)
              for s in range(0, n, CHUNK_IMAGES)]
    return da.concatenate(chunks, axis=0)


def read_stack_layers(path: str | list[str]) -> list[LayerData]:
    """The particle images of an ``.mrcs`` stack or a ``.star`` / ``.cs`` set (lazy)."""
    p = _path_of(path)
    particles = api.load_particles(p)
    apix = particles.pixel_size_angstrom
    meta = {"path": str(p), "particles": particles, "pixel_size_angstrom": apix,
            "n_particles": len(particles)}
    kwargs = {"name": f"{p.stem} particles", "scale": (1.0, apix, apix), "metadata": meta,
              "colormap": "gray"}
    return [(lazy_stack(particles), kwargs, "image")]


def read_run_layers(path: str | list[str]) -> list[LayerData]:
    """A run folder: its map(s) with voxel size; latents, poses and log in the metadata.

    Homogeneous runs show ``volumes/*.mrc``; latent runs the map at the median
    latent. The layer's metadata holds ``run_path``, ``latents`` ``(N, L)`` (or
    None), ``pose_posterior`` (or None), ``log`` (per-epoch records) and
    ``metrics`` (``metrics.json``, when present).
    """
    p = _path_of(path)
    session = RunSession(p)
    metrics_path = p / "metrics.json"
    meta = {
        "run_path": str(p),
        "latents": session.run.mu,
        "pose_posterior": session.posterior,
        "log": session.loss_log(),
        "metrics": json.loads(metrics_path.read_text()) if metrics_path.is_file() else None,
    }
    maps = sorted((p / "volumes").glob("*.mrc")) if session.latent_dim == 0 else []
    if maps:
        layers = []
        for m in maps:
            vol, voxel = api.read_volume(m)
            layers.append(volume_layer(vol, voxel, f"{p.name} {m.stem}", metadata=dict(meta)))
        return layers
    volume = session.representative_volume()
    return [volume_layer(volume, session.voxel_size(), f"{p.name} volume", metadata=meta)]


_TRAILING_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?$")


def _series_key(path: Path) -> tuple[float, str]:
    """Order of a map in a series: the number its name ends with (``z_-2.0``: -2.0)."""
    found = _TRAILING_NUMBER.search(path.stem)
    return (float(found.group()) if found else float("inf"), path.stem)


def read_algorithm_run_layers(path: str | list[str]) -> list[LayerData]:
    """A run folder of a recipe with its own algorithm (no ``config.toml``).

    Each ``volumes/*.mrc`` is one layer (scale = voxel size); each folder of maps
    in ``volumes/`` (``multi-cryogan``'s traversal ``component_k/z_*.mrc``) is one
    4-D layer on napari's time axis, ordered by the number its file names end
    with. Metadata: ``run_path``, ``metrics`` (``metrics.json``) and
    ``pose_posterior`` (``poses.npz``, when the recipe wrote one; else None).
    """
    p = _path_of(path)
    meta = {"run_path": str(p), "metrics": json.loads((p / "metrics.json").read_text()),
            "pose_posterior": (api.read_pose_posterior(p / "poses.npz")
                               if (p / "poses.npz").is_file() else None)}
    layers = []
    for m in sorted((p / "volumes").glob("*.mrc")):
        vol, voxel = api.read_volume(m)
        layers.append(volume_layer(vol, voxel, f"{p.name} {m.stem}", metadata=dict(meta)))
    for folder in sorted(d for d in (p / "volumes").iterdir() if d.is_dir()):
        files = sorted(folder.glob("*.mrc"), key=_series_key)
        if not files:
            continue
        maps = [api.read_volume(f) for f in files]
        voxel = maps[0][1]
        data, kwargs, kind = volume_layer(np.stack([v for v, _ in maps]), voxel,
                                          f"{p.name} {folder.name} series", metadata={
                                              **meta, "series": [f.stem for f in files]})
        kwargs["scale"] = (1.0, *kwargs["scale"])
        layers.append((data, kwargs, kind))
    return layers
