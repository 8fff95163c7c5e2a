"""Diagnostics: error-propagation curves and hyperparameter sweeps.

*Error propagation*: reconstruction quality (FSC-AUC and FSC = 0.5 resolution
against the true map, Wiener backprojection) when the known poses or CTFs
carry errors of growing size:

* pose error ``a`` degrees: every rotation is composed with a rotation of
  exactly ``a`` degrees about a random axis (``R_i -> R_i E_i``, a
  particle-frame error), so the geodesic error of every particle is ``a``;
* defocus error ``d`` Å: ``d`` with a random sign is added to both defocus U
  and V of every particle (mean absolute defocus error ``d``).

*Sweeps*: a training recipe run with one setting varied (latent length,
``beta``, network width ...), each value a leaderboard entry
``recipe[setting=value]``, so its effect on every metric sits in one table; or
with several settings at once, every combination an entry
``recipe[a=x,b=y]``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cryoviz.bench.entries import (
    HETEROGENEOUS_KINDS,
    STRUCTURE_RECIPES,
    BenchEntry,
    train_entry,
)
from cryoviz.bench.tasks import load_truth
from cryoviz.ctf import CTFParams
from cryoviz.errors import InputError
from cryoviz.geometry import axis_angle_to_matrix
from cryoviz.io.mrc import atomic_output
from cryoviz.io.particles import ParticleSet, load_particles
from cryoviz.metrics.fsc import fsc
from cryoviz.reconstruct import reconstruct

__all__ = ["perturb_rotations", "perturb_defocus", "error_propagation",
           "error_propagation_markdown", "write_error_propagation", "sweep_entries",
           "sweep_grid_entries"]


def perturb_rotations(rotations: np.ndarray, angle_deg: float, seed: int = 0) -> np.ndarray:
    """``R_i E_i`` with ``E_i`` a rotation of exactly ``angle_deg`` about a random axis.

    Parameters
    ----------
    rotations
        ``(N, 3, 3)`` rotations.
    angle_deg
        Error angle, degrees (``>= 0``).
    seed
        Seed of the axes.

    Returns
    -------
    numpy.ndarray
        ``(N, 3, 3)`` float64 perturbed rotations.
    """
    if not angle_deg >= 0:
        raise InputError(None, "pose error", "an angle >= 0 degrees", angle_deg)
    rng = np.random.default_rng(seed)
    axes = rng.normal(size=(len(rotations), 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    error = axis_angle_to_matrix(torch.as_tensor(axes * math.radians(angle_deg))).numpy()
    return np.asarray(rotations, dtype=np.float64) @ error


def perturb_defocus(ctf: CTFParams, error_angstrom: float, seed: int = 0) -> CTFParams:
    """Add ``+-error_angstrom`` (random sign per particle) to defocus U and V."""
    if not error_angstrom >= 0:
        raise InputError(None, "defocus error", "a value >= 0 Å", error_angstrom)
    n = len(ctf.defocus_u_angstrom)
    sign = np.random.default_rng(seed).choice([-1.0, 1.0], size=n)
    delta = torch.as_tensor(sign * error_angstrom, dtype=ctf.defocus_u_angstrom.dtype)
    return dataclasses.replace(ctf, defocus_u_angstrom=ctf.defocus_u_angstrom + delta,
                               defocus_v_angstrom=ctf.defocus_v_angstrom + delta)


def _quality(particles: ParticleSet, truth_map: torch.Tensor, apix: float, device: str
             ) -> dict:
    result = reconstruct(particles, method="backprojection", device=device)
    curve = fsc(result.full_map.to(torch.float64), truth_map)
    return {"fsc_auc": curve.auc(), "resolution_05_angstrom":
            curve.resolution_angstrom(apix, 0.5)}


def error_propagation(dataset: str | Path, pose_errors_deg=(0.0, 2.0, 5.0, 10.0, 20.0),
                      defocus_errors_angstrom=(0.0, 250.0, 500.0, 1000.0, 2000.0),
                      seed: int = 0, device: str = "cpu") -> dict:
    """Backprojection quality against injected pose and defocus errors.

    Parameters
    ----------
    dataset
        A homogeneous suite dataset (``truth/state_0.mrc`` is the reference).
    pose_errors_deg, defocus_errors_angstrom
        Error sizes.
    seed
        Seed of the error directions / signs.
    device
        Torch device.

    Returns
    -------
    dict
        ``{"dataset", "pose": [{"error_deg", "fsc_auc", "resolution_05_angstrom"}],
        "defocus": [{"error_angstrom", ...}]}``.
    """
    folder = Path(dataset)
    truth = load_truth(folder)
    if len(truth.maps) != 1:
        raise InputError(folder, "dataset", "a homogeneous dataset (one true map)",
                         got=f"{len(truth.maps)} maps")
    particles = load_particles(folder / "particles.star", require_poses=True,
                               require_ctf=True)
    apix = particles.pixel_size_angstrom
    out: dict = {"dataset": folder.name, "pose": [], "defocus": []}
    for angle in pose_errors_deg:
        moved = dataclasses.replace(
            particles, rotations=perturb_rotations(particles.rotations, angle, seed))
        out["pose"].append({"error_deg": float(angle),
                            **_quality(moved, truth.maps[0], apix, device)})
    for error in defocus_errors_angstrom:
        moved = dataclasses.replace(particles, ctf=perturb_defocus(particles.ctf, error, seed))
        out["defocus"].append({"error_angstrom": float(error),
                               **_quality(moved, truth.maps[0], apix, device)})
    return out


def error_propagation_markdown(result: dict) -> str:
    """Two markdown tables (pose error, defocus error) of :func:`error_propagation`."""
    lines = [f"### Error propagation on `{result['dataset']}` (Wiener backprojection)", "",
             "| pose error ° | FSC-AUC | FSC=0.5 Å |", "|---|---|---|"]
    lines += [f"| {p['error_deg']:g} | {p['fsc_auc']:.3f} | {p['resolution_05_angstrom']:.2f} |"
              for p in result["pose"]]
    lines += ["", "| defocus error Å | FSC-AUC | FSC=0.5 Å |", "|---|---|---|"]
    lines += [f"| {p['error_angstrom']:g} | {p['fsc_auc']:.3f} | "
              f"{p['resolution_05_angstrom']:.2f} |" for p in result["defocus"]]
    return "\n".join(lines) + "\n"


def write_error_propagation(result: dict, output_dir: str | Path) -> Path:
    """Write ``error_propagation.json`` and ``error_propagation.md``; return the JSON path."""
    import json  # noqa: PLC0415

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_output(out / "error_propagation.json") as tmp:
        Path(tmp).write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    with atomic_output(out / "error_propagation.md") as tmp:
        Path(tmp).write_text(error_propagation_markdown(result))
    return out / "error_propagation.json"


def sweep_entries(recipe: str, setting: str, values) -> list[BenchEntry]:
    """Conformation entries ``recipe[setting=value]``, one per value (e.g. ``zdim``, ``beta``)."""
    return sweep_grid_entries(recipe, [(setting, values)])


def sweep_grid_entries(recipe: str,
                       axes: Sequence[tuple[str, Sequence]]) -> list[BenchEntry]:
    """Conformation entries of every combination of several settings' values.

    Parameters
    ----------
    recipe
        Training recipe name.
    axes
        ``(setting, values)`` pairs, in the order they are named: the entries run
        through the combinations with the last setting varying fastest.

    Returns
    -------
    list of BenchEntry
        One per combination, named ``recipe[a=x,b=y]`` (``recipe[a=x]`` for one
        setting) and trained with those settings. A recipe that needs a base
        structure (:data:`cryoviz.bench.entries.STRUCTURE_RECIPES`) starts from
        its bench settings (``cryofold``: ``reference = '4ake'``) and runs on its
        dataset kinds; a named setting overrides them.

    Raises
    ------
    InputError
        For an unknown recipe or setting, a setting named twice, or a combination
        the recipe refuses (every combination is checked before any runs).
    """
    from cryoviz.train.recipes import get_recipe  # noqa: PLC0415

    names = [setting for setting, _ in axes]
    if len(set(names)) != len(names):
        raise InputError(None, "--sweep", "each setting once per sweep", ", ".join(names))
    combos = [dict(zip(names, values, strict=True))
              for values in itertools.product(*(list(v) for _, v in axes))]
    base, kinds = STRUCTURE_RECIPES.get(recipe, ({}, HETEROGENEOUS_KINDS))
    for combo in combos:  # unknown recipe, setting or value -> InputError
        get_recipe(recipe, **{**base, **combo})
    entries = []
    for combo in combos:
        label = ",".join(f"{k}={v}" for k, v in combo.items())
        said = ", ".join(f"{k} = {v}" for k, v in combo.items())
        entries.append(BenchEntry(f"{recipe}[{label}]", "conformation",
                                  train_entry(recipe, **{**base, **combo}), kinds,
                                  f"{recipe} with {said}"))
    return entries
