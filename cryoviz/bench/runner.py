"""Run registered entries on suite datasets and collect leaderboard rows.

:func:`iter_bench` is a generator (one :class:`BenchRow` per run) so front ends
show progress their own way; :func:`run_bench` runs it to the end and writes
the leaderboard (``results.json``, ``leaderboard.md``, ``leaderboard.html``)
after every row, so an interrupted bench still leaves a table.

Layout of the output folder::

    OUT/datasets/<dataset>/          simulated once, reused when identical
    OUT/runs/<dataset>/<recipe>-<task>/   each run's own outputs (``-seed<S>`` added
                                          for a seed other than 0)
    OUT/results.json  OUT/leaderboard.md  OUT/leaderboard.html
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cryoviz.bench.entries import ENTRIES, BenchEntry, RunContext
from cryoviz.bench.leaderboard import write_leaderboard
from cryoviz.bench.measure import machine_info, measure
from cryoviz.bench.suite import SUITE_VERSION, DatasetSpec, build_dataset
from cryoviz.bench.tasks import PER_STATE, Truth, load_truth, render_plan, score
from cryoviz.errors import InputError

__all__ = ["BenchRow", "check_seeds", "iter_bench", "run_bench", "select_entries"]


@dataclass
class BenchRow:
    """One leaderboard row: a recipe on a task and a dataset.

    Attributes
    ----------
    recipe, task, dataset
        What ran where.
    metrics
        Scores (:func:`cryoviz.bench.tasks.score`).
    wall_s, peak_rss_mb, peak_gpu_mb, memory_method, device
        Cost of the run and how it was measured.
    status
        ``"ok"`` or ``"error: ..."``.
    source
        ``"cryoviz"``, or the external tool and version that produced it.
    seed
        Seed of the recipe (the dataset's own seed does not change with it).
    """

    recipe: str
    task: str
    dataset: str
    metrics: dict = field(default_factory=dict)
    wall_s: float | None = None
    peak_rss_mb: float | None = None
    peak_gpu_mb: float | None = None
    memory_method: str = ""
    device: str = "cpu"
    status: str = "ok"
    source: str = "cryoviz"
    seed: int = 0

    def to_dict(self) -> dict:
        """JSON-ready dictionary."""
        return asdict(self)


def _safe(name: str) -> str:
    """A folder name: characters other than letters, digits and ``._=-[]`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9._=\[\]-]", "_", name)


def select_entries(recipes: Iterable[str] | None = None, tasks: Iterable[str] | None = None
                   ) -> list[BenchEntry]:
    """Registered entries, filtered by recipe names and tasks (None: all)."""
    names = None if recipes is None else set(recipes)
    wanted_tasks = None if tasks is None else set(tasks)
    if names is not None:
        unknown = names - {name for name, _ in ENTRIES}
        if unknown:
            raise InputError(None, "recipes", f"registered recipes "
                             f"({', '.join(sorted({n for n, _ in ENTRIES}))})",
                             ", ".join(sorted(unknown)))
    return [e for (name, task), e in ENTRIES.items()
            if (names is None or name in names) and (wanted_tasks is None or task in wanted_tasks)]


def iter_bench(datasets: list[DatasetSpec], output_dir: str | Path,
               entries: list[BenchEntry] | None = None, device: str = "cpu",
               halves: bool = True, per_state: int = PER_STATE, raise_errors: bool = False,
               epochs: int | None = None, em_iterations: int | None = None,
               seeds: Sequence[int] = (0,)) -> Iterator[BenchRow]:
    """Run every entry on every dataset of its kinds and seed; yield one row per run.

    Parameters
    ----------
    datasets
        Suite datasets (simulated into ``output_dir/datasets`` when missing).
    output_dir
        Bench folder.
    entries
        Entries to run (default: every registered one).
    device
        Torch device for the recipes.
    halves
        Train latent recipes on the two halves too (``half_w2`` metric).
    per_state
        Particles rendered per true state in the conformation task.
    raise_errors
        Re-raise a failing run's exception (default: record it in the row).
    epochs, em_iterations
        Override the suite size's training epochs / EM iterations
        (:class:`cryoviz.bench.entries.RunContext`); each row records its own.
    seeds
        Seeds of the recipes (:attr:`RunContext.seed`): each entry runs once per
        seed on the same data, giving the seed-to-seed spread of its metrics.
    """
    out = Path(output_dir)
    entries = list(ENTRIES.values()) if entries is None else entries
    seeds = check_seeds(seeds)
    for spec in datasets:
        todo = [e for e in entries if spec.kind in e.kinds]
        if not todo:
            continue
        folder = build_dataset(spec, out / "datasets")
        truth = load_truth(folder)
        render = render_plan(truth, per_state=per_state, seed=spec.seed)
        for entry in todo:
            for seed in seeds:
                yield _run_one(entry, spec, folder, truth, render, out, seed, device=device,
                               halves=halves, epochs=epochs, em_iterations=em_iterations,
                               raise_errors=raise_errors)


def check_seeds(seeds: Sequence[int]) -> tuple[int, ...]:
    """``seeds`` as a tuple, or an :class:`InputError` unless distinct integers >= 0."""
    values = tuple(seeds)
    good = (values and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                           for s in values) and len(set(values)) == len(values))
    if not good:
        raise InputError(None, "seeds", "distinct integers >= 0 (at least one)",
                         ", ".join(map(str, values)) or "none")
    return values


def _run_one(entry: BenchEntry, spec: DatasetSpec, folder: Path, truth: Truth, render: np.ndarray,
             out: Path, seed: int, device: str, halves: bool, epochs: int | None,
             em_iterations: int | None, raise_errors: bool) -> BenchRow:
    """One entry on one dataset with one seed, measured and scored (errors in the row)."""
    ctx = RunContext(render=render if entry.task == "conformation" else
                     np.zeros(0, dtype=np.int64),
                     n_states=spec.n_states, size=spec.size, device=device,
                     halves=halves, seed=seed, epochs=epochs, em_iterations=em_iterations)
    name = f"{entry.name}-{entry.task}" + (f"-seed{seed}" if seed else "")
    run_dir = out / "runs" / spec.name / _safe(name)
    run_dir.mkdir(parents=True, exist_ok=True)
    row = BenchRow(recipe=entry.name, task=entry.task, dataset=spec.name, device=device,
                   seed=seed)
    try:
        with measure(device) as cost:
            outputs = entry.run(folder, run_dir, ctx)
        row.wall_s, row.peak_rss_mb = cost.wall_s, cost.peak_rss_mb
        row.peak_gpu_mb, row.memory_method = cost.peak_gpu_mb, cost.method
        child = outputs.extra.pop("child_measurement", None)
        if child is not None:  # an external tool ran in a child process
            row.wall_s, row.peak_rss_mb = child.wall_s, child.peak_rss_mb
            row.memory_method = child.method
        # work another entry did for this one (a shared ab initio initial model):
        # counted in this row's wall time too, and kept in its metrics
        row.wall_s += float(outputs.extra.get("shared_wall_s", 0.0))
        row.source = outputs.extra.pop("source", "cryoviz")
        row.metrics = score(entry.task, outputs, truth, render)
    except Exception as err:  # noqa: BLE001 - one failing recipe must not stop the bench
        if raise_errors:
            raise
        row.status = f"error: {type(err).__name__}: {err}"
        (run_dir / "error.txt").write_text(traceback.format_exc())
    return row


def run_bench(datasets: list[DatasetSpec], output_dir: str | Path,
              entries: list[BenchEntry] | None = None, device: str = "cpu",
              extra_rows: list[BenchRow] | None = None, **kwargs) -> list[BenchRow]:
    """Run :func:`iter_bench` to the end, writing the leaderboard after every row.

    ``extra_rows`` (e.g. imported external runs) are added to the table.
    """
    out = Path(output_dir)
    rows = list(extra_rows or [])
    info = {"suite_version": SUITE_VERSION, "machine": machine_info(device),
            "datasets": [s.name for s in datasets],
            "overrides": {k: kwargs[k] for k in ("epochs", "em_iterations", "halves")
                          if kwargs.get(k) is not None}}
    if tuple(kwargs.get("seeds", (0,))) != (0,):
        info["overrides"]["seeds"] = list(kwargs["seeds"])
    if kwargs.get("per_state", PER_STATE) != PER_STATE:  # another render plan: not comparable
        info["overrides"]["per_state"] = int(kwargs["per_state"])
    write_leaderboard(out, rows, info)
    for row in iter_bench(datasets, out, entries, device=device, **kwargs):
        rows.append(row)
        write_leaderboard(out, rows, info)
    return rows
