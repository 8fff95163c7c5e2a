"""Shared test helpers: Gaussian-blob phantoms, their analytic projections, random poses.

The phantom, pose and analytic-projection helpers are independent of cryoviz (the
tests check cryoviz against them); only the dataset simulation uses its forward model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def random_rotations(n: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(n, 3, 3)`` rotations, uniform on SO(3) (normalised Gaussian quaternions)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    rot = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(n, 3, 3)
    return rot.to(dtype)


def rotation_y(angle_deg: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Active rotation about +y, ``(3, 3)``: maps +z towards +x for positive angles."""
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=dtype)


@dataclass(frozen=True)
class Blobs:
    """Isotropic Gaussian blobs: ``sum_j a_j exp(-|r - c_j|^2 / (2 s_j^2))`` (r, c in px)."""

    centers: torch.Tensor  # (J, 3) in (x, y, z) px from the origin
    sigmas: torch.Tensor  # (J,)
    amplitudes: torch.Tensor  # (J,)


def random_blobs(
    box: int,
    n_blobs: int = 6,
    seed: int = 0,
    sigma_range: tuple[float, float] = (2.5, 3.5),
    max_radius_frac: float = 0.15,
) -> Blobs:
    """Blobs with centres within ``max_radius_frac * box`` of the origin."""
    gen = torch.Generator().manual_seed(seed)
    direction = torch.randn(n_blobs, 3, generator=gen, dtype=torch.float64)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    radius = torch.rand(n_blobs, 1, generator=gen, dtype=torch.float64) * max_radius_frac * box
    lo, hi = sigma_range
    sigmas = lo + (hi - lo) * torch.rand(n_blobs, generator=gen, dtype=torch.float64)
    amplitudes = 0.5 + torch.rand(n_blobs, generator=gen, dtype=torch.float64)
    return Blobs(direction * radius, sigmas, amplitudes)


