"""Amortized pose inference (cryoai): median rotation error, plain vs symmetrized loss.

Simulates open adenylate kinase (4AKE) with CTF and shifts (``--particles``,
``--box``, ``--pixel-size``, ``--snr``; uniform poses) and trains the ``cryoai``
recipe (CNN pose encoder + implicit Fourier map, no starting map) twice on the
same images and seed: with the symmetrized loss (the minimum over the image and
its in-plane π rotation) and with the plain loss. For each it records the
per-particle rotation error after the best global rotation and hand
(:func:`cryoviz.metrics.rotation_error_deg`), its median, the fraction within
10 degrees, the fraction beyond 150 degrees, the fraction of images whose
π-rotated branch won, and the wall time; and the FSC 0.5 of the map against the
truth after :func:`cryoviz.metrics.align_volume` (rotation, shift and hand).

With ``--heads H > 1`` the encoder gives ``H`` pose hypotheses per image
(winner-takes-all loss) and the results go to
``amortized_pose_heads<H>_<device>.json``.

``--known-map`` is the pose-only task: the map is the truth (voxel grid, fixed
for every step) and only the encoder learns; errors are then measured in the
truth's frame without any alignment, and each particle is sorted into a failure
mode (:func:`cryoviz.metrics.pose_error_modes`: correct, in-plane π flip, right
view with a wrong in-plane angle, opposite view, other) to see which minimum
the symmetrized loss does or does not get out of. Results go to
``amortized_pose_known_map_...json``; a ``--seed`` other than 0 adds ``seed<S>_``,
an ``--snr`` other than 1 ``snr<SNR>_``, ``--start-lowpass A`` (the fixed map
low-passed to A Å instead of Nyquist) ``lowpass<A>_``.

Writes ``tests/benchmarks/results/amortized_pose_<device>.json``.

Usage::

    OMP_NUM_THREADS=2 python tests/benchmarks/bench_amortized_pose.py \
        [--particles 2000] [--steps 1500] [--box 32] [--pixel-size 4] [--snr 1] [--heads 1] \
        [--loss both] [--known-map] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_forward_backproject import RESULTS_DIR, load_average, machine_info  # noqa: E402

from cryoviz.geometry import axis_angle_to_matrix  # noqa: E402
from cryoviz.inference.amortized_pose import AmortizedPoseSettings, iter_amortized_pose  # noqa: E402
from cryoviz.io import load_particles, read_volume  # noqa: E402
from cryoviz.metrics import (  # noqa: E402
    align_rotations,
    align_volume,
    apply_rotation_alignment,
    fsc,
    pose_error_modes,
    rotate_volume,
)
from cryoviz.simulate import SimulationConfig, simulate  # noqa: E402


def _pseudo_twofold(est: torch.Tensor, truth_rot: torch.Tensor, truth_map: torch.Tensor,
                    error_deg: np.ndarray) -> dict:
    """Do the poses wrong by >= 150 degrees share one axis in the particle frame, and is
    it an approximate two-fold of the map?

    For each such particle, the axis of ``R_true^T R_est`` (from its symmetric part);
    the principal axis of their scatter and its eigenvalue (1: one axis, 1/3: no
    preferred axis); the map's correlation with itself rotated by π about that axis,
    against 200 random axes (their median, maximum and the fraction below it).
    """
    wrong = error_deg >= 150.0
    if wrong.sum() < 10:
        return {"particles": int(wrong.sum())}
    rel = truth_rot[wrong].transpose(-1, -2) @ est[wrong]
    cos = ((rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    outer = ((rel + rel.transpose(-1, -2)) / 2 - cos[:, None, None] * torch.eye(3, dtype=rel.dtype)
             ) / (1 - cos)[:, None, None]  # a a^T for a rotation by ~pi about a
    values, vectors = torch.linalg.eigh(outer.mean(0))
    axis = vectors[:, -1]

    def self_correlation(a: torch.Tensor) -> float:
        turned = rotate_volume(truth_map, axis_angle_to_matrix(math.pi * a / a.norm()))
        x, y = truth_map.flatten() - truth_map.mean(), turned.flatten() - turned.mean()
        return float((x * y).sum() / (x.norm() * y.norm()))

    gen = torch.Generator().manual_seed(0)
    random_axes = [self_correlation(torch.randn(3, dtype=torch.float64, generator=gen))
                   for _ in range(200)]
    about_axis = self_correlation(axis)
    return {"particles": int(wrong.sum()), "axis_particle_frame": axis.tolist(),
            "axis_concentration": float(values[-1]),
            "map_self_correlation_pi_about_axis": about_axis,
            "random_axes_below": float(np.mean(np.asarray(random_axes) < about_axis)),
            "map_self_correlation_pi_random_axes_median": float(np.median(random_axes)),
            "map_self_correlation_pi_random_axes_max": float(np.max(random_axes))}


def _one(particles, truth_rot: torch.Tensor, truth_map: torch.Tensor, symmetrized: bool,
         args) -> dict:
    known = {}
    if args.known_map:  # pose-only task: the true map, fixed, on a voxel grid
        lowpass = args.start_lowpass or 2.0 * particles.pixel_size_angstrom
        known = {"volume": "voxel", "pose_only_steps": args.steps,
                 "initial_lowpass_angstrom": lowpass}
    settings = AmortizedPoseSettings(recipe="cryoai", symmetrized=symmetrized,
                                     n_steps=args.steps, batch_size=args.batch_size,
                                     heads=args.heads, seed=args.seed, **known)
    t0 = time.perf_counter()
    result = None
    for p in iter_amortized_pose(particles, settings, log_every=max(1, args.steps // 10),
                                 initial_map=truth_map.float() if args.known_map else None):
        print(f"  symmetrized={symmetrized} step {p.step}/{p.n_steps} loss {p.loss:.4f} "
              f"band {p.band:.3f} pi-flipped {p.flipped_fraction:.2f}", flush=True)
        result = p.result if p.result is not None else result
    seconds = time.perf_counter() - t0
    est = torch.as_tensor(result.posterior.rotations, dtype=torch.float64)
    if args.known_map:  # the map fixes the frame and the hand: no alignment
        in_frame = est
    else:
        in_frame = apply_rotation_alignment(est, align_rotations(est, truth_rot,
                                                                 allow_flip=True))
    modes = pose_error_modes(in_frame, truth_rot, tolerance_deg=10.0)
    err = modes.rotation_error_deg
    row = {"symmetrized": symmetrized, "heads": args.heads,
           "median_rotation_error_deg": float(np.median(err)),
           "fraction_within_10deg": float(np.mean(err <= 10.0)),
           "fraction_beyond_150deg": float(np.mean(err >= 150.0)),
           "error_modes_10deg": modes.fractions(),
           "pi_flipped_fraction": float(np.mean(result.flipped)),
           "final_loss": float(np.mean(result.losses[-50:])),
           "seconds": seconds}
    if args.known_map:
        row["pseudo_twofold"] = _pseudo_twofold(in_frame, truth_rot, truth_map, err)
    else:
        aligned = align_volume(result.map.double(), truth_map)
        curve = fsc(aligned.aligned, truth_map)
        row.update(map_correlation=float(aligned.correlation),
                   fsc05_px=float(curve.resolution_px(0.5)),
                   fsc05_angstrom=float(curve.resolution_px(0.5)
                                        * particles.pixel_size_angstrom))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--box", type=int, default=32)
    parser.add_argument("--pixel-size", type=float, default=4.0)
    parser.add_argument("--snr", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the networks and batches (the data's is fixed)")
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--loss", choices=("both", "symmetrized", "plain"), default="both")
    parser.add_argument("--known-map", action="store_true",
                        help="pose-only task: the encoder learns poses against the true map")
    parser.add_argument("--start-lowpass", type=float,
                        help="with --known-map: low-pass of the fixed true map in Å "
                        "(default: Nyquist)")
    args = parser.parse_args()
    start_load = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        simulate(SimulationConfig(n_particles=args.particles, box_size=args.box,
                                  pixel_size_angstrom=args.pixel_size, snr=args.snr,
                                  states=("4ake",), seed=21), data)
        particles = load_particles(data / "particles.star")
        with np.load(data / "truth" / "truth.npz") as npz:
            truth_rot = torch.as_tensor(npz["rotations"], dtype=torch.float64)
        truth_map = torch.as_tensor(read_volume(data / "truth" / "state_0.mrc")[0],
                                    dtype=torch.float64)
        losses = {"both": (True, False), "symmetrized": (True,), "plain": (False,)}[args.loss]
        runs = [_one(particles, truth_rot, truth_map, sym, args) for sym in losses]
    out = {"machine": {**machine_info(torch.device("cpu")), "load_average_start": start_load,
                       "load_average_end": load_average()},
           "dataset": {"structure": "4ake", "particles": args.particles, "box": args.box,
                       "pixel_size_angstrom": args.pixel_size, "snr": args.snr,
                       "poses": "uniform", "ctf": True},
           "settings": {"steps": args.steps, "batch_size": args.batch_size, "seed": args.seed,
                        "heads": args.heads, "known_map": args.known_map,
                        "start_lowpass_angstrom": args.start_lowpass},
           "runs": runs}
    heads = f"heads{args.heads}_" if args.heads > 1 else ""
    known = "known_map_" if args.known_map else ""
    seed = f"seed{args.seed}_" if args.seed else ""
    snr = f"snr{args.snr:g}_" if args.snr != 1.0 else ""
    snr += f"lowpass{args.start_lowpass:g}_" if args.known_map and args.start_lowpass else ""
    path = RESULTS_DIR / f"amortized_pose_{known}{heads}{seed}{snr}{out['machine']['device']}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(runs, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
