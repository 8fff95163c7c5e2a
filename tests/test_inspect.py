"""Particle inspector: a trained model explains its images, a wrong pose does not."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cryoviz.analysis.inspect import (
    inspect_particles,
    orientation_density,
    run_particles,
    viewing_directions,
)
from cryoviz.errors import InputError
from cryoviz.inference.posterior import PosePosterior, write_pose_posterior
from cryoviz.io import load_particles
from cryoviz.simulate import SimulationConfig, simulate
from cryoviz.train.evaluate import load_run
from cryoviz.train.loop import train
from cryoviz.train.recipes import get_recipe
from tests._phantoms import random_rotations


@pytest.fixture(scope="module")
def voxel_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    simulate(SimulationConfig(n_particles=400, box_size=16, pixel_size_angstrom=6.0, snr=10.0,
                              states=("4ake",), seed=3), root / "data")
    particles = load_particles(root / "data" / "particles.star")
    train(particles, get_recipe("voxel-homogeneous", epochs=6, batch_size=32, lr=0.05,
                                     box=12),
          root / "run")
    return load_run(root / "run")


def test_residual_is_smaller_than_image_only_at_the_right_pose(voxel_run):
    index = np.arange(0, 400, 25)
    result = inspect_particles(voxel_run, index)
    m = len(index)
    assert result.images.shape == (m, 12, 12) and result.projections.shape == (m, 12, 12)
    assert result.pixel_size_angstrom == pytest.approx(6.0 * 16 / 12)
    np.testing.assert_array_equal(result.particle_ids, index)
    np.testing.assert_allclose(result.residuals, result.images - result.projections)
    assert result.z is None
    good = result.residual_ratio()
    assert np.all(good < 0.7), good

    particles = run_particles(voxel_run)
    wrong = dataclasses.replace(
        particles, rotations=random_rotations(len(particles), seed=11).numpy())
    bad = inspect_particles(voxel_run, index, particles=wrong).residual_ratio()
    assert np.median(bad) > 0.95, bad
    np.testing.assert_allclose(
        np.linalg.norm(result.viewing_directions, axis=1), 1.0, atol=1e-12)


def test_pose_posterior_in_the_run_folder_replaces_the_poses(voxel_run):
    particles = run_particles(voxel_run)
    n = len(particles)
    rot = random_rotations(n, seed=5).numpy()
    posterior = PosePosterior(
        rotations=rot, shifts_angstrom=np.zeros((n, 2)), angular_spread_deg=np.ones(n),
        shift_spread_angstrom=np.ones(n), topk_rotations=rot[:, None],
        topk_shifts_angstrom=np.zeros((n, 1, 2)), topk_weights=np.ones((n, 1)),
        particle_ids=np.arange(n))
    path = write_pose_posterior(voxel_run.path, posterior)
    try:
        used = run_particles(voxel_run)
        np.testing.assert_allclose(used.rotations, rot)
        result = inspect_particles(voxel_run, [3, 7])
        np.testing.assert_allclose(result.viewing_directions, rot[[3, 7], 2, :])
    finally:
        path.unlink()


def test_bad_indices_are_input_errors(voxel_run):
    with pytest.raises(InputError, match="indices"):
        inspect_particles(voxel_run, [400])
    with pytest.raises(InputError, match="indices"):
        inspect_particles(voxel_run, [0.5])


def test_viewing_direction_is_lab_z_in_the_particle_frame():
    rot = random_rotations(50, seed=2).numpy()
    d = viewing_directions(rot)
    # R d = e_z: the direction maps onto the lab projection axis
    np.testing.assert_allclose(np.einsum("nij,nj->ni", rot, d),
                               np.tile([0.0, 0.0, 1.0], (50, 1)), atol=1e-12)
    with pytest.raises(InputError):
        viewing_directions(np.zeros((3, 2, 2)))


def test_orientation_density_is_flat_for_uniform_and_peaked_for_top_views():
    uniform = viewing_directions(random_rotations(20000, seed=4).numpy())
    dens = orientation_density(uniform, n_bins=6)
    assert dens.density.shape == (6, 12) and dens.counts.sum() == 20000
    assert dens.density.mean() == pytest.approx(1.0)
    assert np.all(np.abs(dens.density - 1.0) < 0.3), dens.density
    rng = np.random.default_rng(0)
    top = np.column_stack([rng.normal(0, 0.05, (500, 2)), np.ones(500)])
    peaked = orientation_density(top, n_bins=6)
    assert peaked.density[-1].sum() == pytest.approx(72.0)
    assert peaked.at(np.array([[0.0, 0.0, 1.0]]))[0] > 1.0
    assert peaked.at(np.array([[0.0, 0.0, -1.0]]))[0] == 0.0
    with pytest.raises(InputError):
        orientation_density(np.zeros((0, 3)))
