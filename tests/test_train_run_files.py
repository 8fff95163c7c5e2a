"""Run-folder files: config.toml, z.pkl and the latest epoch checkpoint."""

from __future__ import annotations

import dataclasses
import math
import pickle
import tomllib

import numpy as np
import pytest

from cryoviz.errors import InputError
from cryoviz.train.recipes import get_recipe
from cryoviz.train.run_files import (
    check_resume_settings,
    latest_checkpoint,
    write_toml,
    write_z_pkl,
)


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


def test_resume_accepts_more_epochs_and_refuses_other_settings(tmp_path):
    check_resume_settings(tmp_path, {"zdim": 8})  # no config.toml: nothing to check
    started = get_recipe("atomvae", reference="4ake", epochs=4, pose_only_epochs=1)
    write_toml(tmp_path / "config.toml", {"recipe": dataclasses.asdict(started)})
    check_resume_settings(tmp_path, dataclasses.asdict(started))
    check_resume_settings(tmp_path, dataclasses.asdict(dataclasses.replace(started, epochs=9)))
    joint = dataclasses.replace(started, encoder="joint")
    with pytest.raises(InputError, match="recipe encoder") as err:
        check_resume_settings(tmp_path, dataclasses.asdict(joint))
    assert "config.toml" in str(err.value) and "'vae'" in str(err.value)
    with pytest.raises(InputError, match="recipe lr"):
        check_resume_settings(tmp_path, dataclasses.asdict(dataclasses.replace(started,
                                                                               lr=0.5)))
    with pytest.raises(InputError, match="recipe beta"):  # a setting added on resume
        check_resume_settings(tmp_path, dataclasses.asdict(dataclasses.replace(started,
                                                                               beta=0.1)))
