"""The common start of the EM refinements: checked, low-passed, scaled map; shell limits."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from cryoviz.errors import InputError
from cryoviz.fourier import lowpass_volume
from cryoviz.imaging import images_to_fourier
from cryoviz.inference.em_start import (
    assemble_rows,
    image_batches,
    initial_noise,
    prepare_em_start,
)
from cryoviz.io import ImageSource, load_particles, read_volume
from cryoviz.noise import half_plane_shells
from cryoviz.simulate import SimulationConfig, simulate


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("em_start")
    simulate(SimulationConfig(n_particles=60, box_size=24, pixel_size_angstrom=4.0, snr=10.0,
                              states=("4ake",), seed=5), folder)
    truth = torch.as_tensor(read_volume(folder / "truth" / "state_0.mrc")[0])
    return load_particles(folder / "particles.star"), truth


def test_limits_halves_and_scale(data):
    particles, truth = data
    em = prepare_em_start(particles, truth * 0.01, 24.0, 10.0, 0, torch.device("cpu"))
    # box 24 at 4 Å/px: shell k is 96/k Å; 10 Å -> shell 9, 24 Å -> shell 4
    assert em.cap == 9 and em.first_limit == 4
    assert em.half_maps.shape == (2, 24, 24, 24) and em.half_maps.dtype == torch.float64
    torch.testing.assert_close(em.half_maps[0], em.half_maps[1])
    assert sorted(np.unique(em.halves).tolist()) == [0, 1] and len(em.halves) == 60
    # the low-passed, 100x too small map is put back on the data's scale
    low = lowpass_volume(truth.double() * 0.01, 24.0, 4.0)
    assert float(em.half_maps[0].norm() / low.norm()) == pytest.approx(100.0, rel=0.2)
    no_limits = prepare_em_start(particles, truth, None, None, 0, torch.device("cpu"))
    assert no_limits.first_limit == no_limits.cap == no_limits.layout.n_shells - 1


def test_batches_cover_the_stack_in_order(data):
    particles, _ = data
    seen = [index for index, images in image_batches(particles, 25, torch.device("cpu"))
            if images.dtype == torch.float64 and images.shape[1:] == (24, 24)]
    assert np.array_equal(np.concatenate(seen), np.arange(60))
    assert [len(s) for s in seen] == [25, 25, 10]


def test_initial_noise_is_the_images_power_per_shell(data):
    particles, _ = data
    layout = half_plane_shells(24)
    sigma2 = initial_noise(particles, layout, 25, torch.device("cpu"))  # batches of 25, 25, 10
    with ImageSource(particles) as source:
        ft = images_to_fourier(source.images(np.arange(60)).double())
    power = layout.sums(ft.real ** 2 + ft.imag ** 2).sum(dim=0)
    expected = power / (2.0 * 60 * layout.count)
    torch.testing.assert_close(sigma2[1:], expected[1:])
    assert float(sigma2[0]) == float(sigma2[1])  # shell 0 (the mean) copies shell 1


def test_assemble_rows_puts_batches_back_in_particle_order():
    parts = [(np.array([4, 0]), torch.tensor([[4.0, 40.0], [0.0, 0.5]])),
             (np.array([2, 1, 3]), torch.tensor([[2.0, 20.0], [1.0, 10.0], [3.0, 30.0]]))]
    out = assemble_rows(parts, 5)
    torch.testing.assert_close(out[:, 0], torch.arange(5.0))
    assert out.shape == (5, 2) and out.dtype == torch.float32


def test_bad_input_is_a_clear_error(data):
    particles, truth = data
    with pytest.raises(InputError, match="initial_map"):
        prepare_em_start(particles, truth[:-1], None, None, 0, torch.device("cpu"))
    with pytest.raises(InputError, match="ctf"):
        prepare_em_start(replace(particles, ctf=None), truth, None, None, 0, torch.device("cpu"))
    bad = truth.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="finite"):
        prepare_em_start(particles, bad, None, None, 0, torch.device("cpu"))
