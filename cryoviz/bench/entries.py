"""The registry of benchmarked recipes: one :class:`BenchEntry` per (recipe, task).

An entry is data: a name, the task it solves, the dataset kinds it applies to,
and a callable ``run(dataset_dir, output_dir, context) -> RunOutputs``. Adding
a method to the leaderboard is one :func:`register` call; pose-inference
recipes return ``RunOutputs(poses_file=<their poses.npz>, volumes=<map>)`` and
are scored by the ``pose`` / ``abinit`` scorers of :mod:`cryoviz.bench.tasks`.
The entries of the EM recipes are in :mod:`cryoviz.bench.entries_em_recipes`,
those of the pose-inference recipes in :mod:`cryoviz.bench.entries_pose_recipes`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cryoviz.bench.tasks import TASKS, RunOutputs
from cryoviz.errors import InputError
from cryoviz.io.particles import ImageSource, ParticleSet, load_particles

__all__ = ["RunContext", "BenchEntry", "ENTRIES", "register", "train_entry", "TRAIN_SETTINGS",
           "HOMOGENEOUS_KINDS", "HETEROGENEOUS_KINDS", "INPLANE_KINDS", "EM_ITERATIONS",
           "VAEGAN_SETTINGS", "STRUCTURE_RECIPES"]

HOMOGENEOUS_KINDS = ("homogeneous",)
HETEROGENEOUS_KINDS = ("mixture", "continuous", "compositional")
INPLANE_KINDS = ("inplane",)

#: Training settings per suite size (applied to every training recipe).
TRAIN_SETTINGS: dict[str, dict] = {
    "tiny": {"epochs": 4, "width": 64, "enc_width": 64, "batch_size": 32, "pe_dim": 32},
    "small": {"epochs": 20, "batch_size": 64},
    "full": {"epochs": 20, "batch_size": 64},
}
#: The recipes that need a base structure: the settings they run with on the bench
#: datasets (the open state, 4AKE) and the dataset kinds they run on (the adenylate
#: kinase mixture and path). Sweeps of them start from the same settings.
STRUCTURE_RECIPES: dict[str, tuple[dict, tuple[str, ...]]] = {
    "cryofold": ({"reference": "4ake"}, ("mixture", "continuous")),
    "atomvae": ({"reference": "4ake", "reference_level": "residue"}, ("mixture", "continuous")),
}
#: EM iterations (relion-class3d, 3dva) per suite size.
EM_ITERATIONS = {"tiny": 5, "small": 10, "full": 15}


@dataclass(frozen=True)
class RunContext:
    """What the harness tells a recipe besides the dataset and output folders.

    Attributes
    ----------
    render
        ``(M,)`` particle indices (file order) whose maps the conformation task
        scores; the recipe returns its maps in this order.
    n_states
        True number of discrete states (0 for a continuous path), for recipes
        that need a class count.
    size
        Suite size (``tiny``, ``small``, ``full``): picks epochs and widths.
    device
        Torch device.
    halves
        Also train on each half of the data, for the half-set latent distance.
    seed
        Seed of the recipe.
    epochs
        Training epochs of every training recipe (and cryoDRGN); None: the
        suite size's (:data:`TRAIN_SETTINGS`, ``e2gmm`` one more).
    em_iterations
        EM iterations (``relion-class3d``, ``3dva``, ``relion-refine``); None:
        the suite size's (:data:`EM_ITERATIONS`).
    """

    render: np.ndarray
    n_states: int = 2
    size: str = "tiny"
    device: str = "cpu"
    halves: bool = True
    seed: int = 0
    epochs: int | None = None
    em_iterations: int | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "em_iterations"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(None, name, "a positive integer", value)

    @property
    def train_epochs(self) -> int:
        """Epochs of a training recipe: :attr:`epochs` or the suite size's."""
        return self.epochs or TRAIN_SETTINGS[self.size]["epochs"]

    @property
    def iterations(self) -> int:
        """EM iterations: :attr:`em_iterations` or the suite size's."""
        return self.em_iterations or EM_ITERATIONS[self.size]


