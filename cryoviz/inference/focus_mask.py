"""Focus masks: real-space weights in ``[0, 1]`` that confine an analysis to a region.

Used by 3-D variability analysis (:mod:`cryoviz.inference.ppca`: the components
live inside the mask) and by focused 3-D classification
(:mod:`cryoviz.inference.class_em`: the images minus the consensus outside the
mask, compared with masked class maps).
"""

from __future__ import annotations

from os import PathLike

import numpy as np
import torch

from cryoviz.errors import InputError

__all__ = ["check_focus_mask", "read_focus_mask"]

#: Values this far outside ``[0, 1]`` are refused (interpolated masks overshoot a little).
TOLERANCE = 1e-3


def check_focus_mask(mask: torch.Tensor | np.ndarray, boxes: tuple[int, ...],
                     field: str = "mask") -> torch.Tensor:
    """A focus mask as float64, checked, values clipped to ``[0, 1]``.

    Parameters
    ----------
    mask
        ``(D, D, D)`` real-space weights.
    boxes
        Accepted box sizes ``D`` (e.g. the particle box and a working box).
    field
        The name errors give it.

    Returns
    -------
    torch.Tensor
        ``(D, D, D)`` float64.

    Raises
    ------
    InputError
        Wrong shape, a NaN / inf, values outside ``[0, 1]`` (beyond
        :data:`TOLERANCE`), or no voxel above 0.
    """
    values = torch.as_tensor(np.asarray(mask), dtype=torch.float64)
    shape = tuple(values.shape)
    if shape not in [(b,) * 3 for b in boxes]:
        wanted = " or ".join(f"({b},)*3" for b in dict.fromkeys(boxes))
        raise InputError(None, field, f"shape {wanted}", shape)
    if not bool(torch.isfinite(values).all()):
        raise InputError(None, field, "finite values", "NaN or inf")
    low, high = float(values.min()), float(values.max())
    if low < -TOLERANCE or high > 1 + TOLERANCE:
        raise InputError(None, field, "values in [0, 1]", f"{low:.3g} to {high:.3g}")
    values = values.clamp(0.0, 1.0)
    if float(values.max()) <= 0.0:
        raise InputError(None, field, "some voxels above 0", "an empty mask")
    return values


def read_focus_mask(path: str | PathLike, box_size: int,
                    pixel_size_angstrom: float) -> torch.Tensor:
    """A focus mask from an MRC file on a given grid, checked; errors name the file.

    Parameters
    ----------
    path
        The MRC file.
    box_size, pixel_size_angstrom
        The grid it must be on (the particles' or the maps'); a header without a
        voxel size is accepted.

    Returns
    -------
    torch.Tensor
        ``(D, D, D)`` float64, values in ``[0, 1]``.

    Raises
    ------
    InputError
        Naming ``path``: another box, another voxel size, or what
        :func:`check_focus_mask` refuses.
    """
    from cryoviz.io.mrc import read_volume_on_grid  # noqa: PLC0415

    volume = read_volume_on_grid(path, box_size, pixel_size_angstrom)
    try:
        return check_focus_mask(volume, (box_size,))
    except InputError as err:
        raise InputError(path, "mask", err.expected, err.got) from None
