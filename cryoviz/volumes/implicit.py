"""An implicit (coordinate-network) volume in Fourier space, as in cryoDRGN.

A residual ReLU MLP maps Gaussian random Fourier features of a 3-D frequency
``q`` (cycles per pixel of the model's box), concatenated with the latent
``z``, to the volume's transform at ``q``: one real Hartley value
(``domain='hartley'``) or the real and imaginary parts of the Fourier value
(``domain='fourier'``). Frequencies beyond Nyquist (``|q| > 0.5``) are zero and
never evaluated (nor is the Nyquist sphere itself, ``|q| = 0.5``).

Hermitian half space
--------------------
The transform of a real map obeys ``F(-q) = conj(F(q))`` (equivalently, for the
Hartley transform ``H(q) = Re F(q) - Im F(q)``: ``F(q) = (H(q) + H(-q)) / 2 -
i (H(q) - H(-q)) / 2``). A point ``q`` is *canonical* when ``q_z > 0``, or
``q_z = 0, q_y > 0``, or ``q_z = q_y = 0, q_x >= 0``. Every point is mapped to
its canonical representative ``s q`` (``s = +-1``) and the result is conjugated
when ``s = -1``, so the represented map is real by construction.

* ``fourier``: one MLP call per point, on canonical points only. A volume needs
  calls on half of the lattice only (the rest is filled by conjugation); an
  image half transform ``(D, D // 2 + 1)`` needs half the calls of the full plane.
* ``hartley``: ``F`` at ``q`` needs ``H`` at ``+-q``; calls are made for the
  canonical points and their mirrors (two per canonical point), and the
  volume's other half is again filled by conjugation.
"""

from __future__ import annotations

import math

import torch

from cryoviz.fourier import centered_ifft3, frequency_grid_2d
from cryoviz.volumes.base import VolumeModel

__all__ = ["ImplicitVolume", "canonical_sign"]

DOMAINS = ("hartley", "fourier")


def canonical_sign(q: torch.Tensor) -> torch.Tensor:
    """``+1`` for canonical (positive-half) frequencies, ``-1`` otherwise.

    Parameters
    ----------
    q
        ``(..., 3)`` frequencies in ``(x, y, z)`` order.

    Returns
    -------
    torch.Tensor
        ``(...)`` of ``q``'s dtype.
    """
    qx, qy, qz = q[..., 0], q[..., 1], q[..., 2]
    positive = (qz > 0) | ((qz == 0) & ((qy > 0) | ((qy == 0) & (qx >= 0))))
    return torch.where(positive, 1.0, -1.0).to(q.dtype)


