"""Simulated 2-D data for CryoVAEGAN: one viewing direction, random in-plane angles.

Every particle is the projection of the same map seen from one fixed direction
``R0``, turned in the image plane by an angle ``psi_i``: the rotation is
``R_i = Rz(psi_i) R0`` (lab frame), so that image ``i`` is the projection of
``R0`` with its content turned counter-clockwise (from +x towards +y) by
``psi_i``. Images are rendered with :func:`cryoviz.imaging.render_images`
(the engine's forward model with its CTF), noise is white at a given SNR
(:mod:`cryoviz.noise`).

Outputs in the dataset folder: ``particles.mrcs`` and ``particles.star``
(RELION 3.1, images only: no angles and no CTF, which the recipe must infer;
the microscope's voltage, Cs and amplitude contrast are recipe settings) and
``truth/`` with ``truth.npz`` (``psi_deg``, the CTF fields,
``rotations``, ``noise_sigma``), ``particles_truth.star`` (the same particles
with their true poses and CTFs), ``map.mrc`` and ``projection.mrc`` (the clean,
CTF-free projection at ``psi = 0``: the canonical image in the truth frame).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from cryoviz.ctf import CTFParams
from cryoviz.errors import InputError
from cryoviz.gaussians import gaussians_volume, structure_to_gaussians
from cryoviz.geometry import euler_relion_to_matrix
from cryoviz.geometry.rotations import rotation_about_axis
from cryoviz.imaging import render_images
from cryoviz.io.mrc import StackWriter, write_stack, write_volume
from cryoviz.io.particles import ParticleSet
from cryoviz.io.star import write_star
from cryoviz.noise import noise_sigma_for_snr
from cryoviz.structure import builtin_structure

__all__ = ["InplaneSimulationConfig", "simulate_inplane", "inplane_rotations"]


@dataclass(frozen=True)
class InplaneSimulationConfig:
    """Settings of an in-plane dataset.

    Attributes
    ----------
    n_particles, box_size, pixel_size_angstrom, snr
        Size, sampling and noise level (SNR = var(clean image) / sigma^2).
    structure
        Built-in structure name (``4ake`` or ``1ake``).
    bfactor_a2
        B-factor of the atomic potential (Å^2).
    view_euler_deg
        RELION Euler angles ``(rot, tilt, psi)`` of the common view ``R0``.
    defocus_range_angstrom
        Defocus U is uniform in this range (Å).
    max_astigmatism_angstrom
        ``V = U - uniform(0, max)``; astigmatism angle uniform in [0, 180).
    voltage_kv, cs_mm, amplitude_contrast
        Microscope.
    seed
        Seed of every random draw.
    """

    n_particles: int = 2000
    box_size: int = 64
    pixel_size_angstrom: float = 2.0
    snr: float = 1.0
    structure: str = "4ake"
    bfactor_a2: float = 20.0
    view_euler_deg: tuple[float, float, float] = (30.0, 70.0, 0.0)
    defocus_range_angstrom: tuple[float, float] = (8_000.0, 25_000.0)
    max_astigmatism_angstrom: float = 200.0
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.1
    seed: int = 0
    batch_size: int = 256

    def validate(self) -> None:
        """Raise :class:`InputError` for settings that cannot work."""
        if self.n_particles < 1:
            raise InputError(None, "n_particles", "a positive integer", self.n_particles)
        if self.box_size < 8:
            raise InputError(None, "box_size", "at least 8 pixels", self.box_size)
        if not self.pixel_size_angstrom > 0:
            raise InputError(None, "pixel_size_angstrom", "> 0", self.pixel_size_angstrom)
        if not (self.snr > 0 and math.isfinite(self.snr)):
            raise InputError(None, "snr", "a finite number > 0", self.snr)
        low, high = self.defocus_range_angstrom
        if not 0 < low <= high:
            raise InputError(None, "defocus_range_angstrom", "0 < min <= max", (low, high))


def inplane_rotations(view_euler_deg: tuple[float, float, float],
                      psi_deg: torch.Tensor) -> torch.Tensor:
    """``(N, 3, 3)`` rotations ``Rz(psi_i) R0``: one view turned in-plane by ``psi_i``."""
    view = euler_relion_to_matrix(torch.tensor(view_euler_deg, dtype=torch.float64))
    return rotation_about_axis("z", psi_deg.to(torch.float64)) @ view


def simulate_inplane(config: InplaneSimulationConfig, output_dir: str | Path) -> Path:
    """Simulate an in-plane dataset into ``output_dir`` (see the module notes); return it."""
    config.validate()
    out = Path(output_dir)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(config.seed)
    n, box, apix = config.n_particles, config.box_size, config.pixel_size_angstrom
    structure = builtin_structure(config.structure).center()
    volume = gaussians_volume(structure_to_gaussians(structure, bfactor_a2=config.bfactor_a2),
                              box, apix)
    psi = 360.0 * torch.rand(n, generator=gen, dtype=torch.float64)
    rotations = inplane_rotations(config.view_euler_deg, psi)
    low, high = config.defocus_range_angstrom
    dfu = low + (high - low) * torch.rand(n, generator=gen, dtype=torch.float64)
    dfv = dfu - config.max_astigmatism_angstrom * torch.rand(n, generator=gen,
                                                              dtype=torch.float64)
    angle = 180.0 * torch.rand(n, generator=gen, dtype=torch.float64)
    ctf = CTFParams.from_arrays(defocus_u_angstrom=dfu, defocus_v_angstrom=dfv,
                                astigmatism_angle_deg=angle, voltage_kv=config.voltage_kv,
                                cs_mm=config.cs_mm, amplitude_contrast=config.amplitude_contrast)

    def clean(index: np.ndarray) -> torch.Tensor:
        sel = torch.as_tensor(index)
        return render_images(volume, rotations[sel].to(torch.float32), apix,
                             ctf=ctf.subset(sel))

    sigma = noise_sigma_for_snr(clean(np.arange(min(n, 1024))), config.snr)
    noise_gen = torch.Generator().manual_seed(config.seed + 1)
    stack = out / "particles.mrcs"
    with StackWriter(stack, box, apix, n) as writer:
        for start in range(0, n, config.batch_size):
            images = clean(np.arange(start, min(n, start + config.batch_size)))
            noise = torch.randn(images.shape, generator=noise_gen, dtype=images.dtype)
            writer.write((images + sigma * noise).numpy())

    common = dict(image_stacks=[stack], stack_index=np.zeros(n, dtype=np.int64),
                  image_index=np.arange(n, dtype=np.int64), box_size=box,
                  pixel_size_angstrom=apix)
    write_star(ParticleSet(**common), out / "particles.star")
    write_star(ParticleSet(**common, rotations=rotations.numpy(), ctf=ctf),
               out / "truth" / "particles_truth.star")
    write_volume(out / "truth" / "map.mrc", volume.numpy().astype(np.float32), apix)
    canonical = render_images(volume, inplane_rotations(
        config.view_euler_deg, torch.zeros(1)).to(torch.float32), apix)
    write_stack(out / "truth" / "projection.mrc", canonical.numpy(), apix)
    np.savez(out / "truth" / "truth.npz", psi_deg=psi.numpy(), rotations=rotations.numpy(),
             noise_sigma=np.float64(sigma),
             **{f"ctf_{k}": v for k, v in ctf.as_numpy().items()})
    settings = asdict(config)
    settings["noise_sigma"] = sigma
    (out / "simulation.json").write_text(json.dumps(settings, indent=2, default=list))
    return out
