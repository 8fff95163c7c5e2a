"""Benchmark tasks and their scorers.

Every task fixes everything but what it measures:

=================  ==========================================================
``volume``         poses, shifts, CTF known; one map (homogeneous data)
``conformation``   poses, shifts, CTF known; per-particle maps / latents
``pose``           the true map known; poses inferred (``poses.npz``)
``abinit``         nothing known; map and poses inferred
``inplane``        2-D images of one view: in-plane angle and CTF inferred
=================  ==========================================================

A recipe's run returns :class:`RunOutputs`; :func:`score` turns them into the
metrics of the leaderboard (plain floats), against the dataset's ``truth/``.

Metric definitions (see ``docs/bench.md``):

* ``fsc_auc``: area under ``|FSC|`` against frequency (0 .. 0.5 cycles/px), the
  CryoBench FSC-AUC (:meth:`cryoviz.metrics.FSCCurve.auc`); for the
  conformation task the mean over true conformations of the mean over that
  conformation's rendered particles (*per-conformation FSC-AUC*);
* ``resolution_05_angstrom``: resolution where the FSC against the truth
  drops below 0.5 (mean over conformations);
* ``pose_median_error_deg`` / ``pose_mean_error_deg``: geodesic error after the
  global alignment (and hand) of :func:`cryoviz.metrics.align_rotations` (also in
  the conformation task for recipes that infer the poses instead of reading
  them: ``atomvae``, ``relion-class3d-search``, ``cryosparc-abinit-classes``,
  whose classes each have their own frame: :attr:`RunOutputs.frames`);
  ``pose_inplane_pi`` and
  ``pose_opposite_view``: the fractions of particles whose aligned pose is the
  in-plane π flip of the true one or views it from the opposite side (the
  mirror-image projection), within 10° (:func:`cryoviz.metrics.pose_error_modes`);
* ``knn_preservation`` (and ``knn_chance``): :func:`cryoviz.metrics.neighbourhood_preservation`
  of the latents against the true path coordinate or state;
* ``kmeans_agreement`` (discrete states): k-means of all particles' latents into
  the true number of states (:func:`cryoviz.analysis.kmeans`, as ``cryoviz
  analyze``), scored against the true states
  (:func:`cryoviz.analysis.label_agreement`); ``(1 - agreement) N`` particles
  are placed in another state's cluster;
* ``half_w2``: :func:`cryoviz.metrics.half_latent_wasserstein` of models trained
  on the two halves;
* ``fsc_cluster_agreement`` and ``fsc_top_merge_angstrom``: the FSC clustering of
  the rendered maps (:func:`cryoviz.metrics.fsc_hierarchical_clustering`) cut
  into the true number of states, scored against the true states
  (:func:`cryoviz.analysis.label_agreement`), and the resolution of its last
  merge (``truth_top_merge_angstrom``: the same for the true maps); the
  distance is the FSC = :data:`CLUSTER_FSC_THRESHOLD` resolution;
* ``inplane`` task (:func:`inplane_metrics`, from
  :func:`cryoviz.inference.vaegan.score.score_inplane_run`): median in-plane
  angle error after the best global offset and mirror, fraction within 5°,
  median error of the mean defocus (Å and % of the simulated range), the same
  for the encoder's amortised estimates, and the relative FRC-AUC loss of a
  CTF-corrected 2-D average made with the estimates against one made with the
  true parameters (first 200 images).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cryoviz.analysis.clustering import kmeans, label_agreement
from cryoviz.errors import InputError
from cryoviz.geometry import geodesic_distance_deg
from cryoviz.inference.posterior import read_pose_posterior
from cryoviz.inference.ppca import fourier_crop_volume
from cryoviz.io.mrc import read_volume
from cryoviz.metrics.alignment import align_volume
from cryoviz.metrics.fsc import fsc
from cryoviz.metrics.landscape import (
    fsc_hierarchical_clustering,
    half_latent_wasserstein,
    neighbourhood_preservation,
)
from cryoviz.metrics.pose_modes import pose_error_modes
from cryoviz.metrics.poses import align_rotations, apply_rotation_alignment

__all__ = ["TASKS", "PER_STATE", "RunOutputs", "Truth", "load_truth", "render_plan", "score",
           "CLUSTER_FSC_THRESHOLD", "INPLANE_METRICS", "inplane_metrics"]

TASKS = ("volume", "conformation", "pose", "abinit", "inplane")

#: Particles rendered per true state in the conformation task (``--per-state``).
PER_STATE = 4

#: Metrics an ``inplane`` run must report (from :func:`inplane_metrics`).
INPLANE_METRICS = ("angle_median_error_deg", "angle_within_5deg",
                   "defocus_median_error_angstrom", "frc_auc_loss_fraction")

#: FSC threshold of the clustering distance. Maps decoded from latents carry no
#: noise, and states that share most of their mass (a subunit present or absent:
#: FSC >= 0.84 at every shell at box 32) never drop below 0.5.
CLUSTER_FSC_THRESHOLD = 0.9


@dataclass
class RunOutputs:
    """What a recipe produced, for scoring.

    Attributes
    ----------
    volumes
        ``(M, d, d, d)`` maps: one map (``volume``, ``pose``, ``abinit`` tasks) or
        the maps of the particles ``render`` asked for (``conformation``).
    pixel_size_angstrom
        Voxel size of ``volumes``.
    z
        ``(N, L)`` latents of all particles in file order, or None.
    poses_file
        A ``poses.npz`` (:mod:`cryoviz.inference.posterior`) for pose tasks.
    half_latents
        ``(z_half_a, z_half_b, paired_a, paired_b)`` of two models trained on the
        data's halves (see :func:`cryoviz.metrics.half_latent_wasserstein`), or None.
    extra
        Recipe-specific numbers copied into the leaderboard row.
    frames
        ``(N,)`` for recipes whose maps each have their own frame and hand (ab
        initio classes: each particle's class), the frame of each particle's map
        and pose; ``None``: the truth's frame. The conformation task then aligns
        each map to every true map it is compared with (rotation, shift, hand),
        clusters the maps aligned to the first true map, and aligns the poses of
        each frame separately.
    """

    volumes: torch.Tensor | None = None
    pixel_size_angstrom: float = 0.0
    z: np.ndarray | None = None
    poses_file: Path | None = None
    half_latents: tuple | None = None
    extra: dict = field(default_factory=dict)
    frames: np.ndarray | None = None


@dataclass(frozen=True)
class Truth:
    """Ground truth of a simulated dataset.

    Attributes
    ----------
    maps
        ``(S, D, D, D)`` true maps (states, or points along the path).
    pixel_size_angstrom
        Their voxel size.
    labels
        ``(N,)`` state (discrete) or path level (continuous) of every particle.
    path_coordinate
        ``(N,)`` path coordinate in [0, 1] (NaN for discrete data).
    rotations
        ``(N, 3, 3)`` true rotations.
    continuous
        Whether the data lie on a continuous path.
    """

    maps: torch.Tensor
    pixel_size_angstrom: float
    labels: np.ndarray
    path_coordinate: np.ndarray
    rotations: np.ndarray
    continuous: bool

    def map_index(self, particles: np.ndarray) -> np.ndarray:
        """Index into :attr:`maps` of the true map of each particle."""
        if not self.continuous:
            return self.labels[particles]
        grid = np.linspace(0.0, 1.0, len(self.maps))
        return np.abs(self.path_coordinate[particles, None] - grid[None]).argmin(axis=1)


def load_truth(dataset: str | Path) -> Truth:
    """Read ``truth/`` of a dataset written by ``cryoviz simulate`` (or ``simulate_inplane``).

    An in-plane dataset (no ``labels`` in ``truth.npz``) is one state: its
    ``map.mrc``, every particle labelled 0.
    """
    folder = Path(dataset) / "truth"
    npz_path = folder / "truth.npz"
    if not npz_path.is_file():
        raise InputError(npz_path, "truth", "a dataset simulated by cryoviz", got="no such file")
    with np.load(npz_path) as npz:
        rot = npz["rotations"]
        inplane = "labels" not in npz.files and "psi_deg" in npz.files
        if inplane:
            labels = np.zeros(len(rot), dtype=np.int64)
            coord = np.full(len(rot), np.nan)
        else:
            labels, coord = npz["labels"], npz["path_coordinate"]
    paths = ([folder / "map.mrc"] if inplane else
             sorted(folder.glob("path_*.mrc")) or sorted(folder.glob("state_*.mrc")))
    vols, apix = [], None
    for p in paths:
        v, apix = read_volume(p)
        vols.append(torch.as_tensor(np.ascontiguousarray(v), dtype=torch.float64))
    return Truth(maps=torch.stack(vols), pixel_size_angstrom=float(apix), labels=labels,
                 path_coordinate=coord, rotations=rot,
                 continuous=bool(np.isfinite(coord).any()))


def render_plan(truth: Truth, per_state: int = PER_STATE, seed: int = 0) -> np.ndarray:
    """Particles whose maps the conformation task scores (seeded, file-order indices).

    Discrete data: ``per_state`` random particles of every state. Continuous
    data: for every true path map, the particle closest to it on the path.
    """
    rng = np.random.default_rng(seed)
    if truth.continuous:
        grid = np.linspace(0.0, 1.0, len(truth.maps))
        return np.array([int(np.abs(truth.path_coordinate - t).argmin()) for t in grid])
    chosen = []
    for state in np.unique(truth.labels):
        members = np.flatnonzero(truth.labels == state)
        chosen.extend(rng.choice(members, size=min(per_state, len(members)), replace=False))
    return np.sort(np.asarray(chosen, dtype=np.int64))


def _match_box(truth_map: torch.Tensor, box: int) -> torch.Tensor:
    if truth_map.shape[-1] == box:
        return truth_map
    return fourier_crop_volume(truth_map, box)


def _fsc_numbers(volume: torch.Tensor, reference: torch.Tensor, apix: float) -> tuple[float,
                                                                                    float]:
    curve = fsc(volume.to(torch.float64), reference)
    return curve.auc(), curve.resolution_angstrom(apix, 0.5)


def _score_single_map(out: RunOutputs, truth: Truth, align: bool) -> dict:
    vol = out.volumes[0].to(torch.float64)
    ref = _match_box(truth.maps[0], vol.shape[-1])
    metrics = {}
    if align:
        result = align_volume(vol, ref)
        vol = result.aligned
        metrics["mirrored"] = bool(result.flipped)
    auc, res = _fsc_numbers(vol, ref, out.pixel_size_angstrom)
    metrics.update(fsc_auc=auc, resolution_05_angstrom=res)
    return metrics


def _score_poses(out: RunOutputs, truth: Truth) -> dict:
    if out.poses_file is None:
        raise InputError(None, "poses", "a poses.npz from the pose recipe", got="none")
    posterior = read_pose_posterior(out.poses_file)
    true_rot = torch.as_tensor(truth.rotations[posterior.particle_ids], dtype=torch.float64)
    est = torch.as_tensor(posterior.rotations, dtype=torch.float64)
    frames = (np.zeros(len(est), dtype=np.int64) if out.frames is None
              else np.asarray(out.frames)[posterior.particle_ids])
    aligned = torch.empty_like(est)
    largest, flipped = 0, False  # the hand reported is that of the largest frame
    for frame in np.unique(frames):  # each frame's poses aligned on their own
        rows = torch.as_tensor(np.flatnonzero(frames == frame))
        alignment = align_rotations(est[rows], true_rot[rows])
        aligned[rows] = apply_rotation_alignment(est[rows], alignment)
        if len(rows) > largest:
            largest, flipped = len(rows), bool(alignment.flipped)
    errors = geodesic_distance_deg(aligned, true_rot)
    modes = pose_error_modes(aligned, true_rot, tolerance_deg=10.0).fractions()
    return {"pose_median_error_deg": float(errors.median()),
            "pose_mean_error_deg": float(errors.mean()),
            "pose_within_10deg": float((errors <= 10.0).to(torch.float64).mean()),
            "pose_inplane_pi": modes["inplane_pi"],
            "pose_opposite_view": modes["opposite_view"],
            "pose_hand_flipped": flipped}


class _FrameAligner:
    """Rendered map ``i`` in the frame of true map ``state`` (itself when in the truth's frame).

    With :attr:`RunOutputs.frames`, each map is aligned (rotation, shift, hand) to
    the true map; identical maps of one frame (class maps) are aligned once.
    """

    def __init__(self, out: RunOutputs, render: np.ndarray, truth: Truth, box: int) -> None:
        self.out, self.truth, self.box = out, truth, box
        self.frames = None if out.frames is None else np.asarray(out.frames)[render]
        self.done: dict[tuple[int, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def __call__(self, i: int, state: int) -> torch.Tensor:
        volume = self.out.volumes[i]
        if self.frames is None:
            return volume
        seen = self.done.setdefault((int(self.frames[i]), int(state)), [])
        for original, aligned in seen:
            if torch.equal(original, volume):
                return aligned
        reference = _match_box(self.truth.maps[state], self.box).to(torch.float64)
        aligned = align_volume(volume.to(torch.float64), reference).aligned.to(volume.dtype)
        seen.append((volume, aligned))
        return aligned


def _score_conformation(out: RunOutputs, truth: Truth, render: np.ndarray, k: int) -> dict:
    metrics: dict = {}
    if out.volumes is not None:
        if len(out.volumes) != len(render):
            raise InputError(None, "volumes", f"{len(render)} maps (one per rendered particle)",
                             got=len(out.volumes))
        apix = out.pixel_size_angstrom
        box = out.volumes.shape[-1]
        which = truth.map_index(render)
        in_frame = _FrameAligner(out, render, truth, box)
        per_state_auc, per_state_res = [], []
        for state in np.unique(which):
            reference = _match_box(truth.maps[state], box)
            pairs = [_fsc_numbers(in_frame(i, state), reference, apix)
                     for i in np.flatnonzero(which == state)]
            per_state_auc.append(np.mean([p[0] for p in pairs]))
            per_state_res.append(np.mean([p[1] for p in pairs]))
        metrics["fsc_auc"] = float(np.mean(per_state_auc))
        metrics["resolution_05_angstrom"] = float(np.mean(per_state_res))
        n_states = len(np.unique(which))
        if not truth.continuous and n_states >= 2:
            volumes = torch.stack([in_frame(i, 0) for i in range(len(render))])
            clusters = fsc_hierarchical_clustering(volumes.to(torch.float64), apix,
                                                   n_clusters=n_states,
                                                   threshold=CLUSTER_FSC_THRESHOLD)
            metrics["fsc_cluster_agreement"] = label_agreement(clusters.labels, which)
            metrics["fsc_top_merge_angstrom"] = float(clusters.merge_resolutions_angstrom[-1])
            true_maps = torch.stack([_match_box(m, box) for m in truth.maps])
            truth_clusters = fsc_hierarchical_clustering(true_maps, apix, n_clusters=n_states,
                                                         threshold=CLUSTER_FSC_THRESHOLD)
            metrics["truth_top_merge_angstrom"] = float(
                truth_clusters.merge_resolutions_angstrom[-1])
    if out.z is not None:
        target = truth.path_coordinate if truth.continuous else truth.labels
        nbr = neighbourhood_preservation(out.z, target, k=min(k, len(out.z) - 1))
        metrics["knn_preservation"] = nbr.score
        metrics["knn_chance"] = nbr.chance
        n_true = len(np.unique(truth.labels))
        if not truth.continuous and 2 <= n_true <= len(out.z):
            metrics["kmeans_agreement"] = label_agreement(
                kmeans(np.asarray(out.z, dtype=np.float64), n_true).labels, truth.labels)
    if out.half_latents is not None:
        za, zb, pa, pb = out.half_latents
        try:
            metrics["half_w2"] = half_latent_wasserstein(za, zb, pa, pb)
        except ValueError as err:  # a collapsed latent space (no spread): undefined
            if "no spread" not in str(err):
                raise
            metrics["half_w2"] = None
    return metrics


def inplane_metrics(run_dir: str | Path, dataset: str | Path) -> dict:
    """Flat leaderboard figures of a ``cryovaegan`` run on an in-plane dataset.

    Parameters
    ----------
    run_dir
        The finished run (``estimates.npz`` of :mod:`cryoviz.inference.vaegan.outputs`).
    dataset
        The in-plane suite dataset it ran on.

    Returns
    -------
    dict
        :data:`INPLANE_METRICS`, ``defocus_median_error_percent_of_range``,
        ``angle_mirrored``, ``encoder_angle_median_error_deg``,
        ``encoder_defocus_median_error_angstrom``, ``frc_auc_loss_fraction_all``.
    """
    from cryoviz.inference.vaegan.score import score_inplane_run  # noqa: PLC0415

    full = score_inplane_run(run_dir, dataset)
    final, encoder = full["final"], full["encoder"]
    return {
        "angle_median_error_deg": final["angle_median_error_deg"],
        "angle_within_5deg": final["angle_within_5deg"],
        "angle_mirrored": bool(final["angle_mirrored"]),
        "defocus_median_error_angstrom": final["defocus_median_error_angstrom"],
        "defocus_median_error_percent_of_range":
            final["defocus_median_error_percent_of_range"],
        "encoder_angle_median_error_deg": encoder["angle_median_error_deg"],
        "encoder_defocus_median_error_angstrom": encoder["defocus_median_error_angstrom"],
        "frc_auc_loss_fraction": full["average_subset"]["frc_auc_loss_fraction"],
        "frc_auc_loss_fraction_all": full["average"]["frc_auc_loss_fraction"],
    }


def score(task: str, out: RunOutputs, truth: Truth, render: np.ndarray | None = None,
          knn_k: int = 10) -> dict:
    """Metrics of one run (see the module docstring); non-finite values become None."""
    if task not in TASKS:
        raise InputError(None, "task", f"one of {', '.join(TASKS)}", task)
    if task == "volume":
        metrics = _score_single_map(out, truth, align=False)
    elif task == "conformation":
        metrics = _score_conformation(out, truth, np.asarray(render), knn_k)
        if out.poses_file is not None:  # a recipe that inferred the poses
            metrics.update(_score_poses(out, truth))
    elif task == "inplane":
        missing = [k for k in INPLANE_METRICS if k not in out.extra]
        if missing:
            raise InputError(None, "inplane metrics", ", ".join(INPLANE_METRICS),
                             got=f"missing {', '.join(missing)}")
        metrics = {}
    else:  # pose, abinit: a recipe without per-particle poses (cryogan) scores its map only
        metrics = ({} if task == "abinit" and out.poses_file is None else
                   _score_poses(out, truth))
        if out.volumes is not None:
            metrics.update(_score_single_map(out, truth, align=task == "abinit"))
    metrics.update(out.extra)
    return {key: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for key, v in metrics.items()}
