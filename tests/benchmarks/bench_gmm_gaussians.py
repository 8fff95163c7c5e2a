"""How many Gaussians should a reference-free ``e2gmm`` volume have, as a function of the box?

For each dataset (a ``cryoviz simulate --states 4ake,1ake`` mixture; give several of
different box sizes) and each number of Gaussians, the script trains the ``e2gmm``
recipe at its defaults apart from ``--gaussians`` (``cryoviz train --epochs k
--resume`` one epoch at a time, so every run is one seeded training) and after each
epoch scores it as ``bench_time_to_fsc.py`` does: 2-means on the latent means, label
agreement with the truth, the maps decoded at the two cluster centres, their FSC
against the true states with a soft spherical mask of radius 3/8 of the box (the
mean masked FSC-AUC) and their FSC 0.5 resolutions. Time is the sum of the training
epochs' seconds from ``log.jsonl``.

The recipe's default number of Gaussians (:meth:`cryoviz.train.recipes.Recipe.gaussian_count`)
is chosen from these figures.

Usage::

    cryoviz simulate -o /tmp/g32 --states 4ake,1ake --n-particles 4000 --box 32 \\
        --pixel-size 4.0 --snr 0.1 --seed 1
    python tests/benchmarks/bench_gmm_gaussians.py --dataset /tmp/g32 \\
        --gaussians 64,128,256,512 [--dataset /tmp/g64 --gaussians 256,512,1024,2048] \\
        [--epochs 10] [--seeds 0,1] [--output OUT.json]

``--gaussians`` is given once per ``--dataset``, in the same order.
Output: ``tests/benchmarks/results/gmm_gaussians_cpu.json`` by default.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_forward_backproject import load_average  # noqa: E402
from bench_time_to_fsc import machine_record, mixture_scorer, run_recipe  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def parse_counts(text: str) -> list[int]:
    """``"64,128"`` -> ``[64, 128]`` (each at least 1)."""
    counts = [int(v) for v in text.split(",") if v.strip()]
    if not counts or min(counts) < 1:
        raise ValueError(f"--gaussians {text!r}: expected comma-separated counts >= 1")
    return counts


def run_dataset(data: Path, counts: list[int], epochs: int, seeds: list[int],
                device: str) -> dict:
    """Every count x seed on one dataset: the per-epoch curve of each run."""
    star, ps, score = mixture_scorer(data)
    box = ps.box_size
    runs = []
    for count in counts:
        for seed in seeds:
            work = data / "bench_gmm_gaussians" / f"g{count}_seed{seed}"
            work.mkdir(parents=True, exist_ok=True)
            result = run_recipe("e2gmm", f"--gaussians {count}", star, work,
                                target=float("inf"), max_epochs=epochs, seed=seed,
                                device=device, score=score)
            last = result["curve"][-1]
            runs.append({"gaussians": count, "seed": seed, "curve": result["curve"],
                         "final_mean_fsc_auc_masked": last["mean_fsc_auc_masked"],
                         "final_label_agreement_2means": last["label_agreement_2means"],
                         "training_seconds": last["training_seconds"]})
    summary = []
    for count in counts:
        mine = [r for r in runs if r["gaussians"] == count]
        auc = np.array([r["final_mean_fsc_auc_masked"] for r in mine])
        agree = np.array([r["final_label_agreement_2means"] for r in mine])
        summary.append({"gaussians": count,
                        "gaussians_per_box_cubed_over_256": count / (box ** 3 / 256),
                        "mean_fsc_auc_masked": float(auc.mean()),
                        "sd_fsc_auc_masked": float(auc.std(ddof=1)) if len(auc) > 1 else None,
                        "mean_label_agreement_2means": float(agree.mean()),
                        "min_label_agreement_2means": float(agree.min()),
                        "mean_training_seconds": float(np.mean([r["training_seconds"]
                                                                for r in mine]))})
    return {"path": str(data), "n_particles": len(ps), "box_size": box,
            "pixel_size_angstrom": ps.pixel_size_angstrom, "runs": runs, "summary": summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", type=Path, action="append", required=True)
    parser.add_argument("--gaussians", action="append", required=True,
                        help="comma-separated counts, once per --dataset")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=RESULTS / "gmm_gaussians_cpu.json")
    args = parser.parse_args(argv)
    if len(args.gaussians) != len(args.dataset):
        parser.error(f"{len(args.dataset)} --dataset but {len(args.gaussians)} --gaussians")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    started = load_average()
    datasets = [run_dataset(d.resolve(), parse_counts(g), args.epochs, seeds, args.device)
                for d, g in zip(args.dataset, args.gaussians, strict=True)]
    out = {
        "benchmark": "gmm_gaussians",
        "command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
        "machine": machine_record(args.device, started),
        "settings": {"recipe": "e2gmm", "epochs": args.epochs, "seeds": seeds},
        "datasets": datasets,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=1) + "\n")
    for d in datasets:
        for s in d["summary"]:
            print(f"box {d['box_size']} gaussians {s['gaussians']}: masked FSC-AUC "
                  f"{s['mean_fsc_auc_masked']:.4f} agreement "
                  f"{s['mean_label_agreement_2means']:.3f} "
                  f"{s['mean_training_seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
