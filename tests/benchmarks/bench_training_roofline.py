"""How fast can the ``cryodrgn`` recipe's epoch be on this machine? A roofline.

``bench_train_vs_cryodrgn.py`` times cryoviz and cryoDRGN 4.3.1 with the same
networks. This script asks what bounds those times: it counts the arithmetic of
one training step of the ``cryodrgn`` recipe with the benchmark's networks
(encoder MLP 256 x 2, decoder width 256 with 3 residual layers, ``fourier``
output, zdim 8, batch 16, box 64), measures how fast this machine multiplies
matrices, and divides.

1. **Arithmetic per image.** :class:`torch.utils.flop_counter.FlopCounterMode`
   counts the matrix products (forward and backward) of training epochs on a
   subset of the dataset. Two runs, of one and of two epochs, differ by exactly one
   epoch: the initialisation and the final encoding cancel. Element-wise work
   (random Fourier features' sin / cos, activations, FFTs, the CTF) is not
   counted; it costs time but no multiply-adds.
2. **Achieved rate.** A run of ``--epochs`` epochs on ``--particles`` particles,
   without the counter; the last epoch's seconds (from ``log.jsonl``) per image.
3. **Ceiling.** float32 matrix products on this machine: a square product of
   side 2048, and the decoder's own layer (``(16 x points, 256) @ (256, 256)``,
   forward and both backward products).
4. **Bound.** The fewest seconds an epoch of ``--epoch-particles`` images can take
   at the ceiling; with a cryoDRGN seconds-per-epoch (``--cryodrgn-json``, a
   ``bench_train_vs_cryodrgn.py`` result on the same dataset size and networks),
   the largest speed-up over cryoDRGN that any program doing this arithmetic can
   reach here. cryoDRGN's own arithmetic is not counted: its decoder has the same
   shape and reads the same half of a circular mask of radius D / 2.

Usage::

    python tests/benchmarks/bench_training_roofline.py --dataset /tmp/btv/data \\
        [--particles 512] [--epochs 2] [--output tests/benchmarks/results/X.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_forward_backproject import cpu_model, load_average  # noqa: E402

from cryoviz.io.particles import ParticleSet, load_particles  # noqa: E402
from cryoviz.train.loop import train  # noqa: E402
from cryoviz.train.recipes import Recipe, get_recipe  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_CRYODRGN_JSON = RESULTS / "train_vs_cryodrgn_fourier_encoder_corrected_cpu.json"


def bench_recipe(epochs: int, batch_size: int = 16, seed: int = 0) -> Recipe:
    """The ``cryodrgn`` recipe with ``bench_train_vs_cryodrgn.py``'s networks."""
    return dataclasses.replace(get_recipe("cryodrgn"), zdim=8, width=256, depth=3,
                               enc_width=256, enc_depth=2, domain="fourier",
                               batch_size=batch_size, epochs=epochs, seed=seed)


def training_flops(particles: ParticleSet, batch_size: int) -> dict[str, float]:
    """Counted matrix-product FLOPs of one training epoch over ``particles``, per module.

    The difference of a two-epoch and a one-epoch run under
    :class:`~torch.utils.flop_counter.FlopCounterMode`; ``'Global'`` is the total,
    the other keys are the counter's module names (down to depth 3).
    """
    counts = []
    for epochs in (1, 2):
        with tempfile.TemporaryDirectory() as tmp, \
                FlopCounterMode(display=False, depth=3) as counter:
            train(particles, bench_recipe(epochs, batch_size), tmp)
        counts.append({name: float(sum(ops.values()))
                       for name, ops in counter.get_flop_counts().items()})
    return {name: counts[1][name] - counts[0].get(name, 0.0) for name in counts[1]}


def achieved_seconds_per_image(particles: ParticleSet, epochs: int, batch_size: int) -> dict:
    """Seconds per image of the last of ``epochs`` epochs (``log.jsonl``), no counter."""
    with tempfile.TemporaryDirectory() as tmp:
        train(particles, bench_recipe(epochs, batch_size), tmp)
        log = [json.loads(line) for line in (Path(tmp) / "log.jsonl").read_text().splitlines()]
    seconds = [float(r["seconds"]) for r in log]
    return {"epoch_seconds": seconds, "seconds_per_image": seconds[-1] / len(particles)}


