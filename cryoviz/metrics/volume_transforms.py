"""Real-space volume transforms: rotation and translation, hand flip, Fourier resampling.

Conventions (``docs/CONVENTIONS.md``): volumes ``(D, D, D)`` indexed
``[z, y, x]``, origin at index ``D // 2``; coordinates ``(x, y, z)`` in pixels;
rotating an object by ``R`` maps its point ``p`` to ``R p``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as nnf

from cryoviz.fourier import centered_fft3, centered_ifft3, crop_center, frequency_grid_3d

__all__ = ["check_volume", "rotate_volume", "flip_hand", "fourier_resample"]


def check_volume(volume: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` unless ``volume`` is a real floating-point ``(D, D, D)``, D >= 2."""
    if volume.ndim != 3 or not (volume.shape[0] == volume.shape[1] == volume.shape[2]):
        raise ValueError(
            f"{name} must be a cubic (D, D, D) volume, got shape {tuple(volume.shape)}"
        )
    if volume.shape[0] < 2:
        raise ValueError(f"{name} must have D >= 2, got D = {volume.shape[0]}")
    if not volume.is_floating_point():
        raise ValueError(f"{name} must be a real floating-point tensor, got dtype {volume.dtype}")


def rotate_volume(
    volume: torch.Tensor,
    R: torch.Tensor,
    shift_px: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> torch.Tensor:
    """Rotate (and translate) a volume by trilinear resampling.

    The output ``W`` satisfies ``W(r) = V(R^T (r - shift))`` for coordinates
    ``r = (x, y, z)`` relative to the origin at index ``D // 2``: the object is
    rotated by ``R`` about the origin, then moved by ``shift``; a feature at
    ``p`` ends up at ``R p + shift``. Samples falling outside the box are 0.

    Parameters
    ----------
    volume
        ``(D, D, D)`` real volume indexed ``[z, y, x]``.
    R
        ``(3, 3)`` rotation, or ``(B, 3, 3)`` for a batch of rotated copies.
    shift_px
        Optional ``(3,)`` (or ``(B, 3)``) translation ``(x, y, z)`` in pixels.
    chunk_size
        Rotations resampled at a time (memory bound for large batches).

    Returns
    -------
    torch.Tensor
        ``(D, D, D)``, or ``(B, D, D, D)`` for batched ``R``, in ``volume``'s
        dtype and device.
    """
    check_volume(volume, "volume")
    if R.shape[-2:] != (3, 3) or R.ndim not in (2, 3):
        raise ValueError(f"R must have shape (3, 3) or (B, 3, 3), got {tuple(R.shape)}")
    batched = R.ndim == 3
    Rb = (R if batched else R.unsqueeze(0)).to(device=volume.device, dtype=volume.dtype)
    n = Rb.shape[0]
    if shift_px is not None:
        if shift_px.shape[-1] != 3 or shift_px.ndim not in (1, 2):
            raise ValueError(
                f"shift_px must have shape (3,) or (B, 3), got {tuple(shift_px.shape)}"
            )
        shifts = shift_px.to(device=volume.device, dtype=volume.dtype).reshape(-1, 3)
        if shifts.shape[0] not in (1, n):
            raise ValueError(f"shift_px has {shifts.shape[0]} rows for {n} rotations")
        shifts = shifts.expand(n, 3)
    else:
        shifts = torch.zeros(n, 3, dtype=volume.dtype, device=volume.device)
    box = volume.shape[-1]
    center = box // 2
    axis = torch.arange(box, dtype=volume.dtype, device=volume.device) - center
    # grid_sample, align_corners=True: normalised -1 / +1 are the centres of
    # indices 0 / D-1; the grid's last axis is (x, y, z) for an input [z, y, x].
    scale = 2.0 / (box - 1)
    zc = axis.view(1, box, 1, 1, 1)
    yc = axis.view(1, 1, box, 1, 1)
    xc = axis.view(1, 1, 1, box, 1)
    out = []
    src = volume.unsqueeze(0).unsqueeze(0)
    for start in range(0, n, chunk_size):
        Rc = Rb[start:start + chunk_size]
        sc = shifts[start:start + chunk_size]
        b = Rc.shape[0]
        # p = R^T (r - s), i.e. p_i = sum_j R_ji (r_j - s_j); then to grid units
        rows = Rc * scale  # (b, 3, 3), row j multiplies coordinate j
        offset = (center * scale - 1.0) - (sc.unsqueeze(1) @ Rc).squeeze(1) * scale  # (b, 3)
        grid = (
            xc * rows[:, None, None, None, 0, :]
            + yc * rows[:, None, None, None, 1, :]
            + zc * rows[:, None, None, None, 2, :]
            + offset[:, None, None, None, :]
        )  # (b, D, D, D, 3)
        # stack the batch along the output depth axis: one input, no copies of it
        res = nnf.grid_sample(
            src, grid.reshape(1, b * box, box, box, 3), mode="bilinear",
            padding_mode="zeros", align_corners=True,
        )
        out.append(res.reshape(b, box, box, box))
    result = torch.cat(out, dim=0)
    return result if batched else result[0]


def flip_hand(volume: torch.Tensor) -> torch.Tensor:
    """Mirror a volume through the ``z = 0`` plane of the origin at ``D // 2``.

    ``W(x, y, z) = V(x, y, -z)``, i.e. ``W(r) = V(F r)`` with
    ``F = diag(1, 1, -1)``. For even ``D`` the slice ``z = -D/2`` has no mirror
    partner inside the box and is kept in place. Applying it twice is the identity.

    Parameters
    ----------
    volume
        ``(..., D, D, D)`` volume indexed ``[z, y, x]``.

    Returns
    -------
    torch.Tensor
        Mirrored volume, same shape.
    """
    if volume.ndim < 3:
        raise ValueError(f"volume must have at least 3 dimensions, got shape {tuple(volume.shape)}")
    box = volume.shape[-3]
    flipped = torch.flip(volume, dims=(-3,))  # index i <- D - 1 - i
    if box % 2 == 0:
        # want i <- D - i (about D // 2): shift by one, index 0 wraps onto itself
        flipped = torch.roll(flipped, shifts=1, dims=-3)
    return flipped


def fourier_resample(volume: torch.Tensor, size: int, taper_start: float = 0.35) -> torch.Tensor:
    """Fourier-crop ``volume`` to ``size`` (if smaller) with a cosine low-pass.

    The filter is 1 up to ``taper_start`` and 0 from 0.5 cycles/px of the
    *output* box, so the result is smooth and free of aliasing.
    """
    box = volume.shape[-1]
    ft = centered_fft3(volume)
    if size < box:
        ft = crop_center(ft, size, 3)
    else:
        size = box
    kz, ky, kx = frequency_grid_3d(size, device=volume.device, dtype=volume.dtype)
    k = torch.sqrt(kz**2 + ky**2 + kx**2)
    t = ((k - taper_start) / (0.5 - taper_start)).clamp(0.0, 1.0)
    ft = ft * (0.5 * (1.0 + torch.cos(math.pi * t)))
    return centered_ifft3(ft).real
