"""Throughput of the image formation model, backprojection and Gaussian projection.

Measures images per second of

(a) the forward model: ``cryoviz.imaging.volume_to_fourier`` once (timed on its
    own), then ``forward_fourier`` (central slice + shift + CTF);
(b) backprojection: ``cryoviz.backprojection.FourierAccumulator.add``
    (pad, FFT, un-shift, CTF multiply, trilinear insertion of data and CTF^2);
(c) the analytic Gaussian projection ``cryoviz.gaussians.project_gaussians_fourier``
    of adenylate kinase (built-in ``4ake``, Peng 5-Gaussian atoms), skipped with a
    note if the structure data file is not installed;

at batch 256 and box 64 and 128, on CPU (and CUDA when asked and available),
with warm-up, several repeats and the median time per batch. Writes
``tests/benchmarks/results/forward_backproject_<device>.json``.

Usage::

    python tests/benchmarks/bench_forward_backproject.py [--device cpu|cuda] [--repeats N]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cryoviz.backprojection import FourierAccumulator
from cryoviz.ctf import CTFParams
from cryoviz.geometry.rotations import random_rotations
from cryoviz.imaging import forward_fourier, volume_to_fourier

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PIXEL_SIZE = 2.0  # Å; the demo dataset's pixel size


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (or platform.processor())."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where unsupported)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_info(device: torch.device) -> dict:
    """Platform, CPU, cores, torch version, device name, load average, date."""
    info = {
        "date_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_version": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "device": device.type,
        "device_name": (
            torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
        ),
        "load_average_start": load_average(),
    }
    if device.type == "cuda":
        info["cuda_version"] = torch.version.cuda
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(
    fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 2
) -> dict:
    """Median / min / max wall time of ``fn`` (seconds) after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times, cpu_times = [], []
    for _ in range(repeats):
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        # CPU time of this process (all threads) per call: less sensitive than wall
        # time to other jobs sharing the cores.
        "median_process_cpu_s": statistics.median(cpu_times),
        "repeats": repeats,
        "warmup": warmup,
    }


def phantom_volume(box: int, device: torch.device) -> torch.Tensor:
    """A smooth, asymmetric ``(D, D, D)`` float32 test volume (sum of Gaussian blobs)."""
    gen = torch.Generator().manual_seed(box)
    coords = torch.arange(box, dtype=torch.float32) - box // 2
    z, y, x = torch.meshgrid(coords, coords, coords, indexing="ij")
    vol = torch.zeros(box, box, box)
    for _ in range(10):
        c = (torch.rand(3, generator=gen) - 0.5) * box * 0.4
        s = box * (0.04 + 0.04 * float(torch.rand(1, generator=gen)))
        vol += torch.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * s * s))
    return vol.to(device)


def batch_inputs(batch: int, box: int, device: torch.device):
    """Rotations (float32), shifts (Å), CTF and random images for one batch."""
    gen = torch.Generator().manual_seed(1000 + box)
    rot = random_rotations(batch, generator=gen, dtype=torch.float32).to(device)
    shifts = (torch.randn(batch, 2, generator=gen) * 3.0).to(device)
    defocus = 10000.0 + 15000.0 * torch.rand(batch, generator=gen, dtype=torch.float64)
    ctf = CTFParams.from_arrays(
        defocus_u_angstrom=defocus + 200.0,
        defocus_v_angstrom=defocus - 200.0,
        astigmatism_angle_deg=torch.rand(batch, generator=gen, dtype=torch.float64) * 180.0,
        voltage_kv=300.0,
        cs_mm=2.7,
        amplitude_contrast=0.1,
    ).to(device)
    images = torch.randn(batch, box, box, generator=gen).to(device)
    return rot, shifts, ctf, images


def bench_forward(box: int, batch: int, device: torch.device, repeats: int) -> dict:
    volume = phantom_volume(box, device)
    rot, shifts, ctf, _ = batch_inputs(batch, box, device)
    vft_timing = time_call(lambda: volume_to_fourier(volume), device, repeats)
    volume_ft = volume_to_fourier(volume)
    timing = time_call(
        lambda: forward_fourier(volume_ft, rot, box, PIXEL_SIZE, shifts, ctf), device, repeats
    )
    return {
        "box": box,
        "batch": batch,
        "images_per_s": batch / timing["median_s"],
        "batch_time": timing,
        "volume_to_fourier_time": vft_timing,
        "volume_ft_shape": list(volume_ft.shape),
        "volume_ft_dtype": str(volume_ft.dtype),
    }


def bench_backproject(box: int, batch: int, device: torch.device, repeats: int) -> dict:
    rot, shifts, ctf, images = batch_inputs(batch, box, device)
    acc = FourierAccumulator(box, device=device)
    timing = time_call(
        lambda: acc.add(images, rot, PIXEL_SIZE, shifts_angstrom=shifts, ctf=ctf),
        device, repeats,
    )
    return {
        "box": box,
        "batch": batch,
        "images_per_s": batch / timing["median_s"],
        "batch_time": timing,
        "padded_size": acc.padded_size,
        "accumulator_dtype": str(acc.data.dtype),
    }


