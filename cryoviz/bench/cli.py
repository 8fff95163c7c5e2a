"""``cryoviz bench``: run the suite and write the leaderboard; import external runs.

Wired into :mod:`cryoviz.cli` with :func:`add_parser` and :func:`run`::

    cryoviz bench --suite tiny -o OUT [--subset ci] [--recipes a,b] [--tasks ...]
    cryoviz bench --suite small -o OUT --epochs 5 --em-iterations 5 --no-halves
    cryoviz bench --suite tiny -o OUT --cryodrgn /path/to/venv/bin/cryodrgn
    cryoviz bench --suite tiny -o OUT --error-propagation --sweep cryodrgn:zdim=2,8
    cryoviz bench --suite small -o OUT --recipes cryodrgn --tasks conformation --seeds 0,1,2
    cryoviz bench regenerate OUT
    cryoviz bench merge -o OUT A B C
    cryoviz bench zfile --dataset OUT/datasets/NAME --z z.pkl -o zfile.txt
    cryoviz bench import-cryodrgn OUT --dataset OUT/datasets/NAME --z z.pkl --volumes DIR

Progress goes to stderr; bad input exits with status 2.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from cryoviz.errors import InputError

__all__ = ["add_parser", "run", "CI_SUBSET"]

#: ``--subset ci``: every registered recipe (``recipes`` None) on one dataset per kind
#: (high SNR, uniform poses), 2 training epochs and 3 EM iterations (instead of the
#: tiny suite's 4 and 5), without the half-set trainings. The full ``--suite tiny``
#: run adds the low SNR, the preferred poses, the half sets and the longer training.
CI_SUBSET = {
    "snrs": ("hi",),
    "poses": ("uniform",),
    "recipes": None,
    "halves": False,
    "epochs": 2,
    "em_iterations": 3,
}


def _csv(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(t.strip() for t in text.split(",") if t.strip())


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``bench`` command (and its ``regenerate``, ``zfile``, ``import-cryodrgn``)."""
    p = subparsers.add_parser("bench", help="benchmark suite and leaderboard")
    p.add_argument("--suite", choices=("tiny", "small", "full"), default="tiny")
    p.add_argument("-o", "--output", type=Path, default=Path("bench_out"),
                   help="bench folder (datasets, runs, results.json, leaderboard.md/.html)")
    p.add_argument("--subset", choices=("all", "ci"), default="all",
                   help="'ci': high SNR, uniform poses, every recipe, 2 epochs, 3 EM "
                   "iterations, no half-set training")
    p.add_argument("--recipes", help="comma-separated recipe names (default: all; 'none': "
                   "only the --cryodrgn / --sweep entries)")
    p.add_argument("--tasks", help="comma-separated tasks (volume, conformation, pose, abinit)")
    p.add_argument("--kinds", help="comma-separated dataset kinds (default: all)")
    p.add_argument("--snrs", help="comma-separated: hi, lo")
    p.add_argument("--poses", help="comma-separated: uniform, preferred")
    p.add_argument("--device", default="auto",
                   help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--no-halves", action="store_true",
                   help="skip the half-set trainings (no half_w2 metric)")
    # 4 is cryoviz.bench.tasks.PER_STATE, not imported: this parser is built at every
    # cryoviz start, and that module imports the metrics (a test checks they agree)
    p.add_argument("--per-state", type=int, default=4,
                   help="particles rendered per true state (conformation task)")
    p.add_argument("--epochs", type=int,
                   help="training epochs of every training recipe and cryoDRGN "
                   "(default: the suite size's)")
    p.add_argument("--em-iterations", type=int,
                   help="EM iterations of relion-class3d, 3dva, relion-refine "
                   "(default: the suite size's)")
    p.add_argument("--cryodrgn", help="cryodrgn executable: add cryoDRGN train_vae rows")
    p.add_argument("--error-propagation", action="store_true",
                   help="also FSC vs injected pose / defocus error (homogeneous datasets)")
    p.add_argument("--sweep", action="append", default=[],
                   help="RECIPE:SETTING=V1,V2,... (e.g. cryodrgn:zdim=2,8); settings joined "
                   "by + give every combination (e2gmm:beta=1,4+kl_warmup_epochs=0,2); "
                   "repeatable")
    p.add_argument("--seeds", default="0",
                   help="comma-separated recipe seeds (default 0): every entry runs once "
                   "per seed on the same data; the tables show mean ± sd over the seeds")
    p.set_defaults(func=_run_bench)
    sub = p.add_subparsers(dest="bench_command")

    reg = sub.add_parser("regenerate", help="rewrite leaderboard.md/.html from results.json")
    reg.add_argument("folder", type=Path)
    reg.set_defaults(func=_run_regenerate)

    mg = sub.add_parser("merge", help="one leaderboard from several bench folders")
    mg.add_argument("folders", type=Path, nargs="+", help="bench folders with results.json")
    mg.add_argument("-o", "--output", dest="merged", type=Path, required=True,
                    help="folder to write (results.json, leaderboard.md/.html)")
    mg.add_argument("--replace", action="store_true",
                    help="a later folder's row replaces earlier rows of the same recipe, "
                    "task, dataset and seed (recorded under 'replaced' in results.json)")
    mg.set_defaults(func=_run_merge)

    zf = sub.add_parser("zfile", help="z values of the particles the conformation task scores")
    zf.add_argument("--dataset", type=Path, required=True, help="suite dataset folder")
    zf.add_argument("--z", type=Path, required=True, help="z.pkl of the run (all particles)")
    zf.add_argument("-o", "--zfile", type=Path, required=True, help="text file to write")
    zf.add_argument("--per-state", type=int, default=4)
    zf.set_defaults(func=_run_zfile)

    imp = sub.add_parser("import-cryodrgn", help="add a cryoDRGN run to a leaderboard")
    imp.add_argument("folder", type=Path, help="bench folder holding results.json")
    imp.add_argument("--dataset", type=Path, required=True, help="suite dataset folder")
    imp.add_argument("--z", type=Path, required=True, help="cryoDRGN z.pkl")
    imp.add_argument("--volumes", type=Path, required=True,
                     help="folder of eval_vol --zfile maps (from 'cryoviz bench zfile')")
    imp.add_argument("--name", default="cryodrgn (imported)")
    imp.add_argument("--per-state", type=int, default=4)
    imp.add_argument("--wall-s", type=float, help="wall time of the run, if known")
    imp.add_argument("--peak-rss-mb", type=float, help="peak memory of the run, if known")
    imp.add_argument("--device-name", default="unknown", help="where the run was made")
    imp.set_defaults(func=_run_import)
    return p


