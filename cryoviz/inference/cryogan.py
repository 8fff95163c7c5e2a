"""CryoGAN (Gupta et al. 2021): a homogeneous map learned adversarially, no pose inference.

The generator is the physics forward model
(:class:`~cryoviz.inference.cryogan_models.PhysicsGenerator`): a voxel map whose
projections, at rotations drawn uniformly on SO(3), shifts drawn from a
Gaussian prior, CTFs drawn from the dataset's own CTF table and white noise of a
level estimated from the data, should be indistinguishable from the real
particle images. A critic (:class:`~cryoviz.inference.cryogan_models.Critic`)
estimates the Wasserstein-1 distance between the two image distributions
(WGAN-GP)::

    L_critic = E[D(fake)] - E[D(real)] + lambda * E[(|grad D(x_mix)| - 1)^2]
    L_map    = -E[D(fake)]

``n_critic`` critic steps per map step; Adam with betas (0.5, 0.9). Early in
training both real and generated images are low-passed to a band limit that
marches from ``start_band`` to Nyquist (frequency marching); after each map
step the map is projected onto the constraints (positive, zero outside a
sphere). The map starts as a centred Gaussian blob scaled so that its
generated clean images carry the data's signal variance (image variance minus
noise variance); no reference is used. The noise level is the per-image
standard deviation of the pixels outside a circle of radius
``noise_radius_fraction * D`` (the particle is assumed to lie inside it),
unless given.

The map's frame and hand are arbitrary (no poses anchor them): compare it with
a reference after :func:`cryoviz.metrics.align_volume`.

**multi-cryogan** (``components = K >= 1``; after Gupta et al. 2021, Multi-CryoGAN):
every generated image is of its own map ``V_0 + sum_k z_k U_k`` with ``z ~ N(0,
I_K)`` drawn per image, so the generated image distribution can match a
heterogeneous dataset. The paper's generator is a convolutional network of
``z``; here it is the engine's linear subspace (as in ``3dva``): the components
start at zero, are masked like the map (not clamped: a difference map is
signed) and are learned by the same adversarial loss. ``V_0`` is the mean map
and ``V_0 +- 2 U_k`` the extremes of component ``k`` at two prior standard
deviations.

The run's files are written by :mod:`cryoviz.inference.cryogan_output`
(:func:`write_cryogan`, re-exported here).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from cryoviz.errors import InputError
from cryoviz.inference.cryogan_models import (
    Critic,
    PhysicsGenerator,
    gradient_penalty,
    lowpass_images,
    spherical_mask,
)
from cryoviz.inference.cryogan_output import TRAVERSAL_Z, write_cryogan
from cryoviz.inference.cryogan_state import clear_states, latest_state, save_state
from cryoviz.io.particles import ImageSource, ParticleSet

__all__ = ["CryoGANSettings", "CryoGANProgress", "CryoGANResult", "TRAVERSAL_Z",
           "estimate_noise_std", "iter_cryogan", "run_cryogan", "write_cryogan"]

DEFAULT_SHIFT_SIGMA_ANGSTROM = 2.0


@dataclass(frozen=True)
class CryoGANSettings:
    """Settings of :func:`iter_cryogan`.

    Attributes
    ----------
    n_steps
        Map (generator) steps.
    n_critic
        Critic steps per map step.
    batch_size
        Real and generated images per step.
    lr_volume, lr_critic
        Adam learning rates (betas ``(beta1, beta2)``).
    beta1, beta2
        Adam betas.
    gp_lambda
        Weight of the gradient penalty.
    shift_sigma_angstrom
        Standard deviation of the shift prior per axis (Å); ``None``: the RMS
        of the particles' known shifts per axis, else 2 Å.
    noise_std
        Noise standard deviation in the images' units; ``None``: estimated
        (:func:`estimate_noise_std`).
    noise_radius_fraction
        Pixels farther than this fraction of ``D`` from the centre are taken as
        noise for the estimate.
    mask_radius_fraction
        The map is zero beyond this fraction of ``D`` from the centre.
    positivity
        Clamp the map to non-negative values after each step.
    start_band, marching_fraction
        Band limit (cycles / pixel) of real and generated images at step 0, and the
        fraction of the steps over which it reaches Nyquist (0.5).
    channels
        Channels of the critic's first layer.
    voxel_scale
        Voxel values are ``voxel_scale * parameter`` (normalised images' units).
    components
        ``K``: 0 for one map (``cryogan``), else the subspace's components
        (``multi-cryogan``).
    component_decay
        After each map step the components are multiplied by ``1 - component_decay``
        (decoupled weight decay): a pull toward zero that the adversarial
        gradient must overcome, which keeps the random walk of Adam's steps out
        of the components.
    seed
        Seeds the critic, the priors' draws, the noise and the real batches.
    """

    n_steps: int = 1000
    n_critic: int = 4
    batch_size: int = 32
    lr_volume: float = 1e-2
    lr_critic: float = 5e-4
    beta1: float = 0.5
    beta2: float = 0.9
    gp_lambda: float = 10.0
    shift_sigma_angstrom: float | None = None
    noise_std: float | None = None
    noise_radius_fraction: float = 0.44
    mask_radius_fraction: float = 0.4
    positivity: bool = True
    start_band: float = 0.1
    marching_fraction: float = 0.5
    channels: int = 16
    voxel_scale: float = 1.0
    components: int = 0
    component_decay: float = 0.01
    seed: int = 0

    def validate(self) -> None:
        """Raise :class:`InputError` for settings that cannot work."""
        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise InputError(None, name, expected, getattr(self, name))

        need(self.n_steps >= 1, "n_steps", "at least 1")
        need(self.n_critic >= 1, "n_critic", "at least 1")
        need(self.batch_size >= 2, "batch_size", "at least 2")
        need(self.lr_volume > 0, "lr_volume", "> 0")
        need(self.lr_critic > 0, "lr_critic", "> 0")
        need(0 <= self.beta1 < 1, "beta1", "in [0, 1)")
        need(0 <= self.beta2 < 1, "beta2", "in [0, 1)")
        need(self.gp_lambda >= 0, "gp_lambda", ">= 0")
        need(self.shift_sigma_angstrom is None or self.shift_sigma_angstrom >= 0,
             "shift_sigma_angstrom", ">= 0 Å or None")
        need(self.noise_std is None or self.noise_std >= 0, "noise_std", ">= 0 or None")
        need(0 < self.noise_radius_fraction < 0.7, "noise_radius_fraction", "in (0, 0.7)")
        need(0 < self.mask_radius_fraction <= 0.5, "mask_radius_fraction", "in (0, 0.5]")
        need(0 < self.start_band <= 0.5, "start_band", "in (0, 0.5] cycles per pixel")
        need(0 <= self.marching_fraction <= 1, "marching_fraction", "in [0, 1]")
        need(self.channels >= 1, "channels", "at least 1")
        need(self.voxel_scale > 0, "voxel_scale", "> 0")
        need(self.components >= 0, "components", ">= 0 (0: one map)")
        need(0 <= self.component_decay < 1, "component_decay", "in [0, 1)")

    def band(self, step: int) -> float:
        """Band limit (cycles / pixel) at 0-based ``step``."""
        ramp = self.marching_fraction * self.n_steps
        frac = 1.0 if ramp <= 0 else min(step / ramp, 1.0)
        return self.start_band + (0.5 - self.start_band) * frac


@dataclass(frozen=True)
class CryoGANResult:
    """Outcome of :func:`iter_cryogan`.

    Attributes
    ----------
    map
        ``(D, D, D)`` float32 map in the images' units (arbitrary frame and hand);
        for ``multi-cryogan`` the mean map ``V_0``.
    components
        ``(K, D, D, D)`` float32 components ``U_k`` (``K = 0`` for ``cryogan``).
    noise_std
        Noise standard deviation used by the generator, in the images' units.
    shift_sigma_angstrom
        Standard deviation of the shift prior (Å).
    history
        One record per report: ``step``, ``critic_loss``, ``wasserstein``,
        ``gradient_penalty``, ``generator_loss``, ``band``, ``seconds``.
    pixel_size_angstrom, seconds, settings
        Bookkeeping.
    """

    map: torch.Tensor
    components: torch.Tensor
    noise_std: float
    shift_sigma_angstrom: float
    history: tuple[dict, ...]
    pixel_size_angstrom: float
    seconds: float
    settings: CryoGANSettings


@dataclass(frozen=True)
class CryoGANProgress:
    """State after a reported map step: ``step`` (1-based) of ``n_steps``; means since
    the last report of the critic loss, the Wasserstein estimate
    ``E[D(real)] - E[D(fake)]``, the gradient penalty (without lambda) and the map's
    loss ``-E[D(fake)]``; the band limit (cycles / pixel); elapsed seconds; the
    result at the end."""

    step: int
    n_steps: int
    critic_loss: float
    wasserstein: float
    gradient_penalty: float
    generator_loss: float
    band: float
    seconds: float
    result: CryoGANResult | None = None


def estimate_noise_std(images: torch.Tensor, radius_fraction: float = 0.44) -> float:
    """Noise standard deviation from the outer pixels of ``(B, D, D)`` images.

    Pixels farther than ``radius_fraction * D`` from the centre ``D // 2`` are
    taken as pure noise; their variance is computed per image (about the image's
    own outer mean) and averaged.
    """
    box = images.shape[-1]
    axis = torch.arange(box, dtype=torch.float32) - box // 2
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    outer = (x**2 + y**2) > (radius_fraction * box) ** 2
    if int(outer.sum()) < 2:
        raise InputError(None, "noise_radius_fraction", "a radius leaving outer pixels",
                         radius_fraction)
    values = images[:, outer.to(images.device)].double()
    return float(values.var(dim=1).mean().sqrt())


def _check(particles: ParticleSet, s: CryoGANSettings) -> None:
    s.validate()
    if particles.box_size % 2 or particles.box_size < 8:
        raise InputError(particles.source_path, "box_size", "an even box of at least 8 pixels",
                         particles.box_size)
    if len(particles) < 2:
        raise InputError(particles.source_path, "particles", "at least 2 particles",
                         len(particles))
    if particles.ctf is None:
        raise InputError(particles.source_path, "ctf",
                         "per-particle CTF parameters (the CTF prior of the generator)", None)


def _shift_sigma(particles: ParticleSet, s: CryoGANSettings) -> float:
    if s.shift_sigma_angstrom is not None:
        return float(s.shift_sigma_angstrom)
    shifts = particles.shifts_angstrom
    if shifts is not None and np.isfinite(shifts).all():
        rms = float(np.sqrt(np.mean((shifts - shifts.mean(0)) ** 2)))
        if rms > 0:
            return rms
    return DEFAULT_SHIFT_SIGMA_ANGSTROM


def _start_blob(gen: PhysicsGenerator, s: CryoGANSettings, signal_var: float,
                draws: torch.Generator) -> None:
    """Start from a centred Gaussian blob (width a third of the mask radius) whose
    generated clean images have the variance ``signal_var`` (normalised units)."""
    box = gen.box_size
    axis = torch.arange(box, dtype=torch.float32, device=gen.volume.map.device) - box // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    width = s.mask_radius_fraction * box / 3
    with torch.no_grad():
        gen.volume.map.copy_(torch.exp(-(x**2 + y**2 + z**2) / (2 * width**2)))
        probe_var = float(gen.clean_images(gen.sample_hidden(64, draws)).var())
        gen.volume.map.mul_(math.sqrt(max(signal_var, 0.05) / max(probe_var, 1e-12)))


def iter_cryogan(particles: ParticleSet, settings: CryoGANSettings | None = None,
                 device: str | torch.device = "cpu", log_every: int = 100,
                 output_dir: str | Path | None = None, resume: bool = False
                 ) -> Iterator[CryoGANProgress]:
    """Train the map adversarially; yield progress every ``log_every`` map steps.

    Parameters
    ----------
    particles
        Images (memory-mapped, read per batch) with per-particle CTF parameters;
        poses in the metadata are ignored (shifts only set the prior's width).
    settings
        :class:`CryoGANSettings`.
    device
        Torch device.
    log_every
        Map steps between reports (the last step always reports).
    output_dir
        Run folder for checkpoints (:mod:`cryoviz.inference.cryogan_state`),
        written atomically at every report; None: no checkpoints.
    resume
        Continue from the last checkpoint in ``output_dir`` (a fresh start when
        there is none). A resumed run ends with the map an unbroken run gives
        (bit-identical with one CPU thread).

    Yields
    ------
    CryoGANProgress
        Frozen states; the last carries the :class:`CryoGANResult`.
    """
    s = settings or CryoGANSettings()
    _check(particles, s)
    t0 = time.perf_counter()
    device = torch.device(device)
    box, apix, n = particles.box_size, particles.pixel_size_angstrom, len(particles)
    source = ImageSource(particles)
    rng = np.random.default_rng(s.seed)
    probe = source.images(np.sort(rng.choice(n, min(512, n), replace=False)))
    image_std = float(probe.std())
    if not image_std > 0:
        raise InputError(particles.source_path, "images", "images with non-zero variance",
                         image_std)
    noise_std = (estimate_noise_std(probe, s.noise_radius_fraction) if s.noise_std is None
                 else float(s.noise_std))
    shift_sigma = _shift_sigma(particles, s)
    gen = PhysicsGenerator(box, apix, particles.ctf, shift_sigma, noise_std / image_std,
                           s.voxel_scale, s.components).to(device)
    draws = torch.Generator(device=device).manual_seed(s.seed + 1)
    _start_blob(gen, s, 1.0 - (noise_std / image_std) ** 2, draws)
    critic = Critic(box, s.channels, seed=s.seed).to(device)
    mask = spherical_mask(box, s.mask_radius_fraction * box, device=device)
    opt_v = torch.optim.Adam(gen.parameters(), lr=s.lr_volume, betas=(s.beta1, s.beta2))
    opt_c = torch.optim.Adam(critic.parameters(), lr=s.lr_critic, betas=(s.beta1, s.beta2))
    order, pos = rng.permutation(n), 0
    history: list[dict] = []
    start_step = 0
    if output_dir is not None:
        saved = latest_state(output_dir) if resume else None
        if saved is None:
            clear_states(output_dir)
        else:
            if saved["settings"] != asdict(s):
                raise InputError(Path(output_dir) / "checkpoints", "settings",
                                 "the settings the run was started with", asdict(s))
            gen.load_state_dict(saved["generator"])
            critic.load_state_dict(saved["critic"])
            opt_v.load_state_dict(saved["opt_volume"])
            opt_c.load_state_dict(saved["opt_critic"])
            draws.set_state(saved["draws"])
            rng.bit_generator.state = saved["rng"]
            order, pos = saved["order"].numpy(), int(saved["pos"])
            history, start_step = list(saved["history"]), int(saved["step"])

    def real_batch() -> torch.Tensor:
        nonlocal order, pos
        if pos + s.batch_size > n:
            order, pos = rng.permutation(n), 0
        idx = np.sort(order[pos:pos + s.batch_size])
        pos += s.batch_size
        return source.images(idx).to(device) / image_std

    def finish() -> CryoGANResult:
        with torch.no_grad():
            vol, components = (m.float().cpu() * image_std for m in gen.maps())
        return CryoGANResult(map=vol, components=components, noise_std=noise_std,
                             shift_sigma_angstrom=shift_sigma,
                             history=tuple(history), pixel_size_angstrom=apix,
                             seconds=time.perf_counter() - t0, settings=s)

    window: dict[str, list[float]] = {k: [] for k in ("critic_loss", "wasserstein",
                                                      "gradient_penalty", "generator_loss")}
    for step in range(start_step, s.n_steps):
        band = s.band(step)
        for _ in range(s.n_critic):
            real = lowpass_images(real_batch(), band)
            with torch.no_grad():
                fake = lowpass_images(gen(s.batch_size, draws)[0], band)
            weight = torch.rand(s.batch_size, generator=draws, device=device)
            distance = critic(real).mean() - critic(fake).mean()
            penalty = gradient_penalty(critic, real, fake, weight)
            loss_c = -distance + s.gp_lambda * penalty
            opt_c.zero_grad(set_to_none=True)
            loss_c.backward()
            opt_c.step()
            window["critic_loss"].append(float(loss_c.detach()))
            window["wasserstein"].append(float(distance.detach()))
            window["gradient_penalty"].append(float(penalty.detach()))
        fake = lowpass_images(gen(s.batch_size, draws)[0], band)
        loss_g = -critic(fake).mean()
        opt_v.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_v.step()
        critic.zero_grad(set_to_none=True)
        with torch.no_grad():
            vmap = gen.volume.map
            vmap.mul_(mask)
            if s.positivity:
                vmap.clamp_(min=0.0)
            for component in gen.components:
                component.map.mul_(mask * (1.0 - s.component_decay))
        window["generator_loss"].append(float(loss_g.detach()))
        last = step + 1 == s.n_steps
        if (step + 1) % log_every == 0 or last:
            record = {"step": step + 1, **{k: float(np.mean(v)) for k, v in window.items()},
                      "band": band, "seconds": time.perf_counter() - t0}
            history.append(record)
            window = {k: [] for k in window}
            if output_dir is not None:
                save_state(output_dir, step + 1, {
                    "step": step + 1, "settings": asdict(s), "history": list(history),
                    "generator": gen.state_dict(), "critic": critic.state_dict(),
                    "opt_volume": opt_v.state_dict(), "opt_critic": opt_c.state_dict(),
                    "draws": draws.get_state(), "rng": rng.bit_generator.state,
                    "order": torch.from_numpy(order.copy()), "pos": pos})
            yield _progress(record, s, finish() if last else None)
    if start_step >= s.n_steps and history:  # resumed a finished run
        yield _progress(history[-1], s, finish())
    source.close()


def _progress(record: dict, s: CryoGANSettings, result: CryoGANResult | None
              ) -> CryoGANProgress:
    """The progress state of a history ``record``."""
    return CryoGANProgress(
        step=record["step"], n_steps=s.n_steps, critic_loss=record["critic_loss"],
        wasserstein=record["wasserstein"], gradient_penalty=record["gradient_penalty"],
        generator_loss=record["generator_loss"], band=record["band"],
        seconds=record["seconds"], result=result)


def run_cryogan(particles: ParticleSet, settings: CryoGANSettings | None = None,
                **kwargs) -> CryoGANResult:
    """Run :func:`iter_cryogan` to the end and return its result."""
    return deque(iter_cryogan(particles, settings, **kwargs), maxlen=1)[0].result
