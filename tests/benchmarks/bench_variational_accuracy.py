"""Accuracy of variational-EM refinement (fstdiff) from a 20 Å low-pass of the truth.

The dataset of ``bench_refine_accuracy.py``: adenylate kinase (4AKE) at box 64,
2 Å/px, CTF, SNR 0.1 (seed 11), with fewer particles allowed (``--particles``).
Runs :func:`cryoviz.inference.variational.iter_variational` from the true map
low-passed to 20 Å (means initialised by an exact search at HEALPix order
``--coarse-order`` oversampled once) and reports the FSC 0.5 of the final map
against the truth (pixels and Å), the median rotation error against the true
poses (no global alignment: the start fixes the frame), that of the better half
of the particles by their posterior angular spread, the fraction within 5
degrees, the Spearman correlation of spread and error, and the wall time.
With ``--compare-exact`` it also runs exact EM (``relion-refine``, the settings of
``bench_refine_accuracy.py``) on the same particles and records the same figures.
Writes ``tests/benchmarks/results/variational_accuracy_<device>.json``.

Usage::

    OMP_NUM_THREADS=1 python tests/benchmarks/bench_variational_accuracy.py \
        [--particles 1000] [--epochs 5] [--steps 10] [--compare-exact] [--output FILE]
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
from cryoviz.inference.variational import VariationalSettings, iter_variational  # noqa: E402
from cryoviz.io import load_particles, read_volume  # noqa: E402
from cryoviz.metrics import fsc, rotation_error_deg  # noqa: E402
from cryoviz.simulate import SimulationConfig, simulate  # noqa: E402


def _ranks(values: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(values)).astype(np.float64)


def _scores(post, volume: torch.Tensor, particles, truth: torch.Tensor) -> dict:
    """FSC 0.5 vs truth and rotation-error figures of a refinement's map and posterior."""
    err = rotation_error_deg(torch.as_tensor(post.rotations),
                             torch.as_tensor(particles.rotations), align=False).numpy()
    better = post.angular_spread_deg <= np.median(post.angular_spread_deg)
    curve = fsc(volume, truth)
    return {
        "fsc05_px": float(curve.resolution_px(0.5)),
        "fsc05_angstrom": curve.resolution_angstrom(2.0, 0.5),
        "median_rotation_error_deg": float(np.median(err)),
        "median_rotation_error_better_half_deg": float(np.median(err[better])),
        "fraction_within_5_deg": float((err < 5).mean()),
        "median_angular_spread_deg": float(np.median(post.angular_spread_deg)),
        "spearman_spread_vs_error": float(np.corrcoef(_ranks(post.angular_spread_deg),
                                                      _ranks(err))[0, 1]),
        "median_shift_error_angstrom": float(np.median(np.linalg.norm(
            post.shifts_angstrom - particles.shifts_angstrom, axis=1))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="Adam steps per batch and epoch")
    parser.add_argument("--coarse-order", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compare-exact", action="store_true",
                        help="also run exact EM (5 iterations, max order 4) on the same data")
    parser.add_argument("--output", type=Path, default=None,
                        help="result JSON (default results/variational_accuracy_<device>.json)")
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
        settings = VariationalSettings(n_epochs=args.epochs, n_steps=args.steps,
                                       coarse_order=args.coarse_order,
                                       batch_size=args.batch_size)
        epochs = []
        t_fit = time.perf_counter()
        for p in iter_variational(particles, truth, settings, device=device):
            epochs.append({"epoch": p.epoch,
                           "e_step_resolution_angstrom": p.e_step_resolution_angstrom,
                           "half_map_resolution_0143_angstrom": p.resolution_angstrom,
                           "elbo": p.elbo,
                           "median_angular_spread_deg": p.median_angular_spread_deg,
                           "seconds": p.seconds})
            print(epochs[-1], flush=True)
            result = p.result
        fit_seconds = time.perf_counter() - t_fit
        exact = None
        if args.compare_exact:
            t_exact = time.perf_counter()
            refine_settings = RefineSettings(n_iterations=5, global_order=1,
                                             n_global_iterations=1, max_order=4, batch_size=128)
            for p in iter_refine(particles, truth, refine_settings, device=device):
                print({"exact_em_iteration": p.iteration, "seconds": p.seconds}, flush=True)
            exact = {"settings": vars(refine_settings),
                     **_scores(p.result.posterior, p.result.map, particles, truth),
                     "seconds": time.perf_counter() - t_exact}
    post = result.posterior
    scores = _scores(post, result.map, particles, truth)
    out = {
        "machine": {**info, "load_average_end": load_average()},
        "particles": args.particles, "box": 64, "pixel_size_angstrom": 2.0, "snr": 0.1,
        "settings": vars(settings),
        "start_fsc05_angstrom": start_fsc.resolution_angstrom(2.0, 0.5),
        **scores,
        "half_map_fsc0143_angstrom": result.half_fsc.resolution_angstrom(2.0, 0.143),
        "exact_em_same_particles": exact,
        "targets": {"fsc05_px_at_most": 3.0, "median_rotation_error_better_half_deg_below": 5.0},
        "epochs": epochs,
        "fit_seconds": fit_seconds,
        "seconds": time.perf_counter() - t0,
    }
    path = args.output or RESULTS_DIR / f"variational_accuracy_{device.type}.json"
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items() if k not in ("machine", "epochs")}))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
