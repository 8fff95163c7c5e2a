"""Every bad-input case raises InputError naming the file and the field."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest

from cryoviz.errors import InputError
from cryoviz.io import ImageSource, load_particles, open_stack, read_volume, write_stack

OPTICS = """
# version 30001

data_optics

loop_
_rlnOpticsGroup #1
_rlnAmplitudeContrast #2
_rlnSphericalAberration #3
_rlnVoltage #4
_rlnImagePixelSize #5
_rlnImageSize #6
_rlnImageDimensionality #7
1 0.1 2.7 300.0 {apix} 16 2

# version 30001

data_particles

loop_
"""


def _star(tmp_path, columns, rows, apix=1.5, name="p.star"):
    text = OPTICS.format(apix=apix) + "".join(f"_{c} #{k + 1}\n" for k, c in enumerate(columns))
    text += "".join(" ".join(map(str, r)) + "\n" for r in rows)
    path = tmp_path / name
    path.write_text(text)
    return path


def _stack(tmp_path, n=8, d=16, apix=1.5, name="s.mrcs"):
    imgs = np.random.default_rng(0).normal(size=(n, d, d)).astype(np.float32)
    write_stack(tmp_path / name, imgs, apix)
    return tmp_path / name, imgs


def _raises(fn, path, field):
    with pytest.raises(InputError) as err:
        fn()
    msg = str(err.value)
    assert str(path) in msg, msg
    assert field in msg, msg
    return msg


FULL = ["rlnImageName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst",
        "rlnOriginYAngst", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnOpticsGroup"]


def _row(k):
    return [f"{k}@s.mrcs", 10, 20, 30, 0.5, -0.5, 15000, 14000, 10, 1]


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.mrcs"
    _raises(lambda: open_stack(missing), missing, "file")
    _raises(lambda: load_particles(tmp_path / "nope.star"), tmp_path / "nope.star", "file")


def test_missing_stack_named_in_star(tmp_path):
    path = _star(tmp_path, FULL, [_row(1)])
    _raises(lambda: load_particles(path), tmp_path / "s.mrcs", "file")


def test_not_an_mrc(tmp_path):
    path = tmp_path / "random.mrcs"
    path.write_bytes(np.random.default_rng(1).bytes(4096))
    _raises(lambda: open_stack(path), path, "MAP ID")


def test_truncated_stack(tmp_path):
    path, _ = _stack(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 500])
    msg = _raises(lambda: open_stack(path), path, "data block")
    assert "truncated" in msg


def test_non_square_images(tmp_path):
    path = tmp_path / "rect.mrcs"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.zeros((4, 16, 12), dtype=np.float32))
    _raises(lambda: open_stack(path), path, "nx")


def test_non_cubic_volume(tmp_path):
    path = tmp_path / "vol.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.zeros((8, 8, 6), dtype=np.float32))
    _raises(lambda: read_volume(path), path, "dimensions")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_pixels_detected_when_read(tmp_path, bad):
    stack, imgs = _stack(tmp_path)
    imgs[5, 3, 3] = bad
    write_stack(stack, imgs, 1.5)
    path = _star(tmp_path, FULL, [_row(1), _row(6)])
    ps = load_particles(path)  # loading does not read pixels
    with ImageSource(ps) as src:
        src.images([0])
        msg = _raises(lambda: src.images([1]), stack, "pixel values")
    assert "image 5" in msg


def test_index_beyond_stack(tmp_path):
    _stack(tmp_path, n=8)
    path = _star(tmp_path, FULL, [_row(1), _row(9)])
    msg = _raises(lambda: load_particles(path), path, "rlnImageName")
    assert "s.mrcs" in msg and "9" in msg


def test_missing_pose_columns(tmp_path):
    _stack(tmp_path)
    cols = ["rlnImageName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnOpticsGroup"]
    path = _star(tmp_path, cols, [["1@s.mrcs", 15000, 14000, 10, 1]])
    assert load_particles(path).rotations is None
    _raises(lambda: load_particles(path, require_poses=True), path, "rlnAngleRot")


def test_missing_ctf_columns(tmp_path):
    _stack(tmp_path)
    cols = ["rlnImageName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOpticsGroup"]
    path = _star(tmp_path, cols, [["1@s.mrcs", 1, 2, 3, 1]])
    assert load_particles(path).ctf is None
    _raises(lambda: load_particles(path, require_ctf=True), path, "rlnDefocusU")


def test_pixel_size_disagreement(tmp_path):
    stack, _ = _stack(tmp_path, apix=1.5)
    path = _star(tmp_path, FULL, [_row(1)], apix=1.6)
    msg = _raises(lambda: load_particles(path), stack, "pixel size")
    assert str(path) in msg and "rlnImagePixelSize" in msg
    # within 1e-3 relative: fine; header 1.0 (common default) is ignored
    load_particles(_star(tmp_path, FULL, [_row(1)], apix=1.5005, name="ok.star"))
    _stack(tmp_path, apix=1.0)
    load_particles(_star(tmp_path, FULL, [_row(1)], apix=1.6, name="default.star"))


def test_cs_missing_required_field(tmp_path):
    _stack(tmp_path)
    cs = np.zeros(2, dtype=[("blob/path", "S10"), ("blob/shape", "<u4", (2,)),
                            ("blob/psize_A", "<f4")])
    path = tmp_path / "p.cs"
    with open(path, "wb") as fh:
        np.save(fh, cs)
    _raises(lambda: load_particles(path), path, "blob/idx")


def test_cs_with_pickled_objects_refused(tmp_path):
    cs = np.zeros(1, dtype=[("blob/path", "O")])
    path = tmp_path / "obj.cs"
    with open(path, "wb") as fh:
        np.save(fh, cs, allow_pickle=True)
    _raises(lambda: load_particles(path), path, "contents")


def test_garbled_numeric_column(tmp_path):
    _stack(tmp_path)
    row = _row(1)
    row[6] = "abc"
    path = _star(tmp_path, FULL, [row])
    msg = _raises(lambda: load_particles(path), path, "rlnDefocusU")
    assert "numeric" in msg and "abc" in msg


def test_non_integer_group_column(tmp_path):
    _stack(tmp_path)
    row = _row(1)
    row[-1] = 1.5
    path = _star(tmp_path, FULL, [row])
    _raises(lambda: load_particles(path), path, "rlnOpticsGroup")


def test_row_with_wrong_number_of_values(tmp_path):
    _stack(tmp_path)
    path = _star(tmp_path, FULL, [_row(1), _row(2)[:-2]])
    _raises(lambda: load_particles(path), path, "data_particles line")


def test_bad_image_name(tmp_path):
    _stack(tmp_path)
    row = _row(1)
    row[0] = "x@s.mrcs"
    path = _star(tmp_path, FULL, [row])
    _raises(lambda: load_particles(path), path, "rlnImageName")


def test_bad_random_subset(tmp_path):
    _stack(tmp_path)
    path = _star(tmp_path, [*FULL, "rlnRandomSubset"], [[*_row(1), 3]])
    _raises(lambda: load_particles(path), path, "rlnRandomSubset")
