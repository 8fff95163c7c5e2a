"""Tests for cryoviz.metrics.poses."""

from __future__ import annotations

import pytest
import torch

from cryoviz.geometry import axis_angle_to_matrix, geodesic_distance_deg, random_rotations
from cryoviz.metrics import (
    align_rotations,
    apply_rotation_alignment,
    flip_hand,
    rotate_volume,
    rotation_error_deg,
    shift_error_angstrom,
)

F = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))


def blobs(box: int) -> torch.Tensor:
    axis = torch.arange(box, dtype=torch.float64) - box // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    vol = torch.zeros(box, box, box, dtype=torch.float64)
    for (cx, cy, cz), s in [((5, 2, 0), 2.5), ((-4, 3, 2), 2.0), ((1, -5, 3), 1.5),
                            ((0, 0, -5), 1.8), ((3, -2, 4), 1.2)]:
        vol += torch.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * s**2))
    return vol


def project(vol: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """image(x, y) = sum_z V(R^T (x, y, z)): the lab-frame map is rotate_volume(V, R)."""
    return rotate_volume(vol, R).sum(dim=0)


def noisy_poses(n: int, G: torch.Tensor, flip: bool, seed: int):
    gen = torch.Generator().manual_seed(seed)
    R_true = random_rotations(n, generator=gen)
    # R_est @ G = R_true for the right hand; the mirrored hand has F R_est F
    R_est = R_true @ G.T
    if flip:
        R_est = F @ R_est @ F
    noise = axis_angle_to_matrix(torch.randn(n, 3, generator=gen, dtype=torch.float64) * 0.01)
    R_est = R_est @ noise
    n_out = n // 10
    R_est[:n_out] = random_rotations(n_out, generator=gen)  # 10% outliers
    return R_est, R_true


def test_rotated_reconstruction_relation_by_projection():
    """V_rec = rotate_volume(V, G) seen with R_est = R_true G^T gives the same images."""
    box = 24
    vol = blobs(box)
    gen = torch.Generator().manual_seed(0)
    G = random_rotations(1, generator=gen)[0]
    R_true = random_rotations(3, generator=gen)
    rec = rotate_volume(vol, G)
    for R in R_true:
        img_true = project(vol, R)
        img_rec = project(rec, R @ G.T)
        assert torch.corrcoef(torch.stack([img_true.flatten(), img_rec.flatten()]))[0, 1] > 0.995
        # using G instead of G^T is clearly wrong
        img_bad = project(rec, R @ G)
        assert torch.corrcoef(torch.stack([img_true.flatten(), img_bad.flatten()]))[0, 1] < 0.95


@pytest.mark.parametrize("box", [24, 25])
def test_mirror_relation_by_projection(box):
    """The mirrored map seen with poses R gives the images of the true map with F R F."""
    vol = blobs(box)
    mirrored = flip_hand(vol)
    for R in random_rotations(3, generator=torch.Generator().manual_seed(1)):
        img_m = project(mirrored, R)
        img = project(vol, F @ R @ F)
        assert torch.corrcoef(torch.stack([img_m.flatten(), img.flatten()]))[0, 1] > 0.995
        # and not with R itself
        img_bad = project(vol, R)
        assert torch.corrcoef(torch.stack([img_m.flatten(), img_bad.flatten()]))[0, 1] < 0.95


@pytest.mark.parametrize("flip", [False, True])
def test_align_rotations_with_outliers(flip):
    G = random_rotations(1, generator=torch.Generator().manual_seed(5))[0]
    R_est, R_true = noisy_poses(2000, G, flip, seed=6)
    al = align_rotations(R_est, R_true)
    assert al.flipped == flip
    assert float(geodesic_distance_deg(al.rotation, G)) < 0.2
    err = rotation_error_deg(R_est, R_true)
    assert err.shape == (2000,)
    assert float(err[200:].max()) < 3.0  # inliers ~ 0.01 rad noise
    assert float(err[200:].median()) < 1.5
    assert float(err[:200].median()) > 30.0  # outliers stay outliers
    aligned = apply_rotation_alignment(R_est, al)
    assert torch.allclose(geodesic_distance_deg(aligned, R_true), err)
    # without alignment the errors are large
    assert float(rotation_error_deg(R_est, R_true, align=False).median()) > 10.0
    if flip:
        # refusing the mirror leaves large errors
        assert float(rotation_error_deg(R_est, R_true, allow_flip=False).median()) > 10.0


def test_align_rotations_exact_and_consistent_with_align_volume_convention():
    gen = torch.Generator().manual_seed(8)
    G = random_rotations(1, generator=gen)[0]
    R_true = random_rotations(50, generator=gen)
    R_est = R_true @ G.T
    al = align_rotations(R_est, R_true)
    assert not al.flipped
    assert torch.allclose(al.rotation, G, atol=1e-8)
    assert float(rotation_error_deg(R_est, R_true).max()) < 1e-4
    assert al.median_error_deg < 1e-4


def test_shift_error_and_errors():
    est = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    true = torch.tensor([[4.0, 6.0], [0.0, 1.0]])
    assert torch.allclose(shift_error_angstrom(est, true), torch.tensor([5.0, 1.0]))
    with pytest.raises(ValueError, match="same shape"):
        shift_error_angstrom(est, true[:1])
    R = random_rotations(4)
    with pytest.raises(ValueError, match="same shape"):
        align_rotations(R, R[:3])
    with pytest.raises(ValueError, match=r"\(N, 3, 3\)"):
        rotation_error_deg(R[:, :2], R[:, :2])
