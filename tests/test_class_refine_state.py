"""Checkpoint files of the classification with searched poses (class_refine_state).

The resume itself (an interrupted run ends as the unbroken one) is tested in
``tests/test_class_refine.py``; here: the file round-trips, and files of other
runs, truncated files and too many iterations are refused with the file named.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cryoviz.errors import InputError
from cryoviz.inference.class_refine_state import (
    CLASS_STATE_FILE,
    ClassRefineCheckpoint,
    load_class_refine_state,
    save_class_refine_state,
)
from cryoviz.inference.refine import RefineSettings
from cryoviz.metrics.fsc import FSCCurve

SETTINGS = RefineSettings(n_iterations=4, max_order=3)
IDS = np.array([7, 3, 9, 1, 4])


def _state(iteration: int = 2) -> ClassRefineCheckpoint:
    gen = torch.Generator().manual_seed(0)
    curve = FSCCurve(frequency_per_px=torch.linspace(0, 0.5, 5), fsc=torch.rand(5, generator=gen),
                     n_voxels=torch.arange(5))
    summaries = {"rotations": torch.rand(5, 3, 3, generator=gen, dtype=torch.float64),
                 "shifts_angstrom": torch.rand(5, 2, generator=gen, dtype=torch.float64)}
    return ClassRefineCheckpoint(
        iteration=iteration, half_maps=torch.rand(2, 2, 8, 8, 8, generator=gen,
                                                  dtype=torch.float64),
        full_maps=torch.rand(2, 8, 8, 8, generator=gen), curves=(curve, curve),
        limit_from_curves=True, sigma2=torch.rand(5, generator=gen, dtype=torch.float64),
        fractions=torch.tensor([0.4, 0.6], dtype=torch.float64),
        posteriors=torch.rand(5, 2, generator=gen, dtype=torch.float64),
        per_class=(summaries, summaries), log_likelihoods=(-10.0, -5.0),
        elapsed_seconds=12.5, e_step_limit=3)


def test_round_trip(tmp_path):
    state = _state()
    save_class_refine_state(tmp_path, state, SETTINGS, 2, True, IDS)
    back = load_class_refine_state(tmp_path, SETTINGS, 2, True, IDS)
    for field in dataclasses.fields(state):
        a, b = getattr(state, field.name), getattr(back, field.name)
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        elif field.name == "curves":
            torch.testing.assert_close(a[1].fsc, b[1].fsc)
        elif field.name == "per_class":
            torch.testing.assert_close(a[0]["rotations"], b[0]["rotations"])
        else:
            assert a == b, field.name
    # more iterations may be asked for on resuming
    more = dataclasses.replace(SETTINGS, n_iterations=6)
    assert load_class_refine_state(tmp_path, more, 2, True, IDS).iteration == 2


def test_no_file_is_a_fresh_start(tmp_path):
    assert load_class_refine_state(tmp_path, SETTINGS, 2, True, IDS) is None


@pytest.mark.parametrize(("settings", "classes", "random_start", "ids", "field"), [
    (dataclasses.replace(SETTINGS, max_order=4), 2, True, IDS, "settings"),
    (SETTINGS, 3, True, IDS, "settings"),
    (SETTINGS, 2, False, IDS, "settings"),
    (SETTINGS, 2, True, IDS[::-1], "particles"),
    (dataclasses.replace(SETTINGS, n_iterations=1), 2, True, IDS, "iteration"),
])
def test_another_run_is_refused(tmp_path, settings, classes, random_start, ids, field):
    save_class_refine_state(tmp_path, _state(), SETTINGS, 2, True, IDS)
    with pytest.raises(InputError, match=field) as err:
        load_class_refine_state(tmp_path, settings, classes, random_start, ids)
    assert CLASS_STATE_FILE in str(err.value)


def test_global_searches_may_change_where_the_iterations_done_keep_their_kind(tmp_path):
    """Two iterations done, both global (SETTINGS: 2 global searches): 3 or more keep
    them global, 1 or 0 would have made one local."""
    save_class_refine_state(tmp_path, _state(2), SETTINGS, 2, True, IDS)
    for n_global in (2, 3, 4):
        settings = dataclasses.replace(SETTINGS, n_global_iterations=n_global)
        assert load_class_refine_state(tmp_path, settings, 2, True, IDS).iteration == 2
    for n_global in (0, 1):
        settings = dataclasses.replace(SETTINGS, n_global_iterations=n_global)
        with pytest.raises(InputError, match="n_global_iterations.*2 or more") as err:
            load_class_refine_state(tmp_path, settings, 2, True, IDS)
        assert CLASS_STATE_FILE in str(err.value)


def test_a_file_with_the_global_searches_in_its_settings_is_read(tmp_path):
    """Checkpoints written before the global searches could change kept them among the
    fixed settings; they still resume, and are still checked."""
    path = save_class_refine_state(tmp_path, _state(2), SETTINGS, 2, True, IDS)
    payload = torch.load(path, weights_only=True)
    payload["settings"]["n_global_iterations"] = payload.pop("n_global_iterations")
    torch.save(payload, path)
    assert load_class_refine_state(tmp_path, SETTINGS, 2, True, IDS).iteration == 2
    one = dataclasses.replace(SETTINGS, n_global_iterations=1)
    with pytest.raises(InputError, match="n_global_iterations"):
        load_class_refine_state(tmp_path, one, 2, True, IDS)


def test_a_truncated_file_is_named(tmp_path):
    path = save_class_refine_state(tmp_path, _state(), SETTINGS, 2, True, IDS)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(InputError, match=CLASS_STATE_FILE):
        load_class_refine_state(tmp_path, SETTINGS, 2, True, IDS)
