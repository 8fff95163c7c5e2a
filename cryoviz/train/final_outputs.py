"""The outputs a training run writes after its last epoch: latents, maps and poses.

:func:`write_final` is called by :func:`cryoviz.train.loop.iter_train` (rank 0)
when the last epoch is done, or when a finished run is resumed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cryoviz.inference.amortized_encoder import PoseEncoder
from cryoviz.inference.posterior import export_poses
from cryoviz.io.mrc import atomic_output, write_volume
from cryoviz.io.particles import ParticleSet
from cryoviz.train.amortized_poses import pose_posterior
from cryoviz.train.data import ParticleBatches, to_device
from cryoviz.train.encoder_input import EncoderView
from cryoviz.train.encoders import LatentTable
from cryoviz.train.memory import release_free_heap
from cryoviz.train.run_files import write_z_pkl
from cryoviz.volumes import VolumeModel
from cryoviz.volumes.deformation import DeformationVolume

__all__ = ["encode_all", "write_final"]


@torch.no_grad()
def encode_all(encoder: torch.nn.Module, batches: ParticleBatches, device: torch.device,
               view: EncoderView | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Latent means ``(N, L)`` and log-variances ``(N, L)`` (or None) of every particle.

    Images are read one batch at a time (``batches.batch_size``) in stack order,
    corrected by ``view`` (the run's encoder input, as in training) when given.
    The outputs are filled in place in two ``(N, L)`` float32 arrays allocated at
    the first batch, rather than kept as one small tensor per batch: small
    long-lived blocks allocated between each batch's large temporaries pin the
    malloc heap, which then grew with the number of batches (about 200 MB for a
    4,800-image stack of 128 px images, measured 2026-11-25).
    """
    encoder.eval()
    if isinstance(encoder, LatentTable):
        return encoder.table.detach().cpu().numpy().astype(np.float32), None
    mu_all: np.ndarray | None = None
    logvar_all: np.ndarray | None = None
    for index, images in batches.sequential():
        sel = to_device(index, device)
        images = to_device(images, device)
        mu, logvar = encoder(images if view is None else view(images, sel), sel)
        if mu_all is None:
            mu_all = np.empty((batches.n, mu.shape[1]), dtype=np.float32)
            if logvar is not None:
                logvar_all = np.empty((batches.n, logvar.shape[1]), dtype=np.float32)
        mu_all[index] = mu.cpu().numpy()
        if logvar_all is not None and logvar is not None:
            logvar_all[index] = logvar.cpu().numpy()
        del mu, logvar, images
    if mu_all is None:
        raise ValueError("encode_all needs at least one particle")
    return mu_all, logvar_all


def write_final(out: Path, volume: VolumeModel, encoder: torch.nn.Module | None,
                 batches: ParticleBatches, particles: ParticleSet, apix: float,
                 device: torch.device, pose_encoder: PoseEncoder | None,
                 weight_2d: torch.Tensor, view: EncoderView | None = None) -> None:
    """Write the outputs of a finished run into the run folder ``out``.

    Latent recipes: ``latents.npz`` (``mu``, ``particle_ids`` and ``logvar`` for a
    VAE) and ``z.pkl`` (:func:`encode_all`), and for ``3dflex``
    ``volumes/canonical.mrc``; homogeneous recipes: ``volumes/map.mrc``. With a pose
    encoder also the inferred poses (``poses.npz``, ``particles.star`` / ``.cs``,
    ``poses.pkl``).
    """
    volume.eval()
    mu = None
    if encoder is not None:
        mu, logvar = encode_all(encoder, batches, device, view)
        arrays = {"mu": mu, "particle_ids": particles.particle_ids}
        if logvar is not None:
            arrays["logvar"] = logvar
        with atomic_output(out / "latents.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
        write_z_pkl(out / "z.pkl", mu)
        if isinstance(volume, DeformationVolume):  # 3dflex: the canonical map too
            with torch.no_grad():
                canonical = volume.volume(None).detach().cpu().numpy()
            write_volume(out / "volumes" / "canonical.mrc", canonical, apix)
    else:
        with torch.no_grad():
            vol = volume.volume(None).detach().cpu().numpy()
        write_volume(out / "volumes" / "map.mrc", vol, apix)
    if pose_encoder is not None:  # poses.npz, particles.star / .cs, poses.pkl
        export_poses(pose_posterior(pose_encoder, volume, mu, batches, particles, weight_2d,
                                    device), particles, out)
    release_free_heap()  # glibc keeps the freed batch buffers resident otherwise
