"""cryoSPARC ``.cs`` particle files (numpy structured arrays saved with ``np.save``).

Fields used (names as in cryoSPARC's particle datasets):

* ``blob/path`` (bytes; a leading ``>`` is stripped), ``blob/idx`` (0-based image in
  the stack), ``blob/shape`` (``[ny, nx]``), ``blob/psize_A`` -- required;
* ``alignments3D/pose`` (axis-angle, rad), ``alignments3D/shift`` (pixels of
  ``alignments3D/psize_A``, falling back to ``blob/psize_A``), ``alignments3D/split``
  (half set 0/1) -- see :mod:`cryoviz.io.conventions`;
* ``ctf/df1_A``, ``ctf/df2_A``, ``ctf/df_angle_rad``, ``ctf/accel_kv``, ``ctf/cs_mm``,
  ``ctf/amp_contrast``, optional ``ctf/phase_shift_rad`` and ``ctf/bfactor``
  (pyem's ``csparc2star`` maps these one-to-one onto RELION's defocus U/V,
  angle (rad -> deg), voltage, Cs, amplitude contrast, phase shift and B-factor).

The file is loaded with ``allow_pickle=False``: object arrays are refused.
Other fields are kept in :attr:`ParticleSet.extra` (scalar fields only);
``uid`` is kept there and written back.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd

from cryoviz.ctf import CTFParams
from cryoviz.errors import InputError
from cryoviz.io.conventions import cryosparc_to_internal, internal_to_cryosparc
from cryoviz.io.mrc import atomic_output
from cryoviz.io.particles import ParticleSet, _relpath, resolve_data_path

__all__ = ["read_cs", "read_cs_particles", "write_cs"]

REQUIRED = ("blob/path", "blob/idx", "blob/shape", "blob/psize_A")
CTF_FIELDS = ("ctf/df1_A", "ctf/df2_A", "ctf/df_angle_rad", "ctf/accel_kv", "ctf/cs_mm",
              "ctf/amp_contrast")
CTF_FIELDS_TEXT = ", ".join(CTF_FIELDS)
_USED = set(REQUIRED) | set(CTF_FIELDS) | {
    "ctf/phase_shift_rad", "ctf/bfactor", "alignments3D/pose", "alignments3D/shift",
    "alignments3D/split", "alignments3D/psize_A", "cryoviz/particle_id",
}


def read_cs(path: str | PathLike) -> np.ndarray:
    """Load a ``.cs`` file as a structured array (no pickles)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file", "an existing .cs file", got="no such file")
    try:
        cs = np.load(path, allow_pickle=False)
    except ValueError as err:
        raise InputError(path, "contents", "a numpy structured array (.cs)", got=str(err)) from None
    except (OSError, EOFError) as err:
        raise InputError(path, "contents", "a numpy .npy/.cs file", got=str(err)) from None
    if not isinstance(cs, np.ndarray) or cs.dtype.names is None or cs.ndim != 1:
        raise InputError(path, "contents", "a 1-D structured array with named fields",
                         got=getattr(cs, "dtype", type(cs)))
    return cs


