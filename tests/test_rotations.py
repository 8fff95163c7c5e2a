"""Tests for cryoviz.geometry.rotations (conventions, conversions, sampling)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from cryoviz.geometry import (
    axis_angle_to_matrix,
    euler_relion_to_matrix,
    geodesic_distance_deg,
    matrix_to_axis_angle,
    matrix_to_euler_relion,
    matrix_to_quaternion,
    matrix_to_rotation_6d,
    quaternion_to_matrix,
    random_rotations,
    rotation_6d_to_matrix,
    rotation_about_axis,
    viewing_direction,
)

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _relion_matrix_by_hand(rot: float, tilt: float, psi: float) -> np.ndarray:
    """RELION's Euler_angles2matrix, element by element (independent expectation)."""
    a, b, g = np.deg2rad([rot, tilt, psi])
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    return np.array(
        [
            [cg * cb * ca - sg * sa, cg * cb * sa + sg * ca, -cg * sb],
            [-sg * cb * ca - cg * sa, -sg * cb * sa + cg * ca, sg * sb],
            [sb * ca, sb * sa, cb],
        ]
    )


def _edge_rotations() -> torch.Tensor:
    """Identity, angle-pi rotations, tilt 0 / 180 and near-gimbal Euler angles."""
    mats = [torch.eye(3, dtype=F64)]
    for axis in "xyz":
        for ang in (180.0, -180.0, 179.9999999, 1e-9, 90.0):
            mats.append(rotation_about_axis(axis, torch.tensor(ang, dtype=F64)))
    axes = torch.nn.functional.normalize(torch.randn(5, 3, generator=_gen(3), dtype=F64), dim=-1)
    mats += list(axis_angle_to_matrix(math.pi * axes))
    euler = torch.tensor(
        [[30, 0, 40], [-120, 180, 75], [10, 1e-9, 20], [10, 180 - 1e-9, 20], [170, 1e-5, -35]],
        dtype=F64,
    )
    mats += list(euler_relion_to_matrix(euler))
    return torch.stack(mats)


def _test_set(n: int = 2000) -> torch.Tensor:
    return torch.cat([random_rotations(n, _gen(0)), _edge_rotations()])


# --------------------------------------------------------------------------- conventions


@pytest.mark.parametrize(
    "angles",
    [(0, 0, 0), (30, 40, 50), (-75, 120, 200), (10, 90, -90), (123, 180, 45), (300, 1, 0)],
)
def test_euler_matches_relion_element_formulas(angles):
    expected = _relion_matrix_by_hand(*angles)
    got = euler_relion_to_matrix(torch.tensor(angles, dtype=F64)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-14)
    rot, tilt, psi = np.deg2rad(angles)
    assert got[0, 2] == pytest.approx(-math.cos(psi) * math.sin(tilt), abs=1e-14)
    assert got[2, 0] == pytest.approx(math.sin(tilt) * math.cos(rot), abs=1e-14)
    assert got[2, 2] == pytest.approx(math.cos(tilt), abs=1e-14)


def test_euler_is_transpose_of_active_zyz():
    e = torch.tensor([25.0, 65.0, -140.0], dtype=F64)
    forward = (
        rotation_about_axis("z", e[0])
        @ rotation_about_axis("y", e[1])
        @ rotation_about_axis("z", e[2])
    )
    torch.testing.assert_close(euler_relion_to_matrix(e), forward.T)


def test_rotation_about_axis_is_active_counterclockwise():
    ex, ey, ez = torch.eye(3, dtype=F64)
    ninety = torch.tensor(90.0, dtype=F64)
    torch.testing.assert_close(rotation_about_axis("z", ninety) @ ex, ey)
    torch.testing.assert_close(rotation_about_axis("x", ninety) @ ey, ez)
    torch.testing.assert_close(rotation_about_axis("y", ninety) @ ez, ex)
    with pytest.raises(ValueError):
        rotation_about_axis("w", ninety)


def test_viewing_direction():
    e = torch.tensor([[0.0, 90.0, 0.0], [90.0, 90.0, 33.0], [17.0, 0.0, 50.0], [40.0, 70.0, 5.0]],
                     dtype=F64)
    rot, tilt = torch.deg2rad(e[:, 0]), torch.deg2rad(e[:, 1])
    expected = torch.stack(
        [torch.sin(tilt) * torch.cos(rot), torch.sin(tilt) * torch.sin(rot), torch.cos(tilt)], -1
    )
    R = euler_relion_to_matrix(e)
    torch.testing.assert_close(viewing_direction(R), expected)
    # the particle-frame direction is what the projection integrates along (lab z)
    torch.testing.assert_close(R @ expected[..., None], torch.tensor([0.0, 0, 1], dtype=F64)
                               .expand(4, 3)[..., None])


def test_orthonormal_det_one():
    R = torch.cat([_test_set(), euler_relion_to_matrix(torch.rand(500, 3, dtype=F64) * 360)])
    eye = torch.eye(3, dtype=F64).expand_as(R)
    torch.testing.assert_close(R.transpose(-1, -2) @ R, eye, atol=1e-13, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(len(R), dtype=F64))


