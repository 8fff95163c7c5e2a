"""Separable samples of the analytic transform of isotropic Gaussian components.

The transform of a component factors into one term per axis, so its samples on
a grid are outer products of 1-D factors (:func:`axis_factors`). Shared by the
band-limited maps of :mod:`cryoviz.gaussians` and the projections of
:mod:`cryoviz.gaussian_projection`; conventions as in :mod:`cryoviz.gaussians`.
"""

from __future__ import annotations

import math

import torch

__all__ = ["CHUNK_BYTES", "check_box", "phases", "axis_factors"]

#: Memory budget (bytes) of one chunk of complex intermediates.
CHUNK_BYTES = 256 * 2**20


def phases(
    step: float,
    start: int,
    count: int,
    positions: torch.Tensor,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """``scale_j exp(-2 pi i (start + m) step x_j)`` for ``m = 0 .. count-1``.

    ``step`` cycles/Å; ``positions`` (..., J) Å; ``scale`` (J,) real or None.
    Returns (..., count, J) complex.
    The ``count`` phases are products of two sets of about ``sqrt(count)`` directly
    evaluated phases (``m = m1 + K l``), which needs ``2 sqrt(count)`` instead of
    ``count`` sine/cosine evaluations per position.
    """
    block = max(1, math.isqrt(count - 1) + 1) if count > 1 else 1
    n_blocks = -(-count // block)
    rdtype = positions.dtype
    device = positions.device
    fine = torch.arange(block, device=device, dtype=rdtype) * step
    coarse = (start + block * torch.arange(n_blocks, device=device, dtype=rdtype)) * step
    base = (-2.0 * math.pi) * positions[..., None, :]
    low = torch.polar(torch.ones((), dtype=rdtype, device=device), base * fine[:, None])
    if scale is not None:
        low = low * scale
    high = torch.polar(torch.ones((), dtype=rdtype, device=device), base * coarse[:, None])
    out = high[..., :, None, :] * low[..., None, :, :]  # (..., n_blocks, block, J)
    out = out.reshape(*out.shape[:-3], n_blocks * block, out.shape[-1])
    return out[..., :count, :]


def axis_factors(
    step: float, start: int, count: int, positions: torch.Tensor, sigmas: torch.Tensor
) -> torch.Tensor:
    """``exp(-2 pi^2 s_j^2 k^2) exp(-2 pi i k x_j)`` for ``k = (start + m) step``.

    ``positions`` (..., J) Å; ``sigmas`` (J,) Å. Returns (..., count, J) complex.
    """
    freqs = (start + torch.arange(count, device=positions.device, dtype=positions.dtype)) * step
    env = torch.exp(-2.0 * math.pi**2 * freqs[:, None] ** 2 * sigmas[None, :] ** 2)  # (K, J)
    return phases(step, start, count, positions) * env


def check_box(box_size: int, pixel_size_angstrom: float) -> None:
    """Raise ``ValueError`` unless ``box_size`` is an integer >= 2 and the pixel size > 0."""
    if int(box_size) != box_size or box_size < 2:
        raise ValueError(f"box_size must be an integer >= 2, got {box_size}")
    if not pixel_size_angstrom > 0:
        raise ValueError(f"pixel_size_angstrom must be > 0, got {pixel_size_angstrom}")
