"""Contrast transfer function: per-particle parameters and the 2-D CTF.

Sign convention (RELION's): images show protein as positive density after the
usual contrast inversion, so the CTF is *positive* at low frequency::

    lambda = 12.2639 / sqrt(V + 0.97845e-6 V^2)              [Å, V in volts]
    defocus(alpha) = (dU + dV)/2 + (dU - dV)/2 cos(2 (alpha - angle_ast))
    gamma = 2 pi (-1/2 defocus lambda s^2 + 1/4 Cs lambda^3 s^4) - phase_shift
    CTF = -(sqrt(1 - w^2) sin(gamma) - w cos(gamma)) * exp(-B s^2 / 4)

``alpha`` is the azimuth of the frequency vector measured from +x towards +y
(``atan2(ky, kx)``), defocus is positive for underfocus, ``w`` is the amplitude
contrast and ``s`` the spatial frequency in 1/Å. cryoDRGN writes the same
formula without the leading minus sign and inverts its images instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch

from cryoviz.fourier import frequency_grid_2d

__all__ = ["CTFParams", "electron_wavelength_angstrom", "compute_ctf_2d"]


def electron_wavelength_angstrom(voltage_kv: torch.Tensor | float) -> torch.Tensor | float:
    """Relativistic electron wavelength in Å for an accelerating voltage in kV."""
    volts = voltage_kv * 1000.0
    if isinstance(volts, torch.Tensor):
        return 12.2639 / torch.sqrt(volts + 0.97845e-6 * volts**2)
    return 12.2639 / math.sqrt(volts + 0.97845e-6 * volts**2)


@dataclass(frozen=True)
class CTFParams:
    """CTF parameters of ``N`` particles, one ``(N,)`` tensor per field.

    Attributes
    ----------
    defocus_u_angstrom, defocus_v_angstrom
        Defoci along the major / minor axis (Å, positive = underfocus).
    astigmatism_angle_deg
        Angle of the U axis from +x towards +y (degrees, RELION ``rlnDefocusAngle``).
    voltage_kv
        Accelerating voltage (kV).
    cs_mm
        Spherical aberration (mm).
    amplitude_contrast
        Fraction of amplitude contrast ``w``.
    phase_shift_deg
        Phase-plate shift (degrees).
    bfactor_a2
        Envelope B-factor (Å^2), ``exp(-B s^2 / 4)``.
    """

    defocus_u_angstrom: torch.Tensor
    defocus_v_angstrom: torch.Tensor
    astigmatism_angle_deg: torch.Tensor
    voltage_kv: torch.Tensor
    cs_mm: torch.Tensor
    amplitude_contrast: torch.Tensor
    phase_shift_deg: torch.Tensor
    bfactor_a2: torch.Tensor

    @classmethod
    def from_arrays(cls, **arrays) -> CTFParams:
        """Build from array-likes or scalars; scalars are broadcast to the common length.

        Missing ``phase_shift_deg`` and ``bfactor_a2`` default to 0.
        """
        arrays.setdefault("phase_shift_deg", 0.0)
        arrays.setdefault("bfactor_a2", 0.0)
        names = [f.name for f in fields(cls)]
        unknown = set(arrays) - set(names)
        if unknown:
            raise TypeError(f"unknown CTF fields: {sorted(unknown)}")
        tensors = {k: torch.as_tensor(np.asarray(arrays[k]), dtype=torch.float64) for k in names}
        n = max(int(t.numel()) if t.ndim else 1 for t in tensors.values())
        out = {}
        for k, t in tensors.items():
            t = t.reshape(-1)
            if t.numel() == 1:
                t = t.expand(n).clone()
            if t.numel() != n:
                raise ValueError(f"CTF field {k} has {t.numel()} values, expected {n}")
            out[k] = t
        return cls(**out)

    def __len__(self) -> int:
        return int(self.defocus_u_angstrom.shape[0])

    def subset(self, index) -> CTFParams:
        """Parameters of the particles selected by ``index`` (int array, slice or bool mask)."""
        if isinstance(index, np.ndarray):
            index = torch.as_tensor(index)
        return CTFParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def to(self, device=None, dtype=None) -> CTFParams:
        """Move every field to ``device`` / ``dtype``."""
        return CTFParams(
            **{f.name: getattr(self, f.name).to(device=device, dtype=dtype) for f in fields(self)}
        )

    def as_numpy(self) -> dict[str, np.ndarray]:
        """The fields as a dict of float64 numpy arrays."""
        return {f.name: getattr(self, f.name).detach().cpu().double().numpy() for f in fields(self)}


def compute_ctf_2d(
    ctf: CTFParams,
    box_size: int,
    pixel_size_angstrom: float | torch.Tensor,
    rfft: bool = True,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Evaluate the CTF on the centred Fourier grid of ``D x D`` images.

    Parameters
    ----------
    ctf
        Parameters of ``B`` particles.
    box_size
        ``D`` in pixels.
    pixel_size_angstrom
        Pixel size in Å (scalar or ``(B,)``).
    rfft
        Half layout ``(B, D, D // 2 + 1)`` if True, else full ``(B, D, D)``.

    Returns
    -------
    torch.Tensor
        ``(B, D, D // 2 + 1)`` or ``(B, D, D)`` real CTF values.
    """
    if device is None:
        device = ctf.defocus_u_angstrom.device
    work = torch.float64
    p = ctf.to(device=device, dtype=work)
    apix = torch.as_tensor(pixel_size_angstrom, dtype=work, device=device).reshape(-1, 1, 1)
    ky, kx = frequency_grid_2d(box_size, rfft=rfft, device=device, dtype=work)
    sx = kx / apix
    sy = ky / apix
    s2 = sx**2 + sy**2
    alpha = torch.atan2(sy, sx)

    def col(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(-1, 1, 1)

    angle = torch.deg2rad(col(p.astigmatism_angle_deg))
    defocus = 0.5 * (col(p.defocus_u_angstrom) + col(p.defocus_v_angstrom)) + 0.5 * (
        col(p.defocus_u_angstrom) - col(p.defocus_v_angstrom)
    ) * torch.cos(2.0 * (alpha - angle))
    lam = electron_wavelength_angstrom(col(p.voltage_kv))
    cs_angstrom = col(p.cs_mm) * 1e7
    gamma = 2.0 * math.pi * (-0.5 * defocus * lam * s2 + 0.25 * cs_angstrom * lam**3 * s2**2)
    gamma = gamma - torch.deg2rad(col(p.phase_shift_deg))
    w = col(p.amplitude_contrast)
    value = -(torch.sqrt(1.0 - w**2) * torch.sin(gamma) - w * torch.cos(gamma))
    value = value * torch.exp(-col(p.bfactor_a2) * s2 / 4.0)
    return value.to(dtype)
