"""PPCA-EM pieces: the working box, the cached pass, the latent posterior, the M-step channels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryoviz.errors import InputError
from cryoviz.fourier import centered_irfft2, centered_rfft2, pad_center
from cryoviz.imaging import apply_shift_and_ctf
from cryoviz.inference.ppca_terms import (
    cache_transforms,
    latent_posterior,
    residual_channels,
    shell_sum,
    working_box,
)
from cryoviz.inference.subspace_ops import crop_images_fourier
from cryoviz.io import load_particles
from cryoviz.io.particles import ImageSource
from cryoviz.noise import half_plane_shells
from cryoviz.simulate import SimulationConfig, simulate


def test_working_box_from_resolution_or_default():
    box = working_box(64, 2.0, None, 8.0, 32)  # Nyquist of a 32 box at 4 Å/px is 8 Å
    assert (box.box_size, box.pixel_size_angstrom, box.k_max, box.last_shell) == (32, 4.0,
                                                                                 0.5, 16)
    box = working_box(64, 2.0, None, 16.0, 32)
    assert (box.box_size, box.k_max, box.last_shell) == (16, 0.5, 8)
    box = working_box(24, 2.0, None, None, 32)  # the default box, at most the data's
    assert (box.box_size, box.resolution_angstrom) == (24, 4.0)
    box = working_box(64, 2.0, 32, 16.0, 32)  # a given box, filtered below its Nyquist
    assert (box.k_max, box.last_shell) == (0.25, 8)
    with pytest.raises(InputError, match="resolution_angstrom"):
        working_box(64, 2.0, 16, 500.0, 32)


def test_latent_posterior_recovers_noise_free_coordinates():
    gen = torch.Generator().manual_seed(0)
    layout = half_plane_shells(16)
    n_pix = int(layout.pixels.numel())
    slices = torch.randn(5, 2, n_pix, generator=gen, dtype=torch.complex128)
    z_true = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    r = torch.einsum("bkp,bk->bp", slices, z_true.to(slices.dtype))
    tiny = torch.full((layout.n_shells,), 1e-8, dtype=torch.float64)
    mu, cov, ll, power = latent_posterior(slices, r, tiny, layout)
    torch.testing.assert_close(mu, z_true, atol=1e-6, rtol=0)
    assert float(cov.abs().max()) < 1e-6 and power.shape == (5, n_pix)
    # with unit noise the posterior is N(P^-1 b, P^-1), P = I + Re A^H W A
    unit = torch.ones(layout.n_shells, dtype=torch.float64)
    mu, cov, ll, _ = latent_posterior(slices, r, unit, layout)
    w = layout.weight.to(slices.dtype)
    precision = torch.eye(2) + torch.einsum("bkp,blp,p->bkl", slices.conj(), slices, w).real
    b = torch.einsum("bkp,bp,p->bk", slices.conj(), r, w).real
    torch.testing.assert_close(mu, torch.linalg.solve(precision, b))
    torch.testing.assert_close(cov, torch.linalg.inv(precision))
    assert torch.isfinite(ll).all()


def test_shell_sum_adds_weighted_powers_per_shell():
    layout = half_plane_shells(8)
    power = torch.ones(3, int(layout.pixels.numel()), dtype=torch.float64)
    torch.testing.assert_close(shell_sum(power, layout), 3.0 * layout.count)


def test_residual_channels_pack_right_hand_sides_and_weights():
    gen = torch.Generator().manual_seed(1)
    box = working_box(16, 4.0, 16, None, 32)
    resid = centered_rfft2(torch.randn(2, 16, 16, generator=gen, dtype=torch.float64))
    mu = torch.tensor([[0.5], [2.0]], dtype=torch.float64)
    moment = torch.tensor([[[3.0]], [[7.0]]], dtype=torch.float64)
    out = residual_channels(resid, mu, moment, None, None, None, [(0, 0)], box, 32)
    assert out.shape == (2, 2, 32, 17)
    big = centered_rfft2(pad_center(centered_irfft2(resid, 16), 32, ndim=2))
    torch.testing.assert_close(out[0], big * mu[:, 0, None, None])
    torch.testing.assert_close(out[1].real, moment[:, 0, 0, None, None].expand(2, 32, 17))
    assert float(out[1].imag.abs().max()) == 0.0  # one pair: its partner channel is empty


def test_cache_transforms_keeps_the_cropped_images_and_their_modulation(tmp_path):
    folder = simulate(SimulationConfig(n_particles=12, box_size=16, pixel_size_angstrom=6.0,
                                       snr=1.0, seed=2), tmp_path)
    ps = load_particles(folder / "particles.star")
    box = working_box(16, 6.0, 8, None, 32)
    halves = np.arange(12) % 2
    cached = cache_transforms(ps, box, 2.0, halves, 5, "cpu", True, 2**30)
    with ImageSource(ps) as source:
        images = source.images(np.arange(12)).double()
    torch.testing.assert_close(cached.transforms,
                               crop_images_fourier(images, 8).to(torch.complex64))
    ones = torch.ones(12, 8, 5, dtype=torch.complex128)
    expected = apply_shift_and_ctf(ones, box.pixel_size_angstrom,
                                   torch.as_tensor(ps.shifts_angstrom), ps.ctf)
    torch.testing.assert_close(cached.modulation, expected.to(torch.complex64))
    assert cached.padded_ctf is not None and cached.padded_ctf.shape == (12, 16, 9)
    assert cached.consensus is not None and len(cached.consensus) == 2
    small = cache_transforms(ps, box, 2.0, halves, 5, "cpu", False, 0)
    assert small.consensus is None and small.padded_ctf is None  # nothing fits in 0 bytes
