"""Array preparation for figures (numpy only): map downsampling, iso levels, run contents.

Nothing here imports plotly or ipywidgets; the figure builders in
:mod:`cryoviz.viz.figures` and the report use these helpers.
``viewing_directions`` (``R^T e_z``) is :func:`cryoviz.analysis.inspect.viewing_directions`.
"""

from __future__ import annotations

import json
import math
import tomllib
from os import PathLike
from pathlib import Path

import numpy as np

from cryoviz.analysis.inspect import viewing_directions
from cryoviz.errors import InputError

__all__ = [
    "downsample_volume", "iso_level", "central_slices", "viewing_directions",
    "direction_angles_deg", "read_log", "signal_to_noise", "dataset_truth", "run_source",
]


def downsample_volume(volume, max_size: int = 32) -> tuple[np.ndarray, int]:
    """Block-average a ``(D, D, D)`` map so that no side exceeds ``max_size``.

    Parameters
    ----------
    volume
        ``(D, D, D)`` array (numpy or torch).
    max_size
        Largest side of the result.

    Returns
    -------
    small : np.ndarray
        ``(ceil(D / f),) * 3`` float32 map; the box is zero-padded at its end to a
        multiple of ``f`` before averaging ``f^3`` blocks.
    factor : int
        ``f``; the voxel size of ``small`` is ``f`` times the input's.
    """
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3:
        raise InputError(None, "volume", "a (D, D, D) map", got=f"shape {vol.shape}")
    if max_size < 2:
        raise InputError(None, "max_size", "at least 2", got=max_size)
    factor = max(1, math.ceil(max(vol.shape) / max_size))
    if factor == 1:
        return vol, 1
    padded_shape = [math.ceil(s / factor) * factor for s in vol.shape]
    padded = np.zeros(padded_shape, dtype=np.float32)
    padded[: vol.shape[0], : vol.shape[1], : vol.shape[2]] = vol
    d0, d1, d2 = (s // factor for s in padded_shape)
    blocks = padded.reshape(d0, factor, d1, factor, d2, factor)
    return blocks.mean(axis=(1, 3, 5)), factor


def iso_level(volume, enclosed_fraction: float = 0.02) -> float:
    """Density threshold that encloses the top ``enclosed_fraction`` of the voxels.

    A protein of 20-30 kDa fills a few percent of a box twice its diameter, so the
    default shows the molecule and not the noise around it.
    """
    if not 0.0 < enclosed_fraction < 1.0:
        raise InputError(None, "enclosed_fraction", "a number in (0, 1)", got=enclosed_fraction)
    return float(np.quantile(np.asarray(volume, dtype=np.float64), 1.0 - enclosed_fraction))


def central_slices(volume) -> dict[str, np.ndarray]:
    """The three central sections of a ``[z, y, x]`` map, each ``(D, D)``.

    Keys ``"xy"`` (``volume[D//2]``), ``"xz"`` (``volume[:, D//2]``) and
    ``"yz"`` (``volume[:, :, D//2]``).
    """
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3:
        raise InputError(None, "volume", "a (D, D, D) map", got=f"shape {vol.shape}")
    c = [s // 2 for s in vol.shape]
    return {"xy": vol[c[0]], "xz": vol[:, c[1]], "yz": vol[:, :, c[2]]}


def direction_angles_deg(directions) -> tuple[np.ndarray, np.ndarray]:
    """Azimuth in ``(-180, 180]`` and elevation in ``[-90, 90]`` of ``(N, 3)`` directions."""
    d = np.asarray(directions, dtype=np.float64)
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    azimuth = np.degrees(np.arctan2(d[:, 1], d[:, 0]))
    elevation = np.degrees(np.arcsin(np.clip(d[:, 2], -1.0, 1.0)))
    return azimuth, elevation


def signal_to_noise(clean_images, noise_sigma: float) -> np.ndarray:
    """Per-image SNR ``(N,)``: pixel variance of noise-free images ``(N, D, D)`` / sigma^2.

    This is the simulator's definition of SNR applied image by image (the
    signal varies with the view and the CTF).
    """
    clean = np.asarray(clean_images, dtype=np.float64)
    if clean.ndim != 3:
        raise InputError(None, "clean_images", "(N, D, D) images", got=f"shape {clean.shape}")
    if not noise_sigma > 0:
        raise InputError(None, "noise_sigma", "> 0", got=noise_sigma)
    return clean.reshape(len(clean), -1).var(axis=1) / float(noise_sigma) ** 2


def read_log(run_dir: str | PathLike) -> dict[str, np.ndarray]:
    """Per-epoch columns of ``RUN/log.jsonl`` (``epoch``, ``loss``, ``kl``, ``kl_weight``,
    ``seconds``).

    Returns an empty dict when the run has no log.
    """
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        return {}
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise InputError(path, f"line {number}", "a JSON object", got=line[:60]) from err
    keys = sorted({k for r in records for k in r if isinstance(r[k], int | float)})
    return {k: np.asarray([r.get(k, np.nan) for r in records], dtype=np.float64) for k in keys}


def run_source(run_dir: str | PathLike) -> Path | None:
    """The training particles' file recorded in ``RUN/config.toml``, if it exists.

    A relative path (the run was started with one) is looked up from the current
    folder, then from the run folder's parent. ``None`` when absent or not found.
    """
    folder = Path(run_dir)
    path = folder / "config.toml"
    if not path.is_file():
        return None
    with open(path, "rb") as fh:
        source = tomllib.load(fh).get("data", {}).get("source")
    if not source:
        return None
    candidates = [Path(source)]
    if not Path(source).is_absolute():
        candidates.append(folder.resolve().parent / source)
    return next((c for c in candidates if c.is_file()), None)


def dataset_truth(particles_path: str | PathLike | None) -> dict[str, np.ndarray] | None:
    """``truth/truth.npz`` next to a simulated dataset's particle file, or None."""
    if particles_path is None:
        return None
    truth = Path(particles_path).parent / "truth" / "truth.npz"
    if not truth.is_file():
        return None
    with np.load(truth) as npz:
        return {k: npz[k] for k in npz.files}
