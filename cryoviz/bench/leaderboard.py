"""The leaderboard: ``results.json`` and the same rows as markdown and plain HTML tables.

``results.json`` holds ``{"suite_version", "machine", "datasets", "rows"}``;
``leaderboard.md`` and ``leaderboard.html`` are regenerated from it (one table
per task, rows grouped by dataset, best FSC-AUC first) by
:func:`write_leaderboard`, or from an existing file by :func:`regenerate`.

A recipe run with several seeds (``cryoviz bench --seeds``) keeps one row per
seed in ``results.json``; the tables show one line for them, each number as
``mean ± sd`` over the seeds (sample standard deviation), the wall time as the
mean, the peak memory as the largest, and the number of seeds in ``seeds``.
"""

from __future__ import annotations

import html
import json
import statistics
from pathlib import Path
from typing import NamedTuple

from cryoviz.errors import InputError
from cryoviz.io.mrc import atomic_output

__all__ = ["COLUMNS", "Spread", "write_leaderboard", "read_results", "regenerate", "merge",
           "markdown_table", "html_page", "seed_groups"]

#: ``task -> [(header, metric key)]``; ``wall_s`` etc. are row fields, the rest metrics.
COLUMNS: dict[str, list[tuple[str, str]]] = {
    "volume": [("FSC-AUC", "fsc_auc"), ("FSC=0.5 Å", "resolution_05_angstrom"),
               ("half-map 0.143 Å", "resolution_half_maps_0143_angstrom")],
    "conformation": [("per-conf. FSC-AUC", "fsc_auc"), ("FSC=0.5 Å", "resolution_05_angstrom"),
                     ("kNN preservation", "knn_preservation"), ("(chance)", "knn_chance"),
                     ("k-means agreement", "kmeans_agreement"),
                     ("half-set W2", "half_w2"), ("FSC-cluster agreement",
                                                  "fsc_cluster_agreement"),
                     ("top merge Å", "fsc_top_merge_angstrom"),
                     ("(truth) Å", "truth_top_merge_angstrom"),
                     ("CA RMSD Å", "ca_rmsd_angstrom")],
    "pose": [("median error °", "pose_median_error_deg"), ("mean error °", "pose_mean_error_deg"),
             ("≤10°", "pose_within_10deg"), ("π flip", "pose_inplane_pi"),
             ("opposite view", "pose_opposite_view"), ("FSC-AUC", "fsc_auc"),
             ("FSC=0.5 Å", "resolution_05_angstrom")],
    "abinit": [("median error °", "pose_median_error_deg"),
               ("mean error °", "pose_mean_error_deg"), ("≤10°", "pose_within_10deg"),
               ("π flip", "pose_inplane_pi"), ("opposite view", "pose_opposite_view"),
               ("FSC-AUC", "fsc_auc"), ("FSC=0.5 Å", "resolution_05_angstrom")],
    "inplane": [("angle median error °", "angle_median_error_deg"),
                ("≤5°", "angle_within_5deg"),
                ("defocus median error Å", "defocus_median_error_angstrom"),
                ("(% of range)", "defocus_median_error_percent_of_range"),
                ("encoder angle error °", "encoder_angle_median_error_deg"),
                ("average FRC-AUC loss", "frc_auc_loss_fraction")],
}
_TAIL = [("seeds", "n_seeds"), ("wall s", "wall_s"), ("peak RSS MiB", "peak_rss_mb"),
         ("device", "device"), ("source", "source")]


class Spread(NamedTuple):
    """A number over several seeds: mean, sample standard deviation, count."""

    mean: float
    sd: float
    n: int


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, Spread):
        return f"{_fmt(value.mean)} ± {_fmt(value.sd)}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3f}"
    return str(value)


def _combine(values: list):
    """One table value from the seeds' values of a field (see the module notes)."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present)
    if numbers and len(present) > 1:
        return Spread(statistics.fmean(present), statistics.stdev(present), len(present))
    return present[0] if all(v == present[0] for v in present) else "mixed"


def seed_groups(rows: list[dict], task: str) -> list[dict]:
    """One table line per recipe and dataset of ``task``'s successful rows.

    Rows that differ only in their ``seed`` become one line (module notes);
    a single row is returned as it is, with ``n_seeds`` 1.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["task"] == task and r["status"] == "ok":
            groups.setdefault((r["recipe"], r["dataset"]), []).append(r)
    lines = []
    for (recipe, dataset), members in groups.items():
        if len(members) == 1:
            lines.append({**members[0], "n_seeds": 1})
            continue
        keys = dict.fromkeys(k for m in members for k in m["metrics"])
        line = {"recipe": recipe, "task": task, "dataset": dataset, "status": "ok",
                "n_seeds": len(members),
                "metrics": {k: _combine([m["metrics"].get(k) for m in members]) for k in keys}}
        walls = [m["wall_s"] for m in members if m.get("wall_s") is not None]
        rss = [m["peak_rss_mb"] for m in members if m.get("peak_rss_mb") is not None]
        line["wall_s"] = statistics.fmean(walls) if walls else None
        line["peak_rss_mb"] = max(rss) if rss else None
        for name in ("device", "source"):
            line[name] = _combine([m.get(name) for m in members])
        lines.append(line)
    return lines


