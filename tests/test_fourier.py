"""Tests for cryoviz.fourier: the FFT conventions (origin, layout, shifts, grids)."""

from __future__ import annotations

import math

import pytest
import torch

from cryoviz.fourier import (
    centered_fft2,
    centered_fft3,
    centered_ifft2,
    centered_ifft3,
    centered_irfft2,
    centered_rfft2,
    complex_dtype_of,
    crop_center,
    frequency_grid_2d,
    frequency_grid_3d,
    lowpass_volume,
    pad_center,
    phase_shift,
    real_dtype_of,
    shell_index_2d,
    shell_index_3d,
)

BOXES = [8, 9, 16, 17]


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("box", BOXES)
def test_rfft2_round_trip_and_layout(box):
    img = _rand(3, box, box)
    ft = centered_rfft2(img)
    assert ft.shape == (3, box, box // 2 + 1)
    assert ft.dtype == torch.complex128
    back = centered_irfft2(ft, box)
    assert back.shape == (3, box, box)
    assert torch.allclose(back, img, atol=1e-12)
    # the half transform is the kx >= 0 part of the full centred transform
    full = centered_fft2(img)
    ncol = (box + 1) // 2  # kx = 0 .. (D-1)//2 are stored in both layouts
    assert torch.allclose(ft[..., :ncol], full[..., box // 2: box // 2 + ncol], atol=1e-10)


@pytest.mark.parametrize("box", BOXES)
def test_fft2_and_fft3_round_trip(box):
    img = _rand(2, box, box) + 1j * _rand(2, box, box, seed=1)
    assert torch.allclose(centered_ifft2(centered_fft2(img)), img, atol=1e-12)
    vol = _rand(box, box, box, seed=2)
    ft = centered_fft3(vol)
    assert ft.shape == (box, box, box)
    back = centered_ifft3(ft)
    assert torch.allclose(back.real, vol, atol=1e-12)
    assert back.imag.abs().max() < 1e-12


@pytest.mark.parametrize("box", BOXES)
def test_delta_at_origin_has_flat_real_positive_transform(box):
    img = torch.zeros(1, box, box, dtype=torch.float64)
    img[0, box // 2, box // 2] = 1.0
    for ft in (centered_fft2(img), centered_rfft2(img)):
        assert torch.allclose(ft.real, torch.ones_like(ft.real), atol=1e-12)
        assert ft.imag.abs().max() < 1e-12
    vol = torch.zeros(box, box, box, dtype=torch.float64)
    vol[box // 2, box // 2, box // 2] = 1.0
    ft3 = centered_fft3(vol)
    assert torch.allclose(ft3, torch.ones_like(ft3), atol=1e-12)
    # and the zero frequency sits at index D // 2: DC = sum of the image
    img = _rand(1, box, box)
    assert torch.allclose(centered_fft2(img)[0, box // 2, box // 2].real, img.sum())
    assert torch.allclose(centered_rfft2(img)[0, box // 2, 0].real, img.sum())
    vol = _rand(box, box, box)
    assert torch.allclose(centered_fft3(vol)[box // 2, box // 2, box // 2].real, vol.sum())


@pytest.mark.parametrize("box", BOXES)
@pytest.mark.parametrize("rfft", [True, False])
def test_phase_shift_integer_equals_roll(box, rfft):
    img = _rand(3, box, box, seed=3)
    shifts = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 2.0]], dtype=torch.float64)
    ft = centered_rfft2(img) if rfft else centered_fft2(img)
    moved = phase_shift(ft, shifts, box, rfft=rfft)
    out = centered_irfft2(moved, box) if rfft else centered_ifft2(moved).real
    for i, (tx, ty) in enumerate(shifts.long().tolist()):
        expect = torch.roll(img[i], shifts=(ty, tx), dims=(-2, -1))
        assert torch.allclose(out[i], expect, atol=1e-10), (i, tx, ty)


def test_phase_shift_moves_content_towards_plus_x_plus_y():
    box = 16
    img = torch.zeros(1, box, box, dtype=torch.float64)
    img[0, box // 2, box // 2] = 1.0
    ft = phase_shift(centered_rfft2(img), torch.tensor([[2.0, 3.0]]), box)
    out = centered_irfft2(ft, box)[0]
    iy, ix = divmod(int(out.argmax()), box)
    assert (ix - box // 2, iy - box // 2) == (2, 3)


@pytest.mark.parametrize("box", BOXES)
def test_frequency_grids(box):
    ky, kx = frequency_grid_2d(box, rfft=True, dtype=torch.float64)
    assert ky.shape == kx.shape == (box, box // 2 + 1)
    centred = torch.tensor([(i - box // 2) / box for i in range(box)], dtype=torch.float64)
    half = torch.tensor([j / box for j in range(box // 2 + 1)], dtype=torch.float64)
    assert torch.allclose(kx[0], half)
    assert torch.allclose(kx, kx[0].expand_as(kx))
    assert torch.allclose(ky[:, 0], centred)
    assert torch.allclose(ky, ky[:, :1].expand_as(ky))
    assert float(kx.max()) == pytest.approx((box // 2) / box)
    ky_f, kx_f = frequency_grid_2d(box, rfft=False, dtype=torch.float64)
    assert ky_f.shape == (box, box)
    assert torch.allclose(kx_f[0], centred)
    assert torch.allclose(ky_f[:, 0], centred)
    kz, ky3, kx3 = frequency_grid_3d(box, dtype=torch.float64)
    assert torch.allclose(kz[:, 0, 0], centred)
    assert torch.allclose(ky3[0, :, 0], centred)
    assert torch.allclose(kx3[0, 0, :], centred)
    assert kz[3, 1, 2] == centred[3]
    # shells: round(|k| D)
    sh2 = shell_index_2d(box, rfft=True)
    assert sh2[box // 2, 0] == 0
    assert sh2[box // 2, box // 2] == box // 2
    assert sh2[0, 0] == box // 2
    assert sh2[box // 2 + 1, 1] == 1  # |k| D = sqrt(2) -> 1
    sh3 = shell_index_3d(box)
    assert sh3[box // 2, box // 2, box // 2] == 0
    assert sh3[box // 2 + 2, box // 2 + 2, box // 2 + 2] == round(2 * math.sqrt(3))


def test_dtype_helpers():
    assert real_dtype_of(torch.complex128) == torch.float64
    assert real_dtype_of(torch.complex64) == torch.float32
    assert real_dtype_of(torch.float64) == torch.float64
    assert complex_dtype_of(torch.float64) == torch.complex128
    assert complex_dtype_of(torch.float32) == torch.complex64
    assert complex_dtype_of(torch.complex64) == torch.complex64


@pytest.mark.parametrize(("box", "size"), [(8, 16), (9, 16), (8, 15), (9, 17), (16, 33)])
def test_pad_crop_round_trip_keeps_origin(box, size):
    img = _rand(2, box, box)
    padded = pad_center(img, size, ndim=2)
    assert padded.shape == (2, size, size)
    assert torch.equal(padded[:, size // 2, size // 2], img[:, box // 2, box // 2])
    assert torch.allclose(padded.sum(dim=(-2, -1)), img.sum(dim=(-2, -1)))
    assert torch.equal(crop_center(padded, box, ndim=2), img)
    vol = _rand(box, box, box)
    pv = pad_center(vol, size, ndim=3)
    assert pv.shape == (size, size, size)
    assert pv[size // 2, size // 2, size // 2] == vol[box // 2, box // 2, box // 2]
    assert pv[size // 2 + 1, size // 2 - 1, size // 2] == vol[box // 2 + 1, box // 2 - 1, box // 2]
    assert torch.equal(crop_center(pv, box, ndim=3), vol)


@pytest.mark.parametrize("box", [32, 33])
def test_lowpass_volume_keeps_low_kills_high(box):
    x = torch.arange(box, dtype=torch.float64) - box // 2
    low = torch.cos(2 * math.pi * 2 * x / box).expand(box, box, box)  # shell 2
    high = torch.cos(2 * math.pi * 12 * x / box).expand(box, box, box)  # shell 12
    # pixel 1 Å, cut-off 4 Å -> 0.25 cycles/px = shell D/4 (8), edge 2 shells
    out_low = lowpass_volume(low.clone(), 4.0, 1.0)
    out_high = lowpass_volume(high.clone(), 4.0, 1.0)
    assert out_low.dtype == torch.float64
    assert torch.allclose(out_low, low, atol=1e-10)
    assert out_high.abs().max() < 1e-10
    # the transition: a cosine at the cut-off shell is kept, above the edge it is gone
    mid = torch.cos(2 * math.pi * 9 * x / box).expand(box, box, box)
    out_mid = lowpass_volume(mid.clone(), 4.0, 1.0)
    gain = float((out_mid * mid).sum() / (mid * mid).sum())
    assert 0.0 < gain < 1.0


@pytest.mark.parametrize("box", [8, 9])
def test_hermitian_mirror_of_a_real_volume_transform_is_its_conjugate(box):
    from cryoviz.fourier import hermitian_mirror

    gen = torch.Generator().manual_seed(5)
    ft = centered_fft3(torch.randn(box, box, box, generator=gen, dtype=torch.float64))
    assert torch.allclose(hermitian_mirror(ft), ft.conj(), atol=1e-10)


def test_hermitian_half_makes_the_transform_of_a_real_image():
    from cryoviz.fourier import centered_irfft2, hermitian_half  # noqa: PLC0415

    gen = torch.Generator().manual_seed(3)
    images = torch.randn(3, 16, 16, generator=gen, dtype=torch.float64)
    ft = centered_rfft2(images)
    torch.testing.assert_close(hermitian_half(ft, 16), ft)  # already valid: unchanged
    broken = ft.clone()
    broken[..., :, 8] = torch.randn(3, 16, generator=gen, dtype=torch.complex128)
    broken[..., 0, 0] = broken[..., 0, 0] + 1j
    fixed = hermitian_half(broken, 16)
    torch.testing.assert_close(centered_rfft2(centered_irfft2(fixed, 16)), fixed)
    assert not torch.allclose(centered_rfft2(centered_irfft2(broken, 16)), broken)
    torch.testing.assert_close(fixed[..., :, 1:8], broken[..., :, 1:8])  # left alone
    torch.testing.assert_close(fixed[..., 1:, 0], broken[..., 1:, 0])
    torch.testing.assert_close(fixed[..., 0, 0], broken[..., 0, 0].real.to(fixed.dtype))
    odd = centered_rfft2(torch.randn(2, 15, 15, generator=gen, dtype=torch.float64))
    assert hermitian_half(odd, 15) is odd