def gemm_gflops(m: int, k: int, n: int, repeats: int, backward: bool = False) -> float:
    """Median float32 GFLOP/s of ``(m, k) @ (k, n)``; with ``backward`` also both gradients."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen)
    b = torch.randn(k, n, generator=gen)
    g = torch.randn(m, n, generator=gen)
    flops = 2.0 * m * k * n * (3 if backward else 1)
    times = []
    for _ in range(repeats + 1):  # the first call warms up
        t0 = time.perf_counter()
        out = a @ b
        if backward:
            _ = g @ b.T  # gradient of the input
            _ = a.T @ g  # gradient of the weight
        times.append(time.perf_counter() - t0)
        del out
    return flops / float(np.median(times[1:])) / 1e9


def decoder_points(box: int) -> int:
    """Points of the rfft half plane inside radius 1/2 (what the decoder reads per image)."""
    ky = torch.fft.fftfreq(box)[:, None]
    kx = torch.fft.rfftfreq(box)[None, :]
    return int(((ky**2 + kx**2).sqrt() < 0.5).sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True,
                        help="a cryoviz simulate folder (particles.star)")
    parser.add_argument("--particles", type=int, default=512,
                        help="particles of the timed run (the first N)")
    parser.add_argument("--count-particles", type=int, default=64,
                        help="particles of the counted runs (the first N)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the timed run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epoch-particles", type=int, default=None,
                        help="images per epoch of the bound (default: the cryoDRGN result's)")
    parser.add_argument("--cryodrgn-json", type=Path, default=DEFAULT_CRYODRGN_JSON)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path,
                        default=RESULTS / "training_roofline_cpu.json")
    args = parser.parse_args(argv)

    started = load_average()
    particles = load_particles(args.dataset / "particles.star")
    if args.particles > len(particles) or args.count_particles > len(particles):
        parser.error(f"{args.dataset / 'particles.star'} has {len(particles)} particles; "
                     f"--particles {args.particles} / --count-particles "
                     f"{args.count_particles} asked for more")
    box = particles.box_size
    counted = particles.subset(np.arange(args.count_particles))
    flops_modules = training_flops(counted, args.batch_size)
    flops_image = flops_modules["Global"] / args.count_particles

    timed = achieved_seconds_per_image(particles.subset(np.arange(args.particles)),
                                       args.epochs, args.batch_size)
    achieved = flops_image / timed["seconds_per_image"] / 1e9

    rows = args.batch_size * decoder_points(box)
    ceilings = {
        "square_2048": gemm_gflops(2048, 2048, 2048, args.repeats),
        f"decoder_layer_{rows}x256x256_fwd_bwd": gemm_gflops(rows, 256, 256, args.repeats,
                                                              backward=True),
    }
    ceiling = max(ceilings.values())

    cryodrgn = None
    epoch_particles = args.epoch_particles
    if args.cryodrgn_json is not None and args.cryodrgn_json.is_file():
        ref = json.loads(args.cryodrgn_json.read_text())
        cryodrgn = {"json": str(args.cryodrgn_json),
                    "n_particles": ref["dataset"]["n_particles"],
                    "box_size": ref["dataset"]["box_size"],
                    "settings": ref["settings"],
                    "cryodrgn_seconds_per_epoch": ref["cryodrgn"]["mean_seconds_per_epoch"],
                    "cryoviz_seconds_per_epoch": ref["cryoviz"]["mean_seconds_per_epoch"]}
        if ref["dataset"]["box_size"] != box:
            parser.error(f"{args.cryodrgn_json}: box {ref['dataset']['box_size']}, "
                         f"but {args.dataset} has box {box}")
        epoch_particles = epoch_particles or ref["dataset"]["n_particles"]
    epoch_particles = epoch_particles or len(particles)
    bound_s = flops_image * epoch_particles / (ceiling * 1e9)
    result = {
        "benchmark": "training_roofline",
        "command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
        "machine": {"date_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "platform": platform.platform(), "cpu_model": cpu_model(),
                    "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch_version": torch.__version__, "device": "cpu",
                    "load_average_start": started, "load_average_end": load_average()},
        "dataset": {"path": str(args.dataset), "box_size": box},
        "settings": {"recipe": dataclasses.asdict(bench_recipe(args.epochs, args.batch_size)),
                     "count_particles": args.count_particles,
                     "timed_particles": args.particles, "timed_epochs": args.epochs},
        "flops_per_image": flops_image,
        "flops_per_image_by_module": {name: value / args.count_particles
                                      for name, value in flops_modules.items()},
        "decoder_points_per_image": decoder_points(box),
        "timed": timed,
        "achieved_gflops": achieved,
        "ceiling_gflops": ceilings,
        "fraction_of_ceiling": achieved / ceiling,
        "epoch_particles": epoch_particles,
        "epoch_seconds_at_ceiling": bound_s,
        "epoch_seconds_at_achieved_rate": flops_image * epoch_particles / (achieved * 1e9),
    }
    if cryodrgn is not None:
        drgn_s = cryodrgn["cryodrgn_seconds_per_epoch"]
        cryodrgn["cryodrgn_gflops_if_same_arithmetic"] = (
            flops_image * cryodrgn["n_particles"] / drgn_s / 1e9)
        result["cryodrgn"] = cryodrgn
        result["largest_speedup_over_cryodrgn"] = drgn_s / bound_s
        result["speedup_at_achieved_rate"] = drgn_s / result["epoch_seconds_at_achieved_rate"]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("settings",)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
