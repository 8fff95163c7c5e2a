"""CryoVAEGAN per-particle outputs: encoder estimates, refinement, ``estimates.npz``, STAR.

Files written to the run folder at the end of training:

* ``estimates.npz``: ``particle_ids``; the final estimates ``angle_deg``,
  ``angle_std_deg``, ``defocus_angstrom`` (mean defocus), ``defocus_std_angstrom``,
  ``defocus_u_angstrom``, ``defocus_v_angstrom``, ``astigmatism_angle_deg``,
  ``log_likelihood``; the encoder's own (amortised) estimates ``encoder_*``
  (angle, mean defocus and its standard deviation, astigmatism) and ``z_mu``,
  ``z_logvar``; ``noise_var`` (per shell, final);
* ``particles.star``: the particles with the pose ``Rz(angle)`` (tilt 0; RELION
  ``rot + psi = -angle``: the image is the canonical image turned by ``angle``,
  as for ``R_i = Rz(psi_i) R0`` in :mod:`.data`), the estimated CTF, and the standard
  deviations in the extra columns ``cryovizAngleStdDeg`` and
  ``cryovizDefocusStdAngstrom``;
* ``canonical.mrc``: the refined canonical image (one-image stack).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cryoviz.ctf import CTFParams, compute_ctf_2d
from cryoviz.errors import InputError
from cryoviz.fourier import centered_rfft2, shell_index_2d
from cryoviz.geometry.rotations import rotation_about_axis
from cryoviz.inference.vaegan.model import CanonicalDecoder, InplaneEncoder, rotate_images
from cryoviz.inference.vaegan.search import AverageAccumulator, search_angle_defocus
from cryoviz.io.mrc import atomic_output, write_stack
from cryoviz.io.particles import ParticleSet
from cryoviz.io.star import write_star
from cryoviz.train.data import ParticleBatches

__all__ = ["encode_all", "refine", "write_final", "estimates_particle_set", "load_estimates"]

ESTIMATE_FIELDS = ("angle_deg", "angle_std_deg", "defocus_angstrom", "defocus_std_angstrom",
                   "defocus_u_angstrom", "defocus_v_angstrom", "astigmatism_angle_deg")


@torch.no_grad()
def encode_all(encoder: InplaneEncoder, batches: ParticleBatches, step) -> dict[str, np.ndarray]:
    """The encoder's estimates of every particle (Å and degrees), in stack order."""
    encoder.eval()
    parts: dict[str, list[np.ndarray]] = {}
    for _, images in batches.sequential():
        q = encoder(images)
        ctf = step.ctf(q.defocus_mu, q.astig_mu, q.astig_angle)
        angle = torch.rad2deg(torch.atan2(q.angle[:, 1], q.angle[:, 0])) % 360.0
        values = {
            "encoder_angle_deg": angle,
            "encoder_defocus_angstrom": step.center + step.half * q.defocus_mu,
            "encoder_defocus_std_angstrom": step.half * (0.5 * q.defocus_logvar).exp(),
            "encoder_defocus_u_angstrom": ctf.defocus_u_angstrom,
            "encoder_defocus_v_angstrom": ctf.defocus_v_angstrom,
            "encoder_astigmatism_angle_deg": ctf.astigmatism_angle_deg % 180.0,
            "z_mu": q.z_mu, "z_logvar": q.z_logvar}
        for k, v in values.items():
            parts.setdefault(k, []).append(v.double().cpu().numpy())
    encoder.train()
    return {k: np.concatenate(v) for k, v in parts.items()}


