"""Command line: ``cryoviz simulate | reconstruct | fsc | demo | train | analyze | ...``.

Each command is a thin layer over the public API; progress goes to stderr,
results to stdout. Bad input exits with status 2 and a one-line message that
names the file and the field.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cryoviz.errors import InputError

__all__ = ["main", "build_parser"]


def _progress(label: str, done: int, total: int) -> None:
    if not sys.stderr.isatty() and done not in (total,) and done % max(1, total // 10):
        return
    width = 30
    filled = int(width * done / max(total, 1))
    sys.stderr.write(f"\r{label:<16} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _add_simulate_args(p: argparse.ArgumentParser, n_default: int) -> None:
    p.add_argument("-o", "--output", required=True, type=Path, help="dataset folder")
    p.add_argument("--n-particles", type=int, default=n_default)
    p.add_argument("--box", type=int, default=64, help="box size D in pixels")
    p.add_argument("--pixel-size", type=float, default=2.0, help="Å per pixel")
    p.add_argument("--snr", type=float, default=0.1)
    p.add_argument("--states", default="4ake",
                   help="comma-separated: 4ake, 1ake, PDB/mmCIF files or .mrc maps")
    p.add_argument("--ensemble", choices=("discrete", "continuous"), default="discrete")
    p.add_argument("--weights", default=None, help="comma-separated state weights")
    p.add_argument("--bfactor", type=float, default=20.0, help="B-factor of the potential, Å^2")
    p.add_argument("--pose-distribution", choices=("uniform", "preferred"), default="uniform")
    p.add_argument("--shift-sigma", type=float, default=2.0, help="shift std dev, Å")
    p.add_argument("--defocus-min", type=float, default=10_000.0, help="Å")
    p.add_argument("--defocus-max", type=float, default=25_000.0, help="Å")
    p.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``cryoviz`` command."""
    parser = argparse.ArgumentParser(
        prog="cryoviz", description="cryo-EM reconstruction methods on one engine"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="simulate a particle dataset with ground truth")
    _add_simulate_args(sim, 10_000)

    rec = sub.add_parser("reconstruct", help="homogeneous reconstruction with known poses")
    rec.add_argument("particles", type=Path, help=".star, .cs, or .mrcs with --poses/--ctf")
    rec.add_argument("-o", "--output", required=True, type=Path, help="run folder")
    rec.add_argument("--method", choices=("backprojection", "sgd"), default="backprojection")
    rec.add_argument("--epochs", type=int, default=10, help="SGD epochs")
    rec.add_argument("--batch-size", type=int, default=256)
    rec.add_argument("--truth", type=Path, default=None, help="true map, for FSC vs truth")
    rec.add_argument("--stack", type=Path, default=None, help="override image stack")
    rec.add_argument("--poses", type=Path, default=None, help="cryoDRGN pose .pkl")
    rec.add_argument("--ctf", type=Path, default=None, help="cryoDRGN CTF .pkl")
    rec.add_argument("--datadir", type=Path, default=None, help="folder of the stacks")
    rec.add_argument("--pixel-size", type=float, default=None, help="Å per pixel, if unknown")
    rec.add_argument("--seed", type=int, default=0)
    rec.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")

    fsc_p = sub.add_parser("fsc", help="FSC between two maps")
    fsc_p.add_argument("map1", type=Path)
    fsc_p.add_argument("map2", type=Path)
    fsc_p.add_argument("--threshold", type=float, default=0.143)
    fsc_p.add_argument("--mask-radius", type=float, default=None,
                       help="soft spherical mask radius in pixels")
    fsc_p.add_argument("--mask", type=Path, default=None,
                       help="mask (MRC, the maps' box and voxel size, values in [0, 1])")
    fsc_p.add_argument("--no-correction", action="store_true",
                       help="with a mask: report the plain masked FSC instead of the one "
                       "corrected by phase randomisation (Chen et al. 2013, as RELION)")
    fsc_p.add_argument("--randomize-at-fsc", type=float, default=0.8,
                       help="with a mask: randomise phases from where the unmasked FSC drops "
                       "below this (default 0.8)")
    fsc_p.add_argument("--json", action="store_true", help="print the curve as JSON")

    demo = sub.add_parser("demo", help="simulate the demo dataset and reconstruct it")
    _add_simulate_args(demo, 10_000)
    demo.add_argument("--method", choices=("backprojection", "sgd"), default="backprojection")
    demo.add_argument("--epochs", type=int, default=10)

    from cryoviz.train.cli import add_parsers as add_train_parsers

    add_train_parsers(sub)
    from cryoviz.bench.cli import add_parser as add_bench_parser

    add_bench_parser(sub)

    ana = sub.add_parser("analyze", help="PCA, UMAP, k-means and traversals of a trained run")
    ana.add_argument("run", type=Path, help="training run folder")
    ana.add_argument("-o", "--output", type=Path, default=None, help="default RUN/analysis")
    ana.add_argument("--k", type=int, default=8, help="k-means clusters")
    ana.add_argument("--pcs", type=int, default=2, help="principal components to traverse")
    ana.add_argument("--n-points", type=int, default=10, help="maps per traversal")
    ana.add_argument("--skip-umap", action="store_true")
    ana.add_argument("--graph-path", type=int, nargs=2, metavar=("START", "END"),
                     help="particle indices: maps along the kNN-graph path between them")
    ana.add_argument("--seed", type=int, default=0)

    sel = sub.add_parser("select", help="export a particle subset as STAR, .cs, index pickle")
    sel.add_argument("run", type=Path, help="training run folder (analyzed for --clusters)")
    sel.add_argument("-o", "--output", required=True, type=Path, help="output prefix")
    group = sel.add_mutually_exclusive_group(required=True)
    group.add_argument("--clusters", help="comma-separated k-means cluster numbers")
    group.add_argument("--index", type=Path, help="particle indices: .pkl or text file")
    group.add_argument("--polygon", help="vertices 'x,y x,y ...' in the 2-D embedding")
    sel.add_argument("--embedding", choices=("umap", "pca"), default="umap")
    sel.add_argument("--particles", type=Path, default=None,
                     help="the training particles (default: the run's source file)")

    rep = sub.add_parser("report", help="standalone HTML report of a run (works offline)")
    rep.add_argument("run", type=Path, help="training run, reconstruction or pose-inference folder")
    rep.add_argument("-o", "--output", type=Path, default=None, help="default RUN/report.html")
    rep.add_argument("--max-size", type=int, default=32, help="grid side of the 3-D iso-surfaces")

    view = sub.add_parser("view", help="open napari with the cryoviz docks on a run")
    view.add_argument("run", type=Path, help="training run folder")
    return parser


