"""Pose accuracy: global alignment of estimated rotations to the truth, and errors.

Relations (conventions of ``docs/CONVENTIONS.md``: ``r_lab = R r_particle``,
``image(x, y) = ∫ V(R^T (x, y, z)) dz``)
--------------------------------------------------------------------------

*Rotated reconstruction.* A reconstruction that is the true map rotated by ``G``,
``V_rec = rotate_volume(V_true, G)`` i.e. ``V_rec(r) = V_true(G^T r)``, explains
the images with poses ``R_est = R_true G^T``, because
``V_rec(R_est^T x) = V_true(G^T G R_true^T x) = V_true(R_true^T x)``. Hence

    ``R_est @ G = R_true``

and ``rotate_volume(V_rec, G^T)`` brings the reconstruction back onto the truth,
so :func:`cryoviz.metrics.align_volume` (``moving=V_rec, reference=V_true``)
returns ``rotation = G^T``.

*Mirrored reconstruction.* With ``F = diag(1, 1, -1)`` (z flip in the particle
frame, :func:`cryoviz.metrics.flip_hand`), the mirrored map
``V_m(r) = V(F r)`` seen with poses ``R`` gives the same images as ``V`` seen
with poses ``F R F``: ``V_m(R^T x) = V(F R^T F (F x))`` and ``F x`` only negates
the integration variable ``z``. So for a reconstruction of the wrong hand the
rotations ``F R_est F`` are those of the correct hand, and with ``flipped=True``
the returned ``G`` satisfies

    ``(F @ R_est @ F) @ G = R_true``.

If ``V_rec = rotate_volume(flip_hand(V_true), G0)`` then ``G = F G0 F`` and
:func:`cryoviz.metrics.align_volume` returns ``flipped=True, rotation = G^T``
again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cryoviz.geometry import geodesic_distance_deg

__all__ = [
    "RotationAlignment",
    "align_rotations",
    "apply_rotation_alignment",
    "rotation_error_deg",
    "shift_error_angstrom",
]


@dataclass(frozen=True)
class RotationAlignment:
    """Global alignment of estimated poses to true poses.

    Attributes
    ----------
    rotation
        ``(3, 3)`` rotation ``G`` with ``R_est' @ G ≈ R_true`` where
        ``R_est' = R_est`` (``flipped=False``) or ``F R_est F`` (``flipped=True``),
        ``F = diag(1, 1, -1)``.
    flipped
        Whether the estimated poses belong to the mirrored hand.
    median_error_deg
        Median geodesic error (degrees) after alignment.
    """

    rotation: torch.Tensor
    flipped: bool
    median_error_deg: float


def _check_rotations(R: torch.Tensor, name: str) -> None:
    if R.ndim != 3 or R.shape[-2:] != (3, 3):
        raise ValueError(f"{name} must have shape (N, 3, 3), got {tuple(R.shape)}")
    if R.shape[0] == 0:
        raise ValueError(f"{name} is empty")


def _mirror(R: torch.Tensor) -> torch.Tensor:
    """``F R F`` with ``F = diag(1, 1, -1)`` (negates R[..., 2, :2] and R[..., :2, 2])."""
    sign = torch.ones(3, 3, dtype=R.dtype, device=R.device)
    sign[2, :2] = -1
    sign[:2, 2] = -1
    return R * sign


def _project_to_so3(M: torch.Tensor) -> torch.Tensor:
    """Nearest rotation (Frobenius) to ``(..., 3, 3)`` matrices ``M``."""
    U, _, Vh = torch.linalg.svd(M)
    d = torch.sign(torch.linalg.det(U @ Vh))
    d = torch.where(d == 0, torch.ones_like(d), d)
    S = torch.ones(M.shape[:-1], dtype=M.dtype, device=M.device)
    S[..., 2] = d
    return U @ (S.unsqueeze(-1) * Vh)


def _angles_deg_from_trace(trace: torch.Tensor) -> torch.Tensor:
    cos = ((trace - 1.0) / 2.0).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cos))


def _fit_one_hand(
    R_est: torch.Tensor, R_true: torch.Tensor, n_candidates: int, generator: torch.Generator
) -> tuple[torch.Tensor, float]:
    """Robust ``G`` with ``R_est @ G ≈ R_true``; returns ``(G, median_error_deg)``."""
    n = R_est.shape[0]
    # Per-particle estimates G_i = R_est_i^T R_true_i.
    M = R_est.transpose(-1, -2) @ R_true  # (N, 3, 3)
    # Candidates: a random subset of single-pair estimates plus the global chordal mean.
    if n > n_candidates:
        pick = torch.randperm(n, generator=generator)[:n_candidates].to(R_est.device)
        cands = M[pick]
    else:
        cands = M
    cands = torch.cat([cands, _project_to_so3(M.sum(0)).unsqueeze(0)], dim=0)
    # error of candidate c on particle i: angle of C^T M_i, trace = <C, M_i>_F.
    err = _angles_deg_from_trace(torch.einsum("cab,nab->cn", cands, M))
    med = err.median(dim=1).values
    best = int(torch.argmin(med))
    G = cands[best]
    # Refine: chordal L2 mean over inliers, a few times.
    for _ in range(3):
        e = _angles_deg_from_trace(torch.einsum("ab,nab->n", G, M))
        med_e = float(e.median())
        thresh = max(3.0 * med_e, 1.0)
        inliers = e <= thresh
        if int(inliers.sum()) < 1:
            break
        G = _project_to_so3(M[inliers].sum(0))
    e = _angles_deg_from_trace(torch.einsum("ab,nab->n", G, M))
    return G, float(e.median())


def align_rotations(
    R_est: torch.Tensor,
    R_true: torch.Tensor,
    allow_flip: bool = True,
    n_candidates: int = 200,
    seed: int = 0,
) -> RotationAlignment:
    """Global rotation (and hand) best aligning estimated to true poses.

    Finds ``G`` minimising the median geodesic error of ``R_est @ G`` against
    ``R_true`` (see the module docstring for why ``G`` multiplies on the right):
    candidates are single-pair estimates ``R_est_i^T R_true_i`` (a random subset
    of ``n_candidates``) plus the chordal mean; the one with the smallest median
    error is refined by the chordal L2 mean (SVD projection of
    ``sum R_est_i^T R_true_i``) over its inliers, so up to ~half the poses may be
    outliers.

    Parameters
    ----------
    R_est, R_true
        ``(N, 3, 3)`` estimated and true rotations (particle -> lab).
    allow_flip
        Also try the mirrored hand ``F R_est F`` (``F = diag(1, 1, -1)``) and keep
        it if its median error is smaller.
    n_candidates
        Number of single-pair candidate rotations tried.
    seed
        Seed of the candidate subset (results are deterministic).

    Returns
    -------
    RotationAlignment
        ``rotation`` ``(3, 3)`` in ``R_est``'s dtype/device, ``flipped``, and the
        median error.
    """
    _check_rotations(R_est, "R_est")
    _check_rotations(R_true, "R_true")
    if R_est.shape != R_true.shape:
        raise ValueError(
            f"R_est and R_true must have the same shape, got {tuple(R_est.shape)} "
            f"and {tuple(R_true.shape)}"
        )
    if n_candidates < 1:
        raise ValueError(f"n_candidates must be >= 1, got {n_candidates}")
    dtype = torch.promote_types(R_est.dtype, R_true.dtype)
    work = torch.float64
    A = R_est.to(work)
    B = R_true.to(device=R_est.device, dtype=work)
    G, med = _fit_one_hand(A, B, n_candidates, torch.Generator().manual_seed(seed))
    flipped = False
    if allow_flip:
        Gf, medf = _fit_one_hand(_mirror(A), B, n_candidates, torch.Generator().manual_seed(seed))
        if medf < med:
            G, med, flipped = Gf, medf, True
    return RotationAlignment(rotation=G.to(dtype), flipped=flipped, median_error_deg=med)


def apply_rotation_alignment(R_est: torch.Tensor, alignment: RotationAlignment) -> torch.Tensor:
    """Aligned poses ``R_est' @ G`` (``R_est' = F R_est F`` if ``alignment.flipped``).

    Parameters
    ----------
    R_est
        ``(N, 3, 3)`` estimated rotations.
    alignment
        Result of :func:`align_rotations`.

    Returns
    -------
    torch.Tensor
        ``(N, 3, 3)`` rotations comparable with ``R_true``.
    """
    _check_rotations(R_est, "R_est")
    R = _mirror(R_est) if alignment.flipped else R_est
    return R @ alignment.rotation.to(device=R.device, dtype=R.dtype)


def rotation_error_deg(
    R_est: torch.Tensor,
    R_true: torch.Tensor,
    align: bool = True,
    allow_flip: bool = True,
) -> torch.Tensor:
    """Per-particle geodesic rotation error in degrees.

    Parameters
    ----------
    R_est, R_true
        ``(N, 3, 3)`` estimated and true rotations.
    align
        First remove the global rotation (and hand, if ``allow_flip``) found by
        :func:`align_rotations`; needed for ab-initio reconstructions whose frame
        is arbitrary.
    allow_flip
        Allow the mirrored hand in the alignment.

    Returns
    -------
    torch.Tensor
        ``(N,)`` errors in degrees, in ``[0, 180]``.
    """
    _check_rotations(R_est, "R_est")
    _check_rotations(R_true, "R_true")
    if R_est.shape != R_true.shape:
        raise ValueError(
            f"R_est and R_true must have the same shape, got {tuple(R_est.shape)} "
            f"and {tuple(R_true.shape)}"
        )
    R = R_est
    if align:
        R = apply_rotation_alignment(R_est, align_rotations(R_est, R_true, allow_flip=allow_flip))
    return geodesic_distance_deg(R, R_true.to(device=R.device, dtype=R.dtype))


def shift_error_angstrom(shifts_est_angstrom: torch.Tensor,
                         shifts_true_angstrom: torch.Tensor) -> torch.Tensor:
    """Per-particle Euclidean distance between estimated and true shifts.

    Parameters
    ----------
    shifts_est_angstrom, shifts_true_angstrom
        ``(N, 2)`` (or ``(N, k)``) in-plane shifts in Å (see ``docs/CONVENTIONS.md``).

    Returns
    -------
    torch.Tensor
        ``(N,)`` errors in Å. No global offset is removed.
    """
    if shifts_est_angstrom.shape != shifts_true_angstrom.shape:
        raise ValueError(
            "shifts_est_angstrom and shifts_true_angstrom must have the same shape, got "
            f"{tuple(shifts_est_angstrom.shape)} and {tuple(shifts_true_angstrom.shape)}"
        )
    if shifts_est_angstrom.ndim != 2:
        raise ValueError(
            f"shifts must have shape (N, 2), got {tuple(shifts_est_angstrom.shape)}"
        )
    diff = shifts_est_angstrom - shifts_true_angstrom.to(shifts_est_angstrom)
    return torch.linalg.vector_norm(diff, dim=-1)

