"""Amortized pose inference: a CNN encoder and a homogeneous map trained jointly.

Recipes ``cryoai`` (Levy et al. 2022: implicit Fourier-space volume, symmetrized
loss) and ``cryoposenet`` (Nashed et al. 2021: voxel map, plain loss). For each
image ``Y_i`` the encoder (:class:`~cryoviz.inference.amortized_encoder.PoseEncoder`)
predicts ``(R_i, t_i)``; the map renders ``Ŷ_i = CTF_i * S_{t_i} * slice_{R_i}`` through
the shared forward model, and the loss per image (Fourier space, frequencies
below the current band limit) is

* plain: ``L_i = |Y_i - Ŷ_i|^2``;
* symmetrized: ``min(|Y_i - Ŷ_i|^2, |rot180(Y_i) - Ŷ_i|^2)``, with
  ``rot180(Y)`` = ``conj(Y)`` for the centred transform of a real image. When
  the second term wins, the prediction matches the π-rotated image and the
  particle's pose is ``(Rz(π) R_i, -t_i)`` (see
  :mod:`cryoviz.inference.amortized_encoder`).

The band limit marches linearly from ``start_band`` to Nyquist over the first
``marching_fraction`` of the steps (a low-pass warm-up).

With ``heads = H > 1`` the encoder gives ``H`` pose hypotheses per image and the
loss takes the minimum over them as well (winner-takes-all, the multi-head
encoder of CryoSPIN, Shekarforoush et al. 2024); the particle's pose is its best
hypothesis. The recipes' published forms have one head (the default).

Per-particle outputs (:class:`~cryoviz.inference.posterior.PosePosterior`): the
best pose; with the symmetrized loss, ``top_k = 2`` (the pose and its π-flipped
alternative) weighted by their Gaussian likelihoods under the residual noise
level, else ``top_k = 1``. An encoder has no posterior: ``angular_spread_deg``
and ``shift_spread_angstrom`` are a *sensitivity proxy*, the RMS change of the
prediction when the image gets fresh Gaussian noise of the residual's variance
(``n_spread_samples`` copies); not a calibrated posterior width. These outputs
and the run's files are made by :mod:`cryoviz.inference.amortized_pose_output`
(:func:`write_amortized_pose`, re-exported here).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch

from cryoviz.errors import InputError
from cryoviz.fourier import frequency_grid_2d, lowpass_volume
from cryoviz.imaging import images_to_fourier
from cryoviz.inference.amortized_encoder import PoseEncoder, render_hypotheses
from cryoviz.inference.amortized_pose_output import final_posterior, write_amortized_pose
from cryoviz.inference.em_start import fit_map_scale
from cryoviz.inference.posterior import PosePosterior
from cryoviz.io.particles import ImageSource, ParticleSet
from cryoviz.volumes import ImplicitVolume, VoxelVolume

__all__ = ["AmortizedPoseSettings", "AmortizedPoseProgress", "AmortizedPoseResult",
           "iter_amortized_pose", "run_amortized_pose", "write_amortized_pose", "RECIPE_DEFAULTS"]

RECIPE_DEFAULTS = {"cryoai": {"volume": "implicit", "symmetrized": True},
                   "cryoposenet": {"volume": "voxel", "symmetrized": False}}


@dataclass(frozen=True)
class AmortizedPoseSettings:
    """Settings of :func:`iter_amortized_pose`.

    Attributes
    ----------
    recipe
        ``'cryoai'`` or ``'cryoposenet'`` (names the run; sets the defaults below).
    volume
        ``'implicit'`` (Fourier MLP) or ``'voxel'``; ``None``: the recipe's.
    symmetrized
        Symmetrized (π-rotation) loss; ``None``: the recipe's.
    n_steps, batch_size
        Optimiser steps and images per step.
    lr_encoder, lr_volume
        Adam learning rates.
    max_shift_angstrom
        Shift bound; ``None``: 10% of the box.
    start_band, marching_fraction
        Band limit (cycles / pixel) at step 0 and the fraction of the steps over
        which it reaches Nyquist (0.5).
    channels, implicit_width, implicit_depth
        Network sizes.
    n_spread_samples
        Noisy copies per image for the spread proxy (0: spreads are NaN).
    heads
        Pose hypotheses per image (winner-takes-all); 1: the published recipes.
    pose_only_steps
        Warm-up steps that train the encoder only, against a fixed starting map
        (needs ``initial_map``, voxel volume).
    initial_lowpass_angstrom
        Low-pass of the starting map (Å).
    seed
        Seeds the networks, the batches and the noise.
    """

    recipe: str = "cryoai"
    volume: str | None = None
    symmetrized: bool | None = None
    n_steps: int = 2000
    batch_size: int = 64
    lr_encoder: float = 1e-3
    lr_volume: float = 1e-2
    max_shift_angstrom: float | None = None
    start_band: float = 0.15
    marching_fraction: float = 0.5
    channels: int = 16
    implicit_width: int = 64
    implicit_depth: int = 2
    n_spread_samples: int = 4
    heads: int = 1
    pose_only_steps: int = 0
    initial_lowpass_angstrom: float = 20.0
    seed: int = 0

    def resolved(self) -> AmortizedPoseSettings:
        """Validated settings with the recipe's defaults filled in."""
        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise InputError(None, name, expected, getattr(self, name))

        need(self.recipe in RECIPE_DEFAULTS, "recipe", f"one of {', '.join(RECIPE_DEFAULTS)}")
        out = replace(self, **{k: v for k, v in RECIPE_DEFAULTS[self.recipe].items()
                               if getattr(self, k) is None})
        need(out.volume in ("implicit", "voxel"), "volume", "'implicit' or 'voxel'")
        need(self.n_steps >= 1, "n_steps", "at least 1")
        need(self.batch_size >= 1, "batch_size", "at least 1")
        need(0 < self.start_band <= 0.5, "start_band", "in (0, 0.5] cycles per pixel")
        need(0 <= self.marching_fraction <= 1, "marching_fraction", "in [0, 1]")
        need(self.max_shift_angstrom is None or self.max_shift_angstrom >= 0,
             "max_shift_angstrom", ">= 0 Å or None")
        need(self.n_spread_samples >= 0, "n_spread_samples", ">= 0")
        need(self.heads >= 1, "heads", "at least 1")
        need(0 <= self.pose_only_steps <= self.n_steps, "pose_only_steps", "0 .. n_steps")
        need(self.initial_lowpass_angstrom > 0, "initial_lowpass_angstrom", "> 0 Å")
        return out

    def band(self, step: int) -> float:
        """Band limit (cycles / pixel) at 0-based ``step``."""
        ramp = self.marching_fraction * self.n_steps
        frac = 1.0 if ramp <= 0 else min(step / ramp, 1.0)
        return self.start_band + (0.5 - self.start_band) * frac


