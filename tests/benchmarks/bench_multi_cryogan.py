"""multi-cryogan: does the learned subspace point from one true state to the other?

Two datasets from the simulator (adenylate kinase, CTF, shifts, uniform poses;
``--particles``, ``--box``, 128 Å box extent, ``--snr``): the open / closed
4AKE / 1AKE mixture (50 / 50), and, as the null, 4AKE alone. On each,
``multi-cryogan`` (``--components`` components, ``--steps`` map steps, nothing
given) learns ``V_0`` and ``U_k``. ``V_0`` is aligned (rotation, shift, hand) to
the mean of the two true states and the same transform is applied to the
components. Recorded per run:

* ``direction_correlation``: Pearson correlation of each aligned component with
  the true difference map (1AKE - 4AKE); near 0 when nothing was learned;
* ``traversal``: correlation of ``V_0 + z U_1`` with each true state for ``z``
  from -3 to 3; a learned direction puts the two states' best ``z`` on
  opposite sides;
* the FSC 0.5 of ``V_0`` against each state, the wall time.

Writes ``tests/benchmarks/results/multi_cryogan_<device>.json``.

Usage::

    OMP_NUM_THREADS=1 python tests/benchmarks/bench_multi_cryogan.py \
        [--particles 4000] [--box 32] [--snr 1] [--steps 1000] [--components 1] \
        [--seed 0] [--output JSON]
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

from cryoviz.inference.cryogan import CryoGANSettings, run_cryogan  # noqa: E402
from cryoviz.io import load_particles, read_volume  # noqa: E402
from cryoviz.metrics import align_volume, fsc  # noqa: E402
from cryoviz.simulate import SimulationConfig, simulate  # noqa: E402

Z_VALUES = np.linspace(-3.0, 3.0, 13)


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]).double())[0, 1])


def _simulate(folder: Path, states_present: tuple[str, ...], args):
    simulate(SimulationConfig(n_particles=args.particles, box_size=args.box,
                              pixel_size_angstrom=128.0 / args.box, snr=args.snr,
                              states=states_present, seed=7), folder)
    return load_particles(folder / "particles.star")


def _run(particles, states_present: tuple[str, ...], truth: list[torch.Tensor],
         args) -> dict:
    t0 = time.perf_counter()
    result = run_cryogan(particles, CryoGANSettings(n_steps=args.steps,
                                                    components=args.components,
                                                    seed=args.seed))
    seconds = time.perf_counter() - t0
    alignment = align_volume(result.map, 0.5 * (truth[0] + truth[1]))
    components = [alignment.apply(c) for c in result.components]
    difference = truth[1] - truth[0]
    first = components[0]
    table = [[float(z)] + [_corr(alignment.aligned + z * first, s) for s in truth]
             for z in Z_VALUES]
    best_z = [float(Z_VALUES[int(np.argmax([row[1 + k] for row in table]))]) for k in (0, 1)]
    return {
        "states_in_data": list(states_present),
        "direction_correlation": [_corr(c, difference) for c in components],
        "component_norm_relative_to_map": [float(c.norm() / result.map.norm())
                                           for c in result.components],
        "mean_map_alignment_correlation": alignment.correlation,
        "mean_map_fsc05_px": [float(fsc(alignment.aligned, s).resolution_px(0.5))
                              for s in truth],
        "traversal_z_corr_state0_corr_state1": table,
        "best_z_per_state": best_z,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=4000)
    parser.add_argument("--box", type=int, default=32)
    parser.add_argument("--snr", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--components", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON path (default: results/multi_cryogan_<device>.json)")
    args = parser.parse_args()
    start_load = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        both = _simulate(Path(tmp) / "mixture", ("4ake", "1ake"), args)
        truth = [torch.as_tensor(read_volume(Path(tmp) / "mixture" / "truth" /
                                             f"state_{k}.mrc")[0], dtype=torch.float32)
                 for k in (0, 1)]  # the mixture's true states score both runs
        mixture = _run(both, ("4ake", "1ake"), truth, args)
        alone = _simulate(Path(tmp) / "homogeneous", ("4ake",), args)
        null = _run(alone, ("4ake",), truth, args)
    out = {"machine": {**machine_info(torch.device("cpu")), "load_average_start": start_load,
                       "load_average_end": load_average()},
           "dataset": {"particles": args.particles, "box": args.box,
                       "pixel_size_angstrom": 128.0 / args.box, "snr": args.snr,
                       "poses": "uniform, not given", "ctf": True, "simulation_seed": 7},
           "settings": {"steps": args.steps, "components": args.components,
                        "seed": args.seed, "other": "CryoGANSettings defaults"},
           "mixture": mixture, "null_homogeneous": null}
    path = args.output or RESULTS_DIR / f"multi_cryogan_{out['machine']['device']}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if not kk.startswith("traversal")}
                      for k, v in (("mixture", mixture), ("null", null))}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
