"""Recipe settings on the ``cryoviz train`` command line: the options and ``--set KEY=VALUE``."""

from __future__ import annotations

import argparse
import tomllib

import pytest

from cryoviz.errors import InputError
from cryoviz.simulate import SimulationConfig, simulate
from cryoviz.train.cli import add_parsers, precision_hint, recipe_settings, run
from cryoviz.train.evaluate import load_run
from cryoviz.train.recipes import get_recipe


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    simulate(SimulationConfig(n_particles=120, box_size=16, pixel_size_angstrom=6.0, snr=1.0,
                              states=("4ake", "1ake"), seed=2), out)
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser


def test_set_and_options_become_recipe_settings():
    args = _parser().parse_args(["train", "p.star", "--recipe", "e2gmm", "-o", "r",
                                 "--gaussians", "48", "--beta", "0.2", "--enc-width", "64",
                                 "--kl-warmup-epochs", "2.5",
                                 "--set", "weight_decay=1e-3", "--set", "max_shift_px=1.5"])
    given = recipe_settings(args)
    assert (given["gaussians"], given["beta"], given["enc_width"]) == (48, 0.2, 64)
    assert given["kl_warmup_epochs"] == 2.5
    assert (given["weight_decay"], given["max_shift_px"]) == (1e-3, 1.5)
    assert given["zdim"] is None  # not given: the recipe's default stays


@pytest.mark.parametrize("argv", [
    ["--zdim", "4", "--set", "zdim=4"],  # its own option and --set
    ["--set", "lr=1e-3", "--set", "lr=1e-4"],  # twice
])
def test_a_setting_given_twice_is_refused(argv):
    args = _parser().parse_args(["train", "p.star", "--recipe", "cryodrgn", "-o", "r", *argv])
    with pytest.raises(InputError, match="--set: expected each setting once"):
        recipe_settings(args)


def test_train_uses_the_settings_end_to_end(tiny_dataset, tmp_path, capsys):
    """e2gmm with 24 Gaussians and a weight decay: the run's config and model have them."""
    run_dir = tmp_path / "run"
    argv = ["train", str(tiny_dataset / "particles.star"), "--recipe", "e2gmm", "-o",
            str(run_dir), "--epochs", "1", "--batch-size", "60", "--gaussians", "24",
            "--enc-width", "32", "--enc-depth", "1", "--width", "16", "--depth", "1",
            "--set", "weight_decay=0.001", "--set", "frc_max_resolution_angstrom=15"]
    assert run(_parser().parse_args(argv)) == 0
    with open(run_dir / "config.toml", "rb") as fh:
        saved = tomllib.load(fh)["recipe"]
    assert saved["gaussians"] == 24 and saved["weight_decay"] == pytest.approx(0.001)
    assert saved["frc_max_resolution_angstrom"] == pytest.approx(15.0)
    assert saved["enc_width"] == 32 and saved["enc_depth"] == 1
    run_ = load_run(run_dir)
    assert run_.volume.n_gaussians == 24
    assert run_.encoder is not None
    assert run_.recipe.weight_decay == pytest.approx(0.001)
    assert get_recipe("e2gmm").gaussians is None  # the option, not the default, made 24


def test_the_box_scaled_gaussian_count_is_written_to_the_config(tiny_dataset, tmp_path):
    """Without --gaussians the run's count (box 16: 16**3 // 128 = 32) is resolved at its
    start and written to config.toml, so the run keeps it if the default changes."""
    run_dir = tmp_path / "run"
    argv = ["train", str(tiny_dataset / "particles.star"), "--recipe", "e2gmm", "-o",
            str(run_dir), "--epochs", "1", "--batch-size", "60", "--enc-width", "16",
            "--enc-depth", "1", "--width", "16", "--depth", "1"]
    assert run(_parser().parse_args(argv)) == 0
    with open(run_dir / "config.toml", "rb") as fh:
        assert tomllib.load(fh)["recipe"]["gaussians"] == 32
    assert load_run(run_dir).volume.n_gaussians == 32
    assert run(_parser().parse_args([*argv[:6], "--epochs", "2", *argv[8:],
                                     "--resume"])) == 0
    assert load_run(run_dir).epoch == 2


def test_set_is_refused_for_recipes_with_their_own_algorithm(tiny_dataset, tmp_path, capsys):
    argv = ["train", str(tiny_dataset / "particles.star"), "--recipe", "relion-refine", "-o",
            str(tmp_path / "run"), "--set", "zdim=3"]
    assert run(_parser().parse_args(argv)) == 2
    err = capsys.readouterr().err
    assert "--set" in err and "relion-refine has its own options" in err


@pytest.mark.parametrize(("recipe", "precision", "device", "fast", "resume", "hinted"), [
    ("cryodrgn", "fp32", "cpu", True, False, True),
    ("cryodrgn", "bf16", "cpu", True, False, False),  # already bf16
    ("cryodrgn", "fp32", "cpu", False, False, False),  # bf16 emulated: slower
    ("cryodrgn", "fp32", "cpu", True, True, False),  # a resumed run keeps its precision
    ("cryodrgn", "fp32", "cuda", True, False, False),  # the hint is about CPUs
    ("e2gmm", "fp32", "cpu", True, False, False),  # no MLP volume
])
def test_the_bf16_hint(monkeypatch, recipe, precision, device, fast, resume, hinted):
    monkeypatch.setattr("cryoviz.train.distributed.bf16_is_fast", lambda _device: fast)
    hint = precision_hint(get_recipe(recipe, precision=precision), device, resume)
    assert (hint is not None) == hinted
    if hinted:
        assert "--precision bf16" in hint


def test_train_prints_the_bf16_hint_where_it_applies(tiny_dataset, tmp_path, capsys,
                                                     monkeypatch):
    monkeypatch.setattr("cryoviz.train.distributed.bf16_is_fast", lambda _device: True)
    argv = ["train", str(tiny_dataset / "particles.star"), "--recipe", "cryodrgn",
            "--epochs", "1", "--batch-size", "60", "--width", "16", "--depth", "1",
            "--enc-width", "16", "--device", "cpu"]
    assert run(_parser().parse_args([*argv, "-o", str(tmp_path / "a")])) == 0
    assert "hint: this CPU multiplies bfloat16 natively" in capsys.readouterr().err
    assert run(_parser().parse_args([*argv, "-o", str(tmp_path / "b"),
                                     "--precision", "bf16"])) == 0
    assert "hint:" not in capsys.readouterr().err
