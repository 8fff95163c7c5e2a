"""cryoSPARC .cs reading/writing."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cryoviz.ctf import CTFParams
from cryoviz.io import (
    ImageSource,
    ParticleSet,
    load_particles,
    read_cs,
    write_cs,
    write_stack,
    write_star,
)
from cryoviz.io.conventions import relion_to_internal


def _dataset(folder, n=8, d=16):
    rng = np.random.default_rng(7)
    images = rng.normal(size=(n, d, d)).astype(np.float32)
    stack = folder / "J5" / "extract" / "parts.mrcs"
    write_stack(stack, images, 1.2)
    euler = np.stack([rng.uniform(-180, 180, n), rng.uniform(5, 175, n),
                      rng.uniform(-180, 180, n)], axis=1)
    R, shifts = relion_to_internal(euler, rng.normal(size=(n, 2)))
    ctf = CTFParams.from_arrays(
        defocus_u_angstrom=rng.uniform(1e4, 2e4, n), defocus_v_angstrom=rng.uniform(1e4, 2e4, n),
        astigmatism_angle_deg=rng.uniform(-90, 90, n), voltage_kv=300.0, cs_mm=2.7,
        amplitude_contrast=0.07, phase_shift_deg=0.0, bfactor_a2=0.0,
    )
    ps = ParticleSet(image_stacks=[stack], stack_index=np.zeros(n), image_index=np.arange(n)[::-1],
                     box_size=d, pixel_size_angstrom=1.2, rotations=R, shifts_angstrom=shifts,
                     ctf=ctf, half_set=rng.integers(0, 2, n),
                     extra=pd.DataFrame({"uid": rng.integers(1, 2**62, n, dtype=np.int64)}))
    return ps, images


def test_cs_round_trip(tmp_path):
    ps, images = _dataset(tmp_path)
    out = tmp_path / "out" / "particles.cs"
    write_cs(ps, out)
    back = load_particles(out)
    np.testing.assert_allclose(back.rotations, ps.rotations, atol=1e-5)
    np.testing.assert_allclose(back.shifts_angstrom, ps.shifts_angstrom, atol=1e-5)
    for k, v in ps.ctf.as_numpy().items():
        np.testing.assert_allclose(back.ctf.as_numpy()[k], v, rtol=1e-6, atol=1e-4, err_msg=k)
    np.testing.assert_array_equal(back.half_set, ps.half_set)
    np.testing.assert_array_equal(back.extra["uid"], ps.extra["uid"])
    np.testing.assert_array_equal(back.particle_ids, ps.particle_ids)
    with ImageSource(back) as src:
        np.testing.assert_array_equal(src.images([0]).numpy()[0], images[7])
    cs = read_cs(out)
    assert cs["blob/path"].dtype.kind == "S"  # no object arrays: loadable without pickle


def test_hand_made_cs_with_prefix_and_datadir(tmp_path):
    _, images = _dataset(tmp_path)
    dtype = [("uid", "<u8"), ("blob/path", "S40"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)),
             ("blob/psize_A", "<f4"), ("alignments3D/pose", "<f4", (3,)),
             ("alignments3D/shift", "<f4", (2,)), ("alignments3D/psize_A", "<f4")]
    cs = np.zeros(2, dtype=dtype)
    cs["blob/path"] = b">J5/extract/parts.mrcs"
    cs["blob/idx"] = [4, 0]
    cs["blob/shape"] = 16
    cs["blob/psize_A"] = 1.2
    cs["alignments3D/pose"][0] = [0.0, 0.0, math.pi / 2]
    cs["alignments3D/shift"][0] = [2.0, 0.0]
    cs["alignments3D/psize_A"] = 1.2
    meta = tmp_path / "exports"
    meta.mkdir()
    with open(meta / "p.cs", "wb") as fh:
        np.save(fh, cs)
    ps = load_particles(meta / "p.cs", datadir=tmp_path)
    np.testing.assert_allclose(ps.rotations[0], [[0, 1, 0], [-1, 0, 0], [0, 0, 1]], atol=1e-6)
    np.testing.assert_allclose(ps.shifts_angstrom[0], [-2.4, 0.0], atol=1e-6)
    assert ps.ctf is None and ps.half_set is None
    with ImageSource(ps) as src:
        np.testing.assert_array_equal(src.images([0, 1]).numpy(), images[[4, 0]])


def test_cs_to_star_agrees(tmp_path):
    ps, _ = _dataset(tmp_path)
    write_cs(ps, tmp_path / "a.cs")
    write_star(load_particles(tmp_path / "a.cs"), tmp_path / "a.star")
    back = load_particles(tmp_path / "a.star")
    np.testing.assert_allclose(back.rotations, ps.rotations, atol=1e-5)
    np.testing.assert_allclose(back.shifts_angstrom, ps.shifts_angstrom, atol=1e-5)
    assert back.pixel_size_angstrom == pytest.approx(1.2)
