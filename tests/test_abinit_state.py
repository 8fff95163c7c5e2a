"""Checkpoints of the ab initio initial model (cryoviz.inference.abinit_state).

A small simulated adenylate kinase (box 24, 5 Å/px, SNR 1, 400 particles), two
starts of 5 steps: a run interrupted after any step and resumed from its
``abinit_state.pt`` must end with the unbroken run's map, poses and evidences.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from cryoviz.errors import InputError
from cryoviz.inference.abinit import AbinitSettings, iter_abinit
from cryoviz.inference.abinit_state import ABINIT_STATE_FILE, Schedule, load_abinit_state
from cryoviz.io import load_particles
from cryoviz.simulate import SimulationConfig, simulate

SETTINGS = AbinitSettings(n_steps=5, batch_size=60, box_size=16, memory_images=300,
                          initial_images=100, initial_resolution_angstrom=40.0,
                          final_resolution_angstrom=20.0, n_starts=2, seed=3)


@pytest.fixture(scope="module")
def particles(tmp_path_factory):
    config = SimulationConfig(n_particles=400, box_size=24, pixel_size_angstrom=5.0, snr=1.0,
                              seed=4)
    return load_particles(simulate(config, tmp_path_factory.mktemp("abs") / "d") /
                          "particles.star")


@pytest.fixture(scope="module")
def unbroken(particles):
    return list(iter_abinit(particles, SETTINGS))


def _same_result(a, b) -> None:
    torch.testing.assert_close(a.map, b.map, rtol=0, atol=0)
    np.testing.assert_array_equal(a.rotations, b.rotations)
    np.testing.assert_array_equal(a.seen, b.seen)
    assert a.start_evidences == b.start_evidences
    assert a.chosen_start == b.chosen_start


@pytest.mark.parametrize("stop_after", [3, 5, 7])  # mid start 0, end of start 0, mid start 1
def test_interrupted_run_resumes_to_the_unbroken_result(particles, unbroken, tmp_path,
                                                        stop_after):
    for k, _ in enumerate(iter_abinit(particles, SETTINGS, checkpoint_dir=tmp_path,
                                      checkpoint_interval_s=0.0), start=1):
        if k == stop_after:
            break  # killed after this step's checkpoint
    saved = load_abinit_state(tmp_path, SETTINGS, particles.particle_ids)
    assert (saved.start, saved.step) == ((stop_after - 1) // 5, (stop_after - 1) % 5 + 1)
    resumed = list(iter_abinit(particles, SETTINGS, checkpoint_dir=tmp_path, resume=True))
    assert [(p.start, p.step) for p in resumed] == [(p.start, p.step)
                                                   for p in unbroken[stop_after:]]
    _same_result(resumed[-1].result, unbroken[-1].result)
    # the same steps at the same limits and fits
    assert [p.log_likelihood for p in resumed] == [p.log_likelihood
                                                  for p in unbroken[stop_after:]]


SCREENED = replace(SETTINGS, n_starts=2, screen_starts=3, screen_steps=3)


@pytest.fixture(scope="module")
def unbroken_screened(particles):
    return list(iter_abinit(particles, SCREENED))


# 13 steps: screened starts 0-2 (steps 1-3 each), then the two kept (steps 4-5 each)
@pytest.mark.parametrize("stop_after", [2, 9, 11, 12])
def test_an_interrupted_screened_run_resumes_to_the_unbroken_result(
        particles, unbroken_screened, tmp_path, stop_after):
    assert len(unbroken_screened) == 13
    for k, _ in enumerate(iter_abinit(particles, SCREENED, checkpoint_dir=tmp_path,
                                      checkpoint_interval_s=0.0), start=1):
        if k == stop_after:
            break
    saved = load_abinit_state(tmp_path, SCREENED, particles.particle_ids)
    # the checkpoint of the last screen keeps the two best screened starts to go on
    assert len(saved.paused) == {2: 0, 9: 2, 11: 1, 12: 0}[stop_after]
    resumed = list(iter_abinit(particles, SCREENED, checkpoint_dir=tmp_path, resume=True))
    tail = unbroken_screened[stop_after:]
    assert [(p.start, p.seed_start, p.screening, p.step) for p in resumed] == [
        (p.start, p.seed_start, p.screening, p.step) for p in tail]
    assert [p.log_likelihood for p in resumed] == [p.log_likelihood for p in tail]
    a, b = resumed[-1].result, unbroken_screened[-1].result
    _same_result(a, b)
    assert a.screen_evidences == b.screen_evidences
    assert a.finished_starts == b.finished_starts
    again = list(iter_abinit(particles, SCREENED, checkpoint_dir=tmp_path, resume=True))
    assert len(again) == 1 and again[0].start == 4
    _same_result(again[0].result, b)


def test_a_finished_run_yields_its_result_again(particles, unbroken, tmp_path):
    list(iter_abinit(particles, SETTINGS, checkpoint_dir=tmp_path))
    again = list(iter_abinit(particles, SETTINGS, checkpoint_dir=tmp_path, resume=True))
    assert len(again) == 1 and again[0].step_seconds == 0.0
    assert (again[0].start, again[0].step) == (1, 5)
    _same_result(again[0].result, unbroken[-1].result)


def _as_format_1(path) -> None:
    """Rewrite a checkpoint of a run without screening as the first format wrote it.

    Format 1 (before screening, up to commit dfbdc08) had no ``screening``,
    ``screen_evidences`` and ``paused`` fields and no ``screen_starts`` and
    ``screen_steps`` settings; the other fields are the same (checked once
    against a file written by that commit's code).
    """
    saved = torch.load(path, weights_only=True)
    for key in ("screening", "screen_evidences", "paused"):
        del saved[key]
    for key in ("screen_starts", "screen_steps"):
        del saved["settings"][key]
    torch.save({**saved, "format": 1}, path)


@pytest.mark.parametrize("stop_after", [3, 7])
def test_a_format_1_checkpoint_resumes_to_the_unbroken_result(particles, unbroken, tmp_path,
                                                              stop_after):
    for k, _ in enumerate(iter_abinit(particles, SETTINGS, checkpoint_dir=tmp_path,
                                      checkpoint_interval_s=0.0), start=1):
        if k == stop_after:
            break
    _as_format_1(tmp_path / ABINIT_STATE_FILE)
    resumed = list(iter_abinit(particles, SETTINGS, checkpoint_dir=tmp_path, resume=True))
    assert [p.log_likelihood for p in resumed] == [p.log_likelihood
                                                  for p in unbroken[stop_after:]]
    _same_result(resumed[-1].result, unbroken[-1].result)
    assert resumed[-1].result.screen_evidences == ()
    # the resumed run's checkpoints are of today's format
    assert torch.load(tmp_path / ABINIT_STATE_FILE, weights_only=True)["format"] == 2


def test_a_format_1_checkpoint_is_not_resumed_with_screening(particles, tmp_path):
    for k, _ in enumerate(iter_abinit(particles, SETTINGS, checkpoint_dir=tmp_path,
                                      checkpoint_interval_s=0.0), start=1):
        if k == 2:
            break
    _as_format_1(tmp_path / ABINIT_STATE_FILE)
    screened = replace(SETTINGS, screen_starts=3, screen_steps=3)
    with pytest.raises(InputError, match="screen_starts"):
        next(iter_abinit(particles, screened, checkpoint_dir=tmp_path, resume=True))


def test_an_unknown_format_is_named(particles, tmp_path):
    short = replace(SETTINGS, n_starts=1, n_steps=2)
    list(iter_abinit(particles, short, checkpoint_dir=tmp_path))
    path = tmp_path / ABINIT_STATE_FILE
    torch.save({**torch.load(path, weights_only=True), "format": 3}, path)
    with pytest.raises(InputError, match="format: expected version 2 or 1, got 3"):
        next(iter_abinit(particles, short, checkpoint_dir=tmp_path, resume=True))


def test_checkpoints_are_spaced_by_the_interval(particles, tmp_path):
    """With a long interval only the ends of starts are saved."""
    for p in iter_abinit(particles, SETTINGS, checkpoint_dir=tmp_path,
                         checkpoint_interval_s=3600.0):
        saved = load_abinit_state(tmp_path, SETTINGS, particles.particle_ids)
        if p.start == 0 and p.step < 5:
            assert saved is None
        else:
            assert (saved.start, saved.step) == ((1, 5) if (p.start, p.step) == (1, 5) else (0, 5))


def test_resume_without_a_checkpoint_starts_fresh(particles, unbroken, tmp_path):
    resumed = list(iter_abinit(particles, SETTINGS, checkpoint_dir=tmp_path, resume=True))
    assert len(resumed) == len(unbroken)
    _same_result(resumed[-1].result, unbroken[-1].result)
    assert (tmp_path / ABINIT_STATE_FILE).is_file()


def test_other_settings_or_particles_are_refused(particles, tmp_path):
    short = replace(SETTINGS, n_starts=1, n_steps=2)
    list(iter_abinit(particles, short, checkpoint_dir=tmp_path))
    with pytest.raises(InputError, match="batch_size"):
        next(iter_abinit(particles, replace(short, batch_size=50), checkpoint_dir=tmp_path,
                         resume=True))
    with pytest.raises(InputError, match="particles"):
        next(iter_abinit(particles.subset(np.arange(399)), short, checkpoint_dir=tmp_path,
                         resume=True))


def test_a_truncated_checkpoint_is_named(particles, tmp_path):
    short = replace(SETTINGS, n_starts=1, n_steps=2)
    list(iter_abinit(particles, short, checkpoint_dir=tmp_path))
    path = tmp_path / ABINIT_STATE_FILE
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InputError, match=ABINIT_STATE_FILE):
        next(iter_abinit(particles, short, checkpoint_dir=tmp_path, resume=True))


def test_resume_needs_a_folder(particles):
    with pytest.raises(ValueError, match="checkpoint_dir"):
        next(iter_abinit(particles, SETTINGS, resume=True))


def test_schedule_restored_draws_the_same_batches():
    rng = np.random.default_rng(5)
    schedule = Schedule(10, 4, rng)
    for _ in range(3):
        schedule.next_batch()
    copy = Schedule.restore(10, 4, schedule.state())
    ahead = [schedule.next_batch() for _ in range(5)]
    again = [copy.next_batch() for _ in range(5)]
    for a, b in zip(ahead, again, strict=True):
        np.testing.assert_array_equal(a, b)
    # each pass is a permutation: 2 full batches of 4 from 10 images, then a new pass
    first = Schedule(10, 4, np.random.default_rng(1))
    batches = [first.next_batch() for _ in range(2)]
    assert len(set(np.concatenate(batches).tolist())) == 8
