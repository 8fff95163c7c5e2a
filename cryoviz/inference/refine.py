"""Homogeneous refinement with unknown poses by exact EM (recipe ``relion-refine``).

The model is the regularised likelihood of Scheres (2012, J. Struct. Biol. 180,
519) with the orientation and shift of every particle as hidden variables, the
noise and the Fourier-voxel prior as in :mod:`cryoviz.inference.class_em`:
per-shell noise ``sigma2(s)`` estimated from the residuals, a Gaussian (MAP /
Wiener) prior per shell from the gold-standard FSC, two half sets refined
independently against their own half maps.

Each iteration is one pass over the images:

* **Coarse pass.** Global iterations score every image against all rotations of
  ``SO3Grid(order)`` times a disc of shifts (:mod:`cryoviz.inference.pose_scoring`);
  local iterations score the 27 neighbours (at the iteration's order) of the
  previous best rotation and shifts around the previous best shift.
* **Adaptive oversampling.** The ``n_oversampled`` most probable coarse
  rotations of each image (marginal over shifts) are replaced by their 8
  children at ``order + 1``, with the shifts at half the step (the whole disc
  in global iterations, a 3 x 3 grid around the best coarse shift in local
  ones); the posterior is normalised over this fine set (RELION's adaptive
  oversampling: coarse points outside it carry little mass when
  ``n_oversampled`` is large enough for the posterior's width).
* **M-step** in the same pass: the ``max_significant`` most probable fine poses
  of each image, with their renormalised posteriors, are backprojected into its
  half set's accumulator; after the pass the half maps and the full map are
  Wiener-filtered with the FSC-derived regulariser
  (:func:`cryoviz.backprojection.gold_standard_maps`).
* **Noise**: ``sigma2(s)`` is the residual power per shell at each image's best
  pose under the previous maps.

The E-step uses Fourier shells up to the current resolution (the half-map
0.143 crossing plus two shells; at the start the initial low-pass), as RELION's
auto-refine. The order increases by one per local iteration up to ``max_order``.

Per-particle posterior summaries (best pose, angular and shift spread, top-k
rotations with their weights) are returned as a
:class:`~cryoviz.inference.posterior.PosePosterior` and written to ``poses.npz``.
"""

from __future__ import annotations

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
from cryoviz.geometry import SO3Grid, geodesic_distance_deg, nearest_grid_index
from cryoviz.imaging import forward_fourier, images_to_fourier, volume_to_fourier
from cryoviz.inference.class_em import e_step_limit_shell
from cryoviz.inference.em_start import (
    assemble_rows,
    fit_map_scale,
    image_batches,
    initial_noise,
    prepare_em_start,
)
from cryoviz.inference.pose_scoring import (
    PixelSet,
    pixel_set,
    score_poses,
    shift_grid,
    shift_phases,
)
from cryoviz.inference.pose_search import (
    refine_candidates,
    significant_poses,
    summarise,
    top_rotations,
)
from cryoviz.inference.refine_result import (
    RefineProgress,
    RefineResult,
    progress_of,
    result_of,
    write_refine,
)
from cryoviz.inference.refine_state import (
    RefineCheckpoint,
    load_refine_state,
    save_refine_state,
)
from cryoviz.io.particles import ParticleSet
from cryoviz.metrics.fsc import FSCCurve
from cryoviz.projection import extract_points

__all__ = ["RefineSettings", "RefineProgress", "RefineResult", "iter_refine", "run_refine",
           "write_refine", "fit_map_scale", "coarse_search"]


