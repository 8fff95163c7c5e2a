"""Amortized poses in the shared training loop (recipe ``poses = 'amortized'``).

A CNN (:class:`cryoviz.inference.amortized_encoder.PoseEncoder`) maps each image
to ``H`` pose hypotheses ``(R_ih, t_ih)``. The loop renders the model at every
hypothesis (the particle's latent ``z_i`` repeated) and the data term of image
``i`` is the smallest over its hypotheses (winner-takes-all): each head is
pulled only toward the images it already explains best, so heads spread over
the modes of the pose likelihood instead of averaging between them.

Schedule: the loss sees the frequencies below a band limit that rises linearly
from ``recipe.pose_start_band`` to Nyquist over the first ``max(pose_only_epochs,
1)`` epochs. During the first ``pose_only_epochs`` epochs only the pose encoder
learns: the volume is held at ``z = 0`` (the base structure of a reference-based
``gmm`` volume).

Per-particle outputs (:class:`cryoviz.inference.posterior.PosePosterior`): the
best pose is the hypothesis with the smallest full-band error at the latent
mean; the top-k are all ``H`` hypotheses sorted by weight, the weights the
softmax of their Gaussian log-likelihoods ``-|X - M_h|^2 / sigma^2`` (one complex
Gaussian per half-plane coefficient) with ``sigma^2`` the mean squared residual
per coefficient of the best hypotheses;
the spreads are the weighted RMS angle (and shift distance) of the hypotheses
from the best one. They describe how much the encoder's own hypotheses
disagree, not a calibrated posterior.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from cryoviz.errors import InputError
from cryoviz.fourier import centered_rfft2
from cryoviz.geometry import geodesic_distance_deg
from cryoviz.inference.amortized_encoder import PoseEncoder, render_hypotheses
from cryoviz.inference.em_start import fit_map_scale_to_images
from cryoviz.inference.posterior import PosePosterior
from cryoviz.io.particles import ParticleSet
from cryoviz.train.data import ParticleBatches
from cryoviz.train.encoders import JointPoseLatentEncoder
from cryoviz.train.recipes import Recipe

__all__ = ["build_pose_encoder", "pose_shift_bound_angstrom", "band_limit", "hypothesis_errors",
           "fit_scale_without_poses", "pose_posterior"]


def pose_shift_bound_angstrom(box_size: int, pixel_size_angstrom: float) -> float:
    """Bound of each amortized shift component: 10% of the box extent (as for ``cryoai``)."""
    return 0.1 * box_size * pixel_size_angstrom


def build_pose_encoder(recipe: Recipe, box_size: int, pixel_size_angstrom: float,
                       encoder: torch.nn.Module | None = None
                       ) -> PoseEncoder | JointPoseLatentEncoder | None:
    """The recipe's pose encoder (``None`` when the poses are given).

    With ``recipe.encoder = 'joint'`` the latent ``encoder`` (a
    :class:`~cryoviz.train.encoders.JointPoseLatentEncoder`) is also the pose
    encoder and is returned itself.
    """
    if recipe.poses != "amortized":
        return None
    if isinstance(encoder, JointPoseLatentEncoder):
        return encoder
    return PoseEncoder(box_size, pose_shift_bound_angstrom(box_size, pixel_size_angstrom),
                       recipe.pose_channels, seed=recipe.seed, heads=recipe.pose_heads)


def band_limit(recipe: Recipe, step: int, steps_per_epoch: int) -> float:
    """Band limit (cycles / pixel) of the loss at 0-based optimizer ``step``."""
    ramp = max(recipe.pose_only_epochs, 1) * max(steps_per_epoch, 1)
    return recipe.pose_start_band + (0.5 - recipe.pose_start_band) * min(step / ramp, 1.0)


def hypothesis_errors(slice_volume: Callable, rotations: torch.Tensor, shifts: torch.Tensor,
                      z: torch.Tensor | None, target: torch.Tensor, ctf, weight_2d: torch.Tensor,
                      box_size: int, pixel_size_angstrom: float,
                      ctf_values: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted squared residuals of every hypothesis.

    Parameters
    ----------
    slice_volume
        ``(rotations (M, 3, 3), z (M, L) or None, box, apix) -> (M, d, d // 2 + 1)``
        central slices (the loop's wrapped ``volume.slices``).
    rotations, shifts
        ``(B, H, 3, 3)`` and ``(B, H, 2)`` (Å) hypotheses.
    z
        ``(B, L)`` latents of the images (``None`` for homogeneous volumes).
    target
        ``(B, d, d // 2 + 1)`` centred half transforms of the images.
    ctf
        :class:`cryoviz.ctf.CTFParams` of the ``B`` images or ``None``.
    weight_2d
        ``(d, d // 2 + 1)`` per-coefficient weights (band limit included).
    box_size, pixel_size_angstrom
        The training box and its pixel size.
    ctf_values
        ``(B, d, d // 2 + 1)`` ``ctf`` already evaluated on the half grid, or None.

    Returns
    -------
    torch.Tensor
        ``(B, H)``: ``sum_k w(k) |M_ih(k) - X_i(k)|^2``.
    """
    model = render_hypotheses(slice_volume, rotations, shifts, z, ctf, box_size,
                              pixel_size_angstrom, ctf_values)
    return ((model - target[:, None]).abs() ** 2 * weight_2d).sum(dim=(-2, -1))


