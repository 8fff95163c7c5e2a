"""Homogeneous refinement by variational EM (recipe ``fstdiff``).

Every particle gets a Gaussian posterior ``q_i(R, t)`` over its rotation (on the
tangent space around a mean rotation) and its shift
(:mod:`cryoviz.inference.variational_q`); the map is the MAP estimate under a
Gaussian prior per Fourier shell. Each epoch is one pass over the images:

* **E-step by SGD.** With the map fixed, each batch's ``q`` is fitted by Adam on
  the ELBO (expected Gaussian log-likelihood under antithetic reparameterised
  samples, the entropy of ``q(R)`` against a uniform prior on SO(3), the KL of
  ``q(t)`` to a Gaussian prior on shifts), against its own half map.
* **M-step in closed form.** Each particle is backprojected at ``n_backproject``
  draws of its ``q`` (weight ``1 / n_backproject`` each, a Monte Carlo estimate
  of the expected sufficient statistics ``E_q[CTF X]``, ``E_q[CTF^2]``); the
  half maps and the full map are Wiener-filtered with the regulariser of the
  gold-standard FSC (:func:`cryoviz.backprojection.gold_standard_maps`). This is
  the exact maximiser of the same objective over the map given the draws, so the
  volume is not moved by SGD steps.
* **Noise**: ``alpha_i sigma2(s)``: ``sigma2(s)`` per shell is the residual
  power at the particles' mean poses (the first epoch uses the images' power,
  as :mod:`cryoviz.inference.refine`) and ``alpha_i`` a per-particle scale, the
  particle's own residual power relative to ``sigma2`` (RELION's per-group noise
  taken to single particles; a few thousand Fourier pixels per image make it
  a precise estimate). Noisier particles thus get broader ``q`` and a smaller
  weight ``1 / alpha_i`` in the M-step.
* **Frequency marching**: the E-step uses shells up to the half-map 0.143
  crossing plus two (the first epoch: the starting map's low-pass).

Variational EM is a *local* method: the Gaussian ``q`` cannot jump between
distant modes. The means are therefore initialised by an exact search against
the starting map (low-passed to ``initial_lowpass_angstrom``): all of
``SO3Grid(coarse_order)`` times a disc of shifts, then the best rotations
oversampled one order finer (:func:`cryoviz.inference.pose_search.refine_candidates`);
the initial ``sigma`` comes from that search's posterior spread.

Outputs (:func:`write_variational`) are those of ``relion-refine``; in
``poses.npz`` the best pose is the mean of ``q``, the angular spread is
``sqrt(sum_j sigma_rot_j^2)`` (degrees, the RMS angle of ``q``), the shift spread
``sqrt(2) sigma_t`` (Å, the RMS distance), and the top-k poses are the mean
followed by ``top_k - 1`` draws of ``q``, all with weight ``1 / top_k`` (equally
weighted Monte Carlo draws, not ranked alternatives).

With ``volume_uncertainty``, the last epoch also puts draw ``k`` of every
particle into an accumulator of its own; the per-voxel standard deviation of
those ``n_backproject`` maps is the map's spread over the pose posteriors
(:mod:`cryoviz.inference.map_spread`), written as ``volumes/uncertainty.mrc``.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cryoviz.backprojection import FourierAccumulator, gold_standard_maps
from cryoviz.ctf import compute_ctf_2d
from cryoviz.errors import InputError
from cryoviz.geometry import SO3Grid
from cryoviz.imaging import forward_fourier, images_to_fourier, volume_to_fourier
from cryoviz.inference.class_em import e_step_limit_shell
from cryoviz.inference.em_start import image_batches, prepare_em_start
from cryoviz.inference.map_spread import draw_spread
from cryoviz.inference.pose_scoring import pixel_set
from cryoviz.inference.posterior import PosePosterior, export_poses
from cryoviz.inference.variational_q import (
    PoseQ,
    fit_batch,
    initial_q,
    noise_model,
    sample_rotations,
    sample_shifts,
)
from cryoviz.io.mrc import atomic_output, write_volume
from cryoviz.io.particles import ParticleSet
from cryoviz.metrics.fsc import FSCCurve
from cryoviz.projection import extract_points

__all__ = ["VariationalSettings", "VariationalProgress", "VariationalResult",
           "iter_variational", "run_variational", "write_variational"]


@dataclass(frozen=True)
class VariationalSettings:
    """Settings of :func:`iter_variational`.

    Attributes
    ----------
    n_epochs
        Variational EM epochs (one E-step pass and one M-step each).
    coarse_order
        HEALPix order of the initial exact search (oversampled once, to ``+ 1``).
    n_oversampled
        Coarse rotations per image oversampled in the initial search.
    shift_range_px, shift_step_px
        Disc of shifts of the initial search (pixels) and its step.
    n_steps
        Adam steps per batch and epoch.
    n_pairs
        Antithetic sample pairs per particle and Adam step.
    lr_rotation_deg, lr_shift_px, lr_log_sigma
        Adam step sizes: tangent offset (degrees), mean shift (pixels), log sds.
    prior_shift_sd_px
        Standard deviation of the Gaussian prior on shifts (pixels).
    n_backproject
        Draws of ``q`` backprojected per particle in the M-step.
    top_k
        Poses stored per particle (the mean and ``top_k - 1`` draws).
    initial_lowpass_angstrom
        Low-pass of the starting map and first E-step limit (Å).
    resolution_limit_angstrom
        Cap on the E-step resolution (Å); ``None``: Nyquist.
    batch_size
        Images per batch.
    volume_uncertainty
        Also estimate the per-voxel spread of the map over the pose posteriors in
        the last epoch (``n_backproject`` extra accumulators; needs
        ``n_backproject >= 2``).
    seed
        Seed of the half split (when the file has none) and of the draws.
    """

    n_epochs: int = 5
    coarse_order: int = 1
    n_oversampled: int = 4
    shift_range_px: float = 3.0
    shift_step_px: float = 1.0
    n_steps: int = 10
    n_pairs: int = 1
    lr_rotation_deg: float = 1.5
    lr_shift_px: float = 0.1
    lr_log_sigma: float = 0.3
    prior_shift_sd_px: float = 3.0
    n_backproject: int = 4
    top_k: int = 4
    initial_lowpass_angstrom: float | None = 20.0
    resolution_limit_angstrom: float | None = None
    batch_size: int = 64
    volume_uncertainty: bool = False
    seed: int = 0

    def validate(self) -> None:
        """Raise :class:`InputError` for settings that cannot work."""
        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise InputError(None, name, expected, getattr(self, name))

        for name in ("n_epochs", "n_oversampled", "n_steps", "n_pairs", "n_backproject",
                     "top_k", "batch_size"):
            need(getattr(self, name) >= 1, name, "at least 1")
        need(0 <= self.coarse_order <= 3, "coarse_order", "0 .. 3")
        need(not self.volume_uncertainty or self.n_backproject >= 2, "n_backproject",
             "at least 2 draws per particle for volume_uncertainty")
        need(self.shift_step_px > 0, "shift_step_px", "> 0")
        need(self.shift_range_px >= 0, "shift_range_px", ">= 0")
        for name in ("lr_rotation_deg", "lr_shift_px", "lr_log_sigma", "prior_shift_sd_px"):
            need(getattr(self, name) > 0, name, "> 0")
        for name in ("initial_lowpass_angstrom", "resolution_limit_angstrom"):
            value = getattr(self, name)
            need(value is None or value > 0, name, "a positive number of Å or None")


@dataclass(frozen=True)
class VariationalResult:
    """Outcome of :func:`iter_variational`.

    Attributes
    ----------
    map, half_maps
        ``(D, D, D)`` and ``(2, D, D, D)`` float32 maps.
    half_fsc
        FSC of the half maps.
    posterior
        Per-particle pose summaries (see the module docstring).
    sigma_rotation_deg
        ``(N, 3)`` tangent standard deviations of ``q(R)`` in degrees.
    sigma_shift_angstrom
        ``(N,)`` standard deviation of each shift coordinate under ``q(t)`` (Å).
    noise_scale
        ``(N,)`` per-particle noise scale ``alpha_i``.
    sigma2
        ``(D // 2 + 1,)`` noise variance per shell.
    elbos
        ELBO summed over particles (up to a constant), per epoch.
    pixel_size_angstrom, particle_ids, seconds, settings
        Bookkeeping.
    uncertainty
        ``(D, D, D)`` float32 per-voxel standard deviation of the map over the pose
        posteriors (``volume_uncertainty``), else ``None``.
    """

    map: torch.Tensor
    half_maps: torch.Tensor
    half_fsc: FSCCurve
    posterior: PosePosterior
    sigma_rotation_deg: np.ndarray
    sigma_shift_angstrom: np.ndarray
    noise_scale: np.ndarray
    sigma2: torch.Tensor
    elbos: tuple[float, ...]
    pixel_size_angstrom: float
    particle_ids: np.ndarray
    seconds: float
    settings: VariationalSettings
    uncertainty: torch.Tensor | None = None


@dataclass(frozen=True)
class VariationalProgress:
    """State after one epoch of :func:`iter_variational`.

    Attributes
    ----------
    epoch, n_epochs
        1-based epoch and total.
    e_step_resolution_angstrom
        Resolution limit of the epoch's E-step.
    resolution_angstrom
        Half-map FSC 0.143 resolution after the M-step.
    elbo
        ELBO summed over particles (up to a constant that depends on the noise
        model and the E-step's pixels, so only comparable between epochs that
        share them).
    median_angular_spread_deg
        Median RMS angle of the particles' ``q(R)``.
    seconds
        Wall time of the epoch (the first includes the initial search).
    result
        The :class:`VariationalResult` on the last epoch, else ``None``.
    """

    epoch: int
    n_epochs: int
    e_step_resolution_angstrom: float
    resolution_angstrom: float
    elbo: float
    median_angular_spread_deg: float
    seconds: float
    result: VariationalResult | None = None


def iter_variational(
    particles: ParticleSet,
    initial_map: torch.Tensor | np.ndarray,
    settings: VariationalSettings | None = None,
    device: str | torch.device = "cpu",
) -> Iterator[VariationalProgress]:
    """Refine a map and per-particle Gaussian pose posteriors by variational EM.

    Parameters
    ----------
    particles
        ``N`` particles with CTF parameters (their poses, if any, are ignored).
    initial_map
        ``(D, D, D)`` starting map; low-passed to ``settings.initial_lowpass_angstrom``
        and put on the data's scale (:func:`cryoviz.inference.em_start.fit_map_scale`).
        It also fixes the frame, and the initial poses come from an exact search
        against it (variational EM is local).
    settings
        :class:`VariationalSettings` (defaults when ``None``).
    device
        Torch device.

    Yields
    ------
    VariationalProgress
        One per epoch; the last carries the :class:`VariationalResult`.
    """
    settings = settings or VariationalSettings()
    settings.validate()
    start_time = time.perf_counter()
    device = torch.device(device)
    n, box, apix = len(particles), particles.box_size, particles.pixel_size_angstrom
    em = prepare_em_start(particles, initial_map, settings.initial_lowpass_angstrom,
                          settings.resolution_limit_angstrom, settings.seed, device)
    half_maps, halves, layout = em.half_maps, em.halves, em.layout
    cap, first_limit, ctf_all = em.cap, em.first_limit, em.ctf
    gen = torch.Generator(device=device).manual_seed(settings.seed)

    def batches() -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        return image_batches(particles, settings.batch_size, device)

    power = torch.zeros((n, layout.n_shells), dtype=torch.float64, device=device)
    for index, images in batches():
        ft = images_to_fourier(images)
        power[torch.as_tensor(index, device=device)] = layout.sums(ft.real**2 + ft.imag**2)
    sigma2, alpha = noise_model(power, layout.count)

    q_all: PoseQ | None = None
    curve: FSCCurve | None = None
    elbos: list[float] = []
    lr_rot = math.radians(settings.lr_rotation_deg)
    for epoch in range(1, settings.n_epochs + 1):
        t0 = time.perf_counter()
        limit = first_limit if curve is None else e_step_limit_shell(
            [curve], layout.n_shells, cap, adaptive=True)
        pix = pixel_set(box, limit, device)
        w = pix.inverse_variance(sigma2)
        maps_ft = [volume_to_fourier(m.to(device, torch.float64)) for m in half_maps]
        search_ft = [m.to(torch.complex64) for m in maps_ft]
        grid_proj = None
        if q_all is None:
            rots = SO3Grid(settings.coarse_order).rotations(torch.float64, device)
            grid_proj = [extract_points(m, rots, pix.frequencies) for m in search_ft]
            q_all = PoseQ(base=torch.zeros((n, 3, 3), dtype=torch.float64, device=device),
                          log_sigma_rot=torch.zeros((n, 3), dtype=torch.float64, device=device),
                          shift_px=torch.zeros((n, 2), dtype=torch.float64, device=device),
                          log_sigma_shift=torch.zeros(n, dtype=torch.float64, device=device))
        accs = [FourierAccumulator(box, device=device) for _ in (0, 1)]
        draw_accs = ([FourierAccumulator(box, device=device)
                      for _ in range(settings.n_backproject)]
                     if settings.volume_uncertainty and epoch == settings.n_epochs else [])
        residual = torch.zeros((n, layout.n_shells), dtype=torch.float64, device=device)
        total_elbo = 0.0
        for index, images in batches():
            x_full = images_to_fourier(images)
            ctf_b = ctf_all.subset(torch.as_tensor(index))
            ctf_full = compute_ctf_2d(ctf_b, box, apix, rfft=True, dtype=torch.float64,
                                      device=device)
            for h in (0, 1):
                loc = torch.as_tensor(np.flatnonzero(halves[index] == h), device=device)
                if len(loc) == 0:
                    continue
                sel = torch.as_tensor(index, device=device)[loc]
                x, c = pix.take(x_full[loc]), pix.take(ctf_full[loc])
                if grid_proj is not None:
                    q_all.assign(sel, initial_q(
                        x, c, w, search_ft[h], pix, grid_proj[h], settings.coarse_order,
                        settings.n_oversampled, settings.shift_range_px,
                        settings.shift_step_px))
                q = q_all.subset(sel)
                w_b = (w[None] / alpha[sel][:, None]).float()
                elbo = fit_batch(q, x.to(torch.complex64), c.float(), w_b, search_ft[h],
                                 pix, settings.n_steps, settings.n_pairs, lr_rot,
                                 settings.lr_shift_px, settings.lr_log_sigma,
                                 settings.prior_shift_sd_px, gen)
                q_all.assign(sel, q)
                total_elbo += float(elbo.sum())
                m = settings.n_backproject
                rots = sample_rotations(q.base, q.log_sigma_rot.exp(), m, gen)
                shifts = sample_shifts(q.shift_px, q.log_sigma_shift.exp(), m, gen)
                rows = torch.arange(len(loc)).repeat_interleave(m)
                ctf_h = ctf_b.subset(loc.cpu())
                accs[h].add(images[loc], rots.reshape(-1, 3, 3), apix,
                            shifts.reshape(-1, 2) * apix, ctf_h,
                            particle_weights=(1.0 / (m * alpha[sel])).cpu()[rows],
                            image_rows=rows)
                for k, acc in enumerate(draw_accs):  # draw k of every particle
                    acc.add(images[loc], rots[:, k], apix, shifts[:, k] * apix, ctf_h,
                            particle_weights=(1.0 / alpha[sel]).cpu())
                model = forward_fourier(maps_ft[h], q.base, box, apix, q.shift_px * apix, ctf_h)
                residual[sel] = layout.sums((x_full[loc] - model).abs() ** 2)
        sigma2, alpha = noise_model(residual, layout.count)
        full_map, half_maps, curve = gold_standard_maps(accs)
        half_maps = half_maps.to(torch.float64)
        elbos.append(total_elbo)
        spread = q_all.angular_spread_deg().cpu()
        result = None
        if epoch == settings.n_epochs:
            result = _result(q_all, full_map, half_maps, curve, sigma2, alpha, elbos, particles,
                             settings, gen, time.perf_counter() - start_time,
                             draw_spread(draw_accs, curve.fsc).cpu() if draw_accs else None)
        yield VariationalProgress(
            epoch=epoch, n_epochs=settings.n_epochs,
            e_step_resolution_angstrom=box * apix / limit,
            resolution_angstrom=curve.resolution_angstrom(apix, 0.143), elbo=total_elbo,
            median_angular_spread_deg=float(spread.median()),
            seconds=time.perf_counter() - t0, result=result)


def _result(q: PoseQ, full_map, half_maps, curve, sigma2, alpha, elbos, particles: ParticleSet,
            settings: VariationalSettings, gen: torch.Generator, seconds: float,
            uncertainty: torch.Tensor | None) -> VariationalResult:
    apix = particles.pixel_size_angstrom
    k = settings.top_k
    draws_r = sample_rotations(q.base, q.log_sigma_rot.exp(), k - 1, gen)
    draws_t = sample_shifts(q.shift_px, q.log_sigma_shift.exp(), k - 1, gen)
    topk_r = torch.cat([q.base[:, None], draws_r], 1)
    topk_t = torch.cat([q.shift_px[:, None], draws_t], 1) * apix
    n = q.base.shape[0]
    posterior = PosePosterior(
        rotations=q.base.cpu().numpy().copy(),
        shifts_angstrom=(q.shift_px * apix).cpu().numpy(),
        angular_spread_deg=q.angular_spread_deg().cpu().numpy(),
        shift_spread_angstrom=(q.shift_spread_px() * apix).cpu().numpy(),
        topk_rotations=topk_r.cpu().numpy(), topk_shifts_angstrom=topk_t.cpu().numpy(),
        topk_weights=np.full((n, k), 1.0 / k),
        particle_ids=np.asarray(particles.particle_ids, dtype=np.int64).copy())
    return VariationalResult(
        map=full_map.cpu(), half_maps=half_maps.float().cpu(), half_fsc=curve,
        posterior=posterior, sigma_rotation_deg=torch.rad2deg(q.log_sigma_rot.exp()).cpu().numpy(),
        sigma_shift_angstrom=(q.log_sigma_shift.exp() * apix).cpu().numpy(),
        noise_scale=alpha.cpu().numpy(), sigma2=sigma2.cpu(), elbos=tuple(elbos),
        pixel_size_angstrom=apix, particle_ids=posterior.particle_ids, seconds=seconds,
        settings=settings, uncertainty=uncertainty)


def run_variational(particles: ParticleSet, initial_map, **kwargs) -> VariationalResult:
    """Run :func:`iter_variational` to the end and return its result."""
    return deque(iter_variational(particles, initial_map, **kwargs), maxlen=1)[0].result


def write_variational(result: VariationalResult, particles: ParticleSet,
                      output_dir: str | Path) -> dict:
    """Write the refinement into ``output_dir``.

    Files: ``volumes/map.mrc`` and ``volumes/half_{1,2}.mrc`` (with the voxel
    size; ``volumes/uncertainty.mrc`` with ``volume_uncertainty``), ``poses.npz``
    (:mod:`cryoviz.inference.posterior`; see the module docstring for what the
    spreads and top-k mean here), ``q_sigmas.npz``
    (``sigma_rotation_deg`` ``(N, 3)``, ``sigma_shift_angstrom`` ``(N,)``,
    ``noise_scale`` ``(N,)``), the
    particles at their mean poses as ``particles.star``, ``particles.cs`` and
    ``poses.pkl`` (cryoDRGN), and ``metrics.json``.
    """
    out = Path(output_dir)
    apix = result.pixel_size_angstrom
    write_volume(out / "volumes" / "map.mrc", result.map.numpy(), apix)
    for i, half in enumerate(result.half_maps.numpy()):
        write_volume(out / "volumes" / f"half_{i + 1}.mrc", half, apix)
    if result.uncertainty is not None:
        write_volume(out / "volumes" / "uncertainty.mrc", result.uncertainty.numpy(), apix)
    with atomic_output(out / "q_sigmas.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, sigma_rotation_deg=result.sigma_rotation_deg,
                     sigma_shift_angstrom=result.sigma_shift_angstrom,
                     noise_scale=result.noise_scale, particle_ids=result.particle_ids)
    export_poses(result.posterior, particles, out)
    metrics = {
        "recipe": "fstdiff",
        "n_particles": len(particles),
        "resolution_angstrom_fsc0143": result.half_fsc.resolution_angstrom(apix, 0.143),
        "resolution_angstrom_fsc05": result.half_fsc.resolution_angstrom(apix, 0.5),
        "median_angular_spread_deg": float(np.median(result.posterior.angular_spread_deg)),
        "median_shift_spread_angstrom": float(np.median(result.posterior.shift_spread_angstrom)),
        "elbos": list(result.elbos),
        "seconds": result.seconds,
        "settings": dict(vars(result.settings)),
    }
    with atomic_output(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2))
    return metrics
