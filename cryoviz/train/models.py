"""The training loop's models: built from a recipe, then put on the data's scale.

:func:`build_models` makes a recipe's volume model and encoder;
:func:`initialise_models` sets, on a fresh start, every scale that depends on
the data (the implicit network's output scale, the voxel map's scale, a
Gaussian mixture's amplitude, a reference map's least-squares factor, the
encoder's input scale) and the 3dflex consensus map.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from cryoviz.fourier import centered_rfft2
from cryoviz.inference.amortized_encoder import PoseEncoder
from cryoviz.io.particles import ParticleSet
from cryoviz.train.amortized_poses import fit_scale_without_poses, pose_shift_bound_angstrom
from cryoviz.train.data import ParticleBatches
from cryoviz.train.encoders import (
    GradientEncoder,
    JointPoseLatentEncoder,
    LatentTable,
    MLPEncoder,
)
from cryoviz.train.recipes import Recipe
from cryoviz.volumes import ImplicitVolume, VolumeModel, VoxelVolume
from cryoviz.volumes.deformation import DeformationVolume, consensus_map
from cryoviz.volumes.gmm import GaussianMixtureVolume, fit_amplitude_scale, load_reference
from cryoviz.volumes.residual import (
    ReferenceResidualVolume,
    fit_reference_scale,
    load_reference_map,
)

__all__ = ["build_models", "initialise_models", "as_tensor"]


def build_models(recipe: Recipe, box_size: int, pixel_size_angstrom: float,
                 n_particles: int) -> tuple[VolumeModel, torch.nn.Module | None]:
    """The recipe's volume model and encoder (``None`` for homogeneous recipes)."""
    if recipe.volume == "voxel":
        volume: VolumeModel = VoxelVolume(box_size, pixel_size_angstrom)
    elif recipe.volume == "deformation":
        volume = DeformationVolume(
            box_size, pixel_size_angstrom, recipe.latent_dim,
            control_points=recipe.control_points, width=recipe.width, depth=recipe.depth,
            displacement_scale_px=recipe.max_shift_px,
            smoothness_weight=recipe.smoothness_weight,
            rigidity_weight=recipe.rigidity_weight, seed=recipe.seed)
    elif recipe.volume == "gmm":
        count = recipe.gaussian_count(box_size)
        initial = (None if recipe.reference is None else
                   load_reference(recipe.reference, recipe.reference_level,
                                  recipe.reference_bfactor_a2, count))
        volume = GaussianMixtureVolume(
            box_size, pixel_size_angstrom, latent_dim=recipe.latent_dim, initial=initial,
            n_gaussians=count, width=recipe.width, depth=recipe.depth,
            max_shift_px=recipe.max_shift_px, seed=recipe.seed,
            move_amplitudes=recipe.move_amplitudes, bond_weight=recipe.bond_weight,
            contact_weight=recipe.contact_weight,
            contact_cutoff_angstrom=recipe.contact_cutoff_angstrom)
    else:
        volume = ImplicitVolume(
            box_size, pixel_size_angstrom, latent_dim=recipe.latent_dim, width=recipe.width,
            depth=recipe.depth, pe_dim=recipe.random_frequencies(box_size),
            pe_sigma=recipe.pe_sigma,
            domain=recipe.domain, seed=recipe.seed, residual_relu=recipe.residual_relu,
        )
        if recipe.reference is not None:  # V(z) = V0 + dV(z)
            volume = ReferenceResidualVolume(
                load_reference_map(recipe.reference, box_size, pixel_size_angstrom,
                                   recipe.reference_bfactor_a2), volume)
    if recipe.encoder in ("vae", "ae") and recipe.encoder_input == "fit_gradient":
        encoder: torch.nn.Module | None = GradientEncoder(
            volume.n_gaussians, recipe.zdim, width=recipe.enc_width, depth=recipe.enc_depth,
            variational=recipe.encoder == "vae", input_norm=recipe.fit_gradient_norm)
    elif recipe.encoder in ("vae", "ae"):
        encoder = MLPEncoder(
            box_size, recipe.zdim, width=recipe.enc_width, depth=recipe.enc_depth,
            variational=recipe.encoder == "vae", input_domain=recipe.encoder_input)
    elif recipe.encoder == "joint":
        encoder = JointPoseLatentEncoder(
            box_size, pose_shift_bound_angstrom(box_size, pixel_size_angstrom), recipe.zdim,
            recipe.pose_channels, seed=recipe.seed, heads=recipe.pose_heads)
    elif recipe.encoder == "table":
        encoder = LatentTable(n_particles, recipe.zdim, noise_std=recipe.table_noise_std,
                              seed=recipe.seed)
    else:
        encoder = None
    return volume, encoder


