"""``cryoviz train`` for ab initio: ``cryosparc-abinit`` (one map or ``--classes K``) and
``relion-refine`` without ``--initial-map``.

:func:`run_ab_initio` runs the initial model(s) and the refinement or
classification after them, prints one progress line per step to stderr, and
writes the run folder with its ``log.jsonl``; ``--resume`` continues from the
checkpoints. :mod:`cryoviz.train.cli_algorithms` dispatches here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from cryoviz.errors import InputError

__all__ = ["run_ab_initio", "abinit_settings"]


class _RunLog:
    """``log.jsonl`` of an ab initio run: one line per step and iteration, written atomically.

    On ``resume`` the earlier lines are kept up to the first line the resumed run
    repeats (those after the last checkpoint), found by
    :func:`~cryoviz.inference.abinit_pipeline.log_position`.
    """

    def __init__(self, out: Path, resume: bool) -> None:
        self.path = out / "log.jsonl"
        self.lines = ([line for line in self.path.read_text().splitlines() if line]
                      if resume and self.path.is_file() else [])
        self.trim = bool(self.lines)

    def add(self, record: dict) -> bool:
        """Append ``record``; True on the first line of a resumed run."""
        from cryoviz.inference.abinit_pipeline import log_position  # noqa: PLC0415
        from cryoviz.io.mrc import atomic_output  # noqa: PLC0415

        first = self.trim
        if self.trim:
            position = log_position(record)
            self.lines = [line for line in self.lines
                          if log_position(json.loads(line)) < position]
            self.trim = False
        self.lines.append(json.dumps(record))
        with atomic_output(self.path) as tmp:
            tmp.write_text("\n".join(self.lines) + "\n")
        return first


def abinit_settings(args: argparse.Namespace, particles, classes: bool = False):
    """:class:`AbinitSettings` of the initial model(s) from the command line.

    ``--abinit-screen`` defaults to 0 (no screening) for one map and, with
    ``classes``, to :data:`~cryoviz.inference.abinit_pipeline.CLASS_SCREEN_FACTOR`
    times ``--abinit-starts`` (a state inside a mixture is found by fewer starts;
    ``docs/benchmarks.md``, "Screening many short starts"); ``--abinit-screen-steps``
    to half of ``--abinit-steps``.
    """
    from cryoviz.inference.abinit import AbinitSettings  # noqa: PLC0415
    from cryoviz.inference.abinit_pipeline import CLASS_SCREEN_FACTOR  # noqa: PLC0415

    working = min(args.abinit_box, particles.box_size)
    batch = AbinitSettings.batch_size
    screen = args.abinit_screen
    if screen is None:
        screen = CLASS_SCREEN_FACTOR * args.abinit_starts if classes else 0
    screen_steps = args.abinit_screen_steps
    return AbinitSettings(n_steps=args.abinit_steps, box_size=working - working % 2,
                          n_starts=args.abinit_starts, screen_starts=screen,
                          screen_steps=(args.abinit_steps // 2 if screen_steps is None
                                        else screen_steps),
                          seed=args.seed if args.seed is not None else 0,
                          memory_images=max(batch, min(AbinitSettings.memory_images,
                                                       len(particles))))


def abinit_refinement(args: argparse.Namespace, abinit, modal: bool, classes: bool = False):
    """:class:`~cryoviz.inference.refine.RefineSettings` of what follows the initial model(s).

    The refinement (one map) or the classification (``classes``, ``--classes``) of
    :func:`~cryoviz.inference.abinit_pipeline.refinement_after_abinit`:
    ``--epochs`` iterations (default 4), of which ``--global-iterations`` (at most
    ``--epochs``; default 1, with ``classes``
    :data:`~cryoviz.inference.abinit_pipeline.CLASS_GLOBAL_ITERATIONS`) search all
    of SO(3); more global searches move poses the local iterations cannot reach
    (``docs/benchmarks.md``, "More classification iterations, more global searches").
    """
    from cryoviz.inference.abinit_pipeline import refinement_after_abinit  # noqa: PLC0415
    from cryoviz.train.cli_algorithms import global_search_iterations  # noqa: PLC0415

    n_iterations = args.epochs or 4
    refine = refinement_after_abinit(abinit, modal=modal, n_iterations=n_iterations,
                                     classes=classes, batch_size=args.batch_size or 64,
                                     max_order=args.max_order)
    return dataclasses.replace(refine, n_global_iterations=global_search_iterations(
        args, n_iterations, default=refine.n_global_iterations))


def start_label(progress, settings) -> str:
    """Which start an :class:`~cryoviz.inference.abinit.AbinitProgress` step is of, in words."""
    if progress.screening:
        return f"screening start {progress.seed_start + 1}/{settings.screen_starts}"
    if settings.screen_starts:
        return (f"kept start {progress.seed_start + 1} "
                f"({progress.start - settings.screen_starts + 1}/{settings.n_starts})")
    return f"start {progress.seed_start + 1}/{settings.n_starts}"


def run_ab_initio(args: argparse.Namespace, particles) -> None:
    """Ab initio: an initial model by stochastic modal EM, then refinement (poses unknown).

    ``cryosparc-abinit`` refines with one pose per image, ``relion-refine`` (no
    ``--initial-map``) by exact EM. Writes what ``relion-refine`` writes, plus
    ``volumes/abinit_map.mrc``, ``volumes/map_iter_###.mrc`` per refinement
    iteration and ``log.jsonl`` (one line per step and iteration). With ``--resume``
    an initial model already written (``abinit_map.mrc``) is kept and the
    refinement continues from its checkpoint; without one, the initial model
    continues from ``abinit_state.pt`` (saved every 30 s and after each start).
    ``cryosparc-abinit --classes K`` runs :func:`_run_abinit_classes` instead.
    """
    if args.classes is not None:
        if args.recipe != "cryosparc-abinit":
            raise InputError(None, "--classes", "relion-class3d or cryosparc-abinit (K classes "
                             "ab initio)", f"--classes with {args.recipe}")
        _run_abinit_classes(args, particles)
        return
    from cryoviz.inference.abinit import AbinitProgress  # noqa: PLC0415
    from cryoviz.inference.abinit_pipeline import (  # noqa: PLC0415
        iter_ab_initio,
        progress_record,
    )
    from cryoviz.inference.refine import write_refine  # noqa: PLC0415
    from cryoviz.io.mrc import read_volume, write_volume  # noqa: PLC0415

    abinit = abinit_settings(args, particles)
    refine = abinit_refinement(args, abinit, modal=args.recipe == "cryosparc-abinit")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    apix = particles.pixel_size_angstrom
    log = _RunLog(out, args.resume)
    saved_map = out / "volumes" / "abinit_map.mrc"
    initial = None
    if args.resume and saved_map.is_file():
        initial = torch.as_tensor(read_volume(saved_map)[0])
        print(f"resuming after the initial model in {saved_map}", file=sys.stderr, flush=True)
    result = None
    started = time.perf_counter()
    for state in iter_ab_initio(particles, abinit, refine, device=args.device,
                                checkpoint_dir=out, initial_map=initial, resume=args.resume):
        if log.add(progress_record(state)) and isinstance(state, AbinitProgress):
            print(f"initial model continues at {start_label(state, abinit)} step "
                  f"{state.step}", file=sys.stderr, flush=True)
        if isinstance(state, AbinitProgress):
            if state.step % 10 == 0 or state.step == state.n_steps:
                print(f"initial model {start_label(state, abinit)} step "
                      f"{state.step}/{state.n_steps}  limit "
                      f"{state.resolution_angstrom:.1f} Å  {state.images_per_second:.0f} "
                      f"images/s  {state.elapsed_seconds:.0f} s", file=sys.stderr, flush=True)
            if state.result is not None:
                write_volume(out / "volumes" / "abinit_map.mrc", state.result.map.numpy(), apix)
            continue
        write_volume(out / "volumes" / f"map_iter_{state.iteration:03d}.mrc",
                     state.map.numpy(), apix)
        print(f"refine iteration {state.iteration}/{state.n_iterations}"
              f"{' global' if state.global_search else ' local'}  E-step to "
              f"{state.e_step_resolution_angstrom:.1f} Å  resolution "
              f"{state.resolution_angstrom:.1f} Å  {state.seconds:.1f} s",
              file=sys.stderr, flush=True)
        result = state.result if state.result is not None else result
    write_refine(result, particles, out, recipe=args.recipe, extra_metrics={
        "ab_initio": True, "abinit_settings": dataclasses.asdict(abinit),
        "total_seconds": time.perf_counter() - started})


def _run_abinit_classes(args: argparse.Namespace, particles) -> None:
    """``cryosparc-abinit --classes K``: K initial models from nothing, then 3-D classes.

    The K-class initial models (:mod:`cryoviz.inference.abinit_classes`; each
    class is one random start, and ``--abinit-starts`` restarts the K-class run,
    keeping the K maps of all restarts that explain a common image set best) are
    written as ``volumes/abinit_mixture_class_#.mrc`` with the particles' classes
    under them (``abinit_classes.npz``). Then each class's particles get an
    initial model of their own (``--abinit-starts`` starts, screened from
    ``--abinit-screen`` starts, by default 4 per start kept; checkpoints in
    ``class_<k>_abinit/``), written as ``volumes/abinit_class_#.mrc``; the
    classification with poses searched starts from those and writes what
    ``relion-class3d --initial-map`` writes, plus ``log.jsonl``. ``--resume``
    keeps initial models already written and continues the classification from
    its checkpoint; without them, the initial models continue from their
    checkpoints (finished stages are kept).
    """
    from cryoviz.inference.abinit_classes import ClassAbinitProgress  # noqa: PLC0415
    from cryoviz.inference.abinit_pipeline import (  # noqa: PLC0415
        ClassMapProgress,
        iter_class_ab_initio,
        progress_record,
    )
    from cryoviz.inference.class_refine import write_class_refine  # noqa: PLC0415
    from cryoviz.io.mrc import read_volume  # noqa: PLC0415

    k_classes = args.classes
    if k_classes < 2:
        raise InputError(None, "--classes", "at least 2 for cryosparc-abinit (one class: leave "
                         "--classes out)", k_classes)
    abinit = abinit_settings(args, particles, classes=True)
    refine = abinit_refinement(args, abinit, modal=True, classes=True)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    apix = particles.pixel_size_angstrom
    log = _RunLog(out, args.resume)
    saved = [out / "volumes" / f"abinit_class_{k}.mrc" for k in range(k_classes)]
    initial = None
    if args.resume and all(path.is_file() for path in saved):
        initial = torch.stack([torch.as_tensor(read_volume(path)[0]) for path in saved])
        print(f"resuming after the initial models in {out / 'volumes'}", file=sys.stderr,
              flush=True)
    result = None
    started = time.perf_counter()
    for state in iter_class_ab_initio(particles, k_classes, abinit, refine, device=args.device,
                                      checkpoint_dir=out, initial_maps=initial,
                                      resume=args.resume):
        first_new = log.add(progress_record(state))
        if isinstance(state, ClassAbinitProgress):
            _report_class_abinit(state, first_new, out, particles, apix)
        elif isinstance(state, ClassMapProgress):
            _report_class_map(state, first_new, saved, apix, abinit)
        else:
            fractions = ", ".join(f"{f:.2f}" for f in state.class_fractions)
            print(f"classes iteration {state.iteration}/{state.n_iterations}"
                  f"{' global' if state.global_search else ' local'}  E-step to "
                  f"{state.e_step_resolution_angstrom:.1f} Å  fractions {fractions}  changed "
                  f"{state.changed_fraction:.3f}  {state.seconds:.1f} s", file=sys.stderr,
                  flush=True)
            result = state.result if state.result is not None else result
    write_class_refine(result, particles, out, extra_metrics={
        "recipe": args.recipe, "ab_initio": True, "abinit_settings": dataclasses.asdict(abinit),
        "total_seconds": time.perf_counter() - started})


def _report_class_abinit(state, first_new: bool, out: Path, particles, apix: float) -> None:
    """Print a K-class initial-model step; write its maps and classes after the last one."""
    import numpy as np  # noqa: PLC0415

    from cryoviz.io.mrc import atomic_output, write_volume  # noqa: PLC0415

    if first_new:
        print(f"initial models continue at step {state.step} of restart "
              f"{state.start + 1}/{state.n_starts}", file=sys.stderr, flush=True)
    if state.step % 10 == 0 or state.result is not None:
        fractions = ", ".join(f"{f:.2f}" for f in state.class_fractions)
        print(f"initial models restart {state.start + 1}/{state.n_starts} step "
              f"{state.step}/{state.n_steps}  limit {state.resolution_angstrom:.1f} Å  "
              f"fractions {fractions}  {state.images_per_second:.0f} images/s  "
              f"{state.elapsed_seconds:.0f} s", file=sys.stderr, flush=True)
    if state.result is None:
        return
    first = state.result
    with atomic_output(out / "abinit_classes.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, posteriors=first.posteriors, best_class=first.best_class,
                 particle_ids=np.asarray(particles.particle_ids, dtype=np.int64),
                 chosen_maps=np.asarray(first.chosen_maps, dtype=np.int64),
                 start_log_likelihoods=np.asarray(first.start_log_likelihoods),
                 log_likelihood=first.log_likelihood)
    for k, volume in enumerate(first.maps):
        write_volume(out / "volumes" / f"abinit_mixture_class_{k}.mrc", volume.numpy(), apix)


def _report_class_map(state, first_new: bool, saved: list[Path], apix: float,
                      settings) -> None:
    """Print a step of one class's own initial model; write every class's map at the end."""
    from cryoviz.io.mrc import write_volume  # noqa: PLC0415

    if state.maps is not None:
        for path, volume in zip(saved, state.maps, strict=True):
            write_volume(path, volume.numpy(), apix)
        return
    p = state.progress
    if first_new:
        print(f"class {state.class_index}'s initial model continues at "
              f"{start_label(p, settings)} step {p.step}", file=sys.stderr, flush=True)
    if p.step % 10 == 0 or p.step == p.n_steps:
        print(f"class {state.class_index} ({state.n_particles} particles) initial model "
              f"{start_label(p, settings)} step {p.step}/{p.n_steps}  limit "
              f"{p.resolution_angstrom:.1f} Å  "
              f"{p.elapsed_seconds:.0f} s", file=sys.stderr, flush=True)
