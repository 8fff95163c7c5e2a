"""ParticleSet, ImageSource and load_particles plumbing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cryoviz.errors import InputError
from cryoviz.io import ImageSource, ParticleSet, load_particles, write_stack, write_star


def _two_stacks(tmp_path, d=16):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(8, d, d)).astype(np.float32)
    b = rng.normal(size=(5, d, d)).astype(np.float32)
    a[6] = np.nan  # never requested below: proves unrequested images are not read/checked
    write_stack(tmp_path / "a.mrcs", a, 1.0)
    write_stack(tmp_path / "b.mrcs", b, 1.0)
    ps = ParticleSet(
        image_stacks=[tmp_path / "a.mrcs", tmp_path / "b.mrcs"],
        stack_index=[0, 1, 0, 1, 0], image_index=[3, 4, 0, 1, 7], box_size=d,
        pixel_size_angstrom=1.0,
    )
    return ps, a, b


def test_image_source_reads_requested_images_grouped_by_stack(tmp_path):
    ps, a, b = _two_stacks(tmp_path)
    with ImageSource(ps) as src:
        assert len(src) == 5
        got = src.images(np.array([4, 1, 0, 1, 2]))
        assert got.dtype == torch.float32 and tuple(got.shape) == (5, 16, 16)
        expected = np.stack([a[7], b[4], a[3], b[4], a[0]])
        np.testing.assert_array_equal(got.numpy(), expected)


def test_image_source_nan_only_when_read(tmp_path):
    ps, _, _ = _two_stacks(tmp_path)
    ps.image_index[2] = 6
    with ImageSource(ps) as src:
        src.images([0, 1])
        with pytest.raises(InputError, match="pixel values") as err:
            src.images([2])
    assert "a.mrcs" in str(err.value) and "image 6" in str(err.value)


def test_subset_keeps_ids_and_extra(tmp_path):
    ps, _, _ = _two_stacks(tmp_path)
    ps.extra = pd.DataFrame({"label": list("abcde")})
    ps.half_set = np.array([0, 1, 0, 1, 0])
    sub = ps.subset(np.array([True, False, True, False, True]))
    assert sub.particle_ids.tolist() == [0, 2, 4]
    assert sub.extra["label"].tolist() == ["a", "c", "e"]
    sub2 = sub.subset([2])
    assert sub2.particle_ids.tolist() == [4] and sub2.half_set.tolist() == [0]
    assert len(ps.subset(slice(1, 3))) == 2


def test_validate_catches_bad_rotations(tmp_path):
    ps, _, _ = _two_stacks(tmp_path)
    ps.rotations = np.tile(np.eye(3), (5, 1, 1))
    ps.validate()
    ps.rotations[1] *= 2
    with pytest.raises(InputError, match="orthonormal"):
        ps.validate()


def test_stack_override_and_two_stack_star(tmp_path):
    ps, a, b = _two_stacks(tmp_path)
    write_star(ps, tmp_path / "two.star")
    back = load_particles(tmp_path / "two.star")
    assert len(back.image_stacks) == 2
    with ImageSource(back) as src:
        np.testing.assert_array_equal(src.images([1]).numpy()[0], b[4])
    flat = np.random.default_rng(5).normal(size=(5, 16, 16)).astype(np.float32)
    write_stack(tmp_path / "flat.mrcs", flat, 1.0)
    over = load_particles(tmp_path / "two.star", stack=tmp_path / "flat.mrcs")
    with ImageSource(over) as src:
        np.testing.assert_array_equal(src.images([3]).numpy()[0], flat[3])
