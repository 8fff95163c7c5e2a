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
    maps from nothing, then a classification with poses searched
    (:func:`~cryoviz.inference.class_refine.iter_class_refine`) starts from them
    (:func:`iter_class_ab_initio`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path

import torch

from cryoviz.inference.abinit import AbinitProgress, AbinitSettings, iter_abinit
from cryoviz.inference.abinit_classes import ClassAbinitProgress, iter_abinit_classes
from cryoviz.inference.class_refine import ClassRefineProgress, iter_class_refine
from cryoviz.inference.refine import RefineProgress, RefineSettings, iter_refine
from cryoviz.io.particles import ParticleSet

__all__ = ["refinement_after_abinit", "iter_ab_initio", "iter_class_ab_initio",
           "progress_record", "log_position"]


def refinement_after_abinit(abinit: AbinitSettings, modal: bool, n_iterations: int = 4,
                            **overrides) -> RefineSettings:
    """Refinement settings that continue from :func:`iter_abinit`'s map.

    One global iteration at order 1 from the initial model low-passed to
    ``abinit.final_resolution_angstrom``, then local ones; ``modal`` keeps one
    pose per image (cryoSPARC-style), else up to 8 (exact EM).
    """
    settings = RefineSettings(
        n_iterations=n_iterations, global_order=1, n_global_iterations=1,
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


def iter_class_ab_initio(particles: ParticleSet, n_classes: int, abinit: AbinitSettings,
                         refine: RefineSettings, device: str | torch.device = "cpu",
                         checkpoint_dir: str | Path | None = None,
                         initial_maps: torch.Tensor | None = None, resume: bool = False
                         ) -> Iterator[ClassAbinitProgress | ClassRefineProgress]:
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
        Continue from the checkpoints in ``checkpoint_dir``.
    """
    if initial_maps is None:
        for state in iter_abinit_classes(particles, n_classes, abinit, device=device,
                                         checkpoint_dir=checkpoint_dir, resume=resume):
            if state.result is not None:
                initial_maps = state.result.maps
            yield state
    elif checkpoint_dir is None:
        raise ValueError("resuming from initial maps needs checkpoint_dir")
    else:
        resume = True
    yield from iter_class_refine(particles, None, n_classes, refine, device=device,
                                 initial_maps=initial_maps, checkpoint_dir=checkpoint_dir,
                                 resume=resume)


def progress_record(state: AbinitProgress | RefineProgress | ClassAbinitProgress
                    | ClassRefineProgress) -> dict:
    """One ``log.jsonl`` line: phase, step, per-step and resolution figures (JSON types)."""
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
                "n_steps": state.n_steps,
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
    return (1, int(record["iteration"]), 0)