# --------------------------------------------------------------------------- round trips


def test_euler_round_trip():
    R = _test_set()
    e = matrix_to_euler_relion(R)
    assert e[:, 1].min() >= 0 and e[:, 1].max() <= 180
    assert e[:, [0, 2]].abs().max() <= 180
    torch.testing.assert_close(euler_relion_to_matrix(e), R, atol=1e-13, rtol=0)
    # generic angles come back unchanged
    e0 = torch.tensor([[30.0, 40.0, 50.0], [-170.0, 179.0, 10.0], [10.0, 1e-5, 20.0]], dtype=F64)
    torch.testing.assert_close(matrix_to_euler_relion(euler_relion_to_matrix(e0)), e0)


@pytest.mark.parametrize("tilt", [0.0, 180.0])
def test_euler_gimbal_lock(tilt):
    e = torch.tensor([[35.0, tilt, 20.0], [-100.0, tilt, 170.0]], dtype=F64)
    R = euler_relion_to_matrix(e)
    back = matrix_to_euler_relion(R)
    torch.testing.assert_close(back[:, 0], torch.zeros(2, dtype=F64))
    torch.testing.assert_close(back[:, 1], torch.full((2,), tilt, dtype=F64))
    torch.testing.assert_close(euler_relion_to_matrix(back), R, atol=1e-14, rtol=0)
    # all in-plane rotation goes into psi: rot + psi (tilt 0) or psi - rot (tilt 180)
    in_plane = e[:, 2] + e[:, 0] if tilt == 0 else e[:, 2] - e[:, 0]
    diff = torch.remainder(back[:, 2] - in_plane + 180, 360) - 180
    torch.testing.assert_close(diff, torch.zeros(2, dtype=F64), atol=1e-10, rtol=0)


def test_quaternion_round_trip_and_canonical_sign():
    R = _test_set()
    q = matrix_to_quaternion(R)
    torch.testing.assert_close(torch.linalg.vector_norm(q, dim=-1), torch.ones(len(R), dtype=F64))
    assert (q[:, 0] >= 0).all()
    torch.testing.assert_close(quaternion_to_matrix(q), R, atol=1e-14, rtol=0)
    torch.testing.assert_close(quaternion_to_matrix(-q), R, atol=1e-14, rtol=0)


def test_quaternion_convention():
    # (cos a/2, sin a/2 n) is the active rotation by a about n
    a = torch.tensor(70.0, dtype=F64)
    half = torch.deg2rad(a) / 2
    for i, axis in enumerate("xyz"):
        q = torch.zeros(4, dtype=F64)
        q[0], q[i + 1] = torch.cos(half), torch.sin(half)
        torch.testing.assert_close(quaternion_to_matrix(q), rotation_about_axis(axis, a))
        torch.testing.assert_close(matrix_to_quaternion(rotation_about_axis(axis, a)), q)


def test_axis_angle_round_trip():
    R = _test_set()
    v = matrix_to_axis_angle(R)
    assert torch.linalg.vector_norm(v, dim=-1).max() <= math.pi + 1e-12
    torch.testing.assert_close(axis_angle_to_matrix(v), R, atol=1e-14, rtol=0)


def test_axis_angle_near_zero_and_pi():
    axes = torch.nn.functional.normalize(torch.randn(6, 3, generator=_gen(5), dtype=F64), dim=-1)
    for angle in (0.0, 1e-12, 1e-7, 1e-3, 0.5, 3.0, math.pi - 1e-6, math.pi - 1e-9):
        v = axes * angle
        R = axis_angle_to_matrix(v)
        torch.testing.assert_close(matrix_to_axis_angle(R), v, atol=1e-12, rtol=0)
        torch.testing.assert_close(
            geodesic_distance_deg(torch.eye(3, dtype=F64), R),
            torch.full((6,), math.degrees(angle), dtype=F64), atol=1e-9, rtol=0,
        )
    # Rodrigues vs the closed form about z
    R = axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.radians(40.0)], dtype=F64))
    torch.testing.assert_close(R, rotation_about_axis("z", torch.tensor(40.0, dtype=F64)))


def test_rotation_6d_round_trip():
    R = _test_set()
    torch.testing.assert_close(rotation_6d_to_matrix(matrix_to_rotation_6d(R)), R,
                               atol=1e-14, rtol=0)
    x = torch.randn(50, 6, generator=_gen(7), dtype=F64)
    M = rotation_6d_to_matrix(x)
    torch.testing.assert_close(M.transpose(-1, -2) @ M, torch.eye(3, dtype=F64).expand_as(M))
    torch.testing.assert_close(torch.linalg.det(M), torch.ones(50, dtype=F64))
    torch.testing.assert_close(M[..., 0], torch.nn.functional.normalize(x[:, :3], dim=-1))


