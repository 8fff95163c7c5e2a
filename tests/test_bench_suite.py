"""Tests for cryoviz.bench.suite: the versioned, seeded dataset suite."""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pytest

from cryoviz.bench.suite import (
    KINDS,
    LID_RESIDUES,
    SINGLE_VIEW_KINDS,
    SIZES,
    DatasetSpec,
    build_dataset,
    simulation_config,
    suite_datasets,
    write_structure_maps,
)
from cryoviz.errors import InputError
from cryoviz.io.mrc import read_volume
from cryoviz.structure import adenylate_kinase_pair


def test_suite_matrix_names_and_seeds():
    tiny = suite_datasets("tiny")
    # 2 SNRs x 2 pose distributions per 3-D kind; single-view kinds: uniform only
    assert len(tiny) == (len(KINDS) - len(SINGLE_VIEW_KINDS)) * 2 * 2 + len(SINGLE_VIEW_KINDS) * 2
    assert not [s for s in tiny if s.kind == "inplane" and s.poses == "preferred"]
    names = [s.name for s in tiny]
    assert len(set(names)) == len(names)
    assert len({s.seed for s in tiny}) == len(tiny)
    # the seed is a function of the name: the same spec always gives the same seed
    assert DatasetSpec.from_name("mixture-lo-preferred-small").seed == DatasetSpec(
        "mixture", "lo", "preferred", "small").seed
    assert DatasetSpec("mixture").seed != DatasetSpec("mixture", size="small").seed


def test_simulation_configs_follow_the_spec():
    cfg = simulation_config(DatasetSpec("continuous", "lo", "preferred", "full"))
    assert (cfg.box_size, cfg.pixel_size_angstrom, cfg.n_particles) == SIZES["full"]
    assert (cfg.box_size, cfg.n_particles) == (128, 100_000)
    assert cfg.ensemble == "continuous" and cfg.snr == 0.01
    assert cfg.pose_distribution == "preferred"
    assert simulation_config(DatasetSpec("homogeneous")).states == ("4ake",)
    assert simulation_config(DatasetSpec("mixture")).states == ("4ake", "1ake")
    inplane = simulation_config(DatasetSpec("inplane", "lo", size="small"))
    assert (inplane.box_size, inplane.pixel_size_angstrom, inplane.n_particles) == SIZES["small"]
    assert inplane.snr == 0.01
    assert inplane.seed == DatasetSpec("inplane", "lo", size="small").seed


def test_bad_spec_is_input_error():
    with pytest.raises(InputError, match="kind"):
        DatasetSpec("tetramer")
    with pytest.raises(InputError, match="suite"):
        suite_datasets("huge")
    with pytest.raises(InputError, match="dataset"):
        DatasetSpec.from_name("mixture-hi")
    with pytest.raises(InputError, match="uniform"):
        DatasetSpec("inplane", poses="preferred")


def test_compositional_dataset_lacks_the_lid_in_one_state(tmp_path):
    spec = DatasetSpec("compositional")
    folder = build_dataset(spec, tmp_path)
    full, _ = read_volume(folder / "truth" / "state_0.mrc")
    partial, apix = read_volume(folder / "truth" / "state_1.mrc")
    assert apix == SIZES["tiny"][1]
    open_state, _ = adenylate_kinase_pair()
    lid = open_state.residue_mask(LID_RESIDUES)
    # integrated density scales with the atoms present (same elements on average)
    assert partial.sum() / full.sum() == pytest.approx(1 - lid.mean(), abs=0.03)
    # the removed density sits where the LID is: the two maps share one frame
    removed = full - partial
    axis = (np.arange(full.shape[0]) - full.shape[0] // 2) * apix
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    centre = [float((removed * c).sum() / removed.sum()) for c in (x, y, z)]
    assert np.allclose(centre, open_state.coords_angstrom[lid].mean(axis=0), atol=1.0)
    labels = np.load(folder / "truth" / "truth.npz")["labels"]
    assert set(np.unique(labels)) == {0, 1}
    record = json.loads((folder / "bench_dataset.json").read_text())
    assert record["dataset"] == spec.name and record["config"]["seed"] == spec.seed


def test_build_dataset_reuses_an_identical_dataset(tmp_path):
    spec = DatasetSpec("homogeneous")
    folder = build_dataset(spec, tmp_path)
    stack = folder / "particles.mrcs"
    first = stack.stat().st_mtime_ns
    assert build_dataset(spec, tmp_path) == folder
    assert stack.stat().st_mtime_ns == first
    # a changed record (another suite version) is rebuilt, to the same images (seeded)
    data = mrcfile.read(stack)
    record = json.loads((folder / "bench_dataset.json").read_text())
    record["suite_version"] = "0"
    (folder / "bench_dataset.json").write_text(json.dumps(record))
    build_dataset(spec, tmp_path)
    assert stack.stat().st_mtime_ns != first
    assert np.array_equal(mrcfile.read(stack), data)


def test_write_structure_maps_renders_each_structure_on_the_grid(tmp_path):
    open_state, _ = adenylate_kinase_pair(aligned=True)
    without_lid = open_state.subset(~open_state.residue_mask(LID_RESIDUES))
    paths = write_structure_maps({"full.mrc": open_state, "no_lid.mrc": without_lid},
                                 tmp_path / "maps", 32, 4.0)
    assert paths == [str(tmp_path / "maps" / "full.mrc"), str(tmp_path / "maps" / "no_lid.mrc")]
    (full, voxel), (no_lid, _) = (read_volume(p) for p in paths)
    assert full.shape == (32, 32, 32) and voxel == pytest.approx(4.0)
    # the LID (residues 122-159 of 214) carries a sixth to a fifth of the mass
    assert 0.7 < no_lid.sum() / full.sum() < 0.9
