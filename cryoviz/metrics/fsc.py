"""Fourier shell correlation (FSC), resolution estimates and FSC-AUC.

Shells follow :func:`cryoviz.fourier.shell_index_3d`: voxel ``k`` of the centred
3-D transform belongs to shell ``round(|k| * D)``; shells ``0 .. D // 2`` are
reported (frequency ``s / D`` cycles per pixel, Nyquist ``0.5`` for even ``D``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cryoviz.fourier import (
    centered_fft2,
    centered_fft3,
    real_dtype_of,
    shell_index_2d,
    shell_index_3d,
)

__all__ = ["FSCCurve", "fsc", "soft_spherical_mask", "frc"]


@dataclass(frozen=True)
class FSCCurve:
    """An FSC curve over Fourier shells ``s = 0 .. D // 2``.

    Attributes
    ----------
    frequency_per_px
        ``(S,)`` shell frequency ``s / D`` in cycles per pixel, ``S = D // 2 + 1``.
    fsc
        ``(S,)`` correlation in each shell.
    n_voxels
        ``(S,)`` number of Fourier voxels in each shell (int64).
    """

    frequency_per_px: torch.Tensor
    fsc: torch.Tensor
    n_voxels: torch.Tensor

    def _crossing_frequency(self, threshold: float) -> float | None:
        """Frequency (cycles/px) of the first crossing below ``threshold``.

        Returns ``None`` if the curve never drops below ``threshold``. Shell 0 is
        the starting point; the first shell ``i >= 1`` with ``fsc[i] < threshold``
        is found and the crossing is interpolated linearly between ``i - 1`` and
        ``i``. If shell 0 itself is below the threshold the crossing is at 0.
        """
        values = self.fsc.detach().to("cpu", torch.float64)
        freqs = self.frequency_per_px.detach().to("cpu", torch.float64)
        if values.numel() == 0:
            raise ValueError("FSC curve is empty")
        if float(values[0]) < threshold:
            return 0.0
        below = torch.nonzero(values[1:] < threshold).flatten()
        if below.numel() == 0:
            return None
        i = int(below[0]) + 1
        f0, f1 = float(freqs[i - 1]), float(freqs[i])
        c0, c1 = float(values[i - 1]), float(values[i])
        t = (c0 - threshold) / (c0 - c1)  # c0 >= threshold > c1, so 0 <= t < 1
        return f0 + t * (f1 - f0)

    def resolution_px(self, threshold: float = 0.143) -> float:
        """Resolution in pixels per cycle (``1 / frequency``) at ``threshold``.

        Parameters
        ----------
        threshold
            FSC threshold, e.g. ``0.143`` (half maps, gold standard) or ``0.5``
            (map vs reference).

        Returns
        -------
        float
            ``1 / f`` where ``f`` is the interpolated first crossing below
            ``threshold``; ``2.0`` (Nyquist) if the curve never crosses; ``inf`` if
            the curve starts below the threshold.
        """
        freq = self._crossing_frequency(threshold)
        if freq is None:
            return 2.0
        if freq <= 0.0:
            return math.inf
        return 1.0 / freq

    def resolution_angstrom(self, pixel_size_angstrom: float, threshold: float = 0.143) -> float:
        """Resolution in Å at ``threshold`` (see :meth:`resolution_px`).

        Parameters
        ----------
        pixel_size_angstrom
            Voxel size in Å.
        threshold
            FSC threshold.

        Returns
        -------
        float
            ``pixel_size_angstrom * resolution_px(threshold)``; Nyquist-limited
            (``2 * pixel_size_angstrom``) if the curve never crosses.
        """
        if not pixel_size_angstrom > 0:
            raise ValueError(f"pixel_size_angstrom must be > 0, got {pixel_size_angstrom}")
        return pixel_size_angstrom * self.resolution_px(threshold)

    def auc(self) -> float:
        """Area under ``|FSC|`` against frequency (cycles/px), the CryoBench FSC-AUC.

        Trapezoid rule over the shells ``0 .. D // 2`` (frequencies ``0 .. 0.5``
        for even ``D``, ``0 .. (D - 1) / (2 D)`` for odd ``D``). A perfect map
        scores ``(D // 2) / D`` (``0.5`` for even ``D``).
        """
        values = self.fsc.detach().abs().to("cpu", torch.float64)
        freqs = self.frequency_per_px.detach().to("cpu", torch.float64)
        return float(torch.trapezoid(values, freqs))

    def to_dict(self) -> dict[str, list[float] | list[int]]:
        """JSON-serialisable dictionary of the curve (plain Python lists)."""
        return {
            "frequency_per_px": [float(v) for v in self.frequency_per_px.detach().cpu()],
            "fsc": [float(v) for v in self.fsc.detach().cpu()],
            "n_voxels": [int(v) for v in self.n_voxels.detach().cpu()],
        }


def _check_volume(volume: torch.Tensor, name: str) -> None:
    if volume.ndim != 3 or not (volume.shape[0] == volume.shape[1] == volume.shape[2]):
        raise ValueError(
            f"{name} must be a cubic (D, D, D) volume, got shape {tuple(volume.shape)}"
        )
    if volume.is_complex():
        raise ValueError(f"{name} must be real, got dtype {volume.dtype}")


def fsc(vol1: torch.Tensor, vol2: torch.Tensor, mask: torch.Tensor | None = None) -> FSCCurve:
    """Fourier shell correlation of two volumes.

    ``FSC(s) = Re sum_{k in s} F1(k) conj(F2(k)) / sqrt(sum |F1|^2 sum |F2|^2)``
    over shells ``s = round(|k| D) = 0 .. D // 2``.

    Parameters
    ----------
    vol1, vol2
        ``(D, D, D)`` real volumes indexed ``[z, y, x]``, same shape.
    mask
        Optional ``(D, D, D)`` real-space mask multiplied into both volumes before
        the transform (e.g. :func:`soft_spherical_mask`).

    Returns
    -------
    FSCCurve
        Curve with ``D // 2 + 1`` shells, in the real dtype of the inputs (at
        least float32) on their device. Empty shells (none for ``D >= 1``) and
        shells where a map has no power get FSC ``0``.
    """
    _check_volume(vol1, "vol1")
    _check_volume(vol2, "vol2")
    if vol1.shape != vol2.shape:
        raise ValueError(
            f"vol1 and vol2 must have the same shape, got {tuple(vol1.shape)} "
            f"and {tuple(vol2.shape)}"
        )
    dtype = torch.promote_types(vol1.dtype, vol2.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float32
    v1 = vol1.to(dtype)
    v2 = vol2.to(device=vol1.device, dtype=dtype)
    if mask is not None:
        if mask.shape != vol1.shape:
            raise ValueError(
                f"mask must have the volumes' shape {tuple(vol1.shape)}, got {tuple(mask.shape)}"
            )
        m = mask.to(device=vol1.device, dtype=dtype)
        v1 = v1 * m
        v2 = v2 * m
    box = vol1.shape[-1]
    n_shells = box // 2 + 1
    f1 = centered_fft3(v1)
    f2 = centered_fft3(v2)
    rdtype = real_dtype_of(f1.dtype)
    shells = shell_index_3d(box, device=vol1.device).flatten()
    keep = shells < n_shells
    idx = shells[keep]
    cross = (f1 * f2.conj()).real.flatten()[keep]
    p1 = (f1.abs() ** 2).flatten()[keep]
    p2 = (f2.abs() ** 2).flatten()[keep]
    zeros = torch.zeros(n_shells, dtype=rdtype, device=vol1.device)
    num = zeros.index_add(0, idx, cross)
    den1 = zeros.index_add(0, idx, p1)
    den2 = zeros.index_add(0, idx, p2)
    denom = torch.sqrt(den1 * den2)
    tiny = torch.finfo(rdtype).tiny
    curve = torch.where(denom > tiny, num / denom.clamp_min(tiny), torch.zeros_like(num))
    counts = torch.bincount(idx, minlength=n_shells)
    freq = torch.arange(n_shells, dtype=rdtype, device=vol1.device) / box
    return FSCCurve(frequency_per_px=freq, fsc=curve, n_voxels=counts)


def soft_spherical_mask(
    box_size: int,
    radius_px: float,
    edge_px: float = 3.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Spherical mask with a raised-cosine edge, centred at ``D // 2``.

    Parameters
    ----------
    box_size
        ``D``.
    radius_px
        Radius (pixels) inside which the mask is 1.
    edge_px
        Width (pixels) of the cosine fall-off from 1 at ``radius_px`` to 0 at
        ``radius_px + edge_px``; ``0`` gives a hard edge.
    dtype, device
        Of the returned tensor.

    Returns
    -------
    torch.Tensor
        ``(D, D, D)`` mask in ``[0, 1]``.
    """
    if box_size < 1:
        raise ValueError(f"box_size must be >= 1, got {box_size}")
    if radius_px < 0:
        raise ValueError(f"radius_px must be >= 0, got {radius_px}")
    if edge_px < 0:
        raise ValueError(f"edge_px must be >= 0, got {edge_px}")
    axis = torch.arange(box_size, dtype=torch.float64, device=device) - box_size // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    r = torch.sqrt(x**2 + y**2 + z**2)
    if edge_px == 0:
        mask = (r <= radius_px).to(torch.float64)
    else:
        t = ((r - radius_px) / edge_px).clamp(0.0, 1.0)
        mask = 0.5 * (1.0 + torch.cos(math.pi * t))
    return mask.to(dtype)


