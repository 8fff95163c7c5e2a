"""Per-particle Gaussian pose posteriors ``q(R, t)`` and their fit by SGD on the ELBO.

The family (used by :mod:`cryoviz.inference.variational`, recipe ``fstdiff``)::

    R = R0 exp([delta + sigma_rot * eps]_x),   eps ~ N(0, I_3)      (tangent space)
    t = mu_t + sigma_t * eta,                  eta ~ N(0, I_2)      (pixels)

``R0`` is a fixed base rotation (particle -> lab), ``delta`` a learned tangent
offset (radians, in the particle frame: right multiplication) that is folded into
``R0`` after each fit (:func:`fold`), ``sigma_rot`` three standard deviations
(radians) and ``sigma_t`` one isotropic shift standard deviation (pixels).

The negative ELBO of image ``i`` minimised by :func:`fit_batch` is::

    -E_q[log p(X_i | R, t, V)] - H[q(R)] + KL(q(t) || N(0, s0^2 I))

with the Gaussian log-likelihood of :mod:`cryoviz.inference.pose_scoring`
(``log p = -sum_p w_p |X_p - CTF_p S_t(p) P_R(p)|^2`` up to a constant, ``w_p`` from
the per-shell noise), estimated with antithetic reparameterised samples
(``eps`` and ``-eps``, which cancel the linear term of the expansion around the
mean and so most of the gradient noise of the mean). The prior on rotations is
uniform on SO(3), so its KL is minus the entropy up to a constant; the entropy
of the tangent Gaussian, ``sum_j log sigma_j`` + const, is that of ``q(R)`` while
``sigma`` is small (the exponential map's Jacobian is ``1 - |v|^2 / 12 + ...``).

Also here: :func:`initial_q` (``q`` from an exact search against the starting
map, since variational EM is local) and :func:`noise_model` (per-shell noise
and per-particle noise scale from residual powers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cryoviz.geometry import SO3Grid
from cryoviz.geometry.rotations import axis_angle_to_matrix
from cryoviz.inference.pose_scoring import PixelSet, score_poses, shift_grid, shift_phases
from cryoviz.inference.pose_search import refine_candidates, summarise, top_rotations
from cryoviz.projection import extract_points

__all__ = ["PoseQ", "sample_rotations", "sample_shifts", "fit_batch", "fold",
           "log_likelihood", "initial_q", "noise_model", "SIGMA_ROT_BOUNDS_RAD",
           "SIGMA_SHIFT_BOUNDS_PX"]

SIGMA_ROT_BOUNDS_RAD = (math.radians(0.01), math.radians(45.0))
SIGMA_SHIFT_BOUNDS_PX = (0.005, 5.0)


@dataclass
class PoseQ:
    """Variational parameters of ``B`` particles (tensors, updated in place by the fit).

    Attributes
    ----------
    base
        ``(B, 3, 3)`` float64 base rotations ``R0``.
    log_sigma_rot
        ``(B, 3)`` log standard deviations (radians) of the tangent Gaussian.
    shift_px
        ``(B, 2)`` mean shifts ``(x, y)`` in pixels.
    log_sigma_shift
        ``(B,)`` log standard deviation of each shift coordinate (pixels).
    """

    base: torch.Tensor
    log_sigma_rot: torch.Tensor
    shift_px: torch.Tensor
    log_sigma_shift: torch.Tensor

    def subset(self, index: torch.Tensor) -> PoseQ:
        """Copies of the rows ``index``."""
        return PoseQ(self.base[index].clone(), self.log_sigma_rot[index].clone(),
                     self.shift_px[index].clone(), self.log_sigma_shift[index].clone())

    def assign(self, index: torch.Tensor, other: PoseQ) -> None:
        """Write ``other``'s rows into rows ``index``."""
        self.base[index] = other.base
        self.log_sigma_rot[index] = other.log_sigma_rot
        self.shift_px[index] = other.shift_px
        self.log_sigma_shift[index] = other.log_sigma_shift

    def angular_spread_deg(self) -> torch.Tensor:
        """``(B,)`` root-mean-square angle of ``q(R)`` about ``R0``: ``sqrt(sum_j sigma_j^2)``."""
        return torch.rad2deg(torch.sqrt(torch.exp(2 * self.log_sigma_rot).sum(-1)))

    def shift_spread_px(self) -> torch.Tensor:
        """``(B,)`` root-mean-square distance of ``q(t)`` from its mean: ``sqrt(2) sigma_t``."""
        return math.sqrt(2.0) * torch.exp(self.log_sigma_shift)


def sample_rotations(base: torch.Tensor, sigma_rad: torch.Tensor, n_samples: int,
                     generator: torch.Generator | None = None,
                     offset: torch.Tensor | None = None) -> torch.Tensor:
    """Draws ``R0 exp([offset + sigma * eps]_x)`` of ``q(R)``.

    Parameters
    ----------
    base
        ``(B, 3, 3)`` base rotations.
    sigma_rad
        ``(B, 3)`` tangent standard deviations (radians).
    n_samples
        Draws per particle.
    generator
        Random generator (seeded draws).
    offset
        ``(B, 3)`` tangent offset (radians); zero when ``None``.

    Returns
    -------
    torch.Tensor
        ``(B, n_samples, 3, 3)``.
    """
    eps = torch.randn((base.shape[0], n_samples, 3), generator=generator,
                      dtype=sigma_rad.dtype, device=sigma_rad.device)
    v = sigma_rad[:, None] * eps
    if offset is not None:
        v = v + offset[:, None]
    return base[:, None].to(v.dtype) @ axis_angle_to_matrix(v)


