"""Projections of rotated Gaussian mixtures: analytic in Fourier space, or sampled in real space.

Normalisation and grid conventions are those of :mod:`cryoviz.gaussians` (see its
"Discrete maps" section): ``centered_irfft2(project_gaussians_fourier(m, I, ...))``
equals ``gaussians_volume(m, ...).sum(0)`` to rounding.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from .fourier import complex_dtype_of, hermitian_half, real_dtype_of
from .gaussian_factors import CHUNK_BYTES, axis_factors, check_box, phases

if TYPE_CHECKING:
    from .gaussians import GaussianMixture

__all__ = ["project_gaussians_fourier", "project_gaussians_real"]


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
    batch_chunk = max(1, min(batch, CHUNK_BYTES // max(1, 64 * per_item_bytes)))
    comp_chunk = max(1, CHUNK_BYTES // max(1, batch_chunk * per_item_bytes))
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
        :func:`~cryoviz.gaussians.gaussians_volume` (DC term = total mass). For even
        ``D`` the aliased Nyquist samples are Hermitian-symmetrised, so the output equals
        ``centered_rfft2(centered_irfft2(output, D))``.
    """
    check_box(box_size, pixel_size_angstrom)
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
                    ey = phases(step, -(d // 2), d, y_lab[bs][:, js])  # (Bc, D, J)
                    ex = phases(step, 0, dh, x_lab[bs][:, js])  # (Bc, Dh, J)
                else:
                    ey = axis_factors(step, -(d // 2), d, y_lab[bs][:, js], sigmas[js])
                    ex = axis_factors(step, 0, dh, x_lab[bs][:, js], sigmas[js]) * amps[js]
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
    check_box(box_size, pixel_size_angstrom)
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
