"""CryoVAEGAN training: amortised in-plane angle and CTF inference without a volume.

Model
-----
For image ``Y_i`` (transform ``X_i``) the encoder predicts the in-plane angle
``a_i`` (a unit 2-vector), a Gaussian ``q`` over the mean defocus
``f_i = (U + V) / 2`` (standardised by the prior range ``[f_lo, f_hi]``), the
astigmatism half-difference ``(U - V) / 2`` and angle, and a Gaussian ``q``
over the content latent ``z_i``. The decoder renders
``M_i = CTF(f_i, astig_i) . FT(rotate(T(z_i), a_i))``
(:class:`cryoviz.inference.vaegan.model.CanonicalDecoder`).

Losses, per batch (all divided by the number ``K`` of Fourier coefficients
where they are sums over them)
------------------------------------------------------------------------------
* reconstruction: Gaussian negative log-likelihood
  ``sum_k w(k) (|X_i - M_i|^2 / sigma2(s) + log sigma2(s)) / K`` with learned
  per-shell noise variances ``sigma2`` (the Gaussian choice of the paper; binary
  cross-entropy, its other choice, suits images in [0, 1], not cryo-EM data);
* ``beta`` x KL of ``q(f)`` to the prior ``N(0, 1/3)`` (the variance of the
  uniform prior on the standardised range) and of ``q(z)`` to ``N(0, I)``;
* geometric regulariser (weight ``geometric_weight``): the encoder must be
  equivariant to in-plane turns of its input (angle of the turned image = angle
  + turn, ``1 - cos`` of the difference), invariant in defocus, and its raw
  angle vector of unit length;
* adversarial (weight ``adversarial_weight``): a discriminator tells real images
  from decoder images with parameters drawn from the prior plus noise of the
  learned spectrum; the decoder is trained to fool it (non-saturating loss);
* "sleep" term (weight ``sleep_weight``): the encoder's negative
  log-likelihood of the known parameters of those generated images, which
  teaches it to read defocus from Thon rings and calibrates its variances.

Refinement
----------
After the last epoch, ``refine_rounds`` rounds of per-image maximum-likelihood
search of angle and mean defocus under the canonical image
(:func:`cryoviz.inference.vaegan.search.search_angle_defocus`), each followed by
the closed-form update of the canonical image (CTF-corrected Wiener average of
the aligned images) and of the noise spectrum (mean residual power per shell).
This is coordinate ascent of the same likelihood the decoder defines; it is
reported separately from the encoder's estimates.

With ``canonical_updates`` (default) one such round also ends every training
epoch: the decoder's canonical image and noise spectrum are replaced by their
closed-form estimates (an EM M-step for the decoder). Without it the canonical
image is learned by gradient descent only; it then stays a nearly
rotationally symmetric blob for a long time, and so does the encoder's angle
(box 32, 1000 images: chance-level encoder after 20 epochs; box 64, 2000 images:
the encoder's angles appear after about 5 epochs).

Runs follow :mod:`cryoviz.train.loop`: ``config.toml``, an atomic checkpoint
per epoch (models, optimizers, generator states), ``log.jsonl``, exact resume
(CPU), and at the end ``estimates.npz``, ``particles.star`` (angles as RELION
psi with rot = tilt = 0, estimated CTFs, standard deviations in extra columns)
and ``canonical.mrc``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from cryoviz.errors import InputError
from cryoviz.fourier import centered_irfft2, centered_rfft2, shell_index_2d
from cryoviz.inference.vaegan.model import (
    CanonicalDecoder,
    ImageDiscriminator,
    InplaneEncoder,
    Microscope,
    radial_power,
    rotate_images,
)
from cryoviz.inference.vaegan.outputs import refine, write_final
from cryoviz.inference.vaegan.search import half_plane_weights
from cryoviz.io.mrc import atomic_output
from cryoviz.io.particles import ImageSource, ParticleSet
from cryoviz.train.data import ParticleBatches
from cryoviz.train.run_files import latest_checkpoint, truncate_log, write_toml

__all__ = ["CryoVAEGANSettings", "CryoVAEGANProgress", "iter_cryovaegan", "train_cryovaegan"]


@dataclass(frozen=True)
class CryoVAEGANSettings:
    """Settings of the ``cryovaegan`` recipe (defoci in Å)."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    discriminator_lr: float = 2e-4
    latent_dim: int = 2
    beta: float = 1.0
    geometric_weight: float = 1.0
    adversarial_weight: float = 0.01
    sleep_weight: float = 1.0
    channels: int = 16
    width: int = 128
    defocus_range_angstrom: tuple[float, float] = (5_000.0, 30_000.0)
    max_astigmatism_angstrom: float = 500.0
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.1
    canonical_updates: bool = True
    refine_rounds: int = 12
    n_angles: int = 72
    defocus_step_angstrom: float = 250.0
    wiener_constant: float = 0.1
    box: int | None = None
    seed: int = 0

    def validate(self) -> None:
        """Raise :class:`InputError` for settings that cannot work."""
        for name in ("epochs", "batch_size", "n_angles"):
            if getattr(self, name) < 1:
                raise InputError(None, name, "a positive integer", getattr(self, name))
        for name in ("latent_dim", "refine_rounds"):
            if getattr(self, name) < 0:
                raise InputError(None, name, "an integer >= 0", getattr(self, name))
        low, high = self.defocus_range_angstrom
        if not 0 < low < high:
            raise InputError(None, "defocus_range_angstrom", "0 < min < max", (low, high))
        if not self.defocus_step_angstrom > 0:
            raise InputError(None, "defocus_step_angstrom", "> 0", self.defocus_step_angstrom)
        if self.box is not None and (self.box < 8 or self.box % 2):
            raise InputError(None, "box", "an even box of at least 8 pixels", self.box)

    @property
    def microscope(self) -> Microscope:
        """The CTF constants."""
        return Microscope(self.voltage_kv, self.cs_mm, self.amplitude_contrast)


