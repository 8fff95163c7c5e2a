"""CryoGAN target run: a homogeneous map from simulated 4AKE by a Wasserstein GAN.

Issue target: FSC 0.5 against the truth at 6 pixels or better, on 4AKE at box
32, 4 Å/px, SNR 1. Simulates the dataset (``--particles``, seed ``--seed``),
trains :func:`cryoviz.inference.cryogan.iter_cryogan` from scratch (no poses),
aligns the map to ``truth/state_0.mrc`` with :func:`cryoviz.metrics.align_volume`
(rotation, translation and hand are arbitrary for a GAN) and records the FSC 0.5
in pixels and Å, the aligned correlation, the training log and the wall time in
``tests/benchmarks/results/cryogan_<device>.json``.

Usage::

    OMP_NUM_THREADS=1 python tests/benchmarks/bench_cryogan.py \
        [--particles 8000] [--steps 1000] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_forward_backproject import RESULTS_DIR, load_average, machine_info  # noqa: E402

from cryoviz.inference.cryogan import CryoGANSettings, iter_cryogan  # noqa: E402
from cryoviz.io import load_particles, read_volume  # noqa: E402
from cryoviz.metrics import align_volume, fsc  # noqa: E402
from cryoviz.simulate import SimulationConfig, simulate  # noqa: E402

BOX, APIX, SNR = 32, 4.0, 1.0
TARGET_FSC05_PX = 6.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=8000)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n-critic", type=int, default=4)
    parser.add_argument("--seed", type=int, default=5, help="simulation seed")
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    info = machine_info(device)
    t0 = time.perf_counter()
    settings = CryoGANSettings(n_steps=args.steps, batch_size=args.batch_size,
                               n_critic=args.n_critic, seed=args.train_seed)
    with tempfile.TemporaryDirectory() as tmp:
        data = simulate(SimulationConfig(n_particles=args.particles, box_size=BOX,
                                         pixel_size_angstrom=APIX, snr=SNR, states=("4ake",),
                                         seed=args.seed), Path(tmp) / "data")
        particles = load_particles(data / "particles.star")
        truth = torch.as_tensor(read_volume(data / "truth" / "state_0.mrc")[0])
        true_noise = float(np.load(data / "truth" / "truth.npz")["noise_sigma"])
        t_fit = time.perf_counter()
        for progress in iter_cryogan(particles, settings, device=device, log_every=100):
            print({k: v for k, v in vars(progress).items() if k != "result"}, flush=True)
        result = progress.result
        fit_seconds = time.perf_counter() - t_fit
    alignment = align_volume(result.map, truth)
    curve = fsc(alignment.aligned, truth)
    fsc05_px = float(curve.resolution_px(0.5))
    out = {
        "machine": {**info, "load_average_end": load_average()},
        "particles": args.particles, "box": BOX, "pixel_size_angstrom": APIX, "snr": SNR,
        "simulation_seed": args.seed,
        "settings": asdict(settings),
        "fsc05_px": fsc05_px,
        "fsc05_angstrom": float(curve.resolution_angstrom(APIX, 0.5)),
        "fsc0143_px": float(curve.resolution_px(0.143)),
        "aligned_correlation": alignment.correlation,
        "aligned_flipped_hand": alignment.flipped,
        "noise_std_estimated": result.noise_std,
        "noise_std_true": true_noise,
        "shift_sigma_angstrom": result.shift_sigma_angstrom,
        "fsc_curve": curve.to_dict(),
        "target": {"fsc05_px_at_most": TARGET_FSC05_PX, "met": fsc05_px <= TARGET_FSC05_PX},
        "log": list(result.history),
        "fit_seconds": fit_seconds,
        "seconds": time.perf_counter() - t0,
    }
    path = RESULTS_DIR / f"cryogan_{device.type}.json"
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items()
                      if k not in ("machine", "log", "fsc_curve", "settings")}))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
