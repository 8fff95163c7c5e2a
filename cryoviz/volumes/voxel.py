"""A homogeneous real-space voxel map."""

from __future__ import annotations

import torch

from cryoviz.imaging import volume_to_fourier
from cryoviz.projection import extract_slices
from cryoviz.volumes.base import VolumeModel, resample_volume

__all__ = ["VoxelVolume"]


class VoxelVolume(VolumeModel):
    """Homogeneous map; the parameter is the real-space ``(D, D, D)`` map.

    Voxel values are ``scale * map`` with a fixed buffer ``scale`` (1 unless the
    trainer sets it from the data, so that the optimiser works on O(1) values).

    Slices are the forward model's: :func:`cryoviz.imaging.volume_to_fourier`
    (padded, gridding-corrected) then :func:`cryoviz.projection.extract_slices`.

    Parameters
    ----------
    box_size
        ``D``.
    pixel_size_angstrom
        Voxel size in Å.
    initial
        Optional ``(D, D, D)`` starting map (default zeros).
    pad_factor
        Padding of the Fourier volume used for slicing.
    """

    def __init__(self, box_size: int, pixel_size_angstrom: float,
                 initial: torch.Tensor | None = None, pad_factor: float = 2.0) -> None:
        super().__init__()
        self.latent_dim = 0
        self.box_size = int(box_size)
        self.pixel_size_angstrom = float(pixel_size_angstrom)
        self.pad_factor = float(pad_factor)
        start = (torch.zeros((self.box_size,) * 3) if initial is None
                 else torch.as_tensor(initial, dtype=torch.float32).clone())
        if start.shape != (self.box_size,) * 3:
            raise ValueError(f"initial map must be {(self.box_size,) * 3}, "
                             f"got {tuple(start.shape)}")
        self.map = torch.nn.Parameter(start)
        # voxel values are ``scale * map`` (the trainer sets it so that ``map`` is O(1))
        self.register_buffer("scale", torch.ones(()))

    def slices(self, rotations: torch.Tensor, z: torch.Tensor | None, box_size: int,
               pixel_size_angstrom: float) -> torch.Tensor:
        """``(B, D, D // 2 + 1)`` transforms of the projections (``z`` is ignored)."""
        if box_size != self.box_size:
            raise ValueError(f"VoxelVolume has box {self.box_size}, asked for {box_size}")
        volume_ft = volume_to_fourier(self.map * self.scale, self.pad_factor)
        return extract_slices(volume_ft, rotations.to(self.map.dtype), box_size, rfft=True)

    def volume(self, z: torch.Tensor | None = None, box_size: int | None = None,
               pixel_size_angstrom: float | None = None) -> torch.Tensor:
        """The map ``(d, d, d)``, Fourier-resampled when ``box_size`` differs from ``D``."""
        box = self.box_size if box_size is None else int(box_size)
        return resample_volume(self.map * self.scale, box)
