"""Direct Fourier reconstruction with known poses: weighted backprojection + Wiener filter.

Each image is zero-padded to ``Dp = pad_factor * D``, centred by its shift,
multiplied by its CTF and inserted (trilinear) into a ``Dp^3`` Fourier
volume; ``CTF^2`` goes into a weight volume with the same interpolation. The
map is ``V(k) = sum CTF X / (sum CTF^2 + lambda(|k|))`` with a per-shell
regulariser ``lambda`` from the gold-standard FSC of two independent halves
(``lambda = mean weight / (pad^3 SSNR)``, RELION's ``sigma^2 / tau^2`` with its
oversampling correction).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from cryoviz.ctf import CTFParams, compute_ctf_2d
from cryoviz.fourier import (
    centered_ifft3,
    centered_rfft2,
    crop_center,
    frequency_grid_3d,
    hermitian_mirror,
    pad_center,
    phase_shift,
)
from cryoviz.imaging import gridding_correction
from cryoviz.metrics.fsc import FSCCurve, fsc
from cryoviz.projection import insert_slices

__all__ = [
    "FourierAccumulator",
    "add_to_half_sets",
    "ssnr_from_fsc",
    "wiener_regularizer",
    "gold_standard_maps",
]


@dataclass
class FourierAccumulator:
    """Running sums ``sum CTF X`` and ``sum CTF^2`` on a padded Fourier grid.

    Parameters
    ----------
    box_size
        Image box ``D``.
    pad_factor
        Padding of the Fourier grid (``Dp = round(pad_factor * D)``).
    device
        Where the sums live.
    """

    box_size: int
    pad_factor: float = 2.0
    device: torch.device | str = "cpu"
    data: torch.Tensor = field(init=False, repr=False)
    weight: torch.Tensor = field(init=False, repr=False)
    count: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        size = self.padded_size
        self.data = torch.zeros((size,) * 3, dtype=torch.complex128, device=self.device)
        self.weight = torch.zeros((size,) * 3, dtype=torch.float64, device=self.device)

    @property
    def padded_size(self) -> int:
        """``Dp``."""
        return int(round(self.pad_factor * self.box_size))

    def add(
        self,
        images: torch.Tensor,
        rotations: torch.Tensor,
        pixel_size_angstrom: float,
        shifts_angstrom: torch.Tensor | None = None,
        ctf: CTFParams | None = None,
        particle_weights: torch.Tensor | None = None,
        max_frequency: float = 0.5,
        image_rows: torch.Tensor | None = None,
    ) -> None:
        """Insert a batch.

        Parameters
        ----------
        images
            ``(B, D, D)`` real images.
        rotations
            ``(M, 3, 3)`` particle -> lab, one per inserted slice (``M = B`` unless
            ``image_rows`` is given).
        pixel_size_angstrom
            Pixel size in Å.
        shifts_angstrom
            ``(M, 2)`` particle displacements in Å (undone before insertion).
        ctf
            CTF of the ``B`` images (``None``: no CTF, weight 1).
        particle_weights
            ``(M,)`` non-negative weights (e.g. pose or class posteriors in EM):
            slice ``j`` adds ``w_j CTF X`` and ``w_j CTF^2``.
        max_frequency
            Insert only frequencies up to this (cycles / pixel of the images; 0.5:
            Nyquist). A search at limited resolution backprojects only what it used.
        image_rows
            ``(M,)`` index into ``images`` of each slice: an image inserted at
            several poses (exact EM) is transformed and its CTF computed once.
            ``None``: slice ``j`` is image ``j``.
        """
        size = self.padded_size
        imgs = images.to(self.device, torch.float32)
        ft = centered_rfft2(pad_center(imgs, size, ndim=2))
        if ctf is not None:
            values = compute_ctf_2d(
                ctf, size, pixel_size_angstrom, rfft=True, dtype=torch.float32,
                device=self.device,
            )
        else:
            values = torch.ones(ft.shape[-2:], dtype=torch.float32, device=self.device)
        if image_rows is not None:
            rows = image_rows.to(self.device)
            ft = ft[rows]
            values = values[rows] if values.ndim == 3 else values
        if shifts_angstrom is not None:
            shifts_px = shifts_angstrom.to(self.device, torch.float32) / pixel_size_angstrom
            ft = phase_shift(ft, -shifts_px, size, rfft=True)
        values = values.expand(ft.shape)
        weights = values**2
        if particle_weights is not None:
            pw = particle_weights.to(self.device, torch.float32).reshape(-1, 1, 1)
            values = values * pw
            weights = weights * pw
        ft = ft * values
        insert_slices(
            ft, rotations.to(self.device, torch.float32), size, weights=weights,
            rfft=True, max_frequency=max_frequency, volume_ft=self.data, weight_volume=self.weight,
        )
        self.count += int(ft.shape[0])

    def merged(self, other: FourierAccumulator) -> FourierAccumulator:
        """A new accumulator holding the sums of both."""
        out = FourierAccumulator(self.box_size, self.pad_factor, self.device)
        out.data = self.data + other.data
        out.weight = self.weight + other.weight
        out.count = self.count + other.count
        return out

    def symmetrized(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Data and weight completed by Hermitian symmetry (half planes were inserted)."""
        data = self.data + torch.conj(hermitian_mirror(self.data))
        weight = self.weight + hermitian_mirror(self.weight)
        return data, weight

    def shell_radius(self) -> torch.Tensor:
        """``|k| * D`` (shells of the *unpadded* box) of every padded-grid voxel."""
        kz, ky, kx = frequency_grid_3d(self.padded_size, device=self.device, dtype=torch.float64)
        return torch.sqrt(kz**2 + ky**2 + kx**2) * self.box_size

    def reconstruct(
        self, regularizer: torch.Tensor | float | None = None, relative_floor: float = 1e-3
    ) -> torch.Tensor:
        """The map ``(D, D, D)`` from the sums.

        Parameters
        ----------
        regularizer
            ``lambda`` added to the weights: a ``(D // 2 + 1,)`` tensor per shell of
            the unpadded box (interpolated linearly between shells), a scalar, or
            ``None`` for ``relative_floor * max(weight)`` only.
        relative_floor
            Always add at least this fraction of the largest weight (avoids
            division by zero where no data fell).

        Returns
        -------
        torch.Tensor
            ``(D, D, D)`` float32 real map, divided by the trilinear kernel's
            real-space transform (gridding correction).
        """
        data, weight = self.symmetrized()
        lam = torch.full_like(weight, relative_floor * float(weight.max().clamp(min=1e-30)))
        if isinstance(regularizer, torch.Tensor):
            reg = regularizer.to(self.device, torch.float64)
            radius = self.shell_radius().clamp(max=reg.numel() - 1)
            lower = radius.floor().long()
            upper = (lower + 1).clamp(max=reg.numel() - 1)
            frac = radius - lower
            lam = lam + (1 - frac) * reg[lower] + frac * reg[upper]
        elif regularizer is not None:
            lam = lam + float(regularizer)
        volume_ft = data / (weight + lam)
        radius = self.shell_radius() / self.box_size
        volume_ft = volume_ft * (radius <= 0.5)
        padded = centered_ifft3(volume_ft).real
        volume = crop_center(padded, self.box_size, ndim=3)
        volume = volume / gridding_correction(
            self.box_size, self.padded_size, torch.float64, self.device
        )
        return volume.to(torch.float32)

    def mean_weight_per_shell(self) -> torch.Tensor:
        """Mean symmetrized weight in each shell of the unpadded box, ``(D // 2 + 1,)``."""
        _, weight = self.symmetrized()
        n_shells = self.box_size // 2 + 1
        shells = torch.round(self.shell_radius()).long().reshape(-1)
        keep = shells < n_shells
        total = torch.zeros(n_shells, dtype=torch.float64, device=self.device)
        count = torch.zeros(n_shells, dtype=torch.float64, device=self.device)
        total.index_add_(0, shells[keep], weight.reshape(-1)[keep])
        count.index_add_(0, shells[keep], torch.ones_like(total[shells[keep]]))
        return total / count.clamp(min=1)


