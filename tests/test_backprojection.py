"""Tests for cryoviz.backprojection: direct Fourier reconstruction and the Wiener filter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryoviz.backprojection import (
    FourierAccumulator,
    add_to_half_sets,
    ssnr_from_fsc,
    wiener_regularizer,
)
from cryoviz.geometry.rotations import random_rotations
from cryoviz.sgd_fit import half_map_fsc
from tests._phantoms import backproject, simulate_dataset


def _last_shell(box: int, fraction: float = 0.8) -> int:
    return int(fraction * (box // 2))


@pytest.mark.parametrize("box", [32, 33])
def test_noise_free_reconstruction_recovers_phantom(box):
    data = simulate_dataset(box, 1500, seed=0)
    acc = backproject(data)
    assert acc.count == 1500 and acc.padded_size == 2 * box
    rec = acc.reconstruct()
    assert rec.shape == (box, box, box) and rec.dtype == torch.float32
    curve = half_map_fsc(rec, data.truth)
    assert float(curve[: _last_shell(box) + 1].min()) > 0.99, curve
    # the amplitude is right too, not only the correlation
    assert float((rec - data.truth).norm() / data.truth.norm()) < 0.05


def test_noise_free_with_ctf_and_shifts():
    box = 32
    data = simulate_dataset(box, 1500, seed=3, with_ctf=True, max_shift_px=3.0)
    rec = backproject(data).reconstruct()
    curve = half_map_fsc(rec, data.truth)
    assert float(curve[: _last_shell(box) + 1].min()) > 0.95, curve
    # undoing the shifts the wrong way round ruins it (so they are applied, with the right sign)
    wrong = FourierAccumulator(box)
    sel = torch.arange(500)
    wrong.add(data.images[sel], data.rotations[sel], data.pixel_size_angstrom,
              -data.shifts_angstrom[sel], data.ctf.subset(sel))
    bad = half_map_fsc(wrong.reconstruct(), data.truth)
    assert float(bad[_last_shell(box) // 2]) < 0.8, bad


@pytest.fixture(scope="module")
def noisy():
    box = 32
    data = simulate_dataset(box, 3000, seed=5, snr=0.1, with_ctf=True)
    halves = [backproject(data, torch.nonzero(data.half_set == h).squeeze(1)) for h in (0, 1)]
    return data, halves


def test_wiener_map_is_at_least_as_good_as_unregularised(noisy):
    data, halves = noisy
    half_fsc = half_map_fsc(halves[0].reconstruct(), halves[1].reconstruct())
    full = halves[0].merged(halves[1])
    assert full.count == 3000
    mean_weight = full.mean_weight_per_shell()
    assert mean_weight.shape == (17,)
    assert torch.allclose(mean_weight,
                          halves[0].mean_weight_per_shell() + halves[1].mean_weight_per_shell())
    regularizer = wiener_regularizer(mean_weight, half_fsc)
    wiener = half_map_fsc(full.reconstruct(regularizer), data.truth)
    plain = half_map_fsc(full.reconstruct(), data.truth)
    # where the half maps measure signal the Wiener map is never worse ...
    signal = half_fsc > 0.143
    assert int(signal.sum()) >= 6
    assert bool((wiener[signal] >= plain[signal] - 0.02).all()), (wiener, plain, half_fsc)
    # ... and better on the whole over those shells
    assert float(wiener[signal].sum()) > float(plain[signal].sum())
    # beyond, it suppresses the noise: the map's power there falls well below the plain map's
    w_map, p_map = full.reconstruct(regularizer), full.reconstruct()
    noise_shells = ~signal
    noise_shells[: int(signal.sum())] = False

    def shell_power(vol):
        ft = torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(vol.double())))
        axis = torch.arange(32) - 16
        z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
        r = torch.sqrt((x**2 + y**2 + z**2).double()).round().long()
        return torch.stack([(ft.abs()[r == s] ** 2).mean() for s in range(17)])

    ratio = shell_power(w_map) / shell_power(p_map)
    assert float(ratio[noise_shells].max()) < 0.5


def test_ssnr_from_fsc_known_values():
    fsc = torch.tensor([1.0, 0.999, 0.5, 1.0 / 3.0, 0.143, 0.0, -0.2])
    ssnr = ssnr_from_fsc(fsc)
    assert ssnr.dtype == torch.float64
    expect = [2 * 0.999 / 0.001, 2 * 0.999 / 0.001, 2.0, 1.0, 2 * 0.143 / 0.857, 1e-3, 1e-3]
    assert ssnr.tolist() == pytest.approx(expect, rel=1e-6)
    assert ssnr_from_fsc(torch.tensor([0.0]), floor=0.05).item() == pytest.approx(0.05)
    reg = wiener_regularizer(torch.tensor([8.0, 8.0]), torch.tensor([0.5, 1.0 / 3.0]))
    # lambda = mean weight / (pad^3 SSNR), pad 2 by default (RELION's oversampling correction)
    assert reg.tolist() == pytest.approx([8.0 / (8 * 2.0), 8.0 / (8 * 1.0)])
    reg1 = wiener_regularizer(torch.tensor([8.0]), torch.tensor([0.5]), pad_factor=1.0)
    assert reg1.tolist() == pytest.approx([4.0])


def test_accumulator_merge_and_regularizer_forms():
    data = simulate_dataset(16, 200, seed=7)
    a = backproject(data, torch.arange(0, 100))
    b = backproject(data, torch.arange(100, 200))
    both = backproject(data)
    merged = a.merged(b)
    assert merged.count == 200
    assert torch.allclose(merged.data, both.data) and torch.allclose(merged.weight, both.weight)
    data_sym, weight_sym = merged.symmetrized()
    mirrored = torch.flip(weight_sym, dims=(0, 1, 2)).roll((1, 1, 1), (0, 1, 2))
    assert torch.allclose(weight_sym, mirrored)
    # a scalar regulariser and the same value per shell give the same map
    per_shell = torch.full((9,), 3.0, dtype=torch.float64)
    assert torch.allclose(merged.reconstruct(3.0), merged.reconstruct(per_shell), atol=1e-6)
    # a huge regulariser shrinks the map
    plain_max = float(merged.reconstruct().abs().max())
    assert float(merged.reconstruct(1e9).abs().max()) < 1e-3 * plain_max


def test_add_to_half_sets_routes_each_particle_to_its_half():
    data = simulate_dataset(16, 60, seed=8, with_ctf=True, max_shift_px=2.0)
    labels = np.array([0, 1, 1] * 20)
    accs = [FourierAccumulator(16), FourierAccumulator(16)]
    for start in range(0, 60, 25):  # batches of 25, 25, 10: mixed halves in each
        index = np.arange(start, min(60, start + 25))
        add_to_half_sets(accs, data.images[torch.as_tensor(index)], index, labels,
                         data.rotations, data.pixel_size_angstrom, data.shifts_angstrom,
                         data.ctf)
    for h in (0, 1):
        direct = backproject(data, torch.as_tensor(np.flatnonzero(labels == h)))
        assert accs[h].count == direct.count == int((labels == h).sum())
        assert torch.allclose(accs[h].data, direct.data, atol=1e-6)
        assert torch.allclose(accs[h].weight, direct.weight, atol=1e-6)
    # a batch of one half only leaves the other accumulator untouched
    only = [FourierAccumulator(16), FourierAccumulator(16)]
    index = np.array([1, 2, 4])
    add_to_half_sets(only, data.images[torch.as_tensor(index)], index, labels,
                     data.rotations, data.pixel_size_angstrom)
    assert only[0].count == 0 and float(only[0].weight.abs().sum()) == 0.0
    assert only[1].count == 3


def test_particle_weights_scale_contributions():
    gen = torch.Generator().manual_seed(4)
    images = torch.randn(6, 12, 12, generator=gen)
    rotations = torch.linalg.qr(torch.randn(6, 3, 3, generator=gen))[0]
    rotations = rotations * torch.sign(torch.linalg.det(rotations))[:, None, None]
    weighted = FourierAccumulator(12)
    weighted.add(images, rotations, 1.0, particle_weights=torch.tensor([1.0, 0, 1, 0, 0.5, 0]))
    plain = FourierAccumulator(12)
    plain.add(images[[0, 2]], rotations[[0, 2]], 1.0)
    plain.add(images[[4]], rotations[[4]], 1.0, particle_weights=torch.tensor([0.5]))
    assert torch.allclose(weighted.data, plain.data, atol=1e-5)
    assert torch.allclose(weighted.weight, plain.weight, atol=1e-6)
    assert float(weighted.weight.sum()) > 0


def test_reconstruction_is_stable_to_the_last_bit_of_the_rotations():
    """Rounding of the rotated coordinates must not decide which samples are inserted.

    Samples on the Nyquist circle used to be kept or dropped by the rotated
    coordinate's radius, so a 2e-7 relative change of the rotations (what another
    device's rounding gives) changed a map of white noise by 2.8 % (L2); deciding
    from the unrotated frequency brings that to about 6e-6.
    """
    g = torch.Generator().manual_seed(2)
    images = torch.randn(200, 32, 32, generator=g)
    rotations = random_rotations(200, generator=g).float()

    def reconstruction(rot: torch.Tensor) -> torch.Tensor:
        acc = FourierAccumulator(32)
        acc.add(images, rot, 4.0)
        return acc.reconstruct()

    a, b = reconstruction(rotations), reconstruction(rotations * (1 + 2e-7))
    assert float((a - b).norm() / a.norm()) < 1e-4


def test_image_rows_insert_one_image_at_several_poses():
    """``image_rows`` (one transform and CTF per image) equals inserting the copies."""
    from cryoviz.ctf import CTFParams

    g = torch.Generator().manual_seed(5)
    images = torch.randn(6, 16, 16, generator=g)
    rows = torch.tensor([0, 0, 1, 3, 3, 3, 5, 2])
    rotations = random_rotations(len(rows), generator=g).float()
    shifts = torch.randn(len(rows), 2, generator=g)
    weights = torch.rand(len(rows), generator=g)
    defocus = (12000.0 + 1000.0 * torch.arange(6.0)).numpy()
    ctf = CTFParams.from_arrays(defocus_u_angstrom=defocus, defocus_v_angstrom=defocus + 200.0,
                                astigmatism_angle_deg=20.0, voltage_kv=300.0, cs_mm=2.7,
                                amplitude_contrast=0.1)
    shared, copies = FourierAccumulator(16), FourierAccumulator(16)
    shared.add(images, rotations, 3.0, shifts, ctf, particle_weights=weights, image_rows=rows)
    copies.add(images[rows], rotations, 3.0, shifts, ctf.subset(rows), particle_weights=weights)
    torch.testing.assert_close(shared.data, copies.data)
    torch.testing.assert_close(shared.weight, copies.weight)
    assert shared.count == copies.count == len(rows)
