"""Tests for cryoviz.metrics.pose_modes: each mode on rotations built to be in it,
and the image relations the modes stand for, checked by real-space projection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryoviz.geometry import axis_angle_to_matrix, random_rotations
from cryoviz.metrics import rotate_volume
from cryoviz.metrics.pose_modes import POSE_ERROR_MODES, pose_error_modes

RZ_PI = torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64))
RX_PI = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))


def _truth(n: int = 200, seed: int = 0) -> torch.Tensor:
    return random_rotations(n, generator=torch.Generator().manual_seed(seed)).double()


def _lab_rotation(axis: tuple[float, float, float], angle_deg: float) -> torch.Tensor:
    v = torch.tensor(axis, dtype=torch.float64)
    return axis_angle_to_matrix(v / v.norm() * math.radians(angle_deg))


def _blobs(box: int = 24) -> torch.Tensor:
    axis = torch.arange(box, dtype=torch.float64) - box // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    vol = torch.zeros(box, box, box, dtype=torch.float64)
    for (cx, cy, cz), s in [((5, 2, 0), 2.5), ((-4, 3, 2), 2.0), ((1, -5, 3), 1.5),
                            ((0, 0, -5), 1.8)]:
        vol += torch.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * s**2))
    return vol


def _project(vol: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """Projection along the lab z axis of the particle rotated by ``R``, ``[y, x]``."""
    return rotate_volume(vol, R).sum(dim=0)


@pytest.mark.parametrize(("lab", "mode"), [
    (torch.eye(3, dtype=torch.float64), "correct"),
    (_lab_rotation((0, 0, 1), 5.0), "correct"),
    (RZ_PI, "inplane_pi"),
    (_lab_rotation((0, 0, 1), 45.0), "same_view"),
    (RX_PI, "opposite_view"),
    (_lab_rotation((1, 1, 0), 180.0), "opposite_view"),
    (_lab_rotation((1, 0, 0), 90.0), "other"),
])
def test_every_particle_lands_in_the_mode_its_rotation_was_built_for(lab, mode):
    truth = _truth()
    modes = pose_error_modes(lab @ truth, truth)
    assert set(modes.labels) == {mode}
    assert modes.fractions()[mode] == 1.0
    assert sum(modes.fractions().values()) == pytest.approx(1.0)
    assert set(modes.fractions()) == set(POSE_ERROR_MODES)


def test_random_estimates_are_mostly_other_at_the_rate_geometry_predicts():
    truth = _truth(4000, seed=1)
    modes = pose_error_modes(_truth(4000, seed=2), truth, tolerance_deg=10.0)
    frac = modes.fractions()
    # a uniform viewing direction lies within 10 deg of a given one (or of its opposite)
    # with probability (1 - cos 10 deg) / 2 each
    cap = (1 - math.cos(math.radians(10.0))) / 2
    assert frac["opposite_view"] == pytest.approx(cap, abs=0.006)
    assert frac["same_view"] + frac["correct"] + frac["inplane_pi"] == pytest.approx(cap,
                                                                                      abs=0.006)
    assert frac["other"] == pytest.approx(1 - 2 * cap, abs=0.01)


def test_mode_images_are_the_rotated_and_mirrored_projections():
    """What the labels mean: at ``Rz(π) R`` the projection is the true one rotated by
    π, at ``Rx(π) R`` it is the mirror image (y -> -y); checked on a real-space map."""
    vol = _blobs()
    R = _truth(1, seed=3)[0]
    image = _project(vol, R)
    rotated = _project(vol, RZ_PI @ R)
    mirrored = _project(vol, RX_PI @ R)
    expect_rotated = torch.roll(torch.flip(image, dims=(0, 1)), shifts=(1, 1), dims=(0, 1))
    expect_mirrored = torch.roll(torch.flip(image, dims=(0,)), shifts=1, dims=0)
    scale = float(image.abs().max())
    inner = (slice(1, None), slice(1, None))  # row / column 0 have no mirror partner
    assert float((rotated - expect_rotated)[inner].abs().max()) < 1e-3 * scale
    assert float((mirrored - expect_mirrored)[inner].abs().max()) < 1e-3 * scale
    assert float((mirrored - image).abs().max()) > 0.1 * scale  # a real change
    assert pose_error_modes(torch.stack([RZ_PI @ R, RX_PI @ R]),
                            torch.stack([R, R])).labels.tolist() == ["inplane_pi",
                                                                     "opposite_view"]


def test_angles_are_reported_and_bad_input_is_refused():
    truth = _truth(3)
    modes = pose_error_modes(RX_PI @ truth, truth)
    np.testing.assert_allclose(modes.rotation_error_deg, 180.0, atol=1e-6)
    np.testing.assert_allclose(modes.view_error_deg, 180.0, atol=1e-5)
    with pytest.raises(ValueError, match="R_est and R_true"):
        pose_error_modes(truth[:2], truth)
    with pytest.raises(ValueError, match="tolerance_deg"):
        pose_error_modes(truth, truth, tolerance_deg=0.0)
