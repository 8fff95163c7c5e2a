"""The common start of the EM refinements (``relion-refine``, ``fstdiff``).

The starting map is checked, low-passed, put on the data's scale
(:func:`fit_map_scale`) and used for both half maps; the gold-standard half
sets, the half-plane shell layout, the highest shell the E-step may use and
the first iteration's limit (the low-pass) are fixed once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from cryoviz.ctf import CTFParams, compute_ctf_2d
from cryoviz.errors import InputError
from cryoviz.fourier import lowpass_volume
from cryoviz.geometry import SO3Grid
from cryoviz.imaging import images_to_fourier, volume_to_fourier
from cryoviz.inference.pose_scoring import pixel_set, score_poses, shift_grid, shift_phases
from cryoviz.io.particles import ImageSource, ParticleSet
from cryoviz.noise import HalfPlaneShells, half_plane_shells
from cryoviz.projection import extract_points
from cryoviz.reconstruct import half_sets

__all__ = ["EMStart", "prepare_em_start", "image_batches", "check_em_inputs", "fit_map_scale",
           "fit_map_scale_to_images",
           "initial_noise", "assemble_rows"]


@dataclass(frozen=True)
class EMStart:
    """What both EM refinements fix before their first iteration.

    Attributes
    ----------
    half_maps
        ``(2, D, D, D)`` float64: the scaled, low-passed starting map, twice.
    halves
        ``(N,)`` gold-standard half of every particle (0 or 1).
    layout
        The half-plane shell layout of the box.
    cap
        Highest shell any E-step may use (``resolution_limit_angstrom``).
    first_limit
        The first E-step's highest shell (the starting low-pass).
    ctf
        Every particle's CTF parameters on the device.
    """

    half_maps: torch.Tensor
    halves: np.ndarray
    layout: HalfPlaneShells
    cap: int
    first_limit: int
    ctf: CTFParams


def prepare_em_start(particles: ParticleSet, initial_map, initial_lowpass_angstrom: float | None,
                     resolution_limit_angstrom: float | None, seed: int,
                     device: torch.device) -> EMStart:
    """Check and scale the starting map ``(D, D, D)``; fix the halves and shell limits."""
    vol0 = torch.as_tensor(np.asarray(initial_map), dtype=torch.float64)
    check_em_inputs(particles, vol0)
    box, apix = particles.box_size, particles.pixel_size_angstrom
    if initial_lowpass_angstrom is not None:
        vol0 = lowpass_volume(vol0, initial_lowpass_angstrom, apix).to(torch.float64)
    vol0 = vol0 * fit_map_scale(vol0.float(), particles, device=device)
    layout = half_plane_shells(box, device=device)
    cap = layout.n_shells - 1
    if resolution_limit_angstrom is not None:
        cap = max(1, min(cap, int(box * apix / resolution_limit_angstrom)))
    first_limit = cap
    if initial_lowpass_angstrom is not None:
        first_limit = max(1, min(cap, int(box * apix / initial_lowpass_angstrom)))
    return EMStart(half_maps=torch.stack([vol0, vol0]), halves=half_sets(particles, seed),
                   layout=layout, cap=cap, first_limit=first_limit,
                   ctf=particles.ctf.to(device))


def image_batches(particles: ParticleSet, batch_size: int, device: torch.device
                  ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """``(index (B,), images (B, D, D) float64)`` in stack order, read batch by batch."""
    n = len(particles)
    with ImageSource(particles) as source:
        for start in range(0, n, batch_size):
            index = np.arange(start, min(n, start + batch_size))
            yield index, source.images(index).to(device, torch.float64)


def initial_noise(particles: ParticleSet, layout: HalfPlaneShells, batch_size: int,
                  device: torch.device) -> torch.Tensor:
    """``(S,)`` first noise estimate per shell: the images' own power (signal included).

    ``sigma2(s) = sum |X|^2 / (2 N count(s))`` over all images; shell 0 copies
    shell 1 (the image mean is not scored).
    """
    power = torch.zeros(layout.n_shells, dtype=torch.float64, device=device)
    for _, images in image_batches(particles, batch_size, device):
        ft = images_to_fourier(images)
        power += layout.sums(ft.real**2 + ft.imag**2).sum(dim=0)
    sigma2 = power / (2.0 * len(particles) * layout.count.clamp(min=1e-30))
    sigma2[0] = sigma2[1]
    return sigma2


def assemble_rows(parts: list[tuple[np.ndarray, torch.Tensor]], n: int) -> torch.Tensor:
    """``(n, ...)`` tensor from per-batch ``(row indices (B,), values (B, ...))``."""
    first = parts[0][1]
    out = torch.zeros((n, *first.shape[1:]), dtype=first.dtype)
    for idx, value in parts:
        out[torch.as_tensor(idx)] = value
    return out


def check_em_inputs(particles: ParticleSet, initial_map: torch.Tensor) -> None:
    """Clear errors for particles without CTF and a starting map of the wrong shape or values."""
    if particles.ctf is None:
        raise InputError(particles.source_path, "ctf", "CTF parameters for every particle",
                         "none")
    box = particles.box_size
    if tuple(initial_map.shape) != (box,) * 3:
        raise InputError(None, "initial_map", f"a ({box}, {box}, {box}) map",
                         f"shape {tuple(initial_map.shape)}")
    if not torch.isfinite(initial_map).all():
        raise InputError(None, "initial_map", "finite values", "NaN or inf")



def fit_map_scale(volume: torch.Tensor, particles: ParticleSet, n_images: int = 256,
                  order: int = 1, resolution_angstrom: float = 20.0,
                  device: str | torch.device = "cpu") -> float:
    """Scale ``a`` that best matches ``a * volume``'s projections to the images.

    For up to ``n_images`` particles, the best pose on ``SO3Grid(order)`` (white
    noise, shells up to ``resolution_angstrom``) gives a least-squares scale
    ``Re<X, M> / <M, M>``; the median over particles is returned. A starting map
    from another source (other units, other normalisation) is put on the data's
    scale this way before the first E-step.
    """
    index = np.arange(min(n_images, len(particles)))
    with ImageSource(particles) as source:
        images = source.images(index)
    return fit_map_scale_to_images(
        volume, images, particles.ctf.subset(torch.as_tensor(index)),
        particles.pixel_size_angstrom, order, resolution_angstrom, device)


def fit_map_scale_to_images(volume: torch.Tensor, images: torch.Tensor, ctf,
                            pixel_size_angstrom: float, order: int = 1,
                            resolution_angstrom: float = 20.0,
                            device: str | torch.device = "cpu") -> float:
    """:func:`fit_map_scale` on given images (poses unknown).

    Parameters
    ----------
    volume
        ``(D, D, D)`` map at the images' pixel size.
    images
        ``(B, D, D)`` real images.
    ctf
        :class:`cryoviz.ctf.CTFParams` of the ``B`` images.
    pixel_size_angstrom
        Pixel size of the images and the map (Å).
    order, resolution_angstrom, device
        As for :func:`fit_map_scale`.

    Returns
    -------
    float
        The median least-squares scale over the images.
    """
    box, apix = int(images.shape[-1]), float(pixel_size_angstrom)
    last = max(1, min(box // 2, int(box * apix / resolution_angstrom)))
    pix = pixel_set(box, last, device)
    x = pix.take(images_to_fourier(images.to(device, torch.float64)))
    ctf = pix.take(compute_ctf_2d(ctf.to(device), box, apix, rfft=True,
                                  dtype=torch.float64, device=device))
    w = pix.layout.weight
    volume_ft = volume_to_fourier(volume.to(device, torch.float64))
    grid_proj = extract_points(volume_ft, SO3Grid(order).rotations(torch.float64, device),
                               pix.frequencies)
    shifts = shift_grid(3.0, 1.0, device)
    scores = score_poses(x, ctf, w, grid_proj, shift_phases(shifts, pix))
    flat = scores.reshape(x.shape[0], -1).argmax(dim=1)
    t, r = flat // grid_proj.shape[0], flat % grid_proj.shape[0]
    model = ctf * shift_phases(shifts[t][:, None], pix)[:, 0] * grid_proj[r]
    cross = (w * (x.conj() * model).real).sum(dim=1)
    norm = (w * model.abs() ** 2).sum(dim=1)
    scale = float(torch.median(cross / norm.clamp(min=1e-30)))
    if not math.isfinite(scale) or scale <= 0:
        raise InputError(None, "initial_map", "a map whose projections correlate positively "
                         "with the images", f"fitted scale {scale}")
    return scale
