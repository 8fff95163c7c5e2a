"""Tests for cryoviz.metrics.volume_transforms (rotate_volume, flip_hand) and align_volume."""

from __future__ import annotations

import time

import pytest
import torch

from cryoviz.fourier import lowpass_volume
from cryoviz.geometry import geodesic_distance_deg, random_rotations
from cryoviz.metrics import align_volume, flip_hand, rotate_volume

F = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))


def gaussian(box: int, center, sigma: float, dtype=torch.float64) -> torch.Tensor:
    axis = torch.arange(box, dtype=dtype) - box // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    c = [float(v) for v in center]
    return torch.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * sigma**2))


def center_of_mass(vol: torch.Tensor) -> torch.Tensor:
    box = vol.shape[-1]
    axis = torch.arange(box, dtype=vol.dtype) - box // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    s = vol.sum()
    return torch.stack([(vol * x).sum() / s, (vol * y).sum() / s, (vol * z).sum() / s])


def asymmetric_phantom(box: int) -> torch.Tensor:
    """Six Gaussian blobs of different sizes at asymmetric positions (fractions of D)."""
    positions = [(0.25, 0.1, 0.0), (-0.2, 0.15, 0.1), (0.05, -0.25, 0.12),
                 (0.0, 0.0, -0.2), (-0.1, -0.1, -0.05), (0.18, -0.05, 0.2)]
    sigmas = [0.10, 0.08, 0.06, 0.07, 0.05, 0.04]
    vol = torch.zeros(box, box, box, dtype=torch.float64)
    for p, s in zip(positions, sigmas, strict=True):
        vol += gaussian(box, [v * box for v in p], s * box)
    return vol


@pytest.mark.parametrize("box", [20, 21])
def test_rotate_volume_moves_point_blob(box):
    p = torch.tensor([4.0, -2.0, 3.0], dtype=torch.float64)
    vol = gaussian(box, p, 1.0)
    R = random_rotations(1, generator=torch.Generator().manual_seed(3))[0]
    out = rotate_volume(vol, R)
    assert out.shape == vol.shape and out.dtype == vol.dtype
    assert torch.allclose(center_of_mass(out), R @ p, atol=0.05)
    shift = torch.tensor([1.0, 0.5, -1.5], dtype=torch.float64)
    out2 = rotate_volume(vol, R, shift)
    assert torch.allclose(center_of_mass(out2), R @ p + shift, atol=0.05)
    # the voxel at the origin D // 2 stays put under a pure rotation
    origin = gaussian(box, [0, 0, 0], 1.0)
    com = center_of_mass(rotate_volume(origin, R))
    assert torch.allclose(com, torch.zeros(3, dtype=torch.float64), atol=1e-6)
    # a 90 degree rotation about z maps x -> y exactly (no interpolation)
    Rz = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    point = torch.zeros(box, box, box, dtype=torch.float64)
    c = box // 2
    point[c + 1, c - 2, c + 3] = 1.0  # (x, y, z) = (3, -2, 1)
    moved = rotate_volume(point, Rz)
    assert float(moved[c + 1, c + 3, c + 2]) == pytest.approx(1.0)  # (2, 3, 1)
    # batched form agrees
    batch = rotate_volume(vol, torch.stack([R, Rz]))
    assert torch.allclose(batch[0], out) and torch.allclose(batch[1], rotate_volume(vol, Rz))


def test_rotate_then_inverse_is_close():
    box = 32
    vol = lowpass_volume(asymmetric_phantom(box), resolution_angstrom=6.0, pixel_size_angstrom=1.0)
    R = random_rotations(1, generator=torch.Generator().manual_seed(7))[0]
    back = rotate_volume(rotate_volume(vol, R), R.T)
    corr = torch.corrcoef(torch.stack([back.flatten(), vol.flatten()]))[0, 1]
    assert float(corr) > 0.99
    # and a different rotation back is clearly worse
    wrong = rotate_volume(rotate_volume(vol, R), R)
    corr_wrong = torch.corrcoef(torch.stack([wrong.flatten(), vol.flatten()]))[0, 1]
    assert float(corr_wrong) < 0.9


