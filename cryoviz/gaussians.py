"""Atomic models as isotropic 3-D Gaussian mixtures; analytic volumes and projections.

Model
-----
A mixture is a sum of normalised isotropic Gaussians

    rho(r) = sum_j A_j (2 pi s_j^2)^(-3/2) exp(-|r - c_j|^2 / (2 s_j^2)),

so ``A_j`` is the integral of component ``j`` and ``rho`` integrates to ``sum_j A_j``.
Its Fourier transform (convention ``F(k) = int rho(r) exp(-2 pi i k.r) dr``, ``k`` in
cycles/Å) is

    F(k) = sum_j A_j exp(-2 pi^2 s_j^2 |k|^2) exp(-2 pi i k.c_j).

Electron scattering factors
---------------------------
Peng et al. (1996) fit the elastic electron scattering factor of each neutral atom as
``f(s) = sum_i a_i exp(-b_i s^2)`` with ``s = sin(theta)/lambda = |k|/2`` (Å^-1, ``b_i``
in Å^2, ``a_i`` in Å), i.e. ``f(k) = sum_i a_i exp(-b_i |k|^2 / 4)``. A B-factor ``B``
multiplies the transform by ``exp(-B s^2) = exp(-B |k|^2 / 4)``. Matching
``exp(-(b_i + B) |k|^2 / 4)`` with ``exp(-2 pi^2 s^2 |k|^2)`` gives, for each term, one
Gaussian component with

    A = a_i,   s^2 = (b_i + B) / (8 pi^2).

The mixture's transform is then exactly the (B-blurred) sum of atomic scattering factors
``sum_atoms f_atom(k) exp(-2 pi i k.r_atom)``, i.e. the Coulomb potential in units of
``f``: ``rho`` is in Å^-2, and the electrostatic potential is ``47.88 V Å^2 x rho``
(``h^2 / (2 pi m0 e)``, non-relativistic; not applied here). The coefficients are
those of International Tables for Crystallography Vol. C, Table 4.3.2.2 (Peng et al.
1996), the same numbers gemmi ships as ``gemmi.Element(...).c4322``; a test checks that
they agree.

Discrete maps
-------------
Maps are *band-limited*: the analytic transform is sampled on the centred grid of
:mod:`cryoviz.fourier` (``k = (i - D//2) / (D p)`` cycles/Å for pixel size ``p``) and
inverse FFT'd. With ``numpy``/``torch`` FFT normalisation this makes each voxel (pixel)
value the density integrated over the voxel (pixel) volume (``p^3 rho`` or ``p^2`` times
the projected density, for smooth densities), the sum of a volume or image equal to the
total mass ``F(0) = sum_j A_j``, and the DC term of an image transform equal to that
sum too. The map is the periodic (wrapped) version of the mixture: keep the model inside
the box. The 3-D map and the Fourier projections use the same samples of ``F``, so
``centered_irfft2(project_gaussians_fourier(m, I, ...))`` equals
``gaussians_volume(m, ...).sum(0)`` to rounding. For other rotations the image equals
the ``z`` sum of the band-limited map of the rotated mixture (``m.rotated(R)``); for even
``D`` projections and maps may differ by the content at exactly Nyquist (where ``+1/2``
and ``-1/2`` alias), which is negligible for well-sampled densities.

The projections are computed in :mod:`cryoviz.gaussian_projection` (re-exported
here) from the per-axis factors of :mod:`cryoviz.gaussian_factors`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .fourier import complex_dtype_of, real_dtype_of
from .gaussian_factors import CHUNK_BYTES, axis_factors, check_box
from .gaussian_projection import project_gaussians_fourier, project_gaussians_real
from .scattering import (
    ATOMIC_NUMBERS,
    SINGLE_GAUSSIAN_B0_A2,
    scattering_factor_gaussians,
)
from .structure import Structure

__all__ = [
    "GaussianMixture",
    "structure_to_gaussians",
    "gaussians_volume",
    "project_gaussians_fourier",
    "project_gaussians_real",
]

@dataclass(frozen=True, eq=False)
class GaussianMixture:
    """Isotropic 3-D Gaussian mixture (see the module docstring for the normalisation).

    Attributes
    ----------
    centres_angstrom
        ``(M, 3)`` component centres ``(x, y, z)`` in Å, particle frame.
    amplitudes
        ``(M,)`` integrated mass of each component (Å for scattering-factor models).
    sigmas_angstrom
        ``(M,)`` standard deviations in Å (> 0).
    """

    centres_angstrom: torch.Tensor
    amplitudes: torch.Tensor
    sigmas_angstrom: torch.Tensor

    def __post_init__(self) -> None:
        m = self.centres_angstrom.shape[0] if self.centres_angstrom.ndim == 2 else -1
        if self.centres_angstrom.ndim != 2 or self.centres_angstrom.shape[1] != 3:
            raise ValueError(
                f"centres_angstrom must be (M, 3), got {tuple(self.centres_angstrom.shape)}"
            )
        if self.amplitudes.shape != (m,) or self.sigmas_angstrom.shape != (m,):
            raise ValueError(
                f"amplitudes and sigmas_angstrom must be ({m},), got "
                f"{tuple(self.amplitudes.shape)} and {tuple(self.sigmas_angstrom.shape)}"
            )

    def __len__(self) -> int:
        return int(self.amplitudes.shape[0])

    @property
    def total_mass(self) -> float:
        """``sum_j A_j``, the integral of the density (= its transform at ``k = 0``)."""
        return float(self.amplitudes.sum())

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> GaussianMixture:
        """Copy on another device and/or real dtype."""
        return GaussianMixture(
            self.centres_angstrom.to(device=device, dtype=dtype),
            self.amplitudes.to(device=device, dtype=dtype),
            self.sigmas_angstrom.to(device=device, dtype=dtype),
        )

    def rotated(self, rotation: torch.Tensor) -> GaussianMixture:
        """Mixture with centres ``R c`` (``rotation`` (3, 3), particle -> lab)."""
        rot = rotation.to(self.centres_angstrom)
        return GaussianMixture(self.centres_angstrom @ rot.T, self.amplitudes, self.sigmas_angstrom)


def structure_to_gaussians(
    structure: Structure,
    bfactor_a2: float = 0.0,
    model: str = "peng",
    atom_b0_a2: float = SINGLE_GAUSSIAN_B0_A2,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> GaussianMixture:
    """Gaussian mixture of an atomic model's Coulomb potential.

    Parameters
    ----------
    structure
        Atoms; coordinates are used as they are (centre the structure first if needed).
    bfactor_a2
        Isotropic B-factor (Å^2) applied to every atom: multiplies the transform by
        ``exp(-B |k|^2 / 4)``.
    model
        ``"peng"``: five Gaussians per atom from the electron scattering factors
        (``A = a_i``, ``sigma^2 = (b_i + B) / (8 pi^2)``, see the module docstring).
        ``"single"``: one Gaussian per atom, ``A = Z`` (atomic number, carbon's for
        unknown elements), ``sigma^2 = (B + atom_b0_a2) / (8 pi^2)``; a cheaper, cruder
        density with the same shape for all elements.
    atom_b0_a2
        Intrinsic atom size of the ``"single"`` model, Å^2.
    dtype, device
        Of the returned tensors.

    Returns
    -------
    GaussianMixture
        ``5 N`` (``"peng"``) or ``N`` (``"single"``) components.
    """
    if bfactor_a2 < 0:
        raise ValueError(f"bfactor_a2 must be >= 0, got {bfactor_a2}")
    coords = np.asarray(structure.coords_angstrom, dtype=np.float64)
    elements = [str(e) for e in structure.elements]
    eight_pi2 = 8.0 * math.pi**2
    if model == "peng":
        table = {e: scattering_factor_gaussians(e) for e in set(elements)}
        a = np.array([table[e][0] for e in elements], dtype=np.float64)  # (N, 5)
        b = np.array([table[e][1] for e in elements], dtype=np.float64)  # (N, 5)
        n_terms = a.shape[1]
        centres = np.repeat(coords, n_terms, axis=0)
        amplitudes = a.reshape(-1)
        sigmas = np.sqrt((b.reshape(-1) + bfactor_a2) / eight_pi2)
    elif model == "single":
        if atom_b0_a2 + bfactor_a2 <= 0:
            raise ValueError("atom_b0_a2 + bfactor_a2 must be > 0 for the single-Gaussian model")
        centres = coords
        amplitudes = np.array(
            [ATOMIC_NUMBERS.get(e[:1].upper() + e[1:].lower(), 6) for e in elements],
            dtype=np.float64,
        )
        sigmas = np.full(len(elements), math.sqrt((atom_b0_a2 + bfactor_a2) / eight_pi2))
    else:
        raise ValueError(f"unknown model {model!r}; use 'peng' or 'single'")
    return GaussianMixture(
        centres_angstrom=torch.as_tensor(centres, dtype=dtype, device=device),
        amplitudes=torch.as_tensor(amplitudes, dtype=dtype, device=device),
        sigmas_angstrom=torch.as_tensor(sigmas, dtype=dtype, device=device),
    )


def gaussians_volume(
    mixture: GaussianMixture,
    box_size: int,
    pixel_size_angstrom: float,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Band-limited real-space map of a mixture.

    The analytic transform is evaluated on the centred half grid (``kx = 0 .. D//2``)
    and inverted with a real inverse FFT, so the map has no aliasing and its transform
    agrees with :func:`project_gaussians_fourier` on the central ``kz = 0`` plane.
    Computed as ``sum_j (Ez_j Ey_j) Ex_j^T`` matrix products over chunks of components.

    Parameters
    ----------
    mixture
        Components, particle frame, Å.
    box_size
        ``D``; the origin is voxel ``D // 2`` on each axis.
    pixel_size_angstrom
        Voxel size ``p`` in Å.
    dtype
        Real output dtype (``float32`` computes in complex64, ``float64`` in complex128).

    Returns
    -------
    torch.Tensor
        ``(D, D, D)`` map indexed ``[z, y, x]``; voxel values are density integrated over
        the voxel (``sum = total mass``).
    """
    check_box(box_size, pixel_size_angstrom)
    d = int(box_size)
    dh = d // 2 + 1
    device = mixture.centres_angstrom.device
    rdtype = real_dtype_of(dtype)
    cdtype = complex_dtype_of(rdtype)
    step = 1.0 / (d * pixel_size_angstrom)  # cycles/Å between samples
    centres = mixture.centres_angstrom.to(rdtype)
    amps = mixture.amplitudes.to(rdtype)
    sigmas = mixture.sigmas_angstrom.to(rdtype)
    itemsize = torch.empty((), dtype=cdtype).element_size()
    chunk = max(1, CHUNK_BYTES // (2 * d * d * itemsize))
    ft = torch.zeros(d * d, dh, dtype=cdtype, device=device)
    for start in range(0, len(mixture), chunk):
        sl = slice(start, start + chunk)
        ez = axis_factors(step, -(d // 2), d, centres[sl, 2], sigmas[sl])  # (D, J)
        ey = axis_factors(step, -(d // 2), d, centres[sl, 1], sigmas[sl])  # (D, J)
        ex = axis_factors(step, 0, dh, centres[sl, 0], sigmas[sl]) * amps[sl]  # (Dh, J)
        zy = (ez[:, None, :] * ey[None, :, :]).reshape(d * d, -1)  # (D*D, J)
        ft += zy @ ex.T
    ft = torch.fft.ifftshift(ft.reshape(d, d, dh), dim=(0, 1))
    vol = torch.fft.irfftn(ft, s=(d, d, d), dim=(0, 1, 2))
    return torch.fft.fftshift(vol, dim=(0, 1, 2))
