"""Volume models: maps of a (possibly heterogeneous) particle as functions of a latent ``z``.

Every model follows :class:`~cryoviz.volumes.base.VolumeModel`: it renders the
centred half transforms of projections for given rotations (the training loop
applies shifts and CTF with :func:`cryoviz.imaging.apply_shift_and_ctf`) and
real-space maps in the data's normalisation.
"""

from cryoviz.volumes.base import VolumeModel, resample_volume
from cryoviz.volumes.deformation import DeformationVolume
from cryoviz.volumes.gmm import GaussianMixtureVolume
from cryoviz.volumes.implicit import ImplicitVolume
from cryoviz.volumes.voxel import VoxelVolume

__all__ = [
    "VolumeModel",
    "VoxelVolume",
    "ImplicitVolume",
    "GaussianMixtureVolume",
    "DeformationVolume",
    "resample_volume",
]
