"""Which cryoviz recipe first reaches cryoDRGN's FSC, and after how many seconds of training?

The engine issue asks for cryoDRGN 4.3.1's ``train_vae`` FSC after N epochs
(a ``bench_train_vs_cryodrgn.py`` result, ``--target-json``) and for the cryoviz
recipe that reaches it first. For each recipe this script trains on the same
dataset one epoch at a time (``cryoviz train --epochs k --resume``, so epoch k
continues the run of epoch k - 1 and every run is one seeded training), and
after each epoch scores the run exactly as ``bench_train_vs_cryodrgn.py`` scores
both programs:

- 2-means on the latent means (``latents.npz``), label agreement with the truth;
- the maps decoded at the two cluster centres, FSC against the true states with
  a soft spherical mask of radius 3/8 of the box, clusters matched to states; the
  mean masked FSC-AUC is the figure compared with cryoDRGN's.

A recipe stops at the first epoch whose masked FSC-AUC reaches the target, or at
``--max-epochs``. Its time is the sum of the training epochs' seconds from
``log.jsonl`` (what cryoDRGN's figure counts too: its ``Finished in`` epochs),
not the scoring. Each recipe runs with its own defaults, as a user would run it,
except the arguments given per recipe (``--recipe-args``); the ``cryodrgn``
family gets ``bench_train_vs_cryodrgn.py``'s networks and batch by default.

Usage::

    python tests/benchmarks/bench_time_to_fsc.py --dataset /tmp/btv/data \\
        --target-json RESULTS/train_vs_cryodrgn_fourier_encoder_corrected_cpu.json \\
        [--recipes cryodrgn,e2gmm,cryofold] [--max-epochs 8] [--output OUT.json]

(``RESULTS`` is ``tests/benchmarks/results``.)
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_forward_backproject import cpu_model, load_average  # noqa: E402
from bench_train_vs_cryodrgn import cluster, score_maps  # noqa: E402

from cryoviz.io.mrc import read_volume  # noqa: E402
from cryoviz.io.particles import load_particles  # noqa: E402
from cryoviz.metrics.fsc import soft_spherical_mask  # noqa: E402
from cryoviz.train.evaluate import eval_volumes, load_run  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
#: bench_train_vs_cryodrgn.py's networks and batch (cryoDRGN's --enc-dim 256
#: --enc-layers 1 --dec-dim 256 --dec-layers 3 -b 16 --zdim 8)
CRYODRGN_NETWORKS = "--zdim 8 --width 256 --depth 3 --batch-size 16"
DEFAULT_RECIPE_ARGS = {
    "cryodrgn": CRYODRGN_NETWORKS,
    "cryodrgn-ae": CRYODRGN_NETWORKS,
    "autodecoder": CRYODRGN_NETWORKS,
    "cryofold": "--reference 4ake",
}


def parse_recipe_args(items: list[str]) -> dict[str, str]:
    """``NAME=ARGS`` items (``--recipe-args``) over :data:`DEFAULT_RECIPE_ARGS`."""
    out = dict(DEFAULT_RECIPE_ARGS)
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--recipe-args {item!r}: expected NAME=ARGS")
        out[name.strip()] = value
    return out


def training_seconds(run_dir: Path) -> list[float]:
    """Seconds of every training epoch of a run (``log.jsonl``)."""
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    return [float(json.loads(line)["seconds"]) for line in lines if line.strip()]


def score_epoch(run_dir: Path, truths: list[torch.Tensor], true_labels: np.ndarray,
                mask: torch.Tensor, apix: float) -> dict:
    """2-means agreement and the masked FSC of the cluster-centre maps of a run."""
    run = load_run(run_dir)
    z = run.mu.astype(np.float64)
    cl = cluster(z, true_labels)
    maps = eval_volumes(run, np.asarray(cl["centres"], dtype=np.float32),
                        box_size=truths[0].shape[0])
    scored = score_maps([m.double().numpy() for m in maps], truths, apix, mask)
    return {"label_agreement_2means": cl["label_agreement"],
            "cluster_sizes": cl["cluster_sizes"],
            "mean_fsc_auc_masked": scored["mean_fsc_auc_masked"],
            "mean_fsc_auc": scored["mean_fsc_auc"],
            "distinct_states": scored["distinct_states"],
            "resolution_05_angstrom": [c["fsc_vs_truth"]["resolution_05_angstrom"]
                                       for c in scored["clusters"]]}


def machine_record(device: str, load_average_start: list[float]) -> dict:
    """The machine a benchmark ran on: date, platform, CPU, torch, device and load."""
    return {"date_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "platform": platform.platform(), "cpu_model": cpu_model(),
            "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch_version": torch.__version__, "device": device,
            "load_average_start": load_average_start, "load_average_end": load_average()}


def mixture_scorer(data: Path) -> tuple[Path, object, Callable[[Path], dict]]:
    """The STAR file, the particles and a :func:`score_epoch` of a simulated mixture.

    ``data`` is a ``cryoviz simulate --states 4ake,1ake`` folder: its true state maps
    and labels, and a soft spherical mask of radius 3/8 of the box.
    """
    star = data / "particles.star"
    ps = load_particles(star)
    box, apix = ps.box_size, ps.pixel_size_angstrom
    true_labels = np.load(data / "truth" / "truth.npz")["labels"]
    truths = [torch.as_tensor(np.ascontiguousarray(read_volume(data / "truth" /
                                                               f"state_{k}.mrc")[0]),
                              dtype=torch.float64) for k in (0, 1)]
    mask = soft_spherical_mask(box, 0.375 * box, 3.0, dtype=torch.float64)

    def score(run_dir: Path) -> dict:
        return score_epoch(run_dir, truths, true_labels, mask, apix)

    return star, ps, score


def run_recipe(name: str, extra: str, star: Path, work: Path, target: float, max_epochs: int,
               seed: int, device: str, score) -> dict:
    """Train ``name`` epoch by epoch until the masked FSC-AUC reaches ``target``."""
    exe = Path(sys.executable).parent / "cryoviz"
    run_dir = work / name
    shutil.rmtree(run_dir, ignore_errors=True)
    curve, reached = [], None
    for epoch in range(1, max_epochs + 1):
        cmd = [str(exe) if exe.exists() else "cryoviz", "train", str(star), "--recipe", name,
               "-o", str(run_dir), "--epochs", str(epoch), "--seed", str(seed),
               "--device", device, *shlex.split(extra), *(["--resume"] if epoch > 1 else [])]
        with open(work / f"{name}_train.log", "a") as log:
            log.write("$ " + shlex.join(cmd) + "\n")
            log.flush()
            subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True)
        seconds = training_seconds(run_dir)
        if len(seconds) != epoch:
            raise RuntimeError(f"{run_dir / 'log.jsonl'}: {len(seconds)} epochs, expected {epoch}")
        entry = {"epoch": epoch, "training_seconds": float(np.sum(seconds)),
                 "epoch_seconds": seconds[-1], **score(run_dir)}
        curve.append(entry)
        print(f"{name} epoch {epoch}: {entry['training_seconds']:.1f} s, masked FSC-AUC "
              f"{entry['mean_fsc_auc_masked']:.4f}, agreement "
              f"{entry['label_agreement_2means']:.3f}", flush=True)
        if entry["mean_fsc_auc_masked"] >= target:
            reached = entry
            break
    return {"command_args": extra, "curve": curve, "reached": reached is not None,
            "epochs_to_target": None if reached is None else reached["epoch"],
            "seconds_to_target": None if reached is None else reached["training_seconds"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", type=Path, required=True,
                        help="the cryoviz simulate folder of the target's run")
    parser.add_argument("--target-json", type=Path, required=True,
                        help="a bench_train_vs_cryodrgn.py result on the same dataset")
    parser.add_argument("--recipes", default="cryodrgn,cryodrgn-ae,e2gmm,cryofold")
    parser.add_argument("--recipe-args", action="append", default=[],
                        help="NAME=ARGS: extra cryoviz train arguments of recipe NAME "
                             "(repeatable; defaults in DEFAULT_RECIPE_ARGS)")
    parser.add_argument("--max-epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", type=Path, default=None,
                        help="scratch folder (default DATASET/bench_time_to_fsc)")
    parser.add_argument("--output", type=Path, default=RESULTS / "time_to_fsc_cpu.json")
    args = parser.parse_args(argv)

    data = args.dataset.resolve()
    ref = json.loads(args.target_json.read_text())
    if Path(ref["dataset"]["path"]).resolve() != data:
        parser.error(f"{args.target_json}: its dataset is {ref['dataset']['path']}, "
                     f"not {data}")
    drgn = ref["cryodrgn"]
    target = float(drgn["mean_fsc_auc_masked"])
    recipe_args = parse_recipe_args(args.recipe_args)
    star, ps, score = mixture_scorer(data)
    work = (args.work or data / "bench_time_to_fsc").resolve()
    work.mkdir(parents=True, exist_ok=True)

    started = load_average()
    recipes = {}
    for name in [r.strip() for r in args.recipes.split(",") if r.strip()]:
        recipes[name] = run_recipe(name, recipe_args.get(name, ""), star, work, target,
                                   args.max_epochs, args.seed, args.device, score)
    reached = {n: r["seconds_to_target"] for n, r in recipes.items() if r["reached"]}
    first = min(reached, key=reached.get) if reached else None
    drgn_seconds = float(np.sum(drgn["seconds_per_epoch"]))
    out = {
        "benchmark": "time_to_fsc",
        "command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
        "machine": machine_record(args.device, started),
        "dataset": {"path": str(data), "n_particles": len(ps), "box_size": ps.box_size,
                    "pixel_size_angstrom": ps.pixel_size_angstrom},
        "target": {"json": str(args.target_json), "cryodrgn_epochs": ref["settings"]["epochs"],
                   "cryodrgn_mean_fsc_auc_masked": target,
                   "cryodrgn_label_agreement_2means": drgn["label_agreement_2means"],
                   "cryodrgn_training_seconds": drgn_seconds,
                   "cryodrgn_command": drgn["command"]},
        "recipes": recipes,
        "first_recipe": first,
        "first_recipe_seconds": None if first is None else reached[first],
        "cryodrgn_seconds_over_first": None if first is None else drgn_seconds / reached[first],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=1) + "\n")
    print(f"target masked FSC-AUC {target:.4f} (cryoDRGN, {drgn_seconds:.1f} s); "
          f"first: {first} {out['first_recipe_seconds']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