@dataclass(frozen=True)
class RefineSettings:
    """Settings of :func:`iter_refine`.

    Attributes
    ----------
    n_iterations
        EM iterations (one pass over the images each).
    global_order
        HEALPix order of the global coarse search (``72 * 8**order`` rotations,
        spacing about ``60 / 2**order`` degrees: order 1 has 576 rotations 30
        degrees apart, order 2 has 4608 at 15 degrees).
    n_global_iterations
        Iterations with a global search; the later ones search locally.
    max_order
        Finest order of the oversampled (fine) grid.
    shift_range_px, shift_step_px
        Disc of shifts (pixels) of the global search and its step.
    n_oversampled
        Coarse rotations per image refined at the next order.
    top_k
        Alternative rotations stored per particle.
    max_significant
        Poses per image backprojected in the M-step.
    initial_lowpass_angstrom
        Low-pass of the starting map (and first E-step limit), Å.
    resolution_limit_angstrom
        Cap on the E-step resolution (Å); ``None``: Nyquist.
    batch_size
        Images per batch.
    seed
        Seed of the half split (when the file has none).
    """

    n_iterations: int = 6
    global_order: int = 1
    n_global_iterations: int = 2
    max_order: int = 4
    shift_range_px: float = 3.0
    shift_step_px: float = 1.0
    n_oversampled: int = 4
    top_k: int = 8
    max_significant: int = 8
    initial_lowpass_angstrom: float | None = 20.0
    resolution_limit_angstrom: float | None = None
    batch_size: int = 64
    seed: int = 0

    def validate(self) -> None:
        """Raise :class:`InputError` for settings that cannot work."""
        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise InputError(None, name, expected, getattr(self, name))

        need(self.n_iterations >= 1, "n_iterations", "at least 1")
        need(0 <= self.global_order <= 4, "global_order", "0 .. 4")
        need(0 <= self.n_global_iterations <= self.n_iterations, "n_global_iterations",
             "0 .. n_iterations")
        need(self.global_order < self.max_order <= 6, "max_order", "global_order < it <= 6")
        need(self.shift_step_px > 0, "shift_step_px", "> 0")
        need(self.shift_range_px >= 0, "shift_range_px", ">= 0")
        need(self.n_oversampled >= 1, "n_oversampled", "at least 1")
        need(self.top_k >= 1, "top_k", "at least 1")
        need(self.max_significant >= 1, "max_significant", "at least 1")
        need(self.batch_size >= 1, "batch_size", "at least 1")
        for name in ("initial_lowpass_angstrom", "resolution_limit_angstrom"):
            value = getattr(self, name)
            need(value is None or value > 0, name, "a positive number of Å or None")

    def coarse_order(self, iteration: int) -> int:
        """Order of the coarse pass of 1-based ``iteration`` (fine pass: one more)."""
        if iteration <= self.n_global_iterations:
            return self.global_order
        return min(self.global_order + iteration - self.n_global_iterations, self.max_order - 1)

    def is_global(self, iteration: int) -> bool:
        """Whether ``iteration`` searches all of SO(3)."""
        return iteration <= self.n_global_iterations


