"""Bench entries of the pose-inference recipes with their own algorithms.

``fstdiff`` (variational EM) solves the ``pose`` task from a 20 Å low-pass of
the true map, as ``relion-refine`` does; ``cryoai`` and ``cryoposenet``
(amortized CNN pose encoder and map) solve it from the same start, with
:data:`POSE_TASK_HEADS` pose hypotheses per image and the first half of the
steps training the encoder alone against the start map, then the map (a voxel
grid) and the encoder together. With nothing given they and ``cryogan`` (a map
learned adversarially, no poses at all) solve the ``abinit`` task. Their maps
are scored after alignment to the truth; ``cryogan`` has no per-particle poses,
so its row has the map's figures only.

Budgets per suite size are in :data:`POSE_RECIPE_SETTINGS`; ``tiny`` is a smoke
test of the harness (minutes on a CPU for all four), not a figure of merit.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cryoviz.bench.tasks import RunOutputs
from cryoviz.io.particles import load_particles

if TYPE_CHECKING:  # the registry imports this module while it registers its entries
    from cryoviz.bench.entries import RunContext

__all__ = ["POSE_RECIPE_SETTINGS", "POSE_TASK_HEADS", "register_pose_recipes"]

#: Pose hypotheses of the amortized encoders in the pose task (one head learns the
#: poses of about 30% of the particles against the true map, eight about 80%:
#: ``docs/benchmarks.md``).
POSE_TASK_HEADS = 8

#: Settings per suite size: fstdiff epochs, amortized-pose steps, CryoGAN map steps.
POSE_RECIPE_SETTINGS: dict[str, dict[str, int]] = {
    "tiny": {"fstdiff_epochs": 2, "amortized_steps": 150, "cryogan_steps": 150},
    "small": {"fstdiff_epochs": 5, "amortized_steps": 2000, "cryogan_steps": 1000},
    "full": {"fstdiff_epochs": 5, "amortized_steps": 4000, "cryogan_steps": 2000},
}


def _fstdiff(dataset: Path, output: Path, ctx: RunContext) -> RunOutputs:
    """fstdiff from a 20 Å low-pass of the true map (the pose task)."""
    from cryoviz.bench.tasks import load_truth  # noqa: PLC0415
    from cryoviz.inference.variational import (  # noqa: PLC0415
        VariationalSettings,
        run_variational,
        write_variational,
    )

    particles = load_particles(dataset / "particles.star")
    settings = VariationalSettings(n_epochs=POSE_RECIPE_SETTINGS[ctx.size]["fstdiff_epochs"],
                                   initial_lowpass_angstrom=20.0, seed=ctx.seed)
    result = run_variational(particles, load_truth(dataset).maps[0], settings=settings,
                             device=ctx.device)
    write_variational(result, particles, output)
    return RunOutputs(volumes=result.map[None], pixel_size_angstrom=result.pixel_size_angstrom,
                      poses_file=output / "poses.npz", extra={"epochs": settings.n_epochs})


def _amortized(recipe: str, from_lowpass: bool):
    """cryoai / cryoposenet: poses and map from nothing (the abinit task) or from a
    20 Å low-pass of the truth (the pose task; see the module docstring)."""

    def run(dataset: Path, output: Path, ctx: RunContext) -> RunOutputs:
        from cryoviz.bench.tasks import load_truth  # noqa: PLC0415
        from cryoviz.inference.amortized_pose import (  # noqa: PLC0415
            AmortizedPoseSettings,
            run_amortized_pose,
        )
        from cryoviz.inference.amortized_pose_output import write_amortized_pose  # noqa: PLC0415

        particles = load_particles(dataset / "particles.star")
        steps = POSE_RECIPE_SETTINGS[ctx.size]["amortized_steps"]
        start = load_truth(dataset).maps[0] if from_lowpass else None
        refine = {"volume": "voxel", "heads": POSE_TASK_HEADS, "pose_only_steps": steps // 2,
                  "initial_lowpass_angstrom": 20.0} if from_lowpass else {}
        settings = AmortizedPoseSettings(recipe=recipe, n_steps=steps, seed=ctx.seed, **refine)
        result = run_amortized_pose(particles, settings, initial_map=start,
                                    device=ctx.device)
        write_amortized_pose(result, particles, output)
        return RunOutputs(volumes=result.map[None],
                          pixel_size_angstrom=result.pixel_size_angstrom,
                          poses_file=output / "poses.npz",
                          extra={"steps": settings.n_steps, "heads": settings.heads,
                                 "pose_only_steps": settings.pose_only_steps})

    return run


def _cryogan(dataset: Path, output: Path, ctx: RunContext) -> RunOutputs:
    """cryogan: a map from the image distribution alone (the abinit task, no poses)."""
    from cryoviz.inference.cryogan import CryoGANSettings, run_cryogan  # noqa: PLC0415
    from cryoviz.inference.cryogan_output import write_cryogan  # noqa: PLC0415

    particles = load_particles(dataset / "particles.star")
    settings = CryoGANSettings(n_steps=POSE_RECIPE_SETTINGS[ctx.size]["cryogan_steps"],
                               seed=ctx.seed)
    result = run_cryogan(particles, settings, device=ctx.device)
    write_cryogan(result, particles, output)
    return RunOutputs(volumes=result.map[None], pixel_size_angstrom=result.pixel_size_angstrom,
                      extra={"steps": settings.n_steps})


def register_pose_recipes() -> None:
    """Register the six entries (called once by :mod:`cryoviz.bench.entries`)."""
    from cryoviz.bench.entries import HOMOGENEOUS_KINDS, BenchEntry, register  # noqa: PLC0415

    register(BenchEntry("fstdiff", "pose", _fstdiff, HOMOGENEOUS_KINDS,
                        "variational EM (Gaussian pose posteriors) from a 20 Å low-pass of "
                        "the truth"))
    for name, text in (("cryoai", "CNN pose encoder + implicit map, symmetrized loss "
                                  "(nothing given)"),
                       ("cryoposenet", "CNN pose encoder + voxel map (nothing given)")):
        register(BenchEntry(name, "abinit", _amortized(name, False), HOMOGENEOUS_KINDS, text))
        register(BenchEntry(name, "pose", _amortized(name, True), HOMOGENEOUS_KINDS,
                            f"CNN pose encoder ({POSE_TASK_HEADS} heads) + voxel map from a "
                            "20 Å low-pass of the truth, half the steps pose-only"))
    register(BenchEntry("cryogan", "abinit", _cryogan, HOMOGENEOUS_KINDS,
                        "WGAN-GP map from the image distribution, no poses (map only)"))
