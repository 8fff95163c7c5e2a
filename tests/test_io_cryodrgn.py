"""cryoDRGN pickles: round trips, restricted unpickling, loading a stack with pickles."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from cryoviz.errors import InputError
from cryoviz.io import (
    ctf_array_from_params,
    load_particles,
    read_ctf_pkl,
    read_index_pkl,
    read_pose_pkl,
    write_ctf_pkl,
    write_index_pkl,
    write_pose_pkl,
    write_stack,
)
from cryoviz.io.conventions import relion_to_internal
from cryoviz.io.cryodrgn import read_pickle


def _poses(n, seed=0):
    rng = np.random.default_rng(seed)
    euler = np.stack([rng.uniform(-180, 180, n), rng.uniform(5, 175, n),
                      rng.uniform(-180, 180, n)], axis=1)
    return relion_to_internal(euler, rng.normal(size=(n, 2)))


def test_pose_pkl_round_trip(tmp_path):
    R, _ = _poses(5)
    trans = np.random.default_rng(1).normal(size=(5, 2)) * 0.01
    write_pose_pkl(tmp_path / "pose.pkl", R, trans)
    rot, tr = read_pose_pkl(tmp_path / "pose.pkl")
    np.testing.assert_allclose(rot, R, atol=1e-6)
    np.testing.assert_allclose(tr, trans, atol=1e-7)
    write_pose_pkl(tmp_path / "rot.pkl", R, None)
    rot, tr = read_pose_pkl(tmp_path / "rot.pkl")
    assert tr is None and rot.shape == (5, 3, 3)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_plain_pickles_of_all_protocols(tmp_path, protocol):
    arr = np.arange(12, dtype=np.float32).reshape(4, 3)
    with open(tmp_path / "a.pkl", "wb") as fh:
        pickle.dump((arr, np.float64(2.0), [1, 2]), fh, protocol=protocol)
    a, s, lst = read_pickle(tmp_path / "a.pkl")
    np.testing.assert_array_equal(a, arr)
    assert s == 2.0 and lst == [1, 2]


def test_ctf_and_index_round_trip(tmp_path):
    ctf = np.random.default_rng(2).uniform(0.1, 2.0, size=(6, 9))
    write_ctf_pkl(tmp_path / "ctf.pkl", ctf)
    np.testing.assert_allclose(read_ctf_pkl(tmp_path / "ctf.pkl"), ctf, rtol=1e-6)
    write_index_pkl(tmp_path / "ind.pkl", np.array([4, 0, 2]))
    assert read_index_pkl(tmp_path / "ind.pkl").tolist() == [4, 0, 2]


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_malicious_pickle_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as fh:
        pickle.dump((np.zeros(3), _Evil()), fh)
    with pytest.raises(InputError, match="refusing to load") as err:
        read_pose_pkl(path)
    assert str(path) in str(err.value) and "system" in str(err.value)


def test_load_stack_with_pickles(tmp_path):
    n, d, apix = 8, 16, 2.0
    images = np.random.default_rng(3).normal(size=(n, d, d)).astype(np.float32)
    write_stack(tmp_path / "p.mrcs", images, apix)
    R, shifts = _poses(n, 4)
    from cryoviz.io.conventions import internal_to_cryodrgn

    rot, trans = internal_to_cryodrgn(R, shifts, d, apix)
    write_pose_pkl(tmp_path / "pose.pkl", rot, trans)
    row = [d, apix, 15000.0, 14000.0, 30.0, 300.0, 2.7, 0.1, 0.0]
    ctf = np.tile(np.array(row), (n, 1))
    write_ctf_pkl(tmp_path / "ctf.pkl", ctf)
    write_index_pkl(tmp_path / "ind.pkl", np.array([5, 2]))
    ps = load_particles(tmp_path / "p.mrcs", poses=tmp_path / "pose.pkl", ctf=tmp_path / "ctf.pkl",
                        index=tmp_path / "ind.pkl")
    assert ps.pixel_size_angstrom == pytest.approx(apix) and ps.box_size == d
    np.testing.assert_array_equal(ps.particle_ids, [5, 2])
    np.testing.assert_allclose(ps.rotations, R[[5, 2]], atol=1e-6)
    np.testing.assert_allclose(ps.shifts_angstrom, shifts[[5, 2]], atol=1e-5)
    np.testing.assert_allclose(ctf_array_from_params(ps.ctf, d, apix), ctf[[5, 2]], rtol=1e-6)
