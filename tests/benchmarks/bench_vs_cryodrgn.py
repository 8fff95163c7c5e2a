"""cryoviz vs cryoDRGN ``backproject_voxel`` on one simulated dataset: wall time and FSC.

The dataset is a folder written by ``cryoviz simulate`` (``particles.mrcs``,
``particles.star``, ``truth/state_0.mrc``). The script

1. loads the STAR file with :func:`cryoviz.io.particles.load_particles` and exports
   the poses and CTF to cryoDRGN pickles with cryoviz's own writers
   (:func:`cryoviz.io.conventions.internal_to_cryodrgn`,
   :func:`cryoviz.io.cryodrgn.write_pose_pkl`, :func:`~cryoviz.io.cryodrgn.write_ctf_pkl`,
   :func:`~cryoviz.io.cryodrgn.ctf_array_from_params`);
2. runs ``cryodrgn backproject_voxel particles.mrcs --poses pose.pkl --ctf ctf.pkl
   -o cryodrgn/`` (writes ``cryodrgn/backproject.mrc``; cryoDRGN in its own virtual
   environment) and times it;
3. runs ``cryoviz reconstruct particles.star -o cryoviz --truth truth/state_0.mrc``
   and times it;
4. computes the FSC of both maps against the true map with
   :func:`cryoviz.metrics.fsc.fsc` (resolution at 0.5 in Å and px, FSC-AUC), unmasked
   and with a soft spherical mask of radius 3/8 of the box.

It doubles as the cross-check of the cryoDRGN pose / CTF export: the cryoDRGN map
is also compared with the truth after a sign flip, a mirror (handedness) and axis
transposes; if the export is right the map "as written" is the best match.

Sign: cryoviz images have RELION contrast (our CTF is positive at low frequency);
cryoDRGN's CTF is the negative of ours (``sqrt(1 - w^2) sin(gamma) - w cos(gamma)``)
and ``backproject_voxel`` multiplies the images by -1 unless ``--uninvert-data`` is
given, so its default is the right one for these images (``--uninvert-data`` gives
the negated map, which the cross-check reports as "negated" being the best match).

Usage::

    python tests/benchmarks/bench_vs_cryodrgn.py --dataset DIR \\
        --cryodrgn /tmp/cryodrgn-venv/bin/cryodrgn [--work WORK] [--repeats N] \\
        [--uninvert-data] [--device cpu|cuda]

Wall times are of the whole command (process start, imports and reading the stack
included); cryoDRGN's own "Backprojected N images in X s" figure and the time of
``cryodrgn backproject_voxel --help`` (its start-up cost) are recorded beside them.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cryoviz.io.conventions import internal_to_cryodrgn
from cryoviz.io.cryodrgn import ctf_array_from_params, write_ctf_pkl, write_pose_pkl
from cryoviz.io.mrc import read_volume
from cryoviz.io.particles import load_particles
from cryoviz.metrics.fsc import fsc, soft_spherical_mask

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_forward_backproject import cpu_model, load_average  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def run_timed(cmd: list[str], log: Path, env: dict | None = None) -> dict:
    """Run ``cmd``, log its output, return wall time, exit status and load averages."""
    print("$ " + shlex.join(cmd), flush=True)
    load_before = load_average()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    log.write_text(f"$ {shlex.join(cmd)}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise RuntimeError(f"command failed ({proc.returncode}): {shlex.join(cmd)}\n{tail}")
    return {
        "command": shlex.join(cmd),
        "wall_s": wall,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "log": str(log),
    }


def finite_or_none(value: float) -> float | None:
    """JSON has no inf: a curve that starts below the threshold gives None (null)."""
    return value if np.isfinite(value) else None


def fsc_summary(
    volume: np.ndarray, truth: torch.Tensor, apix: float, mask: torch.Tensor | None = None
) -> dict:
    """FSC against the truth: resolution at 0.5 (None if it starts below 0.5), FSC-AUC."""
    vol = torch.as_tensor(np.ascontiguousarray(volume), dtype=torch.float64)
    curve = fsc(vol, truth, mask)
    return {
        "resolution_05_angstrom": finite_or_none(curve.resolution_angstrom(apix, 0.5)),
        "resolution_05_px": finite_or_none(curve.resolution_px(0.5)),
        "fsc_auc": curve.auc(),
        # FSC-AUC integrates |FSC| and cannot tell a map from its negative; the signed
        # mean over shells 1 .. D/2 can.
        "fsc_mean_signed": float(curve.fsc[1:].mean()),
        "fsc": [round(float(v), 5) for v in curve.fsc],
    }


def variants(volume: np.ndarray) -> dict[str, np.ndarray]:
    """The map and its sign flip, mirror (handedness) and axis transposes."""
    out = {
        "as_written": volume,
        "negated": -volume,
        "mirror_xyz (inverse, -r)": volume[::-1, ::-1, ::-1],
        "flip_z (handedness)": volume[::-1],
        "transpose_zyx_to_xyz": volume.transpose(2, 1, 0),
        "transpose_xy": volume.transpose(0, 2, 1),
    }
    # Mirrors about the box centre at index D // 2: np flips put it at D - 1 - D // 2,
    # so roll by one for even boxes to keep the origin where cryoviz puts it.
    d = volume.shape[0]
    if d % 2 == 0:
        out["mirror_xyz (inverse, -r)"] = np.roll(out["mirror_xyz (inverse, -r)"], 1, (0, 1, 2))
        out["flip_z (handedness)"] = np.roll(out["flip_z (handedness)"], 1, 0)
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def run_repeated(cmd: list[str], log: Path, repeats: int, env: dict | None = None) -> dict:
    """:func:`run_timed` ``repeats`` times; the median wall time and every run's figures."""
    runs = [run_timed(cmd, log, env) for _ in range(repeats)]
    return {
        "command": runs[0]["command"],
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "wall_s_runs": [r["wall_s"] for r in runs],
        "load_average_before_runs": [r["load_average_before"] for r in runs],
        "load_average_after_runs": [r["load_average_after"] for r in runs],
        "log": runs[-1]["log"],
    }


