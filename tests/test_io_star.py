"""RELION STAR reading and writing: 3.0, 3.1 and RELION-5-style files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cryoviz.ctf import CTFParams
from cryoviz.io import ImageSource, ParticleSet, load_particles, read_star, write_stack, write_star
from cryoviz.io.conventions import relion_to_internal

APIX = 1.5


def _dataset(folder, n=8, d=16, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, d, d)).astype(np.float32)
    stack = folder / "stacks" / "parts.mrcs"
    write_stack(stack, images, APIX)
    euler = np.stack([rng.uniform(-180, 180, n), rng.uniform(5, 175, n),
                      rng.uniform(-180, 180, n)], axis=1)
    R, shifts = relion_to_internal(euler, rng.normal(size=(n, 2)))
    ctf = CTFParams.from_arrays(
        defocus_u_angstrom=rng.uniform(10000, 20000, n),
        defocus_v_angstrom=rng.uniform(9000, 19000, n),
        astigmatism_angle_deg=rng.uniform(-90, 90, n), voltage_kv=300.0, cs_mm=2.7,
        amplitude_contrast=0.1, phase_shift_deg=rng.uniform(0, 10, n),
        bfactor_a2=rng.uniform(0, 50, n),
    )
    ps = ParticleSet(
        image_stacks=[stack], stack_index=np.zeros(n), image_index=rng.permutation(n), box_size=d,
        pixel_size_angstrom=APIX, rotations=R, shifts_angstrom=shifts, ctf=ctf,
        half_set=rng.integers(0, 2, n),
        extra=pd.DataFrame({"rlnClassNumber": rng.integers(1, 4, n)}),
    )
    return ps, images


def _assert_same(a: ParticleSet, b: ParticleSet):
    assert len(a) == len(b) and a.box_size == b.box_size
    assert a.pixel_size_angstrom == pytest.approx(b.pixel_size_angstrom)
    np.testing.assert_allclose(a.rotations, b.rotations, atol=1e-6)
    np.testing.assert_allclose(a.shifts_angstrom, b.shifts_angstrom, atol=1e-5)
    for k, v in a.ctf.as_numpy().items():
        np.testing.assert_allclose(v, b.ctf.as_numpy()[k], atol=1e-5, err_msg=k)
    np.testing.assert_array_equal(a.particle_ids, b.particle_ids)
    np.testing.assert_array_equal(a.half_set, b.half_set)
    np.testing.assert_array_equal(a.image_index, b.image_index)
    assert [p.resolve() for p in a.image_stacks] == [p.resolve() for p in b.image_stacks]


@pytest.mark.parametrize("version", ["3.1", "3.0", "4", "5"])
def test_star_round_trip(tmp_path, version):
    ps, images = _dataset(tmp_path)
    path = tmp_path / "out" / "particles.star"
    write_star(ps, path, version=version)
    back = load_particles(path)
    _assert_same(ps, back)
    np.testing.assert_array_equal(back.extra["rlnClassNumber"], ps.extra["rlnClassNumber"])
    text = path.read_text()
    assert ("data_optics" in text) == (version != "3.0")
    assert ("rlnOriginXAngst" in text) == (version != "3.0")
    if version == "5":
        assert "# version 50001" in text
    with ImageSource(back) as src:
        np.testing.assert_array_equal(src.images([2]).numpy()[0], images[ps.image_index[2]])


def test_subset_written_keeps_particle_ids(tmp_path):
    ps, _ = _dataset(tmp_path)
    sub = ps.subset(np.array([6, 1, 3]))
    write_star(sub, tmp_path / "sub.star")
    back = load_particles(tmp_path / "sub.star")
    np.testing.assert_array_equal(back.particle_ids, [6, 1, 3])
    _assert_same(sub, back)


HAND_31 = """
# version 30001

data_optics

loop_
_rlnOpticsGroup #1
_rlnOpticsGroupName #2
_rlnAmplitudeContrast #3
_rlnSphericalAberration #4
_rlnVoltage #5
_rlnImagePixelSize #6
_rlnImageSize #7
_rlnImageDimensionality #8
1 opticsGroup1 0.1 2.7 300.0 1.5 16 2

# version 30001

data_particles