def gaussian_mixture(device: torch.device):
    """Adenylate kinase (4ake, centred) as a Gaussian mixture, or (None, reason)."""
    from cryoviz.gaussians import structure_to_gaussians
    from cryoviz.structure import builtin_structure

    try:
        structure = builtin_structure("4ake").center()
    except (FileNotFoundError, OSError) as err:
        return None, f"skipped: {err}"
    mixture = structure_to_gaussians(structure, dtype=torch.float32, device=device)
    return (mixture, len(structure)), None


def bench_gaussians(
    mixture, n_atoms: int, box: int, batch: int, device: torch.device, repeats: int
) -> dict:
    from cryoviz.gaussians import project_gaussians_fourier

    rot, _, _, _ = batch_inputs(batch, box, device)
    timing = time_call(
        lambda: project_gaussians_fourier(mixture, rot, box, PIXEL_SIZE, dtype=torch.float32),
        device, repeats,
    )
    return {
        "box": box,
        "batch": batch,
        "images_per_s": batch / timing["median_s"],
        "batch_time": timing,
        "n_atoms": n_atoms,
        "n_components": len(mixture),
        "dtype": "float32",
    }


def markdown(res: dict) -> str:
    """The docs/benchmarks.md table for a results JSON (``--markdown JSON`` prints it)."""
    m = res["machine"]
    lines = [
        f"Machine: {m['platform']}; CPU `{m['cpu_model']}`, {m['cpu_cores']} cores "
        f"(torch threads {m['torch_num_threads']}); torch {m['torch_version']}; device "
        f"{m['device']} ({m['device_name']}); date {m['date_utc']}; load average "
        f"(1/5/15 min) {m['load_average_start']} at start, {m['load_average_end']} at end.",
        "",
        f"Command: `{res['command']}`",
        "",
        "| operation | box | batch | images/s (median wall) | median s / batch (min–max) "
        "| process CPU s / batch |",
        "|---|---|---|---|---|---|",
    ]
    names = {
        "forward": "forward model `forward_fourier` (slice + shift + CTF)",
        "backproject": "backprojection `FourierAccumulator.add`",
        "gaussians": "Gaussian projection `project_gaussians_fourier` (4ake)",
    }
    for key, label in names.items():
        for r in res["results"][key]:
            t = r["batch_time"]
            extra = f" ({r['n_components']} Gaussians)" if key == "gaussians" else ""
            lines.append(
                f"| {label}{extra} | {r['box']} | {r['batch']} | {r['images_per_s']:.1f} | "
                f"{t['median_s']:.3f} ({t['min_s']:.3f}–{t['max_s']:.3f}) | "
                f"{t['median_process_cpu_s']:.3f} |"
            )
    for r in res["results"]["forward"]:
        t = r["volume_to_fourier_time"]
        lines.append(
            f"| `volume_to_fourier` (once per map; {r['volume_ft_shape'][0]}³ padded) | "
            f"{r['box']} | – | – | {t['median_s']:.3f} ({t['min_s']:.3f}–{t['max_s']:.3f}) | "
            f"{t['median_process_cpu_s']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--markdown"]:
        print(markdown(json.loads(Path(argv[1]).read_text())), end="")
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--boxes", default="64,128", help="comma-separated box sizes")
    parser.add_argument("--output", type=Path, default=None, help="JSON path")
    args = parser.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA requested but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    boxes = [int(b) for b in args.boxes.split(",")]
    info = machine_info(device)
    print(f"{info['cpu_model']} | {info['device_name']} | torch {info['torch_version']} | "
          f"load {info['load_average_start']}", flush=True)

    results: dict = {"forward": [], "backproject": [], "gaussians": []}
    for box in boxes:
        r = bench_forward(box, args.batch, device, args.repeats)
        results["forward"].append(r)
        print(f"forward      box {box:4d}: {r['images_per_s']:10.1f} images/s "
              f"(volume_to_fourier {1e3 * r['volume_to_fourier_time']['median_s']:.1f} ms)",
              flush=True)
    for box in boxes:
        r = bench_backproject(box, args.batch, device, args.repeats)
        results["backproject"].append(r)
        print(f"backproject  box {box:4d}: {r['images_per_s']:10.1f} images/s", flush=True)
    loaded, skip = gaussian_mixture(device)
    if loaded is None:
        results["gaussians_skipped"] = skip
        print(f"gaussians: {skip}", flush=True)
    else:
        mixture, n_atoms = loaded
        for box in boxes:
            r = bench_gaussians(mixture, n_atoms, box, args.batch, device, args.repeats)
            results["gaussians"].append(r)
            print(f"gaussians    box {box:4d}: {r['images_per_s']:10.1f} images/s "
                  f"({r['n_components']} components)", flush=True)

    info["load_average_end"] = load_average()
    out = {
        "benchmark": "forward_backproject",
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": info,
        "pixel_size_angstrom": PIXEL_SIZE,
        "results": results,
    }
    path = args.output or RESULTS_DIR / f"forward_backproject_{device.type}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, allow_nan=False) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
