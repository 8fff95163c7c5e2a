"""Scoring images against projections over grids of rotations and shifts.

The kernel of every pose search (exact EM, branch-and-bound): for images
``X_i`` (centred half transforms restricted to a set of Fourier pixels ``p``),
their CTFs and a per-pixel inverse noise variance ``w_p = h_p / (2 sigma2(s_p))``
(``h_p`` the Hermitian half-plane weight, see :class:`cryoviz.noise.HalfPlaneShells`),
the Gaussian log-likelihood of pose ``(r, t)`` up to a per-image constant is::

    L_irt = 2 Re sum_p w_p conj(X_ip) CTF_ip S_t(p) P_r(p) - sum_p w_p CTF_ip^2 |P_r(p)|^2

with ``S_t(p) = exp(-2 pi i (k_x t_x + k_y t_y))`` the phase of a particle shifted by
``t`` pixels (the convention of :func:`cryoviz.fourier.phase_shift`) and ``P_r`` the
central slice at rotation ``r``. Both sums are matrix products, so a batch of
images is scored against thousands of rotations at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cryoviz.fourier import frequency_grid_2d
from cryoviz.geometry.rotations import geodesic_distance_deg
from cryoviz.noise import HalfPlaneShells, half_plane_shells

__all__ = [
    "PixelSet",
    "pixel_set",
    "shift_grid",
    "shift_phases",
    "score_poses",
    "normalise_scores",
    "credible_set",
    "angular_spread_deg",
]


@dataclass(frozen=True)
class PixelSet:
    """Fourier pixels of a half-plane image transform used in scoring.

    Attributes
    ----------
    layout
        Shells ``1 .. last_shell`` of the ``(D, D // 2 + 1)`` half plane.
    ky, kx
        ``(P,)`` frequencies (cycles/px) of the kept pixels.
    """

    layout: HalfPlaneShells
    ky: torch.Tensor
    kx: torch.Tensor

    @property
    def pixels(self) -> torch.Tensor:
        """``(P,)`` flat indices into the half plane."""
        return self.layout.pixels

    @property
    def frequencies(self) -> torch.Tensor:
        """``(P, 2)`` ``(kx, ky)`` in cycles/px, for :func:`cryoviz.projection.extract_points`."""
        return torch.stack([self.kx, self.ky], dim=-1)

    def take(self, values: torch.Tensor) -> torch.Tensor:
        """The kept pixels ``(..., P)`` of ``(..., D, D // 2 + 1)`` values."""
        return values.reshape(*values.shape[:-2], -1)[..., self.layout.pixels]

    def inverse_variance(self, sigma2: torch.Tensor) -> torch.Tensor:
        """``(P,)`` ``w_p = h_p / (2 sigma2(s_p))`` from per-shell ``sigma2`` ``(S,)``."""
        return self.layout.weight / (2.0 * sigma2[self.layout.shell])


def pixel_set(box_size: int, last_shell: int, device: torch.device | str | None = None
              ) -> PixelSet:
    """The :class:`PixelSet` of shells ``1 .. last_shell`` of a ``D``-pixel box."""
    layout = half_plane_shells(box_size, last_shell, device=device)
    ky, kx = frequency_grid_2d(box_size, rfft=True, device=device, dtype=torch.float64)
    return PixelSet(layout=layout, ky=ky.reshape(-1)[layout.pixels],
                    kx=kx.reshape(-1)[layout.pixels])


def shift_grid(range_px: float, step_px: float, device: torch.device | str | None = None
               ) -> torch.Tensor:
    """``(T, 2)`` float64 shifts ``(x, y)`` in pixels on a square grid within a disc.

    Points ``step * (i, j)`` with ``|step * (i, j)| <= range`` (``(0, 0)`` always).
    """
    if step_px <= 0 or range_px < 0:
        raise ValueError(f"need step_px > 0 and range_px >= 0, got {step_px}, {range_px}")
    n = int(math.floor(range_px / step_px + 1e-9))
    r = torch.arange(-n, n + 1, dtype=torch.float64, device=device) * step_px
    grid = torch.stack(torch.meshgrid(r, r, indexing="xy"), -1).reshape(-1, 2)
    return grid[(grid**2).sum(-1) <= range_px**2 + 1e-9]


def shift_phases(shifts_px: torch.Tensor, pixels: PixelSet) -> torch.Tensor:
    """Phases ``S_t(p)`` ``(..., T, P)`` complex128 of shifts ``(..., T, 2)`` in pixels."""
    s = shifts_px.to(torch.float64)
    angle = -2.0 * math.pi * (s[..., 0:1] * pixels.kx + s[..., 1:2] * pixels.ky)
    return torch.polar(torch.ones_like(angle), angle)


def score_poses(
    images: torch.Tensor,
    ctf: torch.Tensor,
    inverse_variance: torch.Tensor,
    projections: torch.Tensor,
    phases: torch.Tensor,
) -> torch.Tensor:
    """Log-likelihoods ``(B, T, R)`` of every pose (up to a per-image constant).

    Parameters
    ----------
    images
        ``(B, P)`` complex image transforms at the kept pixels.
    ctf
        ``(B, P)`` real CTF values.
    inverse_variance
        ``(P,)`` ``w_p`` (see :meth:`PixelSet.inverse_variance`).
    projections
        ``(R, P)`` central slices shared by the batch, or ``(B, R, P)`` per image.
    phases
        ``(T, P)`` shift phases shared by the batch, or ``(B, T, P)`` per image.

    Returns
    -------
    torch.Tensor
        ``(B, T, R)`` real, in the precision of ``projections``.
    """
    cdtype = projections.dtype
    rdtype = projections.real.dtype
    a = (images.conj() * (ctf * inverse_variance)).to(cdtype)  # (B, P)
    a = a[:, None, :] * phases.to(cdtype)  # (B, T, P)
    c2w = (ctf**2 * inverse_variance).to(rdtype)  # (B, P)
    power = projections.real**2 + projections.imag**2
    if projections.ndim == 2:
        b, t, p = a.shape
        cross = (a.reshape(b * t, p) @ projections.T).real.reshape(b, t, -1)
        norm = c2w @ power.T  # (B, R)
    else:
        cross = torch.bmm(a, projections.transpose(1, 2)).real
        norm = torch.bmm(c2w[:, None, :], power.transpose(1, 2))[:, 0]
    return 2.0 * cross - norm[:, None, :]


def normalise_scores(scores: torch.Tensor, log_prior: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior ``(B, ...)`` over all trailing axes and the log evidence ``(B,)``.

    ``log_prior`` (broadcastable to ``scores``) is added first.
    """
    joint = scores if log_prior is None else scores + log_prior
    flat = joint.reshape(joint.shape[0], -1).to(torch.float64)
    evidence = torch.logsumexp(flat, dim=1)
    return torch.exp(flat - evidence[:, None]).reshape(joint.shape), evidence


def credible_set(weights: torch.Tensor, level: float) -> torch.Tensor:
    """Bool mask ``(B, R)`` of the smallest sets holding at least ``level`` of each row.

    Ties are broken by order; a row's most probable entry is always in.
    """
    order = torch.argsort(weights, dim=1, descending=True)
    sorted_w = torch.gather(weights, 1, order)
    before = torch.cumsum(sorted_w, dim=1) - sorted_w  # mass of the better entries
    keep_sorted = before < level
    mask = torch.zeros_like(keep_sorted)
    return mask.scatter(1, order, keep_sorted)


def angular_spread_deg(candidates: torch.Tensor, weights: torch.Tensor,
                       best: torch.Tensor) -> torch.Tensor:
    """Posterior root-mean-square angle ``(B,)`` (degrees) around the best rotation.

    Parameters
    ----------
    candidates
        ``(B, R, 3, 3)`` rotations.
    weights
        ``(B, R)`` their posterior probabilities (summing to 1).
    best
        ``(B, 3, 3)`` the reference rotation.
    """
    angle = geodesic_distance_deg(candidates, best[:, None].expand_as(candidates))
    return torch.sqrt((weights * angle.to(weights.dtype) ** 2).sum(dim=1))
