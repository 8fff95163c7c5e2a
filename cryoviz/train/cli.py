"""``cryoviz train`` and ``cryoviz eval-vol`` (the lead wires them into :mod:`cryoviz.cli`).

Progress is printed to stderr as plain text.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from cryoviz.errors import InputError, TrainingDiverged

if TYPE_CHECKING:
    from cryoviz.train.recipes import Recipe

__all__ = ["add_parsers", "run", "parse_z", "recipe_settings", "precision_hint"]

_DEFAULT_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def add_parsers(subparsers) -> None:
    """Add the ``train`` and ``eval-vol`` sub-commands to an argparse ``subparsers``."""
    from cryoviz.train.cli_algorithms import OWN_ALGORITHM  # noqa: PLC0415
    from cryoviz.train.recipes import RECIPES  # noqa: PLC0415

    tr = subparsers.add_parser("train", help="run a recipe: a (heterogeneous) volume model with "
                               "given or inferred poses")
    tr.add_argument("particles", help="particles: .star, .cs or .mrcs (with --poses/--ctf)")
    names = [*RECIPES, *OWN_ALGORITHM]
    tr.add_argument("--recipe", required=True, help=f"one of {', '.join(names)}")
    tr.add_argument("-o", "--output", required=True, help="run folder")
    tr.add_argument("--epochs", type=int)
    tr.add_argument("--zdim", type=int)
    tr.add_argument("--box", type=int, help="downsample images to this box (Fourier crop)")
    tr.add_argument("--batch-size", type=int)
    tr.add_argument("--lr", type=float)
    tr.add_argument("--width", type=int, help="decoder width (cryoDRGN --dec-dim)")
    tr.add_argument("--depth", type=int, help="decoder hidden layers (cryoDRGN --dec-layers)")
    tr.add_argument("--enc-width", type=int, help="image encoder width (cryoDRGN --enc-dim)")
    tr.add_argument("--enc-depth", type=int,
                    help="image encoder hidden layers (cryoDRGN --enc-layers + 1)")
    tr.add_argument("--pe-dim", type=int,
                    help="random Fourier-feature frequencies of the implicit decoder "
                    "(default 3 * (box // 2), as cryoDRGN's --pe-dim)")
    tr.add_argument("--beta", type=float,
                    help="KL weight (default: the recipe's; 1 / zdim for cryodrgn, as "
                    "cryoDRGN; 4 for e2gmm)")
    tr.add_argument("--kl-warmup-epochs", type=float,
                    help="raise the KL weight linearly from 0 to --beta over this many "
                    "epochs (default: the recipe's; 4 for e2gmm, else 0: the full weight "
                    "from the first step)")
    tr.add_argument("--gaussians", type=int,
                    help="Gaussians of a reference-free Gaussian-mixture volume (e2gmm; "
                    "default box**3 // 128 of the training box: 2048 at box 64)")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="any other recipe setting, e.g. --set weight_decay=1e-4 --set "
                    "contact_cutoff_angstrom=8 (repeatable; the names are the fields of "
                    "cryoviz.train.recipes.Recipe)")
    tr.add_argument("--seed", type=int)
    tr.add_argument("--resume", action="store_true",
                    help="continue from the last checkpoint (settings not given are the run's)")
    tr.add_argument("--device", default=_DEFAULT_DEVICE,
                    help="cpu or cuda (default: cuda when one is visible); under torchrun, "
                    "cuda means cuda:LOCAL_RANK")
    tr.add_argument("--precision", choices=("fp32", "bf16", "fp16"),
                    help="autocast dtype of the networks (default fp32; fp16 needs CUDA)")
    tr.add_argument("--reference",
                    help="reference-based model: the structure (PDB / mmCIF, or the built-in "
                    "4ake / 1ake) or map (MRC) the Gaussians start from (e2gmm, cryofold: "
                    "structure only) or V0 of V(z) = V0 + dV(z) (cryodrgn, cryodrgn-ae, "
                    "autodecoder)")
    tr.add_argument("--encoder", choices=("vae", "ae", "table", "joint", "none"),
                    help="latent encoder: image MLP (vae / ae), per-particle table, 'joint' "
                    "(a VAE head on the amortized pose encoder's CNN, atomvae) or none")
    tr.add_argument("--domain", choices=("fourier", "hartley"),
                    help="implicit volume output: 'fourier' (default since 2026-12-05, "
                    "half-space reads) or 'hartley' (the earlier default)")
    tr.add_argument("--encoder-input", choices=("real", "hartley", "fit_gradient"),
                    help="encoder input: the pixels, their Hartley transform, or (gmm "
                    "recipes, given poses) the gradient of each particle's fit with "
                    "respect to the mixture (e2gmm's default since 2026-12-07 where its "
                    "poses are given; 'real' before)")
    tr.add_argument("--encoder-centre", action=argparse.BooleanOptionalAction,
                    help="encode each image moved back by its given shift (default: on, "
                    "as cryoDRGN; runs before 2026-12-05 had it off)")
    tr.add_argument("--encoder-phase-flip", action=argparse.BooleanOptionalAction,
                    help="encode each image phase-flipped by the sign of its CTF (default: "
                    "on, as cryoDRGN; runs before 2026-12-05 had it off)")
    tr.add_argument("--pose-only-epochs", type=int,
                    help="amortized poses: epochs that train the pose encoder alone against "
                    "the reference at z = 0 (atomvae) or the --initial-map (cryoai, "
                    "cryoposenet; all epochs: the map stays fixed)")
    tr.add_argument("--pose-heads", type=int,
                    help="amortized poses (atomvae, cryoai, cryoposenet): pose hypotheses "
                    "per image (winner-takes-all)")
    tr.add_argument("--stack", help="use this image stack instead of the metadata's")
    tr.add_argument("--poses", help="cryoDRGN pose pickle")
    tr.add_argument("--ctf", help="cryoDRGN CTF pickle")
    tr.add_argument("--datadir", help="folder of the stacks named in the metadata")
    tr.add_argument("--classes", type=int, default=None,
                    help="K for relion-class3d (EM over classes; known poses, or searched "
                         "with --initial-map; default 2) and cryosparc-abinit (K initial "
                         "models from nothing, then classes with poses searched)")
    tr.add_argument("--components", type=int,
                    help="K of the linear subspace: 3dva (PPCA-EM, known poses; default 2), "
                    "multi-cryogan (adversarial, no poses; default 1)")
    tr.add_argument("--filter-resolution", type=float,
                    help="3dva: filter resolution in Å (as cryoSPARC's 3DVA): the E-step "
                    "reads Fourier pixels up to it and the components are low-passed to it; "
                    "without --box the working box is the one whose Nyquist it is (default: "
                    "a 32 px working box)")
    tr.add_argument("--mask", help="focus mask (MRC on the particles' grid, values in "
                    "[0, 1], soft edges recommended). 3dva: the components describe the "
                    "variability inside it; relion-class3d (known poses): focused "
                    "classification, the images minus the consensus outside the mask")
    tr.add_argument("--initial-map", help="relion-refine: starting map (MRC), low-passed; "
                    "without it, relion-refine builds one ab initio first. relion-class3d: "
                    "one map (every class, random first classes) or K comma-separated maps "
                    "(one per class); the poses are then searched. cryoai, cryoposenet: "
                    "the voxel map starts from it (see --pose-only-epochs)")
    tr.add_argument("--volume-uncertainty", action="store_true",
                    help="fstdiff: also write volumes/uncertainty.mrc, the per-voxel spread "
                    "of the map over the pose posteriors")
    tr.add_argument("--initial-lowpass", type=float, default=20.0,
                    help="relion-refine, fstdiff, cryoai, cryoposenet: low-pass of the "
                    "starting map in Å (default 20)")
    tr.add_argument("--healpix-order", type=int, default=1,
                    help="relion-refine: HEALPix order of the global search (default 1)")
    tr.add_argument("--max-order", type=int, default=4,
                    help="relion-refine: finest HEALPix order of the local search")
    tr.add_argument("--global-iterations", type=int, default=None,
                    help="iterations with a global pose search: relion-refine and "
                    "relion-class3d with --initial-map (default 2); the refinement or "
                    "classification after ab initio (cryosparc-abinit, relion-refine without "
                    "--initial-map; default 1, with --classes 3)")
    tr.add_argument("--abinit-steps", type=int, default=150,
                    help="cryosparc-abinit, relion-refine without --initial-map: minibatch "
                    "steps of the initial model (default 150)")
    tr.add_argument("--abinit-starts", type=int, default=3,
                    help="independent starts of the initial model; the best is kept (default 3; "
                    "with --classes: restarts of the K-class run, the K maps of all restarts "
                    "that explain the images best are kept)")
    tr.add_argument("--abinit-screen", type=int, default=None,
                    help="screen this many random starts of the one-class initial model(s) "
                    "for --abinit-screen-steps steps and take the --abinit-starts of largest "
                    "evidence on to the end; 0: no screening (default: 0 for one map; with "
                    "--classes 4 x --abinit-starts for each class's own initial model)")
    tr.add_argument("--abinit-screen-steps", type=int, default=None,
                    help="steps of a screened start before the screen (default: half of "
                    "--abinit-steps)")
    tr.add_argument("--abinit-box", type=int, default=32,
                    help="working box of the initial model (default 32, at most the box)")
    tr.set_defaults(func=_run_train)

    ev = subparsers.add_parser("eval-vol", help="render maps of a trained run at latents z")
    ev.add_argument("run_dir", help="the training run folder")
    ev.add_argument("--z", help='one latent, comma separated ("0.1,0.2")')
    ev.add_argument("--z-file", help="latents, one per line (whitespace separated)")
    ev.add_argument("--path", nargs=2, type=int, metavar=("A", "B"),
                    help="maps along the line between the latent means of particles A and B")
    ev.add_argument("--n", type=int, default=10, help="maps along --path")
    ev.add_argument("--box", type=int, help="render at this box (same physical extent)")
    ev.add_argument("-o", "--output", required=True, help="output folder for the maps")
    ev.add_argument("--device", default=_DEFAULT_DEVICE,
                    help="cpu or cuda (default: cuda when one is visible)")
    ev.set_defaults(func=_run_eval)


def parse_z(text: str) -> np.ndarray:
    """``"0.1,0.2"`` -> ``(1, 2)`` float array (InputError when not numbers)."""
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise InputError(None, "--z", "comma-separated numbers", text) from None
    if not values:
        raise InputError(None, "--z", "comma-separated numbers", text)
    return np.asarray(values, dtype=np.float64)[None]


def _run_train(args: argparse.Namespace) -> int:
    from cryoviz.train.cli_algorithms import OWN_ALGORITHM, run_algorithm  # noqa: PLC0415
    from cryoviz.train.distributed import (  # noqa: PLC0415
        exit_if_left_group,
        init_distributed,
        shutdown_distributed,
    )
    from cryoviz.train.recipes import RECIPES  # noqa: PLC0415

    if args.recipe in OWN_ALGORITHM:
        if args.set:
            raise InputError(None, "--set", "a recipe of the training loop "
                             f"({', '.join(RECIPES)}); {args.recipe} has its own options",
                             " ".join(args.set))
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise InputError(None, "--recipe", f"one of {', '.join(RECIPES)} under torchrun "
                             "(data-parallel training)", args.recipe)
        return run_algorithm(args)
    if args.mask is not None:
        raise InputError(None, "--mask", "a recipe that takes a focus mask (3dva, "
                         "relion-class3d)", args.recipe)
    info, args.device = init_distributed(args.device)  # a no-op outside torchrun
    try:
        status = _run_loop(args, info)
    finally:
        left = shutdown_distributed()
    exit_if_left_group(status, left)  # a torchrun worker ends here
    return status


def _reference_path(reference: str | None) -> str | None:
    """A reference file as an absolute path (the run reloads it later); names as given."""
    if reference is None or not Path(reference).exists():
        return reference
    return str(Path(reference).resolve())


def recipe_settings(args: argparse.Namespace) -> dict:
    """The recipe settings of a ``cryoviz train`` command line (``None``: not given).

    The options of their own, then every ``--set KEY=VALUE``
    (:func:`cryoviz.train.recipe_settings.parse_setting`).

    Raises
    ------
    InputError
        For a malformed or unknown ``--set``, or one that repeats a setting given by
        its own option or by an earlier ``--set``.
    """
    from cryoviz.train.recipe_settings import parse_setting  # noqa: PLC0415

    given = dict(epochs=args.epochs, zdim=args.zdim, box=args.box,
                 batch_size=args.batch_size, lr=args.lr, width=args.width,
                 depth=args.depth, enc_width=args.enc_width, enc_depth=args.enc_depth,
                 pe_dim=args.pe_dim, beta=args.beta, kl_warmup_epochs=args.kl_warmup_epochs,
                 gaussians=args.gaussians,
                 seed=args.seed, precision=args.precision,
                 reference=_reference_path(args.reference),
                 pose_only_epochs=args.pose_only_epochs, pose_heads=args.pose_heads,
                 encoder_input=args.encoder_input, encoder=args.encoder, domain=args.domain,
                 encoder_centre=args.encoder_centre, encoder_phase_flip=args.encoder_phase_flip)
    seen: set[str] = set()
    for item in args.set:
        key, value = parse_setting(item)
        if given.get(key) is not None or key in seen:
            raise InputError(None, "--set", f"each setting once ({key} is also given by "
                             f"--{key.replace('_', '-')} or another --set)", item)
        seen.add(key)
        given[key] = _reference_path(value) if key == "reference" else value
    return given


def precision_hint(recipe: Recipe, device: str | torch.device, resume: bool = False
                   ) -> str | None:
    """A hint to train in bfloat16, or ``None``.

    Given for a float32 run of a recipe with an implicit (MLP) volume on a CPU
    that multiplies bfloat16 natively (:func:`cryoviz.train.distributed.bf16_is_fast`),
    not when resuming (a run keeps its precision).
    """
    from cryoviz.train.distributed import bf16_is_fast  # noqa: PLC0415

    device = torch.device(device)
    if (resume or recipe.precision != "fp32" or device.type != "cpu"
            or recipe.volume != "implicit" or not bf16_is_fast(device)):
        return None
    return ("hint: this CPU multiplies bfloat16 natively; --precision bf16 trains the "
            "networks 1.7-2.9x faster per epoch on the CPUs measured, with maps as good "
            "as float32's (docs/benchmarks.md)")


def _run_loop(args: argparse.Namespace, info) -> int:
    """Recipes of the shared loop, in one process or as one rank of a torchrun job."""
    from cryoviz.io.particles import load_particles  # noqa: PLC0415
    from cryoviz.train.evaluate import saved_recipe  # noqa: PLC0415
    from cryoviz.train.loop import iter_train  # noqa: PLC0415
    from cryoviz.train.recipes import get_recipe  # noqa: PLC0415

    given = recipe_settings(args)
    # --resume: settings not given on the command line are the run's, not today's
    # defaults (a default that changed since the run started must not block it)
    recipe = get_recipe(args.recipe, base=saved_recipe(args.output) if args.resume else None,
                        **given)
    particles = load_particles(args.particles, stack=args.stack, poses=args.poses,
                               ctf=args.ctf, datadir=args.datadir,
                               require_poses=recipe.poses == "given")
    say = info.is_main  # rank 0 alone prints
    if say:
        ranks = f" on {info.world_size} ranks" if info.enabled else ""
        print(f"training {recipe.name} on {len(particles)} particles{ranks} -> {args.output}",
              file=sys.stderr, flush=True)
        hint = precision_hint(recipe, args.device, args.resume)
        if hint:
            print(hint, file=sys.stderr, flush=True)
    for p in iter_train(particles, recipe, args.output, resume=args.resume,
                        device=args.device):
        if say:
            print(f"epoch {p.epoch}/{p.epochs}  loss {p.loss:.5f}  kl {p.kl:.3f}  "
                  f"{p.seconds:.1f} s", file=sys.stderr, flush=True)
    if say:  # rank 0 alone prints
        print(f"done: {Path(args.output)}", file=sys.stderr, flush=True)
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    from cryoviz.analysis.trajectories import straight_path  # noqa: PLC0415
    from cryoviz.train.evaluate import (  # noqa: PLC0415
        eval_volumes,
        load_run,
        voxel_size,
        write_volumes,
    )

    run = load_run(args.run_dir, device=args.device)
    given = [x is not None for x in (args.z, args.z_file, args.path)]
    if run.latent_dim == 0:
        z = None
    elif sum(given) != 1:
        raise InputError(None, "--z / --z-file / --path", "exactly one of them",
                         got=f"{sum(given)} given")
    elif args.z is not None:
        z = parse_z(args.z)
    elif args.z_file is not None:
        try:
            z = np.loadtxt(args.z_file, dtype=np.float64, ndmin=2)
        except (OSError, ValueError) as err:
            raise InputError(args.z_file, "latents", "numbers, one latent per line",
                             got=str(err)) from None
    else:
        if run.mu is None:
            raise InputError(run.path / "latents.npz", "mu", "the run's latent means",
                             got="no latents.npz")
        a, b = args.path
        n = len(run.mu)
        if not (0 <= a < n and 0 <= b < n):
            raise InputError(None, "--path", f"particle indices in [0, {n})", (a, b))
        z = straight_path(run.mu[a], run.mu[b], args.n)
    if z is not None and z.shape[-1] != run.latent_dim:
        raise InputError(None, "z", f"latents of length {run.latent_dim}",
                         got=f"length {z.shape[-1]}")
    maps = eval_volumes(run, z, box_size=args.box)
    paths = write_volumes(maps, args.output, voxel_size(run, args.box))
    if z is not None:
        np.savetxt(Path(args.output) / "z_values.txt", z)
    print(f"wrote {len(paths)} maps to {args.output}", file=sys.stderr, flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the parsed ``train`` / ``eval-vol`` command; 0 on success, 2 on bad input,
    1 when training diverged."""
    try:
        return int(args.func(args))
    except InputError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 1