def test_batching_dtype_and_shape_errors():
    e = torch.rand(2, 5, 3) * 100
    R = euler_relion_to_matrix(e)
    assert R.shape == (2, 5, 3, 3) and R.dtype == torch.float32
    assert matrix_to_quaternion(R).shape == (2, 5, 4)
    assert matrix_to_axis_angle(R).shape == (2, 5, 3)
    assert matrix_to_euler_relion(R).dtype == torch.float32
    torch.testing.assert_close(euler_relion_to_matrix(matrix_to_euler_relion(R)), R,
                               atol=2e-6, rtol=0)
    assert geodesic_distance_deg(R[:, :1], R).shape == (2, 5)
    for fn, bad in [
        (euler_relion_to_matrix, torch.zeros(4, 2)),
        (matrix_to_euler_relion, torch.zeros(3, 4)),
        (quaternion_to_matrix, torch.zeros(3)),
        (matrix_to_quaternion, torch.zeros(2, 9)),
        (axis_angle_to_matrix, torch.zeros(4)),
        (rotation_6d_to_matrix, torch.zeros(5)),
    ]:
        with pytest.raises(ValueError, match="expected shape"):
            fn(bad)


# --------------------------------------------------------------------------- distances


def test_geodesic_distance_known_rotations():
    eye = torch.eye(3, dtype=F64)
    angles = torch.tensor([0.0, 1e-6, 0.3, 45.0, 90.0, 179.9999, 180.0], dtype=F64)
    for axis in "xyz":
        d = geodesic_distance_deg(eye, rotation_about_axis(axis, angles))
        torch.testing.assert_close(d, angles, atol=1e-9, rtol=0)
        d = geodesic_distance_deg(rotation_about_axis(axis, -angles), eye)
        torch.testing.assert_close(d, angles, atol=1e-9, rtol=0)
    R1, R2, Q = random_rotations(300, _gen(11)).split(100)
    d = geodesic_distance_deg(R1, R2)
    torch.testing.assert_close(geodesic_distance_deg(R2, R1), d)
    torch.testing.assert_close(geodesic_distance_deg(Q @ R1, Q @ R2), d)  # bi-invariant
    torch.testing.assert_close(geodesic_distance_deg(R1 @ Q, R2 @ Q), d)
    norm = torch.linalg.vector_norm(matrix_to_axis_angle(R1.transpose(-1, -2) @ R2), dim=-1)
    torch.testing.assert_close(d, torch.rad2deg(norm))


# --------------------------------------------------------------------------- sampling


def _haar_angle_cdf(theta: np.ndarray) -> np.ndarray:
    # density (1 - cos t) / pi on [0, pi]
    return (theta - np.sin(theta)) / np.pi


def test_random_rotations_haar():
    n = 20000
    R = random_rotations(n, _gen(2024))
    assert R.shape == (n, 3, 3) and R.dtype == F64
    # E[R] = 0 under the Haar measure (each entry has std 1/sqrt(3 n))
    assert R.mean(0).abs().max() < 5 / math.sqrt(3 * n)
    angles = torch.deg2rad(geodesic_distance_deg(torch.eye(3, dtype=F64), R)).numpy()
    assert stats.kstest(angles, _haar_angle_cdf).pvalue > 1e-3
    # viewing directions uniform on the sphere: cos(tilt) uniform on [-1, 1]
    z = viewing_direction(R)[:, 2].numpy()
    assert stats.kstest(z, stats.uniform(loc=-1, scale=2).cdf).pvalue > 1e-3
    # the test has power: uniformly drawn Euler angles are not Haar
    naive = euler_relion_to_matrix(torch.rand(n, 3, generator=_gen(1), dtype=F64) * 360)
    naive_angles = torch.deg2rad(geodesic_distance_deg(torch.eye(3, dtype=F64), naive)).numpy()
    assert stats.kstest(naive_angles, _haar_angle_cdf).pvalue < 1e-6


def test_random_rotations_reproducible_and_typed():
    a = random_rotations(10, _gen(3))
    b = random_rotations(10, _gen(3))
    torch.testing.assert_close(a, b)
    c = random_rotations(4, dtype=torch.float32)
    assert c.dtype == torch.float32 and c.shape == (4, 3, 3)


# --------------------------------------------------------------------------- gradients


def test_gradcheck_axis_angle_to_matrix():
    v = torch.randn(4, 3, generator=_gen(8), dtype=F64)
    v = torch.cat([v, 1e-4 * v[:1], torch.zeros(1, 3, dtype=F64)]).requires_grad_(True)
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (v,))


def test_gradcheck_rotation_6d_to_matrix():
    x = torch.randn(5, 6, generator=_gen(9), dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(rotation_6d_to_matrix, (x,))


def test_gradient_of_geodesic_distance_is_finite():
    R1 = random_rotations(8, _gen(12))
    v = (0.3 * torch.randn(8, 3, generator=_gen(13), dtype=F64)).requires_grad_(True)
    geodesic_distance_deg(R1, R1 @ axis_angle_to_matrix(v)).sum().backward()
    assert torch.isfinite(v.grad).all()