def _simulation_config(args: argparse.Namespace):
    from cryoviz.simulate import SimulationConfig

    weights = None
    if args.weights:
        try:
            weights = tuple(float(w) for w in args.weights.split(","))
        except ValueError as err:
            raise InputError(None, "--weights", "comma-separated numbers", args.weights) from err
    return SimulationConfig(
        n_particles=args.n_particles, box_size=args.box, pixel_size_angstrom=args.pixel_size,
        snr=args.snr, states=tuple(s.strip() for s in args.states.split(",") if s.strip()),
        ensemble=args.ensemble, weights=weights, bfactor_a2=args.bfactor,
        pose_distribution=args.pose_distribution, shift_sigma_angstrom=args.shift_sigma,
        defocus_range_angstrom=(args.defocus_min, args.defocus_max), seed=args.seed,
    )


def _run_simulate(args: argparse.Namespace) -> Path:
    from cryoviz.simulate import iter_simulate

    config = _simulation_config(args)
    for p in iter_simulate(config, args.output):
        _progress("simulating", p.done, p.total)
    print(f"dataset: {args.output / 'particles.star'} ({config.n_particles} particles)")
    print(f"ground truth: {args.output / 'truth'}")
    return args.output


def _run_reconstruct(
    particles_path: Path, output: Path, method: str, epochs: int, batch_size: int,
    truth_path: Path | None, seed: int, device: str, **load_kwargs,
) -> dict:
    from cryoviz.io.mrc import read_volume
    from cryoviz.io.particles import load_particles
    from cryoviz.reconstruct import iter_reconstruct, write_reconstruction

    particles = load_particles(particles_path, require_poses=True, **load_kwargs)
    truth = None
    if truth_path is not None:
        volume, _ = read_volume(truth_path)
        if volume.shape != (particles.box_size,) * 3:
            raise InputError(truth_path, "box size", f"{particles.box_size}^3", volume.shape)
        truth = torch.as_tensor(volume)
    result = None
    for p in iter_reconstruct(particles, method=method, batch_size=batch_size,
                              epochs=epochs, seed=seed, device=device):
        if p.result is None:
            _progress(p.stage, p.done, p.total)
        result = p.result
    metrics = write_reconstruction(result, output, truth)
    print(f"map: {output / 'map.mrc'} (half maps: half_map_1.mrc, half_map_2.mrc)")
    gold = metrics["resolution_half_maps_0143_angstrom"]
    print(f"gold-standard resolution (FSC 0.143): {gold:.2f} Å")
    if truth is not None:
        print(f"resolution vs truth (FSC 0.5): {metrics['resolution_vs_truth_05_angstrom']:.2f} Å "
              f"({metrics['resolution_vs_truth_05_px']:.2f} px), "
              f"FSC-AUC {metrics['fsc_auc_vs_truth']:.3f}")
    print(f"metrics: {output / 'metrics.json'}  ({result.seconds:.1f} s)")
    return metrics


