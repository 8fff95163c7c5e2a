"""The coefficients a training step draws (``Recipe.pixel_fraction``)."""

from __future__ import annotations

import numpy as np
import torch

from cryoviz.ctf import CTFParams, compute_ctf_2d
from cryoviz.fourier import frequency_grid_2d
from cryoviz.train.pixel_sampling import FLOOR, draw_probabilities

BOX = 32


def _inside():
    ky, kx = frequency_grid_2d(BOX, rfft=True)
    return (ky**2 + kx**2).sqrt() < 0.5


def _ctf(n):
    params = CTFParams.from_arrays(defocus_u_angstrom=np.linspace(8000.0, 25000.0, n),
                                   defocus_v_angstrom=np.linspace(7500.0, 24000.0, n),
                                   astigmatism_angle_deg=0.0, voltage_kv=300.0, cs_mm=2.7,
                                   amplitude_contrast=0.1)
    return compute_ctf_2d(params, BOX, 2.0, rfft=True)


def test_without_ctfs_every_coefficient_inside_nyquist_has_the_fraction():
    inside = _inside()
    prob = draw_probabilities(0.3, inside, None, batch=4)
    assert prob.shape == (4, *inside.shape)
    torch.testing.assert_close(prob[:, inside], torch.full((4, int(inside.sum())), 0.3))
    assert torch.all(prob[:, ~inside] == 0)


def test_with_ctfs_the_probability_follows_the_ctf_amplitude():
    inside = _inside()
    ctf = _ctf(3)
    prob = draw_probabilities(0.4, inside, ctf, batch=3)
    assert prob.shape == ctf.shape and torch.all(prob[:, ~inside] == 0)
    inner = prob[:, inside]
    assert float(inner.min()) >= FLOOR * 0.4 - 1e-7 and float(inner.max()) <= 1.0
    amp = ctf.abs()[:, inside]
    free = (inner > FLOOR * 0.4 + 1e-6) & (inner < 1.0 - 1e-6)  # neither bound clips
    for image in range(3):  # proportional to |CTF| within each image...
        ratio = inner[image][free[image]] / amp[image][free[image]]
        assert float(ratio.std() / ratio.mean()) < 1e-5
    torch.testing.assert_close(inner.mean(dim=1), torch.full((3,), 0.4), rtol=1e-5, atol=0)
    # near a CTF zero rarely, near a maximum often
    assert float(inner[amp < 0.05].max()) < 0.1 and float(inner[amp > 0.95].min()) > 0.55


def test_a_fraction_near_one_still_averages_the_fraction():
    """At 0.8 many coefficients would pass probability 1 at ``0.8 |CTF| / mean|CTF|``;
    clipped there, the images would read fewer than 80 % of their coefficients. The
    scale per image makes up for it."""
    inside = _inside()
    ctf = _ctf(4)
    prob = draw_probabilities(0.8, inside, ctf, batch=4)[:, inside]
    amp = ctf.abs()[:, inside]
    unscaled = (0.8 * amp / amp.mean(dim=1, keepdim=True)).clamp(FLOOR * 0.8, 1.0)
    assert torch.all(unscaled.mean(dim=1) < 0.77)  # what the clipping alone would give
    assert torch.all((prob == 1.0).float().mean(dim=1) > 0.2)
    torch.testing.assert_close(prob.mean(dim=1), torch.full((4,), 0.8), rtol=1e-5, atol=0)
    # and still more often where the CTF is larger
    order = amp.argsort(dim=1)
    assert torch.all(prob.gather(1, order).diff(dim=1) >= 0)


def test_the_draw_divided_by_its_probability_estimates_the_full_sum():
    """Monte Carlo: the mean over draws of ``sum(x * drawn / p)`` is ``sum(x)`` within
    its standard error, for a fraction whose probabilities clip at both bounds."""
    inside = _inside()
    ctf = _ctf(2)
    prob = draw_probabilities(0.5, inside, ctf, batch=2)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, *inside.shape, generator=gen, dtype=torch.float64) * inside
    full = x.sum(dim=(-2, -1))
    draws = 4000
    keys = torch.rand(draws, *prob.shape, generator=gen)
    drawn = keys < prob
    estimates = (x * drawn / prob.double().clamp(min=1e-12)).sum(dim=(-2, -1))  # (draws, 2)
    error = estimates.mean(dim=0) - full
    standard_error = estimates.std(dim=0) / draws**0.5
    assert torch.all(error.abs() < 4 * standard_error)
    assert float((drawn.sum(dim=(-2, -1)).double() / inside.sum()).mean()) < 0.55
