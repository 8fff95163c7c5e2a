"""``cryoviz train`` for the recipes with their own algorithm (not the shared training loop).

Exact EM (``relion-refine``, ``relion-class3d``), ab initio (``cryosparc-abinit``),
variational EM (``fstdiff``), PPCA (``3dva``), amortized poses (``cryoai``,
``cryoposenet``), adversarial (``cryogan``, ``multi-cryogan``) and ``cryovaegan``: each recipe
loads its particles with what it requires (:data:`RUNNERS`), runs its
algorithm's generator while printing one progress line per state to stderr,
and writes its run folder. Ab initio runs in :mod:`cryoviz.train.cli_abinit`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from cryoviz.errors import InputError

__all__ = ["OWN_ALGORITHM", "CHECKPOINTING", "RUNNERS", "run_algorithm"]


def _read_particle_map(name: str, particles) -> torch.Tensor:
    """A map (MRC) on the particles' grid: box and voxel size checked against theirs."""
    from cryoviz.io.mrc import read_volume_on_grid  # noqa: PLC0415

    return torch.as_tensor(read_volume_on_grid(name, particles.box_size,
                                               particles.pixel_size_angstrom, "the particles'"))


def _read_mask(args: argparse.Namespace, particles) -> torch.Tensor | None:
    """The ``--mask`` focus mask on the particles' grid, checked (errors name the file)."""
    from cryoviz.inference.focus_mask import read_focus_mask  # noqa: PLC0415

    return None if args.mask is None else read_focus_mask(
        args.mask, particles.box_size, particles.pixel_size_angstrom)


def _read_start_maps(args: argparse.Namespace, particles) -> list[torch.Tensor]:
    """The ``--initial-map`` file(s) (comma-separated), box and voxel size checked."""
    return [_read_particle_map(name, particles)
            for name in (n for n in args.initial_map.split(",") if n)]


def global_search_iterations(args: argparse.Namespace, iterations: int, default: int) -> int:
    """``--global-iterations`` (``default`` when not given), at most ``iterations``."""
    n_global = default if args.global_iterations is None else args.global_iterations
    if n_global < 0:
        raise InputError(None, "--global-iterations", "0 or more", n_global)
    return min(n_global, iterations)


def _pose_settings(args: argparse.Namespace, iterations: int):
    """:class:`RefineSettings` from the pose-search options."""
    from cryoviz.inference.refine import RefineSettings  # noqa: PLC0415

    return RefineSettings(
        n_iterations=iterations, global_order=args.healpix_order,
        n_global_iterations=global_search_iterations(args, iterations, default=2),
        max_order=args.max_order, initial_lowpass_angstrom=args.initial_lowpass,
        batch_size=args.batch_size or 64, seed=args.seed if args.seed is not None else 0)


def _run_class_refine(args: argparse.Namespace, particles) -> int:
    """``relion-class3d --initial-map``: classes and poses by exact EM (poses searched)."""
    from cryoviz.inference.class_refine import (  # noqa: PLC0415
        iter_class_refine,
        write_class_refine,
    )

    maps = _read_start_maps(args, particles)
    k_classes = 2 if args.classes is None else args.classes
    if len(maps) not in (1, k_classes):
        raise InputError(args.initial_map, "--initial-map",
                         f"one map or {k_classes} (--classes) maps", got=f"{len(maps)} maps")
    settings = _pose_settings(args, args.epochs if args.epochs else 8)
    progress = iter_class_refine(
        particles, maps[0] if len(maps) == 1 else None, k_classes, settings,
        device=args.device, initial_maps=None if len(maps) == 1 else torch.stack(maps),
        checkpoint_dir=args.output, resume=args.resume)
    result = _follow(progress, lambda p: (
        f"iteration {p.iteration}/{p.n_iterations}"
        f"{' global' if p.global_search else ' local'}  E-step to "
        f"{p.e_step_resolution_angstrom:.1f} Å  log-likelihood {p.log_likelihood:.1f}  "
        f"fractions {', '.join(f'{f:.2f}' for f in p.class_fractions)}  changed "
        f"{p.changed_fraction:.3f}  {p.seconds:.1f} s"))
    write_class_refine(result, particles, args.output)
    return _done(args)