def coarse_search(x: torch.Tensor, ctf: torch.Tensor, w: torch.Tensor,
                  volume_ft: torch.Tensor, pix: PixelSet, settings: RefineSettings,
                  iteration: int, grid_projections: torch.Tensor | None,
                  prev_rot: torch.Tensor | None, prev_shift_px: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Top coarse grid indices ``(B, C)``, fine-shift centre ``(B, 2)`` and shift step.

    The coarse pass of 1-based ``iteration``: ``x``, ``ctf`` ``(B, P)`` and ``w``
    ``(P,)`` at the pixels ``pix``; ``volume_ft`` the padded map transform;
    ``grid_projections`` ``(R, P)`` the map's slices on the whole coarse grid
    (global iterations), ``prev_rot`` ``(B, 3, 3)`` and ``prev_shift_px`` ``(B, 2)``
    the last best poses (local iterations). Global iterations centre the fine
    shifts on 0 (the fine pass scores the whole disc at half the step, so that
    the posterior's shift marginal is complete); local ones on the best coarse
    shift.
    """
    order = settings.coarse_order(iteration)
    grid = SO3Grid(order)
    b = x.shape[0]
    if settings.is_global(iteration):
        shifts = shift_grid(settings.shift_range_px, settings.shift_step_px, x.device)
        scores = score_poses(x, ctf, w, grid_projections, shift_phases(shifts, pix))
        index = torch.arange(grid.size, device=x.device).expand(b, -1)
        shifts = shifts.expand(b, -1, -1)
        step = settings.shift_step_px
    else:
        step = settings.shift_step_px / 2
        centre = nearest_grid_index(grid, prev_rot)
        index = grid.neighbours(centre)  # (B, 27)
        rots = grid.rotations(torch.float64, x.device)[index]
        proj = extract_points(volume_ft, rots.reshape(-1, 3, 3), pix.frequencies)
        shifts = prev_shift_px[:, None] + shift_grid(step * 1.5, step, x.device)
        scores = score_poses(x, ctf, w, proj.reshape(b, index.shape[1], -1),
                             shift_phases(shifts, pix))
    top, best_t = top_rotations(scores, settings.n_oversampled)
    best_shift = shifts[torch.arange(b, device=x.device), best_t]
    if settings.is_global(iteration):  # the fine pass scores the whole disc again
        best_shift = torch.zeros_like(best_shift)
    return index.gather(1, top), best_shift, step


def iter_refine(
    particles: ParticleSet,
    initial_map: torch.Tensor | np.ndarray,
    settings: RefineSettings | None = None,
    device: str | torch.device = "cpu",
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
) -> Iterator[RefineProgress]:
    """Refine a map and the particles' poses by exact EM, yielding per iteration.

    Parameters
    ----------
    particles
        ``N`` particles with CTF parameters (poses, if present, are ignored:
        they are the hidden variables).
    initial_map
        ``(D, D, D)`` starting map; low-passed to
        ``settings.initial_lowpass_angstrom`` and put on the data's scale
        (:func:`fit_map_scale`).
    settings
        :class:`RefineSettings` (defaults when ``None``).
    device
        Torch device.
    checkpoint_dir
        If given, the state after every iteration is written there atomically
        (``refine_state.pt``, :mod:`cryoviz.inference.refine_state`).
    resume
        Continue from the checkpoint in ``checkpoint_dir`` (a fresh start if there is
        none). The settings must match the first run's, except ``n_iterations``;
        the resumed run ends with the result of an unbroken one. Iterations already
        done are not yielded again, except the last when the run had finished.

    Yields
    ------
    RefineProgress
        One per iteration; the last carries the :class:`RefineResult`.
    """
    settings = settings or RefineSettings()
    settings.validate()
    if resume and checkpoint_dir is None:
        raise ValueError("resume needs checkpoint_dir")
    ids = np.asarray(particles.particle_ids, dtype=np.int64)
    saved = load_refine_state(checkpoint_dir, settings, ids) if resume else None
    start_time = time.perf_counter() - (saved.elapsed_seconds if saved else 0.0)
    device = torch.device(device)
    n, box, apix = len(particles), particles.box_size, particles.pixel_size_angstrom
    em = prepare_em_start(particles, initial_map, settings.initial_lowpass_angstrom,
                          settings.resolution_limit_angstrom, settings.seed, device)
    half_maps, halves, full_layout = em.half_maps, em.halves, em.layout
    cap, first_limit, ctf_all = em.cap, em.first_limit, em.ctf

    def batches() -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        return image_batches(particles, settings.batch_size, device)

    summaries: dict[str, torch.Tensor] = {}
    prev_rot: torch.Tensor | None = None
    prev_shift_px: torch.Tensor | None = None
    curve: FSCCurve | None = None
    log_likelihoods: list[float] = []
    if saved is None:
        sigma2 = initial_noise(particles, full_layout, settings.batch_size, device)
    else:
        half_maps, sigma2 = saved.half_maps.to(device), saved.sigma2.to(device)
        curve, summaries = saved.curve, saved.summaries
        log_likelihoods = list(saved.log_likelihoods)
        prev_rot = summaries["rotations"].to(device)
        prev_shift_px = (summaries["shifts_angstrom"] / apix).to(device)
        if saved.iteration == settings.n_iterations:  # a finished run: its result again
            yield progress_of(saved.iteration, settings, box, apix, saved.e_step_limit, curve,
                            log_likelihoods, float("nan"), 0.0, saved.full_map,
                            result_of(saved.full_map, half_maps, curve, summaries, sigma2,
                                    log_likelihoods, particles, apix,
                                    time.perf_counter() - start_time, settings))
            return
    first_iteration = 1 if saved is None else saved.iteration + 1
    for iteration in range(first_iteration, settings.n_iterations + 1):
        t0 = time.perf_counter()
        order = settings.coarse_order(iteration)
        limit = first_limit if curve is None else e_step_limit_shell([curve], full_layout.n_shells,
                                                                      cap, adaptive=True)
        pix = pixel_set(box, limit, device)
        w = pix.inverse_variance(sigma2)
        maps_ft = [volume_to_fourier(m.to(device, torch.float64)) for m in half_maps]
        search_ft = [m.to(torch.complex64) for m in maps_ft]
        grid_proj = None
        if settings.is_global(iteration):
            rots = SO3Grid(order).rotations(torch.float64, device)
            grid_proj = [extract_points(m, rots, pix.frequencies) for m in search_ft]
        accs = [FourierAccumulator(box, device=device) for _ in (0, 1)]
        residual = torch.zeros(full_layout.n_shells, dtype=torch.float64, device=device)
        total_ll = 0.0
        new: dict[str, list[tuple[np.ndarray, torch.Tensor]]] = {}
        for index, images in batches():
            x_full = images_to_fourier(images)
            ctf_b = ctf_all.subset(torch.as_tensor(index))
            ctf_full = compute_ctf_2d(ctf_b, box, apix, rfft=True, dtype=torch.float64,
                                      device=device)
            for h in (0, 1):
                loc = torch.as_tensor(np.flatnonzero(halves[index] == h), device=device)
                if len(loc) == 0:
                    continue
                x, c = pix.take(x_full[loc]), pix.take(ctf_full[loc])
                sel = torch.as_tensor(index, device=device)[loc]
                parents, shift_px, step = coarse_search(
                    x, c, w, search_ft[h], pix, settings, iteration,
                    None if grid_proj is None else grid_proj[h],
                    None if prev_rot is None else prev_rot[sel],
                    None if prev_shift_px is None else prev_shift_px[sel])
                fine = refine_candidates(
                    x, c, w, search_ft[h], pix, order, parents, shift_px, step,
                    shift_range_px=(settings.shift_range_px if settings.is_global(iteration)
                                    else None))
                total_ll += float(fine.evidence.sum())
                summ = summarise(fine, settings.top_k, apix)
                for key, value in summ.items():
                    new.setdefault(key, []).append((index[loc.cpu().numpy()], value.cpu()))
                rows, rots_m, shifts_m, weight_m = significant_poses(fine, settings.max_significant)
                ctf_h = ctf_b.subset(loc.cpu())
                accs[h].add(images[loc], rots_m, apix, shifts_m * apix, ctf_h,
                            particle_weights=weight_m, image_rows=rows)
                model = forward_fourier(maps_ft[h], summ["rotations"].to(device), box, apix,
                                        summ["shifts_angstrom"].to(device), ctf_h)
                residual += full_layout.sums((x_full[loc] - model).abs() ** 2).sum(dim=0)
        summaries = {key: assemble_rows(parts, n) for key, parts in new.items()}
        change = float("nan")
        if prev_rot is not None:
            change = float(torch.median(geodesic_distance_deg(prev_rot.cpu(),
                                                              summaries["rotations"])))
        prev_rot = summaries["rotations"].to(device)
        prev_shift_px = (summaries["shifts_angstrom"] / apix).to(device)
        sigma2 = residual / (2.0 * n * full_layout.count.clamp(min=1e-30))
        sigma2[0] = sigma2[1]
        full_map, half_maps, curve = gold_standard_maps(accs)
        half_maps = half_maps.to(torch.float64)
        log_likelihoods.append(total_ll)
        if checkpoint_dir is not None:
            save_refine_state(checkpoint_dir, RefineCheckpoint(
                iteration=iteration, full_map=full_map.cpu(), half_maps=half_maps.cpu(),
                sigma2=sigma2.cpu(), curve=curve, summaries=summaries,
                log_likelihoods=tuple(log_likelihoods),
                elapsed_seconds=time.perf_counter() - start_time, e_step_limit=limit),
                settings, ids)
        result = None
        if iteration == settings.n_iterations:
            result = result_of(full_map, half_maps, curve, summaries, sigma2, log_likelihoods,
                             particles, apix, time.perf_counter() - start_time, settings)
        yield progress_of(iteration, settings, box, apix, limit, curve, log_likelihoods, change,
                        time.perf_counter() - t0, full_map, result)


def run_refine(particles: ParticleSet, initial_map, **kwargs) -> RefineResult:
    """Run :func:`iter_refine` to the end and return its result."""
    return deque(iter_refine(particles, initial_map, **kwargs), maxlen=1)[0].result
