"""A Gaussian-mixture volume ``V(z)``, as in E2GMM (Chen & Ludtke 2021).

The map is a mixture of ``M`` isotropic Gaussians (see :mod:`cryoviz.gaussians`
for the normalisation: ``A_j`` is the integral of component ``j``) with
learnable *neutral* centres, log-amplitudes and log-widths. For a
heterogeneous model a decoder MLP maps the latent ``z`` to per-Gaussian
changes of the centres ``dc_j(z)`` (Å) and of the log-amplitudes
``da_j(z)``, so particle ``i`` is rendered from the mixture

    c_ij = c_j + dc_j(z_i),   A_ij = s exp(a_j + da_j(z_i)),   sigma_j = exp(l_j),

with a fixed overall amplitude scale ``s`` (the buffer ``amplitude_scale``,
set by the trainer to put the model in the data's normalisation).

Projections are analytic (:func:`project_gaussians_batched`, the batched form of
:func:`cryoviz.gaussian_projection.project_gaussians_fourier` with one mixture per
particle) and maps are band-limited (:func:`cryoviz.gaussians.gaussians_volume`).

Initialisation
--------------
* reference-free: centres uniform in a ball (seeded), equal amplitudes;
  or from the strongest voxels of a low-passed map (:func:`mixture_from_map`);
* reference-based: from a :class:`cryoviz.structure.Structure`
  (:func:`mixture_from_structure`), one Gaussian per residue (at its CA) or
  per atom.

E2GMM's FRC loss is in :mod:`cryoviz.volumes.frc`.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from cryoviz.fourier import hermitian_half
from cryoviz.gaussians import GaussianMixture, gaussians_volume
from cryoviz.volumes.base import VolumeModel
from cryoviz.volumes.elastic import ElasticRestraints
from cryoviz.volumes.frc import shell_matrix
from cryoviz.volumes.gmm_init import (
    load_reference,
    mixture_from_map,
    mixture_from_structure,
    random_ball_mixture,
)

__all__ = [
    "GaussianMixtureVolume",
    "project_gaussians_batched",
    "mixture_from_structure",
    "mixture_from_map",
    "random_ball_mixture",
    "load_reference",
    "fit_amplitude_scale",
    "MAX_LOG_AMPLITUDE_CHANGE",
]

#: Largest change of a Gaussian's log-amplitude the decoder may make (``exp(20)``,
#: about 5e8 times its neutral amplitude: never needed by a map). A latent that runs
#: away early in training (its KL weight still near 0 in a warm-up) otherwise
#: makes ``exp(da)`` so large that the projection's power overflows float32 and
#: the FRC loss turns NaN: on the small bench's preferred-pose mixture, seed 2 of
#: ``e2gmm`` with the fit-gradient input reached ``da = 54`` at step 10; with the
#: cap it trains on (2026-12-07).
MAX_LOG_AMPLITUDE_CHANGE = 20.0

_TWO_PI2 = 2.0 * math.pi**2


# -- the batched analytic projection ------------------------------------------------------
def project_gaussians_batched(
    centres_angstrom: torch.Tensor,
    amplitudes: torch.Tensor,
    sigmas_angstrom: torch.Tensor,
    rotations: torch.Tensor,
    box_size: int,
    pixel_size_angstrom: float,
) -> torch.Tensor:
    """Analytic centred half transforms of projections, one mixture per particle.

    ``F[b, ky, kx] = sum_j A_bj exp(-2 pi^2 s_bj^2 |k|^2) exp(-2 pi i (R_b c_bj)_xy . k)``.
    The envelope and the phase factor into ``y`` and ``x`` parts, so each image is
    ``Ey_b (D, M) @ Ex_b^T (M, D//2+1)``: memory ``O(B (D + D/2) M)``, differentiable
    with respect to every input.

    Parameters
    ----------
    centres_angstrom
        ``(B, M, 3)`` (or ``(M, 3)``, shared) centres ``(x, y, z)`` in Å, particle frame.
    amplitudes
        ``(B, M)`` or ``(M,)`` integrated masses.
    sigmas_angstrom
        ``(B, M)`` or ``(M,)`` standard deviations, Å.
    rotations
        ``(B, 3, 3)`` particle -> lab rotations.
    box_size
        ``D``.
    pixel_size_angstrom
        Pixel size ``p``; frequencies ``(i - D//2) / (D p)`` cycles/Å.

    Returns
    -------
    torch.Tensor
        ``(B, D, D//2+1)`` complex in the real dtype of ``centres_angstrom``
        (complex64 for float32), the layout and normalisation of
        :func:`cryoviz.gaussian_projection.project_gaussians_fourier` (DC = total mass; aliased
        Nyquist samples of even boxes Hermitian-symmetrised).
    """
    if rotations.ndim != 3 or rotations.shape[1:] != (3, 3):
        raise ValueError(f"rotations must be (B, 3, 3), got {tuple(rotations.shape)}")
    d = int(box_size)
    if d < 2 or not pixel_size_angstrom > 0:
        raise ValueError(f"need box_size >= 2 and pixel_size_angstrom > 0, got "
                         f"{box_size}, {pixel_size_angstrom}")
    batch = rotations.shape[0]
    rdtype = centres_angstrom.dtype
    device = centres_angstrom.device
    centres = centres_angstrom
    if centres.ndim == 2:
        centres = centres[None].expand(batch, -1, -1)
    if centres.ndim != 3 or centres.shape[0] != batch or centres.shape[2] != 3:
        raise ValueError(f"centres must be (B, M, 3) or (M, 3), got {tuple(centres.shape)}")
    m = centres.shape[1]
    amps = amplitudes.to(rdtype).expand(batch, m) if amplitudes.ndim == 1 else amplitudes
    var = ((sigmas_angstrom.to(rdtype) ** 2)[None] if sigmas_angstrom.ndim == 1
           else sigmas_angstrom**2)  # (1 or B, M) Å²
    rot = rotations.to(device=device, dtype=rdtype)
    lab = torch.einsum("bik,bmk->bmi", rot[:, :2, :], centres)  # (B, M, 2): x, y
    step = 1.0 / (d * pixel_size_angstrom)
    ky = (torch.arange(d, device=device, dtype=rdtype) - d // 2) * step  # (D,)
    kx = torch.arange(d // 2 + 1, device=device, dtype=rdtype) * step  # (Dh,)
    return hermitian_half(_SeparableProjection.apply(lab[..., 1], lab[..., 0], var, amps,
                                                     ky, kx), d)


def _polar(magnitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """``magnitude * exp(i phase)`` (broadcast to ``phase``'s shape), no autograd.

    Written into the real and imaginary parts of one complex tensor: on the 2-core
    CPU, 6 ms for ``(32, 64, 2048)`` against 22 ms for :func:`torch.polar`.
    """
    out = torch.empty(phase.shape, dtype=phase.dtype.to_complex(), device=phase.device)
    parts = torch.view_as_real(out)
    torch.mul(magnitude, torch.cos(phase), out=parts[..., 0])
    torch.mul(magnitude, torch.sin(phase), out=parts[..., 1])
    return out


def _axis_factor(k: torch.Tensor, var: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """``exp(-2 pi^2 v_j k^2) exp(-2 pi i k p_bj)``: ``(B, K, M)`` complex for frequencies
    ``k`` ``(K,)``, variances ``(1 or B, M)`` and coordinates ``(B, M)``."""
    return _polar(torch.exp(-_TWO_PI2 * k[None, :, None] ** 2 * var[:, None, :]),
                  (-2.0 * math.pi) * k[None, :, None] * position[:, None, :])


def _frequency_sums(k: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``sum_k w_k Re / Im values[b, k, j]`` for the weights ``w = (-2 pi^2 k^2, 2 pi k)``,
    as one small matrix product: ``(B, 2, M, 2)`` (weight, real / imaginary part) from
    ``values`` ``(B, K, M)`` complex."""
    b, n, m = values.shape
    weights = torch.stack([-_TWO_PI2 * k**2, (2.0 * math.pi) * k])
    return torch.matmul(weights, torch.view_as_real(values).reshape(b, n, 2 * m)
                        ).reshape(b, 2, m, 2)


class _SeparableProjection(torch.autograd.Function):
    """``F[b] = Ey[b] @ Ex[b]^T`` of :func:`project_gaussians_batched`, with its
    gradient written out.

    ``Ey[b, k, j] = exp(-2 pi^2 v_j ky_k^2) exp(-2 pi i ky_k y_bj)`` and ``Ex[b, l, j]
    = A_bj exp(-2 pi^2 v_j kx_l^2) exp(-2 pi i kx_l x_bj)``. Autograd through
    ``torch.polar`` took about half of an ``e2gmm`` training step on the CPU; here
    the backward pass is two complex matrix products, ``H = G conj(Ex)`` and ``H' =
    G^T conj(Ey)``, and the per-Gaussian sums they give (frequency-weighted sums over
    ``ky`` / ``kx``, taken as small matrix products): with ``P = Ey conj(H)`` and
    ``Q = Ex conj(H')``, ``dL/dy_j = sum_k 2 pi ky_k Im P_kj``, ``dL/dx_j = sum_l 2 pi
    kx_l Im Q_lj``, ``dL/dv_j = -2 pi^2 (sum_k ky_k^2 Re P_kj + sum_l kx_l^2 Re Q_lj)``
    and ``dL/dA_j = sum_l Re Q_lj / A_j`` (``G = dL/dRe F + i dL/dIm F``, PyTorch's
    convention for complex tensors). First derivatives only.

    Inputs: ``y``, ``x`` ``(B, M)`` Å (the centres' lab coordinates), ``v`` ``(B, M)``
    or ``(1, M)`` Å² (variances), ``A`` ``(B, M)``, ``ky`` ``(D,)`` and ``kx``
    ``(Dh,)`` cycles/Å. Output ``(B, D, Dh)`` complex.
    """

    @staticmethod
    def forward(ctx, y: torch.Tensor, x: torch.Tensor, var: torch.Tensor, amps: torch.Tensor,
                ky: torch.Tensor, kx: torch.Tensor) -> torch.Tensor:
        ey, ex_unit = _axis_factor(ky, var, y), _axis_factor(kx, var, x)
        ctx.save_for_backward(ey, ex_unit, amps, ky, kx)
        ctx.shared_var = var.shape[0] == 1 and y.shape[0] != 1
        return torch.bmm(ey, (ex_unit * amps[:, None, :]).transpose(1, 2))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        ey, ex_unit, amps, ky, kx = ctx.saved_tensors
        grad_conj = grad.to(ey.dtype).conj()
        # P = Ey conj(H) = Ey (conj(G) Ex), Q / A = Ex_unit conj(H') = Ex_unit (conj(G)^T Ey)
        p = ey * torch.bmm(grad_conj, ex_unit * amps[:, None, :])  # (B, D, M)
        q_unit = ex_unit * torch.bmm(grad_conj.transpose(1, 2), ey)  # (B, Dh, M)
        sums_y = _frequency_sums(ky, p)
        sums_x = _frequency_sums(kx, q_unit) * amps[:, None, :, None]
        d_var = sums_y[:, 0, :, 0] + sums_x[:, 0, :, 0]
        if ctx.shared_var:
            d_var = d_var.sum(0, keepdim=True)
        d_amps = torch.view_as_real(q_unit)[..., 0].sum(1)
        return sums_y[:, 1, :, 1], sums_x[:, 1, :, 1], d_var, d_amps, None, None


# -- the volume model -----------------------------------------------------------------------
class GaussianMixtureVolume(VolumeModel):
    """``M`` isotropic Gaussians, optionally moved and reweighted by a decoder of ``z``.

    Parameters
    ----------
    box_size
        Box ``D`` of the data.
    pixel_size_angstrom
        Its pixel size, Å.
    latent_dim
        ``L`` (0: homogeneous, no decoder).
    initial
        Starting mixture (particle frame, Å); default :func:`random_ball_mixture`
        with ``n_gaussians`` components in a ball of ``radius_fraction * D * p``.
    n_gaussians
        ``M`` when ``initial`` is not given.
    radius_fraction
        Radius of the random ball, as a fraction of the box width.
    sigma_angstrom
        Width of the random components (default 1.5 pixels).
    width, depth
        Decoder hidden width and number of hidden layers (ReLU).
    max_shift_px
        Scale of the decoder's centre changes: the raw outputs are multiplied by
        ``max_shift_px * p`` (no bound), so O(1) outputs move a Gaussian a few pixels.
    seed
        Seed of the random ball and of the decoder's initial weights.
    move_amplitudes
        If False the decoder changes the centres only (its amplitude outputs are
        ignored): every component keeps its mass, as atoms and residues do.
    bond_weight, contact_weight, contact_cutoff_angstrom
        Restraints of the decoded centres to the distances of ``initial``
        (:class:`cryoviz.volumes.elastic.ElasticRestraints`: consecutive
        components as bonds, pairs closer than the cutoff as an elastic network);
        meaningful when ``initial`` comes from a structure in chain order. Both
        weights 0: no restraints.

    Notes
    -----
    Centres are stored in pixels of the model's box (``centres_px``) so that Adam
    steps are a fraction of a pixel whatever the pixel size; ``centres_angstrom``
    gives them in Å. The buffer ``amplitude_scale`` multiplies every amplitude.
    """

    def __init__(
        self,
        box_size: int,
        pixel_size_angstrom: float,
        latent_dim: int = 0,
        initial: GaussianMixture | None = None,
        n_gaussians: int = 512,
        radius_fraction: float = 0.3,
        sigma_angstrom: float | None = None,
        width: int = 128,
        depth: int = 2,
        max_shift_px: float = 2.0,
        seed: int = 0,
        move_amplitudes: bool = True,
        bond_weight: float = 0.0,
        contact_weight: float = 0.0,
        contact_cutoff_angstrom: float = 10.0,
    ) -> None:
        super().__init__()
        self.box_size = int(box_size)
        self.pixel_size_angstrom = float(pixel_size_angstrom)
        self.latent_dim = int(latent_dim)
        self.max_shift_px = float(max_shift_px)
        apix = self.pixel_size_angstrom
        if initial is None:
            sigma = 1.5 * apix if sigma_angstrom is None else float(sigma_angstrom)
            initial = random_ball_mixture(int(n_gaussians),
                                          radius_fraction * self.box_size * apix, sigma,
                                          seed=seed)
        self.n_gaussians = len(initial)
        mix = initial.to(dtype=torch.float32)
        self.centres_px = torch.nn.Parameter(mix.centres_angstrom.clone() / apix)
        self.log_amplitudes = torch.nn.Parameter(torch.log(mix.amplitudes.clamp(min=1e-12)))
        self.log_sigmas = torch.nn.Parameter(torch.log(mix.sigmas_angstrom.clamp(min=1e-6)))
        self.register_buffer("amplitude_scale", torch.ones(()))
        self.move_amplitudes = bool(move_amplitudes)
        self.restraints: ElasticRestraints | None = None
        if bond_weight > 0 or contact_weight > 0:
            self.restraints = ElasticRestraints(mix.centres_angstrom, bond_weight,
                                                contact_weight,
                                                cutoff_angstrom=contact_cutoff_angstrom)
        self.decoder: torch.nn.Module | None = None
        if self.latent_dim:
            gen_state = torch.get_rng_state()
            torch.manual_seed(seed)
            layers: list[torch.nn.Module] = []
            n_in = self.latent_dim
            for _ in range(depth):
                layers += [torch.nn.Linear(n_in, width), torch.nn.ReLU()]
                n_in = width
            head = torch.nn.Linear(n_in, 4 * self.n_gaussians)
            with torch.no_grad():
                head.weight.mul_(0.1)
                head.bias.zero_()
            self.decoder = torch.nn.Sequential(*layers, head)
            torch.set_rng_state(gen_state)

    # -- parameters -----------------------------------------------------------------------
    @property
    def centres_angstrom(self) -> torch.Tensor:
        """``(M, 3)`` neutral centres in Å."""
        return self.centres_px * self.pixel_size_angstrom

    def neutral_mixture(self) -> GaussianMixture:
        """The neutral mixture (no decoder changes), amplitudes scaled, detached."""
        return GaussianMixture(self.centres_angstrom.detach(),
                               (self.amplitude_scale * self.log_amplitudes.exp()).detach(),
                               self.log_sigmas.exp().detach())

    def deltas(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder changes for latents ``z`` ``(B, L)``.

        Returns
        -------
        (dc, da)
            ``(B, M, 3)`` centre changes in Å and ``(B, M)`` log-amplitude changes,
            at most :data:`MAX_LOG_AMPLITUDE_CHANGE`.
        """
        if self.decoder is None:
            raise ValueError("a homogeneous GaussianMixtureVolume has no decoder")
        out = self.decoder(z.to(self.centres_px.dtype))
        m = self.n_gaussians
        dc = out[:, : 3 * m].reshape(-1, m, 3) * (self.max_shift_px * self.pixel_size_angstrom)
        da = out[:, 3 * m:].clamp(max=MAX_LOG_AMPLITUDE_CHANGE)
        return dc, (da if self.move_amplitudes else torch.zeros_like(da))

    def regularization_loss(self, z: torch.Tensor | None) -> torch.Tensor:
        """Weighted bond and elastic-network penalty of the centres at ``z`` ``(B, L)``.

        0 without restraints. With ``z`` None (homogeneous) the neutral centres
        are restrained.
        """
        if self.restraints is None:
            return self.centres_px.new_zeros(())
        centres, _, _ = self.mixture_parameters(z)
        return self.restraints(centres)

    def mixture_parameters(self, z: torch.Tensor | None, batch: int = 1
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-particle centres ``(B, M, 3)`` Å, amplitudes ``(B, M)``, sigmas ``(M,)`` Å."""
        centres = self.centres_angstrom[None]
        log_amp = self.log_amplitudes[None]
        if self.latent_dim:
            if z is None:
                raise ValueError(f"this model needs z of length {self.latent_dim}")
            dc, da = self.deltas(z.reshape(-1, self.latent_dim))
            centres, log_amp = centres + dc, log_amp + da
        else:
            centres = centres.expand(batch, -1, -1)
            log_amp = log_amp.expand(batch, -1)
        return centres, self.amplitude_scale * log_amp.exp(), self.log_sigmas.exp()

    def mixture(self, z: torch.Tensor | None = None) -> GaussianMixture:
        """The mixture for one latent ``z`` ``(L,)`` (or ``None``)."""
        centres, amps, sigmas = self.mixture_parameters(z)
        return GaussianMixture(centres[0], amps[0], sigmas)

    # -- the protocol ---------------------------------------------------------------------
    def slices(self, rotations: torch.Tensor, z: torch.Tensor | None, box_size: int,
               pixel_size_angstrom: float) -> torch.Tensor:
        """``(B, D, D // 2 + 1)`` analytic projection transforms (any box / pixel size)."""
        centres, amps, sigmas = self.mixture_parameters(z, rotations.shape[0])
        return project_gaussians_batched(centres, amps, sigmas, rotations.to(centres.dtype),
                                         box_size, pixel_size_angstrom)

    def volume(self, z: torch.Tensor | None = None, box_size: int | None = None,
               pixel_size_angstrom: float | None = None) -> torch.Tensor:
        """Band-limited map ``(d, d, d)`` of the mixture at ``z`` ``(L,)``.

        Voxel values are in the data's normalisation at the model's voxel size; a
        different box covers the same extent by default and keeps voxel values
        (amplitudes scaled by ``(model pixel / voxel size)^3``).
        """
        box = self.box_size if box_size is None else int(box_size)
        apix = (self.pixel_size_angstrom * self.box_size / box if pixel_size_angstrom is None
                else float(pixel_size_angstrom))
        mix = self.mixture(z)
        scale = (self.pixel_size_angstrom / apix) ** 3
        mix = GaussianMixture(mix.centres_angstrom, mix.amplitudes * scale, mix.sigmas_angstrom)
        return gaussians_volume(mix, box, apix, dtype=self.centres_px.dtype)


@torch.no_grad()
def fit_amplitude_scale(volume: GaussianMixtureVolume, targets: torch.Tensor,
                        rotations: torch.Tensor, shifts_angstrom: torch.Tensor | None,
                        ctf, pixel_size_angstrom: float, max_shell: int | None = None
                        ) -> float:
    """The ``amplitude_scale`` that best fits images by the model at ``z = 0``.

    Least squares over the low shells ``1 .. max_shell`` (default ``max(2, D // 8)``)
    of ``|s M_i - X_i|^2``, ``M_i`` the model's CTF-modulated transforms; where the
    fit is not positive (a model that does not correlate with the data), the ratio
    of the RMS values is used instead.

    Parameters
    ----------
    volume
        The model (its current ``amplitude_scale`` is taken into account).
    targets
        ``(B, D, D//2+1)`` centred half transforms of the images.
    rotations
        ``(B, 3, 3)``.
    shifts_angstrom
        ``(B, 2)`` or ``None``.
    ctf
        :class:`cryoviz.ctf.CTFParams` of the ``B`` images, or ``None``.
    pixel_size_angstrom
        Pixel size of the images.
    max_shell
        Highest shell of the fit.

    Returns
    -------
    float
        The new ``amplitude_scale``.
    """
    from cryoviz.imaging import apply_shift_and_ctf  # noqa: PLC0415

    d = int(targets.shape[-2])
    z = None
    if volume.latent_dim:
        z = torch.zeros(rotations.shape[0], volume.latent_dim, device=rotations.device)
    model = apply_shift_and_ctf(volume.slices(rotations, z, d, pixel_size_angstrom),
                                pixel_size_angstrom, shifts_angstrom, ctf)
    top = max(2, d // 8) if max_shell is None else int(max_shell)
    weights = shell_matrix(d, top, 1, targets.device, torch.float64).sum(1)
    mflat = model.reshape(model.shape[0], -1).to(torch.complex128)
    tflat = targets.reshape(targets.shape[0], -1).to(torch.complex128)
    cross = float(((mflat * tflat.conj()).real @ weights).sum())
    power = float(((mflat.abs() ** 2) @ weights).sum())
    current = float(volume.amplitude_scale)
    if cross > 0 and power > 0:
        return current * cross / power
    ratio = float(torch.sqrt((tflat.abs() ** 2).mean() / (mflat.abs() ** 2).mean().clamp(
        min=1e-30)))
    return current * ratio
