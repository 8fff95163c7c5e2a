"""Particle metadata (:class:`ParticleSet`), lazy image access and :func:`load_particles`.

A :class:`ParticleSet` holds per-particle metadata in our conventions (see
:mod:`cryoviz.io.conventions`); the pixels stay on disk and are read on demand
through :class:`ImageSource`, which memory-maps the stacks and reads only the
images asked for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryoviz.ctf import CTFParams
from cryoviz.errors import InputError
from cryoviz.io.mrc import MRCStack, header_pixel_size_is_informative, open_stack

__all__ = ["ParticleSet", "ImageSource", "load_particles", "resolve_data_path", "check_stacks"]

PIXEL_SIZE_RTOL = 1e-3


@dataclass
class ParticleSet:
    """Metadata of ``N`` particle images.

    Attributes
    ----------
    image_stacks
        Distinct stack files.
    stack_index
        ``(N,)`` int, index into ``image_stacks``.
    image_index
        ``(N,)`` int, 0-based image within its stack.
    box_size
        Image side ``D`` in pixels.
    pixel_size_angstrom
        Å per pixel.
    rotations
        ``(N, 3, 3)`` float64 ``R`` (particle -> lab), or None.
    shifts_angstrom
        ``(N, 2)`` float64 particle-centre offsets in the image (Å), or None.
    ctf
        Per-particle CTF parameters, or None.
    particle_ids
        ``(N,)`` int, row in the original file (kept through subsets); default ``arange(N)``.
    half_set
        ``(N,)`` int in {0, 1} (RELION ``rlnRandomSubset`` 1/2), or None.
    extra
        Other per-particle columns (``N`` rows, index ``0..N-1``).
    source_path
        The metadata file this came from.
    optics
        RELION optics table, if any.
    """

    image_stacks: list[Path]
    stack_index: np.ndarray
    image_index: np.ndarray
    box_size: int
    pixel_size_angstrom: float
    rotations: np.ndarray | None = None
    shifts_angstrom: np.ndarray | None = None
    ctf: CTFParams | None = None
    particle_ids: np.ndarray | None = None
    half_set: np.ndarray | None = None
    extra: pd.DataFrame = field(default_factory=pd.DataFrame)
    source_path: Path | None = None
    optics: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        self.image_stacks = [Path(p) for p in self.image_stacks]
        self.stack_index = np.asarray(self.stack_index, dtype=np.int64).reshape(-1)
        self.image_index = np.asarray(self.image_index, dtype=np.int64).reshape(-1)
        n = self.image_index.shape[0]
        self.box_size = int(self.box_size)
        self.pixel_size_angstrom = float(self.pixel_size_angstrom)
        if self.rotations is not None:
            self.rotations = np.asarray(self.rotations, dtype=np.float64).reshape(-1, 3, 3)
        if self.shifts_angstrom is not None:
            self.shifts_angstrom = np.asarray(self.shifts_angstrom, dtype=np.float64).reshape(-1, 2)
        if self.particle_ids is None:
            self.particle_ids = np.arange(n, dtype=np.int64)
        self.particle_ids = np.asarray(self.particle_ids, dtype=np.int64).reshape(-1)
        if self.half_set is not None:
            self.half_set = np.asarray(self.half_set, dtype=np.int64).reshape(-1)
        if self.extra is None or (len(self.extra.columns) == 0 and len(self.extra) != n):
            self.extra = pd.DataFrame(index=pd.RangeIndex(n))
        if self.source_path is not None:
            self.source_path = Path(self.source_path)

    def __len__(self) -> int:
        return int(self.image_index.shape[0])

    def subset(self, index) -> ParticleSet:
        """The particles selected by ``index`` (int array, bool mask or slice); ids are kept."""
        if isinstance(index, slice):
            index = np.arange(len(self))[index]
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        index = index.astype(np.int64)

        def pick(a):
            return None if a is None else a[index]

        return ParticleSet(
            image_stacks=list(self.image_stacks),
            stack_index=self.stack_index[index],
            image_index=self.image_index[index],
            box_size=self.box_size,
            pixel_size_angstrom=self.pixel_size_angstrom,
            rotations=pick(self.rotations),
            shifts_angstrom=pick(self.shifts_angstrom),
            ctf=None if self.ctf is None else self.ctf.subset(index),
            particle_ids=self.particle_ids[index],
            half_set=pick(self.half_set),
            extra=self.extra.iloc[index].reset_index(drop=True),
            source_path=self.source_path,
            optics=self.optics,
        )

    def validate(self) -> None:
        """Check shapes, ranges and finiteness; raise :class:`InputError` naming the source."""
        n = len(self)
        src = self.source_path

        def need(ok: bool, field_name: str, expected: str, got=None) -> None:
            if not ok:
                raise InputError(src, field_name, expected, got)

        need(self.box_size > 0, "box size", "a positive integer", self.box_size)
        need(
            np.isfinite(self.pixel_size_angstrom) and self.pixel_size_angstrom > 0,
            "pixel size", "a positive number of Å", self.pixel_size_angstrom,
        )
        need(self.stack_index.shape == (n,), "stack index", f"{n} entries", self.stack_index.shape)
        if n:
            need(
                self.stack_index.min() >= 0 and self.stack_index.max() < len(self.image_stacks),
                "stack index", f"values in [0, {len(self.image_stacks)})",
            )
            need(self.image_index.min() >= 0, "image index", "non-negative values",
                 int(self.image_index.min()))
        need(self.particle_ids.shape == (n,), "particle ids", f"{n} entries",
             self.particle_ids.shape)
        need(len(self.extra) == n, "extra columns", f"{n} rows", len(self.extra))
        if self.rotations is not None:
            R = self.rotations
            need(R.shape == (n, 3, 3), "rotations", f"shape ({n}, 3, 3)", R.shape)
            need(bool(np.isfinite(R).all()), "rotations", "finite values", "NaN or inf")
            err = np.abs(R @ np.swapaxes(R, -1, -2) - np.eye(3)).max() if n else 0.0
            need(err < 1e-4, "rotations", "orthonormal matrices", f"|R R^T - I| = {err:.2g}")
            if n:
                det = np.linalg.det(R)
                need(bool(np.all(det > 0)), "rotations", "proper rotations (det +1)")
        if self.shifts_angstrom is not None:
            s = self.shifts_angstrom
            need(s.shape == (n, 2), "shifts", f"shape ({n}, 2)", s.shape)
            need(bool(np.isfinite(s).all()), "shifts", "finite values", "NaN or inf")
        if self.ctf is not None:
            need(len(self.ctf) == n, "CTF", f"{n} particles", len(self.ctf))
            for name, arr in self.ctf.as_numpy().items():
                need(bool(np.isfinite(arr).all()), f"CTF {name}", "finite values", "NaN or inf")
        if self.half_set is not None:
            need(self.half_set.shape == (n,), "half set", f"{n} entries", self.half_set.shape)
            need(bool(np.isin(self.half_set, (0, 1)).all()), "half set", "values 0 or 1")


class ImageSource:
    """Read particle images on demand from memory-mapped stacks.

    Parameters
    ----------
    particles
        The particle set whose images to serve; ``images(i)`` returns the image
        of particle ``i``.
    """

    def __init__(self, particles: ParticleSet) -> None:
        self.particles = particles
        self._stacks: dict[int, MRCStack] = {}

    def _stack(self, k: int) -> MRCStack:
        if k not in self._stacks:
            self._stacks[k] = open_stack(self.particles.image_stacks[k])
        return self._stacks[k]

    def images(self, index: np.ndarray | list[int] | int) -> torch.Tensor:
        """Images of particles ``index`` as a ``(B, D, D)`` float32 tensor.

        Reads only those images, grouped by stack; raises :class:`InputError`
        naming the file and image if any pixel is NaN or inf. Memory: the
        result plus one stack's share of it while reading (when every image
        comes from one stack, the array read is returned without a copy).
        """
        index = np.atleast_1d(np.asarray(index, dtype=np.int64))
        p = self.particles
        stacks = p.stack_index[index]
        groups = np.unique(stacks)
        if groups.size == 1:
            return torch.from_numpy(self._read(int(groups[0]), p.image_index[index]))
        d = p.box_size
        out = np.empty((index.size, d, d), dtype=np.float32)
        for k in groups:
            rows = np.flatnonzero(stacks == k)
            out[rows] = self._read(int(k), p.image_index[index[rows]])
        return torch.from_numpy(out)

    def _read(self, k: int, wanted: np.ndarray) -> np.ndarray:
        """``(B, D, D)`` float32 images ``wanted`` (0-based) of stack ``k``, checked."""
        d = self.particles.box_size
        stack = self._stack(k)
        data = stack.read(wanted)
        if data.shape[1:] != (d, d):
            raise InputError(stack.path, "image size", f"{d} x {d} pixels",
                             got=f"{data.shape[2]} x {data.shape[1]}")
        bad = ~np.isfinite(data).all(axis=(1, 2))
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            raise InputError(
                stack.path, f"pixel values of image {int(wanted[j])} (0-based)",
                "finite numbers", got="NaN or inf",
            )
        return data

    def close(self) -> None:
        """Release all memory maps."""
        for stack in self._stacks.values():
            stack.close()
        self._stacks.clear()

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.particles)


def resolve_data_path(name: str, base: Path) -> Path:
    """Resolve a stack path from a metadata file.

    Absolute paths are used as they are. Relative paths are looked up under
    ``base`` (``datadir`` if given, else the metadata file's folder); if not
    found there, the bare file name under ``base`` is tried (stacks copied
    flat next to the metadata). If neither exists the first candidate is
    returned, so the error names it.
    """
    p = Path(name)
    if p.is_absolute():
        return p
    candidates = [base / p, base / p.name]
    for c in candidates:
        if c.is_file():
            return c
    return candidates[0]


def check_stacks(ps: ParticleSet, meta_path: Path | None, image_field: str,
                 pixel_field: str | None) -> ParticleSet:
    """Open every stack header and check it against the metadata.

    Checks that each stack exists and is a valid MRC file of square images of
    ``ps.box_size`` (filled in from the first stack when 0), that every image
    index is inside its stack, and that the header pixel size agrees with
    ``ps.pixel_size_angstrom`` to a relative 1e-3 (headers of 0 or 1.0 count
    as unset and are not compared; a non-positive ``ps.pixel_size_angstrom``
    is filled in from the first informative header).
    """
    for k, path in enumerate(ps.image_stacks):
        with open_stack(path) as stack:
            if ps.box_size <= 0:
                ps.box_size = stack.box_size
            if stack.box_size != ps.box_size:
                raise InputError(path, "image size (nx, ny)",
                                 f"{ps.box_size} x {ps.box_size} as in {meta_path}",
                                 got=f"{stack.box_size} x {stack.box_size}")
            used = ps.image_index[ps.stack_index == k]
            if used.size and used.max() >= stack.n_images:
                raise InputError(
                    meta_path, image_field,
                    f"image numbers within the {stack.n_images} images of {path}",
                    got=f"image {int(used.max()) + 1} (1-based)",
                )
            header = stack.pixel_size_angstrom
            if not header_pixel_size_is_informative(header):
                continue
            if not ps.pixel_size_angstrom > 0:
                ps.pixel_size_angstrom = float(header)
            elif abs(header - ps.pixel_size_angstrom) > PIXEL_SIZE_RTOL * ps.pixel_size_angstrom:
                raise InputError(
                    path, "pixel size (MRC header voxel size)",
                    f"{ps.pixel_size_angstrom:g} Å as {pixel_field or 'given'} in {meta_path}",
                    got=f"{header:g} Å",
                )
    return ps


def _load_stack_only(path: Path, pixel_size: float | None) -> ParticleSet:
    with open_stack(path) as stack:
        n, d, header = stack.n_images, stack.box_size, stack.pixel_size_angstrom
    apix = pixel_size if pixel_size is not None else (header or 0.0)
    return ParticleSet(image_stacks=[path], stack_index=np.zeros(n, dtype=np.int64),
                       image_index=np.arange(n), box_size=d, pixel_size_angstrom=apix,
                       source_path=path)


def load_particles(
    path: str | PathLike,
    *,
    stack: str | PathLike | None = None,
    poses: str | PathLike | None = None,
    ctf: str | PathLike | None = None,
    index: str | PathLike | None = None,
    pixel_size_angstrom: float | None = None,
    datadir: str | PathLike | None = None,
    require_poses: bool = False,
    require_ctf: bool = False,
) -> ParticleSet:
    """Load particle metadata from RELION, cryoSPARC or cryoDRGN inputs.

    Parameters
    ----------
    path
        ``.star`` (RELION 3.0, or 3.1/4/5 with ``data_optics``), ``.cs``
        (cryoSPARC) or ``.mrcs``/``.mrc`` (a stack, with cryoDRGN pickles).
    stack
        Use this stack instead of the images the metadata names; image ``i``
        belongs to particle ``i`` (e.g. a downsampled copy).
    poses, ctf
        cryoDRGN pose / CTF pickles; they replace poses / CTF from ``path``.
    index
        cryoDRGN index pickle: keep only these particles (ids are kept).
    pixel_size_angstrom
        Pixel size to use when the metadata has none (or to override it).
    datadir
        Folder that relative stack paths are relative to (default: the
        metadata file's folder).
    require_poses, require_ctf
        Raise :class:`InputError` if poses / CTF are missing.

    Returns
    -------
    ParticleSet
        Validated against the stack headers (existence, size, image count,
        pixel size).
    """
    from cryoviz.io import cryodrgn, cryosparc, star  # noqa: PLC0415 - avoid import cycles

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file", "an existing particle file", got="no such file")
    base = Path(datadir) if datadir is not None else path.parent
    suffix = path.suffix.lower()
    image_field, pixel_field = "image", None
    pose_field, ctf_field = "poses (a cryoDRGN pose pickle)", "CTF (a cryoDRGN CTF pickle)"
    if suffix == ".star":
        ps = star.read_star_particles(path, base, pixel_size_angstrom=pixel_size_angstrom)
        image_field, pixel_field = "rlnImageName", "rlnImagePixelSize"
        pose_field = "rlnAngleRot, rlnAngleTilt, rlnAnglePsi"
        ctf_field = star.CTF_FIELDS_TEXT
    elif suffix == ".cs":
        ps = cryosparc.read_cs_particles(path, base, pixel_size_angstrom=pixel_size_angstrom)
        image_field, pixel_field = "blob/idx", "blob/psize_A"
        pose_field, ctf_field = "alignments3D/pose", cryosparc.CTF_FIELDS_TEXT
    elif suffix in (".mrcs", ".mrc"):
        ps = _load_stack_only(path, pixel_size_angstrom)
    else:
        raise InputError(path, "file type", "a .star, .cs, .mrcs or .mrc file", got=suffix)

    if stack is not None:
        stack = Path(stack)
        ps.image_stacks = [stack]
        ps.stack_index = np.zeros(len(ps), dtype=np.int64)
        ps.image_index = np.arange(len(ps), dtype=np.int64)
        with open_stack(stack) as s:
            if s.n_images != len(ps):
                raise InputError(stack, "number of images", f"{len(ps)} (one per particle in "
                                 f"{path})", got=s.n_images)
            ps.box_size = s.box_size
        image_field = f"particles (one per image of {stack})"
    if ctf is not None:
        arr = cryodrgn.read_ctf_pkl(ctf)
        if arr.shape[0] != len(ps):
            raise InputError(ctf, "CTF array", f"{len(ps)} rows (one per particle)", arr.shape[0])
        ps.ctf = cryodrgn.ctf_params_from_array(arr)
        if pixel_size_angstrom is None and suffix in (".mrcs", ".mrc"):
            ps.pixel_size_angstrom = float(arr[0, 1])
        pixel_field = pixel_field or "Apix (CTF pickle)"
    if pixel_size_angstrom is not None:
        ps.pixel_size_angstrom = float(pixel_size_angstrom)
    check_stacks(ps, path, image_field, pixel_field)
    if not ps.pixel_size_angstrom > 0:
        raise InputError(path, "pixel size", "a pixel size in the metadata, the MRC header "
                         "(not 0 or 1.0) or pixel_size_angstrom=")
    if poses is not None:
        from cryoviz.io.conventions import cryodrgn_to_internal  # noqa: PLC0415

        rot, trans = cryodrgn.read_pose_pkl(poses)
        if rot.shape[0] != len(ps):
            raise InputError(poses, "rot", f"{len(ps)} poses (one per particle)", rot.shape[0])
        ps.rotations, ps.shifts_angstrom = cryodrgn_to_internal(
            rot, trans, ps.box_size, ps.pixel_size_angstrom)
    if index is not None:
        keep = cryodrgn.read_index_pkl(index)
        if keep.size and keep.max() >= len(ps):
            raise InputError(index, "index array", f"indices < {len(ps)}", int(keep.max()))
        ps = ps.subset(keep)
    if require_poses and ps.rotations is None:
        raise InputError(path, pose_field, "pose columns (poses are required)", got="missing")
    if require_ctf and ps.ctf is None:
        raise InputError(path, ctf_field, "CTF columns (CTF is required)", got="missing")
    ps.validate()
    return ps


def _relpath(target: Path, start: Path) -> str:
    """``target`` relative to ``start`` where possible (POSIX separators), else absolute."""
    try:
        return Path(os.path.relpath(Path(target).resolve(), Path(start).resolve())).as_posix()
    except ValueError:  # different drives
        return Path(target).resolve().as_posix()
