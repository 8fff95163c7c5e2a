"""Tests for cryoviz.metrics.fsc."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cryoviz.metrics import FSCCurve, fsc, soft_spherical_mask


def blob_phantom(box: int, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    """Sum of Gaussian blobs of different sizes, origin at D // 2, smooth spectrum."""
    gen = torch.Generator().manual_seed(seed)
    axis = torch.arange(box, dtype=dtype) - box // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    vol = torch.zeros(box, box, box, dtype=dtype)
    for _ in range(8):
        c = (torch.rand(3, generator=gen, dtype=dtype) - 0.5) * box * 0.4
        sigma = 0.8 + 2.0 * float(torch.rand(1, generator=gen))
        vol += torch.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * sigma**2))
    return vol


@pytest.mark.parametrize("box", [16, 17, 32, 33])
def test_fsc_self_is_one(box):
    vol = blob_phantom(box) + 0.1 * torch.randn(box, box, box, dtype=torch.float64)
    curve = fsc(vol, vol)
    assert curve.fsc.shape == (box // 2 + 1,)
    assert curve.frequency_per_px.shape == (box // 2 + 1,)
    assert torch.allclose(curve.fsc, torch.ones_like(curve.fsc), atol=1e-10)
    assert torch.allclose(
        curve.frequency_per_px, torch.arange(box // 2 + 1, dtype=torch.float64) / box
    )
    # shell 0 is the DC voxel alone, shell 1 has the 6 nearest + 12 edge (|k|D=sqrt2 -> 1) ...
    assert int(curve.n_voxels[0]) == 1
    assert int(curve.n_voxels[1]) == 18
    assert curve.resolution_px(0.143) == 2.0
    assert curve.resolution_angstrom(1.5, 0.5) == pytest.approx(3.0)


def test_fsc_dtype_follows_input():
    vol = torch.randn(16, 16, 16, dtype=torch.float32)
    curve = fsc(vol, vol)
    assert curve.fsc.dtype == torch.float32


def test_fsc_independent_noise_is_near_zero():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(48, 48, 48, generator=gen, dtype=torch.float64)
    b = torch.randn(48, 48, 48, generator=gen, dtype=torch.float64)
    curve = fsc(a, b)
    # beyond the first few (tiny) shells each shell has >= ~200 voxels: sd <~ 0.07
    tail = curve.fsc[4:]
    assert abs(float(tail.mean())) < 0.02
    assert float(tail.abs().max()) < 0.25
    # sd per shell ~ 1 / sqrt(n_voxels)
    sd_expected = 1.0 / torch.sqrt(curve.n_voxels[4:].to(torch.float64))
    z = tail / sd_expected
    assert 0.5 < float(z.std()) < 1.6


def test_fsc_with_noise_decreases_and_crossing_moves():
    box = 48
    gen = torch.Generator().manual_seed(2)
    vol = blob_phantom(box)
    vol = vol / vol.std()
    noise = torch.randn(box, box, box, generator=gen, dtype=torch.float64)
    res = []
    for sigma in (0.05, 0.3, 1.0):
        curve = fsc(vol, vol + sigma * noise)
        values = curve.fsc
        # overall decreasing trend: compare averages of consecutive quarters
        q = len(values) // 4
        means = [float(values[i * q:(i + 1) * q].mean()) for i in range(4)]
        assert means == sorted(means, reverse=True)
        assert float(values[0]) > 0.99
        res.append(curve.resolution_px(0.5))
    # more noise -> coarser resolution (more pixels per cycle)
    assert 2.0 <= res[0] < res[1] < res[2]
    assert res[2] > 3.0


def test_resolution_interpolation_hand_made_curve():
    freq = torch.arange(6, dtype=torch.float64) / 10  # D = 10: 0 .. 0.5
    values = torch.tensor([1.0, 0.9, 0.7, 0.3, 0.1, 0.0], dtype=torch.float64)
    curve = FSCCurve(frequency_per_px=freq, fsc=values, n_voxels=torch.ones(6, dtype=torch.long))
    # 0.5 crossed between 0.2 (0.7) and 0.3 (0.3): halfway -> f = 0.25
    assert curve.resolution_px(0.5) == pytest.approx(4.0)
    assert curve.resolution_angstrom(2.0, 0.5) == pytest.approx(8.0)
    # 0.143 between 0.3 (0.3) and 0.4 (0.1): t = 0.157 / 0.2 = 0.785 -> f = 0.3785
    assert curve.resolution_px(0.143) == pytest.approx(1 / 0.3785)
    # never crosses 0 strictly below -> Nyquist
    assert curve.resolution_angstrom(1.2, -0.1) == pytest.approx(2.4)
    # starts below threshold -> infinite
    assert math.isinf(curve.resolution_px(1.5))
    # a dip back up after the first crossing is ignored
    values2 = torch.tensor([1.0, 0.4, 0.9, 0.9, 0.9, 0.9], dtype=torch.float64)
    curve2 = FSCCurve(frequency_per_px=freq, fsc=values2, n_voxels=torch.ones(6, dtype=torch.long))
    assert curve2.resolution_px(0.5) == pytest.approx(1 / (0.1 * 5 / 6))
    with pytest.raises(ValueError):
        curve.resolution_angstrom(0.0, 0.5)


def test_auc():
    for box, expected in ((64, 0.5), (65, 32 / 65)):
        vol = blob_phantom(box, seed=3) + 0.01 * torch.randn(box, box, box, dtype=torch.float64)
        assert fsc(vol, vol).auc() == pytest.approx(expected, abs=1e-9)
    gen = torch.Generator().manual_seed(4)
    a = torch.randn(64, 64, 64, generator=gen, dtype=torch.float64)
    b = torch.randn(64, 64, 64, generator=gen, dtype=torch.float64)
    # |FSC| of noise ~ sqrt(2/pi) / sqrt(n) per shell: small
    assert fsc(a, b).auc() < 0.03
    # hand-made curve: linear fall 1 -> 0 over 0..0.5 has area 0.25
    freq = torch.linspace(0, 0.5, 11, dtype=torch.float64)
    curve = FSCCurve(frequency_per_px=freq, fsc=1 - 2 * freq, n_voxels=torch.ones(11))
    assert curve.auc() == pytest.approx(0.25)


def test_masked_fsc():
    box = 32
    gen = torch.Generator().manual_seed(5)
    vol = blob_phantom(box)
    mask = soft_spherical_mask(box, radius_px=10, edge_px=4, dtype=torch.float64)
    # noise only outside the mask support: the masked FSC is ~1, unmasked is not
    axis = torch.arange(box, dtype=torch.float64) - box // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    outside = (torch.sqrt(x**2 + y**2 + z**2) > 14.5).to(torch.float64)
    vol = vol * (1 - outside)  # phantom confined to the inner region
    noisy = vol + 2.0 * outside * torch.randn(box, box, box, generator=gen, dtype=torch.float64)
    masked = fsc(vol, noisy, mask=mask)
    unmasked = fsc(vol, noisy)
    assert torch.allclose(masked.fsc, torch.ones_like(masked.fsc), atol=1e-10)
    assert float(unmasked.fsc[5:].mean()) < 0.9
    with pytest.raises(ValueError, match="mask"):
        fsc(vol, vol, mask=mask[:-1])


def test_soft_spherical_mask():
    mask = soft_spherical_mask(21, radius_px=5, edge_px=4, dtype=torch.float32)
    assert mask.shape == (21, 21, 21) and mask.dtype == torch.float32
    c = 10
    assert float(mask[c, c, c]) == 1.0
    assert float(mask[c, c, c + 5]) == pytest.approx(1.0)
    assert float(mask[c, c, c + 7]) == pytest.approx(0.5)  # halfway through the edge
    assert float(mask[c, c, c + 9]) == pytest.approx(0.0, abs=1e-7)
    assert float(mask[0, 0, 0]) == 0.0
    even = soft_spherical_mask(20, 5, 2)
    assert float(even[10, 10, 10]) == 1.0
    assert torch.equal(even[10, 10, 10 - 7], even[10, 10, 10 + 7])
    hard = soft_spherical_mask(20, 5, 0)
    assert set(hard.unique().tolist()) == {0.0, 1.0}


def test_to_dict_json_and_errors():
    vol = blob_phantom(16)
    curve = fsc(vol, vol + 0.1)
    d = curve.to_dict()
    text = json.dumps(d)
    back = json.loads(text)
    assert len(back["fsc"]) == 9 and len(back["frequency_per_px"]) == 9
    assert all(isinstance(v, int) for v in back["n_voxels"])
    with pytest.raises(ValueError, match="same shape"):
        fsc(vol, vol[:-1, :-1, :-1])
    with pytest.raises(ValueError, match="cubic"):
        fsc(vol[0], vol[0])