def _field(path: Path, cs: np.ndarray, name: str, width: int | None = None) -> np.ndarray:
    if name not in cs.dtype.names:
        raise InputError(path, name, "field present in the .cs file", got="missing")
    arr = cs[name]
    if arr.dtype.kind in "SUO" and width is None:
        return arr
    try:
        arr = np.array(arr, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(path, name, "numeric values", got=arr.dtype) from None
    shape = (len(cs),) if width is None else (len(cs), width)
    if arr.shape != shape:
        raise InputError(path, name, f"shape {shape}", got=arr.shape)
    if not np.isfinite(arr).all():
        raise InputError(path, name, "finite values", got="NaN or inf")
    return arr


def _decode(values: np.ndarray) -> list[str]:
    out = []
    for v in values:
        s = v.decode("utf-8") if isinstance(v, bytes) else str(v)
        out.append(s[1:] if s.startswith(">") else s)
    return out


def read_cs_particles(
    path: str | PathLike, base: Path, *, pixel_size_angstrom: float | None = None
) -> ParticleSet:
    """Read a cryoSPARC particle ``.cs`` file into a :class:`ParticleSet`."""
    path = Path(path)
    cs = read_cs(path)
    n = len(cs)
    for name in REQUIRED:
        _field(path, cs, name, 2 if name == "blob/shape" else None)
    files = _decode(cs["blob/path"])
    uniq, stack_index = np.unique(np.asarray(files, dtype=str), return_inverse=True)
    stacks = [resolve_data_path(f, base) for f in uniq]
    idx = _field(path, cs, "blob/idx")
    shape = _field(path, cs, "blob/shape", 2)
    if n and (shape != shape[0]).any():
        raise InputError(path, "blob/shape", "one image size for all particles")
    apix_blob = _field(path, cs, "blob/psize_A")
    if n and np.ptp(apix_blob) > 1e-3 * apix_blob.max():
        raise InputError(path, "blob/psize_A", "one pixel size for all particles",
                         got=f"{apix_blob.min():g} .. {apix_blob.max():g}")
    apix = pixel_size_angstrom if pixel_size_angstrom is not None else (
        float(apix_blob[0]) if n else 0.0)

    rotations = shifts = half = None
    if "alignments3D/pose" in cs.dtype.names:
        pose = _field(path, cs, "alignments3D/pose", 3)
        shift = (_field(path, cs, "alignments3D/shift", 2)
                 if "alignments3D/shift" in cs.dtype.names else None)
        shift_apix = (_field(path, cs, "alignments3D/psize_A")
                      if "alignments3D/psize_A" in cs.dtype.names else np.full(n, apix))
        rotations, shifts = cryosparc_to_internal(pose, shift, 1.0)
        shifts = shifts * shift_apix[:, None]
    if "alignments3D/split" in cs.dtype.names:
        half = _field(path, cs, "alignments3D/split").astype(np.int64)
        if not np.isin(half, (0, 1)).all():
            raise InputError(path, "alignments3D/split", "0 or 1")

    ctf = None
    if all(f in cs.dtype.names for f in CTF_FIELDS):
        opt = {f: _field(path, cs, f) if f in cs.dtype.names else np.zeros(n)
               for f in (*CTF_FIELDS, "ctf/phase_shift_rad", "ctf/bfactor")}
        ctf = CTFParams.from_arrays(
            defocus_u_angstrom=opt["ctf/df1_A"], defocus_v_angstrom=opt["ctf/df2_A"],
            astigmatism_angle_deg=np.rad2deg(opt["ctf/df_angle_rad"]),
            voltage_kv=opt["ctf/accel_kv"], cs_mm=opt["ctf/cs_mm"],
            amplitude_contrast=opt["ctf/amp_contrast"],
            phase_shift_deg=np.rad2deg(opt["ctf/phase_shift_rad"]), bfactor_a2=opt["ctf/bfactor"],
        )

    extra = pd.DataFrame(index=pd.RangeIndex(n))
    for name in cs.dtype.names:
        if name in _USED or cs[name].ndim != 1:
            continue
        col = cs[name]
        extra[name] = _decode(col) if col.dtype.kind in "SU" else col
    ids = (cs["cryoviz/particle_id"].astype(np.int64) if "cryoviz/particle_id" in cs.dtype.names
           else np.arange(n))
    return ParticleSet(
        image_stacks=stacks, stack_index=stack_index, image_index=idx.astype(np.int64),
        box_size=int(shape[0, 1]) if n else 0, pixel_size_angstrom=apix, rotations=rotations,
        shifts_angstrom=shifts, ctf=ctf, particle_ids=ids, half_set=half, extra=extra,
        source_path=path,
    )


def write_cs(particle_set: ParticleSet, path: str | PathLike) -> None:
    """Write particles as a cryoSPARC-style ``.cs`` file (atomic).

    Stack paths are written relative to ``path``'s folder. ``uid`` comes from
    ``extra['uid']`` if present, else the particle ids; the particle ids are
    also stored in ``cryoviz/particle_id``.
    """
    ps = particle_set
    path = Path(path)
    n = len(ps)
    rel = [_relpath(s, path.parent).encode() for s in ps.image_stacks]
    names = [rel[s] for s in ps.stack_index]
    width = max((len(r) for r in rel), default=1)
    fields: list[tuple[str, np.ndarray, str, tuple]] = [
        ("uid", ps.extra["uid"].to_numpy() if "uid" in ps.extra else ps.particle_ids, "<u8", ()),
        ("blob/path", np.asarray(names, dtype=f"S{width}"), f"S{width}", ()),
        ("blob/idx", ps.image_index, "<u4", ()),
        ("blob/shape", np.tile([ps.box_size, ps.box_size], (n, 1)), "<u4", (2,)),
        ("blob/psize_A", np.full(n, ps.pixel_size_angstrom), "<f4", ()),
        ("cryoviz/particle_id", ps.particle_ids, "<i8", ()),
    ]
    if ps.ctf is not None:
        p = ps.ctf.as_numpy()
        fields += [
            ("ctf/type", np.full(n, b"imported", dtype="S8"), "S8", ()),
            ("ctf/accel_kv", p["voltage_kv"], "<f4", ()),
            ("ctf/cs_mm", p["cs_mm"], "<f4", ()),
            ("ctf/amp_contrast", p["amplitude_contrast"], "<f4", ()),
            ("ctf/df1_A", p["defocus_u_angstrom"], "<f4", ()),
            ("ctf/df2_A", p["defocus_v_angstrom"], "<f4", ()),
            ("ctf/df_angle_rad", np.deg2rad(p["astigmatism_angle_deg"]), "<f4", ()),
            ("ctf/phase_shift_rad", np.deg2rad(p["phase_shift_deg"]), "<f4", ()),
            ("ctf/bfactor", p["bfactor_a2"], "<f4", ()),
        ]
    if ps.rotations is not None:
        pose, shift = internal_to_cryosparc(
            ps.rotations, ps.shifts_angstrom, ps.pixel_size_angstrom)
        fields += [
            ("alignments3D/pose", pose, "<f4", (3,)),
            ("alignments3D/shift", shift, "<f4", (2,)),
            ("alignments3D/psize_A", np.full(n, ps.pixel_size_angstrom), "<f4", ()),
        ]
    if ps.half_set is not None:
        fields.append(("alignments3D/split", ps.half_set, "<u4", ()))
    taken = {f[0] for f in fields}
    for c in ps.extra.columns:
        col = ps.extra[c].to_numpy()
        if c in taken or "/" not in c:  # only cryoSPARC-style fields go back into a .cs
            continue
        if np.issubdtype(col.dtype, np.number):
            fields.append((c, col, col.dtype.str, ()))
        else:
            enc = np.asarray([str(v).encode() for v in col])
            fields.append((c, enc, enc.dtype.str, ()))
    dtype = np.dtype([(name, kind, shape) for name, _, kind, shape in fields])
    out = np.zeros(n, dtype=dtype)
    for name, values, _, _ in fields:
        out[name] = values
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, out, allow_pickle=False)
