"""Tests for cryoviz.train: recipes, the loop (checkpoints, resume), outputs, evaluation, CLI."""

from __future__ import annotations

import argparse
import json
import tomllib

import numpy as np
import pytest
import torch

from cryoviz.errors import InputError, TrainingDiverged
from cryoviz.io.cryodrgn import read_pickle
from cryoviz.io.mrc import read_volume
from cryoviz.io.particles import load_particles
from cryoviz.metrics.fsc import fsc
from cryoviz.simulate import SimulationConfig, simulate
from cryoviz.train.cli import add_parsers, run
from cryoviz.train.evaluate import eval_volumes, load_run, saved_recipe
from cryoviz.train.loop import iter_train, train
from cryoviz.train.recipes import RECIPES, get_recipe

TINY = dict(width=16, depth=1, pe_dim=8, enc_width=32, enc_depth=1, batch_size=64, zdim=2,
            lr=1e-3)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    simulate(SimulationConfig(n_particles=200, box_size=16, pixel_size_angstrom=6.0, snr=1.0,
                              states=("4ake", "1ake"), seed=1), out)
    return out


def test_get_recipe():
    r = get_recipe("cryodrgn")
    assert r.volume == "implicit" and r.domain == "fourier" and r.encoder == "vae"
    assert r.lr == 1e-4 and r.kl_weight == pytest.approx(1.0 / r.zdim)
    r = get_recipe("cryodrgn", zdim=4, epochs=2, box=None)
    assert r.zdim == 4 and r.epochs == 2 and r.kl_weight == 0.25
    assert get_recipe("cryodrgn-ae").kl_weight == 0.0
    assert get_recipe("autodecoder").encoder == "table"
    assert get_recipe("voxel-homogeneous").latent_dim == 0
    assert set(RECIPES) >= {"cryodrgn", "cryodrgn-ae", "autodecoder", "voxel-homogeneous"}
    with pytest.raises(InputError, match="recipe: expected one of cryodrgn"):
        get_recipe("cryosparc")
    with pytest.raises(InputError, match="recipe setting"):
        get_recipe("cryodrgn", colour=3)
    with pytest.raises(InputError, match="zdim"):
        get_recipe("cryodrgn", zdim=0)


def test_get_recipe_on_a_base_keeps_the_settings_not_given():
    base = get_recipe("cryodrgn", domain="hartley", width=64, zdim=3)
    r = get_recipe("cryodrgn", base=base, epochs=7, width=None)
    assert (r.domain, r.width, r.zdim, r.epochs) == ("hartley", 64, 3, 7)
    assert get_recipe("cryodrgn", base=None, width=None).domain == "fourier"
    with pytest.raises(InputError, match="zdim"):
        get_recipe("cryodrgn", base=base, zdim=0)


def _weights(run_dir):
    run = load_run(run_dir)
    state = dict(run.volume.state_dict())
    state.update({f"enc.{k}": v for k, v in run.encoder.state_dict().items()})
    return run, state


