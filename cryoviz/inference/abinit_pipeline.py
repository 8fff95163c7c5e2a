"""Ab initio reconstruction end to end: a stochastic initial model, then refinement.

Two recipes share it, as cryoSPARC's *ab initio* + *homogeneous refinement* and
RELION's *3D initial model* + *3D auto-refine* do:

``cryosparc-abinit`` (modal EM)
    :func:`~cryoviz.inference.abinit.iter_abinit` on a Fourier-cropped box,
    then a full-box refinement that backprojects each image at its single most
    probable pose (``max_significant = 1``) found by the beam search.
``relion-refine`` without a starting map (exact EM)
    the same initial model, then exact EM: every image backprojected at its
    significant poses weighted by their posterior.

Both refinements start with one global search (order ``global_order``) from the
initial model low-passed to its final resolution, then search locally.

``cryosparc-abinit --classes K`` (heterogeneous, as cryoSPARC's multi-class ab initio)
    :func:`~cryoviz.inference.abinit_classes.iter_abinit_classes` builds ``K``
    maps from nothing; then each class's particles (their most probable class)
    get an initial model of their own (:func:`~cryoviz.inference.abinit.iter_abinit`
    with its ``n_starts``), because the K-class model's map of a hard state can
    be wrong where its particles alone give a right one; a classification with
    poses searched (:func:`~cryoviz.inference.class_refine.iter_class_refine`)
    starts from those maps (:func:`iter_class_ab_initio`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Generator, Iterator
from pathlib import Path

import numpy as np
import torch

from cryoviz.inference.abinit import AbinitProgress, AbinitSettings, iter_abinit
from cryoviz.inference.abinit_classes import (
    ClassAbinitProgress,
    ClassAbinitResult,
    abinit_classes_finished,
    iter_abinit_classes,
    run_abinit_classes,
)
from cryoviz.inference.abinit_state import abinit_finished, load_abinit_state
from cryoviz.inference.class_refine import ClassRefineProgress, iter_class_refine
from cryoviz.inference.refine import RefineProgress, RefineSettings, iter_refine
from cryoviz.io.particles import ParticleSet

__all__ = ["MIN_CLASS_PARTICLES", "CLASS_SCREEN_FACTOR", "CLASS_GLOBAL_ITERATIONS",
           "ClassMapProgress", "refinement_after_abinit", "iter_ab_initio", "iter_class_ab_initio",
           "iter_class_maps", "progress_record", "log_position"]

#: A class with fewer particles keeps its K-class map (no initial model of its own).
MIN_CLASS_PARTICLES = 100

#: The recipe's screening of each class's own initial model: this many screened starts
#: per start kept (``cryoviz train --classes`` and the bench's ``cryosparc-abinit-classes``;
#: ``docs/benchmarks.md``, "Screening many short starts").
CLASS_SCREEN_FACTOR = 4

#: The recipe's global pose searches in the classification after the K initial models
#: (``cryoviz train --classes`` and the bench's ``cryosparc-abinit-classes``); the
#: one-map refinement after ab initio keeps 1. Three moved a class with partly wrong
#: poses from 16° to 12° and from 11° to 7.5° median error, at no measurable cost
#: (``docs/benchmarks.md``, "More classification iterations, more global searches").
CLASS_GLOBAL_ITERATIONS = 3


@dataclasses.dataclass(frozen=True)
class ClassMapProgress:
    """A step of one class's own initial model (:func:`iter_class_maps`).

    Attributes
    ----------
    class_index, n_classes
        The class (0-based) and ``K``; ``K`` on the closing record.
    n_particles
        Particles of the class (0 on the closing record).
    progress
        The class's initial-model step; ``None`` on the closing record.
    maps
        ``(K, D, D, D)`` every class's initial model on the closing record, which
        follows the last step of the last class; else ``None``.
    """

    class_index: int
    n_classes: int
    n_particles: int
    progress: AbinitProgress | None
    maps: torch.Tensor | None = None


def refinement_after_abinit(abinit: AbinitSettings, modal: bool, n_iterations: int = 4,
                            classes: bool = False, **overrides) -> RefineSettings:
    """Refinement settings that continue from :func:`iter_abinit`'s map.

    Global iterations at order 1 from the initial model low-passed to
    ``abinit.final_resolution_angstrom``, then local ones: one global iteration, or
    :data:`CLASS_GLOBAL_ITERATIONS` for the classification after K initial models
    (``classes``), at most ``n_iterations``; ``modal`` keeps one pose per image
    (cryoSPARC-style), else up to 8 (exact EM).
    """
    n_global = min(CLASS_GLOBAL_ITERATIONS if classes else 1, n_iterations)
    settings = RefineSettings(
        n_iterations=n_iterations, global_order=1, n_global_iterations=n_global,
        initial_lowpass_angstrom=abinit.final_resolution_angstrom,
        max_significant=1 if modal else 8, seed=abinit.seed)
    return dataclasses.replace(settings, **overrides)


def iter_ab_initio(particles: ParticleSet, abinit: AbinitSettings, refine: RefineSettings,
                   device: str | torch.device = "cpu", checkpoint_dir: str | Path | None = None,
                   initial_map: torch.Tensor | None = None, resume: bool = False
                   ) -> Iterator[AbinitProgress | RefineProgress]:
    """Yield the initial model's steps, then the refinement's iterations.

    The last state is a :class:`~cryoviz.inference.refine.RefineProgress` with the
    final :class:`~cryoviz.inference.refine.RefineResult`.

    Parameters
    ----------
    checkpoint_dir
        Where the initial model (:mod:`cryoviz.inference.abinit_state`) and the
        refinement (:mod:`cryoviz.inference.refine_state`) write their checkpoints.
    initial_map
        ``(D, D, D)`` initial model of an earlier run of the same settings (its
        ``abinit_map.mrc``): the initial-model steps are skipped and the refinement
        resumes from ``checkpoint_dir``, or starts from this map if no iteration
        had finished.
    resume
        Continue from the checkpoints in ``checkpoint_dir``: the initial model from
        its last saved step (a finished one yields its last step again), then the
        refinement from its last iteration.
    """
    if initial_map is not None:
        if checkpoint_dir is None:
            raise ValueError("resuming from an initial map needs checkpoint_dir")
        yield from iter_refine(particles, initial_map, refine, device=device,
                               checkpoint_dir=checkpoint_dir, resume=True)
        return
    initial = None
    for state in iter_abinit(particles, abinit, device=device, checkpoint_dir=checkpoint_dir,
                             resume=resume):
        initial = state.result if state.result is not None else initial
        yield state
    yield from iter_refine(particles, initial.map, refine, device=device,
                           checkpoint_dir=checkpoint_dir, resume=resume)


def _abinit_finished(particles: ParticleSet, settings: AbinitSettings, run_dir: Path) -> bool:
    """Whether the one-class initial model in ``run_dir`` is at its last start's last step."""
    return abinit_finished(load_abinit_state(
        run_dir, settings, np.asarray(particles.particle_ids, dtype=np.int64)), settings)


