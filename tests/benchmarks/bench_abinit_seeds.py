"""How often does one start of the ab initio initial model find one state's map?

The one-class initial model (:func:`cryoviz.inference.abinit.run_abinit`, one
start) is run with several seeds on the particles of one true state of a bench
mixture. For each seed it records:

* FSC 0.5 (Å) of the initial model against the true state after rigid alignment
  with the hand (:func:`cryoviz.metrics.alignment.align_volume`);
* the median rotation error of the particles' last poses after the best global
  rotation and hand (:func:`cryoviz.metrics.rotation_error_deg`), the fraction
  within 20° and the fraction wrong by more than 150°;
* the mean log evidence of a fixed set of the state's images under the seed's
  working map (the same images, noise per shell and resolution limit for every
  seed): the figure by which the recipe's ``n_starts`` picks its start.

``--trace-every K`` also records that evidence every ``K`` steps of each seed's
run (the map as it stands then): how early a start's evidence tells whether it
will find the map, which is what screening many short starts needs.

``--screen C --screen-steps S --keep M`` runs each seed as the recipe's
screening does instead of one start: ``C`` starts of ``S`` steps, the ``M`` of
largest evidence taken on to the end, the best of those kept
(:class:`~cryoviz.inference.abinit.AbinitSettings` ``screen_starts``); the row
adds the screen's evidences and the starts kept.

``--truth-control`` also searches every particle's pose against the true map
low-passed to 12 and 20 Å (one global exact-EM iteration,
:func:`cryoviz.inference.refine.run_refine`, errors in the truth's frame): whether
the images carry enough signal at those limits to be oriented at all.

The dataset is the bench suite's (``--dataset``, default
``mixture-hi-uniform-small``: 4AKE / 1AKE, box 64, 2 Å/px, SNR 0.1, 4,000
particles, CTF), built under ``--root`` if it is not there; ``--state 1`` is the
closed state (1AKE).

Usage::

    OMP_NUM_THREADS=2 python tests/benchmarks/bench_abinit_seeds.py [--state 1] \\
        [--seeds 0,1,2,3,4,5,6,7] [--abinit-steps 150] [--trace-every K] \\
        [--screen C --screen-steps S --keep M] [--truth-control] [--output JSON]

Writes ``tests/benchmarks/results/abinit_seeds_state<S>_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_forward_backproject import RESULTS_DIR, load_average, machine_info  # noqa: E402

from cryoviz.bench.suite import build_dataset, suite_datasets  # noqa: E402
from cryoviz.bench.tasks import load_truth  # noqa: E402
from cryoviz.imaging import volume_to_fourier  # noqa: E402
from cryoviz.inference.abinit import (  # noqa: E402
    AbinitSettings,
    _Context,
    _random_start,
    _step,
    run_abinit,
    upsample_map,
)
from cryoviz.inference.abinit_state import Schedule  # noqa: E402
from cryoviz.inference.refine import RefineSettings, run_refine  # noqa: E402
from cryoviz.io import load_particles  # noqa: E402
from cryoviz.io.particles import ImageSource  # noqa: E402
from cryoviz.metrics import fsc, rotation_error_deg  # noqa: E402
from cryoviz.metrics.alignment import align_volume  # noqa: E402
from cryoviz.metrics.poses import geodesic_distance_deg  # noqa: E402
from cryoviz.noise import half_plane_shells  # noqa: E402

COMMON_IMAGES = 600
COMMON_SEED = 99


def error_summary(err: np.ndarray) -> dict:
    """Median, fraction within 20° and fraction beyond 150° of rotation errors (°)."""
    return {"median_rotation_error_deg": float(np.median(err)),
            "fraction_within_20deg": float(np.mean(err <= 20.0)),
            "fraction_beyond_150deg": float(np.mean(err > 150.0))}


class EvidenceProbe:
    """Mean log evidence of a fixed image set under a working map (fixed noise and limit)."""

    def __init__(self, particles, source, settings: AbinitSettings) -> None:
        self.box = settings.box_size or particles.box_size
        apix = particles.pixel_size_angstrom * particles.box_size / self.box
        self.ctx = _Context.build(particles, source, settings, torch.device("cpu"), self.box,
                                  apix)
        layout = half_plane_shells(self.box)
        common = np.sort(np.random.default_rng(COMMON_SEED).permutation(len(particles))[
            :min(len(particles), COMMON_IMAGES)])
        _, self.x, self.ctf = self.ctx.read(common)
        noise = layout.sums(self.x.real**2 + self.x.imag**2).sum(dim=0) / (
            2.0 * len(common) * layout.count.clamp(min=1e-30))
        noise[0] = noise[1]
        self.noise = noise
        self.limit = max(1, min(self.box // 2, int(self.box * apix / max(
            settings.final_resolution_angstrom, 2.0 * apix))))

    def __call__(self, working_map: torch.Tensor) -> float:
        volume_ft = volume_to_fourier(working_map.to(torch.float64))
        return float(self.ctx.search(volume_ft, self.x, self.ctf, self.noise,
                                     self.limit).evidence.mean())


def traced_run(particles, source, settings: AbinitSettings, probe: EvidenceProbe,
               every: int) -> tuple[dict, list[dict]]:
    """One start of the initial model, step by step as :func:`run_abinit` takes them.

    Returns the final map and poses (``map``, ``working_map``, ``rotations``,
    ``seen``) and the evidence every ``every`` steps (``[{"step", "evidence"}]``).
    """
    box = settings.box_size or particles.box_size
    apix = particles.pixel_size_angstrom * particles.box_size / box
    ctx = _Context.build(particles, source, settings, torch.device("cpu"), box, apix)
    layout = half_plane_shells(box)
    rng = np.random.default_rng(settings.seed)
    state = _random_start(ctx, rng, torch.Generator().manual_seed(settings.seed), layout)
    schedule = Schedule(len(particles), settings.batch_size, rng)
    trace = []
    for step in range(1, settings.n_steps + 1):
        _step(ctx, state, schedule.next_batch(), step, layout)
        if step % every == 0 or step == settings.n_steps:
            trace.append({"step": step, "evidence": probe(state.volume)})
    working = state.volume.to(torch.float32)
    return {"map": upsample_map(working, particles.box_size), "working_map": working,
            "rotations": state.rotations, "seen": state.seen}, trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/bench-data"))
    parser.add_argument("--dataset", default="mixture-hi-uniform-small")
    parser.add_argument("--state", type=int, default=1)
    parser.add_argument("--seeds", default="0,1,2,3,4,5,6,7")
    parser.add_argument("--abinit-steps", type=int, default=150)
    parser.add_argument("--trace-every", type=int, default=0)
    parser.add_argument("--screen", type=int, default=0)
    parser.add_argument("--screen-steps", type=int, default=100)
    parser.add_argument("--keep", type=int, default=1)
    parser.add_argument("--truth-control", action="store_true")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if args.trace_every and args.screen:
        parser.error("--trace-every follows one start; it cannot be combined with --screen")
    specs = {s.name: s for s in suite_datasets("small") + suite_datasets("tiny")}
    folder = build_dataset(specs[args.dataset], args.root)
    particles = load_particles(folder / "particles.star")
    truth = load_truth(folder)
    members = np.flatnonzero(truth.labels.astype(int) == args.state)
    subset = particles.subset(members)
    true_rotations = torch.as_tensor(truth.rotations[members])
    reference = truth.maps[args.state].to(torch.float64)
    apix = truth.pixel_size_angstrom
    start_load = load_average()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    with ImageSource(subset) as source:
        probe = EvidenceProbe(subset, source, AbinitSettings(n_steps=args.abinit_steps))
        for seed in seeds:
            t0 = time.perf_counter()
            settings = AbinitSettings(n_steps=args.abinit_steps, seed=seed,
                                      n_starts=args.keep if args.screen else 1,
                                      screen_starts=args.screen,
                                      screen_steps=args.screen_steps)
            trace, screen = [], {}
            if args.trace_every:
                result, trace = traced_run(subset, source, settings, probe, args.trace_every)
            else:
                run = run_abinit(subset, settings=settings)
                result = {"map": run.map, "working_map": run.working_map,
                          "rotations": run.rotations, "seen": run.seen}
                if args.screen:
                    screen = {"screen_evidences": list(run.screen_evidences),
                              "finished_starts": list(run.finished_starts),
                              "start_evidences": list(run.start_evidences),
                              "chosen_start": run.chosen_start}
            seen = result["seen"]
            curve = fsc(align_volume(result["map"].to(torch.float64), reference).aligned,
                        reference)
            err = rotation_error_deg(torch.as_tensor(result["rotations"][seen]),
                                     true_rotations[seen]).numpy()
            rows.append({"seed": seed, "fsc05_angstrom": float(curve.resolution_angstrom(apix,
                                                                                          0.5)),
                         **error_summary(err), "evidence": probe(result["working_map"]),
                         "evidence_trace": trace, **screen,
                         "seconds": time.perf_counter() - t0})
            print(json.dumps(rows[-1]), flush=True)
    control = []
    if args.truth_control:
        for lowpass in (12.0, 20.0):
            t0 = time.perf_counter()
            refined = run_refine(subset, truth.maps[args.state], settings=RefineSettings(
                n_iterations=1, n_global_iterations=1, initial_lowpass_angstrom=lowpass,
                seed=0))
            err = geodesic_distance_deg(torch.as_tensor(refined.posterior.rotations),
                                        true_rotations).numpy()
            control.append({"lowpass_angstrom": lowpass, **error_summary(err),
                            "seconds": time.perf_counter() - t0})
            print(json.dumps(control[-1]), flush=True)
    out = {"machine": {**machine_info(torch.device("cpu")), "load_average_start": start_load,
                       "load_average_end": load_average()},
           "dataset": {"name": args.dataset, "state": args.state, "particles": len(subset),
                       "box": particles.box_size, "pixel_size_angstrom": apix},
           "settings": {"abinit_steps": args.abinit_steps, "common_images": COMMON_IMAGES,
                        "trace_every": args.trace_every,
                        **{k: getattr(settings, k) for k in ("n_starts", "screen_starts",
                                                             "screen_steps")}},
           "seeds": rows, "truth_control": control}
    path = args.output or RESULTS_DIR / (
        f"abinit_seeds_state{args.state}_{out['machine']['device']}.json")
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
