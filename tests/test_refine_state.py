"""Checkpoints of exact-EM refinement (cryoviz.inference.refine_state): an interrupted
run resumed from its checkpoint ends with the map and poses of an unbroken run."""

from __future__ import annotations

from dataclasses import replace
from itertools import islice

import numpy as np
import pytest
import torch

from cryoviz.cli import main
from cryoviz.errors import InputError
from cryoviz.inference.refine import RefineSettings, iter_refine
from cryoviz.inference.refine_state import STATE_FILE, load_refine_state
from cryoviz.io import load_particles, read_volume, write_volume
from cryoviz.simulate import SimulationConfig, simulate

SETTINGS = RefineSettings(n_iterations=3, global_order=1, n_global_iterations=1, max_order=2,
                          batch_size=100, initial_lowpass_angstrom=20.0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    data = simulate(SimulationConfig(n_particles=200, box_size=32, pixel_size_angstrom=4.0,
                                     snr=1.0, seed=3), tmp_path_factory.mktemp("rs") / "data")
    truth = torch.as_tensor(read_volume(data / "truth" / "state_0.mrc")[0])
    return data, load_particles(data / "particles.star"), truth


@pytest.fixture(scope="module")
def unbroken(dataset, tmp_path_factory):
    _, particles, truth = dataset
    run = tmp_path_factory.mktemp("unbroken")
    return list(iter_refine(particles, truth, SETTINGS, checkpoint_dir=run))[-1].result, run


def test_interrupted_run_resumes_to_the_unbroken_result(dataset, unbroken, tmp_path):
    _, particles, truth = dataset
    expected, _ = unbroken
    first = list(islice(iter_refine(particles, truth, SETTINGS, checkpoint_dir=tmp_path), 2))
    assert [p.iteration for p in first] == [1, 2]
    resumed = list(iter_refine(particles, truth, SETTINGS, checkpoint_dir=tmp_path, resume=True))
    assert [p.iteration for p in resumed] == [3]
    result = resumed[-1].result
    torch.testing.assert_close(result.map, expected.map, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.posterior.rotations, expected.posterior.rotations,
                               atol=1e-9)
    assert result.log_likelihoods == pytest.approx(expected.log_likelihoods, rel=1e-9)
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]  # no temporary files


def test_resuming_a_finished_run_gives_its_result(dataset, unbroken):
    _, particles, truth = dataset
    expected, run = unbroken
    again = list(iter_refine(particles, truth, SETTINGS, checkpoint_dir=run, resume=True))
    assert len(again) == 1 and again[0].iteration == 3
    assert torch.equal(again[0].result.map, expected.map)
    assert again[0].e_step_resolution_angstrom > 0


def test_more_iterations_continue_a_finished_run(dataset, unbroken, tmp_path):
    _, particles, truth = dataset
    _, run = unbroken
    state = load_refine_state(run, SETTINGS, particles.particle_ids)
    assert state.iteration == 3
    longer = replace(SETTINGS, n_iterations=4)
    for f in run.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    more = list(iter_refine(particles, truth, longer, checkpoint_dir=tmp_path, resume=True))
    assert [p.iteration for p in more] == [4]
    assert load_refine_state(tmp_path, longer, particles.particle_ids).iteration == 4


def test_more_global_searches_on_resuming_end_as_the_unbroken_run(dataset, tmp_path):
    """One iteration (global) done with 1 global search: resumed with 2, the second
    iteration searches globally too and the run ends as an unbroken run with 2."""
    _, particles, truth = dataset
    two = replace(SETTINGS, n_global_iterations=2)
    expected = list(iter_refine(particles, truth, two, checkpoint_dir=tmp_path / "a"))
    list(islice(iter_refine(particles, truth, SETTINGS, checkpoint_dir=tmp_path / "b"), 1))
    resumed = list(iter_refine(particles, truth, two, checkpoint_dir=tmp_path / "b",
                               resume=True))
    assert [(p.iteration, p.global_search) for p in resumed] == [(2, True), (3, False)]
    assert [p.global_search for p in expected] == [True, True, False]
    torch.testing.assert_close(resumed[-1].result.map, expected[-1].result.map,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(resumed[-1].result.posterior.rotations,
                               expected[-1].result.posterior.rotations, atol=1e-9)


def test_global_searches_that_change_iterations_done_are_refused(dataset, unbroken):
    """Three iterations done, the first global: 0 or 2 global searches would have run
    them otherwise; the message says what the run did."""
    _, particles, _ = dataset
    _, run = unbroken
    for n_global in (0, 2):
        with pytest.raises(InputError, match=r"n_global_iterations.*expected 1: 1 of the 3"):
            load_refine_state(run, replace(SETTINGS, n_global_iterations=n_global),
                              particles.particle_ids)


def test_other_settings_or_particles_are_refused(dataset, unbroken):
    _, particles, truth = dataset
    _, run = unbroken
    with pytest.raises(InputError, match="settings.*batch_size"):
        next(iter_refine(particles, truth, replace(SETTINGS, batch_size=50), checkpoint_dir=run,
                         resume=True))
    with pytest.raises(InputError, match="particles"):
        next(iter_refine(particles.subset(np.arange(150)), truth, SETTINGS, checkpoint_dir=run,
                         resume=True))
    with pytest.raises(InputError, match="iteration"):
        load_refine_state(run, replace(SETTINGS, n_iterations=2), particles.particle_ids)


def test_truncated_checkpoint_is_named(dataset, unbroken, tmp_path):
    _, particles, truth = dataset
    _, run = unbroken
    data = (run / STATE_FILE).read_bytes()
    (tmp_path / STATE_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=STATE_FILE):
        load_refine_state(tmp_path, SETTINGS, particles.particle_ids)


def test_cli_resume(dataset, tmp_path, capsys):
    data, particles, truth = dataset
    initial = tmp_path / "initial.mrc"
    write_volume(initial, truth.numpy(), particles.pixel_size_angstrom)
    base = ["train", str(data / "particles.star"), "--recipe", "relion-refine", "-o",
            str(tmp_path / "run"), "--initial-map", str(initial), "--max-order", "2",
            "--global-iterations", "1", "--device", "cpu"]
    assert main([*base, "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main([*base, "--epochs", "2", "--resume"]) == 0
    err = capsys.readouterr().err
    assert "iteration 2/2" in err and "iteration 1/2" not in err
    assert (tmp_path / "run" / STATE_FILE).is_file()
    assert read_volume(tmp_path / "run" / "volumes" / "map.mrc")[0].shape == (32, 32, 32)
    assert main(["train", str(data / "particles.star"), "--recipe", "fstdiff", "-o",
                 str(tmp_path / "v"), "--resume"]) == 2
    assert "--resume" in capsys.readouterr().err
