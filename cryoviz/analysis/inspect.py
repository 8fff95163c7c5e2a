"""Per-particle inspection of a trained run: image, model projection, residual, view.

For particle ``i`` of a run's particle set, :func:`inspect_particles` returns the
image as training saw it (Fourier-cropped to the training box, see
:func:`cryoviz.train.data.fourier_downsample`), the model's image at the
particle's pose, shift, CTF and latent (the same ``apply_shift_and_ctf`` of the
volume's central slice that the training loss compares with the data), and
their difference. A model that explains the data leaves a residual with a
smaller norm than the image.

The viewing direction is the lab ``z`` axis (the projection direction)
expressed in the particle frame, ``R^T e_z``: the row ``R[2, :]`` (``xyz``).
:func:`orientation_density` histograms many such directions on the sphere with
equal-area bins (uniform in ``cos(theta)`` and ``phi``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from cryoviz.errors import InputError
from cryoviz.fourier import centered_irfft2
from cryoviz.imaging import apply_shift_and_ctf
from cryoviz.inference.posterior import POSES_FILE, read_pose_posterior
from cryoviz.io.particles import ImageSource, ParticleSet, load_particles
from cryoviz.train.data import ParticleBatches
from cryoviz.train.encoder_input import particle_encoder_input
from cryoviz.train.evaluate import Run

__all__ = ["ParticleInspection", "inspect_particles", "run_particles", "viewing_directions",
           "OrientationDensity", "orientation_density"]


@dataclass(frozen=True)
class ParticleInspection:
    """What the model makes of ``M`` particles.

    Attributes
    ----------
    indices
        ``(M,)`` int positions in the run's particle set (rows of its latents).
    particle_ids
        ``(M,)`` int rows in the original particle file.
    images
        ``(M, d, d)`` float32 particle images at the training box ``d``.
    projections
        ``(M, d, d)`` float32 model images (pose, shift, CTF and ``z`` applied).
    residuals
        ``(M, d, d)`` float32 ``images - projections``.
    viewing_directions
        ``(M, 3)`` float64 unit vectors ``R^T e_z`` (``xyz``, particle frame).
    rotations
        ``(M, 3, 3)`` float64 poses used (particle -> lab).
    z
        ``(M, L)`` float32 latents used, or None for homogeneous runs.
    pixel_size_angstrom
        Pixel size of the images at the training box, Å.
    """

    indices: np.ndarray
    particle_ids: np.ndarray
    images: np.ndarray
    projections: np.ndarray
    residuals: np.ndarray
    viewing_directions: np.ndarray
    rotations: np.ndarray
    z: np.ndarray | None
    pixel_size_angstrom: float

    def residual_ratio(self) -> np.ndarray:
        """``(M,)`` norm of the residual divided by the norm of the image."""
        res = np.linalg.norm(self.residuals.reshape(len(self.indices), -1), axis=1)
        img = np.linalg.norm(self.images.reshape(len(self.indices), -1), axis=1)
        return res / np.maximum(img, 1e-30)


def viewing_directions(rotations: np.ndarray | torch.Tensor) -> np.ndarray:
    """Unit projection directions ``R^T e_z`` ``(N, 3)`` of rotations ``(N, 3, 3)``."""
    rot = np.asarray(rotations, dtype=np.float64)
    if rot.ndim != 3 or rot.shape[1:] != (3, 3):
        raise InputError(None, "rotations", "an (N, 3, 3) array", got=f"shape {rot.shape}")
    d = rot[:, 2, :].copy()
    return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-30)


def run_particles(run: Run) -> ParticleSet:
    """The particle set a run was trained on (``[data] source`` of its ``config.toml``).

    When the run folder holds a pose posterior (``poses.npz``), its best poses
    replace the file's.
    """
    source = run.config.get("data", {}).get("source")
    if not source:
        raise InputError(run.path / "config.toml", "data.source",
                         "the path of the particle file the run was trained on", got="none")
    particles = load_particles(source)
    posterior_path = run.path / POSES_FILE
    if posterior_path.is_file():
        posterior = read_pose_posterior(posterior_path)
        if len(posterior) != len(particles):
            raise InputError(posterior_path, "rotations", f"{len(particles)} particles",
                             got=len(posterior))
        particles.rotations = np.asarray(posterior.rotations, dtype=np.float64)
        particles.shifts_angstrom = np.asarray(posterior.shifts_angstrom, dtype=np.float64)
    return particles


def _check_indices(indices, n: int) -> np.ndarray:
    index = np.atleast_1d(np.asarray(indices))
    if index.dtype == bool:
        index = np.flatnonzero(index)
    if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer):
        raise InputError(None, "indices", "integer particle positions", got=str(index.dtype))
    if index.size and (index.min() < 0 or index.max() >= n):
        raise InputError(None, "indices", f"positions in [0, {n})",
                         got=f"[{index.min()}, {index.max()}]")
    return index.astype(np.int64)


@torch.no_grad()
def inspect_particles(run: Run, indices, particles: ParticleSet | None = None
                      ) -> ParticleInspection:
    """Images, model projections, residuals and viewing directions of particles.

    Parameters
    ----------
    run
        A loaded run (:func:`cryoviz.train.evaluate.load_run`).
    indices
        ``(M,)`` positions in the run's particle set (or a boolean mask).
    particles
        The particle set to use (default: :func:`run_particles`); its poses,
        shifts and CTF define the model images, so passing a set with other
        poses shows how well those poses explain the images.

    Returns
    -------
    ParticleInspection
    """
    if particles is None:
        particles = run_particles(run)
    n = len(particles)
    if particles.rotations is None:
        raise InputError(particles.source_path, "poses", "rotations for every particle",
                         got="none")
    if run.mu is not None and len(run.mu) != n:
        raise InputError(particles.source_path, "particles",
                         f"the {len(run.mu)} particles the run was trained on", got=n)
    index = _check_indices(indices, n)
    device = next(iter(run.volume.parameters()), torch.zeros(())).device
    box, apix = run.box_size, run.pixel_size_angstrom
    with ImageSource(particles) as source:
        batches = ParticleBatches(source, batch_size=max(1, len(index)), box_size=box)
        images = batches.read(index) if len(index) else torch.zeros((0, box, box))
    rot = torch.as_tensor(particles.rotations[index], dtype=torch.float32, device=device)
    shifts = (None if particles.shifts_angstrom is None else
              torch.as_tensor(particles.shifts_angstrom[index], dtype=torch.float32,
                              device=device))
    ctf = None if particles.ctf is None else particles.ctf.subset(
        torch.as_tensor(index)).to(device)
    z = None
    if run.latent_dim > 0:
        if run.mu is not None:
            z = torch.as_tensor(np.asarray(run.mu)[index], dtype=torch.float32, device=device)
        elif run.encoder is not None:
            view = particle_encoder_input(run.recipe, run.encoder, particles, apix, device,
                                          run.volume)
            sel = torch.as_tensor(index, device=device)
            z = run.encoder(view(images.to(device), sel), sel)[0]
        else:
            raise InputError(run.path, "latents.npz", "latents or an encoder", got="none")
    if len(index):
        slices = run.volume.slices(rot, z, box, apix)
        model_ft = apply_shift_and_ctf(slices, apix, shifts, ctf)
        projections = centered_irfft2(model_ft, box).real.float().cpu()
    else:
        projections = torch.zeros((0, box, box))
    images_np = images.float().cpu().numpy()
    projections_np = projections.numpy()
    return ParticleInspection(
        indices=index,
        particle_ids=np.asarray(particles.particle_ids)[index],
        images=images_np,
        projections=projections_np,
        residuals=images_np - projections_np,
        viewing_directions=viewing_directions(particles.rotations[index].reshape(-1, 3, 3)),
        rotations=np.asarray(particles.rotations[index], dtype=np.float64),
        z=None if z is None else z.float().cpu().numpy(),
        pixel_size_angstrom=float(apix),
    )


@dataclass(frozen=True)
class OrientationDensity:
    """Equal-area histogram of directions on the unit sphere.

    Attributes
    ----------
    density
        ``(n_theta, n_phi)`` counts per bin divided by the mean count per bin
        (1 everywhere for a uniform distribution).
    cos_theta_edges
        ``(n_theta + 1,)`` bin edges of ``cos(theta) = d_z`` from -1 to 1.
    phi_edges
        ``(n_phi + 1,)`` bin edges of ``phi = atan2(d_y, d_x)`` from -pi to pi.
    counts
        ``(n_theta, n_phi)`` raw counts.
    """

    density: np.ndarray
    cos_theta_edges: np.ndarray
    phi_edges: np.ndarray
    counts: np.ndarray

    def bin_of(self, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bin indices ``(i_theta (N,), i_phi (N,))`` of unit directions ``(N, 3)``."""
        d = np.asarray(directions, dtype=np.float64).reshape(-1, 3)
        d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-30)
        n_theta, n_phi = self.counts.shape
        i_t = np.clip(((d[:, 2] + 1.0) / 2.0 * n_theta).astype(np.int64), 0, n_theta - 1)
        phi = np.arctan2(d[:, 1], d[:, 0])
        i_p = np.clip(((phi + math.pi) / (2 * math.pi) * n_phi).astype(np.int64), 0, n_phi - 1)
        return i_t, i_p

    def at(self, directions: np.ndarray) -> np.ndarray:
        """Relative density ``(N,)`` at unit directions ``(N, 3)``."""
        i_t, i_p = self.bin_of(directions)
        return self.density[i_t, i_p]