def _sweep_entries(specs: list[str]):
    """The entries of ``--sweep RECIPE:SETTING=V1,V2,...[+SETTING=V1,...]`` specs.

    Each value is typed as its recipe field
    (:func:`cryoviz.train.recipe_settings.parse_setting`) and checked by the recipe;
    settings joined by ``+`` give every combination of their values
    (:func:`cryoviz.bench.diagnostics.sweep_grid_entries`).
    """
    from cryoviz.bench.diagnostics import sweep_grid_entries  # noqa: PLC0415
    from cryoviz.train.recipe_settings import parse_setting  # noqa: PLC0415

    entries = []
    for spec in specs:
        recipe, colon, rest = spec.partition(":")
        # a '+' starts the next setting only before a name and '=' (not in 1e+3)
        parts = re.split(r"\+(?=[A-Za-z_][\w-]*=)", rest)
        if not colon or not recipe or any("=" not in part for part in parts):
            raise InputError(None, "--sweep", "RECIPE:SETTING=V1,V2,...[+SETTING=V1,...]",
                             spec)
        axes = []
        for part in parts:
            setting, values = part.split("=", 1)
            typed = [parse_setting(f"{setting}={v}", source="--sweep")
                     for v in values.split(",")]
            axes.append((typed[0][0], [value for _, value in typed]))
        entries += sweep_grid_entries(recipe, axes)
    return entries


