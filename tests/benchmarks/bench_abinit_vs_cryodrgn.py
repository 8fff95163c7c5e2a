"""cryoviz ``train --recipe cryosparc-abinit`` vs cryoDRGN ``abinit``: ab initio, poses unknown.

Homogeneous ab initio reconstruction of one simulated dataset, a folder written by
``cryoviz simulate`` (``particles.mrcs``, ``particles.star``, ``truth/state_0.mrc``,
``truth/truth.npz`` with the true ``rotations``). The script

1. exports the STAR file's CTF to a cryoDRGN pickle with cryoviz's own writers (as
   ``bench_vs_cryodrgn.py`` does; no poses are given to either program);
2. runs ``cryodrgn abinit particles.mrcs --ctf ctf.pkl --zdim 0`` (cryoDRGN-AI, its
   own virtual environment): epoch 0 pretrains the volume on ``--n-imgs-pretrain``
   images at random poses, epochs ``1 .. --epochs-pose-search`` are hierarchical pose
   search (HPS) epochs, the rest SGD epochs on a pose table ("autodecoding"),
   ``--epochs`` in all after the pretraining. ``--checkpoint 1`` makes it write
   ``reconstruct.N.mrc``, ``pose.N.pkl`` and ``weights.N.pkl`` after every epoch;
   ``run.log`` has ``# =====> HPS Epoch: N finished in H:MM:SS.ffffff`` per epoch;
3. runs ``cryoviz train particles.star --recipe cryosparc-abinit -o RUN --seed S
   --device D`` (writes ``RUN/volumes/map.mrc``, ``RUN/poses.npz``, ``RUN/log.jsonl``
   with ``seconds`` per iteration, ``RUN/metrics.json``; per-iteration maps
   ``RUN/volumes/map_iter_###.mrc`` if any); ``--skip-cryoviz`` leaves it out, and a
   failure is recorded, not raised;
4. scores both the same way:

   - map: aligned to the truth, mirror included
     (:func:`cryoviz.metrics.alignment.align_volume`, ``allow_flip``), then the FSC
     against the truth (:func:`cryoviz.metrics.fsc.fsc`): resolution at 0.5 and 0.143
     in Å and pixels, FSC-AUC, unmasked and with a soft spherical mask of radius 3/8
     of the box;
   - poses: per-particle rotation error after the best global rotation and hand
     (:func:`cryoviz.metrics.rotation_error_deg` with ``align=True``); the median, and
     the median over the better half (the half of the particles with the smaller
     errors). cryoDRGN's ``pose.N.pkl`` rotations are our ``R`` unchanged
     (:mod:`cryoviz.io.conventions`); the transposed reading is scored too, as a
     cross-check of that;
   - time: the wall time of the whole command and, from the per-epoch (per-iteration)
     maps, the first time at which the FSC=0.5 resolution vs the truth reaches
     ``--target-px`` pixels (cryoDRGN: cumulative epoch seconds from ``run.log``, and
     seconds since the command started from the map files' modification times;
     cryoviz: cumulative ``seconds`` of ``log.jsonl``).

Usage::

    cryoviz simulate -o DIR --n-particles 2000 --box 64 --snr 0.1
    python tests/benchmarks/bench_abinit_vs_cryodrgn.py --dataset DIR \\
        --cryodrgn /tmp/cryodrgn-venv/bin/cryodrgn [--epochs 5] [--n-imgs-pretrain 2000] \\
        [--skip-cryoviz]
    python tests/benchmarks/bench_abinit_vs_cryodrgn.py --markdown RESULTS.json

Output: ``tests/benchmarks/results/abinit_vs_cryodrgn_<device>.json``; scratch files go
to ``DIR/bench_abinit_vs_cryodrgn/`` (or ``--work``).

Cost of cryoDRGN ``abinit`` on a CPU (measured on 2 AMD EPYC cores, one torch thread,
2,000 images of box 64): pretraining ~0.14 s per image (batch 64), HPS ~10 s per image
(batch 16; 158 s a batch, so ~5.5 h an HPS epoch), SGD ~0.17 s per image (batch 128,
~344 s an epoch). Its defaults (3 HPS + 27 SGD epochs) take a GPU; on a CPU use
``--time-limit`` (each program's command runs under coreutils ``timeout`` and the
epochs written by then are scored) or fewer particles.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shlex
import shutil
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_vs_cryodrgn import run_cpu_timed  # noqa: E402
from bench_vs_cryodrgn import (  # noqa: E402
    cpu_model,
    cryodrgn_version,
    finite_or_none,
    load_average,
)

from cryoviz.inference.posterior import read_pose_posterior  # noqa: E402
from cryoviz.inference.ppca import fourier_crop_volume  # noqa: E402
from cryoviz.io.conventions import cryodrgn_to_internal  # noqa: E402
from cryoviz.io.cryodrgn import (  # noqa: E402
    ctf_array_from_params,
    read_pose_pkl,
    write_ctf_pkl,
)
from cryoviz.io.mrc import read_volume  # noqa: E402
from cryoviz.io.particles import load_particles  # noqa: E402
from cryoviz.metrics import align_rotations, rotation_error_deg  # noqa: E402
from cryoviz.metrics.alignment import align_volume  # noqa: E402
from cryoviz.metrics.fsc import fsc, soft_spherical_mask  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# str(datetime.timedelta): "0:01:02.345678" or "1 day, 0:01:02"
EPOCH_RE = re.compile(r"=====> (\w+) Epoch: (\d+) finished in (?:(\d+) days?, )?"
                      r"(\d+):(\d+):([\d.]+)")
MAP_ITER_RE = re.compile(r"map_iter_(\d+)\.mrc")


# ---------------------------------------------------------------- parsing

def cryodrgn_epochs(log_text: str) -> list[dict]:
    """Every ``# =====> KIND Epoch: N finished in [D days, ]H:MM:SS`` line of ``abinit``.

    Returns ``[{"epoch", "kind" (Pretrain / HPS / SGD), "seconds",
    "cumulative_seconds"}]`` in log order (cumulative over the listed epochs).
    """
    out, total = [], 0.0
    for kind, epoch, days, h, m, s in EPOCH_RE.findall(log_text):
        sec = int(days or 0) * 86400 + int(h) * 3600 + int(m) * 60 + float(s)
        total += sec
        out.append({"epoch": int(epoch), "kind": kind, "seconds": sec,
                    "cumulative_seconds": total})
    return out


def cryodrgn_epoch_files(folder: Path, stem: str, ext: str) -> dict[int, Path]:
    """``{N: folder/stem.N.ext}`` for every such file (``reconstruct.N.mrc``, ``pose.N.pkl``)."""
    found = {}
    for p in folder.glob(f"{stem}.*.{ext}"):
        if m := re.fullmatch(rf"{re.escape(stem)}\.(\d+)\.{re.escape(ext)}", p.name):
            found[int(m.group(1))] = p
    return dict(sorted(found.items()))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cumulative_seconds(entries: list[dict], wall_s: float | None) -> tuple[list[float], str]:
    """Cumulative wall seconds after each ``log.jsonl`` entry, and how ``seconds`` was read.

    ``seconds`` is meant per iteration (summed here); if the sum exceeds the whole
    command's wall time by over 10 % the values must already be cumulative (seconds
    since the start) and are used as they are.
    """
    sec = [float(e["seconds"]) for e in entries if "seconds" in e]
    if len(sec) != len(entries):
        raise KeyError("log.jsonl: every entry needs 'seconds'")
    cum = np.cumsum(sec).tolist()
    if (wall_s is not None and cum and cum[-1] > 1.1 * wall_s
            and all(b >= a for a, b in zip(sec, sec[1:], strict=False))):
        return sec, "cumulative (seconds since start; the per-iteration sum exceeded the wall)"
    return cum, "per iteration (summed)"


def iteration_maps(volumes: Path, entries: list[dict]) -> list[tuple[int, int, Path]]:
    """``(iteration number, log.jsonl row, map)`` of every ``map_iter_###.mrc``.

    The number is matched to the ``iteration`` field of the refinement's entries
    (``phase == "refine"``; the initial model's steps write no maps), else read as
    the 1-based row of ``log.jsonl``.
    """
    found = sorted((int(m.group(1)), p) for p in volumes.glob("map_iter_*.mrc")
                   if (m := MAP_ITER_RE.fullmatch(p.name)))
    row_of = {int(e["iteration"]): i for i, e in enumerate(entries)
              if "iteration" in e and e.get("phase", "refine") == "refine"}
    if not row_of:
        row_of = {i + 1: i for i in range(len(entries))}
    return [(n, row_of[n], p) for n, p in found if n in row_of]


# ---------------------------------------------------------------- scoring

def score_map(volume: np.ndarray, truth: torch.Tensor, apix: float,
              mask: torch.Tensor) -> dict:
    """Align ``volume`` (mirror allowed) onto ``truth`` and measure its FSC against it."""
    vol = torch.as_tensor(np.ascontiguousarray(volume), dtype=torch.float64)
    if vol.shape != truth.shape:
        if vol.shape[-1] > truth.shape[-1]:
            raise ValueError(f"map box {tuple(vol.shape)} larger than the truth's "
                             f"{tuple(truth.shape)}")
        truth = fourier_crop_volume(truth, vol.shape[-1])
    if mask.shape != vol.shape:
        mask = soft_spherical_mask(vol.shape[-1], 0.375 * vol.shape[-1], 3.0,
                                   dtype=torch.float64)
    t0 = time.perf_counter()
    al = align_volume(vol, truth)
    out = {"mirrored": bool(al.flipped), "alignment_correlation": float(al.correlation),
           "alignment_seconds": time.perf_counter() - t0, "box_size": int(vol.shape[-1]),
           "pixel_size_angstrom": apix}
    for suffix, m in (("", None), ("_masked", mask)):
        curve = fsc(al.aligned, truth, m)
        for thr, tag in ((0.5, "05"), (0.143, "0143")):
            out[f"resolution_{tag}_angstrom{suffix}"] = finite_or_none(
                curve.resolution_angstrom(apix, thr))
            out[f"resolution_{tag}_px{suffix}"] = finite_or_none(curve.resolution_px(thr))
        out[f"fsc_auc{suffix}"] = curve.auc()
        out[f"fsc{suffix}"] = [round(float(v), 5) for v in curve.fsc]
    return out


def score_poses(rot_est: np.ndarray, rot_true: np.ndarray) -> dict:
    """Rotation errors after the best global rotation and hand (mirror) alignment."""
    est = torch.as_tensor(np.asarray(rot_est), dtype=torch.float64)
    true = torch.as_tensor(np.asarray(rot_true), dtype=torch.float64)
    err = rotation_error_deg(est, true, align=True).numpy()
    best_half = np.sort(err)[: max(1, len(err) // 2)]
    return {"median_rotation_error_deg": float(np.median(err)),
            "mean_rotation_error_deg": float(np.mean(err)),
            "median_rotation_error_best_half_deg": float(np.median(best_half)),
            "within_10deg": float(np.mean(err <= 10.0)),
            "hand_flipped": bool(align_rotations(est, true).flipped),
            "n_particles": int(len(err))}


def first_reaching(trajectory: list[dict], target_px: float, time_key: str) -> float | None:
    """``time_key`` of the first trajectory point whose FSC=0.5 resolution is <= target."""
    for point in trajectory:
        res = point.get("resolution_05_px")
        if res is not None and res <= target_px and point.get(time_key) is not None:
            return float(point[time_key])
    return None


def _error(exc: BaseException) -> dict:
    return {"error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc()[-4000:]}


def run_recorded(cmd: list[str], log: Path, time_limit: float | None,
                 env: dict | None = None) -> dict:
    """:func:`run_cpu_timed` that records a failure instead of raising.

    With ``time_limit`` the command runs under coreutils ``timeout`` (exit status 124
    when stopped): what it wrote before that is still scored. On failure ``wall_s`` is
    the time until the command ended and ``completed`` is False.
    """
    if time_limit is not None:
        cmd = ["timeout", f"{time_limit:g}", *cmd]
    t0 = time.perf_counter()
    try:
        return {**run_cpu_timed(cmd, log, env), "completed": True}
    except Exception as exc:  # noqa: BLE001 - recorded, the other program still runs
        out = {"command": shlex.join(cmd), "wall_s": time.perf_counter() - t0,
               "completed": False, "log": str(log), **_error(exc)}
        out["stopped_by_time_limit"] = time_limit is not None and "failed (124)" in str(exc)
        return out


# ---------------------------------------------------------------- the two programs

def run_cryodrgn(args, stack: Path, ctf_pkl: Path, work: Path, truth: torch.Tensor,
                 rot_true: np.ndarray, mask: torch.Tensor, env: dict | None) -> dict:
    out_dir = work / "cryodrgn"
    cmd = [args.cryodrgn, "abinit", str(stack), "--ctf", str(ctf_pkl), "-o", str(out_dir),
           "--zdim", "0", "-n", str(args.epochs), "--seed", str(args.seed),
           "--checkpoint", "1", "--no-analysis"]
    if args.epochs_pose_search is not None:
        cmd += ["--epochs-pose-search", str(args.epochs_pose_search)]
    if args.n_imgs_pretrain is not None:
        cmd += ["--n-imgs-pretrain", str(args.n_imgs_pretrain)]
    cmd += shlex.split(args.cryodrgn_args)
    # cryoDRGN appends to run.log: a previous run's epochs would be counted twice
    shutil.rmtree(out_dir, ignore_errors=True)
    start = time.time()
    res = run_recorded(cmd, work / "cryodrgn_abinit.log", args.time_limit, env)
    try:
        log_path = out_dir / "run.log"
        log_text = (log_path if log_path.is_file() else work / "cryodrgn_abinit.log").read_text()
        epochs = cryodrgn_epochs(log_text)
        res["epochs"] = epochs
        per_kind = {}
        for e in epochs:
            per_kind.setdefault(e["kind"], []).append(e["seconds"])
        res["seconds_per_epoch_by_kind"] = {k: {"each": v, "mean": float(np.mean(v))}
                                           for k, v in per_kind.items()}
        maps = cryodrgn_epoch_files(out_dir, "reconstruct", "mrc")
        poses = cryodrgn_epoch_files(out_dir, "pose", "pkl")
        cum = {e["epoch"]: e["cumulative_seconds"] for e in epochs}
        kind = {e["epoch"]: e["kind"] for e in epochs}
        trajectory = []
        score_epochs = list(maps) if args.score_every_epoch else list(maps)[-1:]
        for n in score_epochs:
            try:  # a run stopped by --time-limit may leave a half-written last file
                vol, apix = read_volume(maps[n])
                point = {"epoch": n, "kind": kind.get(n), "map": str(maps[n]),
                         "cumulative_epoch_seconds": cum.get(n),
                         "seconds_since_start_by_mtime": maps[n].stat().st_mtime - start,
                         **score_map(vol, truth, float(apix or args.apix), mask)}
                # epoch 0 (pretraining) writes placeholder poses: the identity
                if n in poses and kind.get(n) != "Pretrain":
                    rot, _ = read_pose_pkl(poses[n])
                    R, _ = cryodrgn_to_internal(rot, None, truth.shape[-1], args.apix)
                    point["poses"] = score_poses(R, rot_true)
            except Exception as exc:  # noqa: BLE001
                res.setdefault("unscored_epochs", []).append({"epoch": n, **_error(exc)})
                continue
            trajectory.append(point)
            print(f"cryoDRGN epoch {n} ({kind.get(n)}): FSC=0.5 "
                  f"{point['resolution_05_angstrom']} Å, AUC {point['fsc_auc']:.3f}, "
                  f"median pose error {point.get('poses', {}).get('median_rotation_error_deg')}",
                  flush=True)
        res["trajectory"] = trajectory
        if trajectory:
            final = trajectory[-1]
            res["final_epoch"] = final["epoch"]
            res["final"] = {k: v for k, v in final.items() if k != "poses"}
            res["poses"] = final.get("poses")
            if final.get("poses"):  # convention cross-check: R as written vs R^T
                rot, _ = read_pose_pkl(poses[final["epoch"]])
                transposed = score_poses(np.transpose(rot, (0, 2, 1)), rot_true)
                res["pose_convention_cross_check"] = {
                    "median_error_as_written_deg": final["poses"]["median_rotation_error_deg"],
                    "median_error_transposed_deg": transposed["median_rotation_error_deg"],
                    "as_written_is_better": (final["poses"]["median_rotation_error_deg"]
                                             <= transposed["median_rotation_error_deg"])}
        res["time_to_target_cumulative_epoch_s"] = first_reaching(
            trajectory, args.target_px, "cumulative_epoch_seconds")
        res["time_to_target_since_start_s"] = first_reaching(
            trajectory, args.target_px, "seconds_since_start_by_mtime")
    except Exception as exc:  # noqa: BLE001
        res.setdefault("scoring_error", _error(exc))
    return res


def run_cryoviz(args, star: Path, work: Path, truth: torch.Tensor, rot_true: np.ndarray,
                mask: torch.Tensor) -> dict:
    cryoviz_exe = Path(sys.executable).parent / "cryoviz"
    exe = str(cryoviz_exe) if cryoviz_exe.exists() else "cryoviz"
    run_dir = work / ("cryoviz" if args.recipe == "cryosparc-abinit" else f"cryoviz-{args.recipe}")
    cmd = [exe, "train", str(star), "--recipe", args.recipe, "-o", str(run_dir),
           "--seed", str(args.seed), "--device", args.device, *shlex.split(args.cryoviz_args)]
    if args.score_existing:  # an interrupted or remote run: score what it wrote
        res = {"cmd": cmd, "scored_existing_run": str(run_dir)}
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
        if args.initial_model is not None:  # refinement only, from another run's model
            (run_dir / "volumes").mkdir(parents=True)
            shutil.copyfile(args.initial_model, run_dir / "volumes" / "abinit_map.mrc")
            cmd.append("--resume")
        res = run_recorded(cmd, work / f"{run_dir.name}_train.log", args.time_limit)
    try:
        metrics_path = run_dir / "metrics.json"
        if metrics_path.is_file():
            res["reported_metrics"] = json.loads(metrics_path.read_text())
        entries = read_jsonl(run_dir / "log.jsonl") if (run_dir / "log.jsonl").is_file() else []
        res["iterations"] = len(entries)
        cum, how = cumulative_seconds(entries, res.get("wall_s")) if entries else ([], None)
        res["log_seconds_read_as"] = how
        res["log_total_seconds"] = cum[-1] if cum else None
        res["resolution_angstrom_per_iteration"] = [e.get("resolution_angstrom")
                                                    for e in entries]
        trajectory = []
        if args.score_every_epoch:
            for n, row, path in iteration_maps(run_dir / "volumes", entries):
                vol, apix = read_volume(path)
                point = {"iteration": n, "map": str(path), "cumulative_seconds": cum[row],
                         **score_map(vol, truth, float(apix or args.apix), mask)}
                trajectory.append(point)
        final_map = run_dir / "volumes" / "map.mrc"
        if final_map.is_file():
            vol, apix = read_volume(final_map)
            final = {"map": str(final_map), "cumulative_seconds": cum[-1] if cum else None,
                     **score_map(vol, truth, float(apix or args.apix), mask)}
            res["final"] = final
            if not trajectory or trajectory[-1]["map"] != str(final_map):
                trajectory.append({"iteration": "final", **final})
        res["trajectory"] = trajectory
        if (run_dir / "poses.npz").is_file():
            post = read_pose_posterior(run_dir / "poses.npz")
            res["poses"] = score_poses(post.rotations, rot_true[post.particle_ids])
        elif (run_dir / "refine_state.pt").is_file():  # stopped: the last iteration's poses
            saved = torch.load(run_dir / "refine_state.pt", map_location="cpu",
                               weights_only=True)
            ids = saved["particle_ids"].numpy()
            res["poses"] = score_poses(saved["summaries"]["rotations"].numpy(), rot_true[ids])
            res["poses_from_checkpoint_iteration"] = int(saved["iteration"])
        res["time_to_target_cumulative_s"] = first_reaching(trajectory, args.target_px,
                                                            "cumulative_seconds")
        for point in trajectory:
            print(f"cryoviz iteration {point['iteration']}: FSC=0.5 "
                  f"{point['resolution_05_angstrom']} Å, AUC {point['fsc_auc']:.3f}",
                  flush=True)
    except Exception as exc:  # noqa: BLE001
        res.setdefault("scoring_error", _error(exc))
    return res


# ---------------------------------------------------------------- report

def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(res: dict) -> str:
    """The docs/benchmarks.md section for a results JSON (``--markdown JSON`` prints it)."""
    m, d, st = res["machine"], res["dataset"], res["settings"]
    lines = [
        f"Machine: {m['platform']}; CPU `{m['cpu_model']}`, {m['cpu_cores']} cores (torch "
        f"threads {m.get('torch_threads')}); torch {m['torch_version']}; cryoDRGN (and its "
        f"torch) {m['cryodrgn_and_its_torch']}; device {m['device']}; date {m['date_utc']}; "
        f"load average at end {m['load_average_end']}.",
        "",
        f"Dataset: `{d['path']}`, {d['n_particles']} particles, box {d['box_size']}, "
        f"{d['pixel_size_angstrom']} Å/px, homogeneous, poses unknown. cryoDRGN: "
        f"{st['cryodrgn_epochs']} epochs after pretraining (HPS epochs "
        f"{_fmt(st['cryodrgn_epochs_pose_search'])}, pretraining images "
        f"{_fmt(st['cryodrgn_n_imgs_pretrain'])}); seed {st['seed']}. Target: FSC=0.5 vs "
        f"truth at {st['target_px']} px ({st['target_px'] * d['pixel_size_angstrom']:.1f} Å).",
        "",
        f"Command: `{res['command']}`",
        "",
        "| program | wall s (whole command) | CPU s | 1-min load before | s to target "
        "| FSC=0.5 Å (px) | FSC=0.143 Å | FSC-AUC | masked | mirrored | median pose error ° "
        "| best half ° |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, label in (("cryodrgn", "cryoDRGN 4.3.1 `abinit --zdim 0`"),
                       ("cryoviz", "cryoviz `train --recipe "
                        f"{st.get('cryoviz_recipe', 'cryosparc-abinit')}`")):
        r = res.get(key)
        if r is None:
            lines.append(f"| {label} | skipped | | | | | | | | | | |")
            continue
        stopped = " (stopped: time limit)" if r.get("stopped_by_time_limit") else ""
        if "error" in r and "final" not in r and not stopped:
            lines.append(f"| {label} | failed: {r['error'].splitlines()[0][:80]} "
                         "| | | | | | | | | | |")
            continue
        # a run stopped by the time limit has no final map: its last scored one
        f, p = r.get("final") or (r.get("trajectory") or [{}])[-1], r.get("poses") or {}
        load = r.get("load_average_before")
        to_target = (r.get("time_to_target_since_start_s") if key == "cryodrgn"
                     else r.get("time_to_target_cumulative_s"))
        lines.append(
            f"| {label} | {_fmt(r.get('wall_s'), 1)}{stopped} | {_fmt(r.get('cpu_s'), 1)} | "
            f"{_fmt(load[0] if load else None)} | {_fmt(to_target, 1)} | "
            f"{_fmt(f.get('resolution_05_angstrom'))} ({_fmt(f.get('resolution_05_px'))}) | "
            f"{_fmt(f.get('resolution_0143_angstrom'))} | {_fmt(f.get('fsc_auc'), 4)} | "
            f"{_fmt(f.get('fsc_auc_masked'), 4)} | {_fmt(f.get('mirrored'))} | "
            f"{_fmt(p.get('median_rotation_error_deg'), 1)} | "
            f"{_fmt(p.get('median_rotation_error_best_half_deg'), 1)} |")
    drgn = res.get("cryodrgn") or {}
    kinds = drgn.get("seconds_per_epoch_by_kind") or {}
    if kinds:
        lines += ["", "cryoDRGN seconds per epoch: " + "; ".join(
            f"{k} {v['mean']:.1f} ({', '.join(f'{s:.1f}' for s in v['each'])})"
            for k, v in kinds.items()) + "."]
    if drgn.get("trajectory"):
        lines += ["", "cryoDRGN per epoch (FSC=0.5 vs truth after alignment, Å; cumulative "
                  "epoch s): " + ", ".join(
                      f"{t['epoch']} {t['kind']}: {_fmt(t['resolution_05_angstrom'], 1)} Å @ "
                      f"{_fmt(t['cumulative_epoch_seconds'], 0)} s"
                      for t in drgn["trajectory"]) + "."]
    cv = res.get("cryoviz") or {}
    if cv.get("trajectory"):
        lines += ["", "cryoviz per refinement iteration (FSC=0.5 vs truth after alignment, Å; "
                  "cumulative s of the run's log): " + ", ".join(
                      f"{t['iteration']}: {_fmt(t['resolution_05_angstrom'], 2)} Å @ "
                      f"{_fmt(t['cumulative_seconds'], 0)} s" for t in cv["trajectory"]) + "."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--markdown"]:
        print(markdown(json.loads(Path(argv[1]).read_text())), end="")
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", type=Path, required=True, help="cryoviz simulate folder")
    parser.add_argument("--cryodrgn", default="/tmp/cryodrgn-venv/bin/cryodrgn",
                        help="cryodrgn executable (its own virtual environment)")
    parser.add_argument("--work", type=Path, default=None,
                        help="scratch folder (default DATASET/bench_abinit_vs_cryodrgn)")
    parser.add_argument("--epochs", type=int, default=30,
                        help="cryodrgn abinit -n: HPS + SGD epochs after the pretraining "
                             "epoch 0 (cryoDRGN's default 30)")
    parser.add_argument("--epochs-pose-search", type=int, default=None,
                        help="cryodrgn abinit --epochs-pose-search (its default 3)")
    parser.add_argument("--n-imgs-pretrain", type=int, default=None,
                        help="cryodrgn abinit --n-imgs-pretrain (its default 10000; epoch 0 "
                             "stops after one pass over the dataset anyway)")
    parser.add_argument("--cryodrgn-args", default="",
                        help="more cryodrgn abinit options, one shell-quoted string")
    parser.add_argument("--cryoviz-args", default="",
                        help="more cryoviz train options, one shell-quoted string")
    parser.add_argument("--initial-model", type=Path, default=None,
                        help="abinit_map.mrc of an earlier run with the same initial-model "
                             "settings: skip that stage and time the refinement alone")
    parser.add_argument("--recipe", default="cryosparc-abinit",
                        choices=("cryosparc-abinit", "relion-refine"),
                        help="cryoviz recipe: modal refinement, or exact EM (relion-refine "
                             "without a starting map)")
    parser.add_argument("--skip-cryoviz", action="store_true",
                        help="measure the cryoDRGN side alone")
    parser.add_argument("--skip-cryodrgn", action="store_true",
                        help="measure the cryoviz side alone")
    parser.add_argument("--score-existing", action="store_true",
                        help="do not run cryoviz: score the run already in WORK/cryoviz "
                             "(e.g. one stopped early: its per-iteration maps and log)")
    parser.add_argument("--no-score-every-epoch", dest="score_every_epoch",
                        action="store_false",
                        help="score only the final maps (no time-to-target)")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="stop each program after this many seconds (coreutils timeout) "
                             "and score what it wrote by then")
    parser.add_argument("--target-px", type=float, default=4.0,
                        help="FSC=0.5 resolution (pixels) for the time-to-target figure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--output", type=Path, default=None, help="JSON path")
    args = parser.parse_args(argv)

    data = args.dataset.resolve()
    star, stack = data / "particles.star", data / "particles.mrcs"
    work = (args.work or data / "bench_abinit_vs_cryodrgn").resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""} if args.device == "cpu" else None

    # 1. export the CTF with cryoviz's writers; the truth
    ps = load_particles(star, require_poses=False, require_ctf=True)
    box, apix = ps.box_size, ps.pixel_size_angstrom
    args.apix = apix
    ctf_pkl = work / "ctf.pkl"
    write_ctf_pkl(ctf_pkl, ctf_array_from_params(ps.ctf, box, apix))
    truth_np, _ = read_volume(data / "truth" / "state_0.mrc")
    truth = torch.as_tensor(np.ascontiguousarray(truth_np), dtype=torch.float64)
    rot_true = np.load(data / "truth" / "truth.npz")["rotations"]
    mask = soft_spherical_mask(box, 0.375 * box, 3.0, dtype=torch.float64)

    # 2. the two programs, each scored on its own; a failure is recorded
    drgn = None if args.skip_cryodrgn else run_cryodrgn(args, stack, ctf_pkl, work, truth,
                                                         rot_true, mask, env)
    cv = None if args.skip_cryoviz else run_cryoviz(args, star, work, truth, rot_true, mask)

    for name, r in (("cryoDRGN", drgn), ("cryoviz", cv)):
        if r is None:
            continue
        # a run stopped by the time limit has no final map: its last scored one
        f, p = r.get("final") or (r.get("trajectory") or [{}])[-1], r.get("poses") or {}
        print(f"{name:9s} wall {_fmt(r.get('wall_s'), 1)} s  FSC=0.5 "
              f"{_fmt(f.get('resolution_05_angstrom'))} Å  FSC-AUC {_fmt(f.get('fsc_auc'), 4)}  "
              f"mirrored {_fmt(f.get('mirrored'))}  median pose error "
              f"{_fmt(p.get('median_rotation_error_deg'), 1)}° (best half "
              f"{_fmt(p.get('median_rotation_error_best_half_deg'), 1)}°)"
              + (f"  ERROR {r['error'].splitlines()[0]}" if "error" in r else ""))

    summary = {}
    if drgn and cv and drgn.get("wall_s") and cv.get("wall_s"):
        summary["speedup_wall_cryodrgn_over_cryoviz"] = drgn["wall_s"] / cv["wall_s"]
    if drgn and cv and "final" in drgn and "final" in cv:
        summary["cryoviz_minus_cryodrgn_fsc_auc"] = (cv["final"]["fsc_auc"]
                                                     - drgn["final"]["fsc_auc"])
    if drgn and cv and drgn.get("time_to_target_since_start_s") and cv.get(
            "time_to_target_cumulative_s"):
        summary["speedup_to_target_cryodrgn_over_cryoviz"] = (
            drgn["time_to_target_since_start_s"] / cv["time_to_target_cumulative_s"])

    out = {
        "benchmark": "abinit_vs_cryodrgn",
        "command": "python " + shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": {
            "date_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "platform": platform.platform(),
            "cpu_model": cpu_model(),
            "cpu_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch_version": torch.__version__,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "device": args.device,
            "device_name": (torch.cuda.get_device_name() if args.device == "cuda"
                            else cpu_model()),
            "cryodrgn_and_its_torch": cryodrgn_version(args.cryodrgn),
            "load_average_end": load_average(),
        },
        "dataset": {"path": str(data), "n_particles": len(ps), "box_size": box,
                    "pixel_size_angstrom": apix},
        "settings": {"cryodrgn_epochs": args.epochs,
                     "cryodrgn_epochs_pose_search": args.epochs_pose_search,
                     "cryodrgn_n_imgs_pretrain": args.n_imgs_pretrain,
                     "cryodrgn_args": args.cryodrgn_args, "cryoviz_args": args.cryoviz_args,
                     "target_px": args.target_px, "seed": args.seed,
                     "cryoviz_recipe": args.recipe,
                     "cryoviz_initial_model": (None if args.initial_model is None
                                               else str(args.initial_model))},
        "cryodrgn": drgn,
        "cryoviz": cv,
        "fsc_mask": {"kind": "soft spherical", "radius_px": 0.375 * box, "edge_px": 3.0},
        "summary": summary,
    }
    path = args.output or RESULTS_DIR / f"abinit_vs_cryodrgn_{args.device}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, allow_nan=False) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
