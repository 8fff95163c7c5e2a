"""Command line: ``cryoviz simulate | reconstruct | fsc | demo``.

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
    parser = argparse.ArgumentParser(prog="cryoviz", description=__doc__.splitlines()[0])
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
    fsc_p.add_argument("--json", action="store_true", help="print the curve as JSON")

    demo = sub.add_parser("demo", help="simulate the demo dataset and reconstruct it")
    _add_simulate_args(demo, 10_000)
    demo.add_argument("--method", choices=("backprojection", "sgd"), default="backprojection")
    demo.add_argument("--epochs", type=int, default=10)
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


def _run_fsc(args: argparse.Namespace) -> None:
    from cryoviz.io.mrc import read_volume
    from cryoviz.metrics.fsc import fsc, soft_spherical_mask

    a, apix_a = read_volume(args.map1)
    b, apix_b = read_volume(args.map2)
    if a.shape != b.shape:
        raise InputError(args.map2, "box size", f"{a.shape} like {args.map1}", b.shape)
    apix = apix_a or apix_b or 1.0
    if apix_a and apix_b and abs(apix_a - apix_b) > 1e-3 * apix_a:
        raise InputError(args.map2, "voxel size", f"{apix_a} Å like {args.map1}", apix_b)
    mask = None
    if args.mask_radius is not None:
        mask = soft_spherical_mask(a.shape[-1], args.mask_radius, 3.0)
    curve = fsc(torch.as_tensor(a), torch.as_tensor(b), mask=mask)
    if args.json:
        print(json.dumps(curve.to_dict(), indent=2))
    else:
        print("shell  1/A        FSC")
        for s, (f, v) in enumerate(zip(curve.frequency_per_px.tolist(), curve.fsc.tolist(),
                                      strict=True)):
            print(f"{s:5d}  {f / apix:8.4f}  {v:8.4f}")
    res = curve.resolution_angstrom(apix, args.threshold)
    print(f"resolution at FSC {args.threshold}: {res:.2f} Å (voxel {apix} Å)")


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
