"""3-D classification with unknown poses by exact EM (``relion-class3d`` from a starting map).

Each particle's hidden variables are its class ``k`` and its pose. For every
class the pose posterior is found as in :mod:`cryoviz.inference.refine` (a
global or local coarse pass, then adaptive oversampling at the next HEALPix
order) against that class's half map, which gives the class's log evidence
``log p(X_i | k)`` (the log-sum over the fine poses; the fine sets have the same
size for every class, so their uniform prior cancels). The class posterior is

    gamma_ik = softmax_k(log p(X_i | k) + log pi_k),

and the M-step backprojects each particle into every class ``k`` at that class's
significant poses, weighted by ``gamma_ik`` times the pose weights (weights
below 1e-4 are skipped), into the class's two gold-standard half sets; each
class map is Wiener-filtered with its own half-map FSC
(:func:`cryoviz.backprojection.gold_standard_maps`). ``pi_k = mean_i gamma_ik``;
the noise ``sigma2(s)`` is the residual power at each image's best pose in its
most probable class. The E-step uses shells up to the worst class's half-map
0.143 crossing plus two (at the start: the initial low-pass).

Initialisation (RELION's Class3D from one reference): every class starts from
the same low-passed map, and the first iteration's M-step assigns each
particle to one class at random (seeded; equal-sized classes), with the poses
found against the common map. These random-subset maps are low-passed to
``initial_lowpass_angstrom`` again (RELION's ``ini_high``: a subset's map
holds its particles' own noise, which would pull them back into their random
class), and the second E-step keeps the first one's limit. The class maps then
differ and the later iterations assign particles by their evidence.

Cost: ``K`` times a refinement's pose search per iteration.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from cryoviz.backprojection import FourierAccumulator, gold_standard_maps
from cryoviz.ctf import compute_ctf_2d
from cryoviz.errors import InputError
from cryoviz.fourier import lowpass_volume
from cryoviz.geometry import SO3Grid
from cryoviz.imaging import forward_fourier, images_to_fourier, volume_to_fourier
from cryoviz.inference.class_em import e_step_limit_shell
from cryoviz.inference.class_em_result import ClassEMResult, write_class_em
from cryoviz.inference.class_refine_state import (
    ClassRefineCheckpoint,
    load_class_refine_state,
    save_class_refine_state,
)
from cryoviz.inference.em_start import (
    assemble_rows,
    image_batches,
    initial_noise,
    prepare_em_start,
)
from cryoviz.inference.pose_scoring import pixel_set
from cryoviz.inference.pose_search import refine_candidates, significant_poses, summarise
from cryoviz.inference.posterior import PosePosterior, export_poses
from cryoviz.inference.refine import RefineSettings, coarse_search
from cryoviz.io.particles import ParticleSet
from cryoviz.metrics.fsc import FSCCurve
from cryoviz.projection import extract_points

__all__ = ["ClassRefineResult", "ClassRefineProgress", "iter_class_refine", "run_class_refine",
           "write_class_refine"]

_MIN_WEIGHT = 1e-4  # class x pose weights below this are not backprojected


@dataclass(frozen=True)
class ClassRefineResult:
    """Classes and poses at the end of :func:`iter_class_refine`.

    Attributes
    ----------
    classes
        Class maps, half maps, posteriors ``(N, K)``, fractions, noise and FSCs
        (written by :func:`cryoviz.inference.class_em_result.write_class_em`).
    posterior
        Pose summaries of every particle in its most probable class.
    settings
        The pose-search settings.
    """

    classes: ClassEMResult
    posterior: PosePosterior
    settings: RefineSettings


@dataclass(frozen=True)
class ClassRefineProgress:
    """State after one iteration of :func:`iter_class_refine`.

    Attributes
    ----------
    iteration, n_iterations
        1-based iteration and total.
    global_search
        Whether the iteration searched all of SO(3).
    e_step_resolution_angstrom
        Resolution limit of the iteration's E-step, Å.
    log_likelihood
        ``sum_i logsumexp_k(log p(X_i | k) + log pi_k)`` of the E-step.
    class_fractions
        ``K`` class priors after the M-step.
    changed_fraction
        Fraction of particles whose most probable class changed since the
        previous iteration (at the first: 0 from one map, whose classes are the
        random ones; 1.0 from ``initial_maps``).
    resolution_angstrom
        ``K`` half-map 0.143 resolutions, Å.
    seconds
        Wall time of the iteration.
    result
        The :class:`ClassRefineResult` on the last iteration, else ``None``.
    """

    iteration: int
    n_iterations: int
    global_search: bool
    e_step_resolution_angstrom: float
    log_likelihood: float
    class_fractions: tuple[float, ...]
    changed_fraction: float
    resolution_angstrom: tuple[float, ...]
    seconds: float
    result: ClassRefineResult | None = None


def iter_class_refine(particles: ParticleSet, initial_map: torch.Tensor | np.ndarray | None,
                      n_classes: int, settings: RefineSettings | None = None,
                      device: str | torch.device = "cpu",
                      initial_maps: torch.Tensor | np.ndarray | None = None,
                      checkpoint_dir: str | Path | None = None, resume: bool = False
                      ) -> Iterator[ClassRefineProgress]:
    """Classify particles into ``n_classes`` maps with their poses unknown, per iteration.

    Parameters
    ----------
    particles
        ``N`` particles with CTF parameters (poses, if present, are ignored).
    initial_map
        ``(D, D, D)`` starting map for every class (low-passed to
        ``settings.initial_lowpass_angstrom`` and put on the data's scale), or
        ``None`` with ``initial_maps``.
    n_classes
        ``K``.
    settings
        :class:`~cryoviz.inference.refine.RefineSettings` of the pose search
        (iterations, orders, shifts, oversampling, E-step limits, batch, seed).
    device
        Torch device.
    initial_maps
        ``(K, D, D, D)``: one starting map per class instead (each low-passed and
        scaled); the first M-step then uses the E-step's class posteriors, not
        random classes.
    checkpoint_dir
        If given, the state after every iteration is written there atomically
        (``class_refine_state.pt``, :mod:`cryoviz.inference.class_refine_state`).
    resume
        Continue from the checkpoint in ``checkpoint_dir`` (a fresh start if there
        is none); only ``n_iterations`` may differ from the first run's settings.
        A finished run yields its last iteration again (``seconds`` 0).

    Yields
    ------
    ClassRefineProgress
        One per iteration; the last carries the :class:`ClassRefineResult`.
    """
    settings = settings or RefineSettings()
    settings.validate()
    n = len(particles)
    if not 1 <= int(n_classes) <= max(1, n):
        raise InputError(None, "n_classes", f"1 .. {n} (the number of particles)", n_classes)
    k_classes = int(n_classes)
    device = torch.device(device)
    start_time = time.perf_counter()
    box, apix = particles.box_size, particles.pixel_size_angstrom
    if (initial_map is None) == (initial_maps is None):
        raise InputError(None, "initial_map / initial_maps", "exactly one of them",
                         got="both" if initial_map is not None else "neither")
    starts = ([initial_map] * k_classes if initial_maps is None
              else [initial_maps[k] for k in range(len(initial_maps))])
    if len(starts) != k_classes:
        raise InputError(None, "initial_maps", f"{k_classes} maps (n_classes)",
                         got=f"{len(starts)} maps")
    ems = [prepare_em_start(particles, m, settings.initial_lowpass_angstrom,
                            settings.resolution_limit_angstrom, settings.seed, device)
           for m in (starts[:1] if initial_maps is None else starts)]
    em = ems[0]
    layout, halves = em.layout, em.halves
    half_maps = [ems[min(k, len(ems) - 1)].half_maps.clone() for k in range(k_classes)]
    random_start = initial_maps is None and k_classes > 1
    if resume and checkpoint_dir is None:
        raise ValueError("resume needs checkpoint_dir")
    ids = np.asarray(particles.particle_ids, dtype=np.int64)
    saved = (load_class_refine_state(checkpoint_dir, settings, k_classes, random_start, ids)
             if resume else None)
    rng = np.random.default_rng(settings.seed)
    initial_class = rng.permutation(n) % k_classes
    previous_best = initial_class.copy() if random_start else None
    fractions = torch.full((k_classes,), 1.0 / k_classes, dtype=torch.float64)
    prev_rot: list[torch.Tensor | None] = [None] * k_classes
    prev_shift_px: list[torch.Tensor | None] = [None] * k_classes
    curves: list[FSCCurve] | None = None
    log_likelihoods: list[float] = []
    if saved is None:
        sigma2 = initial_noise(particles, layout, settings.batch_size, device)
    else:
        start_time -= saved.elapsed_seconds
        half_maps = [m.to(device) for m in saved.half_maps]
        sigma2, fractions = saved.sigma2.to(device), saved.fractions.clone()
        curves = list(saved.curves) if saved.limit_from_curves else None
        log_likelihoods = list(saved.log_likelihoods)
        previous_best = saved.posteriors.argmax(dim=1).numpy()
        for k, summaries_k in enumerate(saved.per_class):
            prev_rot[k] = summaries_k["rotations"].to(device)
            prev_shift_px[k] = (summaries_k["shifts_angstrom"] / apix).to(device)
        if saved.iteration == settings.n_iterations:  # a finished run: its result again
            yield ClassRefineProgress(
                iteration=saved.iteration, n_iterations=settings.n_iterations,
                global_search=settings.is_global(saved.iteration),
                e_step_resolution_angstrom=box * apix / saved.e_step_limit,
                log_likelihood=log_likelihoods[-1],
                class_fractions=tuple(float(f) for f in fractions), changed_fraction=0.0,
                resolution_angstrom=tuple(c.resolution_angstrom(apix, 0.143)
                                          for c in saved.curves),
                seconds=0.0, result=_result(
                    saved.full_maps, half_maps, list(saved.curves), saved.posteriors,
                    fractions, sigma2, log_likelihoods, list(saved.per_class),
                    previous_best, particles, settings, random_start,
                    time.perf_counter() - start_time))
            return
    first_iteration = 1 if saved is None else saved.iteration + 1
    for iteration in range(first_iteration, settings.n_iterations + 1):
        t0 = time.perf_counter()
        order = settings.coarse_order(iteration)
        limit = (em.first_limit if curves is None
                 else e_step_limit_shell(curves, layout.n_shells, em.cap, adaptive=True))
        pix = pixel_set(box, limit, device)
        w = pix.inverse_variance(sigma2)
        maps_ft = [[volume_to_fourier(m.to(device, torch.float64)) for m in hm]
                   for hm in half_maps]
        search_ft = [[m.to(torch.complex64) for m in per_class] for per_class in maps_ft]
        grid_proj = None
        if settings.is_global(iteration):
            rots = SO3Grid(order).rotations(torch.float64, device)
            grid_proj = [[extract_points(m, rots, pix.frequencies) for m in per_class]
                         for per_class in search_ft]
        accs = [[FourierAccumulator(box, device=device) for _ in (0, 1)]
                for _ in range(k_classes)]
        residual = torch.zeros(layout.n_shells, dtype=torch.float64, device=device)
        posteriors = torch.zeros((n, k_classes), dtype=torch.float64)
        summaries: list[dict[str, list]] = [{} for _ in range(k_classes)]
        total_ll = 0.0
        log_pi = torch.log(fractions.clamp(min=1e-12)).to(device)
        for index, images in image_batches(particles, settings.batch_size, device):
            x_full = images_to_fourier(images)
            ctf_b = em.ctf.subset(torch.as_tensor(index))
            ctf_full = compute_ctf_2d(ctf_b, box, apix, rfft=True, dtype=torch.float64,
                                      device=device)
            for h in (0, 1):
                loc = torch.as_tensor(np.flatnonzero(halves[index] == h), device=device)
                if len(loc) == 0:
                    continue
                rows_np = index[loc.cpu().numpy()]
                x, c = pix.take(x_full[loc]), pix.take(ctf_full[loc])
                sel = torch.as_tensor(rows_np, device=device)
                fines = []
                # random start, first iteration: every class has the same map, so one
                # search serves them all
                searched = 1 if (iteration == 1 and random_start) else k_classes
                for k in range(searched):
                    parents, shift_px, step = coarse_search(
                        x, c, w, search_ft[k][h], pix, settings, iteration,
                        None if grid_proj is None else grid_proj[k][h],
                        None if prev_rot[k] is None else prev_rot[k][sel],
                        None if prev_shift_px[k] is None else prev_shift_px[k][sel])
                    fines.append(refine_candidates(
                        x, c, w, search_ft[k][h], pix, order, parents, shift_px, step,
                        shift_range_px=(settings.shift_range_px
                                        if settings.is_global(iteration) else None)))
                fines += fines[:1] * (k_classes - searched)
                logits = torch.stack([f.evidence for f in fines], dim=1) + log_pi
                total_ll += float(torch.logsumexp(logits, dim=1).sum())
                if iteration == 1 and random_start:  # random classes break the symmetry
                    gamma = torch.nn.functional.one_hot(
                        torch.as_tensor(initial_class[rows_np], device=device),
                        k_classes).to(torch.float64)
                else:
                    gamma = torch.softmax(logits, dim=1)
                posteriors[torch.as_tensor(rows_np)] = gamma.cpu()
                best_class = gamma.argmax(dim=1)
                ctf_h = ctf_b.subset(loc.cpu())
                for k, fine in enumerate(fines):
                    summ = summarise(fine, settings.top_k, apix)
                    for key, value in summ.items():
                        summaries[k].setdefault(key, []).append((rows_np, value.cpu()))
                    rows, rots_m, shifts_m, weight_m = significant_poses(
                        fine, settings.max_significant)
                    weight_m = weight_m * gamma[rows, k]
                    keep = weight_m > _MIN_WEIGHT
                    if bool(keep.any()):
                        accs[k][h].add(images[loc], rots_m[keep], apix, shifts_m[keep] * apix,
                                       ctf_h, particle_weights=weight_m[keep],
                                       image_rows=rows[keep])
                    mine = torch.nonzero(best_class == k).squeeze(1)
                    if len(mine):
                        model = forward_fourier(
                            maps_ft[k][h], summ["rotations"][mine].to(device), box, apix,
                            summ["shifts_angstrom"][mine].to(device),
                            ctf_h.subset(mine.cpu()))
                        residual += layout.sums(
                            (x_full[loc[mine]] - model).abs() ** 2).sum(dim=0)
        per_class = [{key: assemble_rows(parts, n) for key, parts in s.items()} for s in summaries]
        for k in range(k_classes):
            prev_rot[k] = per_class[k]["rotations"].to(device)
            prev_shift_px[k] = (per_class[k]["shifts_angstrom"] / apix).to(device)
        sigma2 = residual / (2.0 * n * layout.count.clamp(min=1e-30))
        sigma2[0] = sigma2[1]
        fractions = posteriors.mean(dim=0)
        built = [gold_standard_maps(pair) for pair in accs]
        full_maps = torch.stack([b[0] for b in built])
        half_maps = [b[1].to(torch.float64) for b in built]
        curves = [b[2] for b in built]
        limit_next = curves
        if iteration == 1 and random_start and settings.initial_lowpass_angstrom is not None:
            # maps of random subsets hold each particle's own noise: keep their low
            # frequencies only (RELION's ini_high), and the first E-step limit
            half_maps = [lowpass_volume(m, settings.initial_lowpass_angstrom, apix)
                         .to(torch.float64) for m in half_maps]
            limit_next = None
        best = posteriors.argmax(dim=1).numpy()
        changed = 1.0 if previous_best is None else float(np.mean(best != previous_best))
        previous_best = best
        log_likelihoods.append(total_ll)
        result = None
        progress_curves, curves = curves, limit_next
        if checkpoint_dir is not None:
            save_class_refine_state(checkpoint_dir, ClassRefineCheckpoint(
                iteration=iteration, half_maps=torch.stack(half_maps).cpu(),
                full_maps=full_maps.cpu(), curves=tuple(progress_curves),
                limit_from_curves=curves is not None, sigma2=sigma2.cpu(),
                fractions=fractions, posteriors=posteriors, per_class=tuple(per_class),
                log_likelihoods=tuple(log_likelihoods),
                elapsed_seconds=time.perf_counter() - start_time, e_step_limit=limit),
                settings, k_classes, random_start, ids)
        if iteration == settings.n_iterations:
            result = _result(full_maps, half_maps, progress_curves, posteriors, fractions, sigma2,
                             log_likelihoods, per_class, best, particles, settings,
                             random_start, time.perf_counter() - start_time)
        yield ClassRefineProgress(
            iteration=iteration, n_iterations=settings.n_iterations,
            global_search=settings.is_global(iteration),
            e_step_resolution_angstrom=box * apix / limit, log_likelihood=total_ll,
            class_fractions=tuple(float(f) for f in fractions), changed_fraction=changed,
            resolution_angstrom=tuple(c.resolution_angstrom(apix, 0.143)
                                      for c in progress_curves),
            seconds=time.perf_counter() - t0, result=result)


def _result(full_maps: torch.Tensor, half_maps: list[torch.Tensor], curves: list[FSCCurve],
            posteriors: torch.Tensor, fractions: torch.Tensor, sigma2: torch.Tensor,
            log_likelihoods: list[float], per_class: list[dict[str, torch.Tensor]],
            best: np.ndarray, particles: ParticleSet, settings: RefineSettings,
            random_start: bool, seconds: float) -> ClassRefineResult:
    ids = np.asarray(particles.particle_ids, dtype=np.int64).copy()
    classes = ClassEMResult(
        maps=full_maps.float().cpu(), half_maps=torch.stack(half_maps).float().cpu(),
        posteriors=posteriors.float(), class_fractions=fractions.clone(),
        sigma2=sigma2.cpu(), half_fsc=tuple(curves), log_likelihoods=tuple(log_likelihoods),
        particle_ids=ids, pixel_size_angstrom=particles.pixel_size_angstrom,
        n_iterations=settings.n_iterations,
        initialisation=(("one starting map for every class" if random_start
                         else "one starting map per class")
                        + f", low-passed to {settings.initial_lowpass_angstrom} Å"
                        + ("; random equal classes in the first M-step" if random_start else "")
                        + "; poses searched"),
        seconds=seconds)
    rows = torch.as_tensor(best)
    arange = torch.arange(len(best))
    chosen = {key: torch.stack([pc[key] for pc in per_class])[rows, arange]
              for key in per_class[0]}
    posterior = PosePosterior(particle_ids=ids,
                              **{k: v.numpy().astype(np.float64) for k, v in chosen.items()})
    return ClassRefineResult(classes=classes, posterior=posterior, settings=settings)


def run_class_refine(particles: ParticleSet, initial_map, n_classes: int,
                     **kwargs) -> ClassRefineResult:
    """Run :func:`iter_class_refine` to the end and return its result."""
    return deque(iter_class_refine(particles, initial_map, n_classes, **kwargs),
                 maxlen=1)[0].result


def write_class_refine(result: ClassRefineResult, particles: ParticleSet,
                       output_dir: str | Path, extra_metrics: dict | None = None) -> dict:
    """Write the classes (:func:`~cryoviz.inference.class_em_result.write_class_em`: class
    maps, ``classes.npz``, ``metrics.json`` with ``extra_metrics``) and the poses in each
    particle's most probable class (:func:`~cryoviz.inference.posterior.export_poses`:
    ``poses.npz``, ``particles.star``, ``particles.cs``, ``poses.pkl``); returns the
    metrics, which also carry the pose search's ``settings``."""
    metrics = write_class_em(result.classes, output_dir,
                             {"settings": asdict(result.settings), **(extra_metrics or {})})
    export_poses(result.posterior, particles, output_dir)
    return metrics