def frc(img1: torch.Tensor, img2: torch.Tensor) -> FSCCurve:
    """Fourier ring correlation of two images (the 2-D analogue of :func:`fsc`).

    ``FRC(s) = Re sum_{k in s} F1(k) conj(F2(k)) / sqrt(sum |F1|^2 sum |F2|^2)``
    over rings ``s = round(|k| D) = 0 .. D // 2`` of the centred 2-D transforms
    (:func:`cryoviz.fourier.shell_index_2d`).

    Parameters
    ----------
    img1, img2
        ``(D, D)`` real images indexed ``[y, x]``, same shape.

    Returns
    -------
    FSCCurve
        Curve with ``D // 2 + 1`` rings (``n_voxels`` counts pixels per ring);
        rings where an image has no power get 0.
    """
    for name, img in (("img1", img1), ("img2", img2)):
        if img.ndim != 2 or img.shape[0] != img.shape[1] or img.is_complex():
            raise ValueError(f"{name} must be a real square (D, D) image, got "
                             f"{tuple(img.shape)} {img.dtype}")
    if img1.shape != img2.shape:
        raise ValueError(f"img1 and img2 must have the same shape, got {tuple(img1.shape)} "
                         f"and {tuple(img2.shape)}")
    dtype = torch.promote_types(img1.dtype, img2.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float32
    box = img1.shape[-1]
    n_shells = box // 2 + 1
    f1 = centered_fft2(img1.to(dtype))
    f2 = centered_fft2(img2.to(device=img1.device, dtype=dtype))
    shells = shell_index_2d(box, rfft=False, device=img1.device).flatten()
    keep = shells < n_shells
    idx = shells[keep]
    zeros = torch.zeros(n_shells, dtype=dtype, device=img1.device)
    num = zeros.index_add(0, idx, (f1 * f2.conj()).real.flatten()[keep])
    den = torch.sqrt(zeros.index_add(0, idx, (f1.abs() ** 2).flatten()[keep])
                     * zeros.index_add(0, idx, (f2.abs() ** 2).flatten()[keep]))
    tiny = torch.finfo(dtype).tiny
    curve = torch.where(den > tiny, num / den.clamp_min(tiny), torch.zeros_like(num))
    freq = torch.arange(n_shells, dtype=dtype, device=img1.device) / box
    return FSCCurve(frequency_per_px=freq, fsc=curve,
                    n_voxels=torch.bincount(idx, minlength=n_shells))
