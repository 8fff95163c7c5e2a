"""Atomic per-iteration checkpoints of a classification with searched poses.

After each iteration :func:`cryoviz.inference.class_refine.iter_class_refine` can
save what the next one needs (every class's half maps, the noise, the class
fractions and posteriors, each class's pose summaries, the FSCs) to
``class_refine_state.pt`` in the run folder (a temporary file, then renamed). A
resumed run continues from the saved iteration and ends with the unbroken
run's classes and poses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cryoviz.errors import InputError
from cryoviz.inference.refine_state import (
    check_global_searches,
    check_identity,
    curve_payload,
    read_checkpoint,
    refine_identity,
)
from cryoviz.io.mrc import atomic_output
from cryoviz.metrics.fsc import FSCCurve

__all__ = ["CLASS_STATE_FILE", "ClassRefineCheckpoint", "save_class_refine_state",
           "load_class_refine_state"]

CLASS_STATE_FILE = "class_refine_state.pt"
_FORMAT = 1
_MAY_CHANGE = ("n_iterations", "n_global_iterations")  # the latter: check_global_searches


@dataclass(frozen=True)
class ClassRefineCheckpoint:
    """The state of a classification after ``iteration`` iterations.

    Attributes
    ----------
    iteration
        Iterations done.
    half_maps
        ``(K, 2, D, D, D)`` float64 references of the next iteration.
    full_maps
        ``(K, D, D, D)`` float32 class maps of the last M-step.
    curves
        ``K`` half-map FSCs of the last M-step.
    limit_from_curves
        Whether the next E-step limit follows ``curves`` (not after the random
        first iteration, which keeps the first limit).
    sigma2
        ``(S,)`` noise per shell.
    fractions
        ``(K,)`` class priors.
    posteriors
        ``(N, K)`` class posteriors of the last E-step.
    per_class
        ``K`` dictionaries of pose summaries ``(N, ...)`` (best pose, spreads, top-k).
    log_likelihoods
        One per iteration so far.
    elapsed_seconds
        Wall time so far.
    e_step_limit
        Shell limit of the last E-step.
    """

    iteration: int
    half_maps: torch.Tensor
    full_maps: torch.Tensor
    curves: tuple[FSCCurve, ...]
    limit_from_curves: bool
    sigma2: torch.Tensor
    fractions: torch.Tensor
    posteriors: torch.Tensor
    per_class: tuple[dict[str, torch.Tensor], ...]
    log_likelihoods: tuple[float, ...]
    elapsed_seconds: float
    e_step_limit: int


def _identity(settings, n_classes: int, random_start: bool, particle_ids: np.ndarray) -> dict:
    """:func:`~cryoviz.inference.refine_state.refine_identity` with the number of classes
    and the kind of start added."""
    identity = refine_identity(settings, particle_ids, _MAY_CHANGE)
    identity["settings"].update(n_classes=int(n_classes), random_start=bool(random_start))
    return identity


def save_class_refine_state(run_dir: str | Path, state: ClassRefineCheckpoint, settings,
                            n_classes: int, random_start: bool,
                            particle_ids: np.ndarray) -> Path:
    """Write ``run_dir/class_refine_state.pt`` atomically; returns its path.

    ``settings`` (:class:`~cryoviz.inference.refine.RefineSettings`), ``n_classes``
    and ``random_start`` (one starting map, random first classes) identify the
    run with ``particle_ids`` ``(N,)``; only ``n_iterations`` (and
    ``n_global_iterations`` as
    :func:`~cryoviz.inference.refine_state.check_global_searches` allows) may
    change on resuming.
    """
    path = Path(run_dir) / CLASS_STATE_FILE
    payload = {
        "format": _FORMAT, **_identity(settings, n_classes, random_start, particle_ids),
        "iteration": state.iteration, "half_maps": state.half_maps.cpu(),
        "full_maps": state.full_maps.cpu(), "curves": [curve_payload(c) for c in state.curves],
        "limit_from_curves": state.limit_from_curves, "sigma2": state.sigma2.cpu(),
        "fractions": state.fractions.cpu(), "posteriors": state.posteriors.cpu(),
        "per_class": [{k: v.cpu() for k, v in d.items()} for d in state.per_class],
        "log_likelihoods": list(state.log_likelihoods),
        "elapsed_seconds": float(state.elapsed_seconds), "e_step_limit": int(state.e_step_limit),
    }
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_class_refine_state(run_dir: str | Path, settings, n_classes: int, random_start: bool,
                            particle_ids: np.ndarray) -> ClassRefineCheckpoint | None:
    """The checkpoint in ``run_dir``, or ``None`` if there is none.

    Raises
    ------
    InputError
        If the file is unreadable, or was written for other settings (anything but
        ``n_iterations``, and ``n_global_iterations`` as
        :func:`~cryoviz.inference.refine_state.check_global_searches` allows), classes,
        start or particles, or has more iterations than asked for.
    """
    path = Path(run_dir) / CLASS_STATE_FILE
    if not path.is_file():
        return None
    saved = read_checkpoint(path, CLASS_STATE_FILE, _FORMAT)
    check_global_searches(path, saved, settings)
    check_identity(path, saved, _identity(settings, n_classes, random_start, particle_ids),
                   _MAY_CHANGE)
    if saved["iteration"] > settings.n_iterations:
        raise InputError(path, "iteration", f"at most n_iterations = {settings.n_iterations}",
                         got=saved["iteration"])
    return ClassRefineCheckpoint(
        iteration=int(saved["iteration"]), half_maps=saved["half_maps"],
        full_maps=saved["full_maps"],
        curves=tuple(FSCCurve(**c) for c in saved["curves"]),
        limit_from_curves=bool(saved["limit_from_curves"]), sigma2=saved["sigma2"],
        fractions=saved["fractions"], posteriors=saved["posteriors"],
        per_class=tuple(dict(d) for d in saved["per_class"]),
        log_likelihoods=tuple(float(v) for v in saved["log_likelihoods"]),
        elapsed_seconds=float(saved["elapsed_seconds"]), e_step_limit=int(saved["e_step_limit"]))
