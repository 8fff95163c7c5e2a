"""The science test: the ``e2gmm`` recipe separates open / closed adenylate kinase.

A 50/50 mixture of 4AKE (open) and 1AKE (closed) particles with known poses is
simulated; the ``e2gmm`` recipe (Gaussian mixture initialised from 4AKE, one
Gaussian per residue, VAE encoder of the fit gradients, its default, or of the
images, FRC loss) is trained on it. 2-means on
the latent means must recover the true states, and the mixtures decoded at the
two cluster centres must each correlate better with their own true state than
with the other.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch

from cryoviz.io.particles import load_particles
from cryoviz.simulate import SimulationConfig, simulate
from cryoviz.train.evaluate import eval_volumes, load_run, saved_recipe
from cryoviz.train.loop import iter_train
from cryoviz.train.recipes import get_recipe
from cryoviz.train.run_files import write_toml
from tests._science import run_mixture_science, run_path_science


@pytest.mark.parametrize("encoder_input", [None, "real"])
def test_e2gmm_separates_open_and_closed(tmp_path, encoder_input):
    """Box 24 at 5 Å/px, 1500 particles, SNR 1, reference-based from 4AKE, 4 epochs;
    the default input (fit gradients) and the image MLP."""
    t0 = time.perf_counter()
    run_mixture_science(
        tmp_path, "e2gmm", n=1500, box=24, apix=5.0, snr=1.0, train_box=None, epochs=4,
        overrides=dict(reference="4ake", encoder_input=encoder_input), min_accuracy=0.90,
        fsc_band=(0.1, 0.35),
    )
    print(f"total {time.perf_counter() - t0:.1f} s")


#: The engine issue's dataset: adenylate kinase, box 64, 2 Å/px, CTF, SNR 0.1.
ISSUE_SCALE = {"n": 4000, "box": 64, "apix": 2.0, "snr": 0.1}


@pytest.mark.slow
def test_e2gmm_meets_the_issue_targets_on_the_mixture(tmp_path):
    """50/50 open / closed, poses known, 4,000 particles, 20 epochs, reference-free.

    Targets: 2-means of z agrees with the true state for >= 95 % of particles;
    the mixture decoded at each cluster centre reaches FSC 0.5 against its true
    state at 3 px or better. The recipe's default count, ``box**3 // 128`` (2,048
    here); ``bench_heterogeneity_targets.py`` (same data) measured 2026-12-06
    agreement 0.9998, FSC 0.5 at 2.00 / 2.00 px; with 512 Gaussians (2026-12-05)
    agreement 0.999, FSC 0.5 at 2.16 / 2.14 px; with the default of the time, 256,
    0.998 and 3.27 / 3.23 px. This test with the KL default of 2026-12-07 (beta 4
    after a 4-epoch warm-up): agreement 0.9985, FSC 0.5 at 2.0 / 2.0 px; with the
    fit-gradient encoder input, the default since later that day: 0.99975,
    2.0 / 2.0 px (19 s per epoch on the 2-core CPU); with that input scaled to an
    L2 norm of 8 (``fit_gradient_norm``, also that day): 1.0, 2.0 / 2.0 px; the same
    with the Gaussian projection's backward pass written out (12.0 s per epoch).
    """
    report = run_mixture_science(tmp_path, "e2gmm", train_box=None, epochs=20,
                                 overrides={}, min_accuracy=0.95,
                                 fsc_band=(0.1, 0.3), **ISSUE_SCALE)
    for s in (0, 1):
        assert report[f"state{s}_res05_px"] <= 3.0, report


@pytest.mark.slow
def test_e2gmm_first_component_follows_the_issue_scale_path(tmp_path):
    """Continuous open -> closed path, 4,000 particles, 20 epochs, default recipe.

    Target ``|rho(PC 1, path coordinate)| >= 0.9``; measured 2026-12-05 with the
    default of the time (256 Gaussians): 0.952; 2026-12-06 with 2,048 (``box**3 // 128``):
    0.974; 2026-12-07 with the KL default of that day (beta 4 after a 4-epoch warm-up):
    0.988, and with the fit-gradient encoder input, the default since later that
    day: 0.930; with that input scaled to an L2 norm of 8 (the default since later
    still): 0.991, and 0.991 again with the projection's backward pass written out.
    """
    rho = run_path_science(tmp_path, "e2gmm", epochs=20, overrides={}, **ISSUE_SCALE)
    assert rho >= 0.9, rho


def test_e2gmm_kl_default_and_runs_made_before_it(tmp_path):
    """Since 2026-12-07 e2gmm weighs the KL with beta 4 after a 4-epoch warm-up; a run
    whose config.toml predates the change (no beta, no kl_warmup_epochs) keeps
    1 / zdim from the first step when it is resumed or loaded."""
    recipe = get_recipe("e2gmm")
    assert (recipe.kl_weight, recipe.kl_warmup_epochs) == (4.0, 4.0)
    assert recipe.kl_weight_at(0, 100) == 0.0 and recipe.kl_weight_at(200, 100) == 2.0
    old = {k: v for k, v in dataclasses.asdict(recipe).items()
           if k not in ("beta", "kl_warmup_epochs")}
    write_toml(tmp_path / "config.toml", {"recipe": old})
    loaded = saved_recipe(tmp_path)
    assert loaded.kl_weight == pytest.approx(1.0 / loaded.zdim) == 0.25
    assert loaded.kl_weight_at(0, 100) == 0.25
    resumed = get_recipe("e2gmm", base=loaded, epochs=30)  # what --resume builds
    assert (resumed.kl_weight, resumed.kl_warmup_epochs) == (0.25, 0.0)


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