def _run_bench(args: argparse.Namespace) -> int:
    from cryoviz.bench.diagnostics import (  # noqa: PLC0415
        error_propagation,
        write_error_propagation,
    )
    from cryoviz.bench.external import cryodrgn_entry  # noqa: PLC0415
    from cryoviz.bench.runner import check_seeds, run_bench, select_entries  # noqa: PLC0415
    from cryoviz.bench.suite import (  # noqa: PLC0415
        KINDS,
        POSES,
        SNRS,
        build_dataset,
        suite_datasets,
    )

    for flag, value in (("--epochs", args.epochs), ("--em-iterations", args.em_iterations)):
        if value is not None and value < 1:
            raise InputError(None, flag, "a positive integer", value)
    try:
        seeds = check_seeds([int(s) for s in _csv(args.seeds) or ()])
    except ValueError:
        raise InputError(None, "--seeds", "comma-separated integers", args.seeds) from None
    if args.device == "auto":
        import torch  # noqa: PLC0415

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    ci = args.subset == "ci"
    kinds = _csv(args.kinds) or KINDS
    snrs = _csv(args.snrs) or (CI_SUBSET["snrs"] if ci else tuple(SNRS))
    poses = _csv(args.poses) or (CI_SUBSET["poses"] if ci else POSES)
    recipes = _csv(args.recipes) or (CI_SUBSET["recipes"] if ci else None)
    halves = not args.no_halves and not (ci and not CI_SUBSET["halves"])
    epochs = args.epochs or (CI_SUBSET["epochs"] if ci else None)
    em_iterations = args.em_iterations or (CI_SUBSET["em_iterations"] if ci else None)
    datasets = suite_datasets(args.suite, kinds, snrs, poses)
    entries = [] if recipes == ("none",) else select_entries(recipes, _csv(args.tasks))
    if args.cryodrgn:
        entries.append(cryodrgn_entry(args.cryodrgn))
    entries += _sweep_entries(args.sweep)
    print(f"bench: {len(datasets)} datasets x {len(entries)} entries -> {args.output}",
          file=sys.stderr, flush=True)
    if args.error_propagation:
        for spec in datasets:
            if spec.kind == "homogeneous":
                folder = build_dataset(spec, args.output / "datasets")
                result = error_propagation(folder, device=args.device)
                path = write_error_propagation(result, args.output / "diagnostics" / spec.name)
                print(f"error propagation: {path}", file=sys.stderr, flush=True)
    rows = run_bench(datasets, args.output, entries, device=args.device, halves=halves,
                     per_state=args.per_state, epochs=epochs, em_iterations=em_iterations,
                     seeds=seeds)
    failed = [r for r in rows if r.status != "ok"]
    for r in rows:
        auc = r.metrics.get("fsc_auc")
        print(f"{r.recipe:28s} {r.task:13s} {r.dataset:34s} seed {r.seed:<3d} "
              f"{'' if auc is None else f'FSC-AUC {auc:.3f}'}  {r.status}", file=sys.stderr)
    print(f"leaderboard: {args.output / 'leaderboard.md'} ({len(rows)} rows, "
          f"{len(failed)} failed)")
    return 1 if failed else 0


def _run_regenerate(args: argparse.Namespace) -> int:
    from cryoviz.bench.leaderboard import regenerate  # noqa: PLC0415

    results = regenerate(args.folder)
    print(f"leaderboard: {args.folder / 'leaderboard.md'} ({len(results['rows'])} rows)")
    return 0


def _run_merge(args: argparse.Namespace) -> int:
    from cryoviz.bench.leaderboard import merge  # noqa: PLC0415

    results = merge(args.merged, list(args.folders), replace=args.replace)
    print(f"leaderboard: {args.merged / 'leaderboard.md'} ({len(results['rows'])} rows)")
    return 0


def _run_zfile(args: argparse.Namespace) -> int:
    from cryoviz.bench.external import write_render_zfile  # noqa: PLC0415

    render = write_render_zfile(args.dataset, args.z, args.zfile, per_state=args.per_state)
    print(f"{args.zfile}: z of {len(render)} particles ({', '.join(map(str, render))})")
    return 0


def _run_import(args: argparse.Namespace) -> int:
    from cryoviz.bench.external import import_cryodrgn  # noqa: PLC0415
    from cryoviz.bench.leaderboard import regenerate  # noqa: PLC0415
    from cryoviz.bench.runner import BenchRow  # noqa: PLC0415
    from cryoviz.bench.suite import DatasetSpec  # noqa: PLC0415
    from cryoviz.bench.tasks import load_truth, render_plan, score  # noqa: PLC0415

    truth = load_truth(args.dataset)
    render = render_plan(truth, per_state=args.per_state,
                         seed=DatasetSpec.from_name(args.dataset.name).seed)
    outputs = import_cryodrgn(args.z, args.volumes, len(render))
    source = outputs.extra.pop("source")
    row = BenchRow(recipe=args.name, task="conformation", dataset=args.dataset.name,
                   metrics=score("conformation", outputs, truth, render), wall_s=args.wall_s,
                   peak_rss_mb=args.peak_rss_mb, device=args.device_name,
                   memory_method="given on import" if args.peak_rss_mb else "", source=source)
    regenerate(args.folder, [row])
    print(f"imported {args.name} on {args.dataset.name}: {row.metrics}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the parsed ``bench`` command; 0 on success, 1 if a run failed, 2 on bad input."""
    try:
        return int(args.func(args))
    except InputError as err:
        print(f"cryoviz bench: error: {err}", file=sys.stderr, flush=True)
        return 2
