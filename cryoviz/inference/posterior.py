"""Per-particle pose posterior summaries: best pose, spreads, top-k alternatives.

Every pose-inference method writes one ``poses.npz`` into its run folder with
:func:`write_pose_posterior`; front ends read it with :func:`read_pose_posterior`.

Arrays (``N`` particles, ``K`` alternatives, best first):

============================  ====================  ===============================
``rotations``                 ``(N, 3, 3)`` float   best ``R`` (particle -> lab)
``shifts_angstrom``           ``(N, 2)`` float      best particle-centre offset (Å)
``angular_spread_deg``        ``(N,)`` float        posterior angular standard deviation
``shift_spread_angstrom``     ``(N,)`` float        posterior shift standard deviation
``topk_rotations``            ``(N, K, 3, 3)``      alternative rotations
``topk_shifts_angstrom``      ``(N, K, 2)``         alternative shifts
``topk_weights``              ``(N, K)``            their posterior probabilities
``particle_ids``              ``(N,)`` int          rows in the original particle file
============================  ====================  ===============================
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from os import PathLike
from pathlib import Path

import numpy as np

from cryoviz.errors import InputError
from cryoviz.io.conventions import internal_to_cryodrgn
from cryoviz.io.cryodrgn import write_pose_pkl
from cryoviz.io.cryosparc import write_cs
from cryoviz.io.mrc import atomic_output
from cryoviz.io.star import write_star

__all__ = ["PosePosterior", "write_pose_posterior", "read_pose_posterior", "export_poses",
           "POSES_FILE"]

POSES_FILE = "poses.npz"
_FIELDS = ("rotations", "shifts_angstrom", "angular_spread_deg", "shift_spread_angstrom",
           "topk_rotations", "topk_shifts_angstrom", "topk_weights", "particle_ids")


@dataclass(frozen=True)
class PosePosterior:
    """Pose posterior summaries of ``N`` particles (see the module docstring)."""

    rotations: np.ndarray
    shifts_angstrom: np.ndarray
    angular_spread_deg: np.ndarray
    shift_spread_angstrom: np.ndarray
    topk_rotations: np.ndarray
    topk_shifts_angstrom: np.ndarray
    topk_weights: np.ndarray
    particle_ids: np.ndarray

    def __post_init__(self) -> None:
        n = self.rotations.shape[0]
        k = self.topk_weights.shape[1] if self.topk_weights.ndim == 2 else -1
        expected = {
            "rotations": (n, 3, 3), "shifts_angstrom": (n, 2), "angular_spread_deg": (n,),
            "shift_spread_angstrom": (n,), "topk_rotations": (n, k, 3, 3),
            "topk_shifts_angstrom": (n, k, 2), "topk_weights": (n, k), "particle_ids": (n,),
        }
        for name, shape in expected.items():
            got = tuple(np.shape(getattr(self, name)))
            if got != shape:
                raise InputError(None, name, f"shape {shape}", got=f"shape {got}")

    def __len__(self) -> int:
        return int(self.rotations.shape[0])

    def subset(self, index) -> PosePosterior:
        """The summaries of the particles at ``index`` (positions, not ids)."""
        idx = np.asarray(index)
        return PosePosterior(**{name: getattr(self, name)[idx] for name in _FIELDS})


def write_pose_posterior(path: str | PathLike, posterior: PosePosterior) -> Path:
    """Write ``posterior`` atomically as an ``.npz`` (a folder gets ``poses.npz``)."""
    target = Path(path)
    if target.is_dir():
        target = target / POSES_FILE
    with atomic_output(target) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **{name: getattr(posterior, name) for name in _FIELDS})
    return target


def export_poses(posterior: PosePosterior, particles, output_dir: str | PathLike) -> Path:
    """Write ``poses.npz`` and the particles with the posterior's best poses.

    Files in ``output_dir``: ``poses.npz``, ``particles.star`` (RELION 3.1),
    ``particles.cs`` (cryoSPARC) and ``poses.pkl`` (cryoDRGN pose pickle); every
    other column (CTF, image names, ids) is the particles' own.

    Parameters
    ----------
    posterior
        Summaries of the ``N`` particles, in their order.
    particles
        The :class:`cryoviz.io.particles.ParticleSet` the poses belong to.
    output_dir
        Folder (created if needed).
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_pose_posterior(out / POSES_FILE, posterior)
    posed = replace(particles, rotations=np.asarray(posterior.rotations).copy(),
                    shifts_angstrom=np.asarray(posterior.shifts_angstrom).copy())
    write_star(posed, out / "particles.star")
    write_cs(posed, out / "particles.cs")
    rot, trans = internal_to_cryodrgn(posed.rotations, posed.shifts_angstrom,
                                      particles.box_size, particles.pixel_size_angstrom)
    write_pose_pkl(out / "poses.pkl", rot, trans)
    return out


def read_pose_posterior(path: str | PathLike) -> PosePosterior:
    """Read a ``poses.npz`` (or the one inside a run folder)."""
    target = Path(path)
    if target.is_dir():
        target = target / POSES_FILE
    if not target.is_file():
        raise InputError(target, "poses.npz", "a pose posterior file", got="no such file")
    with np.load(target) as npz:
        missing = [name for name in _FIELDS if name not in npz]
        if missing:
            raise InputError(target, missing[0], "a pose posterior array",
                             got=f"arrays {sorted(npz.files)}")
        return PosePosterior(**{name: npz[name] for name in _FIELDS})
