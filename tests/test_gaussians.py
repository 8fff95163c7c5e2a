"""Tests for cryoviz.gaussians and cryoviz.gaussian_projection."""

from __future__ import annotations

import math

import gemmi
import numpy as np
import pytest
import torch

from cryoviz.fourier import centered_irfft2, centered_rfft2
from cryoviz.gaussian_projection import project_gaussians_fourier, project_gaussians_real
from cryoviz.gaussians import GaussianMixture, gaussians_volume, structure_to_gaussians
from cryoviz.scattering import PENG_ELECTRON_SCATTERING
from cryoviz.structure import Structure


def rodrigues(axis, angle_rad: float) -> torch.Tensor:
    axis = np.asarray(axis, dtype=float)
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + np.sin(angle_rad) * k + (1 - np.cos(angle_rad)) * k @ k
    return torch.as_tensor(rot, dtype=torch.float64)


def random_rotations(n: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.stack(
        [rodrigues(rng.normal(size=3), rng.uniform(0, 2 * math.pi)) for _ in range(n)]
    )


def smooth_mixture(n: int = 30, spread: float = 5.0, seed: int = 0) -> GaussianMixture:
    """Blobs with sigma >= 1.5 Å (>= 1.5 px at 1 Å/px), well inside a 48 Å box."""
    gen = torch.Generator().manual_seed(seed)
    centres = (torch.rand(n, 3, generator=gen, dtype=torch.float64) - 0.5) * 2 * spread
    amps = 0.5 + torch.rand(n, generator=gen, dtype=torch.float64)
    sigmas = 1.5 + torch.rand(n, generator=gen, dtype=torch.float64)
    return GaussianMixture(centres, amps, sigmas)


def single(x: float, y: float, z: float, sigma: float = 1.0, amp: float = 1.0):
    return GaussianMixture(
        torch.tensor([[x, y, z]], dtype=torch.float64),
        torch.tensor([amp], dtype=torch.float64),
        torch.tensor([sigma], dtype=torch.float64),
    )


def toy_structure() -> Structure:
    coords = np.array([[0.0, 0.0, 0.0], [1.5, 0.0, 0.0], [0.0, 1.4, 0.3], [0.5, -1.0, 1.0]])
    return Structure(coords, ["C", "N", "O", "S"], [1, 1, 1, 2], ["CA", "N", "O", "SD"], ["A"] * 4)


def test_peng_table_matches_gemmi():
    for element, (a, b) in PENG_ELECTRON_SCATTERING.items():
        coef = gemmi.Element(element).c4322
        np.testing.assert_allclose(a, list(coef.a), atol=1e-4, err_msg=element)
        np.testing.assert_allclose(b, list(coef.b), atol=1e-4, err_msg=element)
    # hydrogen's f(0) is the Bohr radius (0.529 Å)
    assert sum(PENG_ELECTRON_SCATTERING["H"][0]) == pytest.approx(0.529, abs=2e-3)


def test_structure_to_gaussians_parameters():
    st = toy_structure()
    mix = structure_to_gaussians(st, bfactor_a2=20.0)
    assert len(mix) == 20
    a, b = PENG_ELECTRON_SCATTERING["C"]
    np.testing.assert_allclose(mix.amplitudes[:5].numpy(), a)
    expected = np.sqrt((np.array(b) + 20.0) / (8 * math.pi**2))
    np.testing.assert_allclose(mix.sigmas_angstrom[:5].numpy(), expected)
    np.testing.assert_allclose(mix.centres_angstrom[5:10].numpy(), [[1.5, 0.0, 0.0]] * 5)
    total = sum(sum(PENG_ELECTRON_SCATTERING[e][0]) for e in "CNOS")
    assert mix.total_mass == pytest.approx(total)
    simple = structure_to_gaussians(st, bfactor_a2=10.0, model="single")
    assert len(simple) == 4
    np.testing.assert_allclose(simple.amplitudes.numpy(), [6, 7, 8, 16])
    np.testing.assert_allclose(
        simple.sigmas_angstrom.numpy(), math.sqrt((10.0 + 17.0) / (8 * math.pi**2))
    )
    with pytest.raises(ValueError):
        structure_to_gaussians(st, model="nope")
    with pytest.raises(ValueError):
        structure_to_gaussians(st, bfactor_a2=-1.0)


@pytest.mark.parametrize("bfactor", [0.0, 40.0])
def test_transform_is_scattering_factor(bfactor):
    """A carbon atom at the origin: image transform at |k| = scattering factor f(s=|k|/2)."""
    st = Structure(np.zeros((1, 3)), ["C"], [1], ["CA"], ["A"])
    mix = structure_to_gaussians(st, bfactor_a2=bfactor)
    box, pixel = 32, 0.8
    ft = project_gaussians_fourier(mix, torch.eye(3)[None], box, pixel, dtype=torch.float64)[0]
    coef = gemmi.Element("C").c4322
    for col in range(box // 2 + 1):
        k = col / (box * pixel)  # cycles/Å
        stol2 = (k / 2) ** 2
        expected = coef.calculate_sf(stol2) * math.exp(-bfactor * stol2)
        assert ft[box // 2, col].real == pytest.approx(expected, rel=1e-5, abs=1e-9)
        assert abs(ft[box // 2, col].imag) < 1e-12


@pytest.mark.parametrize("box", [32, 33])
def test_volume_mass_and_axis_aligned_projections(box):
    # pixel 0.6 Å: the blobs (sigma >= 1.5 Å) have no content left at Nyquist, where even
    # boxes alias +1/2 and -1/2 and rotated slices may legitimately differ
    mix = smooth_mixture(spread=4.0)
    pixel = 0.6
    vol = gaussians_volume(mix, box, pixel, dtype=torch.float64)
    assert vol.shape == (box, box, box)
    assert vol.dtype == torch.float64
    assert float(vol.sum()) == pytest.approx(mix.total_mass, rel=1e-10)
    # identity: projection along z is the sum over the z axis (index 0)
    ident = torch.eye(3, dtype=torch.float64)[None]
    ft = project_gaussians_fourier(mix, ident, box, pixel, dtype=torch.float64)
    assert ft.shape == (1, box, box // 2 + 1)
    assert ft[0, box // 2, 0].real == pytest.approx(mix.total_mass, rel=1e-10)
    assert ft[0, box // 2, 0].real == pytest.approx(float(vol.sum()), rel=1e-10)
    img = centered_irfft2(ft, box)[0]
    tol = 1e-10 * float(img.abs().max())
    torch.testing.assert_close(img, vol.sum(0), rtol=0, atol=tol)
    torch.testing.assert_close(centered_rfft2(vol.sum(0)), ft[0], rtol=0, atol=1e-9)
    # +90 deg about lab y: particle z -> lab x, so the image is the x-axis sum, transposed
    roty = rodrigues([0, 1, 0], math.pi / 2)[None]
    img_y = centered_irfft2(project_gaussians_fourier(mix, roty, box, pixel, torch.float64), box)
    torch.testing.assert_close(img_y[0], vol.sum(2).T, rtol=0, atol=tol)
    # +90 deg about lab x: particle y -> lab z, particle z -> lab -y
    rotx = rodrigues([1, 0, 0], math.pi / 2)[None]
    img_x = centered_irfft2(project_gaussians_fourier(mix, rotx, box, pixel, torch.float64), box)
    expected = torch.roll(torch.flip(vol.sum(1), dims=(0,)), shifts=1 - box % 2, dims=0)
    torch.testing.assert_close(img_x[0], expected, rtol=0, atol=tol)


@pytest.mark.parametrize("box", [48, 49])
def test_fourier_matches_real_space_projection(box):
    mix = smooth_mixture(spread=6.0)
    rots = random_rotations(6, seed=box)
    pixel = 1.0
    img_f = centered_irfft2(project_gaussians_fourier(mix, rots, box, pixel, torch.float64), box)
    img_r = project_gaussians_real(mix, rots, box, pixel, dtype=torch.float64)
    assert img_r.shape == (6, box, box)
    rel = float((img_f - img_r).abs().max() / img_r.abs().max())
    assert rel < 1e-3
    # float32 fast path
    img_32 = centered_irfft2(project_gaussians_fourier(mix, rots, box, pixel), box)
    assert img_32.dtype == torch.float32
    assert float((img_32.double() - img_r).abs().max() / img_r.abs().max()) < 1e-3
    # and the band-limited volume of each rotated mixture, summed along z
    for b in (0, 3):
        vol = gaussians_volume(mix.rotated(rots[b]), box, pixel, dtype=torch.float64)
        torch.testing.assert_close(img_f[b], vol.sum(0), rtol=0, atol=1e-9)


@pytest.mark.parametrize("box", [24, 25])
def test_position_conventions(box):
    pixel = 2.0
    ident = torch.eye(3, dtype=torch.float64)[None]
    # +4 Å along x with the identity: column D//2 + 2
    img = centered_irfft2(
        project_gaussians_fourier(single(4.0, 0.0, 0.0), ident, box, pixel, torch.float64), box
    )[0]
    iy, ix = divmod(int(torch.argmax(img)), box)
    assert (iy, ix) == (box // 2, box // 2 + 2)
    real = project_gaussians_real(single(4.0, 0.0, 0.0), ident, box, pixel, torch.float64)[0]
    assert int(torch.argmax(real)) == int(torch.argmax(img))
    # particle +z rotated by +90 deg about lab y lands on +x
    roty = rodrigues([0, 1, 0], math.pi / 2)
    torch.testing.assert_close(
        roty @ torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64),
        torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64),
    )
    img = centered_irfft2(
        project_gaussians_fourier(single(0.0, 0.0, 6.0), roty[None], box, pixel, torch.float64),
        box,
    )[0]
    assert divmod(int(torch.argmax(img)), box) == (box // 2, box // 2 + 3)
    # +y lands on row D//2 + k
    img = centered_irfft2(
        project_gaussians_fourier(single(0.0, -4.0, 0.0), ident, box, pixel, torch.float64), box
    )[0]
    assert divmod(int(torch.argmax(img)), box) == (box // 2 - 2, box // 2)
    # volume: (x, y, z) = (4, -2, 6) Å -> voxel [z, y, x] = D//2 + (3, -1, 2)
    vol = gaussians_volume(single(4.0, -2.0, 6.0), box, pixel, dtype=torch.float64)
    iz, rest = divmod(int(torch.argmax(vol)), box * box)
    iy, ix = divmod(rest, box)
    assert (iz, iy, ix) == (box // 2 + 3, box // 2 - 1, box // 2 + 2)


def test_grouped_and_per_component_paths_agree():
    rng = np.random.default_rng(3)
    n = 200
    elements = rng.choice(["C", "N", "O", "S"], size=n)
    st = Structure(rng.normal(size=(n, 3)) * 5, elements, np.arange(n), ["X"] * n, ["A"] * n)
    mix = structure_to_gaussians(st, bfactor_a2=50.0)  # 20 distinct sigmas -> grouped path
    jitter = 1.0 + 1e-9 * torch.arange(len(mix), dtype=torch.float64)  # all distinct
    mix_ungrouped = GaussianMixture(
        mix.centres_angstrom, mix.amplitudes, mix.sigmas_angstrom * jitter
    )
    rots = random_rotations(4, seed=7)
    a = project_gaussians_fourier(mix, rots, 32, 1.0, torch.float64)
    b = project_gaussians_fourier(mix_ungrouped, rots, 32, 1.0, torch.float64)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6 * float(a.abs().max()))


def test_input_validation():
    mix = single(0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        project_gaussians_fourier(mix, torch.eye(3), 16, 1.0)
    with pytest.raises(ValueError):
        gaussians_volume(mix, 16, 0.0)
    with pytest.raises(ValueError):
        GaussianMixture(torch.zeros(3, 2), torch.ones(3), torch.ones(3))
    with pytest.raises(ValueError):
        GaussianMixture(torch.zeros(3, 3), torch.ones(2), torch.ones(3))
