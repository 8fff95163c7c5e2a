"""MRC volumes and stacks: round trips, memory-mapped reads, incremental atomic writes."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest

from cryoviz.errors import InputError
from cryoviz.io.mrc import (
    StackWriter,
    open_stack,
    read_volume,
    read_volume_on_grid,
    write_stack,
    write_volume,
)


def _no_temp_files(folder):
    return not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_volume_round_trip(tmp_path):
    vol = np.random.default_rng(0).normal(size=(12, 12, 12)).astype(np.float32)
    path = tmp_path / "vol.mrc"
    write_volume(path, vol, 1.7)
    back, apix = read_volume(path)
    np.testing.assert_array_equal(back, vol)
    assert apix == pytest.approx(1.7)
    with mrcfile.open(path) as mrc:
        assert tuple(float(v) for v in mrc.header.origin.tolist()) == (0.0, 0.0, 0.0)
    assert _no_temp_files(tmp_path)


def test_stack_round_trip_and_random_access(tmp_path):
    imgs = np.random.default_rng(1).normal(size=(8, 16, 16)).astype(np.float32)
    path = tmp_path / "s.mrcs"
    write_stack(path, imgs, 2.5)
    with open_stack(path) as stack:
        assert (stack.n_images, stack.box_size) == (8, 16)
        assert stack.pixel_size_angstrom == pytest.approx(2.5)
        np.testing.assert_array_equal(stack.read([5, 1, 5]), imgs[[5, 1, 5]])
        np.testing.assert_array_equal(stack.read(3), imgs[3:4])


def test_stack_writer_incremental(tmp_path):
    imgs = np.arange(6 * 8 * 8, dtype=np.float32).reshape(6, 8, 8)
    path = tmp_path / "inc.mrcs"
    with StackWriter(path, 8, 1.0, n_images=6) as writer:
        writer.write(imgs[:4])
        assert not path.exists()  # renamed into place only at the end
        writer.write(imgs[4])
        writer.write(imgs[5:])
    with open_stack(path) as stack:
        np.testing.assert_array_equal(stack.read(np.arange(6)), imgs)
    assert _no_temp_files(tmp_path)


def test_stack_writer_failure_leaves_nothing(tmp_path):
    path = tmp_path / "fail.mrcs"
    with pytest.raises(RuntimeError), StackWriter(path, 8, 1.0, n_images=4) as writer:
        writer.write(np.zeros((2, 8, 8)))
        raise RuntimeError("boom")
    assert not path.exists() and _no_temp_files(tmp_path)
    with pytest.raises(ValueError, match="only 2 of 4"), StackWriter(path, 8, 1.0, 4) as writer:
        writer.write(np.zeros((2, 8, 8)))
    assert not path.exists() and _no_temp_files(tmp_path)


def test_unset_header_pixel_size_is_none(tmp_path):
    path = tmp_path / "nopix.mrcs"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.zeros((2, 8, 8), dtype=np.float32))
        mrc.voxel_size = 0.0
    with open_stack(path) as stack:
        assert stack.pixel_size_angstrom is None


def test_volume_on_a_grid_checks_box_and_voxel_size(tmp_path):
    path = tmp_path / "map.mrc"
    volume = np.arange(8**3, dtype=np.float32).reshape(8, 8, 8)
    write_volume(path, volume, 2.0)
    np.testing.assert_array_equal(read_volume_on_grid(path, 8, 2.0), volume)
    np.testing.assert_array_equal(read_volume_on_grid(path, 8, 2.001), volume)  # within 1e-3
    with pytest.raises(InputError, match=r"map\.mrc.*box size: expected 10\^3 voxels "
                                         r"\(the particles'\).*8x8x8"):
        read_volume_on_grid(path, 10, 2.0, "the particles'")
    with pytest.raises(InputError, match=r"map\.mrc.*voxel size: expected 2\.5 Å.*2 Å"):
        read_volume_on_grid(path, 8, 2.5)
    unset = tmp_path / "unset.mrc"
    with mrcfile.new(unset) as mrc:
        mrc.set_data(volume)
        mrc.voxel_size = 0.0
    np.testing.assert_array_equal(read_volume_on_grid(unset, 8, 2.5), volume)  # accepted
