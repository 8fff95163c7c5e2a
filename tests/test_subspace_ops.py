"""Fourier-grid operations of the subspace model: gather/scatter adjointness, bases, cropping."""

from __future__ import annotations

import torch

from cryoviz.fourier import centered_fft3
from cryoviz.inference.subspace_ops import (
    extract_many,
    fourier_crop_volume,
    insert_many,
    orthogonalise,
    slice_corners,
)
from cryoviz.projection import extract_slices
from tests._phantoms import blob_volume, random_blobs, random_rotations


def _complex(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(shape, generator=gen, dtype=torch.float64),
                         torch.randn(shape, generator=gen, dtype=torch.float64))


def test_extract_many_equals_extract_slices_per_volume():
    box = 12
    rotations = random_rotations(5, seed=2).to(torch.float64)
    volumes = _complex((3, box, box, box), seed=1)
    index, weight, _ = slice_corners(rotations, box, box)
    many = extract_many(volumes, index, weight, (5, box, box // 2 + 1))
    for c in range(3):
        one = extract_slices(volumes[c], rotations, box, rfft=True)
        assert torch.allclose(many[c], one, atol=1e-10), c


def test_insert_many_is_the_adjoint_of_extract_many():
    padded = 20
    rotations = random_rotations(4, seed=5).to(torch.float64)
    index, weight, keep = slice_corners(rotations, padded, padded, max_frequency=0.3)
    assert keep is not None and 0 < int(keep.sum()) < keep.numel()
    x = _complex((2, padded, padded, padded), seed=3)
    y = _complex((2, 4, padded, padded // 2 + 1), seed=4)
    y_kept = y.reshape(2, -1)[:, keep]
    ax = extract_many(x, index, weight, (int(keep.sum()),))
    left = (torch.conj(ax) * y_kept).sum()
    out = torch.zeros_like(x)
    insert_many(y, index, weight, keep, out)
    right = (torch.conj(x) * out).sum()
    assert torch.allclose(left, right, rtol=1e-10)


def test_orthogonalise_keeps_the_maps_and_orders_by_variance():
    gen = torch.Generator().manual_seed(0)
    components = torch.randn(3, 50, generator=gen, dtype=torch.float64)
    z = torch.randn(200, 3, generator=gen, dtype=torch.float64) * torch.tensor([0.5, 2.0, 1.0])
    second = z.T @ z / z.shape[0]
    new, transform = orthogonalise(components, second)
    # the same maps: U^T z == U_new^T (T z)
    assert torch.allclose(z @ components, (z @ transform.T) @ new, atol=1e-9)
    gram = new @ new.T
    off = gram - torch.diag(torch.diagonal(gram))
    assert off.abs().max() < 1e-9 * gram.abs().max()
    norms = torch.diagonal(gram)
    assert bool((norms[:-1] >= norms[1:]).all())
    # new coordinates have identity second moment
    z_new = z @ transform.T
    assert torch.allclose(z_new.T @ z_new / z.shape[0], torch.eye(3, dtype=torch.float64),
                          atol=1e-9)


def test_fourier_crop_volume_keeps_the_low_frequencies():
    full, small = 32, 16
    volume = blob_volume(random_blobs(full, 5, seed=3), full).to(torch.float64)
    cropped = fourier_crop_volume(volume, small)
    assert cropped.shape == (small,) * 3
    ft_full = centered_fft3(volume)
    ft_small = centered_fft3(cropped)
    lo = full // 2 - small // 2
    inner = ft_full[lo + 1:lo + small, lo + 1:lo + small, lo + 1:lo + small] * (small / full) ** 3
    assert torch.allclose(ft_small[1:, 1:, 1:], inner, atol=1e-9 * float(inner.abs().max()))
    # the mean density (DC) is unchanged
    assert abs(float(cropped.mean()) - float(volume.mean())) < 1e-9
    assert torch.equal(fourier_crop_volume(volume, full), volume)
