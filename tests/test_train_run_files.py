"""Run-folder files: config.toml, z.pkl and the latest epoch checkpoint."""

from __future__ import annotations

import math
import pickle
import tomllib

import numpy as np

from cryoviz.train.run_files import latest_checkpoint, write_toml, write_z_pkl


def test_toml_reads_back_with_types_and_without_none(tmp_path):
    write_toml(tmp_path / "c.toml", {
        "recipe": {"name": 'say "hi"', "zdim": 8, "lr": 1e-4, "flag": True, "box": None,
                   "sizes": [1, 2.5], "bad": math.inf},
        "data": {"path": "/a/b"}})
    back = tomllib.loads((tmp_path / "c.toml").read_text())
    assert back["recipe"] == {"name": 'say "hi"', "zdim": 8, "lr": 1e-4, "flag": True,
                              "sizes": [1, 2.5], "bad": math.inf}
    assert back["data"] == {"path": "/a/b"}


def test_z_pkl_is_a_float32_array(tmp_path):
    z = np.arange(6, dtype=np.float64).reshape(3, 2)
    write_z_pkl(tmp_path / "z.pkl", z)
    with open(tmp_path / "z.pkl", "rb") as fh:
        back = pickle.load(fh)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, z)


def test_latest_checkpoint_is_the_highest_epoch(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name in ("epoch_0002.pt", "epoch_0010.pt", "epoch_0009.pt", "epoch_x.pt", "notes.txt"):
        (folder / name).write_bytes(b"")
    assert latest_checkpoint(tmp_path).name == "epoch_0010.pt"
