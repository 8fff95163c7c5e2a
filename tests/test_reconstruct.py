"""End to end: simulate -> export (STAR, .cs, cryoDRGN pickles) -> reconstruct."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cryoviz.ctf import CTFParams
from cryoviz.errors import InputError
from cryoviz.io.conventions import internal_to_cryodrgn
from cryoviz.io.cryodrgn import ctf_array_from_params, write_ctf_pkl, write_pose_pkl
from cryoviz.io.cryosparc import write_cs
from cryoviz.io.mrc import read_volume, write_volume
from cryoviz.io.particles import ParticleSet, load_particles
from cryoviz.metrics.fsc import fsc
from cryoviz.reconstruct import reconstruct, write_reconstruction
from cryoviz.simulate import SimulationConfig, simulate

BOX = 24
APIX = 3.0


def blob_phantom(box: int, seed: int = 1) -> np.ndarray:
    """Asymmetric phantom: random Gaussian blobs inside the central sphere."""
    g = torch.Generator().manual_seed(seed)
    ax = torch.arange(box, dtype=torch.float64) - box // 2
    z, y, x = torch.meshgrid(ax, ax, ax, indexing="ij")
    vol = torch.zeros((box,) * 3, dtype=torch.float64)
    for _ in range(25):
        c = (torch.rand(3, generator=g) - 0.5) * box * 0.5
        s = 1.0 + torch.rand(1, generator=g).item()
        vol += torch.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * s * s))
    return vol.numpy().astype(np.float32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    write_volume(root / "phantom.mrc", blob_phantom(BOX), APIX)
    config = SimulationConfig(
        n_particles=1200, box_size=BOX, pixel_size_angstrom=APIX, snr=1.0,
        states=(str(root / "phantom.mrc"),), shift_sigma_angstrom=3.0,
        defocus_range_angstrom=(8000.0, 20000.0), seed=3,
    )
    return simulate(config, root / "data")


def in_memory_particles(data_dir) -> ParticleSet:
    truth = np.load(data_dir / "truth" / "truth.npz")
    n = len(truth["labels"])
    ctf = CTFParams.from_arrays(**{
        k[4:]: truth[k] for k in truth.files if k.startswith("ctf_")
    })
    return ParticleSet(
        image_stacks=[data_dir / "particles.mrcs"], stack_index=np.zeros(n, dtype=np.int64),
        image_index=np.arange(n), box_size=BOX, pixel_size_angstrom=APIX,
        rotations=truth["rotations"], shifts_angstrom=truth["shifts_angstrom"], ctf=ctf,
        half_set=truth["half_set"],
    )


def test_exports_reconstruct_to_the_same_map(dataset, tmp_path):
    reference = reconstruct(in_memory_particles(dataset)).full_map
    from_star = load_particles(dataset / "particles.star")
    write_cs(from_star, tmp_path / "particles.cs")
    from_cs = load_particles(tmp_path / "particles.cs")
    rot, trans = internal_to_cryodrgn(from_star.rotations, from_star.shifts_angstrom, BOX, APIX)
    write_pose_pkl(tmp_path / "pose.pkl", rot, trans)
    write_ctf_pkl(tmp_path / "ctf.pkl", ctf_array_from_params(from_star.ctf, BOX, APIX))
    from_pkl = load_particles(dataset / "particles.mrcs", poses=tmp_path / "pose.pkl",
                              ctf=tmp_path / "ctf.pkl")
    from_pkl.half_set = from_star.half_set
    scale = reference.abs().max()
    for name, particles in (("star", from_star), ("cs", from_cs), ("cryodrgn", from_pkl)):
        particles.half_set = from_star.half_set
        mapped = reconstruct(particles).full_map
        err = float((mapped - reference).abs().max() / scale)
        assert err < 2e-3, f"{name}: max relative difference {err}"


def test_backprojection_matches_truth_and_writes_outputs(dataset, tmp_path):
    truth, _ = read_volume(dataset / "truth" / "state_0.mrc")
    result = reconstruct(load_particles(dataset / "particles.star"))
    metrics = write_reconstruction(result, tmp_path / "run", torch.as_tensor(truth))
    curve = fsc(result.full_map, torch.as_tensor(truth))
    assert curve.resolution_px(0.5) < 3.5
    volume, voxel = read_volume(tmp_path / "run" / "map.mrc")
    assert volume.shape == (BOX,) * 3 and voxel == pytest.approx(APIX)
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    key = "resolution_vs_truth_05_px"
    assert on_disk[key] == pytest.approx(metrics[key])
    # the gold-standard (half-map, 0.143) estimate lies between Nyquist and 4 px
    assert 2 * APIX <= result.resolution_angstrom < 4 * APIX


def test_sgd_fit_close_to_backprojection(dataset):
    particles = load_particles(dataset / "particles.star")
    truth = torch.as_tensor(read_volume(dataset / "truth" / "state_0.mrc")[0])
    bp = fsc(reconstruct(particles).full_map, truth).resolution_px(0.5)
    sgd = fsc(reconstruct(particles, method="sgd", epochs=4).full_map, truth).resolution_px(0.5)
    assert sgd <= 1.15 * bp, (sgd, bp)


def test_reconstruct_without_poses_is_a_clear_error(dataset, tmp_path):
    particles = load_particles(dataset / "particles.star")
    particles.rotations = None
    with pytest.raises(InputError, match="poses"):
        reconstruct(particles)


def test_unknown_method_is_a_clear_error(dataset):
    with pytest.raises(InputError, match="method"):
        reconstruct(load_particles(dataset / "particles.star"), method="relion")
