"""Tests for cryoviz.projection: central-slice theorem, pose convention, adjointness, gradients."""

from __future__ import annotations

import pytest
import torch

from cryoviz.fourier import centered_irfft2, centered_rfft2
from cryoviz.imaging import project_fourier, render_images, volume_to_fourier
from cryoviz.projection import (
    extract_points,
    extract_slices,
    insert_slices,
    sample_trilinear,
    slice_frequencies,
    trilinear_corners,
)
from tests._phantoms import (
    blob_projections,
    blob_volume,
    random_blobs,
    random_rotations,
    relative_error,
    rotation_y,
)


@pytest.mark.parametrize("box", [32, 33])
def test_central_slice_theorem_matches_analytic_projection(box):
    blobs = random_blobs(box, n_blobs=6, seed=1, sigma_range=(2.5, 3.0), max_radius_frac=0.1)
    vol = blob_volume(blobs, box)
    rot = random_rotations(8, seed=2)
    images = render_images(vol, rot, pixel_size_angstrom=1.0)
    analytic = blob_projections(blobs, rot, box)
    assert images.shape == (8, box, box)
    for i in range(8):
        assert relative_error(images[i], analytic[i]) < 0.01, i
        assert float((images[i] - analytic[i]).abs().max() / analytic[i].max()) < 0.01
    # trilinear interpolation error shrinks with padding (the 1 % above is not luck)
    finer = render_images(vol, rot, pixel_size_angstrom=1.0, pad_factor=4.0)
    assert max(relative_error(finer[i], analytic[i]) for i in range(8)) < 0.004


@pytest.mark.parametrize("box", [16, 17])
def test_identity_rotation_is_sum_over_z(box):
    gen = torch.Generator().manual_seed(0)
    vol = torch.randn(box, box, box, generator=gen, dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64)[None]
    # the identity slices on grid points: without gridding correction the slice is the
    # transform of the z-sum exactly (even boxes: kx = +1/2 lies outside the padded grid
    # and comes back as 0, so that column is left out)
    ft = volume_to_fourier(vol, pad_factor=2.0, correct_gridding=False)
    slice_ft = project_fourier(ft, eye, box)[0]
    expect_ft = centered_rfft2(vol.sum(dim=0))
    cols = box // 2 if box % 2 == 0 else box // 2 + 1
    assert torch.allclose(slice_ft[:, :cols], expect_ft[:, :cols], atol=1e-9)
    if box % 2 == 1:
        image = centered_irfft2(slice_ft, box)
        assert torch.allclose(image, vol.sum(dim=0), atol=1e-10)
    # rendered (gridding-corrected) image of a smooth compact phantom: close, the
    # correction is exact only on average over off-grid samples
    big = 2 * box
    blobs = random_blobs(big, n_blobs=4, seed=3, sigma_range=(2.5, 3.0), max_radius_frac=0.1)
    smooth = blob_volume(blobs, big)
    rendered = render_images(smooth, eye, 1.0)[0]
    assert relative_error(rendered, smooth.sum(dim=0)) < 0.02


