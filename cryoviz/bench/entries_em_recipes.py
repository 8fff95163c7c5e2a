"""Bench entries of the EM recipes: 3-D classes, 3DVA, refinement and ab initio.

``relion-class3d`` (EM over classes, true poses), ``relion-class3d-search``
(poses searched) and ``3dva`` (PPCA-EM) solve the ``conformation`` task;
``relion-refine`` solves the ``pose`` task from a 20 Å low-pass of the true map;
``cryosparc-abinit`` and ``relion-refine`` solve the ``abinit`` task (an initial
model, then modal or exact-EM refinement). EM iterations come from
:attr:`cryoviz.bench.entries.RunContext.iterations`, the ab initio budgets from
:data:`ABINIT_SETTINGS`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cryoviz.bench.entries import (
    HETEROGENEOUS_KINDS,
    HOMOGENEOUS_KINDS,
    BenchEntry,
    RunContext,
    _particles,
    register,
)
from cryoviz.bench.tasks import RunOutputs
from cryoviz.io.particles import load_particles

__all__ = ["ABINIT_SETTINGS", "register_em_recipes"]


def _class3d(dataset: Path, output: Path, ctx: RunContext) -> RunOutputs:
    from cryoviz.inference.class_em import run_class_em, write_class_em  # noqa: PLC0415

    particles = _particles(dataset)
    k = max(2, ctx.n_states)
    result = run_class_em(particles, k, n_iterations=ctx.iterations, seed=ctx.seed,
                          device=ctx.device)
    write_class_em(result, output)
    best = result.best_class
    return RunOutputs(volumes=result.maps[best[ctx.render]],
                      pixel_size_angstrom=result.pixel_size_angstrom,
                      z=result.posteriors.numpy().astype(np.float64),
                      extra={"classes": k, "iterations": ctx.iterations})


def _class3d_searched(dataset: Path, output: Path, ctx: RunContext) -> RunOutputs:
    """relion-class3d with the poses searched (never read), from 30 Å low-passes of the
    true end states (the first and last true maps: the two states, or the path's ends)."""
    from cryoviz.bench.tasks import load_truth  # noqa: PLC0415
    from cryoviz.inference.class_refine import (  # noqa: PLC0415
        run_class_refine,
        write_class_refine,
    )
    from cryoviz.inference.refine import RefineSettings  # noqa: PLC0415

    particles = load_particles(dataset / "particles.star")
    truth = load_truth(dataset)
    starts = torch.stack([truth.maps[0], truth.maps[-1]]).to(torch.float32)
    settings = RefineSettings(n_iterations=ctx.iterations, seed=ctx.seed,
                              initial_lowpass_angstrom=30.0)
    result = run_class_refine(particles, None, 2, settings=settings, device=ctx.device,
                              initial_maps=starts)
    write_class_refine(result, particles, output)
    classes = result.classes
    return RunOutputs(volumes=classes.maps[classes.best_class[ctx.render]],
                      pixel_size_angstrom=classes.pixel_size_angstrom,
                      z=classes.posteriors.numpy().astype(np.float64),
                      poses_file=output / "poses.npz",
                      extra={"classes": 2, "iterations": ctx.iterations,
                             "start": "30 Å low-passes of the true end states"})


def _ppca(dataset: Path, output: Path, ctx: RunContext) -> RunOutputs:
    from cryoviz.inference.ppca import eval_ppca, run_ppca, write_ppca  # noqa: PLC0415

    particles = _particles(dataset)
    result = run_ppca(particles, n_components=2, n_iterations=ctx.iterations,
                      box_size=particles.box_size, seed=ctx.seed, device=ctx.device)
    write_ppca(result, output)
    z = result.z.numpy().astype(np.float64)
    return RunOutputs(volumes=eval_ppca(result, z[ctx.render]),
                      pixel_size_angstrom=result.pixel_size_angstrom, z=z,
                      extra={"components": 2, "iterations": ctx.iterations})


def _refine(dataset: Path, output: Path, ctx: RunContext) -> RunOutputs:
    """relion-refine from a 20 Å low-pass of the true map (the pose task: poses unknown)."""
    from cryoviz.bench.tasks import load_truth  # noqa: PLC0415
    from cryoviz.inference.refine import RefineSettings, run_refine, write_refine  # noqa: PLC0415

    particles = load_particles(dataset / "particles.star")
    truth = load_truth(dataset)
    settings = RefineSettings(n_iterations=ctx.iterations, seed=ctx.seed,
                              initial_lowpass_angstrom=20.0)
    result = run_refine(particles, truth.maps[0], settings=settings, device=ctx.device)
    write_refine(result, particles, output)
    return RunOutputs(volumes=result.map[None], pixel_size_angstrom=result.pixel_size_angstrom,
                      poses_file=output / "poses.npz",
                      extra={"iterations": settings.n_iterations,
                             "median_angular_spread_deg":
                             float(np.median(result.posterior.angular_spread_deg))})


#: Initial-model settings of the ab initio entries per suite size.
ABINIT_SETTINGS: dict[str, dict] = {
    "tiny": {"n_steps": 20, "batch_size": 100, "box_size": 24, "memory_images": 400,
             "initial_images": 200, "final_resolution_angstrom": 14.0, "n_starts": 1},
    "small": {},
    "full": {"box_size": 64},
}


def _abinit(modal: bool) -> Callable[[Path, Path, RunContext], RunOutputs]:
    """Ab initio (the abinit task): initial model, then modal or exact-EM refinement."""

    def run(dataset: Path, output: Path, ctx: RunContext) -> RunOutputs:
        from cryoviz.inference.abinit import AbinitSettings  # noqa: PLC0415
        from cryoviz.inference.abinit_pipeline import (  # noqa: PLC0415
            iter_ab_initio,
            refinement_after_abinit,
        )
        from cryoviz.inference.refine import RefineProgress, write_refine  # noqa: PLC0415

        particles = load_particles(dataset / "particles.star")
        abinit = AbinitSettings(seed=ctx.seed, **ABINIT_SETTINGS[ctx.size])
        refine = refinement_after_abinit(abinit, modal=modal, n_iterations=ctx.iterations)
        result = None
        for state in iter_ab_initio(particles, abinit, refine, device=ctx.device):
            if isinstance(state, RefineProgress) and state.result is not None:
                result = state.result
        recipe = "cryosparc-abinit" if modal else "relion-refine"
        write_refine(result, particles, output, recipe=recipe, extra_metrics={"ab_initio": True})
        return RunOutputs(volumes=result.map[None], pixel_size_angstrom=result.pixel_size_angstrom,
                          poses_file=output / "poses.npz",
                          extra={"iterations": refine.n_iterations,
                                 "abinit_steps": abinit.n_steps, "abinit_starts": abinit.n_starts})

    return run


def register_em_recipes() -> None:
    """Register the six entries (called once by :mod:`cryoviz.bench.entries`)."""
    register(BenchEntry("relion-class3d", "conformation", _class3d, HETEROGENEOUS_KINDS,
                        "EM over K classes (K = true states, 2 for a path)"))
    register(BenchEntry("relion-class3d-search", "conformation", _class3d_searched,
                        HETEROGENEOUS_KINDS,
                        "EM over 2 classes with the poses searched (not read), from 30 Å "
                        "low-passes of the true end states"))
    register(BenchEntry("3dva", "conformation", _ppca, HETEROGENEOUS_KINDS,
                        "linear subspace, 2 components, PPCA-EM"))
    register(BenchEntry("relion-refine", "pose", _refine, HOMOGENEOUS_KINDS,
                        "exact EM over SO(3) x shifts from a 20 Å low-pass of the truth"))
    register(BenchEntry("cryosparc-abinit", "abinit", _abinit(modal=True), HOMOGENEOUS_KINDS,
                        "stochastic modal EM initial model, then one-pose-per-image "
                        "refinement (nothing given)"))
    register(BenchEntry("relion-refine", "abinit", _abinit(modal=False), HOMOGENEOUS_KINDS,
                        "the same initial model, then exact EM (nothing given)"))
