"""The ab initio bench entries share one initial model per dataset and seed."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from cryoviz.bench.entries import ENTRIES, RunContext
from cryoviz.bench.entries_em_recipes import _read_shared, _shared_initial_model, _write_shared
from cryoviz.bench.suite import DatasetSpec, build_dataset
from cryoviz.inference.abinit import AbinitSettings


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return build_dataset(DatasetSpec("homogeneous"), tmp_path_factory.mktemp("data"))


def _ctx(seed: int = 0) -> RunContext:
    return RunContext(render=np.zeros(0, dtype=np.int64), size="tiny", seed=seed,
                      em_iterations=1)


def test_second_entry_reuses_the_initial_model_and_gets_the_same_result(
        dataset, tmp_path, monkeypatch):
    modal = ENTRIES[("cryosparc-abinit", "abinit")]
    exact = ENTRIES[("relion-refine", "abinit")]
    alone = exact.run(dataset, tmp_path / "alone" / "runs" / "exact", _ctx())
    assert alone.extra["initial_model"] == "computed"
    assert "shared_wall_s" not in alone.extra

    runs = tmp_path / "bench" / "runs"
    first = modal.run(dataset, runs / "modal", _ctx())
    assert first.extra["initial_model"] == "computed"
    record = json.loads((runs / "_shared" / "abinit-initial-model-seed0"
                         / "initial_model.json").read_text())
    assert record["computed_by"] == "cryosparc-abinit" and record["seconds"] > 0

    def no_initial_model(*args, **kwargs):
        raise AssertionError("the initial model was made again")

    monkeypatch.setattr("cryoviz.inference.abinit_pipeline.iter_abinit", no_initial_model)
    second = exact.run(dataset, runs / "exact", _ctx())
    assert second.extra["initial_model"] == "shared (made by cryosparc-abinit)"
    assert second.extra["shared_wall_s"] == record["seconds"]
    # the shared map is the one the entry would have made itself: same refinement
    np.testing.assert_array_equal(second.volumes.numpy(), alone.volumes.numpy())


def test_a_model_made_with_other_settings_or_seed_is_not_reused(tmp_path):
    runs = tmp_path / "runs"
    settings = AbinitSettings(n_steps=5)
    folder, key = _shared_initial_model(runs / "modal", _ctx(), settings)
    volume = np.zeros((8, 8, 8), dtype=np.float32)
    _write_shared(folder, key, torch.from_numpy(volume),
                                     2.0, 1.5, "cryosparc-abinit")
    assert _read_shared(folder, key)[1]["seconds"] == 1.5
    _, other = _shared_initial_model(
        runs / "exact", _ctx(), AbinitSettings(n_steps=6))
    assert _read_shared(folder, other) is None
    seed1, _ = _shared_initial_model(runs / "exact", _ctx(seed=1), settings)
    assert seed1 != folder and _read_shared(seed1, key) is None


@pytest.mark.parametrize("module", ["entries_em_recipes", "entries_pose_recipes"])
def test_the_recipe_modules_import_first_in_a_fresh_interpreter(module):
    """They are imported by the registry while it registers them; imported first
    themselves they must not fail on the cycle (they did: a partial-module ImportError)."""
    code = (f"import cryoviz.bench.{module}\n"
            "from cryoviz.bench.entries import ENTRIES\n"
            "assert ('relion-refine', 'abinit') in ENTRIES and ('fstdiff', 'pose') in ENTRIES")
    subprocess.run([sys.executable, "-c", code], check=True)
