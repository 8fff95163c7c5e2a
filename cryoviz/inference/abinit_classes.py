"""Heterogeneous ab initio: K maps, each image's class and pose, from nothing.

cryoSPARC's multi-class *ab initio reconstruction*: nothing about the maps, the
poses or the classes is given. Each of the ``K`` classes starts as its own
random start of :mod:`cryoviz.inference.abinit` (a different few hundred images
backprojected at uniformly random rotations), so the classes differ from the
first step. Then, minibatch by minibatch on the working box:

1. **search** -- every image is searched against every class's map (the
   exhaustive global grid, then the beam search), which gives the class's log
   evidence ``log p(X_i | k)`` over the same number of candidate poses, so the
   uniform pose prior cancels between classes;
2. **classes** -- ``gamma_ik = softmax_k(log p(X_i | k) + log pi_k)``; the class
   fractions ``pi_k`` follow the batches' mean ``gamma`` with the running sums'
   decay;
3. **update** -- each class backprojects the image at its significant poses,
   weighted by ``gamma_ik`` times the pose weights (products below 1e-4 are
   skipped), into its running half sums (stochastic EM, as the one-class
   initial model); the noise per shell (shared by the classes, so that their
   evidences compare) follows the residual at each image's best pose in its
   most probable class;
4. **frequency marching** as in :mod:`cryoviz.inference.abinit`.

After the last step every image is searched once more against the final maps
(limit ``final_resolution_angstrom``), which gives the result's class
posteriors and poses; the result is stored with the checkpoints, so a resumed
run does not search them again (:mod:`cryoviz.inference.abinit_classes_result`).
Each class map has its own frame and hand. The maps are
the starting maps of a classification with poses searched
(:func:`cryoviz.inference.class_refine.iter_class_refine` with
``initial_maps``), which the ``cryosparc-abinit --classes K`` recipe runs next.

**Restarts** (``n_starts`` R > 1): stochastic EM can settle in a wrong map for
one state while it finds the others (on simulated closed adenylate kinase, 2,000
particles at SNR 0.1, one start in eight found it; ``docs/benchmarks.md``). The
whole K-class run is repeated from other random starts, and the ``K`` of the
``R K`` maps whose equal mixture gives a common set of images the largest log
evidence are kept (:func:`~cryoviz.inference.map_selection.select_maps`): a
class may come from any restart.

Cost: ``K`` times the one-class initial model per step, ``R`` times over.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cryoviz.backprojection import gold_standard_maps
from cryoviz.errors import InputError
from cryoviz.fourier import lowpass_volume
from cryoviz.imaging import forward_fourier, volume_to_fourier
from cryoviz.inference.abinit import AbinitSettings, _Context, _random_start, upsample_map
from cryoviz.inference.abinit_classes_result import (
    ClassAbinitProgress,
    ClassAbinitResult,
    discard_class_abinit_result,
    load_class_abinit_result,
    save_class_abinit_result,
)
from cryoviz.inference.abinit_state import Schedule, StartState
from cryoviz.inference.map_selection import mixture_log_likelihood, select_maps
from cryoviz.inference.pose_search import PoseCandidates, significant_poses, summarise
from cryoviz.inference.refine_state import check_identity, read_checkpoint, run_identity
from cryoviz.io.mrc import atomic_output
from cryoviz.io.particles import ImageSource, ParticleSet
from cryoviz.noise import half_plane_shells

__all__ = ["CLASS_ABINIT_STATE_FILE", "ClassAbinitResult", "ClassAbinitProgress",
           "abinit_classes_finished", "iter_abinit_classes", "run_abinit_classes"]

CLASS_ABINIT_STATE_FILE = "abinit_classes_state.pt"
_FORMAT = 1
_MIN_WEIGHT = 1e-4  # class x pose weights below this are not backprojected


def _limit(settings: AbinitSettings, step: int, box: int, apix: float) -> tuple[float, int]:
    """The step's resolution (Å) and its last Fourier shell on the working box."""
    resolution = max(settings.resolution_angstrom(step), 2.0 * apix)
    return resolution, max(1, min(box // 2, int(box * apix / resolution)))


def _search_classes(ctx: _Context, classes: list[StartState], x_full: torch.Tensor, ctf,
                    sigma2: torch.Tensor, limit: int, log_pi: torch.Tensor
                    ) -> tuple[list[torch.Tensor], list[PoseCandidates], torch.Tensor,
                               torch.Tensor]:
    """Every class's search of a batch: transforms, candidates, ``(B, K)`` logits, gamma."""
    volumes_ft = [volume_to_fourier(c.volume) for c in classes]
    fines = [ctx.search(v, x_full, ctf, sigma2, limit) for v in volumes_ft]
    logits = torch.stack([f.evidence for f in fines], dim=1) + log_pi
    return volumes_ft, fines, logits, torch.softmax(logits, dim=1)


def _step(ctx: _Context, classes: list[StartState], sigma2: torch.Tensor, log_pi: torch.Tensor,
          index: np.ndarray, step: int, layout) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """One minibatch over every class. Returns (noise, log prior, limit Å, log-likelihood)."""
    settings, box, apix = ctx.settings, ctx.box, ctx.apix
    resolution, limit = _limit(settings, step, box, apix)
    images, x_full, ctf = ctx.read(index)
    volumes_ft, fines, logits, gamma = _search_classes(
        ctx, classes, x_full, ctf, sigma2 * settings.noise_factor(step), limit, log_pi)
    decay = 1.0 - settings.batch_size / settings.memory_images
    half_of_image = ctx.halves[torch.as_tensor(index, device=ctx.device)]
    best_class = gamma.argmax(dim=1)
    power = torch.zeros_like(x_full.real)
    for k, (state, fine) in enumerate(zip(classes, fines, strict=True)):
        rows, rots_m, shifts_m, weight_m = significant_poses(fine, settings.max_significant)
        weight_m = weight_m * gamma[rows, k]
        for h, acc in enumerate(state.accs):
            acc.data.mul_(decay)
            acc.weight.mul_(decay)
            keep = (half_of_image[rows] == h) & (weight_m > _MIN_WEIGHT)
            acc.add(images, rots_m[keep], apix, shifts_m[keep] * apix, ctf,
                    particle_weights=weight_m[keep], max_frequency=(limit + 2) / box,
                    image_rows=rows[keep])
        mine = torch.nonzero(best_class == k).squeeze(1)
        if len(mine):
            summ = summarise(fine, 1, apix)
            model = forward_fourier(volumes_ft[k], summ["rotations"][mine],
                                    box, apix, summ["shifts_angstrom"][mine],
                                    ctf.subset(mine.cpu()))
            power[mine] = (x_full[mine] - model).abs() ** 2
    residual = layout.sums(power).sum(dim=0) / (2.0 * len(index) * layout.count.clamp(min=1e-30))
    residual[0] = residual[1]
    sigma2 = decay * sigma2 + (1 - decay) * residual
    pi = decay * log_pi.exp() + (1 - decay) * gamma.mean(dim=0)
    for state in classes:
        full, _, state.curve = gold_standard_maps(state.accs)
        state.volume = lowpass_volume(full.to(torch.float64), resolution, apix) * ctx.mask
    return (sigma2, pi.clamp(min=1e-12).log(), box * apix / limit,
            float(torch.logsumexp(logits, dim=1).mean()))


def _final_limit(ctx: _Context) -> int:
    """Last Fourier shell of ``final_resolution_angstrom`` on the working box."""
    return max(1, min(ctx.box // 2, int(ctx.box * ctx.apix / max(
        ctx.settings.final_resolution_angstrom, 2.0 * ctx.apix))))