@pytest.mark.parametrize("box", [24, 25])
def test_rotation_convention_blob_at_plus_z_goes_to_plus_x(box):
    axis = torch.arange(box, dtype=torch.float64) - box // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    vol = torch.exp(-(x**2 + y**2 + (z - 6) ** 2) / (2 * 1.5**2))  # particle position (0, 0, 6)
    rot = rotation_y(90.0)[None]
    assert torch.allclose(rot[0] @ torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64),
                          torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), atol=1e-12)
    image = render_images(vol, rot, 1.0)[0]
    iy, ix = divmod(int(image.argmax()), box)
    assert (ix - box // 2, iy - box // 2) == (6, 0)
    # a +y offset stays on +y (rows) under the identity
    vol_y = torch.exp(-(x**2 + (y - 5) ** 2 + z**2) / (2 * 1.5**2))
    image = render_images(vol_y, torch.eye(3, dtype=torch.float64)[None], 1.0)[0]
    iy, ix = divmod(int(image.argmax()), box)
    assert (ix - box // 2, iy - box // 2) == (0, 5)


def _crand(*shape, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.complex(
        torch.randn(*shape, generator=gen, dtype=torch.float64),
        torch.randn(*shape, generator=gen, dtype=torch.float64),
    )


def _inner(a, b):
    return float((a * b.conj()).real.sum())


@pytest.mark.parametrize(("box", "size"), [(10, 16), (9, 9), (8, 17)])
@pytest.mark.parametrize("rfft", [True, False])
@pytest.mark.parametrize("max_frequency", [None, 0.3])
def test_insert_is_adjoint_of_extract(box, size, rfft, max_frequency):
    vol = _crand(size, size, size, seed=0)
    rot = random_rotations(5, seed=4)
    width = box // 2 + 1 if rfft else box
    slices = _crand(5, box, width, seed=1)
    extracted = extract_slices(vol, rot, box, rfft=rfft, max_frequency=max_frequency)
    assert extracted.shape == (5, box, width)
    inserted, weights = insert_slices(slices, rot, size, rfft=rfft, max_frequency=max_frequency)
    assert weights is None
    lhs = _inner(extracted, slices)
    rhs = _inner(vol, inserted)
    assert lhs == pytest.approx(rhs, rel=1e-10, abs=1e-9)
    # non-trivial: a slice of a random volume is not zero
    assert float(extracted.abs().sum()) > 0
    if max_frequency is not None:
        k = slice_frequencies(box, rfft=rfft, dtype=torch.float64).norm(dim=-1)
        assert float(extracted[:, k > max_frequency + 1e-9].abs().max()) == 0.0


def test_insert_weights_and_accumulators():
    size, box = 24, 8
    rot = random_rotations(3, seed=5)
    slices = _crand(3, box, box // 2 + 1, seed=2)
    ones = torch.ones(3, box, box // 2 + 1, dtype=torch.float64)
    vol, wvol = insert_slices(slices, rot, size, weights=ones, max_frequency=0.45)
    # every sample within |k| <= 0.45 lies inside the grid and spreads weight 1 over 8 corners
    n_kept = int((slice_frequencies(box, dtype=torch.float64).norm(dim=-1) <= 0.45).sum())
    assert float(wvol.sum()) == pytest.approx(3 * n_kept, rel=1e-10)
    vol2, wvol2 = insert_slices(slices, rot, size, weights=ones, max_frequency=0.45,
                                volume_ft=vol.clone(), weight_volume=wvol.clone())
    assert torch.allclose(vol2, 2 * vol) and torch.allclose(wvol2, 2 * wvol)
    # inserting the weights as data gives the weight volume
    vol_w, _ = insert_slices(ones.to(torch.complex128), rot, size, max_frequency=0.45)
    assert torch.allclose(vol_w.real, wvol)


def test_extract_gradcheck():
    size, box = 6, 6
    rot = random_rotations(2, seed=6)
    vol = torch.view_as_real(_crand(size, size, size, seed=3)).clone().requires_grad_(True)

    def fn(v):
        return torch.view_as_real(extract_slices(torch.view_as_complex(v), rot, box))

    assert torch.autograd.gradcheck(fn, (vol,), eps=1e-6, atol=1e-8)


def test_extract_gradient_of_real_loss_matches_finite_differences():
    size, box = 6, 5
    rot = random_rotations(3, seed=7)
    target = _crand(3, box, box // 2 + 1, seed=4)
    vol = _crand(size, size, size, seed=5).requires_grad_(True)

    def loss(v):
        return (extract_slices(v, rot, box) - target).abs().pow(2).sum()

    loss(vol).backward()
    grad = vol.grad
    gen = torch.Generator().manual_seed(8)
    eps = 1e-6
    with torch.no_grad():
        for _ in range(10):
            idx = tuple(int(i) for i in torch.randint(0, size, (3,), generator=gen))
            for direction, part in ((1.0, "real"), (1j, "imag")):
                plus, minus = vol.detach().clone(), vol.detach().clone()
                plus[idx] += eps * direction
                minus[idx] -= eps * direction
                fd = float(loss(plus) - loss(minus)) / (2 * eps)
                # torch's convention: grad = dL/d(re) + i dL/d(im)
                analytic = float(getattr(grad[idx], part))
                assert fd == pytest.approx(analytic, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("box", [15, 16])
def test_extract_points_equals_extract_slices_at_those_pixels(box):
    gen = torch.Generator().manual_seed(4)
    volume_ft = torch.randn(2 * box, 2 * box, 2 * box, dtype=torch.complex128, generator=gen)
    rotations = random_rotations(3, seed=5)
    full = extract_slices(volume_ft, rotations, box).reshape(3, -1)
    k = slice_frequencies(box, rfft=True, dtype=torch.float64)[..., :2].reshape(-1, 2)
    pick = torch.randperm(k.shape[0], generator=gen)[:40]
    got = extract_points(volume_ft, rotations, k[pick])
    assert torch.allclose(got, full[:, pick], atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_sample_trilinear_equals_the_weighted_corners(dtype):
    """grid_sample's trilinear samples are the 8-corner weighted sums, zero outside."""
    generator = torch.Generator().manual_seed(0)
    size = 9
    volume = torch.randn((size,) * 3, dtype=dtype, generator=generator)
    # points inside, on the faces and partly or wholly outside the volume
    coords = torch.rand(500, 3, generator=generator, dtype=torch.float64) * (size + 3) - 1.5
    index, weight = trilinear_corners(coords, size)
    expected = (volume.reshape(-1)[index] * weight.to(dtype)).sum(dim=1)
    got = sample_trilinear(volume, coords)
    tol = 1e-5 if dtype == torch.complex64 else 1e-12
    torch.testing.assert_close(got, expected, atol=tol, rtol=tol)
    assert (got[((coords < -1) | (coords > size)).any(dim=1)] == 0).all()
