"""Accuracy of exact-EM refinement (relion-refine) from a 20 Å low-pass of the truth.

Simulates adenylate kinase (4AKE) at box 64, 2 Å/px, CTF, SNR 0.1, runs
:func:`cryoviz.inference.refine.iter_refine` (global order 1 for one iteration,
then local searches up to ``--max-order``) from the true map low-passed to
20 Å, and reports the FSC 0.5 of the final map against the truth (pixels and
Å), the median rotation error against the true poses (no global alignment is
needed: the start fixes the frame), that of the better half of the particles by
their posterior angular spread, and the fraction within 5 degrees. Writes
``tests/benchmarks/results/refine_accuracy_<device>.json`` (or ``--output``).

Usage::

    python tests/benchmarks/bench_refine_accuracy.py [--particles 5000] [--iterations 5] \
        [--output FILE]
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

from cryoviz.fourier import lowpass_volume  # noqa: E402
from cryoviz.inference.refine import RefineSettings, iter_refine  # noqa: E402
from cryoviz.io import load_particles, read_volume  # noqa: E402
from cryoviz.metrics import fsc, rotation_error_deg  # noqa: E402
from cryoviz.simulate import SimulationConfig, simulate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=5000)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--max-order", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=None,
                        help="result JSON (default results/refine_accuracy_<device>.json)")
    args = parser.parse_args()
    device = torch.device(args.device)
    info = machine_info(device)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = simulate(SimulationConfig(n_particles=args.particles, box_size=64,
                                         pixel_size_angstrom=2.0, snr=0.1, seed=11),
                        Path(tmp) / "data")
        particles = load_particles(data / "particles.star")
        truth = torch.as_tensor(read_volume(data / "truth" / "state_0.mrc")[0])
        start_fsc = fsc(lowpass_volume(truth, 20.0, 2.0), truth)
        settings = RefineSettings(n_iterations=args.iterations, global_order=1,
                                  n_global_iterations=1, max_order=args.max_order,
                                  batch_size=128)
        iterations = []
        for p in iter_refine(particles, truth, settings, device=device):
            iterations.append({"iteration": p.iteration, "coarse_order": p.coarse_order,
                               "e_step_resolution_angstrom": p.e_step_resolution_angstrom,
                               "half_map_resolution_0143_angstrom": p.resolution_angstrom,
                               "median_angular_change_deg": p.median_angular_change_deg,
                               "seconds": p.seconds})
            print(iterations[-1], flush=True)
            result = p.result
    post = result.posterior
    err = rotation_error_deg(torch.as_tensor(post.rotations),
                             torch.as_tensor(particles.rotations), align=False).numpy()
    better = post.angular_spread_deg <= np.median(post.angular_spread_deg)
    curve = fsc(result.map, truth)
    out = {
        "machine": {**info, "load_average_end": load_average()},
        "particles": args.particles, "box": 64, "pixel_size_angstrom": 2.0, "snr": 0.1,
        "settings": vars(settings),
        "start_fsc05_angstrom": start_fsc.resolution_angstrom(2.0, 0.5),
        "fsc05_px": float(curve.resolution_px(0.5)),
        "fsc05_angstrom": curve.resolution_angstrom(2.0, 0.5),
        "median_rotation_error_deg": float(np.median(err)),
        "median_rotation_error_better_half_deg": float(np.median(err[better])),
        "fraction_within_5_deg": float((err < 5).mean()),
        "iterations": iterations,
        "seconds": time.perf_counter() - t0,
    }
    path = args.output or RESULTS_DIR / f"refine_accuracy_{device.type}.json"
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items() if k not in ("machine", "iterations")}))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
