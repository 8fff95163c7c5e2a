"""Method comparison from a benchmark folder (``cryoviz bench`` / :mod:`cryoviz.bench`).

A bench folder holds ``results.json`` (one row per recipe, task and dataset:
metrics, wall time, peak memory), the simulated ``datasets/<name>/`` with their
``truth/`` and the run folders ``runs/<dataset>/<recipe>-<task>/``. These helpers
turn it into table rows and FSC curves against the true maps for the figures of
:mod:`cryoviz.viz.figures`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path

import torch

from cryoviz.errors import InputError
from cryoviz.io.mrc import read_volume
from cryoviz.metrics.fsc import FSCCurve, fsc

__all__ = ["bench_table_rows", "bench_fsc_curves", "bench_run_dir"]

_COST_COLUMNS = ("recipe", "task", "dataset", "status", "wall_s", "peak_rss_mb", "device")


def _as_dict(row) -> dict:
    return dict(row) if isinstance(row, Mapping) else row.to_dict()


def bench_table_rows(rows: Sequence, task: str | None = None) -> list[dict]:
    """Flat table rows (cost columns, then every metric) of bench rows.

    Parameters
    ----------
    rows
        :class:`cryoviz.bench.runner.BenchRow` objects or ``results.json`` rows.
    task
        Keep only rows of this task (None: all).
    """
    table = []
    for row in map(_as_dict, rows):
        if task is not None and row.get("task") != task:
            continue
        flat = {k: row.get(k) for k in _COST_COLUMNS}
        flat.update(row.get("metrics") or {})
        table.append(flat)
    return table


def bench_run_dir(bench_dir: str | PathLike, row) -> Path:
    """The run folder ``bench_dir/runs/<dataset>/<recipe>-<task>`` of a bench row."""
    r = _as_dict(row)
    return Path(bench_dir) / "runs" / str(r["dataset"]) / f"{r['recipe']}-{r['task']}"


def bench_fsc_curves(bench_dir: str | PathLike, rows: Sequence, task: str = "volume",
                     state: int = 0) -> tuple[dict[str, FSCCurve], float]:
    """FSC against the true map of every successful single-map run of ``task``.

    Each run's map is the first ``map.mrc`` under its run folder (sorted paths);
    the truth is ``datasets/<dataset>/truth/state_<state>.mrc``. Poses were known,
    so no alignment is needed.

    Returns
    -------
    curves : dict[str, FSCCurve]
        ``"<recipe> (<dataset>)"`` -> curve.
    pixel_size_angstrom : float
        Voxel size of the last map read (for the figure's axis).
    """
    root = Path(bench_dir)
    curves: dict[str, FSCCurve] = {}
    apix = 1.0
    for row in map(_as_dict, rows):
        if row.get("task") != task or row.get("status") != "ok":
            continue
        run_dir = bench_run_dir(root, row)
        maps = sorted(run_dir.rglob("map.mrc"))
        if not maps:
            raise InputError(run_dir, "map.mrc", "the run's map", got="no map.mrc")
        truth_path = root / "datasets" / str(row["dataset"]) / "truth" / f"state_{state}.mrc"
        if not truth_path.is_file():
            raise InputError(truth_path, "true map", "a simulated dataset's truth",
                             got="no such file")
        volume, voxel = read_volume(maps[0])
        truth, _ = read_volume(truth_path)
        if volume.shape != truth.shape:
            raise InputError(maps[0], "box size", f"{truth.shape} like the truth", volume.shape)
        curves[f"{row['recipe']} ({row['dataset']})"] = fsc(
            torch.as_tensor(volume, dtype=torch.float64), torch.as_tensor(truth,
                                                                            dtype=torch.float64))
        apix = voxel or apix
    return curves, apix
