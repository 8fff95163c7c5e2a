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


def test_fsc_with_a_mask_file_reports_the_corrected_curve(tmp_path, capsys):
    """Two maps that share shells below 8 only, a sharp spherical mask: the masked FSC is
    inflated beyond, the corrected curve (the default with a mask) is not, and the
    --json output carries every curve."""
    from tests.test_fsc_correction import BOX as box  # noqa: PLC0415
    from tests.test_fsc_correction import make_maps, sphere  # noqa: PLC0415

    first, second = make_maps()
    for name, volume in (("a.mrc", first), ("b.mrc", second), ("mask.mrc", sphere(10.0))):
        write_volume(tmp_path / name, volume.numpy().astype(np.float32), 2.0)
    files = [str(tmp_path / "a.mrc"), str(tmp_path / "b.mrc")]
    assert main(["fsc", *files, "--mask", str(tmp_path / "mask.mrc"), "--json"]) == 0
    out = capsys.readouterr().out
    curves = json.loads(out[:out.rindex("}") + 1])
    assert curves["randomize_from_shell"] == 8
    far = slice(12, None)
    assert np.mean(curves["fsc_masked"][far]) > 0.3 > abs(np.mean(curves["fsc"][far]))
    assert len(curves["fsc_unmasked"]) == box // 2 + 1
    assert "(masked, corrected)" in out
    assert main(["fsc", *files, "--mask", str(tmp_path / "mask.mrc"), "--no-correction"]) == 0
    out = capsys.readouterr().out
    assert "(masked):" in out and "masked" in out.splitlines()[0]


def test_fsc_refuses_a_mask_that_does_not_fit(tmp_path, capsys):
    volume = np.zeros((16, 16, 16), dtype=np.float32)
    write_volume(tmp_path / "a.mrc", volume, 2.0)
    write_volume(tmp_path / "small.mrc", np.ones((8, 8, 8), np.float32), 2.0)
    write_volume(tmp_path / "apix.mrc", np.ones((16, 16, 16), np.float32), 3.0)
    write_volume(tmp_path / "range.mrc", np.full((16, 16, 16), 4.0, np.float32), 2.0)
    a = str(tmp_path / "a.mrc")
    for name, message in (("small.mrc", "box size: expected 16^3"),
                          ("apix.mrc", "voxel size: expected 2 Å"),
                          ("range.mrc", "mask: expected values in [0, 1]")):
        assert main(["fsc", a, a, "--mask", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert name in err and message in err, err
    assert main(["fsc", a, a, "--mask", str(tmp_path / "small.mrc"), "--mask-radius", "4"]) == 2
    assert "either --mask or --mask-radius" in capsys.readouterr().err