@torch.no_grad()
def refine(batches: ParticleBatches, canonical: torch.Tensor, noise_var: torch.Tensor,
           settings, astig_half_angstrom: np.ndarray, astig_angle_deg: np.ndarray,
           rounds: int) -> tuple[dict[str, np.ndarray], torch.Tensor, torch.Tensor]:
    """``rounds`` of search + closed-form canonical and noise updates (see :mod:`.train`).

    Returns
    -------
    (estimates, canonical, noise_var)
        Per-particle arrays (stack order), the ``(D, D)`` canonical image and the
        ``(D // 2 + 1,)`` noise variances after the last round.
    """
    box, apix = batches.box_size, batches.pixel_size_angstrom
    mic = settings.microscope
    low, high = settings.defocus_range_angstrom
    grid = torch.arange(low, high + 0.5 * settings.defocus_step_angstrom,
                        settings.defocus_step_angstrom, dtype=torch.float64)
    shells = shell_index_2d(box)
    inside = shells <= box // 2
    counts = torch.bincount(shells[inside], minlength=box // 2 + 1).double()
    canonical = canonical.double()
    result: dict[str, np.ndarray] = {}
    for _ in range(max(rounds, 1)):
        acc = AverageAccumulator(box, mic, apix)
        residual = torch.zeros(box // 2 + 1, dtype=torch.float64)
        parts: dict[str, list[np.ndarray]] = {}
        for index, images in batches.sequential():
            r = search_angle_defocus(images.double(), canonical, noise_var, mic, apix, grid,
                                     n_angles=settings.n_angles)
            angle = torch.as_tensor(r.angle_deg)
            dfu = torch.as_tensor(r.defocus_angstrom + astig_half_angstrom[index])
            dfv = torch.as_tensor(r.defocus_angstrom - astig_half_angstrom[index])
            ast = torch.as_tensor(astig_angle_deg[index])
            acc.add(images, angle, dfu, dfv, ast)
            rad = torch.deg2rad(angle)
            turned = rotate_images(canonical[None], torch.stack([rad.cos(), rad.sin()], -1))
            model = centered_rfft2(turned) * compute_ctf_2d(mic.ctf(dfu, dfv, ast), box, apix,
                                                            dtype=torch.float64)
            power = ((centered_rfft2(images.double()) - model).abs() ** 2).sum(0)
            residual.index_add_(0, shells[inside], power[inside])
            for k, v in (("angle_deg", r.angle_deg), ("angle_std_deg", r.angle_std_deg),
                         ("defocus_angstrom", r.defocus_angstrom),
                         ("defocus_std_angstrom", r.defocus_std_angstrom),
                         ("defocus_u_angstrom", dfu.numpy()), ("defocus_v_angstrom", dfv.numpy()),
                         ("astigmatism_angle_deg", ast.numpy()),
                         ("log_likelihood", r.log_likelihood)):
                parts.setdefault(k, []).append(np.asarray(v, dtype=np.float64))
        result = {k: np.concatenate(v) for k, v in parts.items()}
        noise_var = (residual / (counts * batches.n)).clamp_min(1e-12)
        canonical = acc.result(settings.wiener_constant)
    return result, canonical, noise_var


def estimates_particle_set(particles: ParticleSet, estimates: dict[str, np.ndarray],
                           microscope) -> ParticleSet:
    """``particles`` with the estimated in-plane rotations and CTFs (for STAR export)."""
    n = len(particles)
    rotations = rotation_about_axis("z", torch.as_tensor(estimates["angle_deg"])).numpy()
    ctf = CTFParams.from_arrays(
        defocus_u_angstrom=estimates["defocus_u_angstrom"],
        defocus_v_angstrom=estimates["defocus_v_angstrom"],
        astigmatism_angle_deg=estimates["astigmatism_angle_deg"],
        voltage_kv=microscope.voltage_kv, cs_mm=microscope.cs_mm,
        amplitude_contrast=microscope.amplitude_contrast)
    extra = particles.extra.copy().reset_index(drop=True)
    extra["cryovizAngleStdDeg"] = estimates["angle_std_deg"]
    extra["cryovizDefocusStdAngstrom"] = estimates["defocus_std_angstrom"]
    out = particles.subset(np.arange(n))
    out.rotations = rotations
    out.shifts_angstrom = np.zeros((n, 2))
    out.ctf = ctf
    out.extra = extra
    return out


def write_final(out: Path, encoder: InplaneEncoder, decoder: CanonicalDecoder,
                noise_var: torch.Tensor, batches: ParticleBatches, particles: ParticleSet,
                settings, step) -> None:
    """Encode, refine and write ``estimates.npz``, ``particles.star`` and ``canonical.mrc``."""
    encoded = encode_all(encoder, batches, step)
    half = 0.5 * (encoded["encoder_defocus_u_angstrom"] - encoded["encoder_defocus_v_angstrom"])
    with torch.no_grad():
        canonical = decoder.images(None, 1)[0].detach()
    refined, canonical, noise_var = refine(batches, canonical, noise_var.double(), settings,
                                           half, encoded["encoder_astigmatism_angle_deg"],
                                           settings.refine_rounds)
    arrays = {"particle_ids": particles.particle_ids, **refined, **encoded,
              "noise_var": noise_var.numpy()}
    with atomic_output(out / "estimates.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    write_star(estimates_particle_set(particles, refined, settings.microscope),
               out / "particles.star")
    write_stack(out / "canonical.mrc", canonical.float().numpy()[None],
                batches.pixel_size_angstrom)


def load_estimates(run_dir: str | Path) -> dict[str, np.ndarray]:
    """The arrays of ``RUN/estimates.npz`` (InputError when the run has none)."""
    path = Path(run_dir) / "estimates.npz"
    if not path.is_file():
        raise InputError(path, "estimates", "a finished cryovaegan run", got="no such file")
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


