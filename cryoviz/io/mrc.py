"""MRC volumes and image stacks: memory-mapped reading, atomic writing.

Array order follows ``mrcfile`` (and docs/CONVENTIONS.md): volumes ``[z, y, x]``,
stacks ``[image, y, x]``.

Pixel size in the header
------------------------
A header voxel size of ``0`` means *unset* (:attr:`MRCStack.pixel_size_angstrom`
is then ``None``). Many writers leave the default ``1.0``; that value is
returned as it is, but cross-checks against STAR / .cs metadata ignore it
(see :func:`header_pixel_size_is_informative`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from os import PathLike
from pathlib import Path

import mrcfile
import numpy as np

from cryoviz.errors import InputError

__all__ = [
    "read_volume",
    "read_volume_on_grid",
    "write_volume",
    "open_stack",
    "MRCStack",
    "StackWriter",
    "write_stack",
    "atomic_output",
    "header_pixel_size_is_informative",
]


@contextlib.contextmanager
def atomic_output(path: str | PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` on success.

    The temporary file lives in the same folder so that :func:`os.replace` is an
    atomic rename. On an exception the temporary file is removed and ``path``
    is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def header_pixel_size_is_informative(value: float | None) -> bool:
    """False for header pixel sizes that mean "unset" (``None``/0) or the common default 1.0."""
    return value is not None and value > 0 and abs(value - 1.0) > 1e-6


def _open_mmap(path: str | PathLike):
    """Open an MRC file read-only and memory-mapped, turning failures into InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file", "an existing MRC file", got="no such file")
    try:
        return mrcfile.mmap(path, mode="r")
    except ValueError as err:
        if "Map ID" in str(err) or "not an MRC" in str(err):
            raise InputError(
                path, "header (MAP ID)", "an MRC file with 'MAP ' at byte 208", got=str(err)
            ) from None
        expected = _expected_size(path)
        if expected is not None and path.stat().st_size < expected:
            raise InputError(
                path,
                "data block (file size)",
                f"{expected} bytes as the header (nx, ny, nz, mode) says",
                got=f"{path.stat().st_size} bytes (truncated file)",
            ) from None
        raise InputError(path, "header", "a valid MRC header", got=str(err)) from None


def _expected_size(path: Path) -> int | None:
    """File size implied by the header, or None if the header cannot be parsed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, mode="r", header_only=True, permissive=True) as mrc:
                h = mrc.header
                dtype = mrcfile.utils.data_dtype_from_header(h)
                n = int(h.nx) * int(h.ny) * int(h.nz)
                return 1024 + int(h.nsymbt) + n * dtype.itemsize
    except Exception:  # noqa: BLE001 - any parse failure means "unknown"
        return None


def _update_stats(mrc) -> None:
    """Header min/max/mean/rms, quietly (NaN/inf are reported when images are read)."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        mrc.update_header_stats()


def _voxel_size(mrc) -> float | None:
    """Header voxel size along x in Å; None if unset (0)."""
    value = float(mrc.voxel_size.x)
    return value if value > 0 else None


def read_volume(path: str | PathLike) -> tuple[np.ndarray, float | None]:
    """Read a cubic volume.

    Returns
    -------
    volume
        ``(D, D, D)`` float32 array indexed ``[z, y, x]`` (a copy, not a memmap).
    voxel_size_angstrom
        Header voxel size in Å, or None if the header leaves it at 0.
    """
    with _open_mmap(path) as mrc:
        data = mrc.data
        if data.ndim != 3 or len(set(data.shape)) != 1:
            raise InputError(path, "dimensions (nz, ny, nx)", "a cubic 3-D volume", got=data.shape)
        volume = np.array(data, dtype=np.float32)
        apix = _voxel_size(mrc)
    if not np.isfinite(volume).all():
        raise InputError(path, "voxel values", "finite numbers", got="NaN or inf")
    return volume, apix


def read_volume_on_grid(path: str | PathLike, box_size: int, voxel_size_angstrom: float,
                        whose: str = "") -> np.ndarray:
    """A volume that must lie on a given grid (e.g. the particles'): box and voxel size checked.

    Parameters
    ----------
    path
        The MRC file.
    box_size, voxel_size_angstrom
        The grid; a header without a voxel size is accepted.
    whose
        Named in the error after the expected value, e.g. ``"the particles'"``.

    Returns
    -------
    np.ndarray
        ``(D, D, D)`` float32, as :func:`read_volume`.

    Raises
    ------
    InputError
        Naming ``path``: another box or another voxel size (relative tolerance 1e-3).
    """
    suffix = f" ({whose})" if whose else ""
    volume, voxel = read_volume(path)
    if tuple(volume.shape) != (box_size,) * 3:
        raise InputError(path, "box size", f"{box_size}^3 voxels{suffix}",
                         got="x".join(str(n) for n in volume.shape))
    if voxel is not None and abs(voxel - voxel_size_angstrom) > 1e-3 * voxel_size_angstrom:
        raise InputError(path, "voxel size", f"{voxel_size_angstrom:g} Å{suffix}",
                         got=f"{voxel:g} Å")
    return volume


