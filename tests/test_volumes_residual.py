"""Reference-based volumes V(z) = V0 + dV(z): exact slices, the right map, scale and frame."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from cryoviz.errors import InputError
from cryoviz.geometry import random_rotations
from cryoviz.imaging import apply_shift_and_ctf
from cryoviz.io.mrc import read_volume, write_volume
from cryoviz.simulate import SimulationConfig, simulate
from cryoviz.train.cli import add_parsers, run
from cryoviz.train.evaluate import load_run
from cryoviz.train.recipes import get_recipe
from cryoviz.volumes import ImplicitVolume, VoxelVolume
from cryoviz.volumes.residual import (
    ReferenceResidualVolume,
    fit_reference_scale,
    load_reference_map,
)


def _blobs(box: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    vol = torch.zeros((box,) * 3)
    axis = torch.arange(box) - box // 2
    gz, gy, gx = torch.meshgrid(axis, axis, axis, indexing="ij")
    for _ in range(4):
        c = (torch.rand(3, generator=gen) - 0.5) * box / 3
        vol += torch.exp(-((gx - c[0]) ** 2 + (gy - c[1]) ** 2 + (gz - c[2]) ** 2) / 4.0)
    return vol


@pytest.mark.parametrize("box", [16, 15])
def test_slices_and_map_are_those_of_the_sum(box):
    """With a voxel map as dV, V0 + dV slices exactly like one voxel map of the sum."""
    v0, dv = _blobs(box, 0), 0.3 * _blobs(box, 1)
    model = ReferenceResidualVolume(v0, VoxelVolume(box, 3.0, initial=dv))
    model.reference_scale.fill_(2.0)
    whole = VoxelVolume(box, 3.0, initial=2.0 * v0 + dv)
    rot = random_rotations(5, generator=torch.Generator().manual_seed(2), dtype=torch.float32)
    torch.testing.assert_close(model.slices(rot, None, box, 3.0), whole.slices(rot, None, box, 3.0),
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.volume(None), 2.0 * v0 + dv, rtol=1e-5, atol=1e-5)
    assert model.volume(None, 2 * box).shape == (2 * box,) * 3
    with pytest.raises(ValueError, match="extent"):
        model.volume(None, box, pixel_size_angstrom=5.0)


def test_scale_is_recovered_from_noise_free_images():
    box, apix = 16, 3.0
    v0 = _blobs(box, 3)
    model = ReferenceResidualVolume(v0, ImplicitVolume(box, apix, latent_dim=0, width=8))
    rot = random_rotations(8, generator=torch.Generator().manual_seed(4), dtype=torch.float32)
    shifts = torch.randn(8, 2, generator=torch.Generator().manual_seed(5))
    images = 3.5 * apply_shift_and_ctf(model.reference_slices(rot, box), apix, shifts, None)
    assert fit_reference_scale(model, images, rot, shifts, None, apix) == pytest.approx(3.5,
                                                                                       rel=1e-5)


def test_builtin_reference_is_the_simulators_truth_map(tmp_path):
    """4AKE as a reference is the simulator's map of the open state (same frame, scale)."""
    simulate(SimulationConfig(n_particles=4, box_size=24, pixel_size_angstrom=5.0,
                              states=("4ake",), seed=0), tmp_path)
    truth, _ = read_volume(tmp_path / "truth" / "state_0.mrc")
    ref = load_reference_map("4ake", 24, 5.0)
    np.testing.assert_allclose(ref.numpy(), truth, rtol=0, atol=1e-4 * float(np.abs(truth).max()))
    # an MRC of the same extent at another box is resampled; another extent is refused
    write_volume(tmp_path / "same.mrc", truth[::2, ::2, ::2] * 0 + 1.0, 10.0)
    assert load_reference_map(tmp_path / "same.mrc", 24, 5.0).shape == (24, 24, 24)
    write_volume(tmp_path / "wrong.mrc", truth, 4.0)
    with pytest.raises(InputError, match="box x voxel size"):
        load_reference_map(tmp_path / "wrong.mrc", 24, 5.0)
    with pytest.raises(InputError, match="reference"):
        load_reference_map(tmp_path / "missing.pdb", 24, 5.0)


def test_cli_trains_a_reference_based_cryodrgn(tmp_path, capsys):
    """``--reference``: V(z) = V0 + dV(z) starts at V0 (scaled to the data) and trains."""
    data = tmp_path / "data"
    simulate(SimulationConfig(n_particles=64, box_size=16, pixel_size_angstrom=7.5, snr=1.0,
                              states=("4ake", "1ake"), seed=3), data)
    parser = argparse.ArgumentParser(prog="cryoviz")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "run"
    assert run(parser.parse_args(["train", str(data / "particles.star"), "--recipe", "cryodrgn",
                                  "--reference", "4ake", "--epochs", "1", "--batch-size", "32",
                                  "--width", "16", "--depth", "1", "-o", str(out)])) == 0
    loaded = load_run(out)
    assert isinstance(loaded.volume, ReferenceResidualVolume)
    assert float(loaded.volume.reference_scale) > 0
    assert np.isfinite(loaded.mu).all()
    with pytest.raises(InputError, match="reference"):
        get_recipe("voxel-homogeneous", reference="4ake")
