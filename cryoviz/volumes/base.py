"""The protocol every volume model follows."""

from __future__ import annotations

import torch

from cryoviz.fourier import centered_fft3, centered_ifft3, crop_center, pad_center

__all__ = ["VolumeModel", "resample_volume"]


class VolumeModel(torch.nn.Module):
    """A map (or a family of maps indexed by a latent ``z``) that renders projections.

    Attributes
    ----------
    latent_dim
        Length ``L`` of ``z``; 0 for a homogeneous model (``z`` is then ``None``).
    box_size
        Box ``D`` of the data the model was built for.
    pixel_size_angstrom
        Pixel size of that data in Å.
    """

    latent_dim: int = 0
    box_size: int
    pixel_size_angstrom: float

    def slices(
        self,
        rotations: torch.Tensor,
        z: torch.Tensor | None,
        box_size: int,
        pixel_size_angstrom: float,
    ) -> torch.Tensor:
        """Centred half transforms of the projections (no CTF, no shift).

        Parameters
        ----------
        rotations
            ``(B, 3, 3)`` particle -> lab rotations.
        z
            ``(B, L)`` latents, or ``None`` for homogeneous models.
        box_size
            Image box ``D``.
        pixel_size_angstrom
            Image pixel size in Å.

        Returns
        -------
        torch.Tensor
            ``(B, D, D // 2 + 1)`` complex.
        """
        raise NotImplementedError

    def volume(
        self, z: torch.Tensor | None, box_size: int | None = None,
        pixel_size_angstrom: float | None = None,
    ) -> torch.Tensor:
        """Real-space map ``(D, D, D)`` for latent ``z`` ``(L,)`` (or ``None``).

        ``box_size`` / ``pixel_size_angstrom`` default to the model's own; a
        different box covers the same physical extent (Fourier crop / pad).
        """
        raise NotImplementedError

    def regularization_loss(self, z: torch.Tensor | None) -> torch.Tensor:
        """The model's weighted regulariser at latents ``z`` ``(B, L)``, a scalar.

        Added to the data term by the training loop; 0 unless a model defines
        one (deformation smoothness / rigidity, Gaussian-mixture bonds).
        """
        param = next(iter(self.parameters()), None)
        return torch.zeros((), device=None if param is None else param.device)


def resample_volume(volume: torch.Tensor, box_size: int) -> torch.Tensor:
    """Fourier crop / zero-pad a real ``(D, D, D)`` map to ``(d, d, d)`` (same extent).

    Voxel values are preserved (the transform is scaled by ``(d / D)^3``), so the
    voxel size becomes ``pixel_size * D / d``.
    """
    box = int(volume.shape[-1])
    if box_size == box:
        return volume
    ft = centered_fft3(volume)
    if box_size < box:
        ft = crop_center(ft, box_size, ndim=3)
    else:
        ft = pad_center(ft, box_size, ndim=3)
    return centered_ifft3(ft).real * (box_size / box) ** 3
