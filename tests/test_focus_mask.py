"""Focus masks (cryoviz.inference.focus_mask): shapes, values and the clipping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryoviz.errors import InputError
from cryoviz.inference.focus_mask import check_focus_mask, read_focus_mask
from cryoviz.io.mrc import write_volume
from tests._phantoms import soft_sphere


def test_a_soft_mask_passes_through_and_overshoot_is_clipped():
    mask = soft_sphere(16, (0.0, 0.0, 0.0), 3.0, 2.0)
    out = check_focus_mask(mask, (16,))
    assert out.dtype == torch.float64 and torch.equal(out, mask)
    assert float(mask.max()) == 1.0 and float(mask.min()) == 0.0
    wobble = mask.numpy().copy()
    wobble[0, 0, 0], wobble[8, 8, 8] = -5e-4, 1.0 + 5e-4  # interpolation overshoot
    out = check_focus_mask(wobble, (32, 16))
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0


@pytest.mark.parametrize(("mask", "message"), [
    (np.ones((8, 8, 8)), "mask: expected shape (16,)*3 or (32,)*3, got (8, 8, 8)"),
    (np.ones((16, 16, 8)), "expected shape"),
    (np.full((16,) * 3, 1.5), "mask: expected values in [0, 1], got 1.5 to 1.5"),
    (np.zeros((16,) * 3), "mask: expected some voxels above 0"),
    (np.full((16,) * 3, np.inf), "mask: expected finite values"),
])
def test_bad_masks_are_refused(mask, message):
    with pytest.raises(InputError) as err:
        check_focus_mask(mask, (16, 32))
    assert message in str(err.value)


def test_the_field_name_is_the_callers():
    with pytest.raises(InputError, match="--mask: expected"):
        check_focus_mask(np.zeros((4, 4, 4)), (16,), field="--mask")


def test_read_focus_mask_checks_the_grid_and_names_the_file(tmp_path):
    mask = soft_sphere(16, (0.0, 0.0, 0.0), 3.0, 2.0).numpy().astype(np.float32)
    write_volume(tmp_path / "ok.mrc", mask, 2.0)
    out = read_focus_mask(tmp_path / "ok.mrc", 16, 2.0)
    assert out.shape == (16, 16, 16) and torch.allclose(out, torch.as_tensor(mask).double())
    write_volume(tmp_path / "range.mrc", mask * 3.0, 2.0)
    for name, box, apix, message in (("ok.mrc", 24, 2.0, "box size: expected 24^3"),
                                     ("ok.mrc", 16, 3.0, "voxel size: expected 3 Å"),
                                     ("range.mrc", 16, 2.0, "mask: expected values in")):
        with pytest.raises(InputError) as err:
            read_focus_mask(tmp_path / name, box, apix)
        assert name in str(err.value) and message in str(err.value)
