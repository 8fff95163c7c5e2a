"""The simulator: ensembles, poses, CTF, noise and ground truth on disk."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryoviz.errors import InputError
from cryoviz.fourier import centered_rfft2, frequency_grid_2d
from cryoviz.geometry import viewing_direction
from cryoviz.imaging import render_images
from cryoviz.io.mrc import open_stack, read_volume, write_volume
from cryoviz.io.particles import ImageSource, load_particles
from cryoviz.metrics.fsc import fsc
from cryoviz.simulate import SimulationConfig, simulate

SMALL = dict(box_size=32, pixel_size_angstrom=4.0, seed=2)


def test_discrete_mixture_writes_states_labels_and_star(tmp_path):
    config = SimulationConfig(n_particles=300, states=("4ake", "1ake"), weights=(3.0, 1.0),
                              snr=0.5, **SMALL)
    out = simulate(config, tmp_path)
    truth = np.load(out / "truth" / "truth.npz")
    fraction_open = float(np.mean(truth["labels"] == 0))
    assert 0.65 < fraction_open < 0.85  # weights 3:1
    open_map, apix = read_volume(out / "truth" / "state_0.mrc")
    closed_map, _ = read_volume(out / "truth" / "state_1.mrc")
    assert apix == pytest.approx(4.0) and open_map.shape == (32,) * 3
    curve = fsc(torch.as_tensor(open_map), torch.as_tensor(closed_map))
    assert curve.fsc[1:4].min() > 0.5  # same protein
    assert curve.resolution_px(0.5) > 3.0  # but different conformations
    particles = load_particles(out / "particles.star")
    assert len(particles) == 300 and particles.box_size == 32
    np.testing.assert_allclose(particles.rotations, truth["rotations"], atol=1e-5)
    np.testing.assert_allclose(particles.shifts_angstrom, truth["shifts_angstrom"], atol=1e-4)
    np.testing.assert_allclose(particles.ctf.defocus_u_angstrom.numpy(),
                               truth["ctf_defocus_u_angstrom"], rtol=1e-6)


def test_noise_free_images_are_projections_of_the_true_map(tmp_path):
    config = SimulationConfig(n_particles=16, snr=1e8, **SMALL)
    out = simulate(config, tmp_path)
    particles = load_particles(out / "particles.star")
    images = ImageSource(particles).images(np.arange(16))
    volume, _ = read_volume(out / "truth" / "state_0.mrc")
    rendered = render_images(
        torch.as_tensor(volume), torch.as_tensor(particles.rotations, dtype=torch.float32),
        4.0, torch.as_tensor(particles.shifts_angstrom, dtype=torch.float32),
        particles.ctf, pad_factor=3.0,
    )
    # Compare inside the Nyquist circle: the analytic projection also has the corner
    # frequencies of the square image spectrum, which a map (band-limited to its
    # cube) sliced at a tilt does not reach. Measured: 1.4% inside, 6.9% with corners.
    ky, kx = frequency_grid_2d(32)
    inside = torch.sqrt(kx**2 + ky**2) <= 0.5
    a, b = centered_rfft2(images) * inside, centered_rfft2(rendered) * inside
    err = float((a - b).norm() / a.norm())
    assert err < 0.025, err


def test_snr_and_noise_sigma(tmp_path):
    config = SimulationConfig(n_particles=200, snr=0.1, **SMALL)
    out = simulate(config, tmp_path)
    clean = simulate(SimulationConfig(n_particles=200, snr=1e8, **SMALL), tmp_path / "clean")
    noisy_images = open_stack(out / "particles.mrcs").read(np.arange(200))
    clean_images = open_stack(clean / "particles.mrcs").read(np.arange(200))
    noise = noisy_images - clean_images
    measured_snr = clean_images.var(axis=(1, 2)).mean() / noise.var()
    assert measured_snr == pytest.approx(0.1, rel=0.05)
    sigma = float(np.load(out / "truth" / "truth.npz")["noise_sigma"])
    assert noise.std() == pytest.approx(sigma, rel=0.02)


def test_continuous_path_coordinates_and_truth_maps(tmp_path):
    config = SimulationConfig(n_particles=200, states=("4ake", "1ake"), ensemble="continuous",
                              n_path_levels=20, n_path_volumes=5, snr=1.0, **SMALL)
    out = simulate(config, tmp_path)
    truth = np.load(out / "truth" / "truth.npz")
    t = truth["path_coordinate"]
    assert t.min() >= 0 and t.max() <= 1 and len(np.unique(t)) > 10
    maps = [read_volume(out / "truth" / f"path_{k:02d}.mrc")[0] for k in range(5)]
    first = torch.as_tensor(maps[0])
    # maps move away from the start monotonically along the path
    distance = [float((torch.as_tensor(m) - first).norm()) for m in maps]
    assert all(b > a for a, b in zip(distance, distance[1:], strict=False)), distance


def test_preferred_orientation_concentrates_views(tmp_path):
    config = SimulationConfig(n_particles=400, pose_distribution="preferred",
                              preferred_fraction=0.5, preferred_kappa=20.0, snr=1.0, **SMALL)
    out = simulate(config, tmp_path)
    directions = viewing_direction(torch.as_tensor(np.load(out / "truth" / "truth.npz")
                                                   ["rotations"]))
    near_pole = float((directions[:, 2] > 0.9).float().mean())
    # uniform: P(cos > 0.9) = 0.05; half the particles within ~18 degrees of +z
    assert 0.4 < near_pole < 0.65


def test_simulation_from_a_map(tmp_path):
    volume = np.zeros((32, 32, 32), np.float32)
    volume[12:20, 14:18, 10:22] = 1.0
    write_volume(tmp_path / "box.mrc", volume, 4.0)
    config = SimulationConfig(n_particles=20, states=(str(tmp_path / "box.mrc"),), snr=1.0,
                              **SMALL)
    out = simulate(config, tmp_path / "data")
    np.testing.assert_array_equal(read_volume(out / "truth" / "state_0.mrc")[0], volume)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        (dict(ensemble="continuous", states=("4ake",)), "states"),
        (dict(states=("4ake", "1ake"), weights=(1.0,)), "weights"),
        (dict(snr=0.0), "snr"),
        (dict(states=("no_such_file.pdb",)), "no_such_file.pdb"),
        (dict(pose_distribution="sideways"), "pose_distribution"),
    ],
)
def test_bad_settings_are_clear_errors(tmp_path, changes, field):
    settings = dict(n_particles=4, **SMALL) | changes
    with pytest.raises(InputError, match=field):
        simulate(SimulationConfig(**settings), tmp_path)


def test_map_with_wrong_box_is_rejected(tmp_path):
    write_volume(tmp_path / "small.mrc", np.zeros((16, 16, 16), np.float32), 4.0)
    config = SimulationConfig(n_particles=4, states=(str(tmp_path / "small.mrc"),), **SMALL)
    with pytest.raises(InputError, match="small.mrc.*box size"):
        simulate(config, tmp_path / "d")
