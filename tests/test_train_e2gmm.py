"""The science test: the ``e2gmm`` recipe separates open / closed adenylate kinase.

A 50/50 mixture of 4AKE (open) and 1AKE (closed) particles with known poses is
simulated; the ``e2gmm`` recipe (Gaussian mixture initialised from 4AKE, one
Gaussian per residue, VAE image encoder, FRC loss) is trained on it. 2-means on
the latent means must recover the true states, and the mixtures decoded at the
two cluster centres must each correlate better with their own true state than
with the other.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from cryoviz.io.mrc import read_volume
from cryoviz.io.particles import load_particles
from cryoviz.metrics.fsc import fsc
from cryoviz.simulate import SimulationConfig, simulate
from cryoviz.train.evaluate import eval_volumes, load_run
from cryoviz.train.loop import iter_train
from cryoviz.train.recipes import get_recipe
from cryoviz.volumes import resample_volume
from tests.test_train_cryodrgn import _two_means


def _run_e2gmm(tmp_path, *, n, box, apix, snr, train_box, epochs, overrides, min_accuracy,
               fsc_band):
    data = tmp_path / "data"
    simulate(SimulationConfig(n_particles=n, box_size=box, pixel_size_angstrom=apix, snr=snr,
                              states=("4ake", "1ake"), seed=0), data)
    truth_labels = np.load(data / "truth" / "truth.npz")["labels"]
    ps = load_particles(data / "particles.star")
    recipe = get_recipe("e2gmm", epochs=epochs, box=train_box, **overrides)
    times = []
    for p in iter_train(ps, recipe, tmp_path / "run"):
        times.append(p.seconds)
        print(f"epoch {p.epoch}: loss {p.loss:.4f} kl {p.kl:.3f} {p.seconds:.1f} s")
    run = load_run(tmp_path / "run")
    labels, centres = _two_means(run.mu.astype(np.float64))
    accuracy = max(np.mean(labels == truth_labels), np.mean(labels != truth_labels))
    cluster_of_state = [int(np.round(np.mean(labels[truth_labels == s]))) for s in (0, 1)]
    report = {"accuracy": float(accuracy), "seconds_per_epoch": float(np.mean(times)),
              "epochs": epochs}
    assert cluster_of_state[0] != cluster_of_state[1], report
    maps = eval_volumes(run, centres[cluster_of_state])
    d = run.box_size
    truths = [resample_volume(torch.from_numpy(read_volume(data / "truth" / f"state_{s}.mrc")[0])
                              .double(), d).float() for s in (0, 1)]
    lo, hi = fsc_band
    for s in (0, 1):
        own = fsc(maps[s], truths[s])
        other = fsc(maps[s], truths[1 - s])
        band = (own.frequency_per_px >= lo) & (own.frequency_per_px <= hi)
        report[f"state{s}_own"] = float(own.fsc[band].mean())
        report[f"state{s}_other"] = float(other.fsc[band].mean())
        report[f"state{s}_res05_px"] = own.resolution_px(0.5)
    print(report)
    assert accuracy >= min_accuracy, report
    for s in (0, 1):
        assert report[f"state{s}_own"] > report[f"state{s}_other"], report
    return report


def test_e2gmm_separates_open_and_closed(tmp_path):
    """Box 24 at 5 Å/px, 1500 particles, SNR 1, reference-based from 4AKE, 4 epochs."""
    t0 = time.perf_counter()
    _run_e2gmm(
        tmp_path, n=1500, box=24, apix=5.0, snr=1.0, train_box=None, epochs=4,
        overrides=dict(reference="4ake"), min_accuracy=0.90, fsc_band=(0.1, 0.35),
    )
    print(f"total {time.perf_counter() - t0:.1f} s")


@pytest.mark.slow
def test_e2gmm_separates_states_larger(tmp_path):
    """Box 32 at 4 Å/px, 4000 particles, SNR 0.5, full box, 8 epochs (minutes on CPU)."""
    _run_e2gmm(
        tmp_path, n=4000, box=32, apix=4.0, snr=0.5, train_box=None, epochs=8,
        overrides=dict(reference="4ake"), min_accuracy=0.95, fsc_band=(0.1, 0.35),
    )


@pytest.mark.parametrize("loss", ["frc", "gaussian"])
def test_e2gmm_reference_free_runs(tmp_path, loss):
    """Reference-free (random ball) e2gmm, both losses: finite losses, latents written."""
    data = tmp_path / "data"
    simulate(SimulationConfig(n_particles=96, box_size=16, pixel_size_angstrom=6.0, snr=1.0,
                              states=("4ake", "1ake"), seed=1), data)
    ps = load_particles(data / "particles.star")
    recipe = get_recipe("e2gmm", epochs=2, gaussians=64, loss=loss, batch_size=32,
                        frc_max_resolution_angstrom=15.0)
    progress = list(iter_train(ps, recipe, tmp_path / "run"))
    assert all(np.isfinite(p.loss) for p in progress)
    run = load_run(tmp_path / "run")
    assert run.mu.shape == (96, recipe.zdim)
    assert run.volume.n_gaussians == 64
    assert float(run.volume.amplitude_scale) > 0
    vol = eval_volumes(run, run.mu[:1])
    assert vol.shape == (1, 16, 16, 16) and torch.isfinite(vol).all()