def add_to_half_sets(
    accumulators: Sequence[FourierAccumulator],
    images: torch.Tensor,
    index: np.ndarray,
    half_labels: np.ndarray,
    rotations: torch.Tensor,
    pixel_size_angstrom: float,
    shifts_angstrom: torch.Tensor | None = None,
    ctf: CTFParams | None = None,
) -> None:
    """Insert a batch of particles, each into the accumulator of its half set.

    Parameters
    ----------
    accumulators
        Two accumulators, half set 0 and half set 1.
    images
        ``(B, D, D)`` real images of the particles ``index``.
    index
        ``(B,)`` particle indices of the batch (rows of the whole set).
    half_labels
        ``(N,)`` half-set label (0 or 1) of every particle of the whole set.
    rotations
        ``(N, 3, 3)`` particle -> lab rotations of the whole set.
    pixel_size_angstrom
        Pixel size of ``images`` in Å.
    shifts_angstrom
        ``(N, 2)`` displacements in Å of the whole set, or ``None``.
    ctf
        CTF of the whole set (``N`` particles), or ``None``.
    """
    for h, accumulator in enumerate(accumulators):
        local = np.flatnonzero(half_labels[index] == h)
        if len(local) == 0:
            continue
        sel = torch.as_tensor(index[local])
        accumulator.add(
            images[torch.as_tensor(local)], rotations[sel], pixel_size_angstrom,
            None if shifts_angstrom is None else shifts_angstrom[sel],
            None if ctf is None else ctf.subset(sel),
        )


