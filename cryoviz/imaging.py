"""The image formation model: volume + poses + CTF + shifts -> images.

In Fourier space, for particle ``i``::

    X_i(k) = CTF_i(k) * exp(-2 pi i k . t_i) * V~(R_i^T k)

with ``V~`` the transform of the volume (padded for accurate interpolation and
pre-divided by the trilinear kernel's transform, as RELION does), ``t_i`` the
shift in pixels and ``CTF_i`` from :mod:`cryoviz.ctf`.
"""

from __future__ import annotations

import torch

from cryoviz.ctf import CTFParams, compute_ctf_2d
from cryoviz.fourier import (
    centered_fft3,
    centered_irfft2,
    centered_rfft2,
    pad_center,
    phase_shift,
    real_dtype_of,
)
from cryoviz.projection import extract_slices

__all__ = [
    "gridding_correction",
    "volume_to_fourier",
    "project_fourier",
    "forward_fourier",
    "apply_shift_and_ctf",
    "render_images",
    "images_to_fourier",
]


def gridding_correction(box_size: int, padded_size: int, dtype=torch.float32, device=None):
    """Real-space transform of the trilinear kernel on a ``Dp`` grid, ``(D, D, D)``.

    Trilinear interpolation in Fourier space convolves with a tent of one voxel
    of the ``Dp`` grid, which multiplies real space by
    ``sinc^2(x / Dp)`` along each axis (``x`` in pixels from the origin).
    """
    x = (torch.arange(box_size, device=device, dtype=torch.float64) - box_size // 2) / padded_size
    s = torch.sinc(x) ** 2
    return (s[:, None, None] * s[None, :, None] * s[None, None, :]).to(dtype)


def volume_to_fourier(
    volume: torch.Tensor, pad_factor: float = 2.0, correct_gridding: bool = True
) -> torch.Tensor:
    """Padded, gridding-corrected centred transform of a real ``(D, D, D)`` volume.

    Parameters
    ----------
    volume
        ``(D, D, D)`` real volume (differentiable).
    pad_factor
        Padded size ``Dp = round(pad_factor * D)``.
    correct_gridding
        Pre-divide by the trilinear kernel so that sliced projections match the
        real-space projection.

    Returns
    -------
    torch.Tensor
        ``(Dp, Dp, Dp)`` complex transform, for :func:`project_fourier`.
    """
    box = volume.shape[-1]
    padded = int(round(pad_factor * box))
    if correct_gridding:
        volume = volume / gridding_correction(box, padded, volume.dtype, volume.device)
    return centered_fft3(pad_center(volume, padded, ndim=3))


def project_fourier(
    volume_ft: torch.Tensor, rotations: torch.Tensor, box_size: int
) -> torch.Tensor:
    """Transforms of the projections of a volume, ``(B, D, D // 2 + 1)`` (no CTF, no shift)."""
    return extract_slices(volume_ft, rotations, box_size, rfft=True)


def forward_fourier(
    volume_ft: torch.Tensor,
    rotations: torch.Tensor,
    box_size: int,
    pixel_size_angstrom: float,
    shifts_angstrom: torch.Tensor | None = None,
    ctf: CTFParams | None = None,
) -> torch.Tensor:
    """The forward model in Fourier space.

    Parameters
    ----------
    volume_ft
        ``(Dp, Dp, Dp)`` from :func:`volume_to_fourier`.
    rotations
        ``(B, 3, 3)`` particle -> lab.
    box_size
        Image box ``D``.
    pixel_size_angstrom
        Pixel size in Å.
    shifts_angstrom
        ``(B, 2)`` particle displacements ``(x, y)`` in Å, or ``None``.
    ctf
        CTF parameters of the ``B`` particles, or ``None``.

    Returns
    -------
    torch.Tensor
        ``(B, D, D // 2 + 1)`` complex image transforms.
    """
    ft = project_fourier(volume_ft, rotations, box_size)
    return apply_shift_and_ctf(ft, pixel_size_angstrom, shifts_angstrom, ctf)


def apply_shift_and_ctf(
    ft: torch.Tensor,
    pixel_size_angstrom: float,
    shifts_angstrom: torch.Tensor | None = None,
    ctf: CTFParams | None = None,
    ctf_values: torch.Tensor | None = None,
) -> torch.Tensor:
    """Translate and CTF-modulate projection transforms (any volume model's slices).

    Parameters
    ----------
    ft
        ``(B, D, D // 2 + 1)`` centred half transforms of centred projections.
    pixel_size_angstrom
        Pixel size in Å.
    shifts_angstrom
        ``(B, 2)`` particle displacements ``(x, y)`` in Å, or ``None``.
    ctf
        CTF parameters of the ``B`` particles, or ``None``.
    ctf_values
        ``(B, D, D // 2 + 1)`` the same CTF already evaluated on the half grid
        (:func:`cryoviz.ctf.compute_ctf_2d` with ``rfft=True``), used instead of
        ``ctf`` when a caller needs it twice.

    Returns
    -------
    torch.Tensor
        ``(B, D, D // 2 + 1)`` transforms of the images.
    """
    box_size = int(ft.shape[-2])
    if shifts_angstrom is not None:
        shifts_px = shifts_angstrom.to(real_dtype_of(ft.dtype)) / pixel_size_angstrom
        ft = phase_shift(ft, shifts_px, box_size, rfft=True)
    if ctf_values is not None:
        return ft * ctf_values.to(real_dtype_of(ft.dtype))
    if ctf is not None:
        values = compute_ctf_2d(
            ctf, box_size, pixel_size_angstrom, rfft=True,
            dtype=real_dtype_of(ft.dtype), device=ft.device,
        )
        ft = ft * values
    return ft


def render_images(
    volume: torch.Tensor,
    rotations: torch.Tensor,
    pixel_size_angstrom: float,
    shifts_angstrom: torch.Tensor | None = None,
    ctf: CTFParams | None = None,
    pad_factor: float = 2.0,
) -> torch.Tensor:
    """Noise-free real-space images of a real ``(D, D, D)`` volume, ``(B, D, D)``."""
    box = volume.shape[-1]
    volume_ft = volume_to_fourier(volume, pad_factor)
    ft = forward_fourier(volume_ft, rotations, box, pixel_size_angstrom, shifts_angstrom, ctf)
    return centered_irfft2(ft, box)


def images_to_fourier(images: torch.Tensor) -> torch.Tensor:
    """Centred half transforms ``(B, D, D // 2 + 1)`` of real images ``(B, D, D)``."""
    return centered_rfft2(images)