def _run_class3d(args: argparse.Namespace, particles) -> int:
    """``relion-class3d``: exact EM over K classes, known poses (searched with --initial-map)."""
    from cryoviz.inference.class_em import iter_class_em, write_class_em  # noqa: PLC0415

    if args.initial_map is not None:
        if args.mask is not None:
            raise InputError(None, "--mask", "relion-class3d without --initial-map (focused "
                             "classification with known poses; not with searched poses)",
                             args.mask)
        return _run_class_refine(args, particles)
    if args.resume:
        raise InputError(None, "--resume", "relion-class3d with --initial-map (the known-pose "
                         "classification writes no checkpoints)", "--resume")
    result = None
    for p in iter_class_em(particles, 2 if args.classes is None else args.classes,
                           n_iterations=args.epochs if args.epochs else 10,
                           seed=args.seed if args.seed is not None else 0,
                           device=args.device, mask=_read_mask(args, particles)):
        fractions = ", ".join(f"{f:.2f}" for f in p.class_fractions)
        print(f"iteration {p.iteration}  log-likelihood {p.log_likelihood:.1f}  "
              f"fractions {fractions}  changed {p.changed_fraction:.3f}",
              file=sys.stderr, flush=True)
        result = p.result if p.result is not None else result
    write_class_em(result, args.output)
    return _done(args)


def _run_3dva(args: argparse.Namespace, particles) -> int:
    """``3dva``: linear subspace V0 + sum z_k U_k by PPCA-EM with known poses."""
    from cryoviz.inference.ppca import iter_ppca, write_ppca  # noqa: PLC0415

    res = args.filter_resolution
    if res is not None and not (math.isfinite(res) and res > 0):
        raise InputError(None, "--filter-resolution", "a positive number of Å", res)
    result = None
    for p in iter_ppca(particles,
                       n_components=2 if args.components is None else args.components,
                       n_iterations=args.epochs if args.epochs else 10,
                       box_size=args.box, resolution_angstrom=args.filter_resolution,
                       seed=args.seed if args.seed is not None else 0,
                       device=args.device, mask=_read_mask(args, particles)):
        stds = ", ".join(f"{s:.3g}" for s in p.component_std)
        print(f"iteration {p.iteration}  log-likelihood {p.log_likelihood:.1f}  "
              f"component std {stds}", file=sys.stderr, flush=True)
        result = p.result if p.result is not None else result
    write_ppca(result, args.output)
    return _done(args)


def _run_abinit(args: argparse.Namespace, particles) -> int:
    """Ab initio, one map or K classes (:mod:`cryoviz.train.cli_abinit`)."""
    from cryoviz.train.cli_abinit import run_ab_initio  # noqa: PLC0415

    run_ab_initio(args, particles)
    return _done(args)


def _run_refine(args: argparse.Namespace, particles) -> int:
    """``relion-refine``: map and poses by exact EM over SO(3) x shifts (poses unknown)."""
    from cryoviz.inference.refine import iter_refine, write_refine  # noqa: PLC0415

    if args.initial_map is None:
        return _run_abinit(args, particles)
    initial = _read_start_maps(args, particles)
    if len(initial) != 1:
        raise InputError(args.initial_map, "--initial-map", "one map", got=f"{len(initial)}")
    settings = _pose_settings(args, args.epochs if args.epochs else 6)
    progress = iter_refine(particles, initial[0], settings, device=args.device,
                           checkpoint_dir=args.output, resume=args.resume)
    result = _follow(progress, lambda p: (
        f"iteration {p.iteration}/{p.n_iterations}  order {p.coarse_order}"
        f"{' global' if p.global_search else ' local'}  E-step to "
        f"{p.e_step_resolution_angstrom:.1f} Å  resolution {p.resolution_angstrom:.1f} Å  "
        f"median change {p.median_angular_change_deg:.2f} deg  {p.seconds:.1f} s"))
    write_refine(result, particles, args.output)
    return _done(args)


def _follow(progress: Iterable, line: Callable[[Any], str]) -> Any:
    """Print ``line(state)`` to stderr for every progress state; return the last result.

    The states of the algorithms run here carry ``result`` (None until the end).
    """
    result = None
    for state in progress:
        print(line(state), file=sys.stderr, flush=True)
        result = state.result if state.result is not None else result
    return result


def _done(args: argparse.Namespace) -> int:
    print(f"done: {Path(args.output)}", file=sys.stderr, flush=True)
    return 0