@torch.no_grad()
def initialise_models(volume: VolumeModel, encoder: torch.nn.Module | None, recipe: Recipe,
                      particles: ParticleSet, batches: ParticleBatches, inside: torch.Tensor,
                      device: torch.device, pose_encoder: PoseEncoder | None = None) -> float:
    """Put a fresh model on the data's scale; return the data scale ``s``.

    Parameters
    ----------
    volume, encoder
        From :func:`build_models`.
    recipe
        The run's recipe.
    particles, batches
        The training particles (known poses) and their batches at the training box.
    inside
        ``(d, d // 2 + 1)`` bool: the half-plane coefficients within Nyquist.
    device
        Where the models live.
    pose_encoder
        The amortized pose encoder (its input scale is set), or ``None``.

    Returns
    -------
    float
        RMS of the images' transforms within Nyquist (the loss's ``s``).
    """
    apix = float(volume.pixel_size_angstrom)
    box = int(volume.box_size)
    data_scale, image_std = _data_scales(batches, inside)
    if isinstance(volume, ReferenceResidualVolume):
        volume.reference_scale.fill_(fit_reference_scale(
            volume, *_first_images(particles, batches, device), apix))
        volume.delta.output_scale.fill_(data_scale)
        volume.delta.mlp.out.weight.zero_()  # dV = 0 at the start: V = V0
        volume.delta.mlp.out.bias.zero_()
    elif isinstance(volume, ImplicitVolume):
        volume.output_scale.fill_(data_scale)
    elif isinstance(volume, (VoxelVolume, DeformationVolume)):
        volume.scale.fill_(data_scale / box**1.5)
        if isinstance(volume, DeformationVolume) and recipe.canonical_init == "consensus":
            volume.set_canonical(consensus_map(
                batches.read, batches.n, as_tensor(particles.rotations, device), apix,
                as_tensor(particles.shifts_angstrom, device),
                None if particles.ctf is None else particles.ctf.to(device)))
    elif isinstance(volume, GaussianMixtureVolume) and recipe.poses == "amortized":
        volume.amplitude_scale.mul_(fit_scale_without_poses(volume, batches, particles, device))
    elif isinstance(volume, GaussianMixtureVolume):
        volume.amplitude_scale.fill_(fit_amplitude_scale(
            volume, *_first_images(particles, batches, device), apix))
    if isinstance(encoder, MLPEncoder):
        encoder.input_scale.fill_(image_std)
    if pose_encoder is not None:
        pose_encoder.input_scale.fill_(image_std)
    return data_scale


def _first_images(particles: ParticleSet, batches: ParticleBatches, device: torch.device,
                  n_images: int = 256) -> tuple:
    """Transforms ``(B, d, d // 2 + 1)``, rotations, shifts and CTF of the first images."""
    first = np.arange(min(batches.n, n_images))
    return (centered_rfft2(batches.read(first)).to(device),
            as_tensor(particles.rotations[first], device),
            None if particles.shifts_angstrom is None else
            as_tensor(particles.shifts_angstrom[first], device),
            None if particles.ctf is None else
            particles.ctf.subset(torch.as_tensor(first)).to(device))


def as_tensor(array: np.ndarray | None, device) -> torch.Tensor | None:
    """``array`` as a float32 tensor on ``device`` (None stays None)."""
    return None if array is None else torch.as_tensor(array, dtype=torch.float32, device=device)


def _data_scales(batches: ParticleBatches, inside: torch.Tensor) -> tuple[float, float]:
    """RMS of the image transforms within Nyquist and the real-space std (first images).

    Read in batches of 64 so that memory stays bounded for large boxes.
    """
    n_images = min(batches.n, 512)
    power_sum, value_sum, square_sum, count = 0.0, 0.0, 0.0, 0
    for start in range(0, n_images, 64):
        images = batches.read(np.arange(start, min(n_images, start + 64))).double()
        power_sum += float((centered_rfft2(images).abs() ** 2)[:, inside].sum())
        value_sum += float(images.sum())
        square_sum += float((images**2).sum())
        count += int(images.shape[0])
    power = power_sum / (count * int(inside.sum()))
    pixels = count * batches.box_size**2
    variance = max(square_sum / pixels - (value_sum / pixels) ** 2, 0.0) * pixels / max(
        pixels - 1, 1)
    return math.sqrt(max(power, 1e-30)), max(math.sqrt(variance), 1e-12)