def _number(value) -> float | None:
    return value.mean if isinstance(value, Spread) else value


def _sorted(rows: list[dict], task: str) -> list[dict]:
    def key(r: dict):
        auc = _number(r["metrics"].get("fsc_auc"))
        err = _number(r["metrics"].get("pose_median_error_deg",
                                       r["metrics"].get("angle_median_error_deg")))
        return (r["dataset"], -(auc if isinstance(auc, (int, float)) else -1.0),
                err if isinstance(err, (int, float)) else 1e9, r["recipe"])
    return sorted(seed_groups(rows, task), key=key)


#: Columns that describe the dataset, not the run (the same for every seed): their
#: mean is shown without a spread.
_REFERENCE_KEYS = frozenset({"knn_chance", "truth_top_merge_angstrom"})


def _cells(row: dict, task: str) -> list[str]:
    values = [row["recipe"], row["dataset"]]
    for _, key in COLUMNS[task]:
        value = row["metrics"].get(key)
        if key in _REFERENCE_KEYS and isinstance(value, Spread):
            value = value.mean
        values.append(_fmt(value))
    values += [_fmt(row.get(key)) for _, key in _TAIL]
    return values


def _headers(task: str) -> list[str]:
    return ["recipe", "dataset"] + [h for h, _ in COLUMNS[task]] + [h for h, _ in _TAIL]


def markdown_table(rows: list[dict], task: str) -> str:
    """The markdown table of one task's successful rows."""
    lines = ["| " + " | ".join(_headers(task)) + " |",
             "|" + "---|" * len(_headers(task))]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in _cells(r, task)) + " |"
              for r in _sorted(rows, task)]
    return "\n".join(lines)


def _machine_line(info: dict) -> str:
    m = info.get("machine", {})
    return (f"Suite version {info.get('suite_version')}; {m.get('date_utc')}; "
            f"{m.get('platform')}; Python {m.get('python')}; torch {m.get('torch_version')}; "
            f"cryoviz {m.get('cryoviz_version')}; device {m.get('device')}; "
            f"load average at start {m.get('load_average')}; process base RSS "
            f"{_fmt(m.get('baseline_rss_mb'))} MiB (included in in-process peaks).")


def _seed_text(row: dict) -> str:
    return f" (seed {row['seed']})" if row.get("seed") else ""


def _failed(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["status"] != "ok"]


def markdown(rows: list[dict], info: dict) -> str:
    """The whole ``leaderboard.md``."""
    parts = ["# cryoviz bench leaderboard", "", _machine_line(info), ""]
    for task in COLUMNS:
        if any(r["task"] == task and r["status"] == "ok" for r in rows):
            parts += [f"## Task: {task}", "", markdown_table(rows, task), ""]
    failed = _failed(rows)
    if failed:
        parts += ["## Failed runs", ""]
        parts += [f"- {r['recipe']} / {r['task']} / {r['dataset']}{_seed_text(r)}: "
                  f"{r['status']}" for r in failed]
        parts.append("")
    parts += ["Metric definitions: `docs/bench.md`. Memory: " +
              ", ".join(sorted({r['memory_method'] for r in rows if r.get('memory_method')})),
              ""]
    return "\n".join(parts)


