"""Tests for the cryovaegan recipe: networks, search, training, resume, STAR export, CLI."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch

from cryoviz.errors import InputError
from cryoviz.geometry.rotations import rotation_about_axis
from cryoviz.inference.vaegan import (
    CryoVAEGANSettings,
    InplaneSimulationConfig,
    align_inplane_angles,
    ctf_corrected_average,
    iter_cryovaegan,
    load_estimates,
    search_angle_defocus,
    simulate_inplane,
    train_cryovaegan,
)
from cryoviz.inference.vaegan.model import Microscope, rotate_images
from cryoviz.inference.vaegan.score import score_inplane_run
from cryoviz.io.mrc import open_stack
from cryoviz.io.particles import load_particles
from cryoviz.metrics.fsc import frc
from cryoviz.train.cli import add_parsers, run

TINY = dict(batch_size=64, channels=8, width=32, latent_dim=1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("inplane")
    return simulate_inplane(InplaneSimulationConfig(n_particles=240, box_size=32,
                                                    pixel_size_angstrom=4.0, seed=3), out)


def _truth(dataset):
    with np.load(dataset / "truth" / "truth.npz") as t:
        return {k: t[k] for k in t.files}


def _images(dataset):
    with open_stack(dataset / "particles.mrcs") as s:
        return torch.as_tensor(s.read(np.arange(s.n_images)))


def _projection(dataset):
    with open_stack(dataset / "truth" / "projection.mrc") as s:
        return torch.as_tensor(s.read(np.arange(1)))[0]


def test_rotate_images_turns_content_counter_clockwise():
    image = torch.zeros(1, 16, 16)
    image[0, 8, 8 + 3] = 1.0  # (x, y) = (3, 0) from the centre
    turned = rotate_images(image, torch.tensor([[0.0, 1.0]]), mode="bilinear")  # +90 degrees
    assert torch.nonzero(turned[0] > 0.5).tolist() == [[8 + 3, 8]]  # now at (0, 3)


def test_frc_of_identical_and_independent_images():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 32, 32, generator=gen, dtype=torch.float64)
    assert frc(a, a).fsc.numpy() == pytest.approx(np.ones(17))
    assert frc(a, a).auc() == pytest.approx(0.5)
    assert frc(a, b).auc() < 0.15
    with pytest.raises(ValueError, match="same shape"):
        frc(a, a[:16, :16])


def test_align_inplane_angles_removes_offset_and_mirror():
    gen = np.random.default_rng(0)
    true = gen.uniform(0, 360, 500)
    noisy = true + gen.normal(0, 2.0, 500)
    for est, mirrored in (((noisy - 40.0) % 360, False), ((70.0 - noisy) % 360, True)):
        align = align_inplane_angles(est, true)
        assert align.mirrored is mirrored
        assert 1.0 < align.median_deg < 2.0  # median |N(0, 2)| = 1.35
        assert np.abs((align.apply(est) - true + 180) % 360 - 180).max() < 10.0
    assert align_inplane_angles(gen.uniform(0, 360, 500), true).median_deg > 60.0


def test_search_and_average_with_the_true_canonical_image(dataset):
    truth, images, projection = _truth(dataset), _images(dataset), _projection(dataset)
    sigma = float(truth["noise_sigma"])
    noise_var = torch.full((17,), 32**2 * sigma**2)
    grid = torch.arange(5000.0, 30001.0, 250.0)
    r = search_angle_defocus(images, projection, noise_var, Microscope(), 4.0, grid)
    angle_err = np.abs((r.angle_deg - truth["psi_deg"] + 180) % 360 - 180)
    mean_defocus = 0.5 * (truth["ctf_defocus_u_angstrom"] + truth["ctf_defocus_v_angstrom"])
    defocus_err = np.abs(r.defocus_angstrom - mean_defocus)
    assert np.median(angle_err) < 2.0
    assert np.median(defocus_err) < 600.0
    # the reported spreads are of the size of the errors
    assert 0.2 < np.median(r.defocus_std_angstrom) / np.median(defocus_err) < 5.0
    good = ctf_corrected_average(images, torch.as_tensor(truth["psi_deg"]),
                                 torch.as_tensor(truth["ctf_defocus_u_angstrom"]),
                                 torch.as_tensor(truth["ctf_defocus_v_angstrom"]),
                                 torch.as_tensor(truth["ctf_astigmatism_angle_deg"]),
                                 Microscope(), 4.0, wiener_constant=0.1)
    shuffled = ctf_corrected_average(images, torch.as_tensor(truth["psi_deg"][::-1].copy()),
                                     torch.as_tensor(truth["ctf_defocus_u_angstrom"]),
                                     torch.as_tensor(truth["ctf_defocus_v_angstrom"]),
                                     torch.as_tensor(truth["ctf_astigmatism_angle_deg"]),
                                     Microscope(), 4.0, wiener_constant=0.1)
    assert frc(good, projection).auc() > 0.3
    assert frc(shuffled, projection).auc() < 0.6 * frc(good, projection).auc()


def test_training_estimates_angles_and_defocus(dataset, tmp_path):
    ps = load_particles(dataset / "particles.star")
    assert ps.ctf is None and ps.rotations is None  # nothing to copy from
    settings = CryoVAEGANSettings(epochs=2, refine_rounds=8, **TINY)
    progress = list(iter_cryovaegan(ps, settings, tmp_path / "run"))
    assert [p.epoch for p in progress] == [1, 2] and progress[-1].done
    assert all(math.isfinite(p.loss) for p in progress)
    assert len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == 2
    scores = score_inplane_run(tmp_path / "run", dataset)
    final = scores["final"]
    # chance: ~90 degrees and ~6000 A
    assert final["angle_median_error_deg"] < 5.0
    assert final["defocus_median_error_angstrom"] < 1500.0
    avg = scores["average"]
    assert avg["frc_auc_estimated"] > 0.7 * avg["frc_auc_true_parameters"]

    est = load_estimates(tmp_path / "run")
    assert est["angle_std_deg"].shape == (240,) and (est["defocus_std_angstrom"] > 0).all()
    # STAR export: in-plane rotation Rz(angle), the estimated CTF and the spreads
    exported = load_particles(tmp_path / "run" / "particles.star")
    expected = rotation_about_axis("z", torch.as_tensor(est["angle_deg"])).numpy()
    assert np.abs(exported.rotations - expected).max() < 1e-4
    ctf = exported.ctf.as_numpy()
    assert ctf["defocus_u_angstrom"] == pytest.approx(est["defocus_u_angstrom"], abs=0.01)
    assert ctf["voltage_kv"] == pytest.approx(np.full(240, 300.0))
    assert exported.extra["cryovizDefocusStdAngstrom"].to_numpy() == pytest.approx(
        est["defocus_std_angstrom"], rel=1e-4)


@pytest.mark.slow
def test_encoder_alone_learns_angles_and_defocus(tmp_path):
    """The amortised estimates, before refinement (about 90 s on one core)."""
    data = simulate_inplane(InplaneSimulationConfig(n_particles=1000, box_size=32,
                                                    pixel_size_angstrom=4.0, seed=5),
                            tmp_path / "data")
    ps = load_particles(data / "particles.star")
    settings = CryoVAEGANSettings(epochs=10, refine_rounds=1, batch_size=64, channels=8,
                                  width=64, latent_dim=1)
    train_cryovaegan(ps, settings, tmp_path / "run")
    encoder = score_inplane_run(tmp_path / "run", data)["encoder"]
    # measured: 3.9 degrees and 1450 A; chance: ~90 degrees and ~6000 A
    assert encoder["angle_median_error_deg"] < 15.0
    assert encoder["defocus_median_error_angstrom"] < 3000.0
    assert encoder["defocus_error_within_2std"] > 0.8


def test_resume_gives_the_same_result(dataset, tmp_path):
    ps = load_particles(dataset / "particles.star").subset(np.arange(128))
    settings = CryoVAEGANSettings(epochs=2, refine_rounds=1, **TINY)
    train_cryovaegan(ps, settings, tmp_path / "full")
    gen = iter_cryovaegan(ps, settings, tmp_path / "broken")
    first = next(gen)
    gen.close()  # killed after epoch 1
    assert first.checkpoint.is_file() and not (tmp_path / "broken" / "estimates.npz").exists()
    resumed = list(iter_cryovaegan(ps, settings, tmp_path / "broken", resume=True))
    assert [p.epoch for p in resumed] == [2]
    a = torch.load(tmp_path / "full" / "checkpoints" / "epoch_0002.pt", weights_only=True)
    b = torch.load(tmp_path / "broken" / "checkpoints" / "epoch_0002.pt", weights_only=True)
    for key, value in a["models"].items():
        assert torch.equal(value, b["models"][key]), key
    ea, eb = load_estimates(tmp_path / "full"), load_estimates(tmp_path / "broken")
    for key in ("angle_deg", "defocus_angstrom", "encoder_defocus_angstrom"):
        np.testing.assert_array_equal(ea[key], eb[key])
    lines = (tmp_path / "broken" / "log.jsonl").read_text().splitlines()
    log = [json.loads(line) for line in lines]
    assert [e["epoch"] for e in log] == [1, 2]


def test_cli_route_and_bad_settings(dataset, tmp_path):
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers())
    args = parser.parse_args(["train", str(dataset / "particles.star"), "--recipe",
                              "cryovaegan", "-o", str(tmp_path / "cli"), "--epochs", "1",
                              "--batch-size", "120", "--width", "32", "--zdim", "0"])
    assert run(args) == 0
    assert (tmp_path / "cli" / "estimates.npz").is_file()
    assert (tmp_path / "cli" / "canonical.mrc").is_file()
    assert 'name = "cryovaegan"' in (tmp_path / "cli" / "config.toml").read_text()
    with pytest.raises(InputError, match="defocus_range_angstrom"):
        CryoVAEGANSettings(defocus_range_angstrom=(2e4, 1e4)).validate()
    ps = load_particles(dataset / "particles.star")
    with pytest.raises(InputError, match="box"):
        next(iter_cryovaegan(ps, CryoVAEGANSettings(box=12), tmp_path / "bad"))
