"""Hierarchical pose search: oversampling the best grid points level by level.

Shared by exact EM (:mod:`cryoviz.inference.refine`) and ab initio
(:mod:`cryoviz.inference.abinit`). Given each image's most probable rotations
on ``SO3Grid(order)`` and its best shift, :func:`refine_candidates` scores their
8 children at ``order + 1`` times a 3 x 3 grid of shifts at half the step;
with ``n_levels > 1`` it keeps the best ``n_keep`` children and descends again
(a beam search over the nested grids, the pruning of branch-and-bound without
its bound). The posterior of the last level is normalised over that level's
candidates (:class:`PoseCandidates`), from which :func:`summarise` takes the
per-particle posterior summaries and :func:`significant_poses` the poses to
backproject.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cryoviz.geometry import SO3Grid
from cryoviz.inference.pose_scoring import (
    PixelSet,
    angular_spread_deg,
    normalise_scores,
    score_poses,
    shift_grid,
    shift_phases,
)
from cryoviz.projection import extract_points

__all__ = ["PoseCandidates", "refine_candidates", "summarise", "significant_poses",
           "top_rotations"]


@dataclass(frozen=True)
class PoseCandidates:
    """Posterior of a batch of ``B`` images over their candidate poses.

    Attributes
    ----------
    rotations
        ``(B, R, 3, 3)`` candidate rotations.
    shifts_px
        ``(B, T, 2)`` candidate shifts (pixels).
    gamma
        ``(B, T, R)`` posterior probabilities (each image's sum is 1).
    evidence
        ``(B,)`` log evidence over the candidates (up to a per-image constant).
    order
        Grid order of the candidate rotations.
    """

    rotations: torch.Tensor
    shifts_px: torch.Tensor
    gamma: torch.Tensor
    evidence: torch.Tensor
    order: int


def top_rotations(scores: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best ``n`` rotations ``(B, n)`` by their shift-marginal and the best shift index ``(B,)``.

    ``scores`` is ``(B, T, R)``; the shift index is that of the best rotation.
    """
    s = scores.to(torch.float64)
    marginal = torch.logsumexp(s, dim=1)
    top = torch.topk(marginal, min(n, marginal.shape[1]), dim=1).indices
    best_t = s.gather(2, top[:, :1, None].expand(-1, s.shape[1], 1))[..., 0].argmax(dim=1)
    return top, best_t


def refine_candidates(x: torch.Tensor, ctf: torch.Tensor, w: torch.Tensor,
                      volume_ft: torch.Tensor, pix: PixelSet, order: int,
                      parents: torch.Tensor, shift_px: torch.Tensor, shift_step_px: float,
                      n_levels: int = 1, n_keep: int = 4,
                      shift_range_px: float | None = None) -> PoseCandidates:
    """Descend ``n_levels`` grid orders from ``parents`` and return the last level's posterior.

    Parameters
    ----------
    x, ctf, w
        ``(B, P)`` image transforms, ``(B, P)`` CTFs and ``(P,)`` inverse noise variance
        at the pixels ``pix``.
    volume_ft
        ``(Dp, Dp, Dp)`` padded map transform.
    pix
        The pixels scored.
    order
        Order of ``parents``.
    parents
        ``(B, C)`` flat indices in ``SO3Grid(order)``.
    shift_px
        ``(B, 2)`` best shift at the parents' level.
    shift_step_px
        Shift step at the parents' level (halved at each level).
    n_levels
        Levels to descend (``>= 1``).
    n_keep
        Rotations kept between levels.
    shift_range_px
        If given, each level scores a disc of this radius around ``shift_px`` at
        its step (the whole shift posterior, for calibrated spreads) instead of
        the 3 x 3 neighbourhood of the best shift.
    """
    b = x.shape[0]
    step = shift_step_px
    for level in range(n_levels):
        index = SO3Grid(order).children(parents).reshape(b, -1)
        order += 1
        rots = SO3Grid(order).rotations(torch.float64, x.device)[index]
        proj = extract_points(volume_ft, rots.reshape(-1, 3, 3), pix.frequencies)
        step = step / 2
        radius = step * 1.5 if shift_range_px is None else shift_range_px
        shifts = shift_px[:, None] + shift_grid(radius, step, x.device)
        scores = score_poses(x, ctf, w, proj.reshape(b, index.shape[1], -1),
                             shift_phases(shifts, pix))
        if level == n_levels - 1:
            gamma, evidence = normalise_scores(scores)
            return PoseCandidates(rotations=rots, shifts_px=shifts, gamma=gamma,
                                  evidence=evidence, order=order)
        top, best_t = top_rotations(scores, n_keep)
        parents = index.gather(1, top)
        shift_px = shifts[torch.arange(b, device=x.device), best_t]
    raise ValueError(f"n_levels: expected >= 1, got {n_levels}")


def summarise(fine: PoseCandidates, top_k: int, apix: float) -> dict[str, torch.Tensor]:
    """Per-image posterior summaries: the arrays of a ``PosePosterior`` but the ids.

    Best pose, angular and shift spread (shifts in Å), and the ``top_k``
    rotations by their shift-marginal posterior, each with its best shift.
    """
    b = fine.gamma.shape[0]
    rows = torch.arange(b, device=fine.gamma.device)
    rot_marginal = fine.gamma.sum(dim=1)  # (B, R)
    flat_best = fine.gamma.reshape(b, -1).argmax(dim=1)
    n_rot = fine.gamma.shape[2]
    best_t, best_r = flat_best // n_rot, flat_best % n_rot
    best_rot = fine.rotations[rows, best_r]
    shift_marginal = fine.gamma.sum(dim=2)  # (B, T)
    mean_shift = (shift_marginal[..., None] * fine.shifts_px).sum(dim=1)
    shift_sd = torch.sqrt((shift_marginal * ((fine.shifts_px - mean_shift[:, None]) ** 2
                                             ).sum(-1)).sum(dim=1))
    k = min(top_k, n_rot)
    top_w, top_r = torch.topk(rot_marginal, k, dim=1)
    top_t = fine.gamma.gather(2, top_r[:, None, :].expand(-1, fine.gamma.shape[1], -1)
                              ).argmax(dim=1)  # best shift of each top rotation
    topk_rot = fine.rotations.gather(1, top_r[..., None, None].expand(-1, -1, 3, 3))
    topk_shift = fine.shifts_px.gather(1, top_t[..., None].expand(-1, -1, 2))
    if k < top_k:  # pad with zero-weight copies of the best so every row has top_k
        pad = top_k - k
        zeros = torch.zeros(b, pad, dtype=top_w.dtype, device=top_w.device)
        top_w = torch.cat([top_w, zeros], dim=1)
        topk_rot = torch.cat([topk_rot, best_rot[:, None].expand(-1, pad, -1, -1)], dim=1)
        topk_shift = torch.cat([topk_shift, topk_shift[:, :1].expand(-1, pad, -1)], dim=1)
    return {
        "rotations": best_rot,
        "shifts_angstrom": fine.shifts_px[rows, best_t] * apix,
        "angular_spread_deg": angular_spread_deg(fine.rotations, rot_marginal, best_rot),
        "shift_spread_angstrom": shift_sd * apix,
        "topk_rotations": topk_rot,
        "topk_shifts_angstrom": topk_shift * apix,
        "topk_weights": top_w,
    }


def significant_poses(fine: PoseCandidates, max_significant: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The poses to backproject: image index ``(M,)``, rotations ``(M, 3, 3)``, shifts
    ``(M, 2)`` (pixels) and weights ``(M,)``: each image's ``max_significant`` most
    probable poses, renormalised, without those below 1e-4."""
    b, _, n_rot = fine.gamma.shape
    flat = fine.gamma.reshape(b, -1)
    k = min(max_significant, flat.shape[1])
    weight, pos = torch.topk(flat, k, dim=1)
    weight = weight / weight.sum(dim=1, keepdim=True)
    t, r = pos // n_rot, pos % n_rot
    rows = torch.arange(b, device=flat.device)[:, None].expand(-1, k)
    keep = weight > 1e-4
    return (rows[keep], fine.rotations[rows, r][keep], fine.shifts_px[rows, t][keep],
            weight[keep])
