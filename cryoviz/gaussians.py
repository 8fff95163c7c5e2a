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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .fourier import complex_dtype_of, hermitian_half, real_dtype_of
from .scattering import (
    ATOMIC_NUMBERS,
    SINGLE_GAUSSIAN_B0_A2,
    scattering_factor_gaussians,
)
from .structure import Structure

# Memory budget (bytes) of one chunk of complex intermediates.
_CHUNK_BYTES = 256 * 2**20

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


def _phases(
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


def _axis_factors(
    step: float, start: int, count: int, positions: torch.Tensor, sigmas: torch.Tensor
) -> torch.Tensor:
    """``exp(-2 pi^2 s_j^2 k^2) exp(-2 pi i k x_j)`` for ``k = (start + m) step``.

    ``positions`` (..., J) Å; ``sigmas`` (J,) Å. Returns (..., count, J) complex.
    """
    freqs = (start + torch.arange(count, device=positions.device, dtype=positions.dtype)) * step
    env = torch.exp(-2.0 * math.pi**2 * freqs[:, None] ** 2 * sigmas[None, :] ** 2)  # (K, J)
    return _phases(step, start, count, positions) * env


def _check_box(box_size: int, pixel_size_angstrom: float) -> None:
    if int(box_size) != box_size or box_size < 2:
        raise ValueError(f"box_size must be an integer >= 2, got {box_size}")
    if not pixel_size_angstrom > 0:
        raise ValueError(f"pixel_size_angstrom must be > 0, got {pixel_size_angstrom}")


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
    _check_box(box_size, pixel_size_angstrom)
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
    chunk = max(1, _CHUNK_BYTES // (2 * d * d * itemsize))
    ft = torch.zeros(d * d, dh, dtype=cdtype, device=device)
    for start in range(0, len(mixture), chunk):
        sl = slice(start, start + chunk)
        ez = _axis_factors(step, -(d // 2), d, centres[sl, 2], sigmas[sl])  # (D, J)
        ey = _axis_factors(step, -(d // 2), d, centres[sl, 1], sigmas[sl])  # (D, J)
        ex = _axis_factors(step, 0, dh, centres[sl, 0], sigmas[sl]) * amps[sl]  # (Dh, J)
        zy = (ez[:, None, :] * ey[None, :, :]).reshape(d * d, -1)  # (D*D, J)
        ft += zy @ ex.T
    ft = torch.fft.ifftshift(ft.reshape(d, d, dh), dim=(0, 1))
    vol = torch.fft.irfftn(ft, s=(d, d, d), dim=(0, 1, 2))
    return torch.fft.fftshift(vol, dim=(0, 1, 2))


def _lab_xy(mixture: GaussianMixture, rotations: torch.Tensor, rdtype: torch.dtype):
    if rotations.ndim != 3 or rotations.shape[1:] != (3, 3):
        raise ValueError(f"rotations must be (B, 3, 3), got {tuple(rotations.shape)}")
    centres = mixture.centres_angstrom.to(device=rotations.device, dtype=rdtype)
    rot = rotations.to(rdtype)
    # r_lab = R c: x_lab[b, j] = sum_i R[b, 0, i] c[j, i]
    x_lab = rot[:, 0, :] @ centres.T  # (B, M)
    y_lab = rot[:, 1, :] @ centres.T  # (B, M)
    return x_lab, y_lab


def _profile_groups(
    mixture: GaussianMixture, max_groups: int = 64
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None:
    """Group components by shared centre and the centres by their component profile.

    Returns a list of ``(component_index_of_one_member_per_centre (Mg,), amplitudes (T,),
    sigmas (T,))``: every centre of a group carries components with exactly these
    amplitudes and sigmas. ``None`` when there are too many distinct profiles for the
    grouping to pay off.
    """
    centres = mixture.centres_angstrom.detach().cpu().double().numpy()
    amps = mixture.amplitudes.detach().cpu().double().numpy()
    sigmas = mixture.sigmas_angstrom.detach().cpu().double().numpy()
    _, inverse = np.unique(centres, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    profiles: dict[tuple, list[int]] = {}
    keys: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
    for comps in np.split(order, bounds):
        pairs = sorted(zip(amps[comps].tolist(), sigmas[comps].tolist(), strict=True))
        key = tuple(pairs)
        profiles.setdefault(key, []).append(int(comps[0]))
        keys[key] = (np.array([a for a, _ in pairs]), np.array([sg for _, sg in pairs]))
        if len(profiles) > max_groups:
            return None
    return [
        (torch.as_tensor(members), torch.as_tensor(keys[key][0]), torch.as_tensor(keys[key][1]))
        for key, members in profiles.items()
    ]


def _chunks(batch: int, per_item_bytes: int) -> tuple[int, int]:
    """Batch chunk and component chunk sizes so one chunk of (Bc, ., Mc) fits the budget."""
    batch_chunk = max(1, min(batch, _CHUNK_BYTES // max(1, 64 * per_item_bytes)))
    comp_chunk = max(1, _CHUNK_BYTES // max(1, batch_chunk * per_item_bytes))
    return batch_chunk, comp_chunk


def project_gaussians_fourier(
    mixture: GaussianMixture,
    rotations: torch.Tensor,
    box_size: int,
    pixel_size_angstrom: float,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Analytic centred half transforms of projections of a rotated mixture.

    ``F[b, ky, kx] = sum_j A_j exp(-2 pi^2 s_j^2 |k|^2) exp(-2 pi i (R_b c_j)_xy . k)``,
    the transform of ``image(x, y) = int rho(R_b^T (x, y, z)) dz`` (projection along lab
    ``z`` of the mixture with centres ``R_b c_j``). The envelope and phase both factor
    into ``x`` and ``y`` parts, so for each batch item the sum over components is a
    matrix product ``Ey (D, M) @ Ex^T (M, D//2+1)``, done with ``torch.bmm`` over chunks.

    Parameters
    ----------
    mixture
        Components, particle frame, Å.
    rotations
        ``(B, 3, 3)`` particle -> lab rotations.
    box_size
        ``D``.
    pixel_size_angstrom
        Pixel size ``p``, Å; frequencies are ``(i - D//2) / (D p)`` cycles/Å.
    dtype
        Real working dtype (``float32`` -> complex64 output, ``float64`` -> complex128).

    Returns
    -------
    torch.Tensor
        ``(B, D, D//2+1)`` complex, :mod:`cryoviz.fourier` half layout (``ky`` centred at
        row ``D//2``, ``kx = 0 .. D//2``); ``centered_irfft2`` gives images whose pixels
        hold the projected density integrated over each pixel, same normalisation as
        :func:`gaussians_volume` (DC term = total mass). For even ``D`` the aliased
        Nyquist samples are Hermitian-symmetrised, so the output equals
        ``centered_rfft2(centered_irfft2(output, D))``.
    """
    _check_box(box_size, pixel_size_angstrom)
    d = int(box_size)
    dh = d // 2 + 1
    rdtype = real_dtype_of(dtype)
    cdtype = complex_dtype_of(rdtype)
    device = rotations.device
    x_lab, y_lab = _lab_xy(mixture, rotations, rdtype)
    amps = mixture.amplitudes.to(device=device, dtype=rdtype)
    sigmas = mixture.sigmas_angstrom.to(device=device, dtype=rdtype)
    step = 1.0 / (d * pixel_size_angstrom)  # cycles/Å between samples
    n_batch = rotations.shape[0]
    itemsize = torch.empty((), dtype=cdtype).element_size()
    batch_chunk, comp_chunk = _chunks(n_batch, 2 * (d + dh) * itemsize)
    out = torch.zeros(n_batch, d, dh, dtype=cdtype, device=device)
    ky = (torch.arange(d, device=device, dtype=rdtype) - d // 2) * step
    kx = torch.arange(dh, device=device, dtype=rdtype) * step
    k2 = ky[:, None] ** 2 + kx[None, :] ** 2  # (D, Dh) cycles^2/Å^2
    # Components that share a centre share its phase: group centres whose components
    # have the same (amplitude, sigma) profile (atoms of one element), sum the phases
    # of each group once and apply the group's radial profile sum_t A_t exp(-2 pi^2
    # s_t^2 |k|^2) to that sum. Exact; with Peng's 5 terms per atom it is 5x less work.
    groups = _profile_groups(mixture)
    if groups is None:
        groups = [(torch.arange(len(mixture), device=device), None, None)]
        unit_centres = False
    else:
        unit_centres = True
    for b0 in range(0, n_batch, batch_chunk):
        bs = slice(b0, b0 + batch_chunk)
        acc = out[bs]
        for members, group_amps, group_sigmas in groups:
            part = torch.zeros_like(acc) if unit_centres else acc
            for j0 in range(0, len(members), comp_chunk):
                js = members[j0:j0 + comp_chunk].to(device)
                if unit_centres:
                    ey = _phases(step, -(d // 2), d, y_lab[bs][:, js])  # (Bc, D, J)
                    ex = _phases(step, 0, dh, x_lab[bs][:, js])  # (Bc, Dh, J)
                else:
                    ey = _axis_factors(step, -(d // 2), d, y_lab[bs][:, js], sigmas[js])
                    ex = _axis_factors(step, 0, dh, x_lab[bs][:, js], sigmas[js]) * amps[js]
                part += torch.bmm(ey, ex.transpose(1, 2))
            if unit_centres:
                profile = (
                    group_amps.to(device, rdtype)[:, None, None]
                    * torch.exp(-2.0 * math.pi**2
                                * group_sigmas.to(device, rdtype)[:, None, None] ** 2 * k2)
                ).sum(0)
                acc += part * profile
    return hermitian_half(out, d)


def project_gaussians_real(
    mixture: GaussianMixture,
    rotations: torch.Tensor,
    box_size: int,
    pixel_size_angstrom: float,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Projections of a rotated mixture sampled directly in real space.

    Each component projects to a 2-D Gaussian ``A p^2 / (2 pi s^2) exp(-|r - (R c)_xy|^2
    / (2 s^2))`` sampled at pixel centres ``((ix - D//2) p, (iy - D//2) p)``; the image is
    ``sum_j gy_j gx_j^T``, a batched matrix product. Not band-limited and not periodic:
    it agrees with ``centered_irfft2(project_gaussians_fourier(...))`` when every
    ``s_j`` is at least ~1.5 pixels and the mixture stays inside the box.

    Parameters
    ----------
    mixture, rotations, box_size, pixel_size_angstrom, dtype
        As for :func:`project_gaussians_fourier`.

    Returns
    -------
    torch.Tensor
        ``(B, D, D)`` real images indexed ``[y, x]``, origin at ``D // 2``.
    """
    _check_box(box_size, pixel_size_angstrom)
    d = int(box_size)
    rdtype = real_dtype_of(dtype)
    device = rotations.device
    x_lab, y_lab = _lab_xy(mixture, rotations, rdtype)
    amps = mixture.amplitudes.to(device=device, dtype=rdtype)
    sigmas = mixture.sigmas_angstrom.to(device=device, dtype=rdtype)
    grid = (torch.arange(d, device=device, dtype=rdtype) - d // 2) * pixel_size_angstrom
    n_batch = rotations.shape[0]
    itemsize = torch.empty((), dtype=rdtype).element_size()
    batch_chunk, comp_chunk = _chunks(n_batch, 3 * d * itemsize)
    out = torch.zeros(n_batch, d, d, dtype=rdtype, device=device)
    weight = amps * pixel_size_angstrom**2 / (2.0 * math.pi * sigmas**2)
    for b0 in range(0, n_batch, batch_chunk):
        bs = slice(b0, b0 + batch_chunk)
        acc = out[bs]
        for j0 in range(0, len(mixture), comp_chunk):
            js = slice(j0, j0 + comp_chunk)
            inv = 1.0 / (2.0 * sigmas[js] ** 2)
            gy = torch.exp(-((grid[:, None] - y_lab[bs, None, js]) ** 2) * inv)  # (Bc, D, J)
            gx = torch.exp(-((grid[:, None] - x_lab[bs, None, js]) ** 2) * inv) * weight[js]
            acc += torch.bmm(gy, gx.transpose(1, 2))
    return out