def _fsc_mask(args: argparse.Namespace, box: int, apix: float) -> torch.Tensor | None:
    """The mask of ``cryoviz fsc``: a file (checked against the maps) or a soft sphere."""
    from cryoviz.inference.focus_mask import read_focus_mask
    from cryoviz.metrics.fsc import soft_spherical_mask

    if args.mask is not None and args.mask_radius is not None:
        raise InputError(None, "--mask", "either --mask or --mask-radius", "both")
    if args.mask_radius is not None:
        return soft_spherical_mask(box, args.mask_radius, 3.0)
    return None if args.mask is None else read_focus_mask(args.mask, box, apix)


def _run_fsc(args: argparse.Namespace) -> None:
    from cryoviz.io.mrc import read_volume
    from cryoviz.metrics.fsc import fsc
    from cryoviz.metrics.fsc_correction import mask_corrected_fsc

    a, apix_a = read_volume(args.map1)
    b, apix_b = read_volume(args.map2)
    if a.shape != b.shape:
        raise InputError(args.map2, "box size", f"{a.shape} like {args.map1}", b.shape)
    apix = apix_a or apix_b or 1.0
    if apix_a and apix_b and abs(apix_a - apix_b) > 1e-3 * apix_a:
        raise InputError(args.map2, "voxel size", f"{apix_a} Å like {args.map1}", apix_b)
    if not 0.0 < args.randomize_at_fsc < 1.0:
        raise InputError(None, "--randomize-at-fsc", "a number between 0 and 1",
                         args.randomize_at_fsc)
    mask = _fsc_mask(args, a.shape[-1], apix)
    va, vb = torch.as_tensor(a), torch.as_tensor(b)
    columns: dict[str, torch.Tensor] = {}
    if mask is None or args.no_correction:
        curve = fsc(va, vb, mask=mask)
        columns["FSC" if mask is None else "masked"] = curve.fsc
        extra: dict = {}
    else:
        result = mask_corrected_fsc(va, vb, mask.to(va.dtype),
                                    randomize_at_fsc=args.randomize_at_fsc)
        curve = result.corrected
        columns = {"unmasked": result.unmasked.fsc, "masked": result.masked.fsc,
                   "rand-masked": result.randomized_masked.fsc, "corrected": curve.fsc}
        extra = {"fsc_unmasked": result.unmasked.fsc.tolist(),
                 "fsc_masked": result.masked.fsc.tolist(),
                 "fsc_randomized_masked": result.randomized_masked.fsc.tolist(),
                 "randomize_from_shell": result.randomize_from_shell}
    if args.json:
        print(json.dumps({**curve.to_dict(), **extra}, indent=2))
    else:
        print("shell  1/A      " + "".join(f"{name:>12s}" for name in columns))
        for s in range(curve.fsc.numel()):
            freq = float(curve.frequency_per_px[s]) / apix
            print(f"{s:5d}  {freq:8.4f}" + "".join(f"{float(c[s]):12.4f}"
                                                  for c in columns.values()))
        if extra:
            print(f"phases randomised from shell {extra['randomize_from_shell']} (unmasked FSC "
                  f"below {args.randomize_at_fsc})")
    res = curve.resolution_angstrom(apix, args.threshold)
    kind = "" if mask is None else (" (masked)" if args.no_correction else
                                    " (masked, corrected)")
    print(f"resolution at FSC {args.threshold}{kind}: {res:.2f} Å (voxel {apix} Å)")


def _run_analyze(args: argparse.Namespace) -> None:
    from cryoviz.analysis.run_analysis import AnalysisSettings, analyze_run

    settings = AnalysisSettings(
        n_clusters=args.k, n_pcs=args.pcs, n_points=args.n_points, umap=not args.skip_umap,
        graph_endpoints=None if args.graph_path is None else tuple(args.graph_path),
        seed=args.seed,
    )
    out = args.output if args.output is not None else args.run / "analysis"
    summary = analyze_run(args.run, settings, out)
    print(f"analysis: {out} (k-means counts {summary['kmeans']['counts']})")


def _parse_polygon(text: str) -> np.ndarray:
    try:
        vertices = [[float(v) for v in point.split(",")] for point in text.split()]
        polygon = np.asarray(vertices, dtype=np.float64)
    except ValueError as err:
        raise InputError(None, "--polygon", "vertices 'x,y x,y x,y ...'", text) from err
    if polygon.ndim != 2 or polygon.shape[1] != 2 or len(polygon) < 3:
        raise InputError(None, "--polygon", "at least 3 vertices 'x,y'", text)
    return polygon