@dataclass(frozen=True)
class AmortizedPoseResult:
    """Outcome of :func:`iter_amortized_pose`.

    Attributes
    ----------
    map
        ``(D, D, D)`` float32 map in the images' units.
    posterior
        Per-particle poses (see the module docstring for the spreads).
    flipped
        ``(N,)`` bool: the π-rotated branch won (symmetrized loss only).
    losses
        Loss per step.
    noise_std
        Residual standard deviation per pixel, in the images' units.
    pixel_size_angstrom, seconds, settings
        Bookkeeping (``settings`` resolved).
    """

    map: torch.Tensor
    posterior: PosePosterior
    flipped: np.ndarray
    losses: tuple[float, ...]
    noise_std: float
    pixel_size_angstrom: float
    seconds: float
    settings: AmortizedPoseSettings


@dataclass(frozen=True)
class AmortizedPoseProgress:
    """State after a logged step: ``step`` (1-based) of ``n_steps``, the mean loss
    since the last report, the band limit (cycles / pixel), the fraction of
    images whose π-rotated branch won, elapsed seconds, and the result at the end."""

    step: int
    n_steps: int
    loss: float
    band: float
    flipped_fraction: float
    seconds: float
    result: AmortizedPoseResult | None = None


def _check(particles: ParticleSet, initial_map, s: AmortizedPoseSettings) -> None:
    if particles.box_size % 2:
        raise InputError(particles.source_path, "box_size", "an even box", particles.box_size)
    if len(particles) < 2:
        raise InputError(particles.source_path, "particles", "at least 2 particles",
                         len(particles))
    if s.pose_only_steps and initial_map is None:
        raise InputError(None, "initial_map", "a starting map for pose_only_steps > 0", None)
    if initial_map is not None:
        box = particles.box_size
        if tuple(np.shape(initial_map)) != (box,) * 3:
            raise InputError(None, "initial_map", f"shape {(box,) * 3}", tuple(np.shape(
                initial_map)))
        if s.volume != "voxel":
            raise InputError(None, "initial_map", "used with the voxel volume only", s.volume)
        if particles.ctf is None:
            raise InputError(particles.source_path, "ctf", "CTF parameters to scale the "
                             "starting map", None)


