"""Heterogeneous ab initio (``cryosparc-abinit --classes K``) on a mixture of discrete states.

Nothing is given: no maps, no poses, no states. The run is the recipe's
pipeline (:func:`cryoviz.inference.abinit_pipeline.iter_class_ab_initio`): K
initial models by stochastic modal EM, each class one random start (``--starts``
restarts), then an initial model of each class's own particles, then a
classification with the poses searched from those. Records, after the K-class
initial models, after each class's own initial model (maps only) and after the
classification:

* the agreement of the particles' classes with the true states;
* per class (matched to the state most of its particles have): FSC 0.5 (Å) and
  FSC-AUC of the class map against that state after rigid alignment with the
  hand (:func:`cryoviz.metrics.alignment.align_volume`), and against every other
  state;
* per class, the median rotation error of its particles of the matched state
  after the best global rotation and hand of that class
  (:func:`cryoviz.metrics.rotation_error_deg`: each class map has its own frame);
* wall times.

``--homogeneous-control`` also runs the one-class pipeline (``cryosparc-abinit``:
``--starts`` starts, the same steps, then as many refinement iterations) on each true
state's particles alone and scores its map and poses the same way: what ab
initio reaches on these images when the classes are given, an upper bound for
the classes' maps.

The dataset is the bench suite's (``--dataset``, default
``mixture-hi-uniform-small``: box 64, 2 Å/px, SNR 0.1, 4,000 particles, CTF),
built under ``--root`` if it is not there. ``--dataset three-state-small`` is
built by this script instead: three discrete states in one frame, 4AKE (open),
1AKE (closed) and 4AKE without its LID domain (the suite's compositional
subunit), 6,000 particles with equal state weights, and the same size, SNR,
pose and CTF settings. ``--folder DIR`` takes any ``cryoviz simulate`` folder
instead (e.g. the issue's 20,000 particles: ``cryoviz simulate -o DIR --states
4ake,1ake --n-particles 20000 --box 64 --pixel-size 2 --snr 0.1``). ``--classes``
defaults to the dataset's number of states.

Usage::

    OMP_NUM_THREADS=2 python tests/benchmarks/bench_abinit_classes.py \\
        [--root /tmp/bench-data] [--dataset mixture-hi-uniform-small] [--classes K] \\
        [--seed 0] [--iterations 5] [--abinit-steps 150] [--starts 1] \\
        [--screen C --screen-steps S] [--more-iterations 10,15] [--global-iterations G] \\
        [--checkpoint-dir DIR [--redo-classification]] [--homogeneous-control] \\
        [--skip-classes] [--output JSON]

``--screen C --screen-steps S`` screens C starts of each class's own initial
model (and the control's) for S steps and takes the R best on.

``--more-iterations 10,15`` then resumes the classification from its checkpoint
(kept in a temporary folder) to 10, then 15 iterations, and scores it again at
each (``classification_more``): what further iterations give, without running
the initial models again.

``--global-iterations G`` gives the classification G iterations of global pose
search (default 1 here, as in the recorded results; the recipe's default since the
twentieth session is 3, ``CLASS_GLOBAL_ITERATIONS``). ``--checkpoint-dir DIR``
keeps the run's checkpoints in DIR and resumes from those there: the initial
models' stages are read back (and not scored again); with
``--redo-classification`` the classification's checkpoint is removed first, so the
classification alone runs again, e.g. with another ``--global-iterations``.

``--starts R`` restarts the K-class initial models R times and keeps the K maps of
all restarts that explain a common image set best (and gives the control R starts).

Writes ``tests/benchmarks/results/abinit_classes_<device>[_three_state][_control][_starts<R>]
[_screen<C>x<S>][_iters<last>][_global<G>][_seed<S>].json``.
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

from cryoviz.analysis.clustering import label_agreement  # noqa: E402
from cryoviz.bench.suite import (  # noqa: E402
    LID_RESIDUES,
    SNRS,
    SUITE_VERSION,
    build_dataset,
    suite_datasets,
    write_structure_maps,
)
from cryoviz.bench.tasks import load_truth  # noqa: E402
from cryoviz.inference.abinit import AbinitSettings  # noqa: E402
from cryoviz.inference.abinit_classes import ClassAbinitProgress  # noqa: E402
from cryoviz.inference.abinit_pipeline import (  # noqa: E402
    ClassMapProgress,
    iter_ab_initio,
    iter_class_ab_initio,
    refinement_after_abinit,
)
from cryoviz.inference.class_refine import ClassRefineProgress  # noqa: E402
from cryoviz.inference.class_refine_state import CLASS_STATE_FILE  # noqa: E402
from cryoviz.io import load_particles  # noqa: E402
from cryoviz.metrics import fsc, rotation_error_deg  # noqa: E402
from cryoviz.metrics.alignment import align_volume  # noqa: E402
from cryoviz.simulate import SimulationConfig, simulate  # noqa: E402
from cryoviz.structure import adenylate_kinase_pair  # noqa: E402

THREE_STATE = "three-state-small"


def three_state_dataset(root: Path, per_state: int = 2000) -> Path:
    """Simulate (once) open, closed and LID-less open adenylate kinase into ``root``.

    The three maps are rendered from the aligned 4AKE / 1AKE pair (B 20 Å²) on the
    small suite's grid (box 64, 2 Å/px) and simulated at the ``hi`` SNR with
    uniform poses, ``3 * per_state`` particles with equal state weights.
    """
    folder = root / THREE_STATE
    record = folder / "bench_dataset.json"
    wanted = {"suite_version": SUITE_VERSION, "dataset": THREE_STATE, "per_state": per_state}
    if record.is_file() and json.loads(record.read_text()) == wanted:
        return folder
    box, apix = 64, 2.0
    open_state, closed_state = adenylate_kinase_pair(aligned=True)
    without_lid = open_state.subset(~open_state.residue_mask(LID_RESIDUES))
    paths = write_structure_maps({"4ake.mrc": open_state, "1ake.mrc": closed_state,
                                  "4ake_no_lid.mrc": without_lid}, folder / "inputs", box, apix)
    simulate(SimulationConfig(n_particles=3 * per_state, box_size=box, pixel_size_angstrom=apix,
                              snr=SNRS["hi"], states=tuple(paths), ensemble="discrete",
                              pose_distribution="uniform", seed=3), folder)
    record.write_text(json.dumps(wanted, indent=2))
    return folder


def score_class(volume: torch.Tensor, members: np.ndarray, rotations: np.ndarray | None,
                truth) -> dict:
    """One class map and its particles (boolean ``members``): see the module docstring.

    ``rotations`` ``None``: the map alone (no pose errors).
    """
    labels = truth.labels.astype(int)
    if not members.any():
        return {"particles": 0}
    apix = truth.pixel_size_angstrom
    state = int(np.bincount(labels[members], minlength=len(truth.maps)).argmax())
    maps_vs = {}
    for s in range(len(truth.maps)):
        ref = truth.maps[s].to(torch.float64)
        curve = fsc(align_volume(volume.to(torch.float64), ref).aligned, ref)
        maps_vs[f"state_{s}"] = {"fsc05_angstrom": float(curve.resolution_angstrom(apix, 0.5)),
                                 "fsc_auc": float(curve.auc())}
    own = members & (labels == state)
    if rotations is None:
        return {"particles": int(members.sum()), "matched_state": state,
                "purity": float(own.sum() / members.sum()), "maps": maps_vs}
    err = rotation_error_deg(torch.as_tensor(rotations[own]),
                             torch.as_tensor(truth.rotations[own])).numpy()
    return {"particles": int(members.sum()), "matched_state": state,
            "purity": float(own.sum() / members.sum()), "maps": maps_vs,
            "median_rotation_error_deg": float(np.median(err)),
            "fraction_within_10deg": float(np.mean(err <= 10.0)),
            "fraction_within_20deg": float(np.mean(err <= 20.0))}


def score(maps: torch.Tensor, classes: np.ndarray, rotations: np.ndarray | None,
          truth) -> dict:
    """Agreement with the true states and :func:`score_class` of every class."""
    return {"agreement": float(label_agreement(classes, truth.labels.astype(int))),
            "classes": [score_class(maps[k], classes == k, rotations, truth)
                        for k in range(len(maps))]}


def homogeneous_control(particles, truth, abinit, refine) -> list[dict]:
    """The one-class pipeline on each true state's particles alone, scored as a class."""
    labels = truth.labels.astype(int)
    rows = []
    for state in range(len(truth.maps)):
        members = np.flatnonzero(labels == state)
        t0 = time.perf_counter()
        result = None
        for progress in iter_ab_initio(particles.subset(members), abinit, refine):
            result = getattr(progress, "result", None) or result
        rotations = np.zeros((len(labels), 3, 3))
        rotations[members] = result.posterior.rotations
        rows.append({**score_class(result.map, labels == state, rotations, truth),
                     "seconds": time.perf_counter() - t0})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def more_iterations(particles, truth, k_classes: int, abinit: AbinitSettings,
                    counts: list[int], checkpoint: str, global_iterations: int) -> list[dict]:
    """Resume the classification in ``checkpoint`` to each of ``counts`` iterations and score it."""
    rows = []
    for count in counts:
        t0 = time.perf_counter()
        refine = refinement_after_abinit(abinit, modal=True, n_iterations=count,
                                         n_global_iterations=global_iterations)
        result = None
        for state in iter_class_ab_initio(particles, k_classes, abinit, refine,
                                          checkpoint_dir=checkpoint, resume=True):
            if isinstance(state, ClassRefineProgress):
                print(f"classification iteration {state.iteration}  fractions "
                      f"{state.class_fractions}  changed {state.changed_fraction:.3f}",
                      flush=True)
                result = state.result or result
        rows.append({"iterations": count,
                     **score(result.classes.maps, result.classes.best_class,
                             result.posterior.rotations, truth),
                     "seconds": time.perf_counter() - t0})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/bench-data"))
    parser.add_argument("--dataset", default="mixture-hi-uniform-small")
    parser.add_argument("--folder", type=Path, default=None,
                        help="a `cryoviz simulate` folder (with truth/) instead of --dataset")
    parser.add_argument("--classes", type=int, default=None,
                        help="K (default: the dataset's number of true states)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=5,
                        help="classification iterations after the initial models")
    parser.add_argument("--abinit-steps", type=int, default=150)
    parser.add_argument("--starts", type=int, default=1,
                        help="restarts of the K-class initial models (n_starts); the control's "
                        "starts too")
    parser.add_argument("--screen", type=int, default=0,
                        help="screened starts of each class's own initial model (and of the "
                        "control's): screen_starts; the --starts best go on")
    parser.add_argument("--screen-steps", type=int, default=100,
                        help="steps of a screened start before the screen")
    parser.add_argument("--more-iterations", default="",
                        help="comma-separated larger iteration counts: the classification "
                        "is resumed to each and scored again")
    parser.add_argument("--global-iterations", type=int, default=1,
                        help="classification iterations with a global pose search")
    parser.add_argument("--checkpoint-dir", type=Path, default=None,
                        help="keep the checkpoints here and resume from those there")
    parser.add_argument("--redo-classification", action="store_true",
                        help="remove the classification's checkpoint in --checkpoint-dir first")
    parser.add_argument("--homogeneous-control", action="store_true",
                        help="also the one-class pipeline on each true state's particles")
    parser.add_argument("--skip-classes", action="store_true",
                        help="only the homogeneous control (with --homogeneous-control)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if args.folder is not None and args.output is None:
        # the default file name says nothing of the folder: it would overwrite a suite result
        parser.error("--folder needs --output")
    specs = {s.name: s for s in suite_datasets("small") + suite_datasets("tiny")}
    if args.folder is not None:
        folder = args.folder
    elif args.dataset == THREE_STATE:
        folder = three_state_dataset(args.root)
    else:
        folder = build_dataset(specs[args.dataset], args.root)
    particles = load_particles(folder / "particles.star")
    truth = load_truth(folder)
    k_classes = args.classes or len(truth.maps)
    start_load = load_average()
    abinit = AbinitSettings(n_steps=args.abinit_steps, n_starts=args.starts, seed=args.seed,
                            screen_starts=args.screen, screen_steps=args.screen_steps)
    refine = refinement_after_abinit(abinit, modal=True, n_iterations=args.iterations,
                                     n_global_iterations=args.global_iterations)
    more = [int(v) for v in args.more_iterations.split(",") if v.strip()]
    if any(b <= a for a, b in zip(([args.iterations] + more)[:-1], more, strict=True)):
        parser.error("--more-iterations must increase from --iterations")
    workdir = (tempfile.TemporaryDirectory(prefix="bench_abinit_classes_")
               if more and args.checkpoint_dir is None else None)
    checkpoint = args.checkpoint_dir or (None if workdir is None else workdir.name)
    if args.redo_classification:
        if args.checkpoint_dir is None:
            parser.error("--redo-classification needs --checkpoint-dir")
        (args.checkpoint_dir / CLASS_STATE_FILE).unlink(missing_ok=True)
    stages, t0, first = {}, time.perf_counter(), None
    for state in () if args.skip_classes else iter_class_ab_initio(
            particles, k_classes, abinit, refine, checkpoint_dir=checkpoint,
            resume=args.checkpoint_dir is not None):
        if isinstance(state, ClassAbinitProgress):
            if state.step % 25 == 0:
                print(f"initial models restart {state.start} step {state.step}  fractions "
                      f"{state.class_fractions}  "
                      f"{state.elapsed_seconds:.0f} s", flush=True)
            if state.result is not None:
                first = state.result
                stages["initial_models"] = {
                    **score(first.maps, first.best_class, first.rotations, truth),
                    "chosen_maps": [list(pair) for pair in first.chosen_maps],
                    "start_log_likelihoods": list(first.start_log_likelihoods),
                    "log_likelihood": first.log_likelihood,
                    "seconds": time.perf_counter() - t0}
                print(json.dumps(stages["initial_models"]), flush=True)
            continue
        if isinstance(state, ClassMapProgress):
            if state.maps is not None and first is not None:
                stages["class_maps"] = {**score(state.maps, first.best_class, None, truth),
                                        "seconds": time.perf_counter() - t0}
                print(json.dumps(stages["class_maps"]), flush=True)
            continue
        print(f"classification iteration {state.iteration}  fractions "
              f"{state.class_fractions}  changed {state.changed_fraction:.3f}", flush=True)
        if state.result is not None:
            result = state.result
            stages["classification"] = {
                **score(result.classes.maps, result.classes.best_class,
                        result.posterior.rotations, truth),
                "seconds": time.perf_counter() - t0}
    if more and not args.skip_classes:
        stages["classification_more"] = more_iterations(particles, truth, k_classes, abinit,
                                                        more, checkpoint,
                                                        args.global_iterations)
    if args.homogeneous_control:
        stages["homogeneous_control"] = homogeneous_control(
            particles, truth, abinit, refinement_after_abinit(abinit, modal=True,
                                                              n_iterations=args.iterations))
    out = {"machine": {**machine_info(torch.device("cpu")), "load_average_start": start_load,
                       "load_average_end": load_average()},
           "dataset": {"name": args.dataset if args.folder is None else str(args.folder),
                       "particles": len(particles),
                       "box": particles.box_size,
                       "pixel_size_angstrom": particles.pixel_size_angstrom},
           "settings": {"seed": args.seed, "abinit_steps": args.abinit_steps,
                        "starts": args.starts, "screen_starts": args.screen,
                        "screen_steps": args.screen_steps,
                        "classes_run": not args.skip_classes,
                        "abinit_box": abinit.box_size, "iterations": args.iterations,
                        "more_iterations": more, "global_iterations": args.global_iterations,
                        "classes": k_classes},
           **stages}
    suffix = ("" if args.dataset != THREE_STATE else "_three_state") + (
        "_control" if args.skip_classes else "") + (
        "" if args.starts == 1 else f"_starts{args.starts}") + (
        "" if not args.screen else f"_screen{args.screen}x{args.screen_steps}") + (
        "" if not more else f"_iters{more[-1]}") + (
        "" if args.global_iterations == 1 else f"_global{args.global_iterations}") + (
        "" if args.seed == 0 else f"_seed{args.seed}")
    path = args.output or RESULTS_DIR / f"abinit_classes_{out['machine']['device']}{suffix}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(stages, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
