"""Tests for cryoviz.imaging: shifts, CTF and real-space rendering in the forward model."""

from __future__ import annotations

import pytest
import torch

from cryoviz.ctf import CTFParams, compute_ctf_2d
from cryoviz.fourier import centered_irfft2, frequency_grid_2d
from cryoviz.imaging import (
    apply_shift_and_ctf,
    forward_fourier,
    gridding_correction,
    images_to_fourier,
    project_fourier,
    render_images,
    volume_to_fourier,
)
from tests._phantoms import blob_volume, random_blobs, random_rotations, relative_error

APIX = 1.5


def _volume(box):
    return blob_volume(random_blobs(box, n_blobs=5, seed=11, sigma_range=(1.2, 2.5)), box)


@pytest.mark.parametrize("box", [20, 21])
def test_forward_shift_equals_rolling_the_image(box):
    vol = _volume(box)
    rot = random_rotations(4, seed=1)
    shifts_px = torch.tensor([[2.0, 0.0], [0.0, -3.0], [-1.0, 4.0], [5.0, 5.0]])
    ft_vol = volume_to_fourier(vol)
    plain = centered_irfft2(forward_fourier(ft_vol, rot, box, APIX), box)
    moved = centered_irfft2(
        forward_fourier(ft_vol, rot, box, APIX, shifts_angstrom=shifts_px * APIX), box
    )
    for i, (tx, ty) in enumerate(shifts_px.long().tolist()):
        expect = torch.roll(plain[i], shifts=(ty, tx), dims=(-2, -1))
        assert torch.allclose(moved[i], expect, atol=1e-10), i
        assert not torch.allclose(moved[i], plain[i], atol=1e-3)
    # render_images applies the same shift
    rendered = render_images(vol, rot, APIX, shifts_angstrom=shifts_px * APIX)
    assert torch.allclose(rendered, moved, atol=1e-10)


@pytest.mark.parametrize("box", [20, 21])
def test_forward_ctf_multiplies_the_transform(box):
    vol = _volume(box)
    rot = random_rotations(3, seed=2)
    ctf = CTFParams.from_arrays(
        defocus_u_angstrom=[8000.0, 15000.0, 22000.0],
        defocus_v_angstrom=[7000.0, 14000.0, 22000.0],
        astigmatism_angle_deg=[10.0, 45.0, 0.0], voltage_kv=300.0, cs_mm=2.7,
        amplitude_contrast=0.1, bfactor_a2=[0.0, 30.0, 0.0],
    )
    ft_vol = volume_to_fourier(vol)
    plain = forward_fourier(ft_vol, rot, box, APIX)
    assert torch.allclose(plain, project_fourier(ft_vol, rot, box))
    with_ctf = forward_fourier(ft_vol, rot, box, APIX, ctf=ctf)
    values = compute_ctf_2d(ctf, box, APIX, rfft=True, dtype=torch.float64)
    assert torch.allclose(with_ctf, plain * values, atol=1e-12)
    assert float((values - 1).abs().max()) > 0.5  # the CTF is not trivial here
    # shift and CTF together
    shifts = torch.tensor([[3.0, -1.5], [0.0, 4.5], [-6.0, 1.5]], dtype=torch.float64)
    both = forward_fourier(ft_vol, rot, box, APIX, shifts_angstrom=shifts, ctf=ctf)
    ky, kx = frequency_grid_2d(box, rfft=True, dtype=torch.float64)
    px = shifts / APIX
    phase = torch.exp(-2j * torch.pi * (kx * px[:, 0, None, None] + ky * px[:, 1, None, None]))
    assert torch.allclose(both, plain * values * phase, atol=1e-12)


def test_precomputed_ctf_values_equal_the_ctf_parameters():
    """``apply_shift_and_ctf(..., ctf_values=...)`` (a CTF evaluated once and reused)
    gives what the parameters give, and render_hypotheses (one CTF per image, shared
    by its hypotheses) what each hypothesis with its own copy of the CTF gives."""
    from cryoviz.inference.amortized_encoder import render_hypotheses  # noqa: PLC0415

    box, heads = 16, 3
    vol = volume_to_fourier(_volume(box))
    ctf = CTFParams.from_arrays(defocus_u_angstrom=[8000.0, 15000.0],
                                defocus_v_angstrom=[7000.0, 14500.0],
                                astigmatism_angle_deg=[10.0, 45.0], voltage_kv=300.0,
                                cs_mm=2.7, amplitude_contrast=0.1)
    rot = random_rotations(2 * heads, seed=3).reshape(2, heads, 3, 3)
    shifts = torch.linspace(-3.0, 3.0, 2 * heads * 2, dtype=torch.float64).reshape(2, heads, 2)
    slices = project_fourier(vol, rot[:, 0], box)
    values = compute_ctf_2d(ctf, box, APIX, rfft=True, dtype=torch.float64)
    torch.testing.assert_close(apply_shift_and_ctf(slices, APIX, shifts[:, 0], ctf_values=values),
                               apply_shift_and_ctf(slices, APIX, shifts[:, 0], ctf),
                               rtol=0, atol=0)

    def slice_volume(rotations, z, box_size, apix):
        return project_fourier(vol, rotations, box_size)

    each = apply_shift_and_ctf(project_fourier(vol, rot.reshape(-1, 3, 3), box), APIX,
                               shifts.reshape(-1, 2),
                               ctf.subset(torch.arange(2).repeat_interleave(heads)))
    shared = render_hypotheses(slice_volume, rot, shifts, None, ctf, box, APIX)
    torch.testing.assert_close(shared, each.reshape(2, heads, box, box // 2 + 1),
                               rtol=0, atol=0)
    torch.testing.assert_close(
        render_hypotheses(slice_volume, rot, shifts, None, None, box, APIX, values), shared,
        rtol=0, atol=0)


@pytest.mark.parametrize("box", [20, 21])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_render_images_real_output(box, dtype):
    vol = _volume(box).to(dtype)
    rot = random_rotations(3, seed=3)
    images = render_images(vol, rot, APIX)
    assert images.shape == (3, box, box)
    assert not images.is_complex()
    assert images.dtype == dtype
    # its transform is the forward model (away from the unpaired Nyquist samples)
    ft = forward_fourier(volume_to_fourier(vol), rot, box, APIX)
    ky, kx = frequency_grid_2d(box, rfft=True, dtype=torch.float64)
    inner = (ky**2 + kx**2).sqrt() < 0.45
    back = images_to_fourier(images)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert relative_error(back[:, inner], ft[:, inner]) < tol
    # DC of every projection = sum of the gridding-corrected volume (pre-divided kernel)
    pad = int(round(2.0 * box))
    mass = (vol.double() / gridding_correction(box, pad, torch.float64)).sum()
    rtol = 1e-10 if dtype == torch.float64 else 1e-5
    assert torch.allclose(images.sum(dim=(-2, -1)).double(), mass.expand(3), rtol=rtol)
    assert float(mass) > float(vol.double().sum())  # the correction divides by sinc^2 <= 1
