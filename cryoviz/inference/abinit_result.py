"""What :func:`cryoviz.inference.abinit.iter_abinit` yields: per-step progress and the result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from cryoviz.metrics.fsc import FSCCurve

if TYPE_CHECKING:
    from cryoviz.inference.abinit import AbinitSettings

__all__ = ["AbinitResult", "AbinitProgress"]


@dataclass(frozen=True)
class AbinitResult:
    """Outcome of :func:`iter_abinit`.

    Attributes
    ----------
    map
        ``(D, D, D)`` float32 map on the particles' box and voxel size (the
        working map Fourier-padded).
    working_map
        ``(d, d, d)`` float32 map on the working box.
    half_fsc
        FSC of the running half maps (working box) at the end.
    rotations, shifts_angstrom
        ``(N, 3, 3)`` and ``(N, 2)`` each particle's most probable pose when it
        was last searched (identity and 0 where ``seen`` is False).
    seen
        ``(N,)`` whether the particle was in some minibatch.
    pixel_size_angstrom, working_pixel_size_angstrom
        Voxel sizes of ``map`` and ``working_map``.
    start_evidences
        ``(n_starts,)`` mean log evidence of the common images under the final
        map of each start in ``finished_starts``.
    finished_starts
        ``(n_starts,)`` the starts run to the end: ``0 .. n_starts - 1``, or with
        screening the ``n_starts`` screened starts of largest evidence.
    chosen_start
        Index of the start kept (the largest evidence).
    screen_evidences
        ``(screen_starts,)`` mean log evidence of the common images under each
        screened start's map at the screen (empty without screening).
    seconds, settings
        Bookkeeping.
    """

    map: torch.Tensor
    working_map: torch.Tensor
    half_fsc: FSCCurve
    rotations: np.ndarray
    shifts_angstrom: np.ndarray
    seen: np.ndarray
    pixel_size_angstrom: float
    working_pixel_size_angstrom: float
    start_evidences: tuple[float, ...]
    finished_starts: tuple[int, ...]
    chosen_start: int
    screen_evidences: tuple[float, ...]
    seconds: float
    settings: AbinitSettings


@dataclass(frozen=True)
class AbinitProgress:
    """State after one minibatch step of :func:`iter_abinit`.

    Attributes
    ----------
    start, step, n_steps
        0-based run and the 1-based step within it, of ``n_steps`` in that run.
        Without screening a run is a start (seeded ``seed + 1000 start``) from
        step 1 to the settings' ``n_steps``. With screening, runs
        ``0 .. screen_starts - 1`` are the screened starts' first
        ``screen_steps`` steps, and the later runs take the kept starts on from
        step ``screen_steps + 1`` to ``n_steps``.
    seed_start
        The start (its seed) this run belongs to.
    screening
        Whether this run is a screened start's first steps.
    resolution_angstrom
        The step's search and low-pass limit (Å).
    half_map_resolution_angstrom
        FSC 0.143 resolution of the running half maps (Å).
    log_likelihood
        Mean log evidence of the batch's images over the searched poses.
    images_per_second
        Images searched and backprojected per second in this step.
    step_seconds, elapsed_seconds
        Wall time of this step and since the start.
    result
        The :class:`AbinitResult` on the last step of the last start, else ``None``.
    """

    start: int
    step: int
    n_steps: int
    seed_start: int
    screening: bool
    resolution_angstrom: float
    half_map_resolution_angstrom: float
    log_likelihood: float
    images_per_second: float
    step_seconds: float
    elapsed_seconds: float
    result: AbinitResult | None = None