def _make_volume(s: AmortizedPoseSettings, box: int, apix: float,
                 initial: torch.Tensor | None) -> torch.nn.Module:
    if s.volume == "voxel":  # voxel values O(0.1) for unit-variance images
        return VoxelVolume(box, apix, initial=initial)
    return ImplicitVolume(box, apix, width=s.implicit_width, depth=s.implicit_depth,
                          domain="fourier", seed=s.seed)


class _Model:
    """Encoder + volume + forward model on normalised images of one particle set."""

    def __init__(self, particles: ParticleSet, s: AmortizedPoseSettings, device,
                 initial_map: torch.Tensor | None) -> None:
        self.particles, self.s, self.device = particles, s, torch.device(device)
        self.box, self.apix = particles.box_size, particles.pixel_size_angstrom
        self.source = ImageSource(particles)
        gen = np.random.default_rng(s.seed)
        probe = self.source.images(np.sort(gen.choice(len(particles), min(256, len(particles)),
                                                      replace=False)))
        self.image_std = float(probe.std())
        max_shift = 0.1 * self.box * self.apix if s.max_shift_angstrom is None \
            else s.max_shift_angstrom
        self.encoder = PoseEncoder(self.box, max_shift, s.channels, seed=s.seed,
                                   heads=s.heads).to(self.device)
        initial = None
        if initial_map is not None:  # low-passed, on the normalised images' scale
            start = lowpass_volume(torch.as_tensor(initial_map, dtype=torch.float32),
                                   s.initial_lowpass_angstrom, self.apix)
            initial = start * fit_map_scale(start, particles, device=device) / self.image_std
        self.volume = _make_volume(s, self.box, self.apix, initial).to(self.device)
        if s.volume == "implicit":  # the MLP outputs O(1): scale by the data's transforms
            ft = images_to_fourier(probe / self.image_std)
            self.volume.output_scale.fill_(float(ft.abs().pow(2).mean().sqrt()))
        ky, kx = frequency_grid_2d(self.box, rfft=True, device=self.device)
        self.radius = torch.sqrt(kx**2 + ky**2)
        # rfft half plane: columns 1 .. D/2 - 1 stand for two points of the full plane
        weight = torch.full_like(self.radius, 2.0)
        weight[:, 0] = 1.0
        weight[:, -1] = 1.0
        self.half_weight = weight

    def batch(self, index: np.ndarray) -> tuple[torch.Tensor, object]:
        images = self.source.images(index).to(self.device) / self.image_std
        ctf = None if self.particles.ctf is None else \
            self.particles.ctf.subset(torch.as_tensor(index)).to(self.device)
        return images, ctf

    def hypotheses(self, images: torch.Tensor, ctf, band: float
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every head's pose and branch errors.

        Returns
        -------
        tuple of torch.Tensor
            Rotations ``(B, H, 3, 3)``, shifts ``(B, H, 2)`` and errors ``(B, H, 2)``
            (:meth:`branch_errors` of each head).
        """
        R, t = self.encoder.hypotheses(images)
        pred = render_hypotheses(self.volume.slices, R, t, None, ctf, self.box, self.apix)
        return R, t, self.branch_errors(images, pred, band)

    def branch_errors(self, images: torch.Tensor, pred_ft: torch.Tensor, band: float
                      ) -> torch.Tensor:
        """``(B, 2)`` (or ``(B, H, 2)`` for ``(B, H, ...)`` predictions) mean squared
        errors per pixel: the image and its π rotation."""
        y = images_to_fourier(images)
        if pred_ft.ndim == y.ndim + 1:
            y = y[:, None]
        w = self.half_weight * (self.radius < band)
        norm = w.sum() * self.box**2  # Parseval: per real-space pixel
        plain = ((y - pred_ft).abs().pow(2) * w).sum((-2, -1)) / norm
        rotated = ((y.conj() - pred_ft).abs().pow(2) * w).sum((-2, -1)) / norm
        return torch.stack([plain, rotated], -1)


def iter_amortized_pose(particles: ParticleSet, settings: AmortizedPoseSettings | None = None,
                        initial_map: torch.Tensor | None = None,
                        device: str | torch.device = "cpu", log_every: int = 100
                        ) -> Iterator[AmortizedPoseProgress]:
    """Train the encoder and the map; yield progress every ``log_every`` steps.

    Parameters
    ----------
    particles
        Images (memory-mapped, read per batch) with CTF (optional); any poses in
        the metadata are ignored.
    settings
        :class:`AmortizedPoseSettings` (default: recipe ``cryoai``).
    initial_map
        Optional ``(D, D, D)`` starting map (any scale: fitted to the images),
        low-passed to ``initial_lowpass_angstrom``; default: zeros / a random MLP.
    device
        Torch device.
    log_every
        Steps between progress reports (the last step always reports).

    Yields
    ------
    AmortizedPoseProgress
        Frozen states; the last carries the :class:`AmortizedPoseResult`.
    """
    s = (settings or AmortizedPoseSettings()).resolved()
    _check(particles, initial_map, s)
    t0 = time.perf_counter()
    # the implicit map's MLP draws its weights from the global RNG: seed it, as the
    # training loop does, so that a run is the same in any process
    torch.manual_seed(s.seed)
    m = _Model(particles, s, device, initial_map)
    opt = torch.optim.Adam([{"params": m.encoder.parameters(), "lr": s.lr_encoder},
                            {"params": m.volume.parameters(), "lr": s.lr_volume}])
    rng = np.random.default_rng(s.seed)
    n = len(particles)
    order, pos = rng.permutation(n), 0
    losses: list[float] = []
    window: list[float] = []
    flips: list[float] = []
    for step in range(s.n_steps):
        if pos + s.batch_size > n:
            order, pos = rng.permutation(n), 0
        idx = np.sort(order[pos:pos + s.batch_size])
        pos += s.batch_size
        images, ctf = m.batch(idx)
        _, _, errors = m.hypotheses(images, ctf, s.band(step))
        score = errors.min(-1).values if s.symmetrized else errors[..., 0]
        per_image, head = score.min(dim=1)  # the best hypothesis of each image
        errors = errors[torch.arange(len(idx), device=m.device), head]
        loss = per_image.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step < s.pose_only_steps:  # warm-up: the map stays as it started
            for param in m.volume.parameters():
                param.grad = None
        opt.step()
        value = float(loss.detach())
        losses.append(value)
        window.append(value)
        flips.append(float((errors[:, 1] < errors[:, 0]).float().mean()) if s.symmetrized
                     else 0.0)
        last = step + 1 == s.n_steps
        if (step + 1) % log_every == 0 or last:
            result = None
            if last:
                m.encoder.eval()
                post, flipped, noise_std = final_posterior(m, max(s.batch_size, 128))
                with torch.no_grad():
                    vol = m.volume.volume(None).float().cpu() * m.image_std
                result = AmortizedPoseResult(
                    map=vol, posterior=post, flipped=flipped, losses=tuple(losses),
                    noise_std=noise_std, pixel_size_angstrom=m.apix,
                    seconds=time.perf_counter() - t0, settings=s)
            yield AmortizedPoseProgress(
                step=step + 1, n_steps=s.n_steps, loss=float(np.mean(window)),
                band=s.band(step), flipped_fraction=float(np.mean(flips)),
                seconds=time.perf_counter() - t0, result=result)
            window, flips = [], []


def run_amortized_pose(particles: ParticleSet, settings: AmortizedPoseSettings | None = None,
                       **kwargs) -> AmortizedPoseResult:
    """Run :func:`iter_amortized_pose` to the end and return its result."""
    return deque(iter_amortized_pose(particles, settings, **kwargs), maxlen=1)[0].result
