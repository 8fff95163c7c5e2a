"""Speed of exact-EM pose search: images/s of the global search and time per EM iteration.

(a) Global search throughput: a batch of images scored against every rotation
    of ``SO3Grid(order)`` (orders 1-3: 576, 4608, 36864 rotations) times a disc
    of 29 shifts (3 px range, 1 px step), with
    :func:`cryoviz.inference.pose_scoring.score_poses`, at an E-step limit of
    ``--resolution`` Å (box 64, 2 Å/px, the demo's sampling); the projections
    of the grid are extracted once per iteration and timed separately.
(b) One full EM iteration of :func:`cryoviz.inference.refine.iter_refine`
    (global order 1 + oversampling, M-step, noise) on a simulated dataset of
    ``--particles`` adenylate kinase images at box 64, timed per image.

Writes ``tests/benchmarks/results/pose_search_<device>.json`` with the machine.

Usage::

    python tests/benchmarks/bench_pose_search.py [--device cpu|cuda] [--particles 1000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_forward_backproject import RESULTS_DIR, load_average, machine_info  # noqa: E402

from cryoviz.ctf import compute_ctf_2d  # noqa: E402
from cryoviz.geometry import SO3Grid  # noqa: E402
from cryoviz.imaging import images_to_fourier, volume_to_fourier  # noqa: E402
from cryoviz.inference.pose_scoring import (  # noqa: E402
    pixel_set,
    score_poses,
    shift_grid,
    shift_phases,
)
from cryoviz.inference.refine import RefineSettings, iter_refine  # noqa: E402
from cryoviz.io import ImageSource, load_particles, read_volume  # noqa: E402
from cryoviz.projection import extract_points  # noqa: E402
from cryoviz.simulate import SimulationConfig, simulate  # noqa: E402

BOX = 64
APIX = 2.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_search(particles, volume: torch.Tensor, device: torch.device, resolution: float,
                 batch: int, repeats: int) -> list[dict]:
    """Images/s of the global search at orders 1-3."""
    last = int(BOX * APIX / resolution)
    pix = pixel_set(BOX, last, device)
    with ImageSource(particles) as source:
        images = source.images(list(range(batch))).to(device, torch.float64)
    x = pix.take(images_to_fourier(images))
    ctf = pix.take(compute_ctf_2d(particles.ctf.subset(torch.arange(batch)).to(device), BOX,
                                  APIX, rfft=True, dtype=torch.float64, device=device))
    w = pix.layout.weight
    phases = shift_phases(shift_grid(3.0, 1.0, device), pix)
    volume_ft = volume_to_fourier(volume.to(device, torch.float32)).to(torch.complex64)
    rows = []
    for order in (1, 2, 3):
        rotations = SO3Grid(order).rotations(torch.float32, device)
        t0 = time.perf_counter()
        proj = extract_points(volume_ft, rotations, pix.frequencies)
        _sync(device)
        extract_s = time.perf_counter() - t0
        chunk = max(1, min(batch, int(2e8 // (proj.shape[0] * phases.shape[0]))))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for start in range(0, batch, chunk):
                score_poses(x[start:start + chunk], ctf[start:start + chunk], w, proj, phases)
            _sync(device)
            times.append(time.perf_counter() - t0)
        median = statistics.median(times)
        rows.append({"order": order, "rotations": rotations.shape[0],
                     "shifts": phases.shape[0], "pixels": pix.pixels.numel(),
                     "batch": batch, "median_seconds": median, "images_per_s": batch / median,
                     "grid_projection_seconds": extract_s})
        print(f"order {order}: {rotations.shape[0]} rotations x {phases.shape[0]} shifts, "
              f"{pix.pixels.numel()} pixels: {batch / median:.1f} img/s "
              f"(grid projections {extract_s:.2f} s)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--particles", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--resolution", type=float, default=12.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    info = machine_info(device)
    with tempfile.TemporaryDirectory() as tmp:
        data = simulate(SimulationConfig(n_particles=args.particles, box_size=BOX,
                                         pixel_size_angstrom=APIX, snr=0.1, seed=0),
                        Path(tmp) / "data")
        particles = load_particles(data / "particles.star")
        volume = torch.as_tensor(read_volume(data / "truth" / "state_0.mrc")[0])
        search = bench_search(particles, volume, device, args.resolution,
                              min(args.batch, args.particles), args.repeats)
        settings = RefineSettings(n_iterations=2, global_order=1, n_global_iterations=1,
                                  max_order=3, batch_size=args.batch)
        iterations = []
        for p in iter_refine(particles, volume, settings, device=device):
            iterations.append({"iteration": p.iteration, "coarse_order": p.coarse_order,
                               "global_search": p.global_search,
                               "e_step_resolution_angstrom": p.e_step_resolution_angstrom,
                               "seconds": p.seconds,
                               "images_per_s": args.particles / p.seconds})
            print(f"EM iteration {p.iteration} ({'global' if p.global_search else 'local'}, "
                  f"order {p.coarse_order}): {p.seconds:.1f} s, "
                  f"{args.particles / p.seconds:.1f} img/s", flush=True)
    info["load_average_end"] = load_average()
    out = RESULTS_DIR / f"pose_search_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "box": BOX, "pixel_size_angstrom": APIX,
                               "particles": args.particles,
                               "search_resolution_angstrom": args.resolution,
                               "global_search": search, "em_iterations": iterations},
                              indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