def write_volume(path: str | PathLike, volume: np.ndarray, voxel_size_angstrom: float) -> None:
    """Write a ``(D, D, D)`` volume as float32 MRC (atomic; origin 0, voxel size set)."""
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3-D, got shape {volume.shape}")
    with atomic_output(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(volume)
            mrc.voxel_size = float(voxel_size_angstrom)
            mrc.header.origin = (0.0, 0.0, 0.0)
            mrc.header.nxstart = mrc.header.nystart = mrc.header.nzstart = 0
            _update_stats(mrc)


class MRCStack:
    """A memory-mapped stack of square images; only the images asked for are read.

    Attributes
    ----------
    path
        The file.
    n_images
        Number of images ``N`` (a single 2-D image counts as a stack of one).
    box_size
        Image side ``D`` in pixels.
    pixel_size_angstrom
        Header pixel size in Å, or None if unset (0).
    """

    def __init__(self, path: str | PathLike) -> None:
        self.path = Path(path)
        self._mrc = _open_mmap(self.path)
        data = self._mrc.data
        if data.ndim == 2:
            data = data[None]
        if data.ndim != 3:
            self._mrc.close()
            raise InputError(self.path, "dimensions", "a stack of 2-D images", got=data.shape)
        if data.shape[1] != data.shape[2]:
            self._mrc.close()
            raise InputError(
                self.path, "image dimensions (nx, ny)", "square images (nx == ny)",
                got=f"nx={data.shape[2]}, ny={data.shape[1]}",
            )
        self._data = data
        self.n_images = int(data.shape[0])
        self.box_size = int(data.shape[1])
        self.pixel_size_angstrom = _voxel_size(self._mrc)

    def read(self, index: np.ndarray | list[int] | int) -> np.ndarray:
        """Read images ``index`` (0-based) as a ``(B, D, D)`` float32 array.

        Only the requested images are touched (fancy indexing on the memmap,
        done in sorted order and put back in the order asked for).
        """
        index = np.atleast_1d(np.asarray(index, dtype=np.int64))
        if index.size and (index.min() < 0 or index.max() >= self.n_images):
            bad = index[(index < 0) | (index >= self.n_images)][0]
            raise InputError(
                self.path, "image index", f"0 <= index < {self.n_images} (images in the stack)",
                got=int(bad),
            )
        order = np.argsort(index, kind="stable")
        out = np.empty((index.size, self.box_size, self.box_size), dtype=np.float32)
        out[order] = self._data[index[order]]
        return out

    def close(self) -> None:
        """Release the memory map."""
        self._data = None
        self._mrc.close()

    def __enter__(self) -> MRCStack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self.n_images


def open_stack(path: str | PathLike) -> MRCStack:
    """Open an image stack memory-mapped (read-only). See :class:`MRCStack`."""
    return MRCStack(path)


class StackWriter:
    """Write a stack of ``n_images`` images incrementally, then rename into place.

    The file is preallocated with :func:`mrcfile.new_mmap` under a temporary
    name in the destination folder; :meth:`write` fills consecutive images;
    on a clean exit with all images written the file is renamed onto ``path``,
    otherwise it is deleted.

    Examples
    --------
    >>> with StackWriter("out.mrcs", 64, 1.2, n_images=1000) as w:  # doctest: +SKIP
    ...     for batch in batches:
    ...         w.write(batch)
    """

    def __init__(
        self, path: str | PathLike, box_size: int, pixel_size_angstrom: float, n_images: int
    ) -> None:
        self.path = Path(path)
        self.box_size = int(box_size)
        self.pixel_size_angstrom = float(pixel_size_angstrom)
        self.n_images = int(n_images)
        self.n_written = 0
        self._ctx = None
        self._mrc = None

    def __enter__(self) -> StackWriter:
        self._ctx = atomic_output(self.path)
        tmp = self._ctx.__enter__()
        shape = (self.n_images, self.box_size, self.box_size)
        self._mrc = mrcfile.new_mmap(tmp, shape=shape, mrc_mode=2, overwrite=True)
        self._mrc.set_image_stack()
        self._mrc.voxel_size = self.pixel_size_angstrom
        self._mrc.header.origin = (0.0, 0.0, 0.0)
        return self

    def write(self, images: np.ndarray) -> None:
        """Append ``(B, D, D)`` images (or one ``(D, D)`` image)."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 2:
            images = images[None]
        if images.shape[1:] != (self.box_size, self.box_size):
            d = self.box_size
            raise ValueError(f"images must be (B, {d}, {d}), got {images.shape}")
        end = self.n_written + images.shape[0]
        if end > self.n_images:
            raise ValueError(f"writing image {end} but the stack was created for {self.n_images}")
        self._mrc.data[self.n_written : end] = images
        self.n_written = end

    def __exit__(self, exc_type, exc, tb) -> None:
        ok = exc_type is None and self.n_written == self.n_images
        try:
            if ok:
                _update_stats(self._mrc)
                self._mrc.flush()
            self._mrc.close()
        finally:
            if ok:
                self._ctx.__exit__(None, None, None)
            else:
                err = exc or ValueError(
                    f"{self.path}: only {self.n_written} of {self.n_images} images were written"
                )
                with contextlib.suppress(type(err)):
                    self._ctx.__exit__(type(err), err, tb)
                if exc_type is None:
                    raise err


def write_stack(path: str | PathLike, images: np.ndarray, pixel_size_angstrom: float) -> None:
    """Write ``(N, D, D)`` images as a float32 MRC stack (atomic)."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 2:
        images = images[None]
    with StackWriter(path, images.shape[-1], pixel_size_angstrom, images.shape[0]) as writer:
        writer.write(images)
