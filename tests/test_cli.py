"""The ``cryoviz`` command line: simulate, reconstruct, fsc, and its errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cryoviz.cli import main
from cryoviz.io.mrc import read_volume, write_volume
from tests.test_reconstruct import blob_phantom

BOX = 20
APIX = 3.0


@pytest.fixture(scope="module")
def cli_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    write_volume(root / "phantom.mrc", blob_phantom(BOX, seed=5), APIX)
    status = main([
        "simulate", "-o", str(root / "data"), "--states", str(root / "phantom.mrc"),
        "--box", str(BOX), "--pixel-size", str(APIX), "--n-particles", "400", "--snr", "1",
    ])
    assert status == 0
    return root


def test_simulate_writes_dataset(cli_dataset):
    data = cli_dataset / "data"
    for name in ("particles.mrcs", "particles.star", "simulation.json", "truth/truth.npz",
                 "truth/state_0.mrc"):
        assert (data / name).is_file(), name
    truth = np.load(data / "truth" / "truth.npz")
    assert truth["rotations"].shape == (400, 3, 3)
    settings = json.loads((data / "simulation.json").read_text())
    assert settings["n_particles"] == 400 and settings["noise_sigma"] > 0


def test_reconstruct_and_fsc_commands(cli_dataset, capsys):
    data = cli_dataset / "data"
    run = cli_dataset / "run"
    status = main(["reconstruct", str(data / "particles.star"), "-o", str(run),
                   "--truth", str(data / "truth" / "state_0.mrc")])
    assert status == 0
    out = capsys.readouterr().out
    assert "resolution vs truth" in out and str(run / "map.mrc") in out
    volume, voxel = read_volume(run / "map.mrc")
    assert volume.shape == (BOX,) * 3 and voxel == pytest.approx(APIX)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["resolution_vs_truth_05_angstrom"] < 4 * APIX
    assert main(["fsc", str(run / "half_map_1.mrc"), str(run / "half_map_2.mrc")]) == 0
    out = capsys.readouterr().out
    assert "resolution at FSC 0.143" in out
    assert len([line for line in out.splitlines() if line[:5].strip().isdigit()]) == BOX // 2 + 1


def test_unknown_option_is_rejected(cli_dataset, capsys):
    with pytest.raises(SystemExit) as err:
        main(["reconstruct", str(cli_dataset / "data" / "particles.star"), "-o", "x",
              "--no-such-option"])
    assert err.value.code == 2
    assert "--no-such-option" in capsys.readouterr().err


def test_unknown_method_is_rejected(cli_dataset, capsys):
    with pytest.raises(SystemExit) as err:
        main(["reconstruct", str(cli_dataset / "data" / "particles.star"), "-o", "x",
              "--method", "magic"])
    assert err.value.code == 2
    assert "magic" in capsys.readouterr().err


def test_missing_file_names_the_file(tmp_path, capsys):
    missing = tmp_path / "nothing.star"
    assert main(["reconstruct", str(missing), "-o", str(tmp_path / "run")]) == 2
    assert str(missing) in capsys.readouterr().err


def test_map_with_wrong_box_is_rejected(cli_dataset, tmp_path, capsys):
    write_volume(tmp_path / "small.mrc", np.zeros((8, 8, 8), np.float32), APIX)
    status = main(["reconstruct", str(cli_dataset / "data" / "particles.star"), "-o",
                   str(tmp_path / "run"), "--truth", str(tmp_path / "small.mrc")])
    assert status == 2
    err = capsys.readouterr().err
    assert "small.mrc" in err and "box size" in err


def test_bad_snr_is_rejected(tmp_path, capsys):
    status = main(["simulate", "-o", str(tmp_path / "d"), "--snr", "-1", "--n-particles", "4"])
    assert status == 2
    assert "snr" in capsys.readouterr().err
