"""Rigid-body volume alignment: rotation, translation and hand of one map onto another.

Conventions (``docs/CONVENTIONS.md``): volumes ``(D, D, D)`` indexed
``[z, y, x]``, origin at index ``D // 2``; coordinates ``(x, y, z)`` in pixels;
rotating an object by ``R`` maps its point ``p`` to ``R p``. The volume transforms
(:func:`rotate_volume`, :func:`flip_hand`) are in :mod:`cryoviz.metrics.volume_transforms`
and re-exported here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cryoviz.fourier import lowpass_volume
from cryoviz.geometry import SO3Grid, local_rotations
from cryoviz.metrics.volume_transforms import (
    check_volume,
    flip_hand,
    fourier_resample,
    rotate_volume,
)

__all__ = ["AlignmentResult", "align_volume", "flip_hand", "rotate_volume"]


@dataclass(frozen=True)
class AlignmentResult:
    """Result of :func:`align_volume`.

    Attributes
    ----------
    rotation
        ``(3, 3)`` rotation ``R`` applied to the (possibly flipped) moving map.
    shift_px
        ``(3,)`` translation ``(x, y, z)`` in pixels of the input box, applied
        after the rotation.
    flipped
        Whether the moving map was mirrored with :func:`flip_hand` first.
    aligned
        ``(D, D, D)``: ``rotate_volume(flip_hand(moving) if flipped else moving,
        rotation, shift_px)``.
    correlation
        Real-space Pearson correlation of ``aligned`` with the reference.
    """

    rotation: torch.Tensor
    shift_px: torch.Tensor
    flipped: bool
    aligned: torch.Tensor
    correlation: float

    def apply(self, volume: torch.Tensor) -> torch.Tensor:
        """The same hand, rotation and shift applied to another ``(D, D, D)`` map in the
        moving map's frame (e.g. a component or a half map of the same run)."""
        moved = flip_hand(volume) if self.flipped else volume
        return rotate_volume(moved, self.rotation, self.shift_px)