@dataclass(frozen=True)
class BenchEntry:
    """One row source of the leaderboard.

    Attributes
    ----------
    name
        Recipe name as shown in the leaderboard.
    task
        One of :data:`cryoviz.bench.tasks.TASKS`.
    run
        ``run(dataset_dir, output_dir, context) -> RunOutputs``.
    kinds
        Dataset kinds (:data:`cryoviz.bench.suite.KINDS`) the entry runs on.
    description
        One line for the leaderboard's legend.
    """

    name: str
    task: str
    run: Callable[[Path, Path, RunContext], RunOutputs]
    kinds: tuple[str, ...]
    description: str = ""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise InputError(None, "task", f"one of {', '.join(TASKS)}", self.task)


ENTRIES: dict[tuple[str, str], BenchEntry] = {}


def register(entry: BenchEntry) -> BenchEntry:
    """Add (or replace) ``entry`` in :data:`ENTRIES` under ``(name, task)``."""
    ENTRIES[(entry.name, entry.task)] = entry
    return entry


def _particles(dataset: Path) -> ParticleSet:
    return load_particles(dataset / "particles.star", require_poses=True)


# -- homogeneous reconstruction -------------------------------------------------------------
def _reconstruct(method: str, per_particle: bool = False
                 ) -> Callable[[Path, Path, RunContext], RunOutputs]:
    """Homogeneous reconstruction; ``per_particle``: the same map for every rendered particle."""

    def run(dataset: Path, output: Path, ctx: RunContext) -> RunOutputs:
        from cryoviz.reconstruct import reconstruct, write_reconstruction  # noqa: PLC0415

        particles = _particles(dataset)
        result = reconstruct(particles, method=method, epochs=ctx.train_epochs, seed=ctx.seed,
                             device=ctx.device)
        write_reconstruction(result, output)
        maps = result.full_map[None]
        if per_particle:
            maps = maps.expand(len(ctx.render), *maps.shape[1:])
        return RunOutputs(volumes=maps, pixel_size_angstrom=result.pixel_size_angstrom,
                          extra={"resolution_half_maps_0143_angstrom":
                                 result.resolution_angstrom})
    return run


