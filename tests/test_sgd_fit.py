"""Tests for cryoviz.sgd_fit: the gold-standard voxel map fitted by Adam."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryoviz.backprojection import wiener_regularizer
from cryoviz.sgd_fit import SGDProgress, half_map_fsc, iter_fit_voxel_sgd
from tests._phantoms import backproject, fsc_crossing, simulate_dataset


def _fit(data, **kwargs):
    images = data.images

    def read(index: np.ndarray) -> torch.Tensor:
        return images[torch.as_tensor(index)]

    return list(iter_fit_voxel_sgd(
        read, data.rotations, data.pixel_size_angstrom, data.half_set.numpy(),
        shifts_angstrom=data.shifts_angstrom, ctf=data.ctf, **kwargs,
    ))


def test_half_map_fsc_basic():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(16, 16, 16, generator=gen, dtype=torch.float64)
    b = torch.randn(16, 16, 16, generator=gen, dtype=torch.float64)
    assert torch.allclose(half_map_fsc(a, a), torch.ones(9, dtype=torch.float64))
    assert torch.allclose(half_map_fsc(a, -2 * a), -torch.ones(9, dtype=torch.float64))
    assert float(half_map_fsc(a, b)[2:].abs().max()) < 0.3


def test_sgd_fit_reaches_wiener_resolution():
    box, epochs = 24, 4
    data = simulate_dataset(box, 2000, seed=9, snr=0.1, with_ctf=True)
    progress = _fit(data, epochs=epochs, seed=0)
    assert len(progress) == epochs
    assert all(isinstance(p, SGDProgress) for p in progress)
    assert [p.epoch for p in progress] == list(range(1, epochs + 1))
    losses = [p.loss for p in progress]
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    last = progress[-1]
    assert last.half_maps.shape == (2, box, box, box) and last.half_maps.dtype == torch.float32
    assert last.half_fsc.shape == (box // 2 + 1,)
    assert torch.allclose(last.half_fsc.double(),
                          half_map_fsc(last.half_maps[0], last.half_maps[1]), atol=1e-5)
    sgd_curve = half_map_fsc(last.half_maps.mean(dim=0), data.truth)

    halves = [backproject(data, torch.nonzero(data.half_set == h).squeeze(1)) for h in (0, 1)]
    half_fsc = half_map_fsc(halves[0].reconstruct(), halves[1].reconstruct())
    full = halves[0].merged(halves[1])
    wiener = full.reconstruct(wiener_regularizer(full.mean_weight_per_shell(), half_fsc))
    wiener_curve = half_map_fsc(wiener, data.truth)

    f_sgd = fsc_crossing(sgd_curve, 0.5, box)
    f_wiener = fsc_crossing(wiener_curve, 0.5, box)
    assert f_wiener > 0.15  # the data do carry signal well beyond the first shells
    assert f_sgd >= 0.85 * f_wiener, (f_sgd, f_wiener, sgd_curve, wiener_curve)


@pytest.fixture
def deterministic_torch():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(previous)


def test_sgd_fit_is_deterministic(deterministic_torch):
    # Bitwise reproducibility needs torch's deterministic mode: with several CPU threads
    # the scatter-add in the backward of the slice gather sums in a varying order
    # (differences ~1e-6 relative).
    data = simulate_dataset(12, 200, seed=11, snr=0.5, with_ctf=True, max_shift_px=1.0)
    first = _fit(data, epochs=2, batch_size=64, seed=3)
    second = _fit(data, epochs=2, batch_size=64, seed=3)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a.half_maps, b.half_maps)
        assert a.loss == b.loss
    other = _fit(data, epochs=1, batch_size=64, seed=4)
    assert not torch.equal(other[0].half_maps, first[0].half_maps)


def test_sgd_fit_reproducible_to_rounding_without_deterministic_mode():
    data = simulate_dataset(12, 200, seed=11, snr=0.5, with_ctf=True, max_shift_px=1.0)
    first = _fit(data, epochs=1, batch_size=64, seed=3)[0].half_maps
    second = _fit(data, epochs=1, batch_size=64, seed=3)[0].half_maps
    assert torch.allclose(first, second, rtol=0, atol=1e-4 * float(first.abs().max()))


@pytest.mark.parametrize("box", [16, 17])
def test_sgd_fit_noise_free_converges_on_low_shells(box):
    data = simulate_dataset(box, 400, seed=13)
    progress = _fit(data, epochs=3, batch_size=50, seed=0)
    curve = half_map_fsc(progress[-1].half_maps.mean(dim=0), data.truth)
    assert float(curve[: box // 4].min()) > 0.9, curve
