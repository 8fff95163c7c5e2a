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

Writes ``tests/benchmarks/results/amortized_pose_<device>.json``.

Usage::

    OMP_NUM_THREADS=2 python tests/benchmarks/bench_amortized_pose.py \
        [--particles 2000] [--steps 1500] [--box 32] [--pixel-size 4] [--snr 1] [--heads 1] \
        [--loss both]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_forward_backproject import RESULTS_DIR, load_average, machine_info  # noqa: E402

from cryoviz.inference.amortized_pose import AmortizedPoseSettings, iter_amortized_pose  # noqa: E402
from cryoviz.io import load_particles, read_volume  # noqa: E402
from cryoviz.metrics import align_volume, fsc, rotation_error_deg  # noqa: E402
from cryoviz.simulate import SimulationConfig, simulate  # noqa: E402


def _one(particles, truth_rot: torch.Tensor, truth_map: torch.Tensor, symmetrized: bool,
         args) -> dict:
    settings = AmortizedPoseSettings(recipe="cryoai", symmetrized=symmetrized,
                                     n_steps=args.steps, batch_size=args.batch_size,
                                     heads=args.heads, seed=args.seed)
    t0 = time.perf_counter()
    result = None
    for p in iter_amortized_pose(particles, settings, log_every=max(1, args.steps // 10)):
        print(f"  symmetrized={symmetrized} step {p.step}/{p.n_steps} loss {p.loss:.4f} "
              f"band {p.band:.3f} pi-flipped {p.flipped_fraction:.2f}", flush=True)
        result = p.result if p.result is not None else result
    seconds = time.perf_counter() - t0
    est = torch.as_tensor(result.posterior.rotations, dtype=torch.float64)
    err = rotation_error_deg(est, truth_rot, align=True, allow_flip=True).numpy()
    aligned = align_volume(result.map.double(), truth_map)
    curve = fsc(aligned.aligned, truth_map)
    return {"symmetrized": symmetrized, "map_correlation": float(aligned.correlation),
            "median_rotation_error_deg": float(np.median(err)),
            "fraction_within_10deg": float(np.mean(err <= 10.0)),
            "fraction_beyond_150deg": float(np.mean(err >= 150.0)),
            "pi_flipped_fraction": float(np.mean(result.flipped)),
            "fsc05_px": float(curve.resolution_px(0.5)),
            "fsc05_angstrom": float(curve.resolution_px(0.5) * particles.pixel_size_angstrom),
            "final_loss": float(np.mean(result.losses[-50:])),
            "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--box", type=int, default=32)
    parser.add_argument("--pixel-size", type=float, default=4.0)
    parser.add_argument("--snr", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--loss", choices=("both", "symmetrized", "plain"), default="both")
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
                        "heads": args.heads},
           "runs": runs}
    heads = f"heads{args.heads}_" if args.heads > 1 else ""
    path = RESULTS_DIR / f"amortized_pose_{heads}{out['machine']['device']}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(runs, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
