"""The ``3dflex`` recipe end to end: a continuous adenylate-kinase open -> closed path.

Particles are simulated along the linear atom path from 4AKE (open, path
coordinate 0) to 1AKE (closed, 1) with CTF, shifts and SNR 1, known poses.
``3dflex`` (canonical voxel map from the consensus backprojection, MLP
deformation field of a 2-D auto-decoder latent with fixed noise, smoothness and
rigidity regularisers) is trained on them. The first principal component of the
learned latents must follow the path coordinate (|Spearman rho| >= 0.9, while
the untrained latent table gives about 0), and maps decoded at the two ends of
that component must be closer to the true end states than the canonical map is.
"""

from __future__ import annotations

import argparse
import pickle
import time

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from cryoviz.io.mrc import read_volume
from cryoviz.io.particles import load_particles
from cryoviz.metrics.fsc import fsc
from cryoviz.simulate import SimulationConfig, simulate
from cryoviz.train.cli import add_parsers, run
from cryoviz.train.encoders import LatentTable
from cryoviz.train.evaluate import eval_volumes, load_run
from cryoviz.train.loop import iter_train
from cryoviz.train.recipes import get_recipe


def _first_pc(z: np.ndarray) -> np.ndarray:
    centred = z - z.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[0]


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def _adk_path(tmp_path, n: int, box: int, apix: float, seed: int = 0):
    data = tmp_path / "data"
    simulate(SimulationConfig(n_particles=n, box_size=box, pixel_size_angstrom=apix, snr=1.0,
                              states=("4ake", "1ake"), ensemble="continuous", seed=seed,
                              n_path_levels=20), data)
    return data, load_particles(data / "particles.star"), np.load(data / "truth" / "truth.npz")


def _run_3dflex(tmp_path, *, n, epochs, min_rho, box=24, apix=5.0):
    data, particles, truth = _adk_path(tmp_path, n, box, apix)
    recipe = get_recipe("3dflex", epochs=epochs)
    times = []
    for p in iter_train(particles, recipe, tmp_path / "run"):
        times.append(p.seconds)
        print(f"epoch {p.epoch}: loss {p.loss:.4f} {p.seconds:.1f} s")
    run_ = load_run(tmp_path / "run")
    coordinate = truth["path_coordinate"]
    pc = _first_pc(run_.mu.astype(np.float64))
    rho = float(spearmanr(pc, coordinate).statistic)
    untrained = LatentTable(n, recipe.zdim, seed=recipe.seed).table.detach().numpy()
    rho0 = float(spearmanr(_first_pc(untrained.astype(np.float64)), coordinate).statistic)
    # maps at the two ends of the first component (mean latent of the 10 % at each end)
    order = np.argsort(pc)
    ends = [order[: n // 10], order[-(n // 10):]]
    if coordinate[ends[0]].mean() > coordinate[ends[1]].mean():
        ends = ends[::-1]  # ends[0]: the open end (path coordinate near 0)
    maps = eval_volumes(run_, np.stack([run_.mu[e].mean(axis=0) for e in ends]))
    canonical = run_.volume.volume(None).detach().float()
    last = len(list((data / "truth").glob("path_*.mrc"))) - 1
    truths = [torch.from_numpy(read_volume(data / "truth" / f"path_{k:02d}.mrc")[0]).float()
              for k in (0, last)]
    report = {"rho": rho, "rho_untrained": rho0, "epochs": epochs, "n": n,
              "seconds_per_epoch": float(np.mean(times))}
    for name, m, t in (("open", maps[0], truths[0]), ("closed", maps[1], truths[1])):
        report[f"{name}_corr"] = _correlation(m, t)
        report[f"{name}_corr_canonical"] = _correlation(canonical, t)
        band = lambda c: c.fsc[(c.frequency_per_px >= 0.1) & (c.frequency_per_px <= 0.35)]  # noqa: E731
        report[f"{name}_fsc"] = float(band(fsc(m, t)).mean())
        report[f"{name}_fsc_canonical"] = float(band(fsc(canonical, t)).mean())
    print(report)
    assert abs(rho0) < 0.2, report  # the measure is not satisfied by chance
    assert abs(rho) >= min_rho, report
    for name in ("open", "closed"):
        assert report[f"{name}_corr"] > report[f"{name}_corr_canonical"], report
    assert (tmp_path / "run" / "volumes" / "canonical.mrc").is_file()
    return report


def test_3dflex_recovers_adk_path(tmp_path):
    """Box 24 at 5 Å/px, 1000 particles, SNR 1, 10 epochs."""
    t0 = time.perf_counter()
    _run_3dflex(tmp_path, n=1000, epochs=10, min_rho=0.9)
    print(f"total {time.perf_counter() - t0:.1f} s")


@pytest.mark.slow
def test_3dflex_recovers_adk_path_larger(tmp_path):
    """2000 particles, 16 epochs (minutes on a shared CPU)."""
    _run_3dflex(tmp_path, n=2000, epochs=16, min_rho=0.9)


def _parser():
    parser = argparse.ArgumentParser(prog="cryoviz")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_train_3dflex_writes_outputs_and_resumes(tmp_path, capsys):
    """``cryoviz train --recipe 3dflex``: latents, z.pkl, canonical map; eval-vol; resume."""
    data, particles, _ = _adk_path(tmp_path, 96, 16, 7.5, seed=2)
    parser = _parser()
    star = str(data / "particles.star")
    common = ["--recipe", "3dflex", "--batch-size", "32", "--width", "16", "--depth", "1"]
    assert run(parser.parse_args(["train", star, *common, "-o", str(tmp_path / "run"),
                                  "--epochs", "2"])) == 0
    assert "epoch 2/2" in capsys.readouterr().err
    out = tmp_path / "run"
    with np.load(out / "latents.npz") as npz:
        mu = npz["mu"]
    assert mu.shape == (96, 2) and np.isfinite(mu).all()
    with open(out / "z.pkl", "rb") as fh:
        np.testing.assert_array_equal(pickle.load(fh), mu)
    canonical, apix = read_volume(out / "volumes" / "canonical.mrc")
    assert canonical.shape == (16, 16, 16) and apix == pytest.approx(7.5)
    assert float(np.abs(canonical).max()) > 0  # the consensus start, then trained
    assert run(parser.parse_args(["eval-vol", str(out), "--z", "0.3,-0.2", "-o",
                                  str(tmp_path / "maps")])) == 0
    vol, _ = read_volume(tmp_path / "maps" / "vol_000.mrc")
    assert vol.shape == (16, 16, 16) and np.isfinite(vol).all()
    # a run stopped after epoch 1 and resumed ends with the same weights
    assert run(parser.parse_args(["train", star, *common, "-o", str(tmp_path / "r2"),
                                  "--epochs", "1"])) == 0
    assert run(parser.parse_args(["train", star, *common, "-o", str(tmp_path / "r2"),
                                  "--epochs", "2", "--resume"])) == 0
    a, b = load_run(out), load_run(tmp_path / "r2")
    for key, value in a.volume.state_dict().items():
        torch.testing.assert_close(b.volume.state_dict()[key], value, rtol=0, atol=0)
    np.testing.assert_array_equal(a.mu, b.mu)