# -- training recipes -----------------------------------------------------------------------
def _recipe(name: str, ctx: RunContext, overrides: dict):
    from cryoviz.train.recipes import get_recipe  # noqa: PLC0415

    settings = {**TRAIN_SETTINGS[ctx.size], "epochs": ctx.train_epochs}
    if name == "e2gmm":  # its own widths and batch; one epoch more than the size's default
        settings = {"epochs": ctx.epochs or settings["epochs"] + 1}
    if name == "voxel-homogeneous":  # no implicit network
        settings = {"epochs": settings["epochs"], "batch_size": settings["batch_size"]}
    if name == "atomvae":  # a quarter of the epochs (at least one) trains the poses alone
        settings["pose_only_epochs"] = max(1, settings["epochs"] // 4)
    return get_recipe(name, **{"seed": ctx.seed, **settings, **overrides})


def _encode(run_dir: Path, particles: ParticleSet, device: str) -> np.ndarray:
    """Latent means of all ``particles`` through a trained run's encoder."""
    from cryoviz.train.data import ParticleBatches  # noqa: PLC0415
    from cryoviz.train.encoder_input import particle_encoder_input  # noqa: PLC0415
    from cryoviz.train.evaluate import load_run  # noqa: PLC0415
    from cryoviz.train.final_outputs import encode_all  # noqa: PLC0415

    run = load_run(run_dir, device=device)
    view = particle_encoder_input(run.recipe, run.encoder, particles, run.pixel_size_angstrom,
                                  device, run.volume)
    with ImageSource(particles) as source:
        batches = ParticleBatches(source, run.recipe.batch_size, seed=run.recipe.seed,
                                  box_size=run.recipe.box)
        mu, _ = encode_all(run.encoder, batches, torch.device(device), view)
    return mu.astype(np.float64)


def train_entry(name: str, **overrides) -> Callable[[Path, Path, RunContext], RunOutputs]:
    """The run of training recipe ``name`` with recipe settings ``overrides`` (sweeps)."""

    def run(dataset: Path, output: Path, ctx: RunContext) -> RunOutputs:
        from cryoviz.reconstruct import half_sets  # noqa: PLC0415
        from cryoviz.train.evaluate import eval_volumes, load_run  # noqa: PLC0415
        from cryoviz.train.loop import train  # noqa: PLC0415

        particles = _particles(dataset)
        recipe = _recipe(name, ctx, overrides)
        train(particles, recipe, output / "all", device=ctx.device)
        run_all = load_run(output / "all", device=ctx.device)
        z = None if run_all.mu is None else run_all.mu.astype(np.float64)
        maps = eval_volumes(run_all, None if z is None else z[ctx.render],
                            box_size=particles.box_size)
        half_latents = None
        if ctx.halves and z is not None and recipe.encoder in ("vae", "ae"):
            halves = half_sets(particles, ctx.seed)
            encoded = []
            for h in (0, 1):
                subset = particles.subset(np.flatnonzero(halves == h))
                train(subset, recipe, output / f"half_{h}", device=ctx.device)
                encoded.append(_encode(output / f"half_{h}", particles, ctx.device))
            half_latents = (encoded[0][halves == 0], encoded[1][halves == 1],
                            encoded[0], encoded[1])
        extra = {"epochs": recipe.epochs, **overrides}
        if recipe.poses == "amortized":  # the poses were inferred, not read
            extra.update(poses="amortized", pose_only_epochs=recipe.pose_only_epochs)
        if z is not None and recipe.volume == "gmm" and recipe.bond_weight > 0:
            extra["ca_rmsd_angstrom"] = _adk_ca_rmsd(run_all, z[ctx.render], dataset,
                                                     ctx.render)
        poses = output / "all" / "poses.npz" if recipe.poses == "amortized" else None
        return RunOutputs(volumes=maps, pixel_size_angstrom=particles.pixel_size_angstrom,
                          z=z, half_latents=half_latents, extra=extra, poses_file=poses)
    return run


def _adk_ca_rmsd(run, z: np.ndarray, dataset: Path, render: np.ndarray) -> float | None:
    """Mean CA RMSD (Å) of residue centres decoded at ``z`` ``(M, L)`` against the truth.

    For atomic recipes (``cryofold``) on the adenylate kinase datasets, whose
    particles are 4AKE (path coordinate 0), 1AKE (1) or the linear atom path
    between them, in the aligned pair's frame: the true CA positions of
    particle ``i`` are ``(1 - t_i) CA_open + t_i CA_closed``. No superposition
    (the frame is known). None for other datasets or models.
    """
    import json  # noqa: PLC0415

    from cryoviz.bench.tasks import load_truth  # noqa: PLC0415
    from cryoviz.volumes.gmm_init import load_reference  # noqa: PLC0415

    states = json.loads((dataset / "simulation.json").read_text()).get("states")
    if list(states or []) != ["4ake", "1ake"] or run.volume.n_gaussians != 214:
        return None
    truth = load_truth(dataset)
    t = truth.path_coordinate if truth.continuous else truth.labels.astype(np.float64)
    open_ca = load_reference("4ake").centres_angstrom.numpy()
    closed_ca = load_reference("1ake").centres_angstrom.numpy()
    with torch.no_grad():
        centres, _, _ = run.volume.mixture_parameters(torch.as_tensor(z, dtype=torch.float32))
    centres = centres.double().cpu().numpy()
    rmsd = []
    for k, i in enumerate(render):
        true_ca = (1.0 - t[i]) * open_ca + t[i] * closed_ca
        rmsd.append(float(np.sqrt(((centres[k] - true_ca) ** 2).sum(-1).mean())))
    return float(np.mean(rmsd))


#: cryovaegan settings per suite size (the recipe's defaults otherwise).
VAEGAN_SETTINGS: dict[str, dict] = {
    "tiny": {"channels": 8, "width": 64, "batch_size": 32, "latent_dim": 1, "refine_rounds": 4},
    "small": {},
    "full": {},
}


def _cryovaegan(dataset: Path, output: Path, ctx: RunContext) -> RunOutputs:
    """``cryovaegan`` on an in-plane dataset: angles and CTFs from the images alone."""
    import json  # noqa: PLC0415

    from cryoviz.bench.tasks import inplane_metrics  # noqa: PLC0415
    from cryoviz.inference.vaegan.train import (  # noqa: PLC0415
        CryoVAEGANSettings,
        train_cryovaegan,
    )

    particles = load_particles(dataset / "particles.star")
    config = json.loads((dataset / "simulation.json").read_text())
    microscope = {k: float(config[k]) for k in ("voltage_kv", "cs_mm", "amplitude_contrast")}
    settings = CryoVAEGANSettings(epochs=ctx.train_epochs, seed=ctx.seed, **microscope,
                                  **VAEGAN_SETTINGS[ctx.size])
    train_cryovaegan(particles, settings, output)
    return RunOutputs(pixel_size_angstrom=particles.pixel_size_angstrom,
                      extra={**inplane_metrics(output, dataset), "epochs": settings.epochs})


def _builtin() -> None:
    from cryoviz.bench.entries_em_recipes import register_em_recipes  # noqa: PLC0415
    from cryoviz.bench.entries_pose_recipes import register_pose_recipes  # noqa: PLC0415

    for method, text in (("backprojection", "Wiener backprojection, true poses"),
                         ("sgd", "voxel map by SGD through the forward model, true poses")):
        register(BenchEntry(method, "volume", _reconstruct(method), HOMOGENEOUS_KINDS, text))
    register(BenchEntry("voxel-homogeneous", "volume", train_entry("voxel-homogeneous"),
                        HOMOGENEOUS_KINDS, "voxel map, training loop (Adam), true poses"))
    register(BenchEntry("consensus-backprojection", "conformation",
                        _reconstruct("backprojection", per_particle=True), HETEROGENEOUS_KINDS,
                        "baseline: one backprojected map for every particle"))
    for name, text in (("cryodrgn", "implicit Hartley decoder + VAE encoder"),
                       ("cryodrgn-ae", "implicit decoder + deterministic encoder"),
                       ("autodecoder", "implicit decoder + per-particle latent table"),
                       ("e2gmm", "Gaussian mixture decoder + VAE, FRC loss")):
        register(BenchEntry(name, "conformation", train_entry(name), HETEROGENEOUS_KINDS, text))
    register_em_recipes()
    for name, text in (("cryofold", "residue Gaussians of 4AKE moved by a VAE decoder, bond "
                                     "and elastic-network restraints (CA RMSD to the true "
                                     "states)"),
                       ("atomvae", "residue Gaussians of 4AKE moved by a VAE decoder, poses "
                                    "NOT given: amortized 8-head pose encoder, pose-only "
                                    "warm-up (CA RMSD to the true states)")):
        settings, kinds = STRUCTURE_RECIPES[name]
        register(BenchEntry(name, "conformation", train_entry(name, **settings), kinds, text))
    register(BenchEntry("cryovaegan", "inplane", _cryovaegan, INPLANE_KINDS,
                        "VAE-GAN: in-plane angle and CTF per image, no poses, no CTF given"))
    register_pose_recipes()
    _register_other_training_recipes()


def _register_other_training_recipes() -> None:
    """Every training recipe of :data:`cryoviz.train.recipes.RECIPES` not registered above.

    Recipes without latents go to the volume task, the others to the
    conformation task, with the generic :func:`train_entry`.
    """
    from cryoviz.train.recipes import RECIPES  # noqa: PLC0415

    registered = {name for name, _ in ENTRIES}
    for name, recipe in RECIPES.items():
        if name in registered:
            continue
        if recipe.encoder == "none":
            register(BenchEntry(name, "volume", train_entry(name), HOMOGENEOUS_KINDS,
                                f"training recipe {name}, true poses"))
        else:
            register(BenchEntry(name, "conformation", train_entry(name), HETEROGENEOUS_KINDS,
                                f"training recipe {name} (volume {recipe.volume}, "
                                f"encoder {recipe.encoder})"))


_builtin()