def html_page(rows: list[dict], info: dict) -> str:
    """The whole ``leaderboard.html`` (plain HTML, no scripts)."""
    esc = html.escape
    out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
           "<title>cryoviz bench leaderboard</title>",
           "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;"
           "margin-bottom:2em}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}"
           "td:nth-child(-n+2),th{text-align:left}th{background:#eee}</style>",
           "</head><body>", "<h1>cryoviz bench leaderboard</h1>",
           f"<p>{esc(_machine_line(info))}</p>"]
    for task in COLUMNS:
        task_rows = _sorted(rows, task)
        if not task_rows:
            continue
        out.append(f"<h2>Task: {esc(task)}</h2><table><tr>"
                   + "".join(f"<th>{esc(h)}</th>" for h in _headers(task)) + "</tr>")
        for r in task_rows:
            out.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in _cells(r, task))
                       + "</tr>")
        out.append("</table>")
    failed = _failed(rows)
    if failed:
        out.append("<h2>Failed runs</h2><ul>")
        out += [f"<li>{esc(r['recipe'])} / {esc(r['task'])} / {esc(r['dataset'])}"
                f"{esc(_seed_text(r))}: {esc(r['status'])}</li>" for r in failed]
        out.append("</ul>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _write(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:
        Path(tmp).write_text(text)


def write_leaderboard(output_dir: str | Path, rows: list, info: dict) -> dict:
    """Write ``results.json``, ``leaderboard.md`` and ``leaderboard.html``.

    Parameters
    ----------
    output_dir
        Folder (created).
    rows
        :class:`cryoviz.bench.runner.BenchRow` objects or their dictionaries.
    info
        ``suite_version``, ``machine`` and ``datasets``.

    Returns
    -------
    dict
        The results written to ``results.json``.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dict_rows = [r if isinstance(r, dict) else r.to_dict() for r in rows]
    results = {**info, "rows": dict_rows}
    _write(out / "results.json", json.dumps(results, indent=2, allow_nan=False) + "\n")
    _write(out / "leaderboard.md", markdown(dict_rows, info))
    _write(out / "leaderboard.html", html_page(dict_rows, info))
    return results


def read_results(path: str | Path) -> dict:
    """Read a ``results.json`` (or the one in a bench folder)."""
    target = Path(path)
    if target.is_dir():
        target = target / "results.json"
    if not target.is_file():
        raise InputError(target, "results.json", "a bench results file", got="no such file")
    try:
        results = json.loads(target.read_text())
    except json.JSONDecodeError as err:
        raise InputError(target, "results.json", "valid JSON", got=str(err)) from None
    if not isinstance(results, dict) or not isinstance(results.get("rows"), list):
        raise InputError(target, "rows", "a list of leaderboard rows", got=type(results))
    return results


def regenerate(output_dir: str | Path, extra_rows: list | None = None) -> dict:
    """Rewrite the tables from ``output_dir/results.json``, adding ``extra_rows``."""
    results = read_results(output_dir)
    rows = results.pop("rows") + [r if isinstance(r, dict) else r.to_dict()
                                  for r in (extra_rows or [])]
    return write_leaderboard(output_dir, rows, results)


def _row_key(row: dict) -> tuple:
    """Recipe, task, dataset and seed (0 for rows written before seeds were recorded)."""
    return row["recipe"], row["task"], row["dataset"], row.get("seed", 0)


def merge(output_dir: str | Path, folders: list, replace: bool = False) -> dict:
    """One leaderboard from several bench folders (e.g. runs made in parallel).

    The rows are concatenated in the order of ``folders``; the header
    (suite version, machine) is the first folder's, and ``merged_from`` records
    every folder with its own machine, datasets and overrides. A folder that is
    itself a merge contributes its own ``merged_from`` entries (merging into
    a merged leaderboard keeps where each earlier part came from).

    With ``replace``, a row of a later folder takes the place of the earlier
    rows with the same recipe, task, dataset and seed (a recipe re-run after a
    change), and ``replaced`` lists each replaced row's key, the folder it
    came from and the one that replaced it, with both rows' metrics.

    Raises
    ------
    InputError
        For fewer than one folder, or folders of different suite versions.
    """
    if not folders:
        raise InputError(None, "folders", "at least one bench folder", got="none")
    parts = [read_results(f) for f in folders]
    versions = {p.get("suite_version") for p in parts}
    if len(versions) != 1:
        raise InputError(folders[0], "suite_version", "the same suite version in every folder",
                         got=sorted(map(str, versions)))
    rows: list[dict] = []
    origin: list[str] = []
    replaced = list(parts[0].get("replaced") or [])
    for folder, part in zip(folders, parts, strict=True):
        for row in part["rows"]:
            key = _row_key(row)
            earlier = [i for i, r in enumerate(rows) if _row_key(r) == key] if replace else []
            for i in earlier:
                replaced.append({"recipe": key[0], "task": key[1], "dataset": key[2],
                                 "seed": key[3], "from": origin[i], "by": str(folder),
                                 "old_metrics": rows[i].get("metrics"),
                                 "new_metrics": row.get("metrics")})
            if earlier:
                rows[earlier[0]] = row
                origin[earlier[0]] = str(folder)
                for i in reversed(earlier[1:]):
                    del rows[i], origin[i]
            else:
                rows.append(row)
                origin.append(str(folder))
    info = {k: v for k, v in parts[0].items() if k not in ("rows", "replaced")}
    if replaced:
        info["replaced"] = replaced
    info["datasets"] = sorted({d for p in parts for d in p.get("datasets", [])})
    info["merged_from"] = [
        entry for f, p in zip(folders, parts, strict=True)
        for entry in (p.get("merged_from") or
                      [{"folder": str(f), "machine": p.get("machine"),
                        "datasets": p.get("datasets"), "overrides": p.get("overrides")}])]
    return write_leaderboard(output_dir, rows, info)