def ssnr_from_fsc(half_fsc: torch.Tensor, floor: float = 1e-3) -> torch.Tensor:
    """Spectral SNR of the *full* map from the half-map FSC (``2 FSC / (1 - FSC)``)."""
    fsc = half_fsc.to(torch.float64).clamp(min=0.0, max=0.999)
    return (2.0 * fsc / (1.0 - fsc)).clamp(min=floor)


def wiener_regularizer(
    mean_weight: torch.Tensor, half_fsc: torch.Tensor, pad_factor: float = 2.0
) -> torch.Tensor:
    """Per-shell ``lambda = mean weight / (pad_factor^3 SSNR)`` (``(D // 2 + 1,)``).

    ``pad_factor^3`` is RELION's oversampling correction: the weights live on the
    padded grid, whose voxels oversample the map's transform ``pad_factor^3`` times.
    """
    return mean_weight.to(torch.float64) / (float(pad_factor) ** 3 * ssnr_from_fsc(half_fsc))


def gold_standard_maps(
    halves: tuple[FourierAccumulator, FourierAccumulator] | list[FourierAccumulator],
) -> tuple[torch.Tensor, torch.Tensor, FSCCurve]:
    """Wiener-regularised full map and half maps from the sums of two half sets.

    The half maps are first reconstructed with the weight floor only; their FSC
    gives the per-shell regulariser of the full map (SSNR of the full set) and of
    each half map (half the full set's SSNR, so twice the regulariser).

    Returns
    -------
    full_map, half_maps, half_fsc
        ``(D, D, D)``, ``(2, D, D, D)`` float32 maps and the FSC of the final half maps.
    """
    first, second = halves
    raw = torch.stack([first.reconstruct(), second.reconstruct()])
    curve = torch.as_tensor(fsc(raw[0], raw[1]).fsc, dtype=torch.float64)
    half_weight = [first.mean_weight_per_shell(), second.mean_weight_per_shell()]
    # shell means are linear in the sums: the full set's is the halves' sum
    full = first.merged(second).reconstruct(
        wiener_regularizer(half_weight[0] + half_weight[1], curve)
    )
    half_maps = torch.stack([
        acc.reconstruct(2.0 * wiener_regularizer(weight, curve))
        for acc, weight in zip((first, second), half_weight, strict=True)
    ])
    return full, half_maps, fsc(half_maps[0], half_maps[1])
