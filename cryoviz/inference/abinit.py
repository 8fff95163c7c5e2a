"""Ab initio map by stochastic modal EM (cryoSPARC / cryoDRGN2-style), poses unknown.

Nothing about the particles' map or poses is given. The first map is the
backprojection of a few hundred images at uniformly random rotations (a blob
of the particles' size and scale). Then, minibatch by minibatch, on images
Fourier-cropped to a working box:

1. **search** -- every image is scored against all rotations of
   ``SO3Grid(global_order)`` times a disc of shifts (shared projections, one
   matrix product), then a beam search descends ``n_levels`` finer orders
   around its ``n_keep`` best rotations (:func:`~cryoviz.inference.pose_search.refine_candidates`);
2. **update** -- its ``max_significant`` most probable poses are backprojected
   into running sums ``sum CTF X`` / ``sum CTF^2`` kept per gold-standard half
   and decayed by ``1 - batch / memory_images`` per step (stochastic EM: an
   exponentially weighted average over the last ``memory_images`` images);
   the map is their Wiener-filtered reconstruction, low-passed to the current
   limit and softly masked;
3. **frequency marching** -- the search and the map's low-pass limit rise from
   ``initial_resolution_angstrom`` to ``final_resolution_angstrom`` over the
   first ``marching_fraction`` of the steps.

The per-shell noise variance starts from the images' power and follows the
residuals at the best poses with the same decay. The result is the initial
model for a full-box refinement (:mod:`cryoviz.inference.refine`); the hand is
not determined (a mirrored map is an equally good solution).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cryoviz.backprojection import FourierAccumulator, gold_standard_maps
from cryoviz.ctf import compute_ctf_2d
from cryoviz.errors import InputError
from cryoviz.fourier import (
    centered_fft3,
    centered_ifft3,
    lowpass_volume,
    pad_center,
)
from cryoviz.geometry import SO3Grid, random_rotations
from cryoviz.imaging import forward_fourier, images_to_fourier, volume_to_fourier
from cryoviz.inference.abinit_result import AbinitProgress, AbinitResult
from cryoviz.inference.abinit_state import (
    AbinitCheckpoint,
    BestStart,
    PausedStart,
    Schedule,
    StartState,
    abinit_finished,
    keep_best,
    load_abinit_state,
    save_abinit_state,
    top_starts,
)
from cryoviz.inference.pose_scoring import (
    normalise_scores,
    pixel_set,
    score_poses,
    shift_grid,
    shift_phases,
)
from cryoviz.inference.pose_search import (
    PoseCandidates,
    refine_candidates,
    significant_poses,
    summarise,
    top_rotations,
)
from cryoviz.io.particles import ImageSource, ParticleSet
from cryoviz.metrics.fsc import soft_spherical_mask
from cryoviz.noise import half_plane_shells
from cryoviz.projection import extract_points
from cryoviz.reconstruct import half_sets
from cryoviz.train.data import fourier_downsample

__all__ = ["AbinitSettings", "AbinitProgress", "AbinitResult", "iter_abinit", "run_abinit",
           "upsample_map"]


@dataclass(frozen=True)
class AbinitSettings:
    """Settings of :func:`iter_abinit`.

    Attributes
    ----------
    n_steps
        Minibatch steps.
    batch_size
        Images per step.
    box_size
        Working box (Fourier crop of the images); ``None``: the particles' box.
    initial_resolution_angstrom, final_resolution_angstrom
        Resolution limit (Å) of the search and the map at the first step and
        after ``marching_fraction`` of the steps (linear in spatial frequency),
        capped at the working box's Nyquist.
    marching_fraction
        Fraction of the steps over which the limit rises.
    memory_images
        Images the running sums remember (their decay per step is
        ``1 - batch_size / memory_images``).
    initial_images
        Images backprojected at random rotations for the first map.
    global_order
        HEALPix order of the exhaustive search (576 rotations at order 1).
    n_levels, n_keep
        Finer orders descended by the beam search and rotations kept per level.
    max_significant
        Poses per image backprojected (weighted by their posterior).
    shift_range_px, shift_step_px
        Disc of shifts of the exhaustive search and its step, in pixels of the
        working box.
    mask_radius_fraction
        Radius of the soft spherical mask, as a fraction of the box.
    n_starts
        Independent random starts run to the end; the one whose map explains a
        common set of images best (mean log evidence over the searched poses)
        is kept. Stochastic EM can settle in a wrong model; a few starts make
        that unlikely.
    screen_starts, screen_steps
        Screening (``screen_starts`` 0: none). ``screen_starts`` random starts
        (more than ``n_starts``) run their first ``screen_steps`` steps each and
        are scored as finished starts are; the ``n_starts`` of largest evidence
        go on from where they stopped to ``n_steps``, and the best of those at
        the end is kept. Each screened start is the same run a start of that
        index would be without screening, so screening costs
        ``screen_starts * screen_steps + n_starts * (n_steps - screen_steps)``
        steps and tries ``screen_starts`` starting points.
    initial_noise_factor
        Annealing: the search's noise variance is multiplied by this at the first
        step, falling geometrically to 1 with the frequency marching (a flatter
        posterior while the map is still wrong).
    seed
        Seed of the image order, the random start and the half split.
    """

    n_steps: int = 150
    batch_size: int = 200
    box_size: int | None = 32
    initial_resolution_angstrom: float = 35.0
    final_resolution_angstrom: float = 12.0
    marching_fraction: float = 0.7
    memory_images: int = 3000
    initial_images: int = 400
    global_order: int = 1
    n_levels: int = 2
    n_keep: int = 8
    max_significant: int = 4
    shift_range_px: float = 2.0
    shift_step_px: float = 1.0
    mask_radius_fraction: float = 0.42
    n_starts: int = 3
    screen_starts: int = 0
    screen_steps: int = 75
    initial_noise_factor: float = 1.0
    seed: int = 0

    def validate(self, box: int) -> None:
        """Raise :class:`InputError` for settings that cannot work on ``box`` px images."""
        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise InputError(None, name, expected, getattr(self, name))

        need(self.n_steps >= 1, "n_steps", "at least 1")
        need(self.batch_size >= 1, "batch_size", "at least 1")
        need(self.box_size is None or (8 <= self.box_size <= box and self.box_size % 2 == 0),
             "box_size", f"an even box from 8 to {box} (the particles') or None")
        need(self.initial_resolution_angstrom >= self.final_resolution_angstrom > 0,
             "initial_resolution_angstrom", "at least final_resolution_angstrom (> 0)")
        need(0 < self.marching_fraction <= 1, "marching_fraction", "in (0, 1]")
        need(self.memory_images >= self.batch_size, "memory_images", "at least batch_size")
        need(self.initial_images >= 1, "initial_images", "at least 1")
        need(0 <= self.global_order <= 2, "global_order", "0 .. 2")
        need(0 <= self.n_levels <= 3, "n_levels", "0 .. 3")
        need(self.n_keep >= 1, "n_keep", "at least 1")
        need(self.max_significant >= 1, "max_significant", "at least 1")
        need(self.shift_range_px >= 0, "shift_range_px", ">= 0")
        need(self.shift_step_px > 0, "shift_step_px", "> 0")
        need(0 < self.mask_radius_fraction <= 0.5, "mask_radius_fraction", "in (0, 0.5]")
        need(self.n_starts >= 1, "n_starts", "at least 1")
        need(self.screen_starts == 0 or self.screen_starts > self.n_starts, "screen_starts",
             f"0 (no screening) or more than n_starts ({self.n_starts})")
        need(self.screen_starts == 0 or 1 <= self.screen_steps < self.n_steps, "screen_steps",
             f"from 1 to n_steps - 1 ({self.n_steps - 1}) when screening")
        need(self.initial_noise_factor >= 1, "initial_noise_factor", "at least 1")

    def progress(self, step: int) -> float:
        """Fraction (0 .. 1) of the marching done at 1-based ``step``."""
        return min(1.0, (step - 1) / max(1.0, self.marching_fraction * self.n_steps - 1))

    def resolution_angstrom(self, step: int) -> float:
        """Limit (Å) at 1-based ``step`` before the Nyquist cap."""
        t = self.progress(step)
        f0, f1 = 1 / self.initial_resolution_angstrom, 1 / self.final_resolution_angstrom
        return 1 / (f0 + t * (f1 - f0))

    def noise_factor(self, step: int) -> float:
        """Annealing factor of the noise variance at 1-based ``step``."""
        return self.initial_noise_factor ** (1.0 - self.progress(step))


def upsample_map(volume: torch.Tensor, box_size: int) -> torch.Tensor:
    """Fourier-pad a real ``(d, d, d)`` map to ``(D, D, D)`` (voxel values kept)."""
    small = int(volume.shape[-1])
    if box_size == small:
        return volume.clone()
    ft = centered_fft3(volume.to(torch.float64))
    ft = pad_center(ft, box_size, ndim=3) * (box_size / small) ** 3
    return centered_ifft3(ft).real.to(volume.dtype)


@dataclass
class _Context:
    """What every start shares: the data, the working box and the search grids."""

    particles: ParticleSet
    source: ImageSource
    settings: AbinitSettings
    device: torch.device
    box: int
    apix: float
    halves: torch.Tensor
    grid_rots: torch.Tensor
    shifts: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def build(cls, particles: ParticleSet, source: ImageSource, settings: AbinitSettings,
              device: torch.device, box: int, apix: float) -> _Context:
        """The context of a run on a ``box``-pixel working box of voxel ``apix`` Å."""
        return cls(particles=particles, source=source, settings=settings, device=device,
                   box=box, apix=apix,
                   halves=torch.as_tensor(half_sets(particles, settings.seed), device=device),
                   grid_rots=SO3Grid(settings.global_order).rotations(torch.float64, device),
                   shifts=shift_grid(settings.shift_range_px, settings.shift_step_px, device),
                   mask=soft_spherical_mask(box, settings.mask_radius_fraction * box,
                                            dtype=torch.float64, device=device))

    def read(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, object]:
        """Working-box images ``(B, d, d)``, their transforms and CTF parameters."""
        images = self.source.images(index).to(self.device, torch.float64)
        images = fourier_downsample(images, self.box)
        return images, images_to_fourier(images), self.particles.ctf.subset(
            torch.as_tensor(index)).to(self.device)

    def search(self, volume_ft: torch.Tensor, x_full: torch.Tensor, ctf, sigma2: torch.Tensor,
               limit: int) -> PoseCandidates:
        """Exhaustive search on the global grid, then the beam search below it.

        ``volume_ft`` is the map's padded transform (:func:`volume_to_fourier`).
        """
        settings, b = self.settings, x_full.shape[0]
        pix = pixel_set(self.box, limit, self.device)
        w = pix.inverse_variance(sigma2)
        ctf_full = compute_ctf_2d(ctf, self.box, self.apix, rfft=True, dtype=torch.float64,
                                  device=self.device)
        x, c = pix.take(x_full), pix.take(ctf_full)
        volume_ft = volume_ft.to(torch.complex64)
        grid_proj = extract_points(volume_ft, self.grid_rots, pix.frequencies)
        scores = score_poses(x, c, w, grid_proj, shift_phases(self.shifts, pix))
        if settings.n_levels == 0:
            gamma, evidence = normalise_scores(scores)
            return PoseCandidates(rotations=self.grid_rots.expand(b, -1, -1, -1),
                                  shifts_px=self.shifts.expand(b, -1, -1), gamma=gamma,
                                  evidence=evidence, order=settings.global_order)
        top, best_t = top_rotations(scores, settings.n_keep)
        return refine_candidates(x, c, w, volume_ft, pix, settings.global_order, top,
                                 self.shifts[best_t], settings.shift_step_px,
                                 n_levels=settings.n_levels, n_keep=settings.n_keep)


def _random_start(ctx: _Context, rng: np.random.Generator, generator: torch.Generator,
                  layout) -> StartState:
    """Images backprojected at random rotations; their power as the first noise."""
    settings, n = ctx.settings, len(ctx.particles)
    first = np.sort(rng.permutation(n)[:min(n, settings.initial_images)])
    images, ft, ctf = ctx.read(first)
    accs = [FourierAccumulator(ctx.box, device=ctx.device) for _ in (0, 1)]
    random_rot = random_rotations(len(first), generator=generator).to(ctx.device)
    for h in (0, 1):
        loc = torch.as_tensor(np.flatnonzero(ctx.halves[first].cpu().numpy() == h),
                              device=ctx.device)
        accs[h].add(images[loc], random_rot[loc], ctx.apix, ctf=ctf.subset(loc.cpu()))
    sigma2 = layout.sums(ft.real**2 + ft.imag**2).sum(dim=0) / (
        2.0 * len(first) * layout.count.clamp(min=1e-30))
    sigma2[0] = sigma2[1]
    full, _, curve = gold_standard_maps(accs)
    volume = lowpass_volume(full.to(torch.float64), settings.initial_resolution_angstrom,
                            ctx.apix) * ctx.mask
    return StartState(accs=accs, sigma2=sigma2, volume=volume, curve=curve,
                       rotations=np.tile(np.eye(3), (n, 1, 1)), shifts_angstrom=np.zeros((n, 2)),
                       seen=np.zeros(n, dtype=bool))


def _step(ctx: _Context, state: StartState, index: np.ndarray, step: int, layout
          ) -> tuple[float, float]:
    """One minibatch: search, backproject, update noise and map. Returns (limit Å, evidence)."""
    settings, box, apix = ctx.settings, ctx.box, ctx.apix
    resolution = max(settings.resolution_angstrom(step), 2.0 * apix)
    limit = max(1, min(box // 2, int(box * apix / resolution)))
    images, x_full, ctf = ctx.read(index)
    volume_ft = volume_to_fourier(state.volume)
    fine = ctx.search(volume_ft, x_full, ctf, state.sigma2 * settings.noise_factor(step), limit)
    summ = summarise(fine, 1, apix)
    rows, rots_m, shifts_m, weight_m = significant_poses(fine, settings.max_significant)
    half_of_row = ctx.halves[torch.as_tensor(index, device=ctx.device)][rows]
    decay = 1.0 - settings.batch_size / settings.memory_images
    for h, acc in enumerate(state.accs):
        acc.data.mul_(decay)
        acc.weight.mul_(decay)
        keep = half_of_row == h
        acc.add(images, rots_m[keep], apix, shifts_m[keep] * apix, ctf,
                particle_weights=weight_m[keep], max_frequency=(limit + 2) / box,
                image_rows=rows[keep])
    model = forward_fourier(volume_ft, summ["rotations"], box, apix,
                            summ["shifts_angstrom"], ctf)
    residual = layout.sums((x_full - model).abs() ** 2).sum(dim=0) / (
        2.0 * len(index) * layout.count.clamp(min=1e-30))
    residual[0] = residual[1]
    state.sigma2 = decay * state.sigma2 + (1 - decay) * residual
    full, _, state.curve = gold_standard_maps(state.accs)
    state.volume = lowpass_volume(full.to(torch.float64), resolution, apix) * ctx.mask
    state.rotations[index] = summ["rotations"].cpu().numpy()
    state.shifts_angstrom[index] = summ["shifts_angstrom"].cpu().numpy()
    state.seen[index] = True
    return box * apix / limit, float(fine.evidence.mean())


def iter_abinit(particles: ParticleSet, settings: AbinitSettings | None = None,
                device: str | torch.device = "cpu", checkpoint_dir: str | Path | None = None,
                resume: bool = False, checkpoint_interval_s: float = 30.0
                ) -> Iterator[AbinitProgress]:
    """Build a map from nothing by stochastic modal EM, yielding per minibatch step.

    Parameters
    ----------
    particles
        ``N`` particles with CTF parameters (their poses, if any, are ignored).
    settings
        :class:`AbinitSettings` (defaults when ``None``).
    device
        Torch device.
    checkpoint_dir
        Folder for ``abinit_state.pt`` (:mod:`cryoviz.inference.abinit_state`),
        written atomically after a step when ``checkpoint_interval_s`` have
        passed since the last one, and at the end of every run (a screened
        start's screen included); ``None``: none.
    resume
        Continue from the checkpoint in ``checkpoint_dir`` (a fresh start if there
        is none): the remaining steps are the unbroken run's, with the same result.
        A finished run yields its last step again (``step_seconds`` 0).
    checkpoint_interval_s
        Least wall time between two checkpoints within a start (0: every step).

    Yields
    ------
    AbinitProgress
        One per step of every run (see :class:`AbinitProgress` for screening);
        the last carries the :class:`AbinitResult` of the start kept.
    """
    settings = settings or AbinitSettings()
    if particles.ctf is None:
        raise InputError(particles.source_path, "ctf", "CTF parameters for every particle",
                         "none")
    if resume and checkpoint_dir is None:
        raise ValueError("resume needs checkpoint_dir")
    full_box, full_apix = particles.box_size, particles.pixel_size_angstrom
    settings.validate(full_box)
    device = torch.device(device)
    ids = np.asarray(particles.particle_ids, dtype=np.int64)
    saved = load_abinit_state(checkpoint_dir, settings, ids) if resume else None
    start_time = time.perf_counter() - (saved.elapsed_seconds if saved else 0.0)
    n = len(particles)
    box = settings.box_size or full_box
    apix = full_apix * full_box / box
    layout = half_plane_shells(box, device=device)
    final_limit = max(1, min(box // 2, int(box * apix / max(
        settings.final_resolution_angstrom, 2.0 * apix))))
    common = np.sort(np.random.default_rng(settings.seed + 7919).permutation(n)[
        :min(n, settings.initial_images)])

    best = saved.best if saved else None
    evidences = list(saved.evidences) if saved else []
    screen_evidences = list(saved.screen_evidences) if saved else []
    paused = list(saved.paused) if saved else []
    screening = settings.screen_starts > 0
    n_screened = settings.screen_starts if screening else 0

    def finished_starts() -> tuple[int, ...]:
        if not screening:
            return tuple(range(len(evidences)))
        return top_starts(dict(enumerate(screen_evidences)), settings.n_starts)

    def result_of() -> AbinitResult:
        working = best.volume.to(torch.float32).cpu()
        return AbinitResult(
            map=upsample_map(working, full_box), working_map=working, half_fsc=best.curve,
            rotations=best.rotations, shifts_angstrom=best.shifts_angstrom, seen=best.seen,
            pixel_size_angstrom=full_apix, working_pixel_size_angstrom=apix,
            start_evidences=tuple(evidences), finished_starts=finished_starts(),
            chosen_start=best.index, screen_evidences=tuple(screen_evidences),
            seconds=time.perf_counter() - start_time, settings=settings)

    if abinit_finished(saved, settings):
        yield AbinitProgress(start=n_screened + len(evidences) - 1, step=saved.step,
                             n_steps=settings.n_steps, seed_start=saved.start, screening=False,
                             **saved.last_progress, images_per_second=0.0, step_seconds=0.0,
                             elapsed_seconds=saved.elapsed_seconds, result=result_of())
        return
    with ImageSource(particles) as source:
        ctx = _Context.build(particles, source, settings, device, box, apix)

        def fresh(start: int) -> tuple:
            seed = settings.seed + 1000 * start
            rng = np.random.default_rng(seed)
            state = _random_start(ctx, rng, torch.Generator().manual_seed(seed), layout)
            return start, state, Schedule(n, settings.batch_size, rng), state.sigma2.clone(), 1

        def runs() -> Iterator[tuple]:
            """(start, state, schedule, first noise, first step) of each run still to go."""
            run_end = settings.screen_steps if saved and saved.screening else settings.n_steps
            if saved is not None and saved.step < run_end:
                yield (saved.start, StartState.from_payload(saved.current, box, device),
                       Schedule.restore(n, settings.batch_size, saved.schedule),
                       saved.noise0.to(device), saved.step + 1)
            if not screening:
                yield from (fresh(c) for c in range(saved.start + 1 if saved else 0,
                                                    settings.n_starts))
                return
            after = 0 if saved is None else (saved.start + 1 if saved.screening else n_screened)
            yield from (fresh(c) for c in range(after, n_screened))
            while paused:
                kept = paused.pop(0)
                yield (kept.start, StartState.from_payload(kept.current, box, device),
                       Schedule.restore(n, settings.batch_size, kept.schedule),
                       kept.noise0.to(device), settings.screen_steps + 1)

        def score(state: StartState, noise0: torch.Tensor) -> float:
            """Every start's map scored on the same images with its first noise."""
            _, x_common, ctf_common = ctx.read(common)
            return float(ctx.search(volume_to_fourier(state.volume), x_common, ctf_common,
                                    noise0, final_limit).evidence.mean())

        last_save = time.perf_counter()
        for start, state, schedule, noise0, first_step in runs():
            screened = first_step <= settings.screen_steps and screening
            run_end = settings.screen_steps if screened else settings.n_steps
            run = start if screened else n_screened + len(evidences)
            for step in range(first_step, run_end + 1):
                t0 = time.perf_counter()
                index = schedule.next_batch()
                limit_angstrom, evidence = _step(ctx, state, index, step, layout)
                if step == run_end and screened:
                    screen_evidences.append(score(state, noise0))
                    paused[:] = keep_best(paused + [PausedStart(
                        start=start, evidence=screen_evidences[-1], schedule=schedule.state(),
                        current=state.to_payload(), noise0=noise0)], settings.n_starts)
                elif step == run_end:
                    evidences.append(score(state, noise0))
                    if best is None or evidences[-1] > max(evidences[:-1]):
                        best = BestStart.of(start, state)
                now = time.perf_counter()
                figures = {"resolution_angstrom": limit_angstrom,
                           "half_map_resolution_angstrom":
                               state.curve.resolution_angstrom(apix, 0.143),
                           "log_likelihood": evidence}
                if checkpoint_dir is not None and (step == run_end or
                                                   now - last_save >= checkpoint_interval_s):
                    save_abinit_state(checkpoint_dir, AbinitCheckpoint(
                        start=start, step=step, screening=screened, schedule=schedule.state(),
                        current=state.to_payload(), noise0=noise0, best=best,
                        evidences=tuple(evidences), screen_evidences=tuple(screen_evidences),
                        paused=tuple(paused), last_progress=figures,
                        elapsed_seconds=now - start_time), settings, ids)
                    last_save = time.perf_counter()
                last = not screened and step == settings.n_steps and (
                    not paused if screening else start == settings.n_starts - 1)
                yield AbinitProgress(
                    start=run, step=step, n_steps=run_end, seed_start=start, screening=screened,
                    **figures, images_per_second=len(index) / (now - t0), step_seconds=now - t0,
                    elapsed_seconds=now - start_time, result=result_of() if last else None)


def run_abinit(particles: ParticleSet, **kwargs) -> AbinitResult:
    """Run :func:`iter_abinit` to the end and return its result."""
    result = None
    for state in iter_abinit(particles, **kwargs):
        result = state.result if state.result is not None else result
    return result
