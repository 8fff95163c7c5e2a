"""Image encoders: the circular mask, real-space and Hartley inputs, the latent table."""

from __future__ import annotations

import pytest
import torch

from cryoviz.fourier import centered_fft2
from cryoviz.train.encoders import LatentTable, MLPEncoder, circular_mask


def _hartley(images: torch.Tensor) -> torch.Tensor:
    ft = centered_fft2(images) / images.shape[-1]
    return ft.real - ft.imag


def test_circular_mask_is_a_disc_around_the_centre():
    mask = circular_mask(16)
    assert mask.shape == (16, 16) and bool(mask[8, 8]) and bool(mask[8, 0])
    assert not bool(mask[0, 0]) and not bool(mask[0, 1])
    assert int(mask.sum()) == int(circular_mask(16, 8.0).sum())
    assert int(circular_mask(16, 2.0).sum()) == 13  # |k|^2 <= 4 on the integer grid


def test_hartley_input_is_the_real_encoder_on_the_transformed_image():
    """The unitary centred Hartley transform is its own inverse (even box): a Hartley
    encoder fed H(x) computes exactly what the real-space encoder with the same
    weights computes on x (the two discs are the same index set)."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(5, 16, 16, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(_hartley(_hartley(images)), images)
    real = MLPEncoder(16, 3, width=12, depth=2).double()
    hartley = MLPEncoder(16, 3, width=12, depth=2, input_domain="hartley").double()
    hartley.load_state_dict(real.state_dict())
    for enc in (real, hartley):
        enc.input_scale.fill_(2.0)
    mu_r, logvar_r = real(images)
    mu_h, logvar_h = hartley(_hartley(images))
    torch.testing.assert_close(mu_h, mu_r)
    torch.testing.assert_close(logvar_h, logvar_r)
    assert not torch.allclose(hartley(images)[0], mu_r)  # a different input otherwise


def test_input_scale_and_deterministic_encoder():
    enc = MLPEncoder(16, 2, width=8, depth=1, variational=False)
    images = torch.randn(4, 16, 16)
    mu, logvar = enc(images)
    assert mu.shape == (4, 2) and logvar is None
    enc.input_scale.fill_(3.0)
    torch.testing.assert_close(enc(3.0 * images)[0], mu)
    with pytest.raises(ValueError, match="input_domain"):
        MLPEncoder(16, 2, input_domain="fourier")


def test_latent_table_returns_its_rows():
    table = LatentTable(10, 3, seed=1)
    index = torch.tensor([4, 0, 4])
    mu, logvar = table(None, index)
    assert logvar is None
    torch.testing.assert_close(mu, table.table[index])