def _run_select(args: argparse.Namespace) -> None:
    import tomllib

    from cryoviz.analysis.select import export_selection, select_particles
    from cryoviz.io.cryodrgn import read_index_pkl
    from cryoviz.io.particles import load_particles

    config_path = args.run / "config.toml"
    if not config_path.is_file():
        raise InputError(args.run, "config.toml", "a training run folder", "no config.toml")
    source = args.particles
    if source is None:
        with open(config_path, "rb") as fh:
            source = tomllib.load(fh)["data"].get("source")
        if source is None:
            raise InputError(config_path, "data.source", "the training particles' path "
                             "(or pass --particles)", "none")
    particles = load_particles(source)
    analysis = args.run / "analysis"
    if args.clusters is not None:
        labels_path = analysis / "kmeans.npz"
        if not labels_path.is_file():
            raise InputError(labels_path, "k-means labels", "run 'cryoviz analyze' first",
                             "no such file")
        clusters = [int(c) for c in args.clusters.split(",")]
        labels = np.load(labels_path)["labels"]
        indices = select_particles(particles, cluster_labels=labels, clusters=clusters)
    elif args.index is not None:
        if args.index.suffix == ".pkl":
            index = read_index_pkl(args.index)
        else:
            index = np.loadtxt(args.index, dtype=np.int64, ndmin=1)
        indices = select_particles(particles, index=index)
    else:
        if args.embedding == "umap":
            embedding_path = analysis / "umap.npy"
            if not embedding_path.is_file():
                raise InputError(embedding_path, "UMAP embedding", "run 'cryoviz analyze' first",
                                 "no such file")
            embedding = np.load(embedding_path)
        else:
            embedding = np.load(analysis / "pca.npz")["coords"][:, :2]
        indices = select_particles(particles, polygon=_parse_polygon(args.polygon),
                                   embedding=embedding)
    written = export_selection(particles, indices, args.output)
    print(f"selected {len(indices)} of {len(particles)} particles")
    for fmt, path in written.items():
        print(f"{fmt}: {path}")


PLUGIN_INSTALL_HINT = ("pip install 'napari[pyqt6]' && "
                       "pip install -e plugins/napari-cryoviz (from the cryoviz repository)")


def _run_view(args: argparse.Namespace) -> None:
    """Open napari on a run through the plugin's launcher (the engine never imports napari)."""
    import importlib

    if not (args.run / "config.toml").is_file():
        raise InputError(args.run, "config.toml", "a training run folder", got="no config.toml")
    try:
        launcher = importlib.import_module("napari_cryoviz.launcher")
    except ImportError as err:
        raise InputError(None, "napari plugin",
                         f"napari-cryoviz installed: {PLUGIN_INSTALL_HINT}",
                         got=f"it cannot be imported ({err})") from err
    launcher.launch(args.run)


def _run_report(args: argparse.Namespace) -> None:
    import importlib.util

    from cryoviz.viz.report import write_report

    if importlib.util.find_spec("plotly") is None:
        raise InputError(None, "plotly", "installed: pip install 'cryoviz[notebook]'",
                         got="not installed")
    out = write_report(args.run, args.output if args.output is not None
                       else args.run / "report.html", max_size=args.max_size)
    print(f"report: {out}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cryoviz`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "simulate":
            _run_simulate(args)
        elif args.command == "reconstruct":
            _run_reconstruct(
                args.particles, args.output, args.method, args.epochs, args.batch_size,
                args.truth, args.seed, args.device, stack=args.stack, poses=args.poses,
                ctf=args.ctf, datadir=args.datadir, pixel_size_angstrom=args.pixel_size,
            )
        elif args.command == "fsc":
            _run_fsc(args)
        elif args.command == "bench":
            from cryoviz.bench.cli import run as run_bench_command

            return run_bench_command(args)
        elif args.command in ("train", "eval-vol"):
            from cryoviz.train.cli import run as run_train_command

            return run_train_command(args)
        elif args.command == "analyze":
            _run_analyze(args)
        elif args.command == "select":
            _run_select(args)
        elif args.command == "report":
            _run_report(args)
        elif args.command == "view":
            _run_view(args)
        elif args.command == "demo":
            data = _run_simulate(args)
            _run_reconstruct(
                data / "particles.star", data / "reconstruction", args.method, args.epochs,
                256, data / "truth" / "state_0.mrc", args.seed,
                "cuda" if torch.cuda.is_available() else "cpu",
            )
    except (InputError, FileNotFoundError) as err:
        print(f"cryoviz {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
