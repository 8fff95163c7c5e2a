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
* ``hartley``: ``F`` at ``q`` needs ``H`` at ``+-q``; calls are made at ``q``
  and ``-q`` (two per point, the same set as a canonical point and its mirror),
  and the volume's other half is again filled by conjugation.

Speed
-----
The features at ``-q`` are ``(cos, -sin)`` of the phases at ``q`` (computed
once); :meth:`ImplicitVolume.slices` rotates only an image's half-plane points
inside Nyquist (cached per box) and adds each image's latent to the first
layer once (``W [f, z] = W_f f + W_z z``) instead of concatenating it to every
point. Training time is then dominated by the MLP's matrix products.
"""

from __future__ import annotations

import math

import torch

from cryoviz.fourier import centered_ifft3, frequency_grid_2d
from cryoviz.volumes.base import VolumeModel

__all__ = ["ImplicitVolume", "canonical_sign", "RESIDUAL_RELU"]

DOMAINS = ("hartley", "fourier")
#: Where a residual hidden layer applies its ReLU (``ImplicitVolume(residual_relu=...)``).
RESIDUAL_RELU = ("before_sum", "after_sum")

#: On the CPU, :meth:`ImplicitVolume.slices` reads the network on pieces of the batch
#: whose activations (points x width floats) stay below this size: the element-wise
#: work of larger pieces runs from main memory instead of the cache. On the 2-core
#: AVX-512 VM of 2026-12-07, forward and backward of 64 box-64 images took 7.4 ms per
#: image in one piece and 4.6 ms in pieces of this size at width 128 (18.5 and 13.8 ms
#: at width 256); batches of 16 gained 4-6 %.
CPU_PIECE_FLOATS = 2**21


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
    """``Linear -> ReLU -> depth x block -> Linear``, the block ``ReLU(x + Linear x)``
    (``relu_after_sum``, cryoDRGN's ``ResidLinear`` then its activation) or
    ``x + ReLU(Linear x)``.

    The first layer's input is ``[features, latent]``; :meth:`forward` takes the
    two apart so that a latent shared by many points is multiplied by its
    columns of the first weight once per image, not once per point (the same
    affine map as on the concatenation).
    """

    def __init__(self, in_dim: int, width: int, depth: int, out_dim: int,
                 relu_after_sum: bool = False) -> None:
        super().__init__()
        self.relu_after_sum = bool(relu_after_sum)
        self.inp = torch.nn.Linear(in_dim, width)
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(depth))
        self.out = torch.nn.Linear(width, out_dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Outputs ``(..., out_dim)``.

        Parameters
        ----------
        x
            ``(..., F)`` point features.
        cond
            ``None`` or the latents: ``(..., L)`` (one per point) or, with ``x`` of
            shape ``(B, P, F)``, ``(B, L)`` (one per image, shared by its points).
        """
        return self.from_first_layer(self.first_layer(x), cond)

    def first_layer(self, x: torch.Tensor) -> torch.Tensor:
        """The first layer's pre-activation ``(..., width)`` from the features ``x``
        ``(..., F)`` alone (with the bias; without the latent's term)."""
        return torch.nn.functional.linear(x, self.inp.weight[:, :x.shape[-1]], self.inp.bias)

    def from_first_layer(self, h: torch.Tensor, cond: torch.Tensor | None = None
                         ) -> torch.Tensor:
        """Outputs ``(..., out_dim)`` from :meth:`first_layer`'s ``h`` and ``cond`` (as in
        :meth:`forward`)."""
        if cond is not None and cond.shape[-1] > 0:
            weight = self.inp.weight
            shift = torch.nn.functional.linear(cond.to(h.dtype),
                                               weight[:, weight.shape[1] - cond.shape[-1]:])
            # a new tensor: the ReLU may act in place (h itself may be a caller's cache)
            h = (h + (shift.unsqueeze(-2) if cond.dim() < h.dim() else shift)).relu_()
        else:
            h = torch.relu(h)
        # the layers' element-wise work in place on each layer's new output: the same
        # arithmetic as out of place, in fewer passes over memory and fresh allocations
        # (autograd allows it: a linear layer's backward does not read its output, a
        # ReLU's reads its own): bf16 training on the 2-core AMX Xeon of 2026-12-08
        # ~8 % faster per epoch, the trained weights equal bit for bit
        grad = torch.is_grad_enabled()
        for block in self.blocks:
            if self.relu_after_sum:
                h = block(h).add_(h).relu_()
            elif grad:
                h = h + block(h).relu_()
            else:
                h.add_(block(h).relu_())
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
        ``cos / sin (2 pi q . b)``). The training recipes use ``1 / (8 pi)``,
        cryoDRGN's scale (:data:`cryoviz.train.recipes.CRYODRGN_PE_SIGMA`): the
        larger default here learns markedly more slowly from noisy images.
    domain
        ``'hartley'`` (one real output) or ``'fourier'`` (real, imaginary).
    seed
        Seed of the random frequencies.
    residual_relu
        Where each residual hidden layer applies its ReLU: ``'before_sum'``
        (``h + ReLU(W h + b)``) or ``'after_sum'`` (``ReLU(h + W h + b)``,
        cryoDRGN's decoder; the training recipes' default, see
        :class:`cryoviz.train.recipes.Recipe`).
    chunk_points
        Points per MLP call when rendering a whole volume; ``None`` (default): on
        the CPU pieces of :data:`CPU_PIECE_FLOATS` activations (8,192 points at
        width 256: a box-64 map 194 against 271 ms in pieces of 65,536 on the
        2-core VM of 2026-12-07), elsewhere 65,536.
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
        chunk_points: int | None = None,
        residual_relu: str = "before_sum",
    ) -> None:
        super().__init__()
        if domain not in DOMAINS:
            raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
        if residual_relu not in RESIDUAL_RELU:
            raise ValueError(f"residual_relu must be one of {RESIDUAL_RELU}, "
                             f"got {residual_relu!r}")
        self.box_size = int(box_size)
        self.pixel_size_angstrom = float(pixel_size_angstrom)
        self.latent_dim = int(latent_dim)
        self.domain = domain
        self.chunk_points = None if chunk_points is None else int(chunk_points)
        gen = torch.Generator().manual_seed(seed)
        freqs = torch.randn(3, pe_dim, generator=gen) * (pe_sigma * self.box_size)
        self.register_buffer("pe_frequencies", freqs)
        # transform values are large sums over voxels; the MLP works in units of this
        self.register_buffer("output_scale", torch.ones(()))
        n_out = 1 if domain == "hartley" else 2
        self.mlp = _ResidualMLP(2 * pe_dim + self.latent_dim, width, depth, n_out,
                                relu_after_sum=residual_relu == "after_sum")
        self.points_evaluated = 0  # MLP evaluations so far (for tests and benchmarks)

    # -- the network on explicit points ---------------------------------------------------
    def _network(self, feats: torch.Tensor, cond: torch.Tensor | None,
                 network_dtype: torch.dtype | None) -> torch.Tensor:
        """The MLP on ``feats``, under autocast to ``network_dtype`` if given (float32 out)."""
        if network_dtype is None:
            return self.mlp(feats, cond)
        with torch.autocast(feats.device.type, dtype=network_dtype):
            return self.mlp(feats, cond).float()

    def _values(self, q: torch.Tensor, z: torch.Tensor | None,
                network_dtype: torch.dtype | None = None) -> torch.Tensor:
        """Complex ``F`` at frequencies inside Nyquist.

        Parameters
        ----------
        q
            ``(N, 3)`` or ``(B, P, 3)`` frequencies with ``|q| < 0.5``.
        z
            ``None`` (homogeneous), ``(N, L)`` per point, or ``(B, L)`` per image for
            ``q`` of shape ``(B, P, 3)``.
        network_dtype
            Autocast dtype of the MLP alone (e.g. ``torch.bfloat16``); the features'
            phases and the output stay float32. ``None``: the caller's precision.

        Returns
        -------
        torch.Tensor
            ``(N,)`` or ``(B, P)`` complex.

        Notes
        -----
        The features at ``-q`` are ``(cos, -sin)`` of the phases at ``q``, so one
        set of phases serves both ``q`` and its mirror. Hartley: ``F(q) = (H(q) +
        H(-q)) / 2 - i (H(q) - H(-q)) / 2`` directly (no canonical mapping
        needed). Fourier: the network is read at the canonical point ``s q`` and
        conjugated where ``s = -1``.
        """
        if not self.latent_dim:
            z = None
        elif z is None:
            raise ValueError(f"this model needs z of length {self.latent_dim}")
        cos, sin = self._cos_sin(q)
        if self.domain == "hartley":
            n = q.shape[-2]
            feats = torch.cat([torch.cat([cos, sin], dim=-1), torch.cat([cos, -sin], dim=-1)],
                              dim=-2)
            cond = z if (z is None or z.dim() < q.dim()) else torch.cat([z, z], dim=-2)
            self.points_evaluated += int(feats.shape[:-1].numel())
            h = self._network(feats, cond, network_dtype)[..., 0]
            return self._hartley_value(h[..., :n], h[..., n:])
        sign = canonical_sign(q)
        feats = torch.cat([cos, sin * sign[..., None]], dim=-1)
        self.points_evaluated += int(feats.shape[:-1].numel())
        return self._fourier_value(self._network(feats, z, network_dtype), q, sign)

    def _piece_points(self, device: torch.device) -> int:
        """Points per network call: on the CPU :data:`CPU_PIECE_FLOATS` activations'
        worth (at least one), elsewhere unlimited."""
        if device.type != "cpu":
            return 2**62
        return max(1, CPU_PIECE_FLOATS // self.mlp.inp.out_features)

    def _values_in_pieces(self, q: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """:meth:`_values` of ``q`` ``(B, P, 3)`` or ``(N, 3)`` (``z`` ``(B, L)`` or
        ``(N, L)``), on the CPU in pieces along the first dimension of at most
        :data:`CPU_PIECE_FLOATS` activations each (the same values; other devices
        take the batch in one piece)."""
        points_per_row = q.shape[1] if q.dim() == 3 else 1
        rows = max(1, self._piece_points(q.device) // points_per_row)
        if q.shape[0] <= rows:
            return self._values(q, z)
        return torch.cat([self._values(q[i:i + rows], None if z is None else z[i:i + rows])
                          for i in range(0, q.shape[0], rows)])

    def _cos_sin(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos`` and ``sin`` ``(..., pe_dim)`` of the random-feature phases at ``q``."""
        phase = (2.0 * math.pi) * (q @ self.pe_frequencies.to(q.dtype))
        return torch.cos(phase), torch.sin(phase)

    def _hartley_value(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``F`` from the Hartley outputs ``a = H(q)`` and ``b = H(-q)``."""
        return torch.complex(0.5 * (a + b), -0.5 * (a - b)) * self.output_scale

    def _fourier_value(self, out: torch.Tensor, q: torch.Tensor,
                       sign: torch.Tensor) -> torch.Tensor:
        """``F`` from the outputs ``(..., 2)`` read at the canonical points ``sign * q``."""
        # F(0) is real: q = 0 is its own mirror
        imag = out[..., 1] * ((q != 0).any(dim=-1).to(out.dtype) * sign)
        return torch.complex(out[..., 0], imag) * self.output_scale

    def first_layer_at(self, q: torch.Tensor) -> torch.Tensor:
        """The first layer's pre-activations ``(N, S, width)`` at frequencies ``q`` ``(N, 3)``.

        They do not depend on ``z`` (its term is added per latent), so those of a
        fixed lattice can be computed once and reused for every latent
        (:class:`~cryoviz.train.evaluate.LatticeDecoder` does), skipping the
        features and the widest layer: :meth:`values_from_first_layer` then
        gives :meth:`evaluate`'s values. ``S`` is 2 for ``hartley`` (the reads at
        ``q``, then at ``-q``), 1 for ``fourier`` (at the canonical points). In
        ``q``'s dtype; valid for the weights they were computed with.
        """
        cos, sin = self._cos_sin(q)
        if self.domain == "hartley":
            feats = torch.stack([torch.cat([cos, sin], dim=-1), torch.cat([cos, -sin], dim=-1)],
                                dim=-2)
        else:
            feats = torch.cat([cos, sin * canonical_sign(q)[..., None]], dim=-1)[:, None]
        return self.mlp.first_layer(feats)

    def values_from_first_layer(self, first: torch.Tensor, q: torch.Tensor,
                                z: torch.Tensor | None,
                                network_dtype: torch.dtype | None = None) -> torch.Tensor:
        """Complex ``F`` ``(N,)`` at ``q`` ``(N, 3)`` (``|q| < 0.5``) from ``first``.

        Parameters
        ----------
        first
            ``(N, S, width)``: :meth:`first_layer_at` ``(q)``.
        q
            ``(N, 3)`` frequencies.
        z
            ``(L,)`` latent, or ``None`` for homogeneous models.
        network_dtype
            Autocast dtype of the layers after the first (see :meth:`_values`).
        """
        if self.latent_dim and z is None:
            raise ValueError(f"this model needs z of length {self.latent_dim}")
        cond = z.reshape(1, -1) if self.latent_dim else None
        self.points_evaluated += int(first.shape[:-1].numel())
        if network_dtype is None:
            out = self.mlp.from_first_layer(first, cond)
        else:
            with torch.autocast(first.device.type, dtype=network_dtype):
                out = self.mlp.from_first_layer(first, cond).float()
        if self.domain == "hartley":
            return self._hartley_value(out[:, 0, 0], out[:, 1, 0])
        return self._fourier_value(out[:, 0], q, canonical_sign(q))

    def evaluate(self, q: torch.Tensor, z: torch.Tensor | None,
                 network_dtype: torch.dtype | None = None) -> torch.Tensor:
        """The volume's transform at arbitrary frequencies.

        Parameters
        ----------
        q
            ``(B, P, 3)`` frequencies ``(x, y, z)`` in cycles per model pixel.
        z
            ``(B, L)`` latents or ``None``.
        network_dtype
            Autocast dtype of the MLP (see :meth:`_values`); ``None``: float32.

        Returns
        -------
        torch.Tensor
            ``(B, P)`` complex; zero where ``|q| >= 0.5`` (the Nyquist sphere itself
            is left out: on even lattices its points have no Hermitian partner).
        """
        batch, points, _ = q.shape
        flat = q.reshape(-1, 3)
        inside = torch.nonzero(torch.linalg.vector_norm(flat, dim=-1) < 0.5).squeeze(1)
        zz = None
        if self.latent_dim:
            if z is None:
                raise ValueError(f"this model needs z of length {self.latent_dim}")
            zz = z[:, None, :].expand(batch, points, self.latent_dim).reshape(-1, self.latent_dim)
            zz = zz[inside]
        values = self._values(flat[inside], zz, network_dtype)
        out = torch.zeros(flat.shape[0], dtype=values.dtype, device=q.device)
        out = out.index_put((inside,), values)
        return out.reshape(batch, points)

    # -- the protocol ---------------------------------------------------------------------
    def _image_lattice(self, box_size: int, pixel_size_angstrom: float,
                       device: torch.device, dtype: torch.dtype
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Model frequencies ``(P, 3)`` of an image's half-plane points inside Nyquist.

        Returns the points ``(kx, ky, 0)`` (in model units) with ``|k| < 0.5`` and
        their flat indices ``(P,)`` in the ``(D, D // 2 + 1)`` half transform;
        cached per box, pixel size, device and dtype (not saved with the model).
        """
        key = (int(box_size), float(pixel_size_angstrom), str(device), dtype)
        cache = self.__dict__.setdefault("_lattice_cache", {})
        if key not in cache:
            ky, kx = frequency_grid_2d(box_size, rfft=True, device=device, dtype=dtype)
            k = torch.stack([kx, ky, torch.zeros_like(kx)], dim=-1).reshape(-1, 3)
            k = k * (self.pixel_size_angstrom / pixel_size_angstrom)
            inside = torch.nonzero(torch.linalg.vector_norm(k, dim=-1) < 0.5).squeeze(1)
            cache[key] = (k[inside].contiguous(), inside)
        return cache[key]

    def slices(self, rotations: torch.Tensor, z: torch.Tensor | None, box_size: int,
               pixel_size_angstrom: float, pixel_mask: torch.Tensor | None = None
               ) -> torch.Tensor:
        """``(B, D, D // 2 + 1)`` transforms of the projections (central slices).

        Image frequencies are converted to model frequencies through their
        physical frequency (``pixel_size_angstrom`` vs the model's pixel size).
        Only the half-plane points inside Nyquist are rotated and evaluated (the
        rest is zero); each image's latent enters the first layer once.

        Parameters
        ----------
        pixel_mask
            ``None``, or ``(B, D, D // 2 + 1)`` bool: evaluate each image only where
            it is true (inside Nyquist); the other coefficients are zero. The
            training loop's pixel subsampling (``Recipe.pixel_fraction``) passes
            one: the network's work shrinks with the mask.
        """
        dtype = self.pe_frequencies.dtype
        k, inside = self._image_lattice(box_size, pixel_size_angstrom, rotations.device, dtype)
        batch = rotations.shape[0]
        width = box_size // 2 + 1
        zz = None if z is None else z.to(dtype)
        if pixel_mask is None:
            q = torch.matmul(k, rotations.to(dtype))  # (B, P, 3): q = R^T k
            values = self._values_in_pieces(q, zz)
            out = torch.zeros(batch, box_size * width, dtype=values.dtype,
                              device=values.device)
            out = out.index_copy(1, inside, values)
            return out.reshape(batch, box_size, width)
        chosen = pixel_mask.reshape(batch, -1)[:, inside]  # (B, P)
        image, point = torch.nonzero(chosen, as_tuple=True)  # N chosen points, image-major
        q = torch.matmul(k[point].unsqueeze(1), rotations.to(dtype)[image]).squeeze(1)
        values = self._values_in_pieces(q, None if zz is None else zz[image])  # (N,)
        out = torch.zeros(batch, box_size * width, dtype=values.dtype, device=values.device)
        out = out.index_put((image, inside[point]), values)
        return out.reshape(batch, box_size, width)

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
        chunk = self.chunk_points or min(self._piece_points(device), 65536)
        for start in range(0, points.shape[0], chunk):
            sel = points[start:start + chunk]
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