@dataclass(frozen=True)
class CryoVAEGANProgress:
    """State after one epoch of :func:`iter_cryovaegan` (losses are means per batch)."""

    epoch: int
    epochs: int
    step: int
    loss: float
    reconstruction: float
    kl: float
    geometric: float
    sleep: float
    generator_adversarial: float
    discriminator: float
    seconds: float
    checkpoint: Path
    output_dir: Path
    done: bool = False


class _Models(torch.nn.Module):
    def __init__(self, s: CryoVAEGANSettings, box: int) -> None:
        super().__init__()
        self.encoder = InplaneEncoder(box, s.latent_dim, channels=s.channels, width=s.width)
        self.decoder = CanonicalDecoder(box, s.latent_dim, seed=s.seed)
        self.log_noise = torch.nn.Parameter(torch.zeros(box // 2 + 1))
        self.discriminator = ImageDiscriminator(box, channels=s.channels)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-6)


def _gaussian_nll(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logvar + (x - mu) ** 2 / logvar.exp())


class _Step:
    """The loss terms of one batch (closure over the run's constants)."""

    def __init__(self, models: _Models, s: CryoVAEGANSettings, box: int, apix: float,
                 gen: torch.Generator) -> None:
        self.m, self.s, self.box, self.apix, self.gen = models, s, box, apix, gen
        low, high = s.defocus_range_angstrom
        self.center, self.half = 0.5 * (low + high), 0.5 * (high - low)
        self.weights = half_plane_weights(box)
        self.shells = shell_index_2d(box).clamp(max=box // 2)
        self.n_coeff = float(self.weights.sum())
        self.microscope = s.microscope

    def ctf(self, f_std, astig_std, astig_vec):
        f = self.center + self.half * f_std
        d = self.s.max_astigmatism_angstrom * astig_std
        angle = 0.5 * torch.rad2deg(torch.atan2(astig_vec[:, 1], astig_vec[:, 0]))
        return self.microscope.ctf(f + d, f - d, angle)

    def noise_var(self) -> torch.Tensor:
        return self.m.log_noise.exp()[self.shells]

    def prior_sample(self, n: int):
        g = self.gen
        rad = 2 * math.pi * torch.rand(n, generator=g)
        f_std = 2 * torch.rand(n, generator=g) - 1
        astig = 0.5 * torch.rand(n, generator=g)
        arad = 2 * math.pi * torch.rand(n, generator=g)
        z = torch.randn(n, self.s.latent_dim, generator=g)
        return torch.stack([rad.cos(), rad.sin()], -1), f_std, astig, torch.stack(
            [arad.cos(), arad.sin()], -1), z

    def generate(self, n: int):
        """Decoder images from prior parameters plus noise of the learned spectrum."""
        cs, f_std, astig, avec, z = self.prior_sample(n)
        ft = self.m.decoder(cs, self.ctf(f_std, astig, avec), z, self.apix)
        sd = (0.5 * self.noise_var()).sqrt()
        noise = torch.complex(torch.randn(ft.shape, generator=self.gen),
                              torch.randn(ft.shape, generator=self.gen)) * sd
        return centered_irfft2(ft + noise, self.box), (cs, f_std, astig, avec, z)

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        m, s, g = self.m, self.s, self.gen
        n = images.shape[0]
        q = m.encoder(images)
        eps = torch.randn(n, generator=g)
        f_std = q.defocus_mu + (0.5 * q.defocus_logvar).exp() * eps
        z = q.z_mu + (0.5 * q.z_logvar).exp() * torch.randn(q.z_mu.shape, generator=g)
        model = m.decoder(_unit(q.angle), self.ctf(f_std, q.astig_mu, q.astig_angle), z,
                          self.apix)
        var = self.noise_var()
        nll = (((centered_rfft2(images) - model).abs() ** 2 / var + var.log())
               * self.weights).sum(dim=(-2, -1)).mean() / self.n_coeff
        prior_var = 1.0 / 3.0
        kl_f = 0.5 * ((q.defocus_logvar.exp() + q.defocus_mu**2) / prior_var - 1.0
                      - q.defocus_logvar + math.log(prior_var))
        kl_z = -0.5 * (1.0 + q.z_logvar - q.z_mu**2 - q.z_logvar.exp()).sum(-1)
        kl = (kl_f + kl_z).mean()

        turn = 2 * math.pi * torch.rand(n, generator=g)
        turned = rotate_images(images, torch.stack([turn.cos(), turn.sin()], -1))
        q2 = m.encoder(turned)
        a1 = torch.atan2(q.angle[:, 1], q.angle[:, 0])
        a2 = torch.atan2(q2.angle[:, 1], q2.angle[:, 0])
        geometric = ((1.0 - torch.cos(a2 - a1 - turn)).mean()
                     + ((q2.defocus_mu - q.defocus_mu) ** 2).mean()
                     + ((q.angle.norm(dim=-1) - 1.0) ** 2).mean())

        with torch.no_grad():
            synthetic, (cs, f_true, astig, avec, z_true) = self.generate(n)
        q3 = m.encoder(synthetic)
        angle_err = 1.0 - (_unit(q3.angle) * cs).sum(-1)
        astig_err = 1.0 - (_unit(q3.astig_angle) * avec).sum(-1)
        sleep = (angle_err + _gaussian_nll(f_true, q3.defocus_mu, q3.defocus_logvar)
                 + _gaussian_nll(astig, q3.astig_mu, q3.astig_logvar) + astig * astig_err
                 + _gaussian_nll(z_true, q3.z_mu, q3.z_logvar).sum(-1)).mean()

        fake, _ = self.generate(n)
        g_adv = F.binary_cross_entropy_with_logits(m.discriminator(fake), torch.ones(n))
        loss = (nll + s.beta * kl / self.n_coeff + s.geometric_weight * geometric
                + s.sleep_weight * sleep + s.adversarial_weight * g_adv)
        return {"loss": loss, "reconstruction": nll, "kl": kl, "geometric": geometric,
                "sleep": sleep, "generator_adversarial": g_adv, "fake": fake.detach()}

    def discriminator_loss(self, images: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        d = self.m.discriminator
        n = images.shape[0]
        return (F.binary_cross_entropy_with_logits(d(images), torch.ones(n))
                + F.binary_cross_entropy_with_logits(d(fake), torch.zeros(n)))


@torch.no_grad()
def _initialise(models: _Models, batches: ParticleBatches) -> None:
    """Data-driven scales: input normalisation, noise spectrum, mean image as canonical."""
    first = batches.read(np.arange(min(batches.n, 512)))
    std = float(first.std())
    power = radial_power(first).mean(0)
    models.encoder.input_scale.fill_(std)
    models.discriminator.input_scale.fill_(std)
    models.encoder.spectrum_offset.copy_(torch.log(power / std**2 + 1e-3))
    models.log_noise.copy_(power.clamp_min(1e-12).log())
    models.decoder.canonical.copy_(first.mean(0))


@torch.no_grad()
def _canonical_update(models: _Models, batches: ParticleBatches,
                      settings: CryoVAEGANSettings) -> None:
    """One search round and the closed-form (Wiener) canonical image and noise spectrum."""
    zeros = np.zeros(batches.n)
    canonical = models.decoder.images(None, 1)[0]
    _, canonical, noise_var = refine(batches, canonical, models.log_noise.exp().double(),
                                     settings, zeros, zeros, rounds=1)
    models.decoder.canonical.copy_(canonical.to(models.decoder.canonical.dtype))
    models.log_noise.copy_(noise_var.log().to(models.log_noise.dtype))


def _rng_state(batches: ParticleBatches, gen: torch.Generator) -> dict:
    return {"data": batches.generator.get_state(), "noise": gen.get_state()}


def iter_cryovaegan(
    particles: ParticleSet,
    settings: CryoVAEGANSettings,
    output_dir: str | Path,
    *,
    resume: bool = False,
) -> Iterator[CryoVAEGANProgress]:
    """Train CryoVAEGAN on ``particles`` (no poses or CTF needed), yielding after every epoch.

    Parameters
    ----------
    particles
        The images. Poses and CTFs in the metadata are not used: the microscope
        constants are ``settings`` fields (``cryoviz train`` copies them from the
        input's CTF when it has one) and the defoci are estimated.
    settings
        The recipe's settings.
    output_dir
        Run folder (see the module notes for its contents).
    resume
        Continue from the last checkpoint (a fresh start when there is none).

    Yields
    ------
    CryoVAEGANProgress
        After each epoch; the last one (``done=True``) after refinement and outputs.
    """
    settings.validate()
    if len(particles) == 0:
        raise InputError(particles.source_path, "particles", "at least one particle", 0)
    out = Path(output_dir)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    source = ImageSource(particles)
    batches = ParticleBatches(source, settings.batch_size, seed=settings.seed,
                              box_size=settings.box)
    box, apix = batches.box_size, batches.pixel_size_angstrom
    if box % 8:
        raise InputError(particles.source_path, "box size", "a multiple of 8 (use box=)", box)
    torch.manual_seed(settings.seed)
    models = _Models(settings, box)
    gen = torch.Generator().manual_seed(settings.seed + 1)
    generator_params = [p for name, p in models.named_parameters()
                        if not name.startswith("discriminator.")]
    opt = torch.optim.Adam(generator_params, lr=settings.lr)
    opt_d = torch.optim.Adam(models.discriminator.parameters(), lr=settings.discriminator_lr,
                             betas=(0.5, 0.999))
    start_epoch, step = 0, 0
    ckpt = latest_checkpoint(out) if resume else None
    if ckpt is not None:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        models.load_state_dict(state["models"])
        opt.load_state_dict(state["optimizer"])
        opt_d.load_state_dict(state["discriminator_optimizer"])
        batches.generator.set_state(state["rng"]["data"])
        gen.set_state(state["rng"]["noise"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        truncate_log(out / "log.jsonl", start_epoch)
    else:
        _initialise(models, batches)
        (out / "log.jsonl").unlink(missing_ok=True)
        for old in (out / "checkpoints").glob("epoch_*.pt"):
            old.unlink()
    write_toml(out / "config.toml", {
        "recipe": {"name": "cryovaegan", **dataclasses.asdict(settings)},
        "data": {"n_particles": len(particles), "box_size": box, "pixel_size_angstrom": apix,
                 "source": None if particles.source_path is None else
                 str(particles.source_path)}})
    step_fn = _Step(models, settings, box, apix, gen)
    names = ("loss", "reconstruction", "kl", "geometric", "sleep", "generator_adversarial",
             "discriminator")
    for epoch in range(start_epoch + 1, settings.epochs + 1):
        t0 = time.perf_counter()
        totals = dict.fromkeys(names, 0.0)
        n_batches = 0
        for _, images in batches.epoch():
            terms = step_fn(images)
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            opt.step()
            d_loss = step_fn.discriminator_loss(images, terms["fake"])
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            terms["discriminator"] = d_loss
            for k in names:
                totals[k] += float(terms[k].detach())
            step += 1
            n_batches += 1
        if settings.canonical_updates:
            _canonical_update(models, batches, settings)
        seconds = time.perf_counter() - t0
        means = {k: v / max(n_batches, 1) for k, v in totals.items()}
        ckpt_path = out / "checkpoints" / f"epoch_{epoch:04d}.pt"
        state = {"epoch": epoch, "step": step, "models": models.state_dict(),
                 "optimizer": opt.state_dict(), "discriminator_optimizer": opt_d.state_dict(),
                 "rng": _rng_state(batches, gen)}
        with atomic_output(ckpt_path) as tmp:
            torch.save(state, tmp)
        with open(out / "log.jsonl", "a") as fh:
            fh.write(json.dumps({"epoch": epoch, "step": step, "seconds": seconds, **means})
                     + "\n")
        done = epoch == settings.epochs
        if done:
            write_final(out, models.encoder, models.decoder, models.log_noise.detach().exp(),
                        batches, particles, settings, step_fn)
        yield CryoVAEGANProgress(epoch=epoch, epochs=settings.epochs, step=step,
                                 seconds=seconds, checkpoint=ckpt_path, output_dir=out,
                                 done=done, **means)
    if start_epoch >= settings.epochs and ckpt is not None:
        write_final(out, models.encoder, models.decoder, models.log_noise.detach().exp(),
                    batches, particles, settings, step_fn)
    source.close()


def train_cryovaegan(particles: ParticleSet, settings: CryoVAEGANSettings,
                     output_dir: str | Path, **kwargs) -> CryoVAEGANProgress | None:
    """Run :func:`iter_cryovaegan` to the end; return the last progress."""
    progress = None
    for progress in iter_cryovaegan(particles, settings, output_dir, **kwargs):  # noqa: B007
        pass
    return progress
