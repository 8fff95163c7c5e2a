"""External tools in the leaderboard: run cryoDRGN on a suite dataset, or import its outputs.

cryoDRGN lives in its own virtual environment (never a cryoviz dependency);
the harness only calls its command line and reads its files:

* ``z.N.pkl``: ``(N, zdim)`` latent means (read with cryoviz's numpy-only
  unpickler, :func:`cryoviz.io.cryodrgn.read_pickle`);
* maps written by ``cryodrgn eval_vol --zfile``: ``vol_000.mrc``, ``vol_001.mrc`` ... in
  the order of the z file.

To score a run made elsewhere: write the z values of the particles the
conformation task renders (:func:`write_render_zfile`), decode them with
``cryodrgn eval_vol --zfile``, then :func:`import_cryodrgn` the ``z.pkl`` and
the maps (``cryoviz bench import-cryodrgn``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from cryoviz.bench.entries import HETEROGENEOUS_KINDS, BenchEntry, RunContext, _recipe
from cryoviz.bench.measure import Measurement, run_child
from cryoviz.bench.tasks import PER_STATE, RunOutputs, load_truth, render_plan
from cryoviz.errors import InputError
from cryoviz.io.conventions import internal_to_cryodrgn
from cryoviz.io.cryodrgn import (
    ctf_array_from_params,
    read_pickle,
    write_ctf_pkl,
    write_index_pkl,
    write_pose_pkl,
)
from cryoviz.io.mrc import read_volume
from cryoviz.io.particles import load_particles

__all__ = ["CRYODRGN_ENV", "default_cryodrgn", "newest_pickle", "read_z_pkl",
           "write_render_zfile", "import_cryodrgn", "cryodrgn_entry"]

#: Environment variable naming the cryodrgn executable.
CRYODRGN_ENV = "CRYOVIZ_CRYODRGN"


def default_cryodrgn() -> str | None:
    """``$CRYOVIZ_CRYODRGN``, else ``/tmp/cryodrgn-venv/bin/cryodrgn`` if it exists, else None."""
    given = os.environ.get(CRYODRGN_ENV)
    if given:
        return given
    fallback = Path("/tmp/cryodrgn-venv/bin/cryodrgn")
    return str(fallback) if fallback.is_file() else None


def newest_pickle(folder: str | Path, stem: str) -> Path:
    """``stem.pkl`` if present, else ``stem.N.pkl`` with the highest ``N`` (cryoDRGN's epochs)."""
    folder = Path(folder)
    plain = folder / f"{stem}.pkl"
    if plain.is_file():
        return plain
    found = [(int(m.group(1)), p) for p in folder.glob(f"{stem}.*.pkl")
             if (m := re.fullmatch(rf"{re.escape(stem)}\.(\d+)\.pkl", p.name))]
    if not found:
        raise InputError(folder, f"{stem}.pkl", f"a cryoDRGN {stem} pickle", got="none")
    return max(found)[1]


def read_z_pkl(path: str | Path) -> np.ndarray:
    """``(N, zdim)`` float64 latents from a cryoDRGN ``z.pkl``."""
    z = np.asarray(read_pickle(path), dtype=np.float64)
    if z.ndim == 1:
        z = z[:, None]
    if z.ndim != 2 or not np.isfinite(z).all():
        raise InputError(path, "z", "a finite (N, zdim) array", got=z.shape)
    return z


def write_render_zfile(dataset: str | Path, z, output: str | Path, per_state: int = PER_STATE,
                       seed: int | None = None) -> np.ndarray:
    """Write the z values of the particles the conformation task renders (one per line).

    Parameters
    ----------
    dataset
        The suite dataset folder.
    z
        ``(N, zdim)`` latents of all its particles (file order), or a ``z.pkl`` path.
    output
        Text file for ``cryodrgn eval_vol --zfile``.
    per_state
        Particles per true state (as the harness's ``per_state``).
    seed
        Seed of the plan; default: the dataset's suite seed (as the harness).

    Returns
    -------
    numpy.ndarray
        The rendered particle indices, in the order of the lines.
    """
    from cryoviz.bench.suite import DatasetSpec  # noqa: PLC0415

    latents = read_z_pkl(z) if isinstance(z, (str, Path)) else np.asarray(z, dtype=np.float64)
    if seed is None:
        seed = DatasetSpec.from_name(Path(dataset).name).seed
    render = render_plan(load_truth(dataset), per_state=per_state, seed=seed)
    np.savetxt(output, latents[render])
    return render


def import_cryodrgn(z_pkl: str | Path, volumes: str | Path | list, n_render: int,
                    pixel_size_angstrom: float | None = None) -> RunOutputs:
    """cryoDRGN outputs as :class:`RunOutputs` for the conformation scorer.

    Parameters
    ----------
    z_pkl
        ``z.pkl`` of the run (all particles, file order).
    volumes
        Folder of ``eval_vol --zfile`` maps (``*.mrc``, sorted by name), or the list of
        map paths, in the order of :func:`write_render_zfile`'s lines.
    n_render
        Number of rendered particles expected.
    pixel_size_angstrom
        Voxel size when the maps' headers lack it.
    """
    z = read_z_pkl(z_pkl)
    paths = (sorted(Path(volumes).glob("*.mrc")) if isinstance(volumes, (str, Path))
             else [Path(p) for p in volumes])
    if len(paths) != n_render:
        raise InputError(volumes if isinstance(volumes, (str, Path)) else None, "maps",
                         f"{n_render} maps (one per rendered particle)", got=len(paths))
    if not paths:
        return RunOutputs(z=z, extra={"source": "cryoDRGN (imported)"})
    maps, apix = [], pixel_size_angstrom
    for p in paths:
        vol, voxel = read_volume(p)
        maps.append(torch.as_tensor(np.ascontiguousarray(vol), dtype=torch.float32))
        apix = apix or voxel
    if not apix:
        raise InputError(paths[0], "voxel size", "a voxel size in the header or given",
                         got="none")
    return RunOutputs(volumes=torch.stack(maps), pixel_size_angstrom=float(apix), z=z,
                      extra={"source": "cryoDRGN (imported)"})


def _train_cmd(exe: str, stack: Path, pose: Path, ctf: Path, out: Path, recipe,
               index: Path | None = None) -> list[str]:
    """``cryodrgn train_vae`` with the sizes of cryoviz's ``recipe`` (a :class:`Recipe`)."""
    cmd = [exe, "train_vae", str(stack), "--poses", str(pose), "--ctf", str(ctf),
           "-o", str(out), "--zdim", str(recipe.zdim), "-n", str(recipe.epochs),
           "-b", str(recipe.batch_size), "--seed", str(recipe.seed),
           "--encode-mode", "mlp", "--enc-layers", "1", "--enc-dim", str(recipe.enc_width),
           "--dec-layers", str(recipe.depth), "--dec-dim", str(recipe.width),
           "--domain", recipe.domain, "--no-analysis"]
    if index is not None:
        cmd += ["--ind", str(index)]
    return cmd


def cryodrgn_entry(executable: str, name: str = "cryodrgn-4.3.1") -> BenchEntry:
    """A conformation entry that runs cryoDRGN ``train_vae`` + ``eval_vol`` (+ ``eval_images``).

    The network takes its sizes from cryoviz's ``cryodrgn`` recipe at the same
    suite size (:func:`cryoviz.bench.entries._recipe`: decoder width and
    residual layers, encoder width, zdim, epochs, batch size, seed, output domain
    (``fourier``, cryoDRGN's default, since 2026-12-07; ``hartley`` before); MLP
    encoder with ``--enc-layers 1``). Wall time and peak
    memory are those of the cryoDRGN processes (sum of wall times, largest
    ``ru_maxrss``).
    """

    def run(dataset: Path, output: Path, ctx: RunContext) -> RunOutputs:
        particles = load_particles(dataset / "particles.star", require_poses=True,
                                   require_ctf=True)
        box, apix = particles.box_size, particles.pixel_size_angstrom
        rot, trans = internal_to_cryodrgn(particles.rotations, particles.shifts_angstrom,
                                          box, apix)
        pose, ctf = output / "pose.pkl", output / "ctf.pkl"
        write_pose_pkl(pose, rot, trans)
        write_ctf_pkl(ctf, ctf_array_from_params(particles.ctf, box, apix))
        stack = dataset / "particles.mrcs"
        recipe = _recipe("cryodrgn", ctx, {})
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""} if ctx.device == "cpu" else None
        costs: list[Measurement] = []

        def child(cmd: list[str], log: str) -> None:
            costs.append(run_child(cmd, output / log, env))

        child(_train_cmd(executable, stack, pose, ctf, output / "train", recipe), "train.log")
        z_path = newest_pickle(output / "train", "z")
        zfile = output / "render_z.txt"
        np.savetxt(zfile, read_z_pkl(z_path)[ctx.render])
        child([executable, "eval_vol", str(newest_pickle(output / "train", "weights")), "-c",
               str(output / "train" / "config.yaml"), "--zfile", str(zfile), "-o",
               str(output / "maps"), "--Apix", str(apix)], "eval_vol.log")
        outputs = import_cryodrgn(z_path, output / "maps", len(ctx.render), apix)
        if ctx.halves:
            from cryoviz.reconstruct import half_sets  # noqa: PLC0415

            halves = half_sets(particles, ctx.seed)
            encoded = []
            for h in (0, 1):
                index = output / f"half_{h}_index.pkl"
                write_index_pkl(index, np.flatnonzero(halves == h))
                run_dir = output / f"half_{h}"
                child(_train_cmd(executable, stack, pose, ctf, run_dir, recipe, index),
                      f"half_{h}_train.log")
                z_all = output / f"half_{h}_z_all.pkl"
                child([executable, "eval_images", str(stack),
                       str(newest_pickle(run_dir, "weights")), "-c",
                       str(run_dir / "config.yaml"), "--poses", str(pose), "--ctf", str(ctf),
                       "--out-z", str(z_all), "-o", str(output / f"half_{h}_loss.pkl")],
                      f"half_{h}_eval_images.log")
                encoded.append(read_z_pkl(z_all))
            outputs.half_latents = (encoded[0][halves == 0], encoded[1][halves == 1],
                                    encoded[0], encoded[1])
        outputs.extra = {"source": "cryoDRGN 4.3.1 (run by the harness)",
                         "child_measurement": Measurement(
                             wall_s=sum(c.wall_s for c in costs),
                             peak_rss_mb=max(c.peak_rss_mb for c in costs),
                             method=costs[0].method),
                         "epochs": recipe.epochs, "width": recipe.width,
                         "enc_width": recipe.enc_width, "domain": recipe.domain}
        return outputs

    return BenchEntry(name, "conformation", run, HETEROGENEOUS_KINDS,
                      "cryoDRGN train_vae in its own environment, outputs imported")