def _assign(ctx: _Context, classes: list[StartState], sigma2: torch.Tensor,
            log_pi: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every particle searched against the final maps: posteriors, rotations, shifts (Å)."""
    settings, n = ctx.settings, len(ctx.particles)
    final_limit = _final_limit(ctx)
    posteriors = np.zeros((n, len(classes)))
    rotations, shifts = np.zeros((n, 3, 3)), np.zeros((n, 2))
    for first in range(0, n, settings.batch_size):
        index = np.arange(first, min(n, first + settings.batch_size))
        _, x_full, ctf = ctx.read(index)
        _, fines, _, gamma = _search_classes(ctx, classes, x_full, ctf, sigma2, final_limit,
                                             log_pi)
        best = gamma.argmax(dim=1)
        for k, fine in enumerate(fines):
            mine = (best == k).cpu().numpy()
            summ = summarise(fine, 1, ctx.apix)
            rotations[index[mine]] = summ["rotations"].cpu().numpy()[mine]
            shifts[index[mine]] = summ["shifts_angstrom"].cpu().numpy()[mine]
        posteriors[index] = gamma.cpu().numpy()
    return posteriors, rotations, shifts


def _state_file(start: int) -> str:
    """Checkpoint file of restart ``start`` (restart 0 keeps the one-restart name)."""
    return CLASS_ABINIT_STATE_FILE if start == 0 else f"abinit_classes_state_{start}.pt"


def _save(run_dir: Path, settings: AbinitSettings, ids: np.ndarray, n_classes: int, start: int,
          step: int, schedule: Schedule, classes: list[StartState], sigma2: torch.Tensor,
          log_pi: torch.Tensor, last_progress: dict, elapsed_seconds: float) -> None:
    """Write restart ``start``'s checkpoint atomically (what its next step needs)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {"format": _FORMAT, **run_identity(settings, ids, ()), "n_classes": n_classes,
               "start": start, "step": step, "schedule": schedule.state(),
               "classes": [c.to_payload() for c in classes], "sigma2": sigma2.cpu(),
               "log_pi": log_pi.cpu(), "last_progress": dict(last_progress),
               "elapsed_seconds": float(elapsed_seconds)}
    with atomic_output(run_dir / _state_file(start)) as tmp:
        torch.save(payload, tmp)