class _Scorer:
    """Translation-maximised normalised cross-correlation against a reference.

    For each rotated map ``v`` (optionally pre-translated by an offset ``s``) the
    circular cross-correlation ``c(t) = sum_r ref(r) v(r - s - t)`` is computed by
    FFT; the score is its (parabolically interpolated) peak over ``|t| <= max_shift``
    and the shift is ``s + t`` with sub-pixel ``t``.
    """

    def __init__(self, reference: torch.Tensor, max_shift_px: float) -> None:
        self.box = box = reference.shape[-1]
        dev, dt = reference.device, reference.dtype
        ref = reference - reference.mean()
        self.ref_norm = torch.linalg.vector_norm(ref).clamp_min(1e-30)
        self.ref_ft = torch.fft.rfftn(ref, dim=(-3, -2, -1))
        idx = torch.arange(box, device=dev)
        self.wrapped = torch.where(idx > box // 2, idx - box, idx).to(dt)
        wz, wy, wx = torch.meshgrid(self.wrapped, self.wrapped, self.wrapped, indexing="ij")
        self.allowed = (wz**2 + wy**2 + wx**2) <= max_shift_px**2 + 1e-9
        self.k1 = torch.fft.fftfreq(box, device=dev, dtype=dt)
        self.k1x = torch.fft.rfftfreq(box, device=dev, dtype=dt)

    def __call__(
        self, rotated: torch.Tensor, offsets: torch.Tensor | None = None, chunk_size: int = 128
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores ``(B,)`` and shifts ``(B, 3)`` (x, y, z) of ``(B, D, D, D)`` maps."""
        scores, shifts = [], []
        box = self.box
        n = rotated.shape[0]
        if offsets is None:
            offsets = torch.zeros(n, 3, dtype=rotated.dtype, device=rotated.device)
        for start in range(0, n, chunk_size):
            v = rotated[start:start + chunk_size]
            off = offsets[start:start + chunk_size]
            b = v.shape[0]
            v = v - v.mean(dim=(-3, -2, -1), keepdim=True)
            norm = torch.linalg.vector_norm(v.reshape(b, -1), dim=-1).clamp_min(1e-30)
            vf = torch.fft.rfftn(v, dim=(-3, -2, -1))
            if bool((off != 0).any()):
                # translate v by +offset (content moves towards +offset), separably
                px = -2.0 * math.pi * self.k1x * off[:, 0:1]
                py = -2.0 * math.pi * self.k1 * off[:, 1:2]
                pz = -2.0 * math.pi * self.k1 * off[:, 2:3]
                ex = torch.polar(torch.ones_like(px), px)
                ey = torch.polar(torch.ones_like(py), py)
                ez = torch.polar(torch.ones_like(pz), pz)
                vf = vf * ez[:, :, None, None] * ey[:, None, :, None] * ex[:, None, None, :]
            # c[t] = sum_r ref(r) v(r - t): peak at the shift that moves v onto ref
            cc = torch.fft.irfftn(self.ref_ft * vf.conj(), s=(box, box, box), dim=(-3, -2, -1))
            cc = cc / (norm * self.ref_norm)[:, None, None, None]
            masked = cc.masked_fill(~self.allowed, -math.inf)
            best, arg = masked.reshape(b, -1).max(dim=-1)
            iz = arg // (box * box)
            iy = (arg // box) % box
            ix = arg % box
            rows = torch.arange(b, device=cc.device)
            sub, gain = [], torch.zeros_like(best)
            for axis_dim, axis_idx in ((2, ix), (1, iy), (0, iz)):
                cm, c0, cp = (
                    _sample_offset(cc, rows, (iz, iy, ix), axis_dim, o) for o in (-1, 0, 1)
                )
                curv = cm - 2 * c0 + cp
                ok = curv < 0
                safe = torch.where(ok, curv, -torch.ones_like(curv))
                delta = torch.where(ok, 0.5 * (cm - cp) / safe, torch.zeros_like(c0))
                delta = delta.clamp(-0.5, 0.5)
                gain = gain + torch.where(ok, -0.5 * delta * (cm - cp) * 0.5, torch.zeros_like(c0))
                sub.append(self.wrapped[axis_idx] + delta)
            scores.append(best + gain.clamp_min(0))
            shifts.append(off + torch.stack(sub, dim=-1))
        return torch.cat(scores), torch.cat(shifts)


def _sample_offset(
    cc: torch.Tensor, rows: torch.Tensor, index: tuple[torch.Tensor, ...], axis: int, offset: int
) -> torch.Tensor:
    """``cc[rows, iz, iy, ix]`` with index ``axis`` (0 = z) moved by ``offset`` (wrapped)."""
    j = list(index)
    j[axis] = (j[axis] + offset) % cc.shape[-1]
    return cc[rows, j[0], j[1], j[2]]


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a0 = a - a.mean()
    b0 = b - b.mean()
    denom = torch.linalg.vector_norm(a0) * torch.linalg.vector_norm(b0)
    if float(denom) == 0.0:
        return 0.0
    return float((a0 * b0).sum() / denom)


def _refine(
    moving: torch.Tensor, scorer: _Scorer, centers: torch.Tensor, shifts: torch.Tensor,
    orders: list[int], max_iter: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hill-climb ``centers`` ``(B, 3, 3)`` (with shifts ``(B, 3)``) over local grids.

    Returns refined ``(centers, scores, shifts)``.
    """
    n = centers.shape[0]
    rows = torch.arange(n, device=moving.device)
    scores, shifts = scorer(rotate_volume(moving, centers), shifts)
    for order in orders:
        for _ in range(max_iter):
            cand = local_rotations(centers, order, n_steps=1).to(moving.dtype)  # (B, K, 3, 3)
            k = cand.shape[1]
            s, t = scorer(
                rotate_volume(moving, cand.reshape(-1, 3, 3)),
                shifts.repeat_interleave(k, dim=0),
            )
            s = s.reshape(n, k)
            t = t.reshape(n, k, 3)
            best, arg = s.max(dim=1)
            improved = best > scores + 1e-12
            centers = torch.where(improved[:, None, None], cand[rows, arg], centers)
            shifts = torch.where(improved[:, None], t[rows, arg], shifts)
            scores = torch.where(improved, best, scores)
            if not bool(improved.any()) or bool((arg[improved] == k // 2).all()):
                break
    return centers, scores, shifts


def align_volume(
    moving: torch.Tensor,
    reference: torch.Tensor,
    pixel_size_angstrom: float | None = None,
    allow_flip: bool = True,
    search_resolution_angstrom: float | None = None,
    coarse_box: int = 16,
    refine_box: int = 32,
    grid_order: int = 1,
    n_candidates: int = 4,
    n_fine: int = 2,
    max_shift_fraction: float = 0.25,
) -> AlignmentResult:
    """Rigid-body alignment (rotation, translation, hand) of ``moving`` onto ``reference``.

    Maximises the real-space cross-correlation of low-passed, Fourier-cropped
    copies: a global search over :class:`cryoviz.geometry.SO3Grid` (order
    ``grid_order``) on a ``coarse_box`` box, the translation of each rotation from
    the (sub-pixel) peak of the FFT cross-correlation; the best ``n_candidates``
    per hand are hill-climbed with :func:`cryoviz.geometry.local_rotations`
    (orders ``grid_order + 1, + 2``); the best ``n_fine`` of those (either hand)
    are hill-climbed again on a ``refine_box`` box (orders up to
    ``grid_order + 4``, ~1.8° steps for the default), and the translation is
    re-measured at full size. The best full-size correlation wins.

    Parameters
    ----------
    moving, reference
        ``(D, D, D)`` real maps, origin at ``D // 2``.
    pixel_size_angstrom
        Voxel size in Å; only needed with ``search_resolution_angstrom``.
    allow_flip
        Also try the mirrored moving map (:func:`flip_hand`).
    search_resolution_angstrom
        Optional extra low-pass (Å) applied to both maps before searching, for
        noisy maps. Needs ``pixel_size_angstrom``.
    coarse_box, refine_box
        Box sizes of the global search and of the final local refinement (capped
        at ``D``).
    grid_order
        Order of the global SO(3) grid (``72 * 8**order`` rotations; 1 = ~29°, 2 = ~15°).
    n_candidates
        Best global-search rotations hill-climbed on the coarse box, per hand.
    n_fine
        Best coarse results (over both hands) refined on the ``refine_box`` box.
    max_shift_fraction
        Largest translation searched, as a fraction of ``D``.

    Returns
    -------
    AlignmentResult
        ``aligned = rotate_volume(flip_hand(moving) if flipped else moving,
        rotation, shift_px)`` ≈ ``reference``.
    """
    check_volume(moving, "moving")
    check_volume(reference, "reference")
    if moving.shape != reference.shape:
        raise ValueError(
            f"moving and reference must have the same shape, got {tuple(moving.shape)} "
            f"and {tuple(reference.shape)}"
        )
    if search_resolution_angstrom is not None and pixel_size_angstrom is None:
        raise ValueError("search_resolution_angstrom needs pixel_size_angstrom")
    if pixel_size_angstrom is not None and not pixel_size_angstrom > 0:
        raise ValueError(f"pixel_size_angstrom must be > 0, got {pixel_size_angstrom}")
    if coarse_box < 4 or refine_box < 4:
        raise ValueError(f"coarse_box and refine_box must be >= 4, got {coarse_box}, {refine_box}")
    if n_candidates < 1 or n_fine < 1:
        raise ValueError(f"n_candidates and n_fine must be >= 1, got {n_candidates}, {n_fine}")
    if grid_order < 0:
        raise ValueError(f"grid_order must be >= 0, got {grid_order}")
    if not 0 <= max_shift_fraction <= 0.5:
        raise ValueError(f"max_shift_fraction must be in [0, 0.5], got {max_shift_fraction}")

    dtype = torch.promote_types(moving.dtype, reference.dtype)
    device = moving.device
    mov = moving.to(dtype)
    ref = reference.to(device=device, dtype=dtype)
    box = mov.shape[-1]
    if search_resolution_angstrom is not None:
        res_a, px_a = float(search_resolution_angstrom), float(pixel_size_angstrom)
        mov_s, ref_s = lowpass_volume(mov, res_a, px_a), lowpass_volume(ref, res_a, px_a)
    else:
        mov_s, ref_s = mov, ref

    # the search runs in float32 (ample for correlations); outputs use ``dtype``
    sdt = torch.float32 if dtype in (torch.float64, torch.float32) else dtype
    mov_s, ref_s = mov_s.to(sdt), ref_s.to(sdt)
    c_box = min(coarse_box, box)
    r_box = min(refine_box, box)
    ref_c = fourier_resample(ref_s, c_box)
    ref_r = fourier_resample(ref_s, r_box)
    scorer_c = _Scorer(ref_c, max_shift_fraction * c_box)
    scorer_r = _Scorer(ref_r, max_shift_fraction * r_box)
    grid = SO3Grid(grid_order).rotations(dtype=sdt, device=device)

    hands = [False, True] if allow_flip else [False]
    full_ref_lp = fourier_resample(ref_s, box, taper_start=0.25)
    full_scorer = _Scorer(full_ref_lp, 2.0 * box / r_box)
    # coarse stage: global grid + local hill-climb for each hand
    coarse: list[tuple[float, bool, torch.Tensor, torch.Tensor]] = []
    for flipped in hands:
        m_c = fourier_resample(flip_hand(mov_s) if flipped else mov_s, c_box)
        scores, shifts_c = scorer_c(rotate_volume(m_c, grid))
        top = torch.topk(scores, min(n_candidates, scores.shape[0])).indices
        centers, scores_c, shifts_c = _refine(
            m_c, scorer_c, grid[top], shifts_c[top], [grid_order + 1, grid_order + 2], 4
        )
        for i in range(centers.shape[0]):
            coarse.append((float(scores_c[i]), flipped, centers[i], shifts_c[i]))
    coarse.sort(key=lambda item: -item[0])
    # fine stage for the best few candidates (either hand), then full-size shift
    best: AlignmentResult | None = None
    for _, flipped, center, shift_c in coarse[:n_fine]:
        m = flip_hand(mov_s) if flipped else mov_s
        m_r = fourier_resample(m, r_box)
        centers, _, shifts_r = _refine(
            m_r, scorer_r, center.unsqueeze(0), shift_c.unsqueeze(0) * (r_box / c_box),
            [grid_order + 2, grid_order + 3, grid_order + 4], 3,
        )
        rot = centers[0].to(dtype)
        m_full_lp = fourier_resample(m, box, taper_start=0.25)
        _, shift = full_scorer(
            rotate_volume(m_full_lp, centers[0]).unsqueeze(0),
            (shifts_r[0] * (box / r_box)).unsqueeze(0),
        )
        shift = shift[0].to(dtype)
        aligned = rotate_volume(flip_hand(mov) if flipped else mov, rot, shift)
        corr = _pearson(aligned, ref)
        if best is None or corr > best.correlation:
            best = AlignmentResult(
                rotation=rot, shift_px=shift, flipped=flipped, aligned=aligned, correlation=corr
            )
    if best is None:  # pragma: no cover - hands is never empty
        raise ValueError("no alignment candidates")
    return best
