"""cryoDRGN pickles: poses, CTF parameters and particle indices.

Formats (as written by cryoDRGN's ``parse_pose_*``, ``parse_ctf_*`` and
``filter`` commands):

* pose pickle: the tuple ``(rot (N, 3, 3) float32, trans (N, 2) float32)`` or
  ``rot`` alone; ``trans`` is a fraction of the box (see
  :mod:`cryoviz.io.conventions` for the signs);
* CTF pickle: ``(N, 9)`` float32 columns ``D, Apix, dfU (Å), dfV (Å), dfAng
  (deg), kV, Cs (mm), w, phase shift (deg)``;
* index pickle: a 1-D integer array of selected particle indices.

Pickles are read with a restricted unpickler that only rebuilds numpy arrays,
so a pickle that names any other callable (``os.system``...) is refused.
"""

from __future__ import annotations

import importlib
import pickle
from os import PathLike
from pathlib import Path

import numpy as np
import torch

from cryoviz.ctf import CTFParams
from cryoviz.errors import InputError
from cryoviz.io.mrc import atomic_output

__all__ = [
    "read_pickle",
    "read_pose_pkl",
    "write_pose_pkl",
    "read_ctf_pkl",
    "write_ctf_pkl",
    "read_index_pkl",
    "write_index_pkl",
    "ctf_array_from_params",
    "ctf_params_from_array",
]

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("builtins", "tuple"),
    ("builtins", "list"),
    ("_codecs", "encode"),  # protocol-2 pickles encode raw bytes through it
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the numpy array reconstruction helpers."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core"):  # numpy >= 2 moved numpy.core to numpy._core
            try:
                mod = importlib.import_module(module.replace("numpy.core", "numpy._core", 1))
            except ImportError:
                mod = importlib.import_module(module)
        else:
            mod = importlib.import_module(module)
        return getattr(mod, name)


def read_pickle(path: str | PathLike):
    """Load a pickle holding only numpy arrays, tuples, lists and numbers."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file", "an existing pickle file", got="no such file")
    try:
        with open(path, "rb") as fh:
            return _NumpyOnlyUnpickler(fh).load()
    except pickle.UnpicklingError as err:
        raise InputError(path, "pickle contents", "numpy arrays only", got=str(err)) from None
    except (EOFError, ValueError, TypeError, AttributeError) as err:
        raise InputError(path, "pickle contents", "a readable pickle", got=str(err)) from None


def _write_pickle(path: str | PathLike, obj) -> None:
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        pickle.dump(obj, fh, protocol=4)


def read_pose_pkl(path: str | PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a cryoDRGN pose pickle.

    Returns
    -------
    rot
        ``(N, 3, 3)`` float64.
    trans
        ``(N, 2)`` float64 fraction of the box, or None if the pickle has no translations.
    """
    obj = read_pickle(path)
    if isinstance(obj, (tuple, list)):
        if len(obj) not in (1, 2):
            raise InputError(path, "pose tuple", "(rot, trans) or (rot,)", got=f"{len(obj)} items")
        rot = obj[0]
        trans = obj[1] if len(obj) == 2 else None
    else:
        rot, trans = obj, None
    rot = np.asarray(rot, dtype=np.float64)
    if rot.ndim != 3 or rot.shape[1:] != (3, 3):
        raise InputError(path, "rot", "an (N, 3, 3) array", got=rot.shape)
    if trans is not None:
        trans = np.asarray(trans, dtype=np.float64)
        if trans.shape != (rot.shape[0], 2):
            raise InputError(path, "trans", f"an ({rot.shape[0]}, 2) array", got=trans.shape)
    if not np.isfinite(rot).all() or (trans is not None and not np.isfinite(trans).all()):
        raise InputError(path, "pose values", "finite numbers", got="NaN or inf")
    return rot, trans


def write_pose_pkl(path: str | PathLike, rot: np.ndarray, trans: np.ndarray | None) -> None:
    """Write ``(rot (N,3,3), trans (N,2))`` as float32 in cryoDRGN's layout (atomic)."""
    rot = np.asarray(rot, dtype=np.float32)
    if trans is None:
        _write_pickle(path, rot)
    else:
        _write_pickle(path, (rot, np.asarray(trans, dtype=np.float32)))


def read_ctf_pkl(path: str | PathLike) -> np.ndarray:
    """Read a cryoDRGN CTF pickle as an ``(N, 9)`` float64 array."""
    arr = np.asarray(read_pickle(path), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 9:
        raise InputError(
            path, "CTF array", "(N, 9): D, Apix, dfU, dfV, dfAng, kV, Cs, w, phase", got=arr.shape
        )
    if not np.isfinite(arr).all():
        raise InputError(path, "CTF values", "finite numbers", got="NaN or inf")
    return arr


def write_ctf_pkl(path: str | PathLike, ctf_array: np.ndarray) -> None:
    """Write an ``(N, 9)`` CTF array as float32 (atomic)."""
    arr = np.asarray(ctf_array, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != 9:
        raise ValueError(f"CTF array must be (N, 9), got {arr.shape}")
    _write_pickle(path, arr)


def read_index_pkl(path: str | PathLike) -> np.ndarray:
    """Read a cryoDRGN index pickle as a 1-D int64 array."""
    arr = np.asarray(read_pickle(path))
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise InputError(path, "index array", "a 1-D integer array", got=f"{arr.dtype} {arr.shape}")
    if arr.size and arr.min() < 0:
        raise InputError(path, "index array", "non-negative indices", got=int(arr.min()))
    return arr.astype(np.int64)


def write_index_pkl(path: str | PathLike, index: np.ndarray) -> None:
    """Write a 1-D integer index array (atomic)."""
    _write_pickle(path, np.asarray(index, dtype=np.int64).reshape(-1))


def ctf_array_from_params(ctf: CTFParams, box_size: int, pixel_size_angstrom: float) -> np.ndarray:
    """CTFParams to cryoDRGN's ``(N, 9)`` layout (the B-factor is not part of it)."""
    p = ctf.as_numpy()
    n = len(ctf)
    return np.stack(
        [
            np.full(n, float(box_size)),
            np.full(n, float(pixel_size_angstrom)),
            p["defocus_u_angstrom"],
            p["defocus_v_angstrom"],
            p["astigmatism_angle_deg"],
            p["voltage_kv"],
            p["cs_mm"],
            p["amplitude_contrast"],
            p["phase_shift_deg"],
        ],
        axis=1,
    )


def ctf_params_from_array(arr: np.ndarray) -> CTFParams:
    """cryoDRGN's ``(N, 9)`` layout to CTFParams (B-factor 0)."""
    arr = np.asarray(arr, dtype=np.float64)
    cols = [torch.as_tensor(arr[:, i].copy()) for i in range(2, 9)]
    return CTFParams.from_arrays(
        defocus_u_angstrom=cols[0],
        defocus_v_angstrom=cols[1],
        astigmatism_angle_deg=cols[2],
        voltage_kv=cols[3],
        cs_mm=cols[4],
        amplitude_contrast=cols[5],
        phase_shift_deg=cols[6],
    )
