"""CryoVAEGAN at the issue's scale: in-plane angle and CTF estimation against truth.

Simulates in-plane data (one projection direction of adenylate kinase 4AKE,
random in-plane angles, defocus 0.8-2.5 um, SNR 1, box 64 at 2 Å/px) with
:func:`cryoviz.inference.vaegan.data.simulate_inplane`, trains the
``cryovaegan`` recipe on it (prior defocus range 0.5-3 um, wider than the
data's), and scores the run with
:func:`cryoviz.inference.vaegan.score.score_inplane_run`: median in-plane angle
error (after the global offset), median defocus error (Å and % of the 17,000 Å
range; target < 5 %), and the FRC-AUC of a CTF-corrected 2-D average made with
the estimates against the same average made with the true angles and CTFs
(target: less than 10 % lower). Figures for both the final (refined) and the
encoder's own estimates.

Writes ``tests/benchmarks/results/cryovaegan.json`` with the machine (CPU,
cores, torch version and threads, device, load average) next to the figures.

Usage::

    python tests/benchmarks/bench_cryovaegan.py [--particles 2000] [--epochs 12]
        [--refine-rounds 12] [--threads 1] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_forward_backproject import load_average, machine_info  # noqa: E402

from cryoviz.inference.vaegan import (  # noqa: E402
    CryoVAEGANSettings,
    InplaneSimulationConfig,
    iter_cryovaegan,
    simulate_inplane,
)
from cryoviz.inference.vaegan.score import score_inplane_run  # noqa: E402
from cryoviz.io.particles import load_particles  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "cryovaegan.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--particles", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--refine-rounds", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 keeps a shared machine usable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="keep the data and run here (default: a temp dir)")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    info = machine_info(device)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="cvgan_"))
    data_config = InplaneSimulationConfig(n_particles=args.particles, box_size=64,
                                          pixel_size_angstrom=2.0, snr=1.0,
                                          defocus_range_angstrom=(8_000.0, 25_000.0),
                                          seed=args.seed)
    t0 = time.perf_counter()
    simulate_inplane(data_config, work / "data")
    simulate_s = time.perf_counter() - t0
    settings = CryoVAEGANSettings(epochs=args.epochs, refine_rounds=args.refine_rounds,
                                  defocus_range_angstrom=(5_000.0, 30_000.0), seed=args.seed)
    particles = load_particles(work / "data" / "particles.star")
    epochs = []
    t0 = time.perf_counter()
    for p in iter_cryovaegan(particles, settings, work / "run"):
        epochs.append({"epoch": p.epoch, "loss": p.loss, "reconstruction": p.reconstruction,
                       "kl": p.kl, "geometric": p.geometric, "sleep": p.sleep,
                       "discriminator": p.discriminator, "seconds": p.seconds})
        print(f"epoch {p.epoch}/{p.epochs} loss {p.loss:.4f} geometric {p.geometric:.3f} "
              f"sleep {p.sleep:.3f} {p.seconds:.1f} s", flush=True)
    train_s = time.perf_counter() - t0
    scores = score_inplane_run(work / "run", work / "data")
    final, avg = scores["final"], scores["average"]
    targets = {
        "defocus_median_error_below_5_percent_of_range":
            final["defocus_median_error_percent_of_range"] < 5.0,
        "average_frc_auc_loss_below_10_percent": avg["frc_auc_loss_fraction"] < 0.10,
    }
    info["load_average_end"] = load_average()
    result = {"machine": info, "device": str(device),
              "data": {k: (list(v) if isinstance(v, tuple) else v)
                       for k, v in data_config.__dict__.items()},
              "settings": {k: (list(v) if isinstance(v, tuple) else v)
                           for k, v in settings.__dict__.items()},
              "simulate_seconds": simulate_s,
              "train_and_refine_seconds": train_s, "epochs": epochs, "scores": scores,
              "targets_met": targets}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"scores": scores, "targets_met": targets}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