loop_
_rlnImageName #1
_rlnAngleRot #2
_rlnAngleTilt #3
_rlnAnglePsi #4
_rlnOriginXAngst #5
_rlnOriginYAngst #6
_rlnDefocusU #7
_rlnDefocusV #8
_rlnDefocusAngle #9
_rlnOpticsGroup #10
_rlnRandomSubset #11
000003@stacks/parts.mrcs 90.0 0.0 0.0 -4.5 1.5 15000 14000 30 1 2
000001@stacks/parts.mrcs 0.0 0.0 0.0 0.0 0.0 12000 12000 0 1 1
"""


def test_hand_written_star_31(tmp_path):
    _, images = _dataset(tmp_path)
    path = tmp_path / "hand.star"
    path.write_text(HAND_31)
    ps = load_particles(path)
    np.testing.assert_array_equal(ps.image_index, [2, 0])  # 1-based in the file
    np.testing.assert_allclose(ps.rotations[0], [[0, 1, 0], [-1, 0, 0], [0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(ps.shifts_angstrom[0], [4.5, -1.5])  # origin = -shift
    np.testing.assert_array_equal(ps.half_set, [1, 0])
    assert ps.ctf.voltage_kv.tolist() == [300.0, 300.0]
    assert ps.ctf.astigmatism_angle_deg[0].item() == 30.0
    with ImageSource(ps) as src:
        np.testing.assert_array_equal(src.images(np.array([0, 1])).numpy(), images[[2, 0]])


HAND_30 = """
data_

loop_
_rlnImageName #1
_rlnAngleRot #2
_rlnAngleTilt #3
_rlnAnglePsi #4
_rlnOriginX #5
_rlnOriginY #6
_rlnDefocusU #7
_rlnDefocusV #8
_rlnDefocusAngle #9
_rlnVoltage #10
_rlnSphericalAberration #11
_rlnAmplitudeContrast #12
_rlnMagnification #13
_rlnDetectorPixelSize #14
2@stacks/parts.mrcs 10 20 30 -3 2 15000 14000 30 300 2.7 0.1 10000 1.5
"""


def test_hand_written_star_30(tmp_path):
    _dataset(tmp_path)
    path = tmp_path / "old.star"
    path.write_text(HAND_30)
    ps = load_particles(path)
    assert ps.pixel_size_angstrom == pytest.approx(1.5)
    np.testing.assert_allclose(ps.shifts_angstrom, [[4.5, -3.0]])  # -(-3, 2) px * 1.5
    assert ps.image_index.tolist() == [1]


HAND_50 = """
# version 50001

data_optics

loop_
_rlnOpticsGroup #1
_rlnOpticsGroupName #2
_rlnAmplitudeContrast #3
_rlnSphericalAberration #4
_rlnVoltage #5
_rlnImagePixelSize #6
_rlnImageSize #7
_rlnImageDimensionality #8
_rlnCtfDataAreCtfPremultiplied #9
1 opticsGroup1 0.07 2.7 300.0 1.5 16 2 0
2 opticsGroup2 0.10 2.7 200.0 1.5 16 2 0

# version 50001

data_particles

loop_
_rlnCoordinateX #1
_rlnCoordinateY #2
_rlnImageName #3
_rlnMicrographName #4
_rlnOpticsGroup #5
_rlnAngleRot #6
_rlnAngleTilt #7
_rlnAnglePsi #8
_rlnOriginXAngst #9
_rlnOriginYAngst #10
_rlnDefocusU #11
_rlnDefocusV #12
_rlnDefocusAngle #13
_rlnClassNumber #14
_rlnGroupName #15
_rlnLogLikeliContribution #16
100.0 200.0 000001@stacks/parts.mrcs MC/mic1.mrc 1 10 20 30 1.5 -1.5 15000 14000 30 2 "g one" 1.5
300.0 400.0 000002@stacks/parts.mrcs MC/mic2.mrc 2 40 50 60 0.0 3.0 16000 15000 40 1 g_two 999.0
"""


def test_relion5_extra_columns_round_trip(tmp_path):
    _dataset(tmp_path)
    path = tmp_path / "r5.star"
    path.write_text(HAND_50)
    ps = load_particles(path)
    assert ps.ctf.voltage_kv.tolist() == [300.0, 200.0]
    assert ps.ctf.amplitude_contrast.tolist() == pytest.approx([0.07, 0.10])
    assert ps.extra["rlnGroupName"].tolist() == ["g one", "g_two"]
    assert ps.extra["rlnMicrographName"][1] == "MC/mic2.mrc"
    out = tmp_path / "again.star"
    write_star(ps, out, version="5")
    back = load_particles(out)
    _assert_same(ps, back)
    for col in ("rlnCoordinateX", "rlnGroupName", "rlnMicrographName", "rlnLogLikeliContribution",
                "rlnClassNumber", "rlnOpticsGroup"):
        assert back.extra[col].tolist() == ps.extra[col].tolist(), col
    optics = read_star(out)["optics"]
    assert optics["rlnCtfDataAreCtfPremultiplied"].tolist() == [0, 0]  # optics table reused
    assert optics["rlnVoltage"].tolist() == [300.0, 200.0]


def test_datadir_resolution(tmp_path):
    _dataset(tmp_path)
    meta = tmp_path / "meta"
    meta.mkdir()
    path = meta / "p.star"
    path.write_text(HAND_31)
    ps = load_particles(path, datadir=tmp_path)
    assert ps.image_stacks[0].resolve() == (tmp_path / "stacks" / "parts.mrcs").resolve()