@torch.no_grad()
def fit_scale_without_poses(volume, batches: ParticleBatches, particles: ParticleSet,
                            device: torch.device, n_images: int = 256) -> float:
    """Factor that puts the map at ``z = 0`` on the images' scale, poses unknown.

    The map is rendered at the training box and scaled by
    :func:`cryoviz.inference.em_start.fit_map_scale_to_images` (best pose on a
    coarse SO(3) grid per image, median of the least-squares factors).
    """
    if particles.ctf is None:
        raise InputError(particles.source_path, "ctf", "CTF parameters (the map's scale is "
                         "fitted by a pose search when the poses are amortized)", "none")
    first = np.arange(min(batches.n, n_images))
    z = None if not volume.latent_dim else torch.zeros(volume.latent_dim, device=device)
    start_map = volume.volume(z).detach().float()
    return fit_map_scale_to_images(start_map, batches.read(first),
                                   particles.ctf.subset(torch.as_tensor(first)),
                                   batches.pixel_size_angstrom, device=device)


@torch.no_grad()
def pose_posterior(pose_encoder: PoseEncoder | JointPoseLatentEncoder, volume,
                   latent_means: np.ndarray | None, batches: ParticleBatches,
                   particles: ParticleSet, weight_2d: torch.Tensor, device: torch.device
                   ) -> PosePosterior:
    """Pose summaries of every particle (see the module docstring).

    Parameters
    ----------
    pose_encoder, volume
        The trained models.
    latent_means
        ``(N, L)`` latent means (``None`` for homogeneous volumes).
    batches
        The particles at the training box.
    particles
        The particle set (CTF, ids).
    weight_2d
        ``(d, d // 2 + 1)`` per-coefficient weights within Nyquist.
    device
        Where the models live.
    """
    pose_encoder.eval()
    volume.eval()
    box, apix, n = batches.box_size, batches.pixel_size_angstrom, batches.n
    rots, shifts, errors = [], [], []
    for index, images in batches.sequential():
        images = images.to(device)
        R, t = pose_encoder.hypotheses(images)
        z = None if latent_means is None else torch.as_tensor(
            latent_means[index], dtype=torch.float32, device=device)
        ctf = None if particles.ctf is None else particles.ctf.subset(
            torch.as_tensor(index)).to(device)
        errors.append(hypothesis_errors(volume.slices, R, t, z, centered_rfft2(images), ctf,
                                        weight_2d, box, apix).double().cpu())
        rots.append(R.double().cpu())
        shifts.append(t.double().cpu())
    R, t, err = torch.cat(rots), torch.cat(shifts), torch.cat(errors)
    best = err.argmin(dim=1)
    rows = torch.arange(n)
    noise_var = float(err[rows, best].mean()) / max(float((weight_2d > 0).sum()), 1.0)
    weights = torch.softmax(-(err - err[rows, best][:, None]) / max(noise_var, 1e-30),
                            dim=1)
    order = torch.argsort(weights, dim=1, descending=True)
    best_R, best_t = R[rows, best], t[rows, best]
    angle = geodesic_distance_deg(R, best_R[:, None].expand_as(R))
    distance = (t - best_t[:, None]).norm(dim=-1)
    ids = np.asarray(particles.particle_ids if particles.particle_ids is not None
                     else np.arange(n))
    return PosePosterior(
        rotations=best_R.numpy(), shifts_angstrom=best_t.numpy(),
        angular_spread_deg=(weights * angle**2).sum(1).sqrt().numpy(),
        shift_spread_angstrom=(weights * distance**2).sum(1).sqrt().numpy(),
        topk_rotations=R[rows[:, None], order].numpy(),
        topk_shifts_angstrom=t[rows[:, None], order].numpy(),
        topk_weights=torch.gather(weights, 1, order).numpy(), particle_ids=ids)
