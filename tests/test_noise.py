"""Tests for cryoviz.noise: SNR convention and per-shell power spectra."""

from __future__ import annotations

import math

import pytest
import torch

from cryoviz.fourier import centered_rfft2, shell_index_2d
from cryoviz.imaging import render_images
from cryoviz.noise import add_white_noise, noise_sigma_for_snr, per_shell_power, sample_shell_noise
from tests._phantoms import blob_volume, random_blobs, random_rotations


@pytest.mark.parametrize("snr", [0.05, 0.1, 1.0])
def test_noise_sigma_gives_requested_snr(snr):
    box = 32
    vol = blob_volume(random_blobs(box, n_blobs=6, seed=0, sigma_range=(1.5, 3.0)), box)
    clean = render_images(vol, random_rotations(64, seed=1), 1.0)
    sigma = noise_sigma_for_snr(clean, snr)
    noisy = add_white_noise(clean, sigma, generator=torch.Generator().manual_seed(2))
    assert noisy.shape == clean.shape and noisy.dtype == clean.dtype
    noise = noisy - clean
    measured = float(clean.var(dim=(-2, -1)).mean() / noise.var())
    assert measured == pytest.approx(snr, rel=0.05)
    # sigma scales as 1 / sqrt(snr)
    assert noise_sigma_for_snr(clean, snr / 4) == pytest.approx(2 * sigma, rel=1e-9)
    with pytest.raises(ValueError):
        noise_sigma_for_snr(clean, 0.0)


def test_add_white_noise_is_reproducible_with_a_generator():
    clean = torch.zeros(2, 8, 8)
    a = add_white_noise(clean, 1.0, generator=torch.Generator().manual_seed(5))
    b = add_white_noise(clean, 1.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


@pytest.mark.parametrize("box", [32, 33])
def test_per_shell_power_of_white_noise_is_flat(box):
    sigma = 0.7
    gen = torch.Generator().manual_seed(0)
    noise = sigma * torch.randn(400, box, box, generator=gen, dtype=torch.float64)
    power = per_shell_power(noise)
    assert power.shape == (box // 2 + 1,)
    expect = box**2 * sigma**2
    ratio = power[1:] / expect
    assert float((ratio - 1).abs().max()) < 0.1
    assert float(power[0] / expect) == pytest.approx(1.0, abs=0.35)  # one sample per image


def test_per_shell_power_puts_a_cosine_in_its_shell():
    box, f = 32, 5
    x = torch.arange(box, dtype=torch.float64) - box // 2
    img = torch.cos(2 * math.pi * f * x / box).expand(1, box, box)
    power = per_shell_power(img)
    n_in_shell = int((shell_index_2d(box, rfft=True) == f).sum())
    # one rfft sample (kx = f, ky = 0) holds D^2 / 2
    assert float(power[f]) == pytest.approx((box**2 / 2) ** 2 / n_in_shell, rel=1e-10)
    others = torch.cat([power[:f], power[f + 1:]])
    assert float(others.abs().max()) < 1e-12 * float(power[f])


@pytest.mark.parametrize("box", [32, 33])
def test_sample_shell_noise_has_requested_spectrum(box):
    n_shells = box // 2 + 1
    shells = torch.arange(n_shells, dtype=torch.float64)
    sigma2 = 0.2 + 2.0 * torch.exp(-shells / 4.0)  # falls 10x across the band
    noise = sample_shell_noise(
        (400, box, box), sigma2, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    assert noise.shape == (400, box, box) and noise.dtype == torch.float64
    ratio = per_shell_power(noise) / (box**2 * sigma2)
    # away from the DC shell (one sample) and the corners (shell D // 2 only partly filled)
    assert float((ratio[1:n_shells - 1] - 1).abs().max()) < 0.1
    # white input level -> white output
    flat = sample_shell_noise((200, box, box), torch.full((n_shells,), 0.5, dtype=torch.float64),
                              generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert float(flat.var()) == pytest.approx(0.5, rel=0.05)


@pytest.mark.parametrize("box", [16, 17])
def test_half_plane_shells_weight_each_coefficient_once(box):
    from cryoviz.noise import half_plane_shells

    layout = half_plane_shells(box)
    gen = torch.Generator().manual_seed(2)
    images = torch.randn(400, box, box, generator=gen, dtype=torch.float64)
    ft = centered_rfft2(images)
    per_shell = layout.sums(ft.abs() ** 2).mean(dim=0) / layout.count.clamp(min=1e-30)
    # white noise of variance 1: every coefficient has power D^2
    inner = per_shell[1: box // 2]
    assert torch.allclose(inner, torch.full_like(inner, box**2), rtol=0.1)
    assert float(layout.count[0]) == 0.0
    limited = half_plane_shells(box, last_shell=3)
    assert int(limited.shell.max()) == 3 and float(limited.count[4:].sum()) == 0.0