def iter_class_maps(particles: ParticleSet, first: ClassAbinitResult, abinit: AbinitSettings,
                    device: str | torch.device = "cpu",
                    checkpoint_dir: str | Path | None = None, resume: bool = False
                    ) -> Generator[ClassMapProgress, None, torch.Tensor]:
    """Each class's particles get an initial model of their own; returns the ``K`` maps.

    The particles of class ``k`` are those whose most probable class it is in
    ``first``; their initial model (:func:`~cryoviz.inference.abinit.iter_abinit`,
    ``abinit``'s starts and steps) checkpoints in ``checkpoint_dir/class_<k>_abinit``.
    A class of fewer than :data:`MIN_CLASS_PARTICLES` particles keeps its map
    from ``first``. With ``resume``, finished classes are read back without a
    step and the others continue. After the last class a closing
    :class:`ClassMapProgress` carries the maps.
    """
    n_classes = len(first.maps)
    maps = first.maps.clone()
    for k in range(n_classes):
        members = np.flatnonzero(first.best_class == k)
        if len(members) < MIN_CLASS_PARTICLES:
            continue
        subset = particles.subset(members)
        run_dir = None if checkpoint_dir is None else Path(checkpoint_dir) / f"class_{k}_abinit"
        result = None
        finished = resume and run_dir is not None and _abinit_finished(subset, abinit, run_dir)
        for state in iter_abinit(subset, abinit, device=device, checkpoint_dir=run_dir,
                                 resume=resume):
            result = state.result if state.result is not None else result
            if not finished:
                yield ClassMapProgress(class_index=k, n_classes=n_classes,
                                       n_particles=len(members), progress=state)
        maps[k] = result.map.to(maps.dtype)
    yield ClassMapProgress(class_index=n_classes, n_classes=n_classes, n_particles=0,
                           progress=None, maps=maps)
    return maps


