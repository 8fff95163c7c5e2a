"""RELION STAR files: a small parser/writer and ParticleSet conversion.

Supported layouts
-----------------
* RELION 3.0: one particle table (``data_`` / ``data_images`` /
  ``data_particles``), optics and CTF constants per particle, origins
  ``rlnOriginX/Y`` in pixels, pixel size from ``rlnImagePixelSize`` or
  ``rlnDetectorPixelSize * 1e4 / rlnMagnification``.
* RELION 3.1, 4 and 5: ``data_optics`` + ``data_particles``, origins
  ``rlnOriginX/YAngst`` in Å; files start with ``# version 30001`` (3.1, 4)
  or ``# version 50001`` (5). Additional columns are kept in
  :attr:`ParticleSet.extra` and written back.

``rlnImageName`` is ``k@path`` with a 1-based image number ``k``; ``path`` is
relative to the STAR file's folder (or ``datadir``). ``rlnRandomSubset`` 1/2
becomes ``half_set`` 0/1. Particle ids are written in the extra column
``_cryovizParticleId`` (RELION 3.1+ keeps unknown labels) so that subsets
written by us read back with their original ids. Poses follow
:mod:`cryoviz.io.conventions` (``origin = -shift``).
"""

from __future__ import annotations

import shlex
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd

from cryoviz.ctf import CTFParams
from cryoviz.errors import InputError
from cryoviz.io.conventions import internal_to_relion, relion_to_internal
from cryoviz.io.mrc import atomic_output, header_pixel_size_is_informative, open_stack
from cryoviz.io.particles import ParticleSet, _relpath, resolve_data_path

__all__ = ["read_star", "write_star_blocks", "read_star_particles", "write_star"]

ID_LABEL = "cryovizParticleId"
CTF_FIELDS_TEXT = (
    "rlnDefocusU, rlnDefocusV, rlnDefocusAngle, rlnVoltage, rlnSphericalAberration, "
    "rlnAmplitudeContrast"
)
_INT_LABELS = {
    "rlnOpticsGroup", "rlnRandomSubset", "rlnImageSize", "rlnImageDimensionality",
    "rlnClassNumber", "rlnGroupNumber", ID_LABEL,
}
_FLOAT_LABELS = {
    "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginX", "rlnOriginY",
    "rlnOriginXAngst", "rlnOriginYAngst", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle",
    "rlnPhaseShift", "rlnCtfBfactor", "rlnVoltage", "rlnSphericalAberration",
    "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnDetectorPixelSize", "rlnMagnification",
    "rlnCoordinateX", "rlnCoordinateY", "rlnCtfScalefactor",
}
# Columns that write_star generates; stale copies in ``extra`` are not written.
_GENERATED = {
    "rlnImageName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginX", "rlnOriginY",
    "rlnOriginXAngst", "rlnOriginYAngst", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle",
    "rlnPhaseShift", "rlnCtfBfactor", "rlnRandomSubset", "rlnOpticsGroup", "rlnVoltage",
    "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnImageSize",
    "rlnImageDimensionality", "rlnMagnification", "rlnDetectorPixelSize", ID_LABEL,
}
_VERSION_COMMENT = {"3.1": "30001", "4": "30001", "4.0": "30001", "5": "50001", "5.0": "50001"}


# --------------------------------------------------------------------------- parsing


def _tokens(line: str) -> list[str]:
    return shlex.split(line) if ('"' in line or "'" in line) else line.split()


