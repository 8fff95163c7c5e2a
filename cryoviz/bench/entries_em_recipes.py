"""Bench entries of the EM recipes: 3-D classes, 3DVA, refinement and ab initio.

``relion-class3d`` (EM over classes, true poses), ``relion-class3d-search``
(poses searched), ``cryosparc-abinit-classes`` (classes and poses from nothing)
and ``3dva`` (PPCA-EM) solve the ``conformation`` task;
``relion-refine`` solves the ``pose`` task from a 20 Å low-pass of the true map;
``cryosparc-abinit`` and ``relion-refine`` solve the ``abinit`` task (an initial
model, then modal or exact-EM refinement). EM iterations come from
:attr:`cryoviz.bench.entries.RunContext.iterations`, the ab initio budgets from
:data:`ABINIT_SETTINGS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from cryoviz.bench.tasks import RunOutputs
from cryoviz.io.particles import load_particles

if TYPE_CHECKING:  # the registry imports this module while it registers its entries
    from cryoviz.bench.entries import RunContext

__all__ = ["ABINIT_SETTINGS", "register_em_recipes"]


def _class3d(dataset: Path, output: Path, ctx: RunContext) -> RunOutputs:
    from cryoviz.bench.entries import _particles  # noqa: PLC0415
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


def _class_abinit(dataset: Path, output: Path, ctx: RunContext) -> RunOutputs:
    """cryosparc-abinit --classes 2: two initial models, classes and poses from nothing,
    then classification with the poses searched; each class map in its own frame."""
    from cryoviz.inference.abinit import AbinitSettings  # noqa: PLC0415
    from cryoviz.inference.abinit_pipeline import (  # noqa: PLC0415
        CLASS_SCREEN_FACTOR,
        iter_class_ab_initio,
        refinement_after_abinit,
    )
    from cryoviz.inference.class_refine import (  # noqa: PLC0415
        ClassRefineProgress,
        write_class_refine,
    )

    particles = load_particles(dataset / "particles.star")
    abinit = AbinitSettings(seed=ctx.seed, **ABINIT_SETTINGS[ctx.size])
    if ctx.size != "tiny":  # the recipe's screening of each class's own initial model
        abinit = dataclasses.replace(abinit, screen_starts=CLASS_SCREEN_FACTOR * abinit.n_starts)
    refine = refinement_after_abinit(abinit, modal=True, n_iterations=ctx.iterations,
                                     classes=True)
    result = None
    for state in iter_class_ab_initio(particles, 2, abinit, refine, device=ctx.device):
        if isinstance(state, ClassRefineProgress) and state.result is not None:
            result = state.result
    write_class_refine(result, particles, output)
    classes = result.classes
    return RunOutputs(volumes=classes.maps[classes.best_class[ctx.render]],
                      pixel_size_angstrom=classes.pixel_size_angstrom,
                      z=classes.posteriors.numpy().astype(np.float64),
                      poses_file=output / "poses.npz", frames=classes.best_class,
                      extra={"classes": 2, "iterations": ctx.iterations,
                             "abinit_steps": abinit.n_steps, "abinit_restarts": abinit.n_starts,
                             "abinit_screen": abinit.screen_starts,
                             "global_iterations": refine.n_global_iterations, "start": "nothing"})


def _ppca(dataset: Path, output: Path, ctx: RunContext) -> RunOutputs:
    from cryoviz.bench.entries import _particles  # noqa: PLC0415
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


def _shared_initial_model(output: Path, ctx: RunContext, abinit) -> tuple[Path, dict]:
    """Where the ab initio entries of one bench folder share an initial model.

    Both ``abinit`` entries make the same initial model (same settings and seed)
    before different refinements; the first to run writes it under the dataset's
    ``runs`` folder, the second reads it. Returns the folder and the record that
    must match its ``initial_model.json`` for it to be reused.
    """
    import dataclasses  # noqa: PLC0415

    folder = output.parent / "_shared" / f"abinit-initial-model-seed{ctx.seed}"
    return folder, {"settings": dataclasses.asdict(abinit), "device": ctx.device}


def _read_shared(folder: Path, key: dict) -> tuple[torch.Tensor, dict] | None:
    """The shared initial model and its record, or None if absent or made otherwise."""
    import json  # noqa: PLC0415

    from cryoviz.io.mrc import read_volume  # noqa: PLC0415

    record_file = folder / "initial_model.json"
    if not record_file.is_file():
        return None
    record = json.loads(record_file.read_text())
    if {k: record.get(k) for k in key} != json.loads(json.dumps(key)):
        return None
    return torch.as_tensor(read_volume(folder / "map.mrc")[0]), record


def _write_shared(folder: Path, key: dict, volume: torch.Tensor, apix: float, seconds: float,
                  recipe: str) -> None:
    """Write the initial model, then its record (the record marks it complete)."""
    import json  # noqa: PLC0415

    from cryoviz.io.mrc import atomic_output, write_volume  # noqa: PLC0415

    folder.mkdir(parents=True, exist_ok=True)
    write_volume(folder / "map.mrc", volume.detach().cpu().numpy(), apix)
    with atomic_output(folder / "initial_model.json") as tmp:
        tmp.write_text(json.dumps({**key, "seconds": seconds, "computed_by": recipe}, indent=1))


def _abinit(modal: bool) -> Callable[[Path, Path, RunContext], RunOutputs]:
    """Ab initio (the abinit task): initial model, then modal or exact-EM refinement.

    The initial model is made once per dataset and seed in a bench folder and
    shared by the two entries (:func:`_shared_initial_model`). The entry that
    reads it adds the seconds it took to make it to its row's wall time
    (``shared_wall_s``), so both rows time the whole run from nothing.
    """

    def run(dataset: Path, output: Path, ctx: RunContext) -> RunOutputs:
        import time  # noqa: PLC0415

        from cryoviz.inference.abinit import AbinitProgress, AbinitSettings  # noqa: PLC0415
        from cryoviz.inference.abinit_pipeline import (  # noqa: PLC0415
            iter_ab_initio,
            refinement_after_abinit,
        )
        from cryoviz.inference.refine import (  # noqa: PLC0415
            RefineProgress,
            iter_refine,
            write_refine,
        )

        recipe = "cryosparc-abinit" if modal else "relion-refine"
        particles = load_particles(dataset / "particles.star")
        abinit = AbinitSettings(seed=ctx.seed, **ABINIT_SETTINGS[ctx.size])
        refine = refinement_after_abinit(abinit, modal=modal, n_iterations=ctx.iterations)
        folder, key = _shared_initial_model(output, ctx, abinit)
        shared = _read_shared(folder, key)
        initial = None if shared is None else shared[0]
        started = time.perf_counter()
        result = None
        states = (iter_ab_initio(particles, abinit, refine, device=ctx.device) if initial is None
                  else iter_refine(particles, initial, refine, device=ctx.device))
        for state in states:
            if isinstance(state, AbinitProgress) and state.result is not None:
                _write_shared(folder, key, state.result.map, particles.pixel_size_angstrom,
                              time.perf_counter() - started, recipe)
            if isinstance(state, RefineProgress) and state.result is not None:
                result = state.result
        write_refine(result, particles, output, recipe=recipe, extra_metrics={"ab_initio": True})
        extra = {"iterations": refine.n_iterations, "abinit_steps": abinit.n_steps,
                 "abinit_starts": abinit.n_starts}
        if shared is None:
            extra["initial_model"] = "computed"
        else:
            extra["initial_model"] = f"shared (made by {shared[1]['computed_by']})"
            extra["shared_wall_s"] = float(shared[1]["seconds"])
        return RunOutputs(volumes=result.map[None], pixel_size_angstrom=result.pixel_size_angstrom,
                          poses_file=output / "poses.npz", extra=extra)

    return run


def register_em_recipes() -> None:
    """Register the seven entries (called once by :mod:`cryoviz.bench.entries`)."""
    from cryoviz.bench.entries import (  # noqa: PLC0415
        HETEROGENEOUS_KINDS,
        HOMOGENEOUS_KINDS,
        BenchEntry,
        register,
    )

    register(BenchEntry("relion-class3d", "conformation", _class3d, HETEROGENEOUS_KINDS,
                        "EM over K classes (K = true states, 2 for a path)"))
    register(BenchEntry("relion-class3d-search", "conformation", _class3d_searched,
                        HETEROGENEOUS_KINDS,
                        "EM over 2 classes with the poses searched (not read), from 30 Å "
                        "low-passes of the true end states"))
    register(BenchEntry("cryosparc-abinit-classes", "conformation", _class_abinit,
                        HETEROGENEOUS_KINDS,
                        "2 initial models, classes and poses from nothing (heterogeneous ab "
                        "initio), then EM over 2 classes with the poses searched; maps scored "
                        "after alignment"))
    register(BenchEntry("3dva", "conformation", _ppca, HETEROGENEOUS_KINDS,
                        "linear subspace, 2 components, PPCA-EM"))
    register(BenchEntry("relion-refine", "pose", _refine, HOMOGENEOUS_KINDS,
                        "exact EM over SO(3) x shifts from a 20 Å low-pass of the truth"))
    register(BenchEntry("cryosparc-abinit", "abinit", _abinit(modal=True), HOMOGENEOUS_KINDS,
                        "stochastic modal EM initial model, then one-pose-per-image "
                        "refinement (nothing given)"))
    register(BenchEntry("relion-refine", "abinit", _abinit(modal=False), HOMOGENEOUS_KINDS,
                        "the same initial model, then exact EM (nothing given)"))