def blob_volume(blobs: Blobs, box: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(D, D, D)`` volume ``[z, y, x]``, origin at ``D // 2``."""
    axis = torch.arange(box, dtype=torch.float64) - box // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    vol = torch.zeros(box, box, box, dtype=torch.float64)
    for c, s, a in zip(blobs.centers, blobs.sigmas, blobs.amplitudes, strict=True):
        r2 = (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2
        vol += a * torch.exp(-r2 / (2 * s**2))
    return vol.to(dtype)


def blob_projections(
    blobs: Blobs, rotations: torch.Tensor, box: int, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Analytic projections ``(B, D, D)`` along lab z of the blobs rotated by ``R``.

    Blob ``j`` lands at ``R @ c_j``; its line integral along z is a 2-D Gaussian of
    the same sigma with peak ``a_j sqrt(2 pi) s_j``.
    """
    axis = torch.arange(box, dtype=torch.float64) - box // 2
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    lab = torch.einsum("bij,nj->bni", rotations.to(torch.float64), blobs.centers)
    out = torch.zeros(rotations.shape[0], box, box, dtype=torch.float64)
    for j in range(blobs.centers.shape[0]):
        s, a = blobs.sigmas[j], blobs.amplitudes[j]
        cx = lab[:, j, 0, None, None]
        cy = lab[:, j, 1, None, None]
        out += a * math.sqrt(2 * math.pi) * s * torch.exp(
            -((x - cx) ** 2 + (y - cy) ** 2) / (2 * s**2)
        )
    return out.to(dtype)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||``."""
    return float((a - b).norm() / b.norm())


@dataclass(frozen=True)
class Dataset:
    """Simulated particles (uses cryoviz's forward model; poses and CTFs are random)."""

    truth: torch.Tensor  # (D, D, D) float32
    images: torch.Tensor  # (N, D, D) float32
    rotations: torch.Tensor  # (N, 3, 3) float32
    pixel_size_angstrom: float
    shifts_angstrom: torch.Tensor | None
    ctf: object | None  # cryoviz.ctf.CTFParams
    half_set: torch.Tensor  # (N,) 0 / 1


def simulate_dataset(
    box: int,
    n: int,
    seed: int = 0,
    pixel_size_angstrom: float = 4.0,
    snr: float | None = None,
    with_ctf: bool = False,
    max_shift_px: float = 0.0,
    batch: int = 500,
) -> Dataset:
    """Blob phantom (sigma 1 - 2.5 px, detail up to Nyquist) imaged from random poses.

    Defoci are uniform in 1 - 3 um (slightly astigmatic), shifts uniform in
    ``+- max_shift_px`` per axis, white noise at ``snr`` (``None``: noise-free).
    """
    from cryoviz.ctf import CTFParams
    from cryoviz.imaging import render_images
    from cryoviz.noise import add_white_noise, noise_sigma_for_snr

    truth = blob_volume(
        random_blobs(box, n_blobs=8, seed=seed, sigma_range=(1.0, 2.5), max_radius_frac=0.2), box,
        dtype=torch.float32,
    )
    rot = random_rotations(n, seed=seed + 1, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed + 2)
    ctf = None
    if with_ctf:
        defocus = 10000.0 + 20000.0 * torch.rand(n, generator=gen, dtype=torch.float64)
        ctf = CTFParams.from_arrays(
            defocus_u_angstrom=defocus,
            defocus_v_angstrom=defocus - 500.0 * torch.rand(n, generator=gen, dtype=torch.float64),
            astigmatism_angle_deg=180.0 * torch.rand(n, generator=gen, dtype=torch.float64),
            voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.1,
        )
    shifts = None
    if max_shift_px > 0:
        shifts = (2 * torch.rand(n, 2, generator=gen) - 1) * max_shift_px * pixel_size_angstrom
    images = torch.cat([
        render_images(
            truth, rot[i:i + batch], pixel_size_angstrom,
            None if shifts is None else shifts[i:i + batch],
            None if ctf is None else ctf.subset(slice(i, i + batch)),
        )
        for i in range(0, n, batch)
    ])
    if snr is not None:
        sigma = noise_sigma_for_snr(images, snr)
        images = add_white_noise(images, sigma, generator=gen)
    half_set = torch.randperm(n, generator=gen) % 2
    return Dataset(truth, images, rot, pixel_size_angstrom, shifts, ctf, half_set)


def backproject(data: Dataset, index: torch.Tensor | None = None, batch: int = 500):
    """A :class:`cryoviz.backprojection.FourierAccumulator` holding particles ``index``."""
    from cryoviz.backprojection import FourierAccumulator

    box = data.images.shape[-1]
    if index is None:
        index = torch.arange(data.images.shape[0])
    acc = FourierAccumulator(box)
    for i in range(0, len(index), batch):
        sel = index[i:i + batch]
        acc.add(
            data.images[sel], data.rotations[sel], data.pixel_size_angstrom,
            None if data.shifts_angstrom is None else data.shifts_angstrom[sel],
            None if data.ctf is None else data.ctf.subset(sel),
        )
    return acc


def fsc_crossing(curve: torch.Tensor, threshold: float, box: int) -> float:
    """First frequency (cycles/px, interpolated) where ``curve`` drops below ``threshold``."""
    values = curve.tolist()
    for i in range(1, len(values)):
        if values[i] < threshold:
            a, b = values[i - 1], values[i]
            return (i - 1 + (a - threshold) / (a - b)) / box
    return (len(values) - 1) / box


def soft_sphere(box: int, centre_xyz: tuple[float, float, float], radius: float,
                 edge: float) -> torch.Tensor:
    """``(D, D, D)`` mask ``[z, y, x]``: 1 within ``radius`` px of the centre, a cosine
    edge of ``edge`` px, 0 beyond (origin at ``D // 2``, as the phantoms)."""
    axis = torch.arange(box, dtype=torch.float64) - box // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    r = ((x - centre_xyz[0]) ** 2 + (y - centre_xyz[1]) ** 2 + (z - centre_xyz[2]) ** 2).sqrt()
    t = ((r - radius) / edge).clamp(0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * t))


def two_region_particles(folder, coefficients: torch.Tensor, generator: torch.Generator,
                         noise_fraction: float, box: int = 16, apix: float = 5.0):
    """Particles of ``V0 + c_i0 A + c_i1 B``: two blob changes in opposite halves of the
    box, ``A`` 0.3 and ``B`` 0.6 of ``|V0|`` in norm (no CTF, poses known).

    Parameters
    ----------
    folder
        Where ``particles.mrcs`` is written.
    coefficients
        ``(N, 2)`` amounts of ``A`` and ``B`` per particle.
    generator
        Draws the noise (after whatever the caller drew from it).
    noise_fraction
        Noise standard deviation as a fraction of the clean images' standard deviation.

    Returns
    -------
    tuple
        ``(ParticleSet, [A, B])``, the changes as float32 ``(D, D, D)`` maps.
    """
    import numpy as np  # noqa: PLC0415

    from cryoviz.imaging import render_images  # noqa: PLC0415
    from cryoviz.io.mrc import write_stack  # noqa: PLC0415
    from cryoviz.io.particles import ParticleSet  # noqa: PLC0415

    n = coefficients.shape[0]
    v0 = blob_volume(random_blobs(box, 6, seed=1), box).float()
    changes = []
    for centre, scale in (((4.0, 0.0, 0.0), 0.3), ((-4.0, 1.0, 0.0), 0.6)):
        blob = Blobs(centers=torch.tensor([centre], dtype=torch.float64),
                     sigmas=torch.tensor([1.5], dtype=torch.float64),
                     amplitudes=torch.tensor([1.0], dtype=torch.float64))
        change = blob_volume(blob, box).float()
        changes.append(change * scale * v0.norm() / change.norm())
    rotations = random_rotations(n, seed=5).float()
    clean = render_images(v0, rotations, apix)
    for k in range(2):
        clean = clean + coefficients[:, k, None, None] * render_images(changes[k], rotations,
                                                                       apix)
    images = clean + noise_fraction * float(clean.std()) * torch.randn(clean.shape,
                                                                       generator=generator)
    path = folder / "particles.mrcs"
    write_stack(path, images.numpy(), apix)
    particles = ParticleSet(image_stacks=[path], stack_index=np.zeros(n, dtype=np.int64),
                            image_index=np.arange(n), box_size=box, pixel_size_angstrom=apix,
                            rotations=rotations.numpy())
    return particles, changes