def sample_shifts(mean_px: torch.Tensor, sigma_px: torch.Tensor, n_samples: int,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Draws ``(B, n_samples, 2)`` of ``q(t)`` (pixels) from means ``(B, 2)``, sds ``(B,)``."""
    eta = torch.randn((mean_px.shape[0], n_samples, 2), generator=generator,
                      dtype=mean_px.dtype, device=mean_px.device)
    return mean_px[:, None] + sigma_px[:, None, None] * eta


def log_likelihood(x: torch.Tensor, ctf: torch.Tensor, w: torch.Tensor,
                   volume_ft: torch.Tensor, pix: PixelSet, rotations: torch.Tensor,
                   shifts_px: torch.Tensor) -> torch.Tensor:
    """Gaussian log-likelihoods ``(B, S)`` of ``S`` poses per image (up to a constant).

    Parameters
    ----------
    x, ctf
        ``(B, P)`` image transforms and CTFs at the pixels ``pix``.
    w
        ``(P,)`` inverse noise variance ``h_p / (2 sigma2(s_p))``, or ``(B, P)`` per image.
    volume_ft
        ``(Dp, Dp, Dp)`` complex map transform (:func:`cryoviz.imaging.volume_to_fourier`).
    pix
        The pixels.
    rotations
        ``(B, S, 3, 3)`` rotations (differentiable).
    shifts_px
        ``(B, S, 2)`` shifts in pixels (differentiable).
    """
    b, s = rotations.shape[:2]
    proj = extract_points(volume_ft, rotations.reshape(-1, 3, 3), pix.frequencies)
    proj = proj.reshape(b, s, -1)
    phases = shift_phases(shifts_px, pix).to(proj.dtype)
    model = ctf[:, None].to(proj.real.dtype) * phases * proj
    r = x[:, None].to(proj.dtype) - model
    w = w.to(proj.real.dtype)
    return -((r.real**2 + r.imag**2) * (w if w.ndim == 1 else w[:, None])).sum(-1)


def fit_batch(q: PoseQ, x: torch.Tensor, ctf: torch.Tensor, w: torch.Tensor,
              volume_ft: torch.Tensor, pix: PixelSet, n_steps: int, n_pairs: int,
              lr_rotation_rad: float, lr_shift_px: float, lr_log_sigma: float,
              prior_shift_sd_px: float, generator: torch.Generator | None = None
              ) -> torch.Tensor:
    """Fit ``q`` of one batch by Adam on the negative ELBO (volume fixed); fold the offset.

    Parameters
    ----------
    q
        The batch's :class:`PoseQ`, updated in place (the learned tangent offset is
        folded into ``q.base`` at the end).
    x, ctf, w, volume_ft, pix
        As in :func:`log_likelihood`.
    n_steps
        Adam steps (learning rates decay by a cosine to a tenth over the steps).
    n_pairs
        Antithetic pairs of samples per particle and step.
    lr_rotation_rad, lr_shift_px, lr_log_sigma
        Adam step sizes of the tangent offset (radians), the mean shift (pixels)
        and the log standard deviations.
    prior_shift_sd_px
        Standard deviation ``s0`` of the Gaussian prior on shifts (pixels).
    generator
        Random generator of the samples.

    Returns
    -------
    torch.Tensor
        ``(B,)`` ELBO estimate of each image at the last step (detached).
    """
    rdtype = volume_ft.real.dtype
    b = q.base.shape[0]
    base = q.base.to(rdtype)
    delta = torch.zeros((b, 3), dtype=rdtype, device=base.device, requires_grad=True)
    log_sr = q.log_sigma_rot.to(rdtype).clone().requires_grad_(True)
    mu_t = q.shift_px.to(rdtype).clone().requires_grad_(True)
    log_st = q.log_sigma_shift.to(rdtype).clone().requires_grad_(True)
    opt = torch.optim.Adam([
        {"params": [delta], "lr": lr_rotation_rad},
        {"params": [mu_t], "lr": lr_shift_px},
        {"params": [log_sr, log_st], "lr": lr_log_sigma},
    ])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: 0.1 + 0.45 * (1 + math.cos(math.pi * k / max(1, n_steps))))
    s0 = float(prior_shift_sd_px)
    lo_r, hi_r = (math.log(v) for v in SIGMA_ROT_BOUNDS_RAD)
    lo_t, hi_t = (math.log(v) for v in SIGMA_SHIFT_BOUNDS_PX)
    elbo = torch.zeros(b, dtype=torch.float64, device=base.device)
    for _ in range(n_steps):
        eps = torch.randn((b, n_pairs, 3), generator=generator, dtype=rdtype,
                          device=base.device)
        eta = torch.randn((b, n_pairs, 2), generator=generator, dtype=rdtype,
                          device=base.device)
        eps, eta = torch.cat([eps, -eps], 1), torch.cat([eta, -eta], 1)
        rot = base[:, None] @ axis_angle_to_matrix(delta[:, None] + log_sr.exp()[:, None] * eps)
        shifts = mu_t[:, None] + log_st.exp()[:, None, None] * eta
        expected_ll = log_likelihood(x, ctf, w, volume_ft, pix, rot, shifts).mean(1)
        entropy_rot = log_sr.sum(-1)
        var_t = torch.exp(2 * log_st)
        kl_t = (2 * (math.log(s0) - log_st) + (2 * var_t + (mu_t**2).sum(-1)) / (2 * s0**2)
                - 1.0)
        elbo_i = expected_ll + entropy_rot - kl_t
        opt.zero_grad(set_to_none=True)
        (-elbo_i.sum()).backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            log_sr.clamp_(lo_r, hi_r)
            log_st.clamp_(lo_t, hi_t)
        elbo = elbo_i.detach().to(torch.float64)
    fold(q, delta.detach())
    q.log_sigma_rot.copy_(log_sr.detach())
    q.shift_px.copy_(mu_t.detach())
    q.log_sigma_shift.copy_(log_st.detach())
    return elbo


def fold(q: PoseQ, delta: torch.Tensor) -> None:
    """Move a tangent offset ``(B, 3)`` (radians) into the base: ``R0 <- R0 exp([delta]_x)``.

    The result is re-orthonormalised (SVD) so that repeated folds do not drift off SO(3).
    """
    r = q.base @ axis_angle_to_matrix(delta.to(q.base.dtype))
    u, _, vh = torch.linalg.svd(r)
    d = torch.sign(torch.linalg.det(u @ vh))
    u = u * torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1)[:, None, :]
    q.base.copy_(u @ vh)


def noise_model(power: torch.Tensor, count: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-shell ``sigma2`` ``(S,)`` and per-particle scale ``alpha`` ``(N,)``.

    ``power`` is ``(N, S)``: each particle's summed ``|X - model|^2`` per shell
    (Hermitian-weighted, :class:`cryoviz.noise.HalfPlaneShells`), ``count`` ``(S,)``
    the weighted pixels per shell. ``alpha_i`` is the mean over the particle's
    pixels of ``|X - model|^2 / (2 sigma2)``, clamped to ``[0.1, 10]``.
    """
    n = power.shape[0]
    sigma2 = power.sum(0) / (2.0 * n * count.clamp(min=1e-30))
    sigma2[0] = sigma2[1]
    alpha = (power[:, 1:] / (2.0 * sigma2[1:])).sum(1) / count[1:].sum()
    return sigma2, alpha.clamp(0.1, 10.0)


