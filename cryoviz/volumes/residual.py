"""Reference-based volumes ``V(z) = V0 + dV(z)``: a fixed map plus a learned change.

``V0`` is a given map (from an atomic model or an MRC file,
:func:`load_reference_map`), scaled to the data by one least-squares factor
(:func:`fit_reference_scale`, set by the trainer); ``dV`` is any
:class:`~cryoviz.volumes.base.VolumeModel` (in the recipes an
:class:`~cryoviz.volumes.ImplicitVolume` that starts near zero), so a
heterogeneous model only has to learn how each particle departs from the
reference. Slices of ``V0`` come from its padded, gridding-corrected transform,
computed once and cached (the forward model's slicing, as for
:class:`~cryoviz.volumes.VoxelVolume`).
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import torch

from cryoviz.errors import InputError
from cryoviz.imaging import volume_to_fourier
from cryoviz.projection import extract_slices
from cryoviz.volumes.base import VolumeModel, resample_volume

__all__ = ["ReferenceResidualVolume", "load_reference_map", "fit_reference_scale"]


class ReferenceResidualVolume(VolumeModel):
    """``V(z) = s V0 + dV(z)`` with a fixed reference ``V0`` and a learned ``dV``.

    Parameters
    ----------
    reference_map
        ``(D, D, D)`` real map ``V0`` at the box and voxel size of ``delta``.
    delta
        The learned change (its ``box_size``, ``pixel_size_angstrom`` and
        ``latent_dim`` are this model's).
    pad_factor
        Padding of the reference's transform used for slicing.

    Notes
    -----
    ``reference_map`` and the buffer ``reference_scale`` ``s`` are saved with the
    model, so a checkpoint holds the whole ``V(z)``.
    """

    def __init__(self, reference_map: torch.Tensor, delta: VolumeModel,
                 pad_factor: float = 2.0) -> None:
        super().__init__()
        self.delta = delta
        self.box_size = int(delta.box_size)
        self.pixel_size_angstrom = float(delta.pixel_size_angstrom)
        self.latent_dim = int(delta.latent_dim)
        self.pad_factor = float(pad_factor)
        ref = torch.as_tensor(reference_map, dtype=torch.float32)
        if tuple(ref.shape) != (self.box_size,) * 3:
            raise ValueError(f"reference map must be {(self.box_size,) * 3}, "
                             f"got {tuple(ref.shape)}")
        self.register_buffer("reference_map", ref.clone())
        self.register_buffer("reference_scale", torch.ones(()))
        self._ft_key: tuple | None = None
        self._ft: torch.Tensor | None = None

    def reference_transform(self) -> torch.Tensor:
        """The padded transform of ``s V0`` (cached until the scale or device changes)."""
        key = (float(self.reference_scale), str(self.reference_map.device))
        if self._ft is None or self._ft_key != key:
            with torch.no_grad():
                self._ft = volume_to_fourier(self.reference_map * self.reference_scale,
                                             self.pad_factor)
            self._ft_key = key
        return self._ft

    def reference_slices(self, rotations: torch.Tensor, box_size: int) -> torch.Tensor:
        """``(B, D, D // 2 + 1)`` slices of ``s V0`` at ``rotations`` ``(B, 3, 3)``."""
        if box_size != self.box_size:
            raise ValueError(f"the reference has box {self.box_size}, asked for {box_size}")
        return extract_slices(self.reference_transform(), rotations.to(torch.float32),
                              box_size, rfft=True)

    def slices(self, rotations: torch.Tensor, z: torch.Tensor | None, box_size: int,
               pixel_size_angstrom: float) -> torch.Tensor:
        """``(B, D, D // 2 + 1)``: the reference's slices plus ``dV``'s."""
        change = self.delta.slices(rotations, z, box_size, pixel_size_angstrom)
        return self.reference_slices(rotations, box_size).to(change.dtype) + change

    def volume(self, z: torch.Tensor | None = None, box_size: int | None = None,
               pixel_size_angstrom: float | None = None) -> torch.Tensor:
        """Map ``(d, d, d)``: ``s V0`` resampled to ``d`` (same extent) plus ``dV(z)``."""
        box = self.box_size if box_size is None else int(box_size)
        extent = self.box_size * self.pixel_size_angstrom
        other = None if pixel_size_angstrom is None else box * pixel_size_angstrom
        if other is not None and abs(other - extent) > 1e-6 * extent:
            raise ValueError("a reference-based volume renders its own extent only: "
                             f"box x voxel size must be {extent:g} Å")
        change = self.delta.volume(z, box)
        ref = resample_volume(self.reference_map * self.reference_scale, box)
        return ref.to(change.dtype) + change

    def regularization_loss(self, z: torch.Tensor | None) -> torch.Tensor:
        """``dV``'s own regulariser."""
        return self.delta.regularization_loss(z)


def load_reference_map(reference: str | PathLike, box_size: int, pixel_size_angstrom: float,
                       bfactor_a2: float = 20.0) -> torch.Tensor:
    """A reference map ``(D, D, D)`` float32 at the given box and voxel size.

    Parameters
    ----------
    reference
        ``'4ake'`` / ``'1ake'`` (the built-in adenylate kinase in the simulator's
        frame), a PDB / mmCIF file (centred on its coordinate mean, as the
        simulator does), or an MRC map covering the same extent (``box x voxel
        size``; resampled by Fourier cropping / padding when its box differs).
    box_size, pixel_size_angstrom
        The model's box and voxel size.
    bfactor_a2
        B-factor of a map made from atoms, Å^2.
    """
    from cryoviz.gaussians import gaussians_volume, structure_to_gaussians  # noqa: PLC0415
    from cryoviz.structure import adenylate_kinase_pair, read_structure  # noqa: PLC0415

    key = str(reference)
    if key.lower() in ("4ake", "1ake"):
        open_state, closed_state = adenylate_kinase_pair(aligned=True)
        structure = open_state if key.lower() == "4ake" else closed_state
    else:
        path = Path(key)
        if not path.is_file():
            raise InputError(path, "reference",
                             "a PDB / mmCIF / MRC file or a built-in name (4ake, 1ake)",
                             "no such file")
        if path.suffix.lower() in (".mrc", ".map"):
            return _map_file(path, box_size, pixel_size_angstrom)
        structure = read_structure(path).center()
    mixture = structure_to_gaussians(structure, bfactor_a2)
    return gaussians_volume(mixture, box_size, pixel_size_angstrom).float()


def _map_file(path: Path, box_size: int, pixel_size_angstrom: float) -> torch.Tensor:
    from cryoviz.io.mrc import read_volume  # noqa: PLC0415

    data, voxel = read_volume(path)
    extent = box_size * pixel_size_angstrom
    if voxel is None:
        raise InputError(path, "voxel size", f"a voxel size (the map must span {extent:g} Å)",
                         "none in the header")
    if abs(data.shape[0] * voxel - extent) > 1e-3 * extent:
        raise InputError(path, "box x voxel size", f"{extent:g} Å (the particles' extent)",
                         f"{data.shape[0]} x {voxel:g} = {data.shape[0] * voxel:g} Å")
    return resample_volume(torch.as_tensor(data, dtype=torch.float64), box_size).float()


@torch.no_grad()
def fit_reference_scale(volume: ReferenceResidualVolume, targets: torch.Tensor,
                        rotations: torch.Tensor, shifts_angstrom: torch.Tensor | None,
                        ctf, pixel_size_angstrom: float) -> float:
    """Least-squares ``s`` of ``s V0``'s CTF-modulated slices against images with known poses.

    Parameters
    ----------
    volume
        The model (its current ``reference_scale`` is taken into account).
    targets
        ``(B, D, D // 2 + 1)`` centred half transforms of the images.
    rotations, shifts_angstrom, ctf
        Their poses ``(B, 3, 3)``, shifts ``(B, 2)`` Å or None, and
        :class:`cryoviz.ctf.CTFParams` or None.
    pixel_size_angstrom
        The images' pixel size.

    Returns
    -------
    float
        The new ``reference_scale`` (the current one if the reference does not
        correlate with the images).
    """
    from cryoviz.imaging import apply_shift_and_ctf  # noqa: PLC0415

    box = int(targets.shape[-2])
    model = apply_shift_and_ctf(volume.reference_slices(rotations, box), pixel_size_angstrom,
                                shifts_angstrom, ctf).to(torch.complex128)
    data = targets.to(torch.complex128)
    cross = float((model.conj() * data).real.sum())
    power = float((model.abs() ** 2).sum())
    current = float(volume.reference_scale)
    return current * cross / power if cross > 0 and power > 0 else current
