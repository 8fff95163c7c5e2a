"""Homogeneous reconstruction with known poses, end to end on a particle set.

Two methods share one interface: ``"backprojection"`` (direct Fourier
inversion with CTF-Wiener filter, :mod:`cryoviz.backprojection`) and
``"sgd"`` (voxel map fitted through the differentiable forward model,
:mod:`cryoviz.sgd_fit`). Both work on gold-standard half sets (RELION's
``rlnRandomSubset`` when present, else a seeded random split) and report the
half-map FSC and its 0.143 resolution.

Long work is a generator (:func:`iter_reconstruct`); the CLI, the plugin and
the notebooks show its progress their own way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cryoviz.backprojection import FourierAccumulator, add_to_half_sets, gold_standard_maps
from cryoviz.errors import InputError
from cryoviz.io.mrc import atomic_output, write_volume
from cryoviz.io.particles import ImageSource, ParticleSet
from cryoviz.metrics.fsc import FSCCurve, fsc
from cryoviz.sgd_fit import iter_fit_voxel_sgd

__all__ = [
    "ReconstructionProgress",
    "ReconstructionResult",
    "iter_reconstruct",
    "reconstruct",
    "write_reconstruction",
    "half_sets",
]

METHODS = ("backprojection", "sgd")


@dataclass(frozen=True)
class ReconstructionResult:
    """Maps and gold-standard FSC of a reconstruction.

    Attributes
    ----------
    full_map
        ``(D, D, D)`` float32 map from all particles.
    half_maps
        ``(2, D, D, D)`` float32 maps of the two half sets.
    half_fsc
        FSC between the half maps.
    pixel_size_angstrom
        Voxel size in Å.
    n_particles
        Particles used.
    method
        ``"backprojection"`` or ``"sgd"``.
    seconds
        Wall time.
    """

    full_map: torch.Tensor
    half_maps: torch.Tensor
    half_fsc: FSCCurve
    pixel_size_angstrom: float
    n_particles: int
    method: str
    seconds: float

    @property
    def resolution_angstrom(self) -> float:
        """Gold-standard resolution (half-map FSC = 0.143), Å."""
        return self.half_fsc.resolution_angstrom(self.pixel_size_angstrom, 0.143)


@dataclass(frozen=True)
class ReconstructionProgress:
    """Progress: ``done`` of ``total`` work units of ``stage``; ``result`` at the end."""

    stage: str
    done: int
    total: int
    result: ReconstructionResult | None = None


def half_sets(particles: ParticleSet, seed: int = 0) -> np.ndarray:
    """``(N,)`` 0 / 1 half assignment: the file's when given, else a seeded random split."""
    if particles.half_set is not None:
        return np.asarray(particles.half_set, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return rng.permutation(len(particles)) % 2


def _check(particles: ParticleSet, method: str) -> None:
    if method not in METHODS:
        raise InputError(None, "method", f"one of {', '.join(METHODS)}", method)
    if particles.rotations is None:
        raise InputError(particles.source_path, "poses",
                         "rotations for every particle (reconstruction needs known poses)",
                         "none")


def _tensor(array: np.ndarray | None) -> torch.Tensor | None:
    return None if array is None else torch.as_tensor(np.asarray(array), dtype=torch.float32)


def _iter_backprojection(
    particles: ParticleSet, halves: np.ndarray, batch_size: int, device: str
) -> Iterator[ReconstructionProgress]:
    start_time = time.perf_counter()
    source = ImageSource(particles)
    n = len(particles)
    rotations = _tensor(particles.rotations)
    shifts = _tensor(particles.shifts_angstrom)
    accs = [FourierAccumulator(particles.box_size, device=device) for _ in range(2)]
    for start in range(0, n, batch_size):
        index = np.arange(start, min(n, start + batch_size))
        add_to_half_sets(accs, source.images(index), index, halves, rotations,
                         particles.pixel_size_angstrom, shifts, particles.ctf)
        yield ReconstructionProgress("backprojection", int(index[-1]) + 1, n)
    full_map, half_maps, half_curve = gold_standard_maps(accs)
    result = ReconstructionResult(
        full_map=full_map.cpu(),
        half_maps=half_maps.cpu(),
        half_fsc=half_curve,
        pixel_size_angstrom=particles.pixel_size_angstrom,
        n_particles=n,
        method="backprojection",
        seconds=time.perf_counter() - start_time,
    )
    yield ReconstructionProgress("done", n, n, result)


def _iter_sgd(
    particles: ParticleSet, halves: np.ndarray, batch_size: int, device: str, epochs: int,
    seed: int,
) -> Iterator[ReconstructionProgress]:
    start_time = time.perf_counter()
    source = ImageSource(particles)
    progress = None
    for progress in iter_fit_voxel_sgd(
        source.images, _tensor(particles.rotations), particles.pixel_size_angstrom, halves,
        _tensor(particles.shifts_angstrom), particles.ctf, epochs=epochs,
        batch_size=batch_size, seed=seed, device=device,
    ):
        yield ReconstructionProgress("sgd epoch", progress.epoch, epochs)
    half_maps = progress.half_maps
    result = ReconstructionResult(
        full_map=half_maps.mean(dim=0),
        half_maps=half_maps,
        half_fsc=fsc(half_maps[0], half_maps[1]),
        pixel_size_angstrom=particles.pixel_size_angstrom,
        n_particles=len(particles),
        method="sgd",
        seconds=time.perf_counter() - start_time,
    )
    yield ReconstructionProgress("done", epochs, epochs, result)


def iter_reconstruct(
    particles: ParticleSet,
    method: str = "backprojection",
    batch_size: int = 256,
    epochs: int = 10,
    seed: int = 0,
    device: str = "cpu",
) -> Iterator[ReconstructionProgress]:
    """Reconstruct a map from particles with known poses, yielding progress.

    Parameters
    ----------
    particles
        Particle set with rotations (and optionally shifts and CTF).
    method
        ``"backprojection"`` or ``"sgd"``.
    batch_size
        Images per batch.
    epochs
        Epochs of the SGD fit (ignored by backprojection).
    seed
        Seed of the random half split (when the file has none) and of SGD.
    device
        Torch device.

    Yields
    ------
    ReconstructionProgress
        The last one carries the :class:`ReconstructionResult`.
    """
    _check(particles, method)
    halves = half_sets(particles, seed)
    if method == "backprojection":
        yield from _iter_backprojection(particles, halves, batch_size, device)
    else:
        yield from _iter_sgd(particles, halves, batch_size, device, epochs, seed)


def reconstruct(particles: ParticleSet, **kwargs) -> ReconstructionResult:
    """Run :func:`iter_reconstruct` to the end and return its result."""
    progress = list(iter_reconstruct(particles, **kwargs))
    return progress[-1].result


def write_reconstruction(
    result: ReconstructionResult, output_dir: str | Path, truth: torch.Tensor | None = None
) -> dict:
    """Write ``map.mrc``, ``half_map_1.mrc``, ``half_map_2.mrc`` and ``metrics.json``.

    Parameters
    ----------
    result
        The reconstruction.
    output_dir
        Folder (created).
    truth
        Optional ``(D, D, D)`` true map: adds the FSC against it and its 0.5
        resolution to the metrics.

    Returns
    -------
    dict
        The metrics written.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    apix = result.pixel_size_angstrom
    write_volume(out / "map.mrc", result.full_map.numpy(), apix)
    for k in (0, 1):
        write_volume(out / f"half_map_{k + 1}.mrc", result.half_maps[k].numpy(), apix)
    metrics = {
        "method": result.method,
        "n_particles": result.n_particles,
        "pixel_size_angstrom": apix,
        "box_size": int(result.full_map.shape[-1]),
        "seconds": result.seconds,
        "resolution_half_maps_0143_angstrom": result.resolution_angstrom,
        "half_map_fsc": result.half_fsc.to_dict(),
    }
    if truth is not None:
        curve = fsc(result.full_map, truth.to(result.full_map.dtype))
        metrics["resolution_vs_truth_05_angstrom"] = curve.resolution_angstrom(apix, 0.5)
        metrics["resolution_vs_truth_05_px"] = curve.resolution_px(0.5)
        metrics["fsc_auc_vs_truth"] = curve.auc()
        metrics["fsc_vs_truth"] = curve.to_dict()
    with atomic_output(out / "metrics.json") as tmp:
        Path(tmp).write_text(json.dumps(metrics, indent=2))
    return metrics
