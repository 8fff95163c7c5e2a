"""Pose conventions of RELION / cryoSPARC / cryoDRGN against hand-derived expectations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cryoviz.io.conventions import (
    cryodrgn_to_internal,
    cryosparc_to_internal,
    internal_to_cryodrgn,
    internal_to_cryosparc,
    internal_to_relion,
    relion_to_internal,
)

# RELION (rot, tilt, psi) = (90, 0, 0): A = Rz(90)^T (hand-written).
A_ROT90 = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def _random_euler(n, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(-180, 180, n), rng.uniform(5, 175, n),
                     rng.uniform(-180, 180, n)], axis=1)


def test_relion_matrix_hand_value():
    R, shifts = relion_to_internal(np.array([[90.0, 0.0, 0.0]]), None)
    np.testing.assert_allclose(R[0], A_ROT90, atol=1e-12)
    np.testing.assert_array_equal(shifts, [[0.0, 0.0]])


def test_relion_origin_sign_independent():
    # A particle whose centre sits +3 px in x from the box centre, 1.5 Å/px.
    # RELION docs: the origin translates the image to its centre -> -3 px = -4.5 Å.
    _, origin = internal_to_relion(np.eye(3)[None], np.array([[3 * 1.5, 0.0]]))
    np.testing.assert_allclose(origin, [[-4.5, 0.0]])
    _, shifts = relion_to_internal(np.zeros((1, 3)), np.array([[-4.5, 2.0]]))
    np.testing.assert_allclose(shifts, [[4.5, -2.0]])


def test_relion_round_trip():
    euler = _random_euler(50)
    origin = np.random.default_rng(1).normal(size=(50, 2))
    R, shifts = relion_to_internal(euler, origin)
    e2, o2 = internal_to_relion(R, shifts)
    R2, _ = relion_to_internal(e2, o2)
    np.testing.assert_allclose(R2, R, atol=1e-10)
    np.testing.assert_allclose(e2, euler, atol=1e-8)
    np.testing.assert_allclose(o2, origin)


def test_cryosparc_hand_values():
    # pose (0, 0, pi/2): Rodrigues = Rz(90); pyem/cryoDRGN transpose it -> RELION (90, 0, 0).
    R, shifts = cryosparc_to_internal(np.array([[0.0, 0.0, math.pi / 2]]),
                                      np.array([[2.0, -1.0]]), 1.25)
    np.testing.assert_allclose(R[0], A_ROT90, atol=1e-12)
    # cryoSPARC shift has the RELION origin sign (pyem copies it to rlnOriginX/Y).
    np.testing.assert_allclose(shifts, [[-2.5, 1.25]])


def test_cryosparc_round_trip_and_relion_agreement():
    euler = _random_euler(40, seed=2)
    R, shifts = relion_to_internal(euler, np.random.default_rng(3).normal(size=(40, 2)))
    pose, shift_px = internal_to_cryosparc(R, shifts, 0.9)
    R2, s2 = cryosparc_to_internal(pose, shift_px, 0.9)
    np.testing.assert_allclose(R2, R, atol=1e-10)
    np.testing.assert_allclose(s2, shifts, atol=1e-12)


def _cryodrgn_r_from_relion(rot, tilt, psi):
    """cryoDRGN's documented construction: Rz(psi) Ry(-tilt) Rz(rot), conjugated by diag(1,-1,1)."""
    def rz(a):
        c, s = math.cos(math.radians(a)), math.sin(math.radians(a))
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])

    def ry(a):
        c, s = math.cos(math.radians(a)), math.sin(math.radians(a))
        return np.array([[c, 0, s], [0, 1.0, 0], [-s, 0, c]])

    flip = np.diag([1.0, -1.0, 1.0])
    return flip @ rz(psi) @ ry(-tilt) @ rz(rot) @ flip


@pytest.mark.parametrize("euler", [(30.0, 50.0, 70.0), (-120.0, 100.0, 10.0)])
def test_cryodrgn_rot_is_relion_matrix(euler):
    R, _ = relion_to_internal(np.array([euler]), None)
    np.testing.assert_allclose(R[0], _cryodrgn_r_from_relion(*euler), atol=1e-12)
    rot, _ = internal_to_cryodrgn(R, None, 16, 1.0)
    np.testing.assert_allclose(rot[0], _cryodrgn_r_from_relion(*euler), atol=1e-6)


def test_cryodrgn_trans_hand_values():
    # RELION origin (-3, 1) px, D = 16: cryoDRGN trans = origin / D = (-3/16, 1/16).
    # Our shift = -origin * apix = (3, -1) * 2.0.
    R, shifts = cryodrgn_to_internal(np.eye(3)[None], np.array([[-3 / 16, 1 / 16]]), 16, 2.0)
    np.testing.assert_allclose(shifts, [[6.0, -2.0]])
    _, trans = internal_to_cryodrgn(R, shifts, 16, 2.0)
    assert trans.dtype == np.float32
    np.testing.assert_allclose(trans, [[-3 / 16, 1 / 16]], rtol=1e-6)


def test_cryodrgn_round_trip():
    origin = np.random.default_rng(5).normal(size=(20, 2))
    R, shifts = relion_to_internal(_random_euler(20, 4), origin)
    rot, trans = internal_to_cryodrgn(R, shifts, 32, 1.1)
    R2, s2 = cryodrgn_to_internal(rot, trans, 32, 1.1)
    np.testing.assert_allclose(R2, R, atol=1e-6)
    np.testing.assert_allclose(s2, shifts, atol=1e-5)
