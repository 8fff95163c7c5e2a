"""FFT conventions: the one place where they are defined.

Conventions
-----------
* Real-space arrays are indexed ``[..., z, y, x]`` (volumes) or ``[..., y, x]``
  (images); the origin (rotation centre) is the sample at index ``D // 2`` on
  every axis, for odd and even ``D``.
* Centred transforms put the zero frequency at index ``D // 2`` as well
  (``fftshift`` layout). Half transforms of real data (``rfft``) keep the last
  axis un-shifted: it holds ``kx = 0 .. D // 2``.
* Frequencies are in cycles per pixel: ``k = (i - D // 2) / D`` on centred
  axes and ``k = j / D`` on the rfft axis. Nyquist is ``0.5``.
* A translation of an image by ``t = (tx, ty)`` pixels (content moves towards
  ``+x, +y``) multiplies its transform by ``exp(-2 pi i (kx tx + ky ty))``.

All functions take and return tensors on the input's device and dtype.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "hermitian_half",
    "centered_fft2",
    "centered_ifft2",
    "centered_rfft2",
    "centered_irfft2",
    "centered_fft3",
    "centered_ifft3",
    "frequency_grid_2d",
    "frequency_grid_3d",
    "shell_index_2d",
    "shell_index_3d",
    "phase_shift",
    "pad_center",
    "crop_center",
    "crop_half_transform",
    "lowpass_volume",
    "hermitian_mirror",
    "real_dtype_of",
    "complex_dtype_of",
]


def real_dtype_of(dtype: torch.dtype) -> torch.dtype:
    """The real dtype matching ``dtype`` (complex128 -> float64, ...)."""
    if dtype == torch.complex128:
        return torch.float64
    if dtype == torch.complex64:
        return torch.float32
    return dtype


def complex_dtype_of(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype matching a real ``dtype`` (float64 -> complex128)."""
    if dtype in (torch.complex64, torch.complex128):
        return dtype
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def centered_fft2(images: torch.Tensor) -> torch.Tensor:
    """Full centred 2-D FFT.

    Parameters
    ----------
    images
        ``(..., D, D)`` real or complex images, origin at ``D // 2``.

    Returns
    -------
    torch.Tensor
        ``(..., D, D)`` complex, zero frequency at ``[D // 2, D // 2]``.
    """
    x = torch.fft.ifftshift(images, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))