def _load(run_dir: Path, settings: AbinitSettings, ids: np.ndarray, n_classes: int,
          start: int) -> dict | None:
    """Restart ``start``'s checkpoint in ``run_dir`` (checked against the run), or ``None``."""
    path = run_dir / _state_file(start)
    if not path.is_file():
        return None
    saved = read_checkpoint(path, CLASS_ABINIT_STATE_FILE, _FORMAT)
    check_identity(path, saved, run_identity(settings, ids, ()), ())
    if int(saved["n_classes"]) != n_classes:
        raise InputError(path, "n_classes", f"{saved['n_classes']} (the run being resumed)",
                         n_classes)
    if not 1 <= int(saved["step"]) <= settings.n_steps:
        raise InputError(path, "step", f"1 .. {settings.n_steps}", saved["step"])
    return saved


@dataclass
class _Restart:
    """One restart's classes after its last step."""

    classes: list[StartState]
    sigma2: torch.Tensor
    log_pi: torch.Tensor
    figures: dict


def _iter_restart(ctx: _Context, layout, n_classes: int, start: int, saved: dict | None,
                  run_dir: Path | None, ids: np.ndarray, start_time: float,
                  checkpoint_interval_s: float) -> Generator[ClassAbinitProgress, None, _Restart]:
    """Run restart ``start`` to its last step, yielding every step but the last."""
    settings, n, device = ctx.settings, len(ctx.particles), ctx.device
    seed = settings.seed + 1000 * n_classes * start
    if saved is not None:
        classes = [StartState.from_payload(c, ctx.box, device) for c in saved["classes"]]
        schedule = Schedule.restore(n, settings.batch_size, saved["schedule"])
        sigma2, log_pi = saved["sigma2"].to(device), saved["log_pi"].to(device)
        first_step = int(saved["step"]) + 1
    else:
        classes = [_random_start(ctx, np.random.default_rng(seed + 1000 * k),
                                 torch.Generator().manual_seed(seed + 1000 * k), layout)
                   for k in range(n_classes)]
        sigma2 = torch.stack([c.sigma2 for c in classes]).mean(dim=0)
        log_pi = torch.full((n_classes,), -float(np.log(n_classes)), dtype=torch.float64,
                            device=device)
        schedule = Schedule(n, settings.batch_size, np.random.default_rng(seed))
        first_step = 1
    figures = dict(saved["last_progress"]) if saved is not None else {}
    last_save = time.perf_counter()
    for step in range(first_step, settings.n_steps + 1):
        t0 = time.perf_counter()
        index = schedule.next_batch()
        sigma2, log_pi, limit_angstrom, log_likelihood = _step(
            ctx, classes, sigma2, log_pi, index, step, layout)
        now = time.perf_counter()
        figures = {"resolution_angstrom": limit_angstrom,
                   "class_fractions": tuple(float(p) for p in log_pi.exp()),
                   "log_likelihood": log_likelihood,
                   "images_per_second": len(index) / (now - t0), "step_seconds": now - t0}
        if run_dir is not None and (step == settings.n_steps
                                    or now - last_save >= checkpoint_interval_s):
            _save(run_dir, settings, ids, n_classes, start, step, schedule, classes, sigma2,
                  log_pi, figures, now - start_time)
            last_save = time.perf_counter()
        if step < settings.n_steps:
            yield ClassAbinitProgress(step=step, n_steps=settings.n_steps, **figures,
                                      elapsed_seconds=now - start_time, start=start,
                                      n_starts=settings.n_starts)
    return _Restart(classes=classes, sigma2=sigma2, log_pi=log_pi, figures=figures)


