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
posteriors and poses. Each class map has its own frame and hand. The maps are
the starting maps of a classification with poses searched
(:func:`cryoviz.inference.class_refine.iter_class_refine` with
``initial_maps``), which the ``cryosparc-abinit --classes K`` recipe runs next.

Cost: ``K`` times the one-class initial model per step.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cryoviz.backprojection import gold_standard_maps
from cryoviz.errors import InputError
from cryoviz.fourier import lowpass_volume
from cryoviz.imaging import forward_fourier, volume_to_fourier
from cryoviz.inference.abinit import AbinitSettings, _Context, _random_start, upsample_map
from cryoviz.inference.abinit_state import Schedule, StartState
from cryoviz.inference.pose_search import PoseCandidates, significant_poses, summarise
from cryoviz.inference.refine_state import check_identity, read_checkpoint, run_identity
from cryoviz.io.mrc import atomic_output
from cryoviz.io.particles import ImageSource, ParticleSet
from cryoviz.noise import half_plane_shells

__all__ = ["CLASS_ABINIT_STATE_FILE", "ClassAbinitResult", "ClassAbinitProgress",
           "iter_abinit_classes", "run_abinit_classes"]

CLASS_ABINIT_STATE_FILE = "abinit_classes_state.pt"
_FORMAT = 1
_MIN_WEIGHT = 1e-4  # class x pose weights below this are not backprojected


@dataclass(frozen=True)
class ClassAbinitResult:
    """Outcome of :func:`iter_abinit_classes`.

    Attributes
    ----------
    maps
        ``(K, D, D, D)`` float32 class maps on the particles' box and voxel size
        (the working maps Fourier-padded).
    working_maps
        ``(K, d, d, d)`` float32 class maps on the working box.
    posteriors
        ``(N, K)`` class posteriors of every particle under the final maps.
    best_class
        ``(N,)`` each particle's most probable class.
    class_fractions
        ``(K,)`` the class prior at the end.
    rotations, shifts_angstrom
        ``(N, 3, 3)`` and ``(N, 2)`` each particle's most probable pose in its
        most probable class (in that class map's frame).
    pixel_size_angstrom, working_pixel_size_angstrom
        Voxel sizes of ``maps`` and ``working_maps``.
    seconds, settings
        Bookkeeping.
    """

    maps: torch.Tensor
    working_maps: torch.Tensor
    posteriors: np.ndarray
    best_class: np.ndarray
    class_fractions: np.ndarray
    rotations: np.ndarray
    shifts_angstrom: np.ndarray
    pixel_size_angstrom: float
    working_pixel_size_angstrom: float
    seconds: float
    settings: AbinitSettings


@dataclass(frozen=True)
class ClassAbinitProgress:
    """State after one minibatch step of :func:`iter_abinit_classes`.

    Attributes
    ----------
    step, n_steps
        1-based step and the steps of the run.
    resolution_angstrom
        The step's search and low-pass limit (Å).
    class_fractions
        ``(K,)`` class prior after the step.
    log_likelihood
        Mean over the batch of ``log sum_k pi_k p(X_i | k)``.
    images_per_second
        Images searched (against every class) and backprojected per second.
    step_seconds, elapsed_seconds
        Wall time of this step and since the run began (resumed runs add theirs).
    result
        The :class:`ClassAbinitResult` on the last step, else ``None``.
    """

    step: int
    n_steps: int
    resolution_angstrom: float
    class_fractions: tuple[float, ...]
    log_likelihood: float
    images_per_second: float
    step_seconds: float
    elapsed_seconds: float
    result: ClassAbinitResult | None = None


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


