"""Pose scoring kernel: the matrix-product likelihood equals the direct residual sum."""

from __future__ import annotations

import math

import pytest
import torch

from cryoviz.fourier import phase_shift
from cryoviz.inference.pose_scoring import (
    angular_spread_deg,
    credible_set,
    normalise_scores,
    pixel_set,
    score_poses,
    shift_grid,
    shift_phases,
)
from tests._phantoms import random_rotations


def _direct(x, ctf, w, proj, shift):
    """-sum_p w_p |x - ctf S_t P|^2 + sum_p w_p |x|^2 (the scored part), one pose."""
    model = ctf * shift * proj
    return float(-(w * (x - model).abs() ** 2).sum() + (w * x.abs() ** 2).sum())


@pytest.mark.parametrize("per_image", [False, True])
def test_scores_equal_direct_residuals(per_image):
    gen = torch.Generator().manual_seed(0)
    box, b, r = 16, 3, 5
    pix = pixel_set(box, 6)
    p = pix.pixels.numel()
    x = torch.randn(b, p, dtype=torch.complex128, generator=gen)
    ctf = torch.randn(b, p, dtype=torch.float64, generator=gen)
    sigma2 = torch.rand(box // 2 + 1, dtype=torch.float64, generator=gen) + 0.5
    w = pix.inverse_variance(sigma2)
    shifts = shift_grid(1.5, 1.0)
    phases = shift_phases(shifts, pix)
    proj = torch.randn((b, r, p) if per_image else (r, p), dtype=torch.complex128,
                       generator=gen)
    scores = score_poses(x, ctf, w, proj, phases)
    assert scores.shape == (b, shifts.shape[0], r)
    for i in range(b):
        for t in range(shifts.shape[0]):
            for k in range(r):
                pk = proj[i, k] if per_image else proj[k]
                assert scores[i, t, k].item() == pytest.approx(
                    _direct(x[i], ctf[i], w, pk, phases[t]), rel=1e-10, abs=1e-9)


def test_shift_phase_matches_phase_shift_convention():
    box = 12
    pix = pixel_set(box, box // 2)
    gen = torch.Generator().manual_seed(1)
    ft = torch.randn(1, box, box // 2 + 1, dtype=torch.complex128, generator=gen)
    t = torch.tensor([[1.5, -2.0]], dtype=torch.float64)
    expected = pix.take(phase_shift(ft, t, box))[0]
    got = pix.take(ft)[0] * shift_phases(t, pix)[0]
    assert torch.allclose(got, expected)


def test_true_pose_scores_best_on_noise_free_data():
    box = 16
    pix = pixel_set(box, box // 2)
    gen = torch.Generator().manual_seed(2)
    proj = torch.randn(7, pix.pixels.numel(), dtype=torch.complex128, generator=gen)
    shifts = shift_grid(2.0, 1.0)
    phases = shift_phases(shifts, pix)
    ctf = torch.ones(1, proj.shape[1], dtype=torch.float64)
    x = (phases[4] * proj[3])[None]
    scores = score_poses(x, ctf, pix.inverse_variance(torch.ones(box // 2 + 1)), proj, phases)
    flat = int(scores.reshape(-1).argmax())
    assert divmod(flat, 7) == (4, 3)


def test_shift_grid_is_a_disc_with_the_origin():
    grid = shift_grid(2.0, 1.0)
    assert grid.shape == (13, 2)
    assert (grid**2).sum(-1).max() <= 4.0 + 1e-12
    assert ((grid == 0).all(-1)).sum() == 1
    with pytest.raises(ValueError):
        shift_grid(1.0, 0.0)


def test_normalised_posterior_and_credible_set():
    scores = torch.log(torch.tensor([[[0.5, 0.3, 0.15, 0.05]]], dtype=torch.float64)) + 7.0
    gamma, evidence = normalise_scores(scores)
    assert torch.allclose(gamma.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert evidence.item() == pytest.approx(7.0)
    mask = credible_set(gamma.reshape(1, -1), 0.9)
    assert mask.tolist() == [[True, True, True, False]]
    assert credible_set(gamma.reshape(1, -1), 0.4).tolist() == [[True, False, False, False]]


def test_angular_spread_of_two_equal_rotations_apart():
    best = torch.eye(3, dtype=torch.float64)[None]
    angle = math.radians(10.0)
    rz = torch.tensor([[math.cos(angle), -math.sin(angle), 0.0],
                       [math.sin(angle), math.cos(angle), 0.0], [0.0, 0.0, 1.0]],
                      dtype=torch.float64)
    cands = torch.stack([torch.eye(3, dtype=torch.float64), rz])[None]
    spread = angular_spread_deg(cands, torch.tensor([[0.5, 0.5]], dtype=torch.float64), best)
    assert spread.item() == pytest.approx(math.sqrt(50.0))
    rots = random_rotations(4, seed=3)
    zero = angular_spread_deg(rots[None], torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64),
                              rots[:1])
    assert zero.item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("n_levels", [1, 2])
def test_hierarchical_search_finds_a_pose_between_grid_points(n_levels):
    from cryoviz.geometry import SO3Grid
    from cryoviz.imaging import volume_to_fourier
    from cryoviz.inference.pose_search import refine_candidates, summarise, top_rotations
    from cryoviz.metrics import rotation_error_deg
    from cryoviz.projection import extract_points
    from tests._phantoms import blob_volume, random_blobs

    box = 24
    blobs = random_blobs(box, n_blobs=6, seed=6, sigma_range=(1.5, 2.0), max_radius_frac=0.3)
    volume_ft = volume_to_fourier(blob_volume(blobs, box))
    pix = pixel_set(box, 4)
    truth = random_rotations(8, seed=7)
    x = extract_points(volume_ft, truth, pix.frequencies)
    ctf = torch.ones_like(x.real)
    w = pix.inverse_variance(torch.full((box // 2 + 1,), 1e-3, dtype=torch.float64))
    grid = SO3Grid(1).rotations(torch.float64)
    shifts = shift_grid(1.0, 1.0)
    scores = score_poses(x, ctf, w, extract_points(volume_ft, grid, pix.frequencies),
                         shift_phases(shifts, pix))
    top, best_t = top_rotations(scores, 4)
    coarse_err = rotation_error_deg(grid[top[:, 0]], truth, align=False)
    fine = refine_candidates(x, ctf, w, volume_ft, pix, 1, top, shifts[best_t], 1.0,
                             n_levels=n_levels, n_keep=4)
    assert fine.order == 1 + n_levels
    best = summarise(fine, 3, 1.0)
    err = rotation_error_deg(best["rotations"], truth, align=False)
    # where the coarse grid found the right basin, each level halves the spacing
    # (~30 degrees at order 1); the beam may settle one cell off the truth
    right = coarse_err < 25.0
    assert int(right.sum()) >= 4
    assert float(err[right].max()) < 60.0 / 2**n_levels
    assert (err[right] < coarse_err[right]).all()
    assert float(best["shifts_angstrom"][right].abs().max()) <= 0.5