@pytest.mark.parametrize("box", [16, 17])
def test_flip_hand(box):
    vol = torch.randn(box, box, box, dtype=torch.float64)
    assert torch.equal(flip_hand(flip_hand(vol)), vol)
    p = torch.tensor([2.0, -3.0, 4.0], dtype=torch.float64)
    blob = gaussian(box, p, 1.0)
    assert torch.allclose(center_of_mass(flip_hand(blob)), F @ center_of_mass(blob), atol=1e-9)
    assert torch.allclose(center_of_mass(flip_hand(blob)), F @ p, atol=1e-3)
    # the z = 0 plane (index D // 2) stays fixed
    assert torch.equal(flip_hand(vol)[box // 2], vol[box // 2])
    # flip_hand equals a resampling with W(r) = V(F r) (F is its own inverse)
    smooth = gaussian(box, p, 2.0) + gaussian(box, [-1, 2, -3], 1.5)
    # (for even D the z = -D/2 slice has no partner: flip_hand keeps it, resampling zeroes it)
    lo = 1 if box % 2 == 0 else 0
    assert torch.allclose(flip_hand(smooth)[lo:], rotate_volume(smooth, F)[lo:], atol=1e-10)


@pytest.mark.parametrize("box,flip", [(32, False), (32, True), (40, True)])
def test_align_volume_recovers_rotation_shift_and_hand(box, flip):
    torch.manual_seed(0)
    ref = asymmetric_phantom(box)
    seed = {32: 11, 40: 12}[box] + int(flip)
    R = random_rotations(1, generator=torch.Generator().manual_seed(seed))[0]
    t = torch.tensor([1.5, -2.0, 0.7], dtype=torch.float64)
    moving = rotate_volume(flip_hand(ref) if flip else ref, R, t)
    start = time.perf_counter()
    res = align_volume(moving, ref)
    elapsed = time.perf_counter() - start
    assert res.flipped == flip
    # moving = rot(flip^f(ref), R, t)  =>  flip^f(moving) = rot(ref, R', t') with
    # R' = F R F, t' = F t if flipped; the inverse is rotation R'^T, shift -R'^T t'.
    Rp, tp = (F @ R @ F, F @ t) if flip else (R, t)
    err = float(geodesic_distance_deg(res.rotation, Rp.T))
    assert err < 3.0, err
    assert torch.allclose(res.shift_px, -Rp.T @ tp, atol=0.3)
    assert res.correlation > 0.99
    corr = torch.corrcoef(torch.stack([res.aligned.flatten(), ref.flatten()]))[0, 1]
    assert float(corr) == pytest.approx(res.correlation, abs=1e-9)
    assert res.aligned.shape == ref.shape and res.rotation.dtype == torch.float64
    assert elapsed < 30.0
    # apply(): the found transform moves another map of the moving frame the same way
    torch.testing.assert_close(res.apply(moving), res.aligned, rtol=0, atol=1e-10)
    other = asymmetric_phantom(box).roll(3, dims=0)  # a second map in the reference frame
    moved_other = rotate_volume(flip_hand(other) if flip else other, R, t)
    back = res.apply(moved_other)
    inner = (slice(4, -4),) * 3  # resampling loses the edges
    corr_back = torch.corrcoef(torch.stack([back[inner].flatten(), other[inner].flatten()]))
    assert float(corr_back[0, 1]) > 0.98


def test_align_volume_without_flip_and_errors():
    box = 24
    ref = asymmetric_phantom(box)
    moving = flip_hand(ref)
    res = align_volume(moving, ref, allow_flip=False)
    assert not res.flipped
    assert res.correlation < 0.99  # the mirror cannot be rotated onto the original
    with pytest.raises(ValueError, match="same shape"):
        align_volume(ref, ref[:-1, :-1, :-1])
    with pytest.raises(ValueError, match="pixel_size"):
        align_volume(ref, ref, search_resolution_angstrom=10.0)