class _ResidualMLP(torch.nn.Module):
    """``Linear -> ReLU -> depth x (x + ReLU(Linear x)) -> Linear``."""

    def __init__(self, in_dim: int, width: int, depth: int, out_dim: int) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(in_dim, width)
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(depth))
        self.out = torch.nn.Linear(width, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        for block in self.blocks:
            h = h + torch.relu(block(h))
        return self.out(h)


class ImplicitVolume(VolumeModel):
    """Coordinate MLP with random Fourier features, Hermitian by construction.

    Parameters
    ----------
    box_size
        Box ``D`` of the data (frequencies are in cycles per pixel of this box).
    pixel_size_angstrom
        Pixel size of that data in Å.
    latent_dim
        Length ``L`` of ``z`` (0: homogeneous).
    width, depth
        Hidden width and number of residual hidden layers.
    pe_dim
        Number of random frequencies (features are ``2 * pe_dim`` cos / sin).
    pe_sigma
        Standard deviation of the random frequencies' real-space offsets, as a
        fraction of the box (``b ~ N(0, (pe_sigma D)^2)`` px; features
        ``cos / sin (2 pi q . b)``).
    domain
        ``'hartley'`` (one real output) or ``'fourier'`` (real, imaginary).
    seed
        Seed of the random frequencies.
    chunk_points
        Points per MLP call when rendering a whole volume.
    """

    def __init__(
        self,
        box_size: int,
        pixel_size_angstrom: float,
        latent_dim: int = 0,
        width: int = 128,
        depth: int = 3,
        pe_dim: int = 64,
        pe_sigma: float = 0.25,
        domain: str = "hartley",
        seed: int = 0,
        chunk_points: int = 65536,
    ) -> None:
        super().__init__()
        if domain not in DOMAINS:
            raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
        self.box_size = int(box_size)
        self.pixel_size_angstrom = float(pixel_size_angstrom)
        self.latent_dim = int(latent_dim)
        self.domain = domain
        self.chunk_points = int(chunk_points)
        gen = torch.Generator().manual_seed(seed)
        freqs = torch.randn(3, pe_dim, generator=gen) * (pe_sigma * self.box_size)
        self.register_buffer("pe_frequencies", freqs)
        # transform values are large sums over voxels; the MLP works in units of this
        self.register_buffer("output_scale", torch.ones(()))
        n_out = 1 if domain == "hartley" else 2
        self.mlp = _ResidualMLP(2 * pe_dim + self.latent_dim, width, depth, n_out)
        self.points_evaluated = 0  # MLP evaluations so far (for tests and benchmarks)

    # -- the network on explicit points ---------------------------------------------------
    def _features(self, q: torch.Tensor) -> torch.Tensor:
        phase = 2.0 * math.pi * (q @ self.pe_frequencies.to(q.dtype))
        return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)

    def _mlp(self, q: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """Raw outputs ``(N, n_out)`` at points ``q`` ``(N, 3)`` with latents ``(N, L)``."""
        self.points_evaluated += int(q.shape[0])
        x = self._features(q)
        if self.latent_dim:
            x = torch.cat([x, z.to(x.dtype)], dim=-1)
        return self.mlp(x)

    def _canonical_values(self, qc: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """Complex ``F`` ``(N,)`` at canonical points ``qc`` ``(N, 3)``."""
        if self.domain == "fourier":
            out = self._mlp(qc, z)
            # F(0) is real: q = 0 is its own mirror
            nonzero = (qc != 0).any(dim=-1).to(out.dtype)
            value = torch.complex(out[:, 0], out[:, 1] * nonzero)
        else:
            n = qc.shape[0]
            zz = None if z is None else torch.cat([z, z])
            h = self._mlp(torch.cat([qc, -qc]), zz)[:, 0]
            a, b = h[:n], h[n:]
            value = torch.complex(0.5 * (a + b), -0.5 * (a - b))
        return value * self.output_scale

    def evaluate(self, q: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """The volume's transform at arbitrary frequencies.

        Parameters
        ----------
        q
            ``(B, P, 3)`` frequencies ``(x, y, z)`` in cycles per model pixel.
        z
            ``(B, L)`` latents or ``None``.

        Returns
        -------
        torch.Tensor
            ``(B, P)`` complex; zero where ``|q| >= 0.5`` (the Nyquist sphere itself
            is left out: on even lattices its points have no Hermitian partner).
        """
        batch, points, _ = q.shape
        flat = q.reshape(-1, 3)
        sign = canonical_sign(flat)
        inside = torch.nonzero(torch.linalg.vector_norm(flat, dim=-1) < 0.5).squeeze(1)
        zz = None
        if self.latent_dim:
            if z is None:
                raise ValueError(f"this model needs z of length {self.latent_dim}")
            zz = z[:, None, :].expand(batch, points, self.latent_dim).reshape(-1, self.latent_dim)
            zz = zz[inside]
        qc = flat[inside] * sign[inside, None]
        values = self._canonical_values(qc, zz)
        # conjugate where the point was mirrored
        s = sign[inside]
        values = torch.complex(values.real, values.imag * s)
        out = torch.zeros(flat.shape[0], dtype=values.dtype, device=q.device)
        out = out.index_put((inside,), values)
        return out.reshape(batch, points)

    # -- the protocol ---------------------------------------------------------------------
    def slices(self, rotations: torch.Tensor, z: torch.Tensor | None, box_size: int,
               pixel_size_angstrom: float) -> torch.Tensor:
        """``(B, D, D // 2 + 1)`` transforms of the projections (central slices).

        Image frequencies are converted to model frequencies through their
        physical frequency (``pixel_size_angstrom`` vs the model's pixel size).
        """
        dtype = self.pe_frequencies.dtype
        ky, kx = frequency_grid_2d(box_size, rfft=True, device=rotations.device, dtype=dtype)
        k = torch.stack([kx, ky, torch.zeros_like(kx)], dim=-1)
        k = k * (self.pixel_size_angstrom / pixel_size_angstrom)
        q = torch.einsum("bij,hwi->bhwj", rotations.to(dtype), k)
        batch, height, width, _ = q.shape
        return self.evaluate(q.reshape(batch, -1, 3), z).reshape(batch, height, width)

    def lattice_transform(self, z: torch.Tensor | None, box_size: int | None = None,
                          pixel_size_angstrom: float | None = None,
                          half_space: bool = True) -> torch.Tensor:
        """Centred transform ``(d, d, d)`` on a lattice, in the model's normalisation.

        Parameters
        ----------
        z
            ``(L,)`` latent or ``None``.
        box_size, pixel_size_angstrom
            Lattice box and voxel size (default: the model's; a different box
            defaults to the same physical extent).
        half_space
            Evaluate the network on half of the lattice and fill the rest by
            conjugation (default); ``False`` evaluates every point (for tests).
        """
        box = self.box_size if box_size is None else int(box_size)
        apix = (self.pixel_size_angstrom * self.box_size / box if pixel_size_angstrom is None
                else float(pixel_size_angstrom))
        dtype = self.pe_frequencies.dtype
        device = self.pe_frequencies.device
        idx = torch.arange(box, device=device)
        c = box // 2
        axis = (idx - c).to(dtype) / box * (self.pixel_size_angstrom / apix)
        gz, gy, gx = torch.meshgrid(axis, axis, axis, indexing="ij")
        q = torch.stack([gx, gy, gz], dim=-1).reshape(-1, 3)
        zz = None if z is None else z.reshape(1, -1).to(dtype)
        if half_space:
            mirror_axis = 2 * c - idx
            valid_axis = (mirror_axis >= 0) & (mirror_axis < box)
            mz, my, mx = torch.meshgrid(mirror_axis.clamp(0, box - 1),
                                        mirror_axis.clamp(0, box - 1),
                                        mirror_axis.clamp(0, box - 1), indexing="ij")
            vz, vy, vx = torch.meshgrid(valid_axis, valid_axis, valid_axis, indexing="ij")
            mirror = ((mz * box + my) * box + mx).reshape(-1)
            valid = (vz & vy & vx).reshape(-1)
            need = (canonical_sign(q) > 0) | ~valid
        else:
            need = torch.ones(q.shape[0], dtype=torch.bool, device=device)
        points = torch.nonzero(need).squeeze(1)
        parts = []
        for start in range(0, points.shape[0], self.chunk_points):
            sel = points[start:start + self.chunk_points]
            parts.append(self.evaluate(q[sel][None], zz)[0])
        values = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.complex64)
        out = torch.zeros(q.shape[0], dtype=values.dtype, device=device)
        out = out.index_put((points,), values)
        if half_space:
            rest = torch.nonzero(~need).squeeze(1)
            out = out.index_put((rest,), out[mirror[rest]].conj())
        scale = (self.pixel_size_angstrom / apix) ** 3
        return out.reshape(box, box, box) * scale

    def volume(self, z: torch.Tensor | None = None, box_size: int | None = None,
               pixel_size_angstrom: float | None = None) -> torch.Tensor:
        """Real-space map ``(d, d, d)``: the lattice transform, inverted (centred FFT).

        Voxel values are in the data's normalisation at the model's box; a
        different box or voxel size keeps voxel values (the transform is
        scaled by ``(model pixel / voxel size)^3``).
        """
        return centered_ifft3(self.lattice_transform(z, box_size, pixel_size_angstrom)).real