def orientation_density(directions: np.ndarray, n_bins: int = 12) -> OrientationDensity:
    """Histogram unit directions ``(N, 3)`` in ``n_bins x 2 n_bins`` equal-area bins.

    Bins are uniform in ``cos(theta)`` and in ``phi``, so every bin covers the
    same solid angle and ``density`` is proportional to the probability density
    on the sphere (mean 1).
    """
    d = np.asarray(directions, dtype=np.float64)
    if d.ndim != 2 or d.shape[1] != 3 or len(d) == 0:
        raise InputError(None, "directions", "a non-empty (N, 3) array", got=f"shape {d.shape}")
    if int(n_bins) < 1:
        raise InputError(None, "n_bins", "at least 1", got=n_bins)
    n_theta, n_phi = int(n_bins), 2 * int(n_bins)
    empty = OrientationDensity(
        density=np.zeros((n_theta, n_phi)),
        cos_theta_edges=np.linspace(-1.0, 1.0, n_theta + 1),
        phi_edges=np.linspace(-math.pi, math.pi, n_phi + 1),
        counts=np.zeros((n_theta, n_phi), dtype=np.int64))
    i_t, i_p = empty.bin_of(d)
    counts = np.zeros((n_theta, n_phi), dtype=np.int64)
    np.add.at(counts, (i_t, i_p), 1)
    density = counts / (len(d) / (n_theta * n_phi))
    return OrientationDensity(density=density, cos_theta_edges=empty.cos_theta_edges,
                              phi_edges=empty.phi_edges, counts=counts)
