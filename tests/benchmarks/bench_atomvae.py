"""atomvae: poses from nothing (amortized, multi-head) and conformations of a mixture.

Two experiments on simulated adenylate kinase with CTF and shifts (uniform poses;
``--particles``, ``--box``, ``--pixel-size``, ``--snr``). No poses are given to
the recipe; the base structure is 4AKE (residue-level Gaussians by default,
``--level atom`` for atoms).

1. *Pose-only warm-up*, homogeneous 4AKE: ``atomvae`` with ``--warmup-epochs``
   pose-only epochs and one joint epoch, with ``--heads`` hypotheses and with
   one head (same data, seed and budget). Records the rotation error of the
   exported best poses against the truth (no alignment: the base structure
   fixes the frame and the hand), its median, the fractions within 10 and 20
   degrees, and the wall time.
2. *Mixture*, 4AKE / 1AKE 50 / 50: ``atomvae`` for ``--mixture-epochs`` epochs
   (``--warmup-epochs`` of them pose-only). Records the rotation error per
   true state, the agreement of the latent 2-means with the true states, the
   FSC 0.5 of the map decoded at each cluster centre against its matched true
   state, and the mean CA RMSD of the decoded residues to the true states.

3. *Search control* (``--search-control``), on the same mixture: one global
   exact-EM iteration (``relion-refine``, HEALPix order 1 then the next order
   around the best poses) against the true map of the base state (4AKE),
   low-passed to 12, 20 and 30 Å. Records the rotation error per true state
   (no alignment: the base map fixes the frame). An exhaustive search against
   the exact base map bounds what an amortized encoder trained against the
   base can find: closed particles it cannot place, the encoder cannot either.

Writes ``tests/benchmarks/results/atomvae_<device>.json``.

Usage::

    OMP_NUM_THREADS=2 python tests/benchmarks/bench_atomvae.py \
        [--particles 2000] [--box 32] [--pixel-size 4] [--snr 1] [--heads 8] \
        [--warmup-epochs 15] [--mixture-epochs 25] [--level residue] [--skip-mixture] \
        [--skip-single-head] [--encoder vae|joint] [--skip-warm-up] [--search-control] \
        [--output JSON]

``--encoder joint`` trains one CNN for the poses and z (``Recipe.encoder``); the
warm-up does not depend on it (the joint CNN's pose part is trained exactly as
the separate pose encoder), so ``--skip-warm-up`` runs the mixture alone.
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

from cryoviz.analysis.clustering import kmeans, label_agreement  # noqa: E402
from cryoviz.geometry import geodesic_distance_deg  # noqa: E402
from cryoviz.inference.posterior import read_pose_posterior  # noqa: E402
from cryoviz.inference.refine import RefineSettings, run_refine  # noqa: E402
from cryoviz.io import load_particles, read_volume  # noqa: E402
from cryoviz.metrics import fsc  # noqa: E402
from cryoviz.simulate import SimulationConfig, simulate  # noqa: E402
from cryoviz.train.evaluate import eval_volumes, load_run  # noqa: E402
from cryoviz.train.loop import iter_train  # noqa: E402
from cryoviz.train.recipes import get_recipe  # noqa: E402
from cryoviz.volumes.gmm_init import load_reference  # noqa: E402


def _train(particles, out: Path, args, epochs: int, heads: int) -> float:
    recipe = get_recipe("atomvae", reference="4ake", reference_level=args.level,
                        epochs=epochs, pose_only_epochs=args.warmup_epochs,
                        batch_size=args.batch_size, pose_heads=heads, seed=args.seed,
                        encoder=args.encoder)
    t0 = time.perf_counter()
    for p in iter_train(particles, recipe, out):
        print(f"  {out.name}: epoch {p.epoch}/{p.epochs} loss {p.loss:.4f} "
              f"{p.seconds:.1f} s", flush=True)
    return time.perf_counter() - t0


def _pose_errors(run_dir: Path, truth: np.ndarray) -> np.ndarray:
    post = read_pose_posterior(run_dir)
    return geodesic_distance_deg(torch.as_tensor(post.rotations),
                                 torch.as_tensor(truth)).numpy()


def _summary(err: np.ndarray) -> dict:
    return {"median_rotation_error_deg": float(np.median(err)),
            "fraction_within_10deg": float(np.mean(err <= 10.0)),
            "fraction_within_20deg": float(np.mean(err <= 20.0))}


def _simulate(folder: Path, states: tuple[str, ...], args) -> tuple:
    simulate(SimulationConfig(n_particles=args.particles, box_size=args.box,
                              pixel_size_angstrom=args.pixel_size, snr=args.snr, states=states,
                              seed=31 + len(states)), folder)
    with np.load(folder / "truth" / "truth.npz") as npz:
        truth = {k: npz[k] for k in ("rotations", "labels")}
    return load_particles(folder / "particles.star"), truth


def _warm_up(tmp: Path, args) -> list[dict]:
    particles, truth = _simulate(tmp / "homogeneous", ("4ake",), args)
    runs = []
    for heads in (args.heads,) if args.skip_single_head else (args.heads, 1):
        out = tmp / f"warmup_heads{heads}"
        seconds = _train(particles, out, args, args.warmup_epochs + 1, heads)
        runs.append({"heads": heads, **_summary(_pose_errors(out, truth["rotations"])),
                     "seconds": seconds})
    return runs


def _mixture(tmp: Path, args) -> dict:
    data = tmp / "mixture"
    particles, truth = _simulate(data, ("4ake", "1ake"), args)
    out = tmp / "mixture_run"
    seconds = _train(particles, out, args, args.mixture_epochs, args.heads)
    err = _pose_errors(out, truth["rotations"])
    labels = truth["labels"].astype(int)
    run = load_run(out)
    z = run.mu.astype(np.float64)
    clusters = kmeans(z, 2, seed=0)
    centres = clusters.centres
    maps = eval_volumes(run, centres, box_size=args.box)
    states = [torch.as_tensor(read_volume(data / "truth" / f"state_{k}.mrc")[0],
                              dtype=torch.float64) for k in (0, 1)]
    per_cluster = []
    for c in range(2):
        members = labels[clusters.labels == c]
        state = int(np.bincount(members, minlength=2).argmax())
        curve = fsc(torch.as_tensor(maps[c], dtype=torch.float64), states[state])
        centres_a = run.volume.mixture(torch.as_tensor(centres[c], dtype=torch.float32)
                                       ).centres_angstrom.detach().reshape(-1, 3).numpy()
        true_ca = load_reference(("4ake", "1ake")[state], "residue").centres_angstrom.numpy()
        rmsd = (float(np.sqrt(((centres_a - true_ca) ** 2).sum(1).mean()))
                if args.level == "residue" else None)
        per_cluster.append({"matched_state": state, "particles": int(len(members)),
                            "fsc05_px": float(curve.resolution_px(0.5)),
                            "ca_rmsd_angstrom": rmsd})
    return {"epochs": args.mixture_epochs, "pose_only_epochs": args.warmup_epochs,
            "kmeans2_agreement": float(label_agreement(clusters.labels, labels)),
            "rotation_error_per_state": {f"state_{k}": _summary(err[labels == k])
                                         for k in (0, 1)},
            "clusters": per_cluster, "seconds": seconds}


def _search_control(tmp: Path, args) -> list[dict]:
    data = tmp / "mixture_search"  # the same simulation as the mixture's (same seed)
    particles, truth = _simulate(data, ("4ake", "1ake"), args)
    base = torch.as_tensor(read_volume(data / "truth" / "state_0.mrc")[0])
    labels = truth["labels"].astype(int)
    rows = []
    for lowpass in (12.0, 20.0, 30.0):
        t0 = time.perf_counter()
        result = run_refine(particles, base, settings=RefineSettings(
            n_iterations=1, n_global_iterations=1, initial_lowpass_angstrom=lowpass,
            seed=args.seed))
        err = geodesic_distance_deg(torch.as_tensor(result.posterior.rotations),
                                    torch.as_tensor(truth["rotations"])).numpy()
        rows.append({"lowpass_angstrom": lowpass, "seconds": time.perf_counter() - t0,
                     "rotation_error_per_state": {f"state_{k}": _summary(err[labels == k])
                                                  for k in (0, 1)}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=2000)
    parser.add_argument("--box", type=int, default=32)
    parser.add_argument("--pixel-size", type=float, default=4.0)
    parser.add_argument("--snr", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--warmup-epochs", type=int, default=15)
    parser.add_argument("--mixture-epochs", type=int, default=25)
    parser.add_argument("--level", choices=("residue", "atom"), default="residue")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--encoder", choices=("vae", "joint"), default="vae",
                        help="latent encoder: an image MLP beside the pose CNN, or one CNN "
                        "for both")
    parser.add_argument("--skip-warm-up", action="store_true",
                        help="only the mixture (the warm-up does not depend on --encoder)")
    parser.add_argument("--skip-mixture", action="store_true")
    parser.add_argument("--skip-single-head", action="store_true",
                        help="warm-up with --heads only (no one-head control)")
    parser.add_argument("--search-control", action="store_true",
                        help="also search the mixture's poses against the true base map")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON path (default: results/atomvae_<device>.json)")
    args = parser.parse_args()
    start_load = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        warm_up = None if args.skip_warm_up else _warm_up(Path(tmp), args)
        mixture = None if args.skip_mixture else _mixture(Path(tmp), args)
        control = _search_control(Path(tmp), args) if args.search_control else None
    out = {"machine": {**machine_info(torch.device("cpu")), "load_average_start": start_load,
                       "load_average_end": load_average()},
           "dataset": {"particles": args.particles, "box": args.box,
                       "pixel_size_angstrom": args.pixel_size, "snr": args.snr,
                       "poses": "uniform, not given", "ctf": True},
           "settings": {"batch_size": args.batch_size, "heads": args.heads,
                        "warmup_epochs": args.warmup_epochs, "level": args.level,
                        "seed": args.seed, "encoder": args.encoder},
           "warm_up": warm_up, "mixture": mixture, "search_control": control}
    path = args.output or RESULTS_DIR / f"atomvae_{out['machine']['device']}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({"warm_up": warm_up, "mixture": mixture, "search_control": control},
                     indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
