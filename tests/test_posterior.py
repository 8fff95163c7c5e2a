"""Pose posterior summaries: file round trip and shape checks."""

from __future__ import annotations

import numpy as np
import pytest

from cryoviz.errors import InputError
from cryoviz.inference.posterior import PosePosterior, read_pose_posterior, write_pose_posterior
from tests._phantoms import random_rotations


def _posterior(n: int = 5, k: int = 3) -> PosePosterior:
    rng = np.random.default_rng(0)
    weights = rng.random((n, k))
    return PosePosterior(
        rotations=random_rotations(n).numpy(), shifts_angstrom=rng.normal(size=(n, 2)),
        angular_spread_deg=rng.random(n), shift_spread_angstrom=rng.random(n),
        topk_rotations=random_rotations(n * k, seed=1).numpy().reshape(n, k, 3, 3),
        topk_shifts_angstrom=rng.normal(size=(n, k, 2)),
        topk_weights=weights / weights.sum(1, keepdims=True),
        particle_ids=np.arange(10, 10 + n))


def test_round_trip_in_a_run_folder(tmp_path):
    post = _posterior()
    path = write_pose_posterior(tmp_path, post)
    assert path.name == "poses.npz"
    back = read_pose_posterior(tmp_path)
    for name in ("rotations", "topk_weights", "particle_ids", "topk_rotations"):
        np.testing.assert_array_equal(getattr(back, name), getattr(post, name))
    sub = back.subset([4, 0])
    assert len(sub) == 2 and sub.particle_ids.tolist() == [14, 10]


def test_wrong_shapes_and_missing_files_are_clear_errors(tmp_path):
    post = _posterior()
    with pytest.raises(InputError, match="angular_spread_deg"):
        PosePosterior(**{**post.__dict__, "angular_spread_deg": post.angular_spread_deg[:3]})
    with pytest.raises(InputError, match="topk_rotations"):
        PosePosterior(**{**post.__dict__, "topk_weights": post.topk_weights[:, :2]})
    with pytest.raises(InputError, match="no such file"):
        read_pose_posterior(tmp_path / "absent.npz")
    np.savez(tmp_path / "partial.npz", rotations=post.rotations)
    with pytest.raises(InputError, match="shifts_angstrom"):
        read_pose_posterior(tmp_path / "partial.npz")
