"""napari writer: an image layer (a 3-D map) to MRC with its voxel size."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryoviz import api

__all__ = ["write_mrc"]


def write_mrc(path: str, data, meta: dict) -> list[str]:
    """Write a ``(D, D, D)`` image layer as MRC; voxel size from the layer's scale.

    Raises
    ------
    InputError
        If the layer is not a cubic 3-D volume or its scale is not isotropic.
    """
    volume = np.asarray(data, dtype=np.float32)
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise api.InputError(path, "layer", "a cubic 3-D volume", got=f"shape {volume.shape}")
    scale = np.asarray(meta.get("scale", (1.0, 1.0, 1.0)), dtype=np.float64)[-3:]
    if not np.allclose(scale, scale[0], rtol=1e-6):
        raise api.InputError(path, "scale", "the same voxel size on every axis",
                             got=tuple(scale))
    target = Path(path)
    if target.suffix.lower() not in (".mrc", ".map"):
        target = target.with_suffix(".mrc")
    api.write_volume(target, volume, float(scale[0]))
    return [str(target)]