def iter_class_ab_initio(particles: ParticleSet, n_classes: int, abinit: AbinitSettings,
                         refine: RefineSettings, device: str | torch.device = "cpu",
                         checkpoint_dir: str | Path | None = None,
                         initial_maps: torch.Tensor | None = None, resume: bool = False,
                         per_class_maps: bool = True
                         ) -> Iterator[ClassAbinitProgress | ClassMapProgress
                                       | ClassRefineProgress]:
    """Yield the ``n_classes`` initial models' steps, then the classification's iterations.

    The last state is a :class:`~cryoviz.inference.class_refine.ClassRefineProgress`
    with the final :class:`~cryoviz.inference.class_refine.ClassRefineResult`.

    Parameters
    ----------
    abinit
        Settings of :func:`~cryoviz.inference.abinit_classes.iter_abinit_classes`
        (``n_starts``: restarts of the K-class run, the best maps of all kept).
    refine
        Settings of the classification with poses searched, which starts from the
        initial models low-passed to ``refine.initial_lowpass_angstrom``.
    checkpoint_dir
        Where both phases write their checkpoints.
    initial_maps
        ``(K, D, D, D)`` initial models of an earlier run of the same settings: the
        initial-model steps are skipped and the classification resumes from
        ``checkpoint_dir``, or starts from these maps if no iteration had finished.
    resume
        Continue from the checkpoints in ``checkpoint_dir`` (finished stages are
        read back without yielding their steps again).
    per_class_maps
        Give each class's particles an initial model of their own
        (:func:`iter_class_maps`) before the classification; else it starts from
        the K-class model's maps.
    """
    if initial_maps is None:
        first = None
        if resume and checkpoint_dir is not None and abinit_classes_finished(
                particles, n_classes, abinit, checkpoint_dir):
            first = run_abinit_classes(particles, n_classes, settings=abinit, device=device,
                                       checkpoint_dir=checkpoint_dir, resume=True)
        else:
            for state in iter_abinit_classes(particles, n_classes, abinit, device=device,
                                             checkpoint_dir=checkpoint_dir, resume=resume):
                first = state.result if state.result is not None else first
                yield state
        initial_maps = first.maps
        if per_class_maps:
            initial_maps = yield from iter_class_maps(particles, first, abinit, device=device,
                                                      checkpoint_dir=checkpoint_dir,
                                                      resume=resume)
    elif checkpoint_dir is None:
        raise ValueError("resuming from initial maps needs checkpoint_dir")
    else:
        resume = True
    yield from iter_class_refine(particles, None, n_classes, refine, device=device,
                                 initial_maps=initial_maps, checkpoint_dir=checkpoint_dir,
                                 resume=resume)


def progress_record(state: AbinitProgress | RefineProgress | ClassAbinitProgress
                    | ClassMapProgress | ClassRefineProgress) -> dict:
    """One ``log.jsonl`` line: phase, step, per-step and resolution figures (JSON types)."""
    if isinstance(state, ClassMapProgress):
        if state.progress is None:
            return {"phase": "class_abinit", "class": state.class_index, "start": 0,
                    "step": 0, "done": True}
        return {**progress_record(state.progress), "phase": "class_abinit",
                "class": state.class_index, "particles": state.n_particles}
    if isinstance(state, ClassAbinitProgress):
        return {"phase": "abinit", "start": state.start, "step": state.step,
                "n_steps": state.n_steps,
                "resolution_limit_angstrom": state.resolution_angstrom,
                "class_fractions": list(state.class_fractions),
                "log_likelihood": state.log_likelihood, "seconds": state.step_seconds}
    if isinstance(state, ClassRefineProgress):
        return {"phase": "refine", "iteration": state.iteration,
                "n_iterations": state.n_iterations, "global_search": state.global_search,
                "resolution_limit_angstrom": state.e_step_resolution_angstrom,
                "resolution_angstrom": list(state.resolution_angstrom),
                "class_fractions": list(state.class_fractions),
                "changed_fraction": state.changed_fraction,
                "log_likelihood": state.log_likelihood, "seconds": state.seconds}
    if isinstance(state, AbinitProgress):
        return {"phase": "abinit", "start": state.start, "step": state.step,
                "n_steps": state.n_steps, "seed_start": state.seed_start,
                "screening": state.screening,
                "resolution_limit_angstrom": state.resolution_angstrom,
                "resolution_angstrom": state.half_map_resolution_angstrom,
                "log_likelihood": state.log_likelihood, "seconds": state.step_seconds}
    return {"phase": "refine", "iteration": state.iteration, "n_iterations": state.n_iterations,
            "global_search": state.global_search,
            "resolution_limit_angstrom": state.e_step_resolution_angstrom,
            "resolution_angstrom": state.resolution_angstrom,
            "log_likelihood": state.log_likelihood,
            "median_angular_change_deg": (None if math.isnan(state.median_angular_change_deg)
                                          else state.median_angular_change_deg),
            "seconds": state.seconds}


def log_position(record: dict) -> tuple[int, int, int]:
    """Where a :func:`progress_record` line falls in a run: initial-model steps, then iterations.

    Lines of a log at or after a resumed run's first new line are the ones it
    repeats (the steps after the last checkpoint).
    """
    if record.get("phase") == "abinit":
        return (0, int(record["start"]), int(record["step"]))
    if record.get("phase") == "class_abinit":
        return (1, 1000 * int(record["class"]) + int(record["start"]), int(record["step"]))
    return (2, int(record["iteration"]), 0)