@pytest.mark.parametrize(("recipe_name", "extra"), [
    ("cryodrgn", {}), ("autodecoder", {}),
    ("cryodrgn", {"kl_warmup_epochs": 2.5}),  # resumed in the middle of the KL ramp
    ("cryodrgn", {"pixel_fraction": 0.5}),  # the draws of the coefficients resume too
])
def test_resume_gives_the_same_weights(tiny_dataset, tmp_path, recipe_name, extra):
    ps = load_particles(tiny_dataset / "particles.star")
    recipe = get_recipe(recipe_name, epochs=3, **TINY, **extra)
    full = train(ps, recipe, tmp_path / "full")
    assert full.epoch == 3 and full.done

    gen = iter_train(ps, recipe, tmp_path / "broken")
    first = next(gen)
    assert first.epoch == 1 and first.checkpoint.is_file()
    gen.close()  # killed after epoch 1
    assert not (tmp_path / "broken" / "latents.npz").exists()
    resumed = list(iter_train(ps, recipe, tmp_path / "broken", resume=True))
    assert [p.epoch for p in resumed] == [2, 3]

    run_a, wa = _weights(tmp_path / "full")
    run_b, wb = _weights(tmp_path / "broken")
    assert run_a.epoch == run_b.epoch == 3
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    np.testing.assert_array_equal(run_a.mu, run_b.mu)
    log = [json.loads(line) for line in
           (tmp_path / "broken" / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2, 3]


def test_outputs_and_evaluation(tiny_dataset, tmp_path):
    ps = load_particles(tiny_dataset / "particles.star")
    recipe = get_recipe("cryodrgn", epochs=1, box=12, **TINY)
    progress = list(iter_train(ps, recipe, tmp_path / "run"))
    assert len(progress) == 1 and progress[0].done
    assert np.isfinite(progress[0].loss) and progress[0].kl >= 0
    run_dir = tmp_path / "run"
    with open(run_dir / "config.toml", "rb") as fh:
        config = tomllib.load(fh)
    assert config["recipe"]["name"] == "cryodrgn" and config["recipe"]["zdim"] == 2
    assert config["data"]["box_size"] == 12
    assert config["data"]["pixel_size_angstrom"] == pytest.approx(6.0 * 16 / 12)
    with np.load(run_dir / "latents.npz") as npz:
        assert npz["mu"].shape == (200, 2) and npz["logvar"].shape == (200, 2)
        np.testing.assert_array_equal(npz["particle_ids"], np.arange(200))
        mu = npz["mu"]
    z = read_pickle(run_dir / "z.pkl")  # the restricted (numpy-only) unpickler reads it
    assert z.dtype == np.float32 and z.shape == (200, 2)
    np.testing.assert_array_equal(z, mu)
    ckpt = torch.load(run_dir / "checkpoints" / "epoch_0001.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and {"torch", "numpy", "python", "data", "noise"} <= set(
        ckpt["rng"])

    run_ = load_run(run_dir)
    assert saved_recipe(run_dir) == recipe == run_.recipe  # as started, TOML round trip
    assert saved_recipe(tmp_path) is None  # no config.toml: nothing to resume
    maps = eval_volumes(run_, mu[:3])
    assert maps.shape == (3, 12, 12, 12) and maps.dtype == torch.float32
    assert eval_volumes(run_, mu[:1], box_size=16).shape == (1, 16, 16, 16)
    with pytest.raises(InputError):
        eval_volumes(run_, np.zeros((1, 5)))


def test_kl_is_weighted_per_image_pixel_as_in_cryodrgn(tiny_dataset, tmp_path):
    """``loss = data + beta * KL / P`` with ``P`` the pixels of the full ``D x D`` image
    transform inside Nyquist: cryoDRGN divides ``beta * KL`` by its circular mask's
    pixel count, so the same ``beta`` weights the KL the same against the per-pixel
    mean squared error. One batch of all particles: the epoch's loss is the one before
    the first step, identical but for ``beta``."""
    ps = load_particles(tiny_dataset / "particles.star")
    box = 16
    k = np.arange(box) - box // 2
    pixels = int(((k[:, None] ** 2 + k[None, :] ** 2) < (box // 2) ** 2).sum())
    losses, kls = [], []
    for beta in (0.5, 2.0):
        recipe = get_recipe("cryodrgn", epochs=1, **{**TINY, "batch_size": len(ps)},
                            beta=beta)
        (last,) = iter_train(ps, recipe, tmp_path / f"beta{beta}")
        losses.append(last.loss)
        kls.append(last.kl)
    assert kls[0] == pytest.approx(kls[1], rel=1e-6) and kls[0] > 0
    assert losses[1] - losses[0] == pytest.approx(1.5 * kls[0] / pixels, rel=1e-3)


def test_kl_warmup_weight_rises_linearly():
    recipe = get_recipe("cryodrgn", beta=2.0, kl_warmup_epochs=2.5)
    steps_per_epoch = 10  # 25 steps of ramp
    weights = [recipe.kl_weight_at(step, steps_per_epoch) for step in (0, 5, 20, 25, 90)]
    assert weights == pytest.approx([0.0, 0.4, 1.6, 2.0, 2.0])
    assert get_recipe("cryodrgn", beta=2.0).kl_weight_at(0, 10) == 2.0  # no warm-up
    with pytest.raises(InputError, match="kl_warmup_epochs: expected >= 0"):
        get_recipe("cryodrgn", kl_warmup_epochs=-1.0)
    assert get_recipe("cryodrgn-ae", kl_warmup_epochs=1.0).kl_weight_at(20, 10) == 0.0


def test_kl_warmup_starts_the_loss_without_the_kl(tiny_dataset, tmp_path):
    """One batch per epoch and a 2-epoch warm-up: step 0 has KL weight 0 and step 1
    half of beta. The first epoch's loss (taken before the first step, the same
    networks) is the data term alone, ``beta * KL / P`` below the run without it."""
    ps = load_particles(tiny_dataset / "particles.star")
    box = 16
    k = np.arange(box) - box // 2
    pixels = int(((k[:, None] ** 2 + k[None, :] ** 2) < (box // 2) ** 2).sum())
    settings = {**TINY, "batch_size": len(ps), "beta": 2.0}
    full = next(iter_train(ps, get_recipe("cryodrgn", epochs=1, **settings), tmp_path / "a"))
    warm = list(iter_train(ps, get_recipe("cryodrgn", epochs=2, kl_warmup_epochs=2.0,
                                          **settings), tmp_path / "b"))
    assert warm[0].kl == pytest.approx(full.kl, rel=1e-6) and full.kl > 0
    assert full.loss - warm[0].loss == pytest.approx(2.0 * full.kl / pixels, rel=1e-3)
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [e["kl_weight"] for e in log] == pytest.approx([0.0, 1.0])


def test_pixel_fraction_estimates_the_full_data_term(tiny_dataset, tmp_path):
    """One batch of all particles: the first epoch's loss is taken before the first
    step, with the same networks and latent noise. Half of each image's coefficients
    (drawn by their CTF amplitude), each term divided by its probability, estimates
    the full loss within its sampling error (measured 3.1 % above it, 2026-12-07:
    200 images of about 100 coefficients, terms near CTF zeros weighted up to 20x);
    undivided it would be about half."""
    ps = load_particles(tiny_dataset / "particles.star")
    settings = {**TINY, "batch_size": len(ps)}
    full = next(iter_train(ps, get_recipe("cryodrgn", epochs=1, **settings), tmp_path / "a"))
    half = next(iter_train(ps, get_recipe("cryodrgn", epochs=1, pixel_fraction=0.5,
                                          **settings), tmp_path / "b"))
    assert half.kl == pytest.approx(full.kl, rel=1e-6)
    assert half.loss == pytest.approx(full.loss, rel=0.08) and half.loss != full.loss
    with open(tmp_path / "b" / "config.toml", "rb") as fh:
        assert tomllib.load(fh)["recipe"]["pixel_fraction"] == 0.5


@pytest.mark.parametrize(("recipe_name", "settings", "message"), [
    ("cryodrgn", {"pixel_fraction": 0.0}, "in \\(0, 1\\]"),
    ("cryodrgn", {"pixel_fraction": 1.5}, "in \\(0, 1\\]"),
    ("e2gmm", {"pixel_fraction": 0.5}, "reference-free implicit volume"),
    ("cryodrgn", {"pixel_fraction": 0.5, "poses": "amortized"}, "given poses"),
])
def test_pixel_fraction_is_checked(recipe_name, settings, message):
    with pytest.raises(InputError, match=f"pixel_fraction: expected .*{message}"):
        get_recipe(recipe_name, **settings)


def test_ae_recipe_runs(tiny_dataset, tmp_path):
    ps = load_particles(tiny_dataset / "particles.star")
    last = train(ps, get_recipe("cryodrgn-ae", epochs=1, **TINY), tmp_path / "ae")
    assert last.kl == 0.0
    with np.load(tmp_path / "ae" / "latents.npz") as npz:
        assert "logvar" not in npz and npz["mu"].shape == (200, 2)


def test_no_poses_is_an_input_error(tiny_dataset, tmp_path):
    ps = load_particles(tiny_dataset / "particles.star")
    ps.rotations = None
    with pytest.raises(InputError, match="poses"):
        train(ps, get_recipe("cryodrgn", epochs=1, **TINY), tmp_path / "x")


def test_voxel_homogeneous_reaches_truth(tmp_path):
    data = tmp_path / "data"
    simulate(SimulationConfig(n_particles=1500, box_size=24, pixel_size_angstrom=4.0,
                              snr=1.0, states=("4ake",), seed=2), data)
    ps = load_particles(data / "particles.star")
    last = train(ps, get_recipe("voxel-homogeneous", epochs=6), tmp_path / "run")
    assert last.done
    vol, apix = read_volume(tmp_path / "run" / "volumes" / "map.mrc")
    assert apix == pytest.approx(4.0)
    truth, _ = read_volume(data / "truth" / "state_0.mrc")
    curve = fsc(torch.from_numpy(vol), torch.from_numpy(truth))
    # FSC 0.5 beyond 12 Å (3 px) at 4 Å/px: the map carries real structure, not a blob
    assert curve.resolution_angstrom(4.0, 0.5) < 12.0, curve.fsc


def _parser():
    parser = argparse.ArgumentParser(prog="cryoviz")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_train_and_eval_vol(tiny_dataset, tmp_path, capsys):
    parser = _parser()
    run_dir = tmp_path / "run"
    args = parser.parse_args(["train", str(tiny_dataset / "particles.star"), "--recipe",
                              "cryodrgn", "-o", str(run_dir), "--epochs", "1", "--zdim", "2",
                              "--width", "16", "--depth", "1", "--batch-size", "100"])
    assert run(args) == 0
    err = capsys.readouterr().err
    assert "epoch 1/1" in err
    out = tmp_path / "maps"
    assert run(parser.parse_args(["eval-vol", str(run_dir), "--z", "0.1,0.2", "-o",
                                  str(out)])) == 0
    vol, apix = read_volume(out / "vol_000.mrc")
    assert vol.shape == (16, 16, 16) and apix == pytest.approx(6.0)
    (tmp_path / "z.txt").write_text("0 0\n1 1\n-1 0.5\n")
    assert run(parser.parse_args(["eval-vol", str(run_dir), "--z-file", str(tmp_path / "z.txt"),
                                  "-o", str(tmp_path / "maps2")])) == 0
    assert len(list((tmp_path / "maps2").glob("vol_*.mrc"))) == 3
    assert run(parser.parse_args(["eval-vol", str(run_dir), "--path", "0", "5", "--n", "4",
                                  "-o", str(tmp_path / "maps3")])) == 0
    assert len(list((tmp_path / "maps3").glob("vol_*.mrc"))) == 4
    # bad input: exit code 2 and a message naming the option
    assert run(parser.parse_args(["eval-vol", str(run_dir), "--z", "0.1", "-o",
                                  str(tmp_path / "bad")])) == 2
    assert "z" in capsys.readouterr().err
    assert run(parser.parse_args(["train", str(tiny_dataset / "particles.star"), "--recipe",
                                  "nope", "-o", str(tmp_path / "r2")])) == 2
    assert "recipe" in capsys.readouterr().err


def test_a_diverging_run_stops_and_keeps_its_last_good_epoch(tiny_dataset, tmp_path, capsys):
    """One batch per epoch and an absurd learning rate: Adam's first step moves every
    weight by about 1e30, so epoch 2's loss is not finite. The run stops there with
    :class:`TrainingDiverged`; epoch 1's checkpoint stays and no NaN weights are saved."""
    parser = _parser()
    run_dir = tmp_path / "run"
    args = parser.parse_args(["train", str(tiny_dataset / "particles.star"), "--recipe",
                              "cryodrgn", "-o", str(run_dir), "--epochs", "3", "--zdim", "2",
                              "--width", "16", "--depth", "1", "--batch-size", "200",
                              "--lr", "1e30"])
    assert run(args) == 1
    err = capsys.readouterr().err
    assert "diverged" in err and "epoch 2" in err and "epoch 1 is the last good" in err
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch_0001.pt"]
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and np.isfinite(log[0]["loss"])
    with pytest.raises(TrainingDiverged) as info:
        train(load_particles(tiny_dataset / "particles.star"),
              get_recipe("cryodrgn", epochs=1, **{**TINY, "lr": 1e30, "batch_size": 100}),
              tmp_path / "direct")
    assert info.value.epoch == 1 and "no epoch finished" in str(info.value)