def centered_ifft2(ft: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`centered_fft2` (complex result)."""
    x = torch.fft.ifftshift(ft, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.ifft2(x), dim=(-2, -1))


def centered_rfft2(images: torch.Tensor) -> torch.Tensor:
    """Half (rfft) centred 2-D FFT of real images.

    Parameters
    ----------
    images
        ``(..., D, D)`` real images, origin at ``D // 2``.

    Returns
    -------
    torch.Tensor
        ``(..., D, D // 2 + 1)`` complex; rows are ``ky`` centred at ``D // 2``,
        columns are ``kx = 0 .. D // 2``.
    """
    x = torch.fft.ifftshift(images, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.rfft2(x), dim=-2)


def centered_irfft2(ft: torch.Tensor, box_size: int) -> torch.Tensor:
    """Inverse of :func:`centered_rfft2`.

    Parameters
    ----------
    ft
        ``(..., D, D // 2 + 1)`` half transform.
    box_size
        ``D`` (needed to tell odd from even boxes).

    Returns
    -------
    torch.Tensor
        ``(..., D, D)`` real images, origin at ``D // 2``.
    """
    x = torch.fft.irfft2(torch.fft.ifftshift(ft, dim=-2), s=(box_size, box_size))
    return torch.fft.fftshift(x, dim=(-2, -1))


def centered_fft3(volume: torch.Tensor) -> torch.Tensor:
    """Full centred 3-D FFT of ``(..., D, D, D)`` data (origin at ``D // 2``)."""
    dims = (-3, -2, -1)
    x = torch.fft.ifftshift(volume, dim=dims)
    return torch.fft.fftshift(torch.fft.fftn(x, dim=dims), dim=dims)


def centered_ifft3(ft: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`centered_fft3` (complex result)."""
    dims = (-3, -2, -1)
    x = torch.fft.ifftshift(ft, dim=dims)
    return torch.fft.fftshift(torch.fft.ifftn(x, dim=dims), dim=dims)


def _centered_axis(n: int, device, dtype) -> torch.Tensor:
    return (torch.arange(n, device=device, dtype=dtype) - n // 2) / n


def frequency_grid_2d(
    box_size: int,
    rfft: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frequencies (cycles/px) of a centred 2-D transform.

    Parameters
    ----------
    box_size
        ``D``.
    rfft
        Half layout ``(D, D // 2 + 1)`` if True, else full ``(D, D)``.

    Returns
    -------
    (ky, kx)
        Two tensors of the layout's shape.
    """
    ky = _centered_axis(box_size, device, dtype)
    if rfft:
        kx = torch.arange(box_size // 2 + 1, device=device, dtype=dtype) / box_size
    else:
        kx = _centered_axis(box_size, device, dtype)
    grid_y, grid_x = torch.meshgrid(ky, kx, indexing="ij")
    return grid_y, grid_x


def frequency_grid_3d(
    box_size: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frequencies ``(kz, ky, kx)`` (cycles/px) of a centred 3-D transform, each ``(D, D, D)``."""
    k = _centered_axis(box_size, device, dtype)
    return torch.meshgrid(k, k, k, indexing="ij")


def shell_index_2d(
    box_size: int, rfft: bool = True, device: torch.device | str | None = None
) -> torch.Tensor:
    """Integer Fourier shell ``round(|k| * D)`` of each sample of a 2-D transform."""
    ky, kx = frequency_grid_2d(box_size, rfft=rfft, device=device, dtype=torch.float64)
    return torch.round(torch.sqrt(ky**2 + kx**2) * box_size).long()


def shell_index_3d(box_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Integer Fourier shell ``round(|k| * D)`` of each voxel of a centred 3-D transform."""
    kz, ky, kx = frequency_grid_3d(box_size, device=device, dtype=torch.float64)
    return torch.round(torch.sqrt(kz**2 + ky**2 + kx**2) * box_size).long()


def phase_shift(
    ft: torch.Tensor, shifts_px: torch.Tensor, box_size: int, rfft: bool = True
) -> torch.Tensor:
    """Translate images given by their centred transforms.

    Parameters
    ----------
    ft
        ``(B, D, D // 2 + 1)`` (``rfft=True``) or ``(B, D, D)`` centred transforms.
    shifts_px
        ``(B, 2)`` translations ``(tx, ty)`` in pixels; content moves towards ``+x, +y``.
    box_size
        ``D``.

    Returns
    -------
    torch.Tensor
        Transforms of the translated images, same shape as ``ft``.
    """
    rdtype = real_dtype_of(ft.dtype)
    ky, kx = frequency_grid_2d(box_size, rfft=rfft, device=ft.device, dtype=rdtype)
    shifts = shifts_px.to(dtype=rdtype)
    phase = -2.0 * math.pi * (
        kx * shifts[:, 0, None, None] + ky * shifts[:, 1, None, None]
    )
    return ft * torch.polar(torch.ones_like(phase), phase)


def pad_center(x: torch.Tensor, size: int, ndim: int) -> torch.Tensor:
    """Zero-pad the last ``ndim`` axes of ``x`` to ``size``, keeping the origin at ``size // 2``."""
    box = x.shape[-1]
    before = size // 2 - box // 2
    after = size - box - before
    pad: list[int] = []
    for _ in range(ndim):
        pad += [before, after]
    return torch.nn.functional.pad(x, pad)


def crop_center(x: torch.Tensor, size: int, ndim: int) -> torch.Tensor:
    """Crop the last ``ndim`` axes of ``x`` to ``size`` around the origin at ``D // 2``."""
    box = x.shape[-1]
    start = box // 2 - size // 2
    index = [slice(None)] * (x.ndim - ndim) + [slice(start, start + size)] * ndim
    return x[tuple(index)]


def crop_half_transform(ft: torch.Tensor, size: int) -> torch.Tensor:
    """Crop centred half transforms ``(..., D, D // 2 + 1)`` to ``(..., d, d // 2 + 1)``.

    The samples kept are the same frequencies in cycles / Å at pixel size
    ``p D / d`` (a Fourier crop; values are not rescaled). Also for any array in
    the half layout, e.g. CTF values.
    """
    box = int(ft.shape[-2])
    start = box // 2 - size // 2
    return ft[..., start:start + size, : size // 2 + 1]


def lowpass_volume(
    volume: torch.Tensor, resolution_angstrom: float, pixel_size_angstrom: float,
    edge_width_px: float = 2.0,
) -> torch.Tensor:
    """Low-pass filter a ``(D, D, D)`` volume with a raised-cosine edge.

    Parameters
    ----------
    volume
        ``(D, D, D)`` real volume.
    resolution_angstrom
        Cut-off resolution in Å (frequency ``pixel_size / resolution`` cycles/px).
    pixel_size_angstrom
        Voxel size in Å.
    edge_width_px
        Width of the cosine fall-off, in Fourier shells.

    Returns
    -------
    torch.Tensor
        ``(D, D, D)`` filtered real volume.
    """
    box = volume.shape[-1]
    rdtype = real_dtype_of(volume.dtype)
    kz, ky, kx = frequency_grid_3d(box, device=volume.device, dtype=rdtype)
    radius_shells = torch.sqrt(kz**2 + ky**2 + kx**2) * box
    cutoff_shells = box * pixel_size_angstrom / resolution_angstrom
    t = ((radius_shells - cutoff_shells) / edge_width_px).clamp(0.0, 1.0)
    filt = 0.5 * (1.0 + torch.cos(math.pi * t))
    return centered_ifft3(centered_fft3(volume) * filt).real


def hermitian_mirror(x: torch.Tensor) -> torch.Tensor:
    """``x(-k)`` over the last three axes of centred ``(..., Dp, Dp, Dp)`` arrays.

    With the zero frequency at ``Dp // 2``, index ``i`` maps to ``Dp - i`` for even
    ``Dp`` (the ``-Dp/2`` plane maps onto itself, periodically) and to
    ``Dp - 1 - i`` for odd ``Dp``.
    """
    size = x.shape[-1]
    dims = (-3, -2, -1)
    flipped = torch.flip(x, dims=dims)
    if size % 2 == 0:
        flipped = torch.roll(flipped, shifts=(1, 1, 1), dims=dims)
    return flipped


def hermitian_half(ft: torch.Tensor, box_size: int) -> torch.Tensor:
    """Make a centred half transform exactly that of a real image (even boxes).

    For even ``D`` the samples at ``kx = D/2`` have their Hermitian partner
    ``-ky`` in the same column (aliased), and ``(ky, kx) = (-D/2, 0)`` is its own
    partner. The values there are replaced by their Hermitian-symmetric part
    (the corner by its real part), which is what :func:`centered_rfft2` of
    ``centered_irfft2(ft)`` returns when the rest of ``ft`` is already the
    transform of a real image (e.g. an analytic one). Out of place (safe under
    autograd); odd boxes are returned unchanged.

    Parameters
    ----------
    ft
        ``(..., D, D // 2 + 1)`` centred half transform.
    box_size
        ``D``.

    Returns
    -------
    torch.Tensor
        ``(..., D, D // 2 + 1)``.
    """
    if box_size % 2:
        return ft
    d = box_size
    nyq = ft[..., :, d // 2]
    partner = torch.roll(torch.flip(nyq, dims=(-1,)), shifts=1, dims=-1)  # the value at -ky
    nyq = 0.5 * (nyq + partner.conj())
    first = ft[..., :, :1]
    corner = first[..., :1, :]
    first = torch.cat([torch.complex(corner.real, torch.zeros_like(corner.real)),
                       first[..., 1:, :]], dim=-2)
    return torch.cat([first, ft[..., :, 1:d // 2], nyq[..., None]], dim=-1)
