"""What :func:`cryoviz.inference.refine.iter_refine` yields and writes (progress, result, files)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from cryoviz.inference.posterior import PosePosterior, export_poses
from cryoviz.io.mrc import atomic_output, write_volume
from cryoviz.io.particles import ParticleSet
from cryoviz.metrics.fsc import FSCCurve

if TYPE_CHECKING:
    from cryoviz.inference.refine import RefineSettings

__all__ = ["RefineResult", "RefineProgress", "result_of", "progress_of", "write_refine"]


@dataclass(frozen=True)
class RefineResult:
    """Outcome of :func:`iter_refine`.

    Attributes
    ----------
    map
        ``(D, D, D)`` float32 full map.
    half_maps
        ``(2, D, D, D)`` float32.
    half_fsc
        FSC of the half maps.
    posterior
        Per-particle pose summaries.
    sigma2
        ``(D // 2 + 1,)`` noise variance per shell.
    log_likelihoods
        Log evidence summed over particles, per iteration.
    pixel_size_angstrom, particle_ids, seconds, settings
        Bookkeeping.
    """

    map: torch.Tensor
    half_maps: torch.Tensor
    half_fsc: FSCCurve
    posterior: PosePosterior
    sigma2: torch.Tensor
    log_likelihoods: tuple[float, ...]
    pixel_size_angstrom: float
    particle_ids: np.ndarray
    seconds: float
    settings: RefineSettings


@dataclass(frozen=True)
class RefineProgress:
    """State after one iteration of :func:`iter_refine`.

    Attributes
    ----------
    iteration, n_iterations
        1-based iteration and total.
    coarse_order, global_search
        The iteration's coarse grid order and whether it searched globally.
    e_step_resolution_angstrom
        Resolution limit of the iteration's E-step.
    resolution_angstrom
        Half-map FSC 0.143 resolution after the M-step.
    log_likelihood
        Log evidence summed over particles.
    median_angular_change_deg
        Median angle between each particle's best rotation and the previous one
        (``nan`` on the first iteration).
    seconds
        Wall time of the iteration.
    map
        ``(D, D, D)`` float32 full map after the iteration's M-step.
    result
        The :class:`RefineResult` on the last iteration, else ``None``.
    """

    iteration: int
    n_iterations: int
    coarse_order: int
    global_search: bool
    e_step_resolution_angstrom: float
    resolution_angstrom: float
    log_likelihood: float
    median_angular_change_deg: float
    seconds: float
    map: torch.Tensor | None = None
    result: RefineResult | None = None


def result_of(full_map: torch.Tensor, half_maps: torch.Tensor, curve: FSCCurve,
            summaries: dict[str, torch.Tensor], sigma2: torch.Tensor,
            log_likelihoods: list[float], particles: ParticleSet, apix: float,
            seconds: float, settings: RefineSettings) -> RefineResult:
    """The :class:`RefineResult` of a refinement's final state."""
    posterior = PosePosterior(
        particle_ids=np.asarray(particles.particle_ids, dtype=np.int64).copy(),
        **{k: v.numpy().astype(np.float64) for k, v in summaries.items()})
    return RefineResult(
        map=full_map.cpu(), half_maps=half_maps.float().cpu(), half_fsc=curve,
        posterior=posterior, sigma2=sigma2.cpu(), log_likelihoods=tuple(log_likelihoods),
        pixel_size_angstrom=apix, particle_ids=posterior.particle_ids, seconds=seconds,
        settings=settings)


def progress_of(iteration: int, settings: RefineSettings, box: int, apix: float, limit: int,
              curve: FSCCurve, log_likelihoods: list[float], change: float, seconds: float,
              full_map: torch.Tensor, result: RefineResult | None) -> RefineProgress:
    """The :class:`RefineProgress` of an iteration."""
    return RefineProgress(
        iteration=iteration, n_iterations=settings.n_iterations,
        coarse_order=settings.coarse_order(iteration),
        global_search=settings.is_global(iteration),
        e_step_resolution_angstrom=box * apix / limit,
        resolution_angstrom=curve.resolution_angstrom(apix, 0.143),
        log_likelihood=log_likelihoods[-1], median_angular_change_deg=change,
        seconds=seconds, map=full_map.cpu(), result=result)


def write_refine(result: RefineResult, particles: ParticleSet, output_dir: str | Path,
                 recipe: str = "relion-refine", extra_metrics: dict | None = None) -> dict:
    """Write the refinement into ``output_dir``.

    Files: ``volumes/map.mrc`` and ``volumes/half_{1,2}.mrc`` (with the voxel
    size), ``poses.npz`` (:mod:`cryoviz.inference.posterior`), the particles with
    their refined poses as ``particles.star`` (RELION 3.1), ``particles.cs``
    (cryoSPARC) and ``poses.pkl`` (cryoDRGN), and ``metrics.json`` (``recipe``
    and ``extra_metrics`` added to its fields).
    """
    out = Path(output_dir)
    apix = result.pixel_size_angstrom
    write_volume(out / "volumes" / "map.mrc", result.map.numpy(), apix)
    for i, half in enumerate(result.half_maps.numpy()):
        write_volume(out / "volumes" / f"half_{i + 1}.mrc", half, apix)
    export_poses(result.posterior, particles, out)
    metrics = {
        "recipe": recipe,
        "n_particles": len(particles),
        "resolution_angstrom_fsc0143": result.half_fsc.resolution_angstrom(apix, 0.143),
        "resolution_angstrom_fsc05": result.half_fsc.resolution_angstrom(apix, 0.5),
        "median_angular_spread_deg": float(np.median(result.posterior.angular_spread_deg)),
        "log_likelihoods": list(result.log_likelihoods),
        "seconds": result.seconds,
        "settings": {k: v for k, v in vars(result.settings).items()},
        **(extra_metrics or {}),
    }
    with atomic_output(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2))
    return metrics
