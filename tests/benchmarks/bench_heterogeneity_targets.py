"""The heterogeneity targets of the engine issue at its scale: box 64, 2 Å/px, CTF, SNR 0.1.

Simulates adenylate kinase with known poses (``cryoviz.simulate``, seed
``--seed``): a 50/50 open (4AKE) / closed (1AKE) mixture and a continuous path
between the two states, ``--particles`` each. Trains each of ``--recipes``
(``cryodrgn``, ``e2gmm``: the training loop; ``3dva``: PPCA-EM) on both and scores
what the issue asks for:

* mixture: k-means (K = 2) of the latent means against the true state (fraction
  of particles in agreement after matching cluster names), and the FSC 0.5
  (pixels) of the map decoded at each k-means centre against the true map of the
  state its cluster holds most of;
* path: ``|Spearman rho|`` between the first principal component of z and the
  true path coordinate.

Targets (printed next to the figures, never asserted): agreement >= 0.95, FSC 0.5
at 3 px or better for both states, ``|rho| >= 0.9``. Every finished (recipe,
dataset) pair is written to ``--output`` at once, so an interrupted run keeps
what it measured; a second call with the same ``--output`` adds to it.

Usage::

    OMP_NUM_THREADS=1 python tests/benchmarks/bench_heterogeneity_targets.py \
        [--recipes 3dva,e2gmm,cryodrgn] [--particles 4000] [--epochs 20] \
        [--iterations 10] [--precision fp32] [--set KEY=VALUE ...] [--work DIR] \
        [--output FILE]
    python tests/benchmarks/bench_heterogeneity_targets.py --markdown RESULT_JSON
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_forward_backproject import RESULTS_DIR, load_average, machine_info  # noqa: E402

from cryoviz.analysis import kmeans, label_agreement, pca  # noqa: E402
from cryoviz.inference.ppca import eval_ppca, run_ppca  # noqa: E402
from cryoviz.io import load_particles, read_volume  # noqa: E402
from cryoviz.metrics import fsc  # noqa: E402
from cryoviz.simulate import SimulationConfig, simulate  # noqa: E402
from cryoviz.train.evaluate import eval_volumes, load_run  # noqa: E402
from cryoviz.train.loop import iter_train  # noqa: E402
from cryoviz.train.recipes import get_recipe  # noqa: E402

BOX = 64
APIX = 2.0
SNR = 0.1
TARGETS = {"kmeans_agreement_at_least": 0.95, "fsc05_px_at_most": 3.0,
           "abs_spearman_pc1_at_least": 0.9}


def _dataset(work: Path, kind: str, n: int, seed: int) -> Path:
    out = work / f"{kind}_{n}_seed{seed}"
    if not (out / "particles.star").exists():
        simulate(SimulationConfig(n_particles=n, box_size=BOX, pixel_size_angstrom=APIX, snr=SNR,
                                  states=("4ake", "1ake"),
                                  ensemble="discrete" if kind == "mixture" else "continuous",
                                  seed=seed), out)
    return out


def _overrides(specs: list[str]) -> dict:
    """``KEY=VALUE`` recipe settings; numbers are parsed, anything else stays a string."""
    out = {}
    for spec in specs:
        key, _, text = spec.partition("=")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def _train(recipe_name: str, data: Path, run_dir: Path, args: argparse.Namespace):
    """Latent means ``(N, L)`` and a decoder ``z (M, L) -> maps (M, D, D, D)``."""
    particles = load_particles(data / "particles.star")
    if recipe_name == "3dva":
        result = run_ppca(particles, n_components=2, n_iterations=args.iterations,
                          box_size=BOX, seed=args.seed)
        return result.z.numpy().astype(np.float64), lambda z: eval_ppca(result, z), {
            "iterations": args.iterations, "components": 2}
    recipe = get_recipe(recipe_name, epochs=args.epochs, seed=args.seed,
                        precision=args.precision,
                        batch_size=args.batch_size if recipe_name == "cryodrgn" else None,
                        **_overrides(args.set))
    seconds = [p.seconds for p in iter_train(particles, recipe, run_dir)]
    run = load_run(run_dir)
    settings = {"epochs": recipe.epochs, "batch_size": recipe.batch_size, "zdim": recipe.zdim,
                "width": recipe.width, "depth": recipe.depth, "precision": recipe.precision,
                "seconds_per_epoch": float(np.mean(seconds)), **_overrides(args.set)}
    return (run.mu.astype(np.float64),
            lambda z: eval_volumes(run, np.asarray(z), box_size=BOX), settings)


def _truth(data: Path, name: str) -> np.ndarray:
    return np.load(data / "truth" / "truth.npz")[name]


def _score_mixture(z: np.ndarray, decode, data: Path) -> dict:
    labels_true = _truth(data, "labels")
    km = kmeans(z, 2, seed=0)
    agreement = label_agreement(km.labels, labels_true)
    # the state each cluster holds most of
    state_of_cluster = [int(np.round(labels_true[km.labels == c].mean())) for c in (0, 1)]
    maps = decode(km.centres)
    out = {"kmeans_agreement": float(agreement), "state_of_cluster": state_of_cluster}
    if sorted(state_of_cluster) != [0, 1]:
        out["note"] = "both clusters hold mostly one state"
        return out
    for c, s in enumerate(state_of_cluster):
        truth = torch.as_tensor(read_volume(data / "truth" / f"state_{s}.mrc")[0])
        own = fsc(torch.as_tensor(maps[c]), truth)
        other = fsc(torch.as_tensor(maps[c]), torch.as_tensor(
            read_volume(data / "truth" / f"state_{1 - s}.mrc")[0]))
        out[f"state{s}_fsc05_px"] = float(own.resolution_px(0.5))
        out[f"state{s}_fsc_auc"] = float(own.auc())
        out[f"state{s}_fsc_auc_vs_other_state"] = float(other.auc())
    return out


def _score_path(z: np.ndarray, data: Path) -> dict:
    coordinate = _truth(data, "path_coordinate")
    pc = pca(z)
    rho = [abs(float(spearmanr(pc.coords[:, k], coordinate).statistic))
           for k in range(pc.n_components)]
    return {"abs_spearman_pc1": rho[0],
            "pc1_explained_variance_ratio": float(pc.explained_variance_ratio[0]),
            "best_component": int(np.argmax(rho)) + 1}


def _meets(score: dict, kind: str) -> bool:
    if kind == "path":
        return score["abs_spearman_pc1"] >= TARGETS["abs_spearman_pc1_at_least"]
    px = [score.get(f"state{s}_fsc05_px", np.inf) for s in (0, 1)]
    return (score["kmeans_agreement"] >= TARGETS["kmeans_agreement_at_least"]
            and max(px) <= TARGETS["fsc05_px_at_most"])


def _settings_text(row: dict) -> str:
    skip = {"seconds_per_epoch", "precision", "zdim", "width", "depth", "batch_size"}
    text = ", ".join(f"{k} {v}" for k, v in row["settings"].items() if k not in skip)
    if row["recipe"] != "3dva":
        s = row["settings"]
        text += (f", batch {s['batch_size']}, zdim {s['zdim']}, width {s['width']} x depth "
                 f"{s['depth']}, {s['precision']}")
    return text


def markdown(result: dict) -> str:
    """Tables of the mixture and path runs in ``result`` (the JSON this script writes)."""
    lines = ["| recipe | settings | particles | k-means agreement | FSC 0.5 open / closed (px) "
             "| meets targets | s | 1-min load at end |", "|---|---|---|---|---|---|---|---|"]
    for row in result["runs"]:
        if row["kind"] != "mixture":
            continue
        px = " / ".join(f"{row.get(f'state{s}_fsc05_px', float('nan')):.2f}" for s in (0, 1))
        lines.append(f"| {row['recipe']} | {_settings_text(row)} | {row['particles']} | "
                     f"{row['kmeans_agreement']:.4f} | {px} | {row['meets_targets']} | "
                     f"{row['seconds']:.0f} | {row['machine']['load_average_end'][0]:.1f} |")
    lines += ["", "| recipe | settings | particles | Spearman rho (abs.), PC 1 vs path | "
              "PC 1 variance ratio | meets targets | s | 1-min load at end |",
              "|---|---|---|---|---|---|---|---|"]
    for row in result["runs"]:
        if row["kind"] != "path":
            continue
        lines.append(f"| {row['recipe']} | {_settings_text(row)} | {row['particles']} | "
                     f"{row['abs_spearman_pc1']:.3f} | {row['pc1_explained_variance_ratio']:.2f} "
                     f"| {row['meets_targets']} | {row['seconds']:.0f} | "
                     f"{row['machine']['load_average_end'][0]:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="3dva,e2gmm,cryodrgn")
    parser.add_argument("--kinds", default="mixture,path")
    parser.add_argument("--particles", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=20, help="training-loop recipes")
    parser.add_argument("--iterations", type=int, default=10, help="3dva (PPCA-EM)")
    parser.add_argument("--batch-size", type=int, default=None, help="cryodrgn")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe setting of the training-loop recipes (repeatable), "
                             "e.g. --set gaussians=512 --set reference=4ake")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_heterogeneity_targets"))
    parser.add_argument("--output", type=Path,
                        default=RESULTS_DIR / "heterogeneity_targets_cpu.json")
    parser.add_argument("--markdown", type=Path, default=None, metavar="RESULT_JSON",
                        help="print the tables of a result file and exit")
    args = parser.parse_args()
    if args.markdown is not None:
        print(markdown(json.loads(args.markdown.read_text())))
        return
    out = json.loads(args.output.read_text()) if args.output.exists() else {
        "benchmark": "heterogeneity targets of the engine issue", "box": BOX,
        "pixel_size_angstrom": APIX, "snr": SNR, "targets": TARGETS, "runs": []}
    for kind in args.kinds.split(","):
        data = _dataset(args.work, kind, args.particles, args.seed)
        for name in args.recipes.split(","):
            t0 = time.perf_counter()
            info = machine_info(torch.device("cpu"))
            tag = "_".join([str(args.particles), args.precision, *args.set]).replace("=", "-")
            run_dir = args.work / f"run_{name}_{kind}_{tag}"
            z, decode, settings = _train(name, data, run_dir, args)
            score = (_score_mixture(z, decode, data) if kind == "mixture"
                     else _score_path(z, data))
            row = {"recipe": name, "kind": kind, "particles": args.particles,
                   "seed": args.seed, "settings": settings, **score,
                   "meets_targets": _meets(score, kind),
                   "seconds": time.perf_counter() - t0,
                   "machine": {**info, "load_average_end": load_average()}}
            out["runs"].append(row)
            args.output.write_text(json.dumps(out, indent=2))
            print(json.dumps({k: v for k, v in row.items() if k != "machine"}), flush=True)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
