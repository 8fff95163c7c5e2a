"""3-D variability analysis with known poses: a linear subspace fitted by PPCA-EM.

The model is that of 3DVA (Punjani & Fleet 2021, J. Struct. Biol. 213,
107702): each particle's map is the consensus map plus a point of a
``K``-dimensional linear subspace,

    V_i = V0 + sum_k z_ik U_k,        z_i ~ N(0, I_K),

and its image transform (centred half transform, box ``d``) is

    X_i(k) = CTF_i(k) S_i(k) [P_{R_i} (V0 + U z_i)](k) + N_i(k)

with the poses ``R_i``, shifts ``S_i`` and CTF known. ``V0`` is the
gold-standard Wiener backprojection of the particles (or a given map) and stays
fixed, as in 3DVA; only the components ``U`` and the noise are fitted.

Working grid
------------
The particles are Fourier-cropped to a working box ``d`` (default
``min(D, 32)``, or the box whose Nyquist is ``resolution_angstrom``), i.e.
pixel size ``apix * D / d``, and the E-step uses the Fourier pixels up to
``resolution_angstrom`` (3DVA's filter resolution; default: the working
Nyquist). All maps of the result (mean, components) live on the working grid.
The cropped transforms of all particles and their CTF x shift factors are kept
in memory (complex64, ``2 N d (d // 2 + 1)`` values), and the CTFs on the
padded M-step grid (float32, ``N 2d (d + 1)`` values) when they fit in
``CTF_CACHE_BYTES``.

Noise model
-----------
As in :mod:`cryoviz.inference.class_em`: the real and imaginary parts of each
Fourier coefficient carry independent Gaussian noise of variance
``sigma2(s)`` in shell ``s = round(|k| d)`` (unnormalised FFT units), and the
Hermitian-redundant columns of the half plane (``kx = 0`` and, for even ``d``,
``kx = d / 2``) are weighted by 1/2. The noise starts from the residual power
of the images after subtracting ``V0``'s projections.

Iteration
---------
One pass over the particles per iteration, batch by batch:

* E-step. With ``A_i`` the ``K`` CTF-modulated, shifted central slices of the
  components and ``r_i = X_i - C_i S_i P_i V0`` (both restricted to the used
  pixels ``p``, weights ``w_p``), the posterior of ``z_i`` is Gaussian::

      Lambda_i = I + sum_p w_p Re(conj(A_ip) A_ip^T) / sigma2_p
      mu_i     = Lambda_i^-1 sum_p w_p Re(conj(A_ip) r_ip) / sigma2_p
      Sigma_i  = Lambda_i^-1

  and the marginal log-likelihood ``log N(r_i; 0, A A^H + sigma2)`` (reported
  per iteration) is ``-sum w |r|^2 / (2 sigma2) - sum w log(2 pi sigma2) +
  b^T Lambda^-1 b / 2 - log det Lambda / 2`` with ``b = Lambda mu``.
* M-step, accumulated in the same pass. The components minimise
  ``sum_i E || X_i - C_i S_i P_i (V0 + U z_i) ||^2``; with the central-slice
  operator's normal matrix approximated as diagonal on the padded Fourier grid
  (as every direct Fourier inversion does), each voxel ``v`` solves the
  ``K x K`` system::

      (sum_i P_i^T C_i^2 E[z_i z_i^T] + lambda I) U(v) = sum_i P_i^T C_i S_i^-1 r_i E[z_i]

  i.e. a ``K``-dimensional Wiener backprojection: the right-hand sides and
  the ``K (K + 1) / 2`` weight volumes are inserted with
  :func:`cryoviz.projection.insert_slices` from residual images zero-padded to
  twice the box (as :class:`cryoviz.backprojection.FourierAccumulator`), then
  completed by Hermitian symmetry. ``lambda = ridge * mean diagonal weight``
  over the used frequencies. The maps are brought back to real space (crop,
  gridding correction) and low-passed to the E-step limit.
* Focus mask (optional, as 3DVA's mask): a real-space map with values in
  ``[0, 1]`` (soft edges recommended). The initial components and each
  M-step's components are multiplied by it before the orthogonalisation, so
  the subspace describes variability inside the mask only; the consensus map
  and the images stay whole. This is a projected M-step (the unmasked
  voxel-wise solution, then the mask), not the least-squares solution
  constrained to the mask.
* ``sigma2(s)`` is the expected residual power ``E |r - A z|^2`` under the
  previous components (an ECM step, as in class EM).
* Identifiability: the components are re-expressed in an orthogonal basis
  ordered by explained variance: with ``U^T = Q R`` and ``R Sbar R^T = E L E^T``
  (``Sbar`` the mean ``E[z z^T]``), ``U <- (Q E L^1/2)^T``; the prior stays
  ``N(0, I)``. The sign of each component makes its largest voxel positive.

After the last iteration one more E-step gives the posteriors under the final
components. The result reports the components as unit-norm orthogonal maps
(Euclidean norm over the working grid) and ``z`` as coordinates along them
(``V_i = mean + sum_k z_ik components_k``); ``component_std`` is the prior
standard deviation of each coordinate.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterator

import numpy as np
import torch

from cryoviz.backprojection import gold_standard_maps
from cryoviz.errors import InputError
from cryoviz.fourier import (
    frequency_grid_3d,
    lowpass_volume,
)
from cryoviz.imaging import gridding_correction, volume_to_fourier
from cryoviz.inference.focus_mask import check_focus_mask
from cryoviz.inference.ppca_result import PPCAProgress, PPCAResult, eval_ppca, write_ppca
from cryoviz.inference.ppca_terms import (
    cache_transforms,
    latent_posterior,
    residual_channels,
    shell_sum,
    working_box,
)
from cryoviz.inference.subspace_ops import (
    extract_many,
    finish_sigma2,
    fourier_crop_volume,
    insert_many,
    orthogonalise,
    slice_corners,
    solve_components,
)
from cryoviz.io.particles import ParticleSet
from cryoviz.noise import half_plane_shells
from cryoviz.reconstruct import half_sets

__all__ = [
    "PPCAProgress",
    "PPCAResult",
    "iter_ppca",
    "run_ppca",
    "write_ppca",
    "eval_ppca",
    "fourier_crop_volume",
]

#: Default working box when neither ``box_size`` nor ``resolution_angstrom`` is given.
DEFAULT_WORK_BOX = 32

#: Default ridge, as a fraction of the mean diagonal M-step weight.
DEFAULT_RIDGE = 0.05

#: Largest cache of padded CTFs (bytes) kept across iterations.
CTF_CACHE_BYTES = 512 * 2**20

#: Padding of the Fourier grid of the M-step (as the consensus backprojection).
PAD_FACTOR = 2.0


def _is_int(value: object, minimum: int) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, np.integer))
            and int(value) >= minimum)


def _check(particles: ParticleSet, n_components: int, n_iterations: int, batch_size: int,
           box_size: int | None, resolution_angstrom: float | None, ridge: float) -> None:
    src = particles.source_path
    if particles.rotations is None:
        raise InputError(src, "poses",
                         "rotations for every particle (variability analysis with known "
                         "poses)", "none")
    if not _is_int(n_components, 1):
        raise InputError(None, "n_components", "an integer >= 1", n_components)
    if len(particles) < max(2, int(n_components) + 1):
        raise InputError(src, "particles",
                         f"at least n_components + 1 = {int(n_components) + 1} particles",
                         len(particles))
    if not _is_int(n_iterations, 1):
        raise InputError(None, "n_iterations", "an integer >= 1", n_iterations)
    if not _is_int(batch_size, 1):
        raise InputError(None, "batch_size", "an integer >= 1", batch_size)
    if box_size is not None and (not _is_int(box_size, 8) or int(box_size) > particles.box_size
                                 or int(box_size) % 2):
        raise InputError(None, "box_size",
                         f"an even integer from 8 to the particle box {particles.box_size}",
                         box_size)
    if resolution_angstrom is not None and not (
            isinstance(resolution_angstrom, (int, float, np.floating))
            and math.isfinite(resolution_angstrom) and resolution_angstrom > 0):
        raise InputError(None, "resolution_angstrom", "a positive number of Å",
                         resolution_angstrom)
    if not (math.isfinite(ridge) and ridge > 0):
        raise InputError(None, "ridge", "a positive number", ridge)


def _working_mask(mask: torch.Tensor | np.ndarray, full_box: int, box: int) -> torch.Tensor:
    """A focus mask ``(d, d, d)`` float64 on the working grid, checked.

    A particle-box mask is Fourier-cropped (as the maps are) and clipped to ``[0, 1]``.
    """
    values = check_focus_mask(mask, (full_box, box))
    if values.shape[-1] != box:
        values = fourier_crop_volume(values, box).clamp(0.0, 1.0)
        if float(values.max()) <= 0.0:
            raise InputError(None, "mask", "some voxels above 0 on the working grid",
                             "an empty mask after cropping")
    return values


def iter_ppca(
    particles: ParticleSet,
    n_components: int = 2,
    n_iterations: int = 10,
    box_size: int | None = None,
    resolution_angstrom: float | None = None,
    batch_size: int = 256,
    seed: int = 0,
    device: str = "cpu",
    mean_map: torch.Tensor | np.ndarray | None = None,
    ridge: float = DEFAULT_RIDGE,
    mask: torch.Tensor | np.ndarray | None = None,
) -> Iterator[PPCAProgress]:
    """3-D variability analysis (PPCA-EM on a linear subspace), yielding per iteration.

    Parameters
    ----------
    particles
        ``N`` particles with rotations (shifts and CTF used when present).
    n_components
        ``K >= 1`` components.
    n_iterations
        EM iterations (one pass over the cached cropped transforms each).
    box_size
        Working box ``d`` (even, ``8 <= d <= D``). ``None``: the even box whose
        Nyquist is ``resolution_angstrom`` if given, at most ``D``; else
        ``min(D, 32)``.
    resolution_angstrom
        Filter resolution (Å): the E-step uses Fourier pixels up to it and the
        components are low-passed to it. ``None``: the working Nyquist.
    batch_size
        Particles per batch.
    seed
        Seed of the random initial components (and of the half split of the
        consensus map when the particles have none).
    device
        Torch device.
    mean_map
        Optional consensus map ``(D, D, D)`` (particle box, cropped to the
        working box) or ``(d, d, d)``; ``None``: gold-standard Wiener
        backprojection of the cropped particles.
    ridge
        Ridge of the M-step normal equations, as a fraction of the mean
        diagonal weight over the used frequencies.
    mask
        Optional focus mask ``(D, D, D)`` (particle box; Fourier-cropped to the
        working box and clipped to ``[0, 1]``) or ``(d, d, d)``, values in
        ``[0, 1]``: the components are confined to it (see the module notes).

    Yields
    ------
    PPCAProgress
        One per iteration; the last carries the :class:`PPCAResult`.

    Raises
    ------
    InputError
        Missing poses, ``n_components < 1``, bad ``n_iterations`` /
        ``batch_size`` / ``box_size`` / ``resolution_angstrom``, a
        ``mean_map`` of the wrong shape, or a ``mask`` of the wrong shape, with
        values outside ``[0, 1]`` or no voxel above 0.
    """
    _check(particles, n_components, n_iterations, batch_size, box_size, resolution_angstrom,
           ridge)
    start_time = time.perf_counter()
    k_comp = int(n_components)
    n = len(particles)
    full_box = particles.box_size
    box = working_box(full_box, particles.pixel_size_angstrom, box_size, resolution_angstrom,
                      DEFAULT_WORK_BOX)
    d, apix_w, k_max = box.box_size, box.pixel_size_angstrom, box.k_max
    resolution_angstrom = box.resolution_angstrom
    if mean_map is not None:
        shape = tuple(np.shape(mean_map))
        if shape not in ((full_box,) * 3, (d,) * 3):
            raise InputError(None, "mean_map", f"shape ({full_box},)*3 or ({d},)*3", shape)
        if not bool(torch.isfinite(torch.as_tensor(np.asarray(mean_map))).all()):
            raise InputError(None, "mean_map", "finite values", "NaN or inf")

    focus = None if mask is None else _working_mask(mask, full_box, d).to(device)

    layout = half_plane_shells(d, box.last_shell, device=device)
    rotations = torch.as_tensor(np.asarray(particles.rotations), dtype=torch.float64)
    shifts = (None if particles.shifts_angstrom is None else
              torch.as_tensor(np.asarray(particles.shifts_angstrom), dtype=torch.float64))
    ctf_all = particles.ctf
    padded = int(round(PAD_FACTOR * d))
    # pass 0: cropped transforms (cached) and, without a mean map, the consensus
    cached = cache_transforms(particles, box, PAD_FACTOR, half_sets(particles, seed),
                              batch_size, device, mean_map is None, CTF_CACHE_BYTES)
    if cached.consensus is not None:
        v0 = gold_standard_maps(cached.consensus)[0].to(torch.float64)
    else:
        v0 = torch.as_tensor(np.asarray(mean_map), dtype=torch.float64)
        if v0.shape[-1] != d:
            v0 = fourier_crop_volume(v0, d)
    v0 = v0.to(device)
    v0_ft = volume_to_fourier(v0, PAD_FACTOR)

    # seeded random initial components, low-passed, small against the mean map
    generator = torch.Generator().manual_seed(seed)
    init = torch.randn((k_comp, d, d, d), generator=generator, dtype=torch.float64)
    init = torch.stack([lowpass_volume(m, resolution_angstrom, apix_w) for m in init])
    init = init * (0.1 * float(v0.norm()) / init.flatten(1).norm(dim=1)).reshape(-1, 1, 1, 1)
    components = init.to(device)
    if focus is not None:
        components = components * focus

    kz, ky, kx = frequency_grid_3d(padded, device=device, dtype=torch.float64)
    inside = torch.sqrt(kz**2 + ky**2 + kx**2) <= k_max
    grid_corr = gridding_correction(d, padded, torch.float64, device)
    pairs = [(a, b) for a in range(k_comp) for b in range(a, k_comp)]

    def batch_terms(index: np.ndarray, volumes_ft: torch.Tensor):
        """Residuals ``(B, d, d // 2 + 1)`` and component slices ``(B, K, P)``."""
        sel = torch.as_tensor(index)
        rot = rotations[sel].to(device)
        idx, wgt, _ = slice_corners(rot, d, padded)
        slices = extract_many(volumes_ft, idx, wgt, (len(index), d, d // 2 + 1))
        slices = slices * cached.modulation[sel].to(device, torch.complex128)
        resid = cached.transforms[sel].to(device, torch.complex128) - slices[0]
        comp = slices[1:].permute(1, 0, 2, 3).reshape(len(index), len(slices) - 1, d * (d // 2 + 1))
        return sel, rot, resid, comp[:, :, layout.pixels]

    # initial noise: residual power after the consensus
    total = torch.zeros(layout.n_shells, dtype=torch.float64, device=device)
    for start in range(0, n, batch_size):
        index = np.arange(start, min(n, start + batch_size))
        _, _, resid, _ = batch_terms(index, v0_ft[None])
        r = resid.reshape(len(index), -1)[:, layout.pixels]
        total += shell_sum(r.real**2 + r.imag**2, layout)
    sigma2 = finish_sigma2(total, layout, n)

    log_likelihoods: list[float] = []
    mu_all = torch.zeros((n, k_comp), dtype=torch.float64)
    cov_all = torch.zeros((n, k_comp, k_comp), dtype=torch.float64)
    for iteration in range(1, n_iterations + 2):
        final = iteration == n_iterations + 1
        iter_start = time.perf_counter()
        volumes_ft = torch.stack([v0_ft] + [volume_to_fourier(u, PAD_FACTOR) for u in components])
        accumulators = torch.zeros((k_comp + (len(pairs) + 1) // 2, padded, padded, padded),
                                   dtype=torch.complex128, device=device)
        residual_power = torch.zeros(layout.n_shells, dtype=torch.float64, device=device)
        second = torch.zeros((k_comp, k_comp), dtype=torch.float64, device=device)
        total_ll = 0.0
        for start in range(0, n, batch_size):
            index = np.arange(start, min(n, start + batch_size))
            sel, rot, resid, slices = batch_terms(index, volumes_ft)
            r = resid.reshape(len(index), -1)[:, layout.pixels]
            mu, cov, ll, power = latent_posterior(slices, r, sigma2, layout)
            total_ll += float(ll.sum())
            residual_power += shell_sum(power, layout)
            mu_all[sel] = mu.cpu()
            cov_all[sel] = cov.cpu()
            moment = cov + mu[:, :, None] * mu[:, None, :]  # (B, K, K)
            second += moment.sum(dim=0)
            if final:
                continue
            # M-step sums from residual images padded to the Fourier grid
            channels = residual_channels(
                resid, mu, moment, None if shifts is None else shifts[sel].to(device),
                None if ctf_all is None else ctf_all.subset(sel),
                None if cached.padded_ctf is None else cached.padded_ctf[sel], pairs, box,
                padded)
            idx, wgt, keep = slice_corners(rot, padded, padded, k_max)
            insert_many(channels, idx, wgt, keep, accumulators)
        log_likelihoods.append(total_ll)
        if final:
            break
        sigma2 = finish_sigma2(residual_power, layout, n)
        components = solve_components(accumulators[:k_comp], accumulators[k_comp:], pairs,
                                       k_comp, inside, ridge, d, grid_corr)
        components = torch.stack([lowpass_volume(u, resolution_angstrom, apix_w)
                                  for u in components]) if k_max < 0.5 else components
        if focus is not None:  # confined to the mask before the orthogonal basis is taken
            components = components * focus
        new, _ = orthogonalise(components.reshape(k_comp, -1), second / n)
        components = new.reshape(k_comp, d, d, d)
        norms = components.flatten(1).norm(dim=1)
        yield_progress = PPCAProgress(
            iteration=iteration, log_likelihood=total_ll,
            component_std=tuple(float(v) for v in norms),
            seconds=time.perf_counter() - iter_start,
        )
        if iteration < n_iterations:
            yield yield_progress
            continue
        last_progress = yield_progress

    norms = components.flatten(1).norm(dim=1).cpu()
    unit = (components.cpu() / norms.reshape(-1, 1, 1, 1)).to(torch.float32)
    z = mu_all * norms
    z_cov = cov_all * norms[:, None] * norms[None, :]
    result = PPCAResult(
        mean_map=v0.cpu().to(torch.float32),
        components=unit,
        component_std=norms.clone(),
        z=z.to(torch.float32),
        z_covariance=z_cov.to(torch.float32),
        sigma2=sigma2.cpu(),
        log_likelihoods=tuple(log_likelihoods),
        particle_ids=np.asarray(
            np.arange(n) if particles.particle_ids is None else particles.particle_ids,
            dtype=np.int64).copy(),
        pixel_size_angstrom=apix_w,
        resolution_angstrom=float(resolution_angstrom),
        n_iterations=n_iterations,
        seconds=time.perf_counter() - start_time,
        mask_fraction=None if focus is None else float(focus.mean()),
    )
    yield PPCAProgress(
        iteration=last_progress.iteration, log_likelihood=last_progress.log_likelihood,
        component_std=last_progress.component_std,
        seconds=last_progress.seconds + time.perf_counter() - iter_start,
        result=result,
    )


def run_ppca(particles: ParticleSet, **kwargs) -> PPCAResult:
    """Run :func:`iter_ppca` to the end and return its result."""
    last = deque(iter_ppca(particles, **kwargs), maxlen=1)
    return last[0].result
