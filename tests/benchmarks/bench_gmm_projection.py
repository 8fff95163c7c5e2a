"""Speed of the Gaussian-mixture recipes: the batched projection and whole epochs.

Measures

(a) ``cryoviz.volumes.gmm.project_gaussians_batched`` forward and backward (one
    mixture per particle, the call of every ``gmm`` training step) at the sizes the
    recipes use on a box-64 dataset: batch 32 with 2,048 Gaussians at box 64
    (``e2gmm``'s projection) and at box 32 (its fit-gradient input's), and 214
    Gaussians at box 64 (``cryofold``'s residues of 4AKE);
(b) with ``--dataset``, seconds per training epoch of ``e2gmm`` (fit-gradient input),
    ``e2gmm --encoder-input real`` and ``cryofold --reference 4ake``, each trained
    ``--epochs`` epochs by ``cryoviz.train.loop.train`` (the epoch times of its
    ``log.jsonl``), with the last epoch's loss, so that two code versions can be
    compared on speed and result.

Only public functions are called, so the script times any version of the package
put first on ``PYTHONPATH`` (e.g. a ``git archive`` of an older commit).

Usage::

    python tests/benchmarks/bench_gmm_projection.py [--dataset DIR] [--epochs 2]
        [--repeats 5] [--device cpu|cuda] [--output OUT.json] [--note TEXT]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_forward_backproject import load_average, machine_info, time_call  # noqa: E402

from cryoviz.geometry.rotations import random_rotations  # noqa: E402
from cryoviz.io.particles import load_particles  # noqa: E402
from cryoviz.train.loop import train  # noqa: E402
from cryoviz.train.recipes import get_recipe  # noqa: E402
from cryoviz.volumes.gmm import project_gaussians_batched  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"

#: (label, batch, Gaussians, box, pixel size Å) of the projection timings.
PROJECTIONS = (
    ("e2gmm projection", 32, 2048, 64, 2.0),
    ("e2gmm fit-gradient input", 32, 2048, 32, 4.0),
    ("cryofold residues (4AKE)", 32, 214, 64, 2.0),
)

#: (label, recipe, settings) of the epoch timings.
TRAININGS = (
    ("e2gmm (fit-gradient input)", "e2gmm", {}),
    ("e2gmm --encoder-input real", "e2gmm", {"encoder_input": "real"}),
    ("cryofold --reference 4ake", "cryofold", {"reference": "4ake"}),
)


def bench_projection(batch: int, gaussians: int, box: int, pixel_size: float,
                     device: torch.device, repeats: int) -> dict:
    """Median seconds of one forward and one forward + backward call."""
    gen = torch.Generator().manual_seed(0)
    rotations = random_rotations(batch, generator=gen).to(device)
    centres = (torch.randn(batch, gaussians, 3, generator=gen) * box * pixel_size / 6).to(device)
    amps = (torch.rand(batch, gaussians, generator=gen) + 0.5).to(device)
    sigmas = torch.full((gaussians,), 2.0 * pixel_size, device=device)
    weight = torch.randn(batch, box, box // 2 + 1, dtype=torch.complex64, generator=gen)
    weight = weight.to(device)
    centres.requires_grad_(True)
    amps.requires_grad_(True)
    sigmas.requires_grad_(True)

    def forward():
        with torch.no_grad():
            project_gaussians_batched(centres, amps, sigmas, rotations, box, pixel_size)

    def forward_backward():
        out = project_gaussians_batched(centres, amps, sigmas, rotations, box, pixel_size)
        (out * weight).real.sum().backward()

    return {"forward": time_call(forward, device, repeats),
            "forward_backward": time_call(forward_backward, device, repeats)}


def bench_training(dataset: Path, epochs: int, device: torch.device) -> list[dict]:
    """Seconds per epoch and last loss of each of :data:`TRAININGS` on ``dataset``."""
    particles = load_particles(dataset / "particles.star")
    rows = []
    for label, name, settings in TRAININGS:
        recipe = get_recipe(name, epochs=epochs, **settings)
        with tempfile.TemporaryDirectory() as tmp:
            train(particles, recipe, Path(tmp) / "run", device=str(device))
            log = [json.loads(line) for line in (Path(tmp) / "run" / "log.jsonl").open()]
        epoch_rows = [r for r in log if "seconds" in r]
        rows.append({"label": label, "recipe": name, "settings": settings,
                     "particles": len(particles), "box": particles.box_size,
                     "seconds_per_epoch": [r["seconds"] for r in epoch_rows],
                     "loss_per_epoch": [r["loss"] for r in epoch_rows]})
        print(f"{label}: s / epoch {[round(s, 1) for s in rows[-1]['seconds_per_epoch']]}, "
              f"loss {rows[-1]['loss_per_epoch'][-1]:.6f}", flush=True)
    return rows


def git_commit(path: Path) -> str | None:
    """The commit of the git checkout holding ``path`` (None outside one)."""
    try:
        return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=None,
                        help="a cryoviz simulate / bench dataset folder (particles.star)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--output", type=Path, default=None, help="JSON path")
    parser.add_argument("--note", default="",
                        help="where the timed package came from (recorded in the JSON)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    import cryoviz  # noqa: PLC0415

    package = Path(cryoviz.__file__).resolve().parent
    result = {"benchmark": "gmm_projection", "command": " ".join(["python", *sys.argv]),
              "machine": machine_info(device), "package": str(package),
              "package_commit": git_commit(package), "note": args.note, "projections": [],
              "training": []}
    for label, batch, gaussians, box, pixel in PROJECTIONS:
        timing = bench_projection(batch, gaussians, box, pixel, device, args.repeats)
        result["projections"].append({"label": label, "batch": batch, "gaussians": gaussians,
                                      "box": box, "pixel_size_angstrom": pixel, **timing})
        print(f"{label}: forward {timing['forward']['median_s'] * 1e3:.1f} ms, forward + "
              f"backward {timing['forward_backward']['median_s'] * 1e3:.1f} ms", flush=True)
    if args.dataset is not None:
        result["dataset"] = str(args.dataset)
        result["training"] = bench_training(args.dataset, args.epochs, device)
    result["machine"]["load_average_end"] = load_average()
    output = args.output or RESULTS_DIR / f"gmm_projection_{device.type}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