def abinit_classes_finished(particles: ParticleSet, n_classes: int, settings: AbinitSettings,
                            checkpoint_dir: str | Path) -> bool:
    """Whether every restart's checkpoint in ``checkpoint_dir`` is at its last step.

    A run that is finished resumes (:func:`run_abinit_classes` with ``resume``)
    to its result without another step, and without the assignment pass when its
    ``abinit_classes_result.pt`` is there. Checkpoints of other settings raise
    :class:`~cryoviz.errors.InputError`, as resuming does.
    """
    ids = np.asarray(particles.particle_ids, dtype=np.int64)
    saved = [_load(Path(checkpoint_dir), settings, ids, int(n_classes), r)
             for r in range(settings.n_starts)]
    return all(s is not None and int(s["step"]) == settings.n_steps for s in saved)


def _common_evidence(ctx: _Context, layout, volumes: list[torch.Tensor]) -> np.ndarray:
    """``(C, M)`` log evidence of the common images under each working map.

    The common images are ``initial_images`` drawn with the run's seed; the noise
    is their power per shell (the same for every map, so the evidences compare),
    the limit ``final_resolution_angstrom``.
    """
    settings, n = ctx.settings, len(ctx.particles)
    common = np.sort(np.random.default_rng(settings.seed + 7919).permutation(n)[
        :min(n, settings.initial_images)])
    final_limit = _final_limit(ctx)
    rows = []
    for first in range(0, len(common), settings.batch_size):
        _, x, ctf = ctx.read(common[first:first + settings.batch_size])
        rows.append((x, ctf))
    power = sum(layout.sums(x.real**2 + x.imag**2).sum(dim=0) for x, _ in rows)
    noise = power / (2.0 * len(common) * layout.count.clamp(min=1e-30))
    noise[0] = noise[1]
    return np.stack([np.concatenate([
        ctx.search(volume_to_fourier(v), x, ctf, noise, final_limit).evidence.cpu().numpy()
        for x, ctf in rows]) for v in volumes])