def _typed_table(path: Path, block: str, labels: list[str], rows: list[list[str]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=labels, dtype=object) if rows else pd.DataFrame(
        {c: pd.Series([], dtype=object) for c in labels})
    for col in labels:
        raw = df[col]
        num = pd.to_numeric(raw, errors="coerce")
        ok = num.notna() | raw.astype(str).str.lower().isin(["nan", "none"])
        if bool(ok.all()):
            if col in _INT_LABELS and len(num):
                if not bool(np.all(np.isfinite(num))) or not bool(np.all(num == np.round(num))):
                    bad = raw[~np.isfinite(num) | (num != np.round(num))].iloc[0]
                    raise InputError(path, f"{col} (data_{block})", "integer values", got=bad)
                num = num.astype(np.int64)
            df[col] = num
        elif col in _INT_LABELS or col in _FLOAT_LABELS:
            bad = raw[~ok].iloc[0]
            raise InputError(path, f"{col} (data_{block})", "numeric values", got=repr(bad))
        else:
            df[col] = raw.astype(str)
    return df


def read_star(path: str | PathLike) -> dict[str, pd.DataFrame]:
    """Read every data block of a STAR file.

    Returns
    -------
    dict
        Block name (without ``data_``) -> table; columns are labels without the
        leading underscore; numeric columns are converted. Key-value blocks
        become one-row tables.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file", "an existing STAR file", got="no such file")
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise InputError(path, "contents", "a text STAR file", got="binary data") from None
    blocks: dict[str, pd.DataFrame] = {}
    i, n = 0, len(lines)
    block: str | None = None
    pairs: dict[str, str] = {}

    def flush_pairs() -> None:
        if block is not None and pairs and block not in blocks:
            blocks[block] = _typed_table(path, block, list(pairs), [list(pairs.values())])

    while i < n:
        line = lines[i].strip()
        if not line or line.startswith("#"):
            i += 1
            continue
        if line.startswith("data_"):
            flush_pairs()
            block, pairs = line[5:].strip(), {}
            i += 1
            continue
        if block is None:
            raise InputError(path, f"line {i + 1}", "a 'data_' block before any content",
                             got=line[:40])
        if line.startswith("loop_"):
            i += 1
            labels: list[str] = []
            while i < n and lines[i].strip().startswith("_"):
                labels.append(lines[i].split()[0][1:])
                i += 1
            if not labels:
                raise InputError(path, f"loop_ in data_{block} (line {i})",
                                 "column labels starting with '_'")
            rows = []
            while i < n:
                text = lines[i].strip()
                if not text or text.startswith("data_") or text.startswith("loop_"):
                    break
                if not text.startswith("#"):
                    row = _tokens(text)
                    if len(row) != len(labels):
                        raise InputError(path, f"data_{block} line {i + 1}",
                                         f"{len(labels)} values (one per column)",
                                         got=f"{len(row)} values")
                    rows.append(row)
                i += 1
            blocks[block] = _typed_table(path, block, labels, rows)
            continue
        if line.startswith("_"):
            parts = _tokens(line)
            if len(parts) < 2:
                raise InputError(path, f"{parts[0]} (line {i + 1})", "a label and a value")
            pairs[parts[0][1:]] = parts[1]
            i += 1
            continue
        raise InputError(path, f"data_{block} line {i + 1}", "'loop_', '_label value' or a "
                         "comment", got=line[:40])
    flush_pairs()
    if not blocks:
        raise InputError(path, "data blocks", "at least one 'data_' block with a table")
    return blocks


def _format_column(values: pd.Series) -> np.ndarray:
    arr = values.to_numpy()
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
        return np.char.mod("%d", arr.astype(np.int64))
    if np.issubdtype(arr.dtype, np.floating):
        return np.char.mod("%.6f", arr.astype(np.float64))
    out = []
    for v in arr:
        s = str(v)
        out.append(f'"{s}"' if (not s or any(c.isspace() for c in s)) else s)
    return np.asarray(out, dtype=object)


def write_star_blocks(path: str | PathLike, blocks: dict[str, pd.DataFrame],
                      version: str | None = None) -> None:
    """Write tables as ``loop_`` blocks (atomic). ``version`` adds ``# version NNNNN`` lines."""
    out: list[str] = []
    for name, df in blocks.items():
        out.append("")
        if version is not None:
            out.append(f"# version {version}")
            out.append("")
        out += [f"data_{name}", "", "loop_"]
        out += [f"_{c} #{k + 1}" for k, c in enumerate(df.columns)]
        if len(df):
            cols = [_format_column(df[c]) for c in df.columns]
            out += [" ".join(row) for row in zip(*cols, strict=True)]
        out.append("")
    with atomic_output(path) as tmp:
        Path(tmp).write_text("\n".join(out) + "\n")


# --------------------------------------------------------------------------- particles


def _split_image_names(path: Path, names: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    parts = names.astype(str).str.split("@", n=1, expand=True)
    if parts.shape[1] == 1:  # no '@' anywhere: one image per file
        return np.zeros(len(names), dtype=np.int64), parts[0].to_numpy()
    no_at = parts[1].isna()
    files = parts[1].where(~no_at, parts[0])
    k = pd.to_numeric(parts[0].where(~no_at, "1"), errors="coerce")
    if k.isna().any() or (k < 1).any() or (k != np.round(k)).any():
        bad = names[k.isna() | (k < 1) | (k != np.round(k))].iloc[0]
        raise InputError(path, "rlnImageName", "'k@stack' with an integer k >= 1", got=bad)
    return k.to_numpy(dtype=np.int64) - 1, files.to_numpy()


def _particle_table(path: Path, blocks: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame,
                                                                           pd.DataFrame | None]:
    if "particles" in blocks:
        return blocks["particles"], blocks.get("optics")
    tables = [b for b in blocks if b != "optics"]
    if len(tables) == 1 and "optics" not in blocks:
        return blocks[tables[0]], None
    raise InputError(path, "data_particles", "a particle table (data_particles)",
                     got=f"blocks {sorted(blocks)}")


def _merge_optics(path: Path, df: pd.DataFrame, optics: pd.DataFrame | None) -> pd.DataFrame:
    """Per-particle view with optics columns joined on rlnOpticsGroup."""
    if optics is None:
        return df
    if "rlnOpticsGroup" not in optics:
        raise InputError(path, "rlnOpticsGroup (data_optics)", "an optics group column")
    groups = df["rlnOpticsGroup"] if "rlnOpticsGroup" in df else pd.Series(
        np.full(len(df), int(optics["rlnOpticsGroup"].iloc[0])))
    if "rlnOpticsGroup" not in df and len(optics) > 1:
        raise InputError(path, "rlnOpticsGroup (data_particles)",
                         "an optics group per particle (several optics groups)")
    table = optics.set_index("rlnOpticsGroup")
    missing = ~groups.isin(table.index)
    if missing.any():
        raise InputError(path, "rlnOpticsGroup",
                         f"groups listed in data_optics {list(table.index)}",
                         got=int(groups[missing].iloc[0]))
    merged = df.copy()
    for col in table.columns:
        if col not in merged:
            merged[col] = table[col].reindex(groups.to_numpy()).to_numpy()
    return merged


def _single_value(path: Path, df: pd.DataFrame, col: str) -> float | None:
    if col not in df:
        return None
    vals = np.unique(df[col].to_numpy(dtype=np.float64))
    if vals.size > 1 and (vals.max() - vals.min()) > 1e-3 * abs(vals.max()):
        raise InputError(path, col, "one value for all particles (single pixel/box size)",
                         got=f"{vals.min():g} .. {vals.max():g}")
    return float(vals[0]) if vals.size else None


def read_star_particles(
    path: str | PathLike, base: Path, *, pixel_size_angstrom: float | None = None
) -> ParticleSet:
    """Read a particle STAR file into a :class:`ParticleSet` (stacks not opened yet, except
    the first one when the pixel size must come from its header).

    Poses are present when ``rlnAngleRot/Tilt/Psi`` are; CTF when the defocus and
    the voltage / Cs / amplitude-contrast columns (per particle or per optics
    group) are.
    """
    path = Path(path)
    blocks = read_star(path)
    raw, optics = _particle_table(path, blocks)
    if "rlnImageName" not in raw:
        raise InputError(path, "rlnImageName", "a column naming each image ('k@stack')",
                         got="missing")
    df = _merge_optics(path, raw, optics)
    n = len(df)
    image_index, files = _split_image_names(path, df["rlnImageName"])
    uniq, stack_index = np.unique(files, return_inverse=True)
    stacks = [resolve_data_path(str(f), base) for f in uniq]

    apix = pixel_size_angstrom
    if apix is None:
        apix = _single_value(path, df, "rlnImagePixelSize")
    if apix is None and "rlnDetectorPixelSize" in df and "rlnMagnification" in df:
        det = _single_value(path, df, "rlnDetectorPixelSize")
        mag = _single_value(path, df, "rlnMagnification")
        apix = det * 1e4 / mag if mag else None
    if apix is None and stacks and stacks[0].is_file():
        with open_stack(stacks[0]) as s:
            if header_pixel_size_is_informative(s.pixel_size_angstrom):
                apix = s.pixel_size_angstrom
    box = _single_value(path, df, "rlnImageSize")

    used: set[str] = {"rlnImageName", ID_LABEL}
    rotations = shifts = None
    angle_cols = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
    if all(c in df for c in angle_cols):
        euler = df[angle_cols].to_numpy(dtype=np.float64)
        if {"rlnOriginXAngst", "rlnOriginYAngst"} <= set(df):
            origin = df[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(dtype=np.float64)
        elif {"rlnOriginX", "rlnOriginY"} <= set(df):
            if apix is None:
                raise InputError(path, "rlnOriginX", "a pixel size to convert pixel origins")
            origin = df[["rlnOriginX", "rlnOriginY"]].to_numpy(dtype=np.float64) * apix
        else:
            origin = None
        rotations, shifts = relion_to_internal(euler, origin)
        used |= set(angle_cols) | {"rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginX", "rlnOriginY"}

    ctf = None
    need = ["rlnDefocusU", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"]
    if all(c in df for c in need):
        def col(name: str, default: float) -> np.ndarray:
            return np.array(df[name], dtype=np.float64) if name in df else np.full(n, default)

        dfu = col("rlnDefocusU", 0.0)
        ctf = CTFParams.from_arrays(
            defocus_u_angstrom=dfu,
            defocus_v_angstrom=col("rlnDefocusV", 0.0) if "rlnDefocusV" in df else dfu,
            astigmatism_angle_deg=col("rlnDefocusAngle", 0.0),
            voltage_kv=col("rlnVoltage", 0.0),
            cs_mm=col("rlnSphericalAberration", 0.0),
            amplitude_contrast=col("rlnAmplitudeContrast", 0.0),
            phase_shift_deg=col("rlnPhaseShift", 0.0),
            bfactor_a2=col("rlnCtfBfactor", 0.0),
        )
        used |= {"rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift", "rlnCtfBfactor"}

    half = None
    if "rlnRandomSubset" in df:
        subset = df["rlnRandomSubset"].to_numpy()
        if not np.isin(subset, (1, 2)).all():
            bad = subset[~np.isin(subset, (1, 2))][0]
            raise InputError(path, "rlnRandomSubset", "1 or 2", got=bad)
        half = subset.astype(np.int64) - 1
        used.add("rlnRandomSubset")

    ids = raw[ID_LABEL].to_numpy(np.int64) if ID_LABEL in raw else np.arange(n)
    keep = [c for c in raw.columns if c not in used or c == "rlnImageName"]
    extra = raw[keep].reset_index(drop=True)
    return ParticleSet(
        image_stacks=stacks, stack_index=stack_index, image_index=image_index,
        box_size=int(box) if box else 0, pixel_size_angstrom=apix or 0.0,
        rotations=rotations, shifts_angstrom=shifts, ctf=ctf, particle_ids=ids,
        half_set=half, extra=extra, source_path=path, optics=optics,
    )


def _optics_groups(ps: ParticleSet) -> tuple[pd.DataFrame, np.ndarray]:
    """Optics table and 1-based group per particle (reusing ``ps.optics`` when consistent)."""
    n = len(ps)
    keys = ["rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"]
    if ps.ctf is not None:
        p = ps.ctf.as_numpy()
        triples = np.stack([p["voltage_kv"], p["cs_mm"], p["amplitude_contrast"]], axis=1)
    else:
        triples = np.zeros((n, 0))
    if ps.optics is not None and "rlnOpticsGroup" in ps.extra and "rlnOpticsGroup" in ps.optics:
        groups = ps.extra["rlnOpticsGroup"].to_numpy(np.int64)
        table = ps.optics.set_index("rlnOpticsGroup")
        valid = bool(np.isin(groups, table.index.to_numpy()).all())
        if valid and triples.shape[1]:
            valid = all(k in table for k in keys) and np.allclose(
                table[keys].reindex(groups).to_numpy(np.float64), triples, rtol=1e-6, atol=1e-9)
        if valid:
            return ps.optics.copy(), groups
    uniq, groups = (np.unique(triples, axis=0, return_inverse=True) if triples.shape[1]
                    else (np.zeros((1, 0)), np.zeros(n, dtype=np.int64)))
    groups = np.asarray(groups).reshape(-1)
    optics = pd.DataFrame({
        "rlnOpticsGroup": np.arange(1, len(uniq) + 1),
        "rlnOpticsGroupName": [f"opticsGroup{k + 1}" for k in range(len(uniq))],
    })
    for j, k in enumerate(keys[: uniq.shape[1]]):
        optics[k] = uniq[:, j]
    return optics, groups + 1


def write_star(particle_set: ParticleSet, path: str | PathLike, version: str = "3.1") -> None:
    """Write particles as a RELION STAR file (atomic).

    Parameters
    ----------
    particle_set
        The particles; stack paths are written relative to ``path``'s folder.
    path
        Output ``.star``.
    version
        ``"3.0"`` (single table, pixel origins, optics per particle) or
        ``"3.1"``, ``"4"``, ``"5"`` (``data_optics`` + ``data_particles``,
        origins in Å).
    """
    ps = particle_set
    path = Path(path)
    version = str(version)
    if version not in ("3.0", *_VERSION_COMMENT):
        raise ValueError(f"unsupported STAR version {version!r}")
    n = len(ps)
    rel = [_relpath(s, path.parent) for s in ps.image_stacks]
    names = [f"{k + 1:06d}@{rel[s]}" for k, s in zip(ps.image_index, ps.stack_index, strict=True)]
    part = pd.DataFrame({"rlnImageName": names})
    if ps.rotations is not None:
        euler, origin = internal_to_relion(ps.rotations, ps.shifts_angstrom)
        part["rlnAngleRot"], part["rlnAngleTilt"], part["rlnAnglePsi"] = euler.T
        if version == "3.0":
            origin = origin / ps.pixel_size_angstrom
            part["rlnOriginX"], part["rlnOriginY"] = origin.T
        else:
            part["rlnOriginXAngst"], part["rlnOriginYAngst"] = origin.T
    if ps.ctf is not None:
        p = ps.ctf.as_numpy()
        part["rlnDefocusU"] = p["defocus_u_angstrom"]
        part["rlnDefocusV"] = p["defocus_v_angstrom"]
        part["rlnDefocusAngle"] = p["astigmatism_angle_deg"]
        part["rlnPhaseShift"] = p["phase_shift_deg"]
        part["rlnCtfBfactor"] = p["bfactor_a2"]
    if ps.half_set is not None:
        part["rlnRandomSubset"] = ps.half_set + 1
    part[ID_LABEL] = ps.particle_ids
    for c in ps.extra.columns:
        if c not in _GENERATED and c not in part and "/" not in c:  # skip cryoSPARC fields
            part[c] = ps.extra[c].to_numpy()
    if version == "3.0":
        if ps.ctf is not None:
            p = ps.ctf.as_numpy()
            part["rlnVoltage"] = p["voltage_kv"]
            part["rlnSphericalAberration"] = p["cs_mm"]
            part["rlnAmplitudeContrast"] = p["amplitude_contrast"]
        part["rlnImagePixelSize"] = np.full(n, ps.pixel_size_angstrom)
        part["rlnMagnification"] = np.full(n, 10000.0)
        part["rlnDetectorPixelSize"] = np.full(n, ps.pixel_size_angstrom)
        part["rlnImageSize"] = np.full(n, ps.box_size, dtype=np.int64)
        write_star_blocks(path, {"": part})
        return
    optics, groups = _optics_groups(ps)
    optics["rlnImagePixelSize"] = float(ps.pixel_size_angstrom)
    optics["rlnImageSize"] = int(ps.box_size)
    optics["rlnImageDimensionality"] = 2
    part.insert(1, "rlnOpticsGroup", groups.astype(np.int64))
    write_star_blocks(path, {"optics": optics, "particles": part},
                      version=_VERSION_COMMENT[version])
