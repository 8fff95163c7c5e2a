"""The pieces of PPCA-EM (:mod:`cryoviz.inference.ppca`): box, cached data, E- and M-step.

* :func:`working_box`: the box, pixel size and frequency limit the EM runs at;
* :func:`cache_transforms`: one pass over the stack that keeps each particle's
  cropped transform, its CTF x shift modulation, optionally its padded CTF, and
  the consensus half sums when no mean map is given;
* :func:`latent_posterior`: the Gaussian posterior of ``z`` per particle, its
  log-evidence and the expected residual power;
* :func:`residual_channels`: the M-step's right-hand sides and weights of one
  batch, as complex channels for :func:`cryoviz.inference.subspace_ops.insert_many`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from cryoviz.backprojection import FourierAccumulator, add_to_half_sets
from cryoviz.ctf import compute_ctf_2d
from cryoviz.errors import InputError
from cryoviz.fourier import centered_irfft2, centered_rfft2, pad_center, phase_shift
from cryoviz.imaging import apply_shift_and_ctf
from cryoviz.inference.subspace_ops import crop_images_fourier
from cryoviz.io.particles import ImageSource, ParticleSet

__all__ = ["WorkingBox", "working_box", "CachedTransforms", "cache_transforms",
           "latent_posterior", "shell_sum", "residual_channels"]


@dataclass(frozen=True)
class WorkingBox:
    """Box ``d``, its pixel size (Å), the filter resolution (Å), the frequency limit
    ``k_max`` (cycles / pixel) and the last Fourier shell used."""

    box_size: int
    pixel_size_angstrom: float
    resolution_angstrom: float
    k_max: float
    last_shell: int


def working_box(full_box: int, pixel_size_angstrom: float, box_size: int | None,
                resolution_angstrom: float | None, default_box: int) -> WorkingBox:
    """The working box of :func:`cryoviz.inference.ppca.iter_ppca` (see its parameters).

    ``None`` for ``box_size``: the even box whose Nyquist is ``resolution_angstrom``
    if given (at most ``full_box``), else ``min(full_box, default_box)``.
    """
    if box_size is None:
        if resolution_angstrom is not None:
            wanted = 2 * math.ceil(full_box * pixel_size_angstrom / resolution_angstrom)
            box_size = int(min(full_box - full_box % 2, max(8, wanted)))
        else:
            box_size = int(min(full_box - full_box % 2, default_box))
    d = int(box_size)
    apix_w = pixel_size_angstrom * full_box / d
    if resolution_angstrom is None:
        resolution_angstrom = 2.0 * apix_w
    k_max = min(0.5, apix_w / float(resolution_angstrom))
    last_shell = int(math.floor(k_max * d + 1e-9))
    if last_shell < 1:
        raise InputError(None, "resolution_angstrom",
                         f"at most {d * apix_w:g} Å (the box)", resolution_angstrom)
    return WorkingBox(d, apix_w, float(resolution_angstrom), k_max, last_shell)


@dataclass
class CachedTransforms:
    """Per-particle data of the working box, kept for every EM pass.

    Attributes
    ----------
    transforms
        ``(N, d, d // 2 + 1)`` complex64 cropped transforms.
    modulation
        ``(N, d, d // 2 + 1)`` complex64 CTF x shift factors.
    padded_ctf
        ``(N, p, p // 2 + 1)`` float32 CTF on the padded grid, or ``None`` (no
        CTF, or larger than the cache budget: recomputed per batch).
    consensus
        Two half-set accumulators of the consensus map, or ``None``.
    """

    transforms: torch.Tensor
    modulation: torch.Tensor
    padded_ctf: torch.Tensor | None
    consensus: list[FourierAccumulator] | None


def cache_transforms(particles: ParticleSet, box: WorkingBox, pad_factor: float,
                     halves: np.ndarray, batch_size: int, device, with_consensus: bool,
                     ctf_cache_bytes: int) -> CachedTransforms:
    """Read the stack once: cropped transforms, modulations, padded CTFs, consensus sums.

    Parameters
    ----------
    particles
        The particles (rotations required; shifts and CTF used when present).
    box
        The working box.
    pad_factor
        Padding of the Fourier grid (side ``round(pad_factor * d)``).
    halves
        ``(N,)`` half-set labels (0 / 1) for the consensus.
    batch_size
        Particles read at a time.
    device
        Torch device of the computation (the caches stay on the CPU).
    with_consensus
        Accumulate the consensus map's half sums.
    ctf_cache_bytes
        Keep the padded CTFs when they fit in this many bytes.
    """
    n, d, apix_w = len(particles), box.box_size, box.pixel_size_angstrom
    padded = int(round(pad_factor * d))
    rotations = torch.as_tensor(np.asarray(particles.rotations), dtype=torch.float64)
    shifts = (None if particles.shifts_angstrom is None else
              torch.as_tensor(np.asarray(particles.shifts_angstrom), dtype=torch.float64))
    ctf_all = particles.ctf
    cache = torch.zeros((n, d, d // 2 + 1), dtype=torch.complex64)
    modulation = torch.zeros((n, d, d // 2 + 1), dtype=torch.complex64)
    padded_ctf = None
    if ctf_all is not None and n * padded * (padded // 2 + 1) * 4 <= ctf_cache_bytes:
        padded_ctf = torch.zeros((n, padded, padded // 2 + 1), dtype=torch.float32)
    consensus = [FourierAccumulator(d, pad_factor, device) for _ in (0, 1)] \
        if with_consensus else None
    with ImageSource(particles) as source:
        for start in range(0, n, batch_size):
            index = np.arange(start, min(n, start + batch_size))
            ft = crop_images_fourier(source.images(index).to(device, torch.float64), d)
            sel = torch.as_tensor(index)
            cache[sel] = ft.to(torch.complex64).cpu()
            ones = torch.ones(ft.shape, dtype=torch.complex128, device=device)
            modulation[sel] = apply_shift_and_ctf(
                ones, apix_w, None if shifts is None else shifts[sel].to(device),
                None if ctf_all is None else ctf_all.subset(sel)).to(torch.complex64).cpu()
            if padded_ctf is not None:
                padded_ctf[sel] = compute_ctf_2d(
                    ctf_all.subset(sel), padded, apix_w, rfft=True, dtype=torch.float32,
                    device=device).cpu()
            if consensus is not None:
                add_to_half_sets(consensus, centered_irfft2(ft, d), index, halves, rotations,
                                 apix_w, shifts, ctf_all)
    return CachedTransforms(cache, modulation, padded_ctf, consensus)


def latent_posterior(slices: torch.Tensor, r: torch.Tensor, noise: torch.Tensor, layout
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Posterior of ``z ~ N(0, I)`` given ``r = A z + noise`` for a batch.

    Parameters
    ----------
    slices
        ``(B, K, P)`` component slices ``A`` (CTF applied) at the used pixels.
    r
        ``(B, P)`` residuals of the images after the mean map.
    noise
        ``(S,)`` noise power per shell.
    layout
        The half-plane shell layout (:func:`cryoviz.noise.half_plane_shells`).

    Returns
    -------
    mu, cov, log_evidence, power
        ``(B, K)`` means, ``(B, K, K)`` covariances, ``(B,)`` log-evidences and
        ``(B, P)`` expected residual power ``E |r - A z|^2``.
    """
    k_comp = slices.shape[1]
    eye = torch.eye(k_comp, dtype=torch.float64, device=slices.device)
    wsig = layout.weight / noise[layout.shell]  # (P,)
    gram = torch.einsum("bkp,blp,p->bkl", slices.conj(), slices, wsig.to(slices.dtype)).real
    lam = eye + gram
    b = torch.einsum("bkp,bp,p->bk", slices.conj(), r, wsig.to(slices.dtype)).real
    chol = torch.linalg.cholesky(lam)
    mu = torch.cholesky_solve(b[..., None], chol)[..., 0]
    cov = torch.cholesky_inverse(chol)
    logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(dim=-1)
    constant = float((layout.weight * torch.log(2.0 * math.pi * noise[layout.shell])).sum())
    ll = (-0.5 * ((r.real**2 + r.imag**2) * wsig).sum(dim=-1) - constant
          + 0.5 * (b * mu).sum(dim=-1) - 0.5 * logdet)
    fitted = torch.einsum("bkp,bk->bp", slices, mu.to(slices.dtype))
    spread = torch.einsum("bkp,blp,bkl->bp", slices.conj(), slices,
                          cov.to(slices.dtype)).real
    power = (r - fitted).abs() ** 2 + spread
    return mu, cov, ll, power


def shell_sum(power: torch.Tensor, layout) -> torch.Tensor:
    """``(S,)`` sums per shell of ``(B, P)`` powers, with the layout's weights."""
    out = torch.zeros(layout.n_shells, dtype=torch.float64, device=power.device)
    return out.index_add_(0, layout.shell, (power * layout.weight).sum(dim=0))


def residual_channels(resid: torch.Tensor, mu: torch.Tensor, moment: torch.Tensor,
                      shifts_angstrom: torch.Tensor | None, ctf, padded_ctf: torch.Tensor | None,
                      pairs: list[tuple[int, int]], box: WorkingBox, padded: int
                      ) -> torch.Tensor:
    """The M-step's channels of one batch on the padded grid.

    Parameters
    ----------
    resid
        ``(B, d, d // 2 + 1)`` residual transforms (image minus mean map slice).
    mu, moment
        ``(B, K)`` posterior means and ``(B, K, K)`` second moments ``E[z z^T]``.
    shifts_angstrom, ctf
        The batch's shifts ``(B, 2)`` and CTF (or ``None``).
    padded_ctf
        ``(B, p, p // 2 + 1)`` cached padded CTF, or ``None`` (computed from ``ctf``).
    pairs
        The ``(k, l)``, ``k <= l`` pairs of the weight volumes.
    box
        The working box.
    padded
        Side ``p`` of the padded grid.

    Returns
    -------
    torch.Tensor
        ``(K + ceil(len(pairs) / 2), B, p, p // 2 + 1)``: the right-hand sides
        ``CTF * R * mu_k``, then the weights ``CTF^2 E[z_k z_l]`` packed two per
        complex channel (real and imaginary parts).
    """
    d, apix_w = box.box_size, box.pixel_size_angstrom
    device = resid.device
    big = centered_rfft2(pad_center(centered_irfft2(resid, d), padded, ndim=2))
    if shifts_angstrom is not None:
        big = phase_shift(big, -shifts_angstrom / apix_w, padded, rfft=True)
    if padded_ctf is not None:
        values = padded_ctf.to(device, torch.float64)
    elif ctf is not None:
        values = compute_ctf_2d(ctf, padded, apix_w, rfft=True, dtype=torch.float64,
                                device=device)
    else:
        values = torch.ones(big.shape, dtype=torch.float64, device=device)
    big = big * values
    ctf2 = values**2
    channels = [big * mu[:, k, None, None] for k in range(mu.shape[1])]
    for j in range(0, len(pairs), 2):
        real = ctf2 * moment[:, pairs[j][0], pairs[j][1], None, None]
        imag = (ctf2 * moment[:, pairs[j + 1][0], pairs[j + 1][1], None, None]
                if j + 1 < len(pairs) else torch.zeros_like(real))
        channels.append(torch.complex(real, imag))
    return torch.stack(channels)