def _steps_per_epoch(settings: Any, n_particles: int) -> int:
    """Optimiser steps of one pass over ``n_particles`` in ``settings.batch_size`` batches."""
    return -(-n_particles // settings.batch_size)


def _steps_for_epochs(settings: Any, n_particles: int, epochs: int | None) -> Any:
    """``settings`` with ``n_steps`` for ``epochs`` passes of ``settings.batch_size`` images."""
    if not epochs:
        return settings
    return dataclasses.replace(settings, n_steps=epochs * _steps_per_epoch(settings,
                                                                           n_particles))


def _run_fstdiff(args: argparse.Namespace, particles) -> int:
    """``fstdiff``: map and per-particle Gaussian pose posteriors by variational EM."""
    from cryoviz.inference.variational import (  # noqa: PLC0415
        VariationalSettings,
        iter_variational,
        write_variational,
    )
    if args.initial_map is None:
        raise InputError(None, "--initial-map", "a starting map (MRC) for fstdiff")
    initial = _read_particle_map(args.initial_map, particles)
    settings = VariationalSettings(
        n_epochs=args.epochs or 5, coarse_order=args.healpix_order,
        initial_lowpass_angstrom=args.initial_lowpass, batch_size=args.batch_size or 64,
        seed=args.seed if args.seed is not None else 0,
        volume_uncertainty=args.volume_uncertainty)
    result = _follow(iter_variational(particles, initial, settings, device=args.device),
                     lambda p: (
        f"epoch {p.epoch}/{p.n_epochs}  E-step to {p.e_step_resolution_angstrom:.1f} Å  "
        f"resolution {p.resolution_angstrom:.1f} Å  ELBO {p.elbo:.1f}  median spread "
        f"{p.median_angular_spread_deg:.2f} deg  {p.seconds:.1f} s"))
    write_variational(result, particles, args.output)
    return _done(args)


def _run_cryovaegan(args: argparse.Namespace, particles) -> int:
    """``cryovaegan``: in-plane angle and CTF per image by a VAE-GAN, no volume, no poses."""
    from cryoviz.inference.vaegan.train import CryoVAEGANSettings, iter_cryovaegan  # noqa: PLC0415

    given = {"epochs": args.epochs, "latent_dim": args.zdim, "box": args.box,
             "batch_size": args.batch_size, "lr": args.lr, "width": args.width,
             "seed": args.seed}
    settings = CryoVAEGANSettings(**{k: v for k, v in given.items() if v is not None})
    if particles.ctf is not None:  # microscope constants only; defoci are estimated
        c = particles.ctf.as_numpy()
        settings = dataclasses.replace(settings, voltage_kv=float(c["voltage_kv"][0]),
                                       cs_mm=float(c["cs_mm"][0]),
                                       amplitude_contrast=float(c["amplitude_contrast"][0]))
    print(f"training cryovaegan on {len(particles)} particles -> {args.output}",
          file=sys.stderr, flush=True)
    for p in iter_cryovaegan(particles, settings, args.output, resume=args.resume):
        print(f"epoch {p.epoch}/{p.epochs}  loss {p.loss:.4f}  reconstruction "
              f"{p.reconstruction:.4f}  kl {p.kl:.3f}  geometric {p.geometric:.3f}  "
              f"sleep {p.sleep:.3f}  discriminator {p.discriminator:.3f}  {p.seconds:.1f} s",
              file=sys.stderr, flush=True)
    return _done(args)


def _run_amortized(args: argparse.Namespace, particles) -> int:
    """``cryoai`` / ``cryoposenet``: CNN pose encoder and map trained jointly (poses unknown).

    ``--pose-heads`` sets the encoder's pose hypotheses per image. With
    ``--initial-map`` the map is a voxel grid started from that map (low-passed
    to ``--initial-lowpass``), and the first ``--pose-only-epochs`` epochs train
    the encoder alone against it; as many pose-only epochs as ``--epochs`` keep
    the map fixed throughout (the pose-only task: poses against a known map).
    """
    from cryoviz.inference.amortized_pose import (  # noqa: PLC0415
        AmortizedPoseSettings,
        iter_amortized_pose,
    )
    from cryoviz.inference.amortized_pose_output import write_amortized_pose  # noqa: PLC0415

    given = {"batch_size": args.batch_size, "lr_encoder": args.lr, "seed": args.seed,
             "heads": args.pose_heads}
    initial = None
    if args.initial_map is not None:
        maps = _read_start_maps(args, particles)
        if len(maps) != 1:
            raise InputError(args.initial_map, "--initial-map", f"one map for {args.recipe}",
                             got=f"{len(maps)} maps")
        initial = maps[0]
        given.update(volume="voxel", initial_lowpass_angstrom=args.initial_lowpass)
    settings = AmortizedPoseSettings(recipe=args.recipe,
                                     **{k: v for k, v in given.items() if v is not None})
    settings = _steps_for_epochs(settings, len(particles), args.epochs)
    if args.pose_only_epochs:
        if initial is None:
            raise InputError(None, "--pose-only-epochs", f"--initial-map with {args.recipe} "
                             "(the encoder learns against it)", args.pose_only_epochs)
        per_epoch = _steps_per_epoch(settings, len(particles))
        steps = args.pose_only_epochs * per_epoch
        if steps > settings.n_steps:
            raise InputError(None, "--pose-only-epochs", f"at most the run's epochs "
                             f"({settings.n_steps // per_epoch})", args.pose_only_epochs)
        settings = dataclasses.replace(settings, pose_only_steps=steps)
    result = _follow(iter_amortized_pose(particles, settings, initial_map=initial,
                                         device=args.device), lambda p: (
        f"step {p.step}/{p.n_steps}  loss {p.loss:.4f}  band {p.band:.3f}  "
        f"pi-flipped {p.flipped_fraction:.2f}  {p.seconds:.1f} s"))
    write_amortized_pose(result, particles, args.output)
    return _done(args)


def _run_cryogan(args: argparse.Namespace, particles) -> int:
    """``cryogan``: a homogeneous map learned adversarially (poses never inferred);
    ``multi-cryogan``: maps drawn from a learned linear subspace (``--components``)."""
    from cryoviz.inference.cryogan import CryoGANSettings, iter_cryogan  # noqa: PLC0415
    from cryoviz.inference.cryogan_output import write_cryogan  # noqa: PLC0415

    components = 0
    if args.recipe == "multi-cryogan":
        components = 1 if args.components is None else args.components
        if components < 1:
            raise InputError(None, "--components", "at least 1 for multi-cryogan", components)
    given = {"batch_size": args.batch_size, "lr_volume": args.lr, "seed": args.seed,
             "components": components}
    settings = CryoGANSettings(**{k: v for k, v in given.items() if v is not None})
    settings = _steps_for_epochs(settings, len(particles), args.epochs)
    result = _follow(iter_cryogan(particles, settings, device=args.device,
                                  output_dir=args.output, resume=args.resume), lambda p: (
        f"step {p.step}/{p.n_steps}  Wasserstein {p.wasserstein:.4f}  "
        f"critic {p.critic_loss:.4f}  band {p.band:.3f}  {p.seconds:.1f} s"))
    write_cryogan(result, particles, args.output)
    return _done(args)


def _class3d_needs(args: argparse.Namespace) -> dict[str, bool]:
    return {"require_ctf": True} if args.initial_map else {"require_poses": True}


# recipe -> (runner, what its particles must have: a dict, or a function of the arguments)
RUNNERS: dict[str, tuple[Callable[[argparse.Namespace, Any], int], Any]] = {
    "cryovaegan": (_run_cryovaegan, {}),
    "relion-refine": (_run_refine, {"require_ctf": True}),
    "cryosparc-abinit": (_run_abinit, {"require_ctf": True}),
    "fstdiff": (_run_fstdiff, {"require_ctf": True}),
    "cryoai": (_run_amortized, {}),
    "cryoposenet": (_run_amortized, {}),
    "cryogan": (_run_cryogan, {"require_ctf": True}),
    "multi-cryogan": (_run_cryogan, {"require_ctf": True}),
    "relion-class3d": (_run_class3d, _class3d_needs),
    "3dva": (_run_3dva, {"require_poses": True}),
}
OWN_ALGORITHM = tuple(RUNNERS)
# recipes whose runs can be resumed (--resume)
CHECKPOINTING = ("cryovaegan", "cryogan", "multi-cryogan", "relion-refine", "cryosparc-abinit",
                 "relion-class3d")  # the last with --initial-map only
# recipes that take a focus mask (--mask)
MASKED = ("3dva", "relion-class3d")


def run_algorithm(args: argparse.Namespace) -> int:
    """Load the particles as ``args.recipe`` needs them and run it; 0 on success."""
    from cryoviz.io.particles import load_particles  # noqa: PLC0415

    if args.recipe not in RUNNERS:
        raise InputError(None, "--recipe", f"one of {', '.join(OWN_ALGORITHM)}", args.recipe)
    if args.resume and args.recipe not in CHECKPOINTING:
        raise InputError(None, "--resume", "a recipe that writes checkpoints (the training "
                         f"loop's, {', '.join(CHECKPOINTING)})", args.recipe)
    if args.mask is not None and args.recipe not in MASKED:
        raise InputError(None, "--mask", f"a recipe that takes a focus mask ({', '.join(MASKED)})",
                         args.recipe)
    runner, needs = RUNNERS[args.recipe]
    needs = needs(args) if callable(needs) else needs
    particles = load_particles(args.particles, stack=args.stack, poses=args.poses, ctf=args.ctf,
                               datadir=args.datadir, **needs)
    return runner(args, particles)