def cryodrgn_version(exe: str) -> str | None:
    python = Path(exe).parent / "python"
    try:
        proc = subprocess.run(
            [str(python), "-c", "import cryodrgn, torch; print(cryodrgn.__version__, "
             "torch.__version__)"], capture_output=True, text=True, timeout=300,
        )
        return proc.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", type=Path, required=True, help="cryoviz simulate folder")
    parser.add_argument("--cryodrgn", default="/tmp/cryodrgn-venv/bin/cryodrgn",
                        help="cryodrgn executable (its own virtual environment)")
    parser.add_argument("--work", type=Path, default=None,
                        help="scratch folder (default DATASET/bench_vs_cryodrgn)")
    parser.add_argument("--uninvert-data", action="store_true",
                        help="pass --uninvert-data to cryodrgn backproject_voxel")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=1,
                        help="run each program this many times (median wall time)")
    parser.add_argument("--output", type=Path, default=None, help="JSON path")
    args = parser.parse_args(argv)

    data = args.dataset.resolve()
    star, stack, truth_path = (
        data / "particles.star", data / "particles.mrcs", data / "truth" / "state_0.mrc"
    )
    work = (args.work or data / "bench_vs_cryodrgn").resolve()
    work.mkdir(parents=True, exist_ok=True)

    # 1. export poses and CTF with cryoviz's writers
    ps = load_particles(star, require_poses=True, require_ctf=True)
    box, apix = ps.box_size, ps.pixel_size_angstrom
    rot, trans = internal_to_cryodrgn(ps.rotations, ps.shifts_angstrom, box, apix)
    pose_pkl, ctf_pkl = work / "pose.pkl", work / "ctf.pkl"
    write_pose_pkl(pose_pkl, rot, trans)
    write_ctf_pkl(ctf_pkl, ctf_array_from_params(ps.ctf, box, apix))
    bfac = ps.ctf.as_numpy()["bfactor_a2"]
    truth_np, _ = read_volume(truth_path)
    truth = torch.as_tensor(np.ascontiguousarray(truth_np), dtype=torch.float64)

    # 2. cryoDRGN backproject_voxel
    drgn_dir = work / "cryodrgn"
    drgn_dir.mkdir(exist_ok=True)
    drgn_map = drgn_dir / "backproject.mrc"
    drgn_cmd = [args.cryodrgn, "backproject_voxel", str(stack), "--poses", str(pose_pkl),
                "--ctf", str(ctf_pkl), "-o", str(drgn_dir)]
    if args.uninvert_data:
        drgn_cmd.append("--uninvert-data")
    if args.device == "cpu":
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    else:
        env = None
    startup = run_timed([args.cryodrgn, "backproject_voxel", "--help"],
                        work / "cryodrgn_help.log", env)
    drgn_run = run_repeated(drgn_cmd, work / "cryodrgn.log", args.repeats, env)
    drgn_vol, drgn_apix = read_volume(drgn_map)
    drgn_log = (work / "cryodrgn.log").read_text()
    match = re.search(r"Backprojected [\d,]+ images in ([\d.]+)s", drgn_log)
    drgn_run["reported_backprojection_s"] = float(match.group(1)) if match else None
    drgn_halves = [drgn_dir / "half_map_a.mrc", drgn_dir / "half_map_b.mrc"]
    drgn_half_res = None
    if all(p.is_file() for p in drgn_halves):
        h1, h2 = (torch.as_tensor(np.ascontiguousarray(read_volume(p)[0])) for p in drgn_halves)
        drgn_half_res = fsc(h1, h2).resolution_angstrom(apix, 0.143)

    # 3. cryoviz reconstruct (the console script of this environment)
    cv_dir = work / "cryoviz"
    cryoviz_exe = Path(sys.executable).parent / "cryoviz"
    cv_cmd = [str(cryoviz_exe) if cryoviz_exe.exists() else "cryoviz", "reconstruct", str(star),
              "-o", str(cv_dir), "--truth", str(truth_path), "--device", args.device]
    cv_run = run_repeated(cv_cmd, work / "cryoviz.log", args.repeats)
    cv_vol, _ = read_volume(cv_dir / "map.mrc")
    cv_metrics = json.loads((cv_dir / "metrics.json").read_text())

    # 4. FSC vs truth
    cv_fsc = fsc_summary(cv_vol, truth, apix)
    # Also with a soft spherical mask (radius 3/8 of the box, 3 px cosine edge): cryoDRGN
    # windows its images in real space (soft circle, 0.85-0.99 of the half box), which
    # removes the noise in the corners; the mask puts both maps on the same footing.
    mask_radius = 0.375 * box
    mask = soft_spherical_mask(box, mask_radius, 3.0, dtype=torch.float64)
    cv_fsc_masked = fsc_summary(cv_vol, truth, apix, mask)
    drgn_fsc_masked = fsc_summary(drgn_vol, truth, apix, mask)
    drgn_variants = {k: fsc_summary(v, truth, apix) for k, v in variants(drgn_vol).items()}
    best = max(drgn_variants, key=lambda k: drgn_variants[k]["fsc_mean_signed"])
    low = drgn_variants["as_written"]["fsc"][1:4]
    cross_check = {
        "best_variant_by_signed_mean_fsc": best,
        "as_written_is_best": best == "as_written",
        "as_written_low_shell_fsc_1_3": low,
        "cryodrgn_map_voxel_size_angstrom": drgn_apix,
        "map_correlation_cryodrgn_vs_cryoviz": float(
            np.corrcoef(drgn_vol.ravel(), cv_vol.ravel())[0, 1]
        ),
    }

    for name, r in [("cryoviz", cv_fsc)] + [(f"cryodrgn {k}", v) for k, v in
                                              drgn_variants.items()]:
        res_a, res_px = r["resolution_05_angstrom"], r["resolution_05_px"]
        res = "  none" if res_a is None else f"{res_a:6.2f} Å ({res_px:5.2f} px)"
        print(f"{name:40s} res@0.5 {res}  FSC-AUC {r['fsc_auc']:.4f}  "
              f"FSC shells 1-3 {r['fsc'][1:4]}")
    for name, r in (("cryoviz masked", cv_fsc_masked), ("cryodrgn masked", drgn_fsc_masked)):
        print(f"{name:40s} FSC-AUC {r['fsc_auc']:.4f}  FSC at Nyquist {r['fsc'][-1]}")
    print(f"wall: cryoDRGN {drgn_run['wall_s']:.1f} s (startup/--help {startup['wall_s']:.1f} s), "
          f"cryoviz {cv_run['wall_s']:.1f} s")

    out = {
        "benchmark": "vs_cryodrgn",
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": {
            "date_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "platform": platform.platform(),
            "cpu_model": cpu_model(),
            "cpu_cores": os.cpu_count(),
            "torch_version": torch.__version__,
            "device": args.device,
            "device_name": (torch.cuda.get_device_name() if args.device == "cuda"
                            else cpu_model()),
            "cryodrgn_and_its_torch": cryodrgn_version(args.cryodrgn),
            "load_average_end": load_average(),
        },
        "dataset": {
            "path": str(data),
            "n_particles": len(ps),
            "box_size": box,
            "pixel_size_angstrom": apix,
            "ctf_bfactor_a2_max": float(np.max(np.abs(bfac))) if bfac.size else 0.0,
        },
        "cryodrgn": {
            **drgn_run,
            "startup_help_wall_s": startup["wall_s"],
            "uninvert_data": bool(args.uninvert_data),
            "resolution_half_maps_0143_angstrom": drgn_half_res,
            "fsc_vs_truth": drgn_variants["as_written"],
            "fsc_vs_truth_masked": drgn_fsc_masked,
            "fsc_vs_truth_variants": drgn_variants,
        },
        "cryoviz": {
            **cv_run,
            "reported_seconds": cv_metrics.get("seconds"),
            "resolution_half_maps_0143_angstrom": cv_metrics.get(
                "resolution_half_maps_0143_angstrom"),
            "fsc_vs_truth": cv_fsc,
            "fsc_vs_truth_masked": cv_fsc_masked,
        },
        "fsc_mask": {"kind": "soft spherical", "radius_px": mask_radius, "edge_px": 3.0},
        "convention_cross_check": cross_check,
    }
    path = args.output or RESULTS_DIR / f"vs_cryodrgn_{args.device}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, allow_nan=False) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
