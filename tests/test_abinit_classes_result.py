"""The K-class initial model's result file (cryoviz.inference.abinit_classes_result)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from cryoviz.errors import InputError
from cryoviz.inference.abinit import AbinitSettings
from cryoviz.inference.abinit_classes_result import (
    CLASS_ABINIT_RESULT_FILE,
    ClassAbinitResult,
    discard_class_abinit_result,
    load_class_abinit_result,
    save_class_abinit_result,
)

SETTINGS = AbinitSettings(n_steps=7, n_starts=2, seed=3)
IDS = np.arange(10, 16, dtype=np.int64)
FIGURES = {"resolution_angstrom": 12.5, "class_fractions": (0.25, 0.75),
           "log_likelihood": -3.5, "images_per_second": 40.0, "step_seconds": 0.1}


@pytest.fixture
def result() -> ClassAbinitResult:
    rng = np.random.default_rng(0)
    posteriors = rng.dirichlet([1.0, 1.0], size=len(IDS))
    return ClassAbinitResult(
        maps=torch.randn(2, 8, 8, 8), working_maps=torch.randn(2, 6, 6, 6),
        posteriors=posteriors, best_class=posteriors.argmax(axis=1),
        class_fractions=np.array([0.3, 0.7]), rotations=rng.normal(size=(len(IDS), 3, 3)),
        shifts_angstrom=rng.normal(size=(len(IDS), 2)), pixel_size_angstrom=2.0,
        working_pixel_size_angstrom=2.0 * 8 / 6, chosen_maps=((1, 0), (0, 1)),
        start_log_likelihoods=(-4.0, -3.9), log_likelihood=-3.7, seconds=12.0,
        settings=SETTINGS)


def test_the_stored_result_reads_back_unchanged(result, tmp_path):
    assert load_class_abinit_result(tmp_path, SETTINGS, IDS, 2) is None
    save_class_abinit_result(tmp_path, result, IDS, FIGURES)
    back, figures = load_class_abinit_result(tmp_path, SETTINGS, IDS, 2)
    torch.testing.assert_close(back.maps, result.maps, rtol=0, atol=0)
    torch.testing.assert_close(back.working_maps, result.working_maps, rtol=0, atol=0)
    for name in ("posteriors", "best_class", "class_fractions", "rotations",
                 "shifts_angstrom"):
        np.testing.assert_array_equal(getattr(back, name), getattr(result, name))
        assert getattr(back, name).dtype == getattr(result, name).dtype
    assert back.chosen_maps == result.chosen_maps
    assert back.start_log_likelihoods == result.start_log_likelihoods
    assert (back.log_likelihood, back.seconds, back.settings) == (-3.7, 12.0, SETTINGS)
    assert back.working_pixel_size_angstrom == result.working_pixel_size_angstrom
    assert figures == FIGURES


def test_a_result_of_another_run_is_refused_by_name(result, tmp_path):
    save_class_abinit_result(tmp_path, result, IDS, FIGURES)
    other = replace(SETTINGS, n_steps=8)
    with pytest.raises(InputError, match="n_steps"):
        load_class_abinit_result(tmp_path, other, IDS, 2)
    with pytest.raises(InputError, match="particles"):
        load_class_abinit_result(tmp_path, SETTINGS, IDS[::-1].copy(), 2)
    with pytest.raises(InputError, match="n_classes"):
        load_class_abinit_result(tmp_path, SETTINGS, IDS, 3)


def test_a_truncated_result_file_names_the_file(result, tmp_path):
    path = save_class_abinit_result(tmp_path, result, IDS, FIGURES)
    assert path.name == CLASS_ABINIT_RESULT_FILE
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(InputError, match=CLASS_ABINIT_RESULT_FILE):
        load_class_abinit_result(tmp_path, SETTINGS, IDS, 2)


def test_discarding_removes_the_file_and_tolerates_none(result, tmp_path):
    discard_class_abinit_result(tmp_path)
    save_class_abinit_result(tmp_path, result, IDS, FIGURES)
    discard_class_abinit_result(tmp_path)
    assert not (tmp_path / CLASS_ABINIT_RESULT_FILE).exists()
