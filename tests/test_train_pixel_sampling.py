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


def _reference_mean_solution(weight: np.ndarray, floor: float, fraction: float) -> np.ndarray:
    """Probabilities by plain bisection on the scale, in float64 (60 halvings)."""
    low, high = 0.0, 1.0e6
    for _ in range(60):
        middle = 0.5 * (low + high)
        if np.clip(middle * weight, floor, 1.0).mean() < fraction:
            low = middle
        else:
            high = middle
    return np.clip(high * weight, floor, 1.0)


def test_the_scale_matches_a_plain_bisection_at_every_fraction():
    """The scale against a 60-step bisection on the scale itself (not its logarithm),
    written independently, from fractions where few coefficients clip to ones where
    most sit at 1."""
    inside = _inside()
    ctf = _ctf(5)
    amp = ctf.abs()[:, inside].double().numpy()
    for fraction in (0.1, 0.3, 0.5, 0.8, 0.95):
        prob = draw_probabilities(fraction, inside, ctf, batch=5)[:, inside].double().numpy()
        for image in range(5):
            weight = amp[image] / amp[image].mean()
            expected = _reference_mean_solution(weight, FLOOR * fraction, fraction)
            np.testing.assert_allclose(prob[image], expected, rtol=2e-6, atol=1e-7)
            assert abs(prob[image].mean() - fraction) < 1e-6


def test_an_image_that_cannot_reach_the_fraction_gets_the_closest_probabilities():
    """A CTF that is zero on 70 % of the coefficients cannot average 0.5 (its most is
    0.3 + 0.7 x 0.05): its non-zero coefficients get probability 1, the others the
    floor. An all-zero CTF gives the floor everywhere, and nothing is NaN."""
    inside = _inside()
    ctf = _ctf(3)
    n = int(inside.sum())
    sparse = ctf[0][inside].clone()
    sparse[: int(0.7 * n)] = 0.0
    ctf[0][inside] = sparse
    ctf[1] = 0.0
    prob = draw_probabilities(0.5, inside, ctf, batch=3)
    assert not torch.isnan(prob).any()
    inner = prob[:, inside]
    nonzero = ctf[0][inside] != 0
    assert torch.all(inner[0][nonzero] == 1.0)
    torch.testing.assert_close(inner[0][~nonzero], torch.full((int((~nonzero).sum()),), 0.05))
    torch.testing.assert_close(inner[1], torch.full((n,), 0.05))
    torch.testing.assert_close(inner[2].mean(), torch.tensor(0.5), rtol=1e-6, atol=0)


def test_the_scales_found_once_per_particle_give_each_batch_its_probabilities(monkeypatch):
    """``particle_scales`` (what a run computes once, chunk by chunk) gives the same
    probabilities as solving each batch on its own, for any subset of the
    particles."""
    import cryoviz.train.pixel_sampling as sampling

    # 7 particles in chunks of 2, 2, 2 and 1
    monkeypatch.setattr(sampling, "CHUNK_COEFFICIENTS", 2 * BOX * (BOX // 2 + 1) + 1)
    n = 7
    params = CTFParams.from_arrays(defocus_u_angstrom=np.linspace(6000.0, 30000.0, n),
                                   defocus_v_angstrom=np.linspace(5000.0, 28000.0, n),
                                   astigmatism_angle_deg=np.linspace(0.0, 90.0, n),
                                   voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.1)
    inside = _inside()
    scales = sampling.particle_scales(0.7, inside, params, BOX, 2.0, "cpu")
    assert scales.shape == (n,) and scales.dtype == torch.float32
    assert len(set(scales.tolist())) == n  # each particle its own
    batch = torch.tensor([5, 0, 3])
    ctf = compute_ctf_2d(params.subset(batch), BOX, 2.0, rfft=True)
    cached = draw_probabilities(0.7, inside, ctf, batch=3, scales=scales[batch])
    torch.testing.assert_close(cached, draw_probabilities(0.7, inside, ctf, batch=3))
    torch.testing.assert_close(cached[:, inside].mean(dim=1), torch.full((3,), 0.7),
                               rtol=1e-6, atol=0)