def initial_q(x: torch.Tensor, c: torch.Tensor, w: torch.Tensor, volume_ft: torch.Tensor,
              pix: PixelSet, grid_proj: torch.Tensor, coarse_order: int, n_oversampled: int,
              shift_range_px: float, shift_step_px: float) -> PoseQ:
    """``q`` of a batch from an exact search against a (low-passed) map.

    All rotations of ``SO3Grid(coarse_order)`` (projections ``grid_proj``
    ``(R, P)``) times a disc of shifts are scored; the ``n_oversampled`` best
    rotations are refined one order finer over the whole disc at half the step
    (:func:`cryoviz.inference.pose_search.refine_candidates`). The mean is the best
    fine pose; ``sigma_rot`` (isotropic) and ``sigma_t`` come from the fine
    posterior's spreads, clamped to ``[1/4, 1]`` of the fine grid step and to
    ``[0.25, 2]`` pixels. ``x, c, w, volume_ft, pix`` as in :func:`log_likelihood`.
    """
    shifts = shift_grid(shift_range_px, shift_step_px, x.device)
    scores = score_poses(x, c, w, grid_proj, shift_phases(shifts, pix))
    top, _ = top_rotations(scores, n_oversampled)
    fine = refine_candidates(x, c, w, volume_ft, pix, coarse_order, top,
                             torch.zeros((x.shape[0], 2), dtype=torch.float64, device=x.device),
                             shift_step_px, shift_range_px=shift_range_px)
    summ = summarise(fine, 1, 1.0)
    step_rad = math.radians(SO3Grid(coarse_order + 1).angular_step_deg)
    sigma_rot = torch.deg2rad(summ["angular_spread_deg"]) / math.sqrt(3.0)
    sigma_rot = sigma_rot.clamp(0.25 * step_rad, step_rad)
    sigma_t = (summ["shift_spread_angstrom"] / math.sqrt(2.0)).clamp(0.25, 2.0)
    return PoseQ(base=summ["rotations"].to(torch.float64),
                 log_sigma_rot=torch.log(sigma_rot)[:, None].expand(-1, 3).clone(),
                 shift_px=summ["shifts_angstrom"].to(torch.float64),
                 log_sigma_shift=torch.log(sigma_t).to(torch.float64))
