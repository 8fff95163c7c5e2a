"""Heterogeneous ab initio: K maps and classes from nothing (cryoviz.inference.abinit_classes).

Small simulated open / closed adenylate kinase mixture (4AKE / 1AKE 50 / 50,
box 32, 4 Å/px, SNR 1, 1,200 particles, CTF); nothing about the maps, the poses
or the states is given. With the test's settings (60 steps on a 24-pixel working
box, about 20 s) seeds 0, 1 and 2 gave on 2026-12-06 a class / state agreement of
0.80, 0.89 and 0.94 (chance: 0.5), and each class map was closer to its own state
than to the other one (seed 0: FSC 0.5 at 22.5 Å against 24.6 Å, and 17.5 Å
against 21.0 Å). The larger figures are in ``docs/benchmarks.md`` ("Heterogeneous
ab initio").
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from cryoviz.analysis.clustering import label_agreement
from cryoviz.errors import InputError
from cryoviz.inference import abinit_classes
from cryoviz.inference.abinit import AbinitSettings
from cryoviz.inference.abinit_classes import (
    CLASS_ABINIT_STATE_FILE,
    iter_abinit_classes,
    run_abinit_classes,
)
from cryoviz.inference.abinit_classes_result import CLASS_ABINIT_RESULT_FILE
from cryoviz.io import load_particles, read_volume
from cryoviz.metrics import fsc
from cryoviz.metrics.alignment import align_volume
from cryoviz.simulate import SimulationConfig, simulate

BOX = 32
APIX = 4.0
SETTINGS = AbinitSettings(n_steps=60, batch_size=100, box_size=24, memory_images=1000,
                          initial_images=300, initial_resolution_angstrom=35.0,
                          final_resolution_angstrom=14.0, n_starts=1, seed=0)
SHORT = replace(SETTINGS, n_steps=5)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    config = SimulationConfig(n_particles=1200, box_size=BOX, pixel_size_angstrom=APIX,
                              snr=1.0, states=("4ake", "1ake"), seed=5)
    data = simulate(config, tmp_path_factory.mktemp("abinit_classes") / "data")
    with np.load(data / "truth" / "truth.npz") as npz:
        labels = npz["labels"].astype(int)
    truth = [torch.as_tensor(read_volume(data / "truth" / f"state_{k}.mrc")[0])
             for k in (0, 1)]
    return load_particles(data / "particles.star"), labels, truth


@pytest.fixture(scope="module")
def short(dataset):
    particles, _, _ = dataset
    return run_abinit_classes(particles, 2, settings=SHORT)


@pytest.fixture(scope="module")
def run(dataset):
    particles, _, _ = dataset
    return list(iter_abinit_classes(particles, 2, SETTINGS))


def test_two_classes_from_nothing_separate_the_states(dataset, run):
    particles, labels, truth = dataset
    result = run[-1].result
    assert result.maps.shape == (2, BOX, BOX, BOX)
    assert result.working_maps.shape == (2, 24, 24, 24)
    assert result.posteriors.shape == (len(particles), 2)
    np.testing.assert_allclose(result.posteriors.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_array_equal(result.best_class, result.posteriors.argmax(axis=1))
    agreement = label_agreement(result.best_class, labels)
    assert agreement > 0.75, agreement
    # each class map resembles its own state more than the other one
    for k in (0, 1):
        state = int(np.bincount(labels[result.best_class == k], minlength=2).argmax())
        own = fsc(align_volume(result.maps[k], truth[state]).aligned, truth[state])
        other = fsc(align_volume(result.maps[k], truth[1 - state]).aligned, truth[1 - state])
        assert own.resolution_angstrom(APIX, 0.5) < other.resolution_angstrom(APIX, 0.5)


def test_progress_marches_and_class_fractions_are_a_distribution(run):
    assert [p.step for p in run] == list(range(1, SETTINGS.n_steps + 1))
    assert all(p.result is None for p in run[:-1])
    limits = [p.resolution_angstrom for p in run]
    assert limits[0] >= 30.0 and limits[-1] <= 15.0
    assert all(b <= a + 1e-9 for a, b in zip(limits, limits[1:], strict=False))
    for p in run:
        assert len(p.class_fractions) == 2
        assert sum(p.class_fractions) == pytest.approx(1.0)
        assert p.images_per_second > 0 and np.isfinite(p.log_likelihood)


def _same(a, b) -> None:
    torch.testing.assert_close(a.maps, b.maps, rtol=0, atol=0)
    np.testing.assert_array_equal(a.posteriors, b.posteriors)
    np.testing.assert_array_equal(a.rotations, b.rotations)
    np.testing.assert_array_equal(a.class_fractions, b.class_fractions)


@pytest.mark.parametrize("stop_after", [2, 5])
def test_interrupted_run_resumes_to_the_unbroken_result(dataset, short, tmp_path, stop_after):
    particles, _, _ = dataset
    for k, _ in enumerate(iter_abinit_classes(particles, 2, SHORT, checkpoint_dir=tmp_path,
                                              checkpoint_interval_s=0.0), start=1):
        if k == stop_after:
            break  # killed after this step's checkpoint
    assert (tmp_path / CLASS_ABINIT_STATE_FILE).is_file()
    resumed = list(iter_abinit_classes(particles, 2, SHORT, checkpoint_dir=tmp_path,
                                       resume=True))
    assert [p.step for p in resumed] == list(range(min(stop_after + 1, 5), 6))
    _same(resumed[-1].result, short)


def _no_search(*args, **kwargs):
    pytest.fail("a finished K-class stage searched the images again")


def test_a_finished_run_resumes_from_its_stored_result_without_searching(dataset, short,
                                                                        tmp_path, monkeypatch):
    particles, _, _ = dataset
    unbroken = list(iter_abinit_classes(particles, 2, SHORT, checkpoint_dir=tmp_path))
    assert (tmp_path / CLASS_ABINIT_RESULT_FILE).is_file()
    monkeypatch.setattr(abinit_classes, "_assign", _no_search)
    monkeypatch.setattr(abinit_classes, "_common_evidence", _no_search)
    resumed = list(iter_abinit_classes(particles, 2, SHORT, checkpoint_dir=tmp_path,
                                       resume=True))
    assert [p.step for p in resumed] == [SHORT.n_steps]
    last, again = unbroken[-1], resumed[-1]
    _same(again.result, short)
    assert again.result.chosen_maps == short.chosen_maps
    assert again.result.log_likelihood == short.log_likelihood
    np.testing.assert_array_equal(again.result.shifts_angstrom, short.shifts_angstrom)
    assert again.result.settings == SHORT
    assert again.class_fractions == last.class_fractions
    assert (again.resolution_angstrom, again.log_likelihood) == (last.resolution_angstrom,
                                                                 last.log_likelihood)


def test_a_finished_run_without_a_stored_result_searches_once_more(dataset, short, tmp_path):
    particles, _, _ = dataset
    list(iter_abinit_classes(particles, 2, SHORT, checkpoint_dir=tmp_path))
    (tmp_path / CLASS_ABINIT_RESULT_FILE).unlink()  # as a run written before the file existed
    resumed = list(iter_abinit_classes(particles, 2, SHORT, checkpoint_dir=tmp_path,
                                       resume=True))
    assert [p.step for p in resumed] == [SHORT.n_steps]
    _same(resumed[-1].result, short)
    assert (tmp_path / CLASS_ABINIT_RESULT_FILE).is_file()


def test_a_run_started_afresh_drops_the_stored_result(dataset, short, tmp_path):
    particles, _, _ = dataset
    list(iter_abinit_classes(particles, 2, SHORT, checkpoint_dir=tmp_path))
    for _ in iter_abinit_classes(particles, 2, SHORT, checkpoint_dir=tmp_path,
                                 checkpoint_interval_s=0.0):
        break  # the new run is killed after its first step
    assert not (tmp_path / CLASS_ABINIT_RESULT_FILE).exists()
    resumed = list(iter_abinit_classes(particles, 2, SHORT, checkpoint_dir=tmp_path,
                                       resume=True))
    assert [p.step for p in resumed] == list(range(2, SHORT.n_steps + 1))
    _same(resumed[-1].result, short)


def test_same_seed_same_classes_and_another_seed_other_starts(dataset, short):
    particles, _, _ = dataset
    _same(run_abinit_classes(particles, 2, settings=SHORT), short)
    other = run_abinit_classes(particles, 2, settings=replace(SHORT, seed=1))
    assert not torch.equal(short.maps, other.maps)


def test_a_checkpoint_of_other_settings_or_classes_is_refused(dataset, tmp_path):
    particles, _, _ = dataset
    list(iter_abinit_classes(particles, 2, replace(SHORT, n_steps=1), checkpoint_dir=tmp_path))
    with pytest.raises(InputError, match="batch_size"):
        next(iter_abinit_classes(particles, 2, replace(SHORT, n_steps=1, batch_size=50),
                                 checkpoint_dir=tmp_path, resume=True))
    with pytest.raises(InputError, match="n_classes"):
        next(iter_abinit_classes(particles, 3, replace(SHORT, n_steps=1),
                                 checkpoint_dir=tmp_path, resume=True))
    path = tmp_path / CLASS_ABINIT_STATE_FILE
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InputError, match=CLASS_ABINIT_STATE_FILE):
        next(iter_abinit_classes(particles, 2, replace(SHORT, n_steps=1),
                                 checkpoint_dir=tmp_path, resume=True))


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"n_classes": 1}, "n_classes"),
    ({"settings": replace(SHORT, n_starts=0)}, "n_starts"),
    ({"settings": replace(SHORT, batch_size=0)}, "batch_size"),
])
def test_bad_settings_name_the_field(dataset, kwargs, field):
    particles, _, _ = dataset
    kwargs = {"n_classes": 2, "settings": SHORT, **kwargs}
    with pytest.raises(InputError, match=field):
        next(iter_abinit_classes(particles, **kwargs))


def test_particles_without_ctf_are_rejected(dataset):
    particles, _, _ = dataset
    with pytest.raises(InputError, match="ctf"):
        next(iter_abinit_classes(replace(particles, ctf=None), 2, SHORT))


@pytest.fixture(scope="module")
def restarts(dataset):
    particles, _, _ = dataset
    return list(iter_abinit_classes(particles, 2, replace(SHORT, n_starts=2)))


def test_restarts_pool_the_maps_of_every_restart(dataset, short, restarts):
    particles, _, _ = dataset
    assert [(p.start, p.step) for p in restarts] == [(r, s) for r in (0, 1) for s in range(1, 6)]
    result = restarts[-1].result
    assert len(result.chosen_maps) == 2 and len(set(result.chosen_maps)) == 2
    assert len(result.start_log_likelihoods) == 2
    assert result.log_likelihood >= max(result.start_log_likelihoods) - 1e-9
    np.testing.assert_allclose(result.posteriors.sum(axis=1), 1.0, atol=1e-9)
    # restart r is the one-restart run of seed + 2000 r (K = 2): its maps, as they are
    one = {0: short, 1: run_abinit_classes(particles, 2, settings=replace(SHORT, seed=2000))}
    for j, (r, k) in enumerate(result.chosen_maps):
        torch.testing.assert_close(result.working_maps[j], one[r].working_maps[k], rtol=0,
                                   atol=0)
    assert result.start_log_likelihoods[0] == pytest.approx(short.log_likelihood)


@pytest.mark.parametrize("stop_after", [3, 7])
def test_interrupted_restarts_resume_to_the_unbroken_result(dataset, restarts, tmp_path,
                                                           stop_after):
    particles, _, _ = dataset
    settings = replace(SHORT, n_starts=2)
    for k, _ in enumerate(iter_abinit_classes(particles, 2, settings, checkpoint_dir=tmp_path,
                                              checkpoint_interval_s=0.0), start=1):
        if k == stop_after:
            break  # killed after this step's checkpoint (restart 0 has 5 steps)
    resumed = list(iter_abinit_classes(particles, 2, settings, checkpoint_dir=tmp_path,
                                       resume=True))
    expected = [(r, s) for r in (0, 1) for s in range(1, 6)][stop_after:]
    assert [(p.start, p.step) for p in resumed] == expected
    _same(resumed[-1].result, restarts[-1].result)
    assert resumed[-1].result.chosen_maps == restarts[-1].result.chosen_maps