def iter_abinit_classes(particles: ParticleSet, n_classes: int,
                        settings: AbinitSettings | None = None,
                        device: str | torch.device = "cpu",
                        checkpoint_dir: str | Path | None = None, resume: bool = False,
                        checkpoint_interval_s: float = 30.0) -> Iterator[ClassAbinitProgress]:
    """Build ``n_classes`` maps from nothing by stochastic modal EM, yielding per step.

    With ``settings.n_starts`` R above 1 the whole K-class run is restarted R
    times from other random starts (restart ``r`` uses seeds from
    ``seed + 1000 K r``; restart 0 is the one-restart run). The ``R K`` maps are
    pooled and the ``K`` whose equal mixture explains a common set of images best
    (:func:`~cryoviz.inference.map_selection.select_maps`, mean log evidence under
    the images' own noise power at
    ``final_resolution_angstrom``) are kept: classes may come from different
    restarts, since stochastic EM fails on some states in some starts. Every
    particle is then assigned under the kept maps (the noise: the mean of their
    restarts'; the class prior: the common images' mean posterior).

    Parameters
    ----------
    particles
        ``N`` particles with CTF parameters (their poses, if any, are ignored).
    n_classes
        ``K``, at least 2.
    settings
        :class:`~cryoviz.inference.abinit.AbinitSettings` (defaults when
        ``None``; one restart then). Its screening (``screen_starts``) is not
        used here: the restarts run whole.
    device
        Torch device.
    checkpoint_dir
        Folder for ``abinit_classes_state.pt`` (restart 0) and
        ``abinit_classes_state_<r>.pt``, written atomically after a step when
        ``checkpoint_interval_s`` have passed since the last one, and after each
        restart's last step, and for ``abinit_classes_result.pt``, the result
        after the assignment pass
        (:func:`~cryoviz.inference.abinit_classes_result.save_class_abinit_result`);
        ``None``: none.
    resume
        Continue from the checkpoints in ``checkpoint_dir`` (a fresh start if there
        are none): finished restarts are kept, the others continue, with the
        unbroken run's result; a finished run's stored result is read back
        without searching the images again. A run not resumed removes the
        folder's stored result first (its checkpoints are about to be replaced).
    checkpoint_interval_s
        Least wall time between two checkpoints (0: every step).

    Yields
    ------
    ClassAbinitProgress
        One per step of every restart run (a resumed run repeats no finished
        restart's steps); the last carries the :class:`ClassAbinitResult`.
    """
    settings = settings or AbinitSettings(n_starts=1)
    if particles.ctf is None:
        raise InputError(particles.source_path, "ctf", "CTF parameters for every particle",
                         "none")
    n = len(particles)
    if not 2 <= int(n_classes) <= n:
        raise InputError(None, "n_classes", f"2 .. {n} (the number of particles)", n_classes)
    if resume and checkpoint_dir is None:
        raise ValueError("resume needs checkpoint_dir")
    k_classes = int(n_classes)
    full_box, full_apix = particles.box_size, particles.pixel_size_angstrom
    settings.validate(full_box)
    device = torch.device(device)
    ids = np.asarray(particles.particle_ids, dtype=np.int64)
    run_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
    saved = [_load(run_dir, settings, ids, k_classes, r) if resume else None
             for r in range(settings.n_starts)]
    if all(s is not None and int(s["step"]) == settings.n_steps for s in saved):
        stored = load_class_abinit_result(run_dir, settings, ids, k_classes)
        if stored is not None:
            result, figures = stored
            yield ClassAbinitProgress(step=settings.n_steps, n_steps=settings.n_steps,
                                      **figures, elapsed_seconds=result.seconds, result=result,
                                      start=settings.n_starts - 1, n_starts=settings.n_starts)
            return
    elif run_dir is not None:
        discard_class_abinit_result(run_dir)
    start_time = time.perf_counter() - max(
        [float(s["elapsed_seconds"]) for s in saved if s is not None], default=0.0)
    box = settings.box_size or full_box
    apix = full_apix * full_box / box
    layout = half_plane_shells(box, device=device)
    restarts: list[_Restart] = []
    with ImageSource(particles) as source:
        ctx = _Context.build(particles, source, settings, device, box, apix)
        for r in range(settings.n_starts):
            restart = yield from _iter_restart(ctx, layout, k_classes, r, saved[r], run_dir, ids,
                                               start_time, checkpoint_interval_s)
            restarts.append(restart)
            fresh = saved[r] is None or int(saved[r]["step"]) < settings.n_steps
            if r < settings.n_starts - 1 and fresh:
                yield ClassAbinitProgress(step=settings.n_steps, n_steps=settings.n_steps,
                                          **restart.figures, start=r, n_starts=settings.n_starts,
                                          elapsed_seconds=time.perf_counter() - start_time)
        pool = [(r, k) for r in range(settings.n_starts) for k in range(k_classes)]
        evidence = _common_evidence(ctx, layout, [restarts[r].classes[k].volume
                                                  for r, k in pool])
        groups = [list(range(r * k_classes, (r + 1) * k_classes))
                  for r in range(settings.n_starts)]
        chosen = groups[0] if settings.n_starts == 1 else select_maps(evidence, k_classes,
                                                                      groups)
        classes = [restarts[pool[c][0]].classes[pool[c][1]] for c in chosen]
        if settings.n_starts == 1:
            sigma2, log_pi = restarts[0].sigma2, restarts[0].log_pi
        else:
            used = sorted({pool[c][0] for c in chosen})
            sigma2 = torch.stack([restarts[r].sigma2 for r in used]).mean(dim=0)
            gamma = torch.softmax(torch.as_tensor(evidence[chosen]), dim=0).mean(dim=1)
            log_pi = gamma.clamp(min=1e-12).log().to(device)
        posteriors, rotations, shifts = _assign(ctx, classes, sigma2, log_pi)
    working = torch.stack([c.volume.to(torch.float32).cpu() for c in classes])
    result = ClassAbinitResult(
        maps=torch.stack([upsample_map(m, full_box) for m in working]), working_maps=working,
        posteriors=posteriors, best_class=posteriors.argmax(axis=1),
        class_fractions=log_pi.exp().cpu().numpy(), rotations=rotations,
        shifts_angstrom=shifts, pixel_size_angstrom=full_apix, working_pixel_size_angstrom=apix,
        chosen_maps=tuple(pool[c] for c in chosen),
        start_log_likelihoods=tuple(mixture_log_likelihood(evidence, g) for g in groups),
        log_likelihood=mixture_log_likelihood(evidence, chosen),
        seconds=time.perf_counter() - start_time, settings=settings)
    figures = restarts[-1].figures
    if run_dir is not None:
        save_class_abinit_result(run_dir, result, ids, figures)
    yield ClassAbinitProgress(step=settings.n_steps, n_steps=settings.n_steps,
                              **{**figures, "class_fractions": tuple(figures["class_fractions"])},
                              elapsed_seconds=time.perf_counter() - start_time, result=result,
                              start=settings.n_starts - 1, n_starts=settings.n_starts)


def run_abinit_classes(particles: ParticleSet, n_classes: int, **kwargs) -> ClassAbinitResult:
    """Run :func:`iter_abinit_classes` to the end and return its result."""
    result = None
    for state in iter_abinit_classes(particles, n_classes, **kwargs):
        result = state.result if state.result is not None else result
    return result