def _assign(ctx: _Context, classes: list[StartState], sigma2: torch.Tensor,
            log_pi: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every particle searched against the final maps: posteriors, rotations, shifts (Å)."""
    settings, n = ctx.settings, len(ctx.particles)
    final_limit = max(1, min(ctx.box // 2, int(ctx.box * ctx.apix / max(
        settings.final_resolution_angstrom, 2.0 * ctx.apix))))
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


def _save(run_dir: Path, settings: AbinitSettings, ids: np.ndarray, n_classes: int, step: int,
          schedule: Schedule, classes: list[StartState], sigma2: torch.Tensor,
          log_pi: torch.Tensor, last_progress: dict, elapsed_seconds: float) -> None:
    """Write ``abinit_classes_state.pt`` atomically (what the next step needs)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {"format": _FORMAT, **run_identity(settings, ids, ()), "n_classes": n_classes,
               "step": step, "schedule": schedule.state(),
               "classes": [c.to_payload() for c in classes], "sigma2": sigma2.cpu(),
               "log_pi": log_pi.cpu(), "last_progress": dict(last_progress),
               "elapsed_seconds": float(elapsed_seconds)}
    with atomic_output(run_dir / CLASS_ABINIT_STATE_FILE) as tmp:
        torch.save(payload, tmp)


def _load(run_dir: Path, settings: AbinitSettings, ids: np.ndarray, n_classes: int
          ) -> dict | None:
    """The checkpoint in ``run_dir`` (checked against the run), or ``None``."""
    path = run_dir / CLASS_ABINIT_STATE_FILE
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


def iter_abinit_classes(particles: ParticleSet, n_classes: int,
                        settings: AbinitSettings | None = None,
                        device: str | torch.device = "cpu",
                        checkpoint_dir: str | Path | None = None, resume: bool = False,
                        checkpoint_interval_s: float = 30.0) -> Iterator[ClassAbinitProgress]:
    """Build ``n_classes`` maps from nothing by stochastic modal EM, yielding per step.

    Parameters
    ----------
    particles
        ``N`` particles with CTF parameters (their poses, if any, are ignored).
    n_classes
        ``K``, at least 2.
    settings
        :class:`~cryoviz.inference.abinit.AbinitSettings` (defaults when
        ``None``); ``n_starts`` must be 1 (the classes are the random starts).
    device
        Torch device.
    checkpoint_dir
        Folder for ``abinit_classes_state.pt``, written atomically after a step
        when ``checkpoint_interval_s`` have passed since the last one, and after
        the last step; ``None``: none.
    resume
        Continue from the checkpoint in ``checkpoint_dir`` (a fresh start if there
        is none): the remaining steps are the unbroken run's, with the same result.
    checkpoint_interval_s
        Least wall time between two checkpoints (0: every step).

    Yields
    ------
    ClassAbinitProgress
        One per step; the last carries the :class:`ClassAbinitResult`.
    """
    settings = settings or AbinitSettings(n_starts=1)
    if particles.ctf is None:
        raise InputError(particles.source_path, "ctf", "CTF parameters for every particle",
                         "none")
    n = len(particles)
    if not 2 <= int(n_classes) <= n:
        raise InputError(None, "n_classes", f"2 .. {n} (the number of particles)", n_classes)
    if settings.n_starts != 1:
        raise InputError(None, "n_starts", "1 (each class is one random start)",
                         settings.n_starts)
    if resume and checkpoint_dir is None:
        raise ValueError("resume needs checkpoint_dir")
    k_classes = int(n_classes)
    full_box, full_apix = particles.box_size, particles.pixel_size_angstrom
    settings.validate(full_box)
    device = torch.device(device)
    ids = np.asarray(particles.particle_ids, dtype=np.int64)
    run_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
    saved = _load(run_dir, settings, ids, k_classes) if resume else None
    start_time = time.perf_counter() - (float(saved["elapsed_seconds"]) if saved else 0.0)
    box = settings.box_size or full_box
    apix = full_apix * full_box / box
    layout = half_plane_shells(box, device=device)
    with ImageSource(particles) as source:
        ctx = _Context.build(particles, source, settings, device, box, apix)
        if saved is not None:
            classes = [StartState.from_payload(c, box, device) for c in saved["classes"]]
            schedule = Schedule.restore(n, settings.batch_size, saved["schedule"])
            sigma2, log_pi = saved["sigma2"].to(device), saved["log_pi"].to(device)
            first_step = int(saved["step"]) + 1
        else:
            classes = []
            for k in range(k_classes):
                seed = settings.seed + 1000 * k
                classes.append(_random_start(ctx, np.random.default_rng(seed),
                                             torch.Generator().manual_seed(seed), layout))
            sigma2 = torch.stack([c.sigma2 for c in classes]).mean(dim=0)
            log_pi = torch.full((k_classes,), -float(np.log(k_classes)), dtype=torch.float64,
                                device=device)
            schedule = Schedule(n, settings.batch_size, np.random.default_rng(settings.seed))
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
                _save(run_dir, settings, ids, k_classes, step, schedule, classes, sigma2,
                      log_pi, figures, now - start_time)
                last_save = time.perf_counter()
            if step < settings.n_steps:
                yield ClassAbinitProgress(step=step, n_steps=settings.n_steps, **figures,
                                          elapsed_seconds=now - start_time)
        posteriors, rotations, shifts = _assign(ctx, classes, sigma2, log_pi)
    working = torch.stack([c.volume.to(torch.float32).cpu() for c in classes])
    result = ClassAbinitResult(
        maps=torch.stack([upsample_map(m, full_box) for m in working]), working_maps=working,
        posteriors=posteriors, best_class=posteriors.argmax(axis=1),
        class_fractions=log_pi.exp().cpu().numpy(), rotations=rotations,
        shifts_angstrom=shifts, pixel_size_angstrom=full_apix, working_pixel_size_angstrom=apix,
        seconds=time.perf_counter() - start_time, settings=settings)
    yield ClassAbinitProgress(step=settings.n_steps, n_steps=settings.n_steps,
                              **{**figures, "class_fractions": tuple(figures["class_fractions"])},
                              elapsed_seconds=time.perf_counter() - start_time, result=result)


def run_abinit_classes(particles: ParticleSet, n_classes: int, **kwargs) -> ClassAbinitResult:
    """Run :func:`iter_abinit_classes` to the end and return its result."""
    result = None
    for state in iter_abinit_classes(particles, n_classes, **kwargs):
        result = state.result if state.result is not None else result
    return result
