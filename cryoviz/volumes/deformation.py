"""A canonical voxel map deformed by a learned displacement field of ``z`` (3DFlex-style).

Model (after 3D Flexible Refinement, Punjani & Fleet 2023)::

    V_i(x) = V_c(x + u(x; z_i))

``V_c`` is a learnable real-space ``(D, D, D)`` canonical map and ``u`` a
displacement field (pixels) produced by an MLP ``z -> u`` on a coarse regular
grid of ``G^3`` control points spanning the box, trilinearly interpolated
between them (3DFlex uses a tetrahedral mesh; a regular control grid gives the
same kind of smooth, low-dimensional flow with simpler interpolation).

Warp
----
A *backward* warp: each point ``x`` of the deformed map looks up the canonical
map at ``x + u(x)`` (``torch.nn.functional.grid_sample``, trilinear, zero
outside the box). It is differentiable in ``V_c`` and ``u``, leaves no holes
(every output point gets a value, unlike pushing canonical voxels forward) and
costs one interpolation per output point. It moves density without the
Jacobian factor ``det(I + grad u)``: mass is conserved to the extent that the
rigidity regulariser keeps the local deformation close to a rotation.

Projection
----------
Real space, warp and rotation fused: the image pixel ``(x, y)`` at depth ``t``
is the lab point ``p = (x, y, t)``, i.e. the particle-frame point ``q = R^T p``;
the deformed map is sampled there (``u`` is evaluated at ``q``, then ``V_c`` at
``q + u(q)``), summed over ``t`` and the 2-D projection is Fourier transformed
(:func:`cryoviz.fourier.centered_rfft2`). Only lab points inside the ball of
radius ``D // 2`` are sampled (a spherical mask, as usual for particles; it
halves the work). This is at most ``D^3`` interpolations per particle, the
same as deforming the map alone, whereas the exact alternative
(deform, pad, 3-D FFT, slice) costs a padded ``(2D)^3`` FFT per particle.
The price is trilinear interpolation on a rotated grid, which attenuates the
highest frequencies a little and depends on the view; at zero deformation the
slices agree with :class:`~cryoviz.volumes.VoxelVolume`'s gridding-corrected
Fourier slices to a correlation above 0.99 for maps sampled well below
Nyquist (tested).

Regularisers (:meth:`DeformationVolume.regularization`), on the control grid
(displacements in pixels, spacing ``h`` pixels):

* smoothness: mean squared discrete Laplacian (second differences, pixels) at
  the interior control points; zero for any affine field, so it does not fight
  rigid motions;
* rigidity: per control-grid cell the deformation gradient
  ``J = I + grad u`` (finite differences averaged over the cell's edges) and
  the penalty ``||J^T J - I||_F^2``, zero exactly when ``x -> x + u(x)`` is
  locally a rotation plus a translation.

Training (the ``3dflex`` recipe) starts the canonical map from the consensus
(:func:`consensus_map`, as 3DFlex starts from a consensus refinement): from a
zero map the displacement field gets no data gradient until a map has formed,
and on the AdK path test the latents had not organised after 6-10 epochs
(|Spearman rho| < 0.05). The regulariser weights must stay small while
the latents are still random (on the AdK path test, weights 0.1 kept the
deformation at zero for 10 epochs; 0.01 let it grow).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from cryoviz.backprojection import FourierAccumulator, gold_standard_maps
from cryoviz.ctf import CTFParams
from cryoviz.fourier import centered_rfft2
from cryoviz.volumes.base import VolumeModel, resample_volume

__all__ = ["DeformationVolume", "consensus_map", "rigidity_penalty", "smoothness_penalty"]


def consensus_map(read_images: Callable[[np.ndarray], torch.Tensor], n_images: int,
                  rotations: torch.Tensor, pixel_size_angstrom: float,
                  shifts_angstrom: torch.Tensor | None = None, ctf: CTFParams | None = None,
                  batch_size: int = 256) -> torch.Tensor:
    """Wiener-filtered backprojection of all images with known poses, ``(D, D, D)``.

    The starting canonical map of the ``3dflex`` recipe (3DFlex starts from a
    consensus refinement). Even / odd images form the two half sets whose FSC
    sets the Wiener filter (:func:`cryoviz.backprojection.gold_standard_maps`).

    Parameters
    ----------
    read_images
        ``index (B,) -> (B, D, D)`` images (the training images, after any crop).
    n_images
        ``N``.
    rotations, shifts_angstrom, ctf
        ``(N, 3, 3)``, ``(N, 2)`` Å or ``None``, CTF of the ``N`` particles or ``None``.
    pixel_size_angstrom
        Pixel size of the images in Å.
    batch_size
        Images per read.
    """
    accs: list[FourierAccumulator] | None = None
    for start in range(0, n_images, batch_size):
        index = np.arange(start, min(n_images, start + batch_size))
        images = read_images(index)
        if accs is None:
            accs = [FourierAccumulator(int(images.shape[-1]), device=rotations.device)
                    for _ in range(2)]
        for half in (0, 1):
            local = np.flatnonzero(index % 2 == half)
            if len(local) == 0:
                continue
            sel = torch.as_tensor(index[local], device=rotations.device)
            accs[half].add(images[torch.as_tensor(local)], rotations[sel], pixel_size_angstrom,
                           None if shifts_angstrom is None else shifts_angstrom[sel],
                           None if ctf is None else ctf.subset(sel))
    if accs is None:
        raise ValueError("consensus_map needs at least one image")
    full, _, _ = gold_standard_maps(accs)
    return full.to(torch.float32)


def smoothness_penalty(displacements: torch.Tensor) -> torch.Tensor:
    """Mean squared discrete Laplacian of control-point displacements, per field.

    Parameters
    ----------
    displacements
        ``(B, 3, G, G, G)`` displacements in pixels, indexed ``[c, z, y, x]``
        (``G >= 3``).

    Returns
    -------
    torch.Tensor
        ``(B,)`` mean over interior control points of ``|sum_axes (u+ - 2u + u-)|^2``
        (pixels^2).
    """
    u = displacements
    centre = u[:, :, 1:-1, 1:-1, 1:-1]
    lap = (u[:, :, 2:, 1:-1, 1:-1] + u[:, :, :-2, 1:-1, 1:-1]
           + u[:, :, 1:-1, 2:, 1:-1] + u[:, :, 1:-1, :-2, 1:-1]
           + u[:, :, 1:-1, 1:-1, 2:] + u[:, :, 1:-1, 1:-1, :-2] - 6.0 * centre)
    return (lap**2).sum(dim=1).flatten(1).mean(dim=1)


def _cell_gradient(u: torch.Tensor, spacing_px: float) -> torch.Tensor:
    """``(B, G-1, G-1, G-1, 3, 3)`` displacement gradients ``du_a / dx_b`` per cell.

    ``u`` is ``(B, 3, G, G, G)`` with channels ``(ux, uy, uz)`` and grid axes
    ``[z, y, x]``; each derivative is the mean of the cell's four edge
    differences along that axis (exact for affine fields).
    """
    def pair_mean(t: torch.Tensor, dim: int) -> torch.Tensor:
        n = t.shape[dim]
        return 0.5 * (t.narrow(dim, 0, n - 1) + t.narrow(dim, 1, n - 1))

    def along(dim: int) -> torch.Tensor:  # dim of the grid axis (2: z, 3: y, 4: x)
        n = u.shape[dim]
        diff = u.narrow(dim, 1, n - 1) - u.narrow(dim, 0, n - 1)
        for other in (2, 3, 4):
            if other != dim:
                diff = pair_mean(diff, other)
        return diff / spacing_px  # (B, 3, G-1, G-1, G-1)

    # columns b = x, y, z derivatives
    grad = torch.stack([along(4), along(3), along(2)], dim=2)  # (B, 3[a], 3[b], ...)
    return grad.permute(0, 3, 4, 5, 1, 2)


def rigidity_penalty(displacements: torch.Tensor, spacing_px: float) -> torch.Tensor:
    """Mean over cells of ``||J^T J - I||_F^2`` with ``J = I + grad u``, per field.

    Parameters
    ----------
    displacements
        ``(B, 3, G, G, G)`` displacements in pixels (channels ``x, y, z``, grid ``[z, y, x]``).
    spacing_px
        Control-point spacing in pixels.

    Returns
    -------
    torch.Tensor
        ``(B,)`` penalties (0 for a locally rigid map ``x -> x + u(x)``).
    """
    grad = _cell_gradient(displacements, spacing_px)
    eye = torch.eye(3, dtype=grad.dtype, device=grad.device)
    jac = eye + grad
    strain = jac.transpose(-1, -2) @ jac - eye
    return (strain**2).sum(dim=(-2, -1)).flatten(1).mean(dim=1)


class DeformationVolume(VolumeModel):
    """Canonical real-space voxel map and an MLP deformation generator ``z -> u``.

    Voxel values are ``scale * map`` (``scale`` a buffer the trainer sets from
    the data so that ``map`` is O(1), as for :class:`~cryoviz.volumes.VoxelVolume`).

    Parameters
    ----------
    box_size
        ``D``.
    pixel_size_angstrom
        Voxel size in Å.
    latent_dim
        ``L >= 1``.
    initial
        Optional ``(D, D, D)`` canonical map (in units of ``scale``; default zeros).
    control_points
        ``G >= 3`` control points per axis, spanning the box.
    width, depth
        Hidden width and number of hidden layers of the generator MLP.
    displacement_scale_px
        The generator's outputs are multiplied by this (pixels).
    smoothness_weight, rigidity_weight
        Weights of :meth:`regularization_loss`.
    seed
        Seed of the generator's initial weights.
    """

    def __init__(self, box_size: int, pixel_size_angstrom: float, latent_dim: int,
                 initial: torch.Tensor | None = None, control_points: int = 6,
                 width: int = 64, depth: int = 2, displacement_scale_px: float = 1.0,
                 smoothness_weight: float = 0.0, rigidity_weight: float = 0.0,
                 seed: int = 0) -> None:
        super().__init__()
        if latent_dim < 1:
            raise ValueError(f"DeformationVolume needs latent_dim >= 1, got {latent_dim}")
        if control_points < 3:
            raise ValueError(f"control_points must be at least 3, got {control_points}")
        self.latent_dim = int(latent_dim)
        self.box_size = int(box_size)
        self.pixel_size_angstrom = float(pixel_size_angstrom)
        self.control_points = int(control_points)
        self.displacement_scale_px = float(displacement_scale_px)
        self.smoothness_weight = float(smoothness_weight)
        self.rigidity_weight = float(rigidity_weight)
        shape = (self.box_size,) * 3
        start = (torch.zeros(shape) if initial is None
                 else torch.as_tensor(initial, dtype=torch.float32).clone())
        if tuple(start.shape) != shape:
            raise ValueError(f"initial map must be {shape}, got {tuple(start.shape)}")
        self.map = torch.nn.Parameter(start)
        self.register_buffer("scale", torch.ones(()))
        gen = torch.Generator().manual_seed(seed)
        layers: list[torch.nn.Module] = []
        n_in = self.latent_dim
        for _ in range(depth):
            layers += [torch.nn.Linear(n_in, width), torch.nn.ReLU()]
            n_in = width
        head = torch.nn.Linear(n_in, 3 * self.control_points**3)
        self.generator = torch.nn.Sequential(*layers, head)
        with torch.no_grad():
            for layer in self.generator:
                if isinstance(layer, torch.nn.Linear):
                    bound = (6.0 / (layer.in_features + layer.out_features)) ** 0.5
                    layer.weight.uniform_(-bound, bound, generator=gen)
                    layer.bias.zero_()

    # -- geometry -------------------------------------------------------------------------
    @property
    def spacing_px(self) -> float:
        """Control-point spacing in pixels (the grid spans voxel 0 to voxel ``D - 1``)."""
        return (self.box_size - 1) / (self.control_points - 1)

    def displacements(self, z: torch.Tensor) -> torch.Tensor:
        """Control-point displacements ``(B, 3, G, G, G)`` in pixels for ``z`` ``(B, L)``.

        Channels are ``(ux, uy, uz)``; grid axes ``[z, y, x]``.
        """
        g = self.control_points
        out = self.generator(z.to(self.map.dtype))
        return self.displacement_scale_px * out.reshape(-1, 3, g, g, g)

    def _normalised(self, points_px: torch.Tensor) -> torch.Tensor:
        """Pixel positions from the centre ``D // 2`` -> grid_sample coordinates (align_corners)."""
        return (points_px + self.box_size // 2) * (2.0 / (self.box_size - 1)) - 1.0

    def sample(self, points_px: torch.Tensor, displacements: torch.Tensor | None
               ) -> torch.Tensor:
        """Deformed map at points ``(B, ..., 3)`` (xyz pixels from the centre).

        Parameters
        ----------
        points_px
            Positions in the deformed (particle) frame.
        displacements
            ``(B, 3, G, G, G)`` from :meth:`displacements`, or ``None`` (canonical).

        Returns
        -------
        torch.Tensor
            ``(B, ...)`` values ``scale * map(x + u(x))``.
        """
        batch, shape = points_px.shape[0], points_px.shape[1:-1]
        points = points_px.reshape(batch, 1, 1, -1, 3)
        if displacements is not None:
            u = F.grid_sample(displacements, self._normalised(points), mode="bilinear",
                              padding_mode="border", align_corners=True)  # (B, 3, 1, 1, N)
            points = points + u.permute(0, 2, 3, 4, 1)
        # the map is shared: one grid_sample call over all particles' points (its input
        # gradient is then one (D, D, D) map, not one per particle)
        canonical = (self.map * self.scale)[None, None]
        values = F.grid_sample(canonical, self._normalised(points).reshape(1, 1, batch, -1, 3),
                               mode="bilinear", padding_mode="zeros", align_corners=True)
        return values.reshape(batch, *shape)

    def _axis(self, device, dtype) -> torch.Tensor:
        return torch.arange(self.box_size, device=device, dtype=dtype) - self.box_size // 2

    # -- VolumeModel ----------------------------------------------------------------------
    def slices(self, rotations: torch.Tensor, z: torch.Tensor | None, box_size: int,
               pixel_size_angstrom: float) -> torch.Tensor:
        """``(B, D, D // 2 + 1)`` transforms of real-space projections of the deformed maps.

        ``z`` ``(B, L)``, or ``None`` for the canonical map.
        """
        if box_size != self.box_size:
            raise ValueError(f"DeformationVolume has box {self.box_size}, asked for {box_size}")
        dtype, d = self.map.dtype, self.box_size
        rot = rotations.to(dtype)
        a = self._axis(rot.device, dtype)
        t, y, x = torch.meshgrid(a, a, a, indexing="ij")  # lab depth, row, column
        inside = x**2 + y**2 + t**2 <= (d // 2) ** 2  # the ball the map is fitted in
        lab = torch.stack([x, y, t], dim=-1)[inside]  # (P, 3) xyz
        pixel = ((y + d // 2) * d + (x + d // 2))[inside].long()  # (P,) flat [y, x]
        # particle frame q = R^T p: q_j = sum_i R_ij p_i
        points = torch.einsum("bij,pi->bpj", rot, lab)
        u = None if z is None else self.displacements(z)
        values = self.sample(points, u)  # (B, P)
        images = values.new_zeros(rot.shape[0], d * d).index_add(1, pixel, values)
        return centered_rfft2(images.reshape(-1, d, d))

    def volume(self, z: torch.Tensor | None = None, box_size: int | None = None,
               pixel_size_angstrom: float | None = None) -> torch.Tensor:
        """The deformed map ``(d, d, d)`` at ``z`` ``(L,)`` (``None``: the canonical map)."""
        if z is None:
            vol = self.map * self.scale
        else:
            zz = torch.as_tensor(z, dtype=self.map.dtype, device=self.map.device).reshape(1, -1)
            a = self._axis(self.map.device, self.map.dtype)
            gz, gy, gx = torch.meshgrid(a, a, a, indexing="ij")
            points = torch.stack([gx, gy, gz], dim=-1)[None]
            vol = self.sample(points, self.displacements(zz))[0]
        box = self.box_size if box_size is None else int(box_size)
        return resample_volume(vol, box)

    @torch.no_grad()
    def set_canonical(self, volume: torch.Tensor) -> None:
        """Set the canonical map to ``volume`` ``(D, D, D)`` (data units; divided by ``scale``)."""
        vol = torch.as_tensor(volume, dtype=self.map.dtype, device=self.map.device)
        if tuple(vol.shape) != tuple(self.map.shape):
            raise ValueError(f"canonical map must be {tuple(self.map.shape)}, "
                             f"got {tuple(vol.shape)}")
        self.map.copy_(vol / self.scale)

    # -- regularisers ---------------------------------------------------------------------
    def regularization(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unweighted batch means of the smoothness and rigidity penalties at ``z`` ``(B, L)``."""
        u = self.displacements(z)
        return {"smoothness": smoothness_penalty(u).mean(),
                "rigidity": rigidity_penalty(u, self.spacing_px).mean()}

    def regularization_loss(self, z: torch.Tensor | None) -> torch.Tensor:
        """``smoothness_weight * smoothness + rigidity_weight * rigidity`` (0 for ``z=None``)."""
        if z is None or (self.smoothness_weight == 0 and self.rigidity_weight == 0):
            return self.map.new_zeros(())
        terms = self.regularization(z)
        return (self.smoothness_weight * terms["smoothness"]
                + self.rigidity_weight * terms["rigidity"])
