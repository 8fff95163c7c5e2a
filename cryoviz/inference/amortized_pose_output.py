"""Final poses and output files of an amortized pose inference run.

After training (:mod:`cryoviz.inference.amortized_pose`) the encoder gives every
particle its pose, the π-flipped alternative and a spread proxy
(:func:`final_posterior`); :func:`write_amortized_pose` writes the map, the poses
and ``metrics.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from cryoviz.geometry import geodesic_distance_deg
from cryoviz.inference.amortized_encoder import flip_pose_180
from cryoviz.inference.posterior import PosePosterior, export_poses
from cryoviz.io.mrc import atomic_output, write_volume
from cryoviz.io.particles import ParticleSet

if TYPE_CHECKING:
    from cryoviz.inference.amortized_pose import AmortizedPoseResult, _Model

__all__ = ["final_posterior", "write_amortized_pose"]


def _final_poses(m: _Model, batch_size: int) -> tuple[np.ndarray, ...]:
    """Poses, branch errors and spread proxies of every particle (no gradients)."""
    s, n = m.s, len(m.particles)
    rots, shifts, errs, heads = [], [], [], []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            idx = np.arange(start, min(start + batch_size, n))
            images, ctf = m.batch(idx)
            R, t, e = m.hypotheses(images, ctf, 0.5)
            score = e.min(-1).values if s.symmetrized else e[..., 0]
            head = score.argmin(dim=1)  # the best hypothesis of each image
            rows = torch.arange(len(idx), device=m.device)
            errs.append(e[rows, head])
            rots.append(R[rows, head])
            shifts.append(t[rows, head])
            heads.append(head)
        R, t, e = torch.cat(rots), torch.cat(shifts), torch.cat(errs)
        best_head = torch.cat(heads)
        noise_var = float(e[:, 0].mean()) if not s.symmetrized else float(e.min(1).values.mean())
        ang = torch.full((n,), float("nan"))
        dsh = torch.full((n,), float("nan"))
        if s.n_spread_samples > 0:
            gen = torch.Generator(device=m.device).manual_seed(s.seed + 1)
            acc_a, acc_s = torch.zeros(n), torch.zeros(n)
            for _ in range(s.n_spread_samples):
                for start in range(0, n, batch_size):
                    sl = slice(start, min(start + batch_size, n))
                    images, _ = m.batch(np.arange(sl.start, sl.stop))
                    noise = torch.randn(images.shape, generator=gen, device=m.device)
                    Rh, th = m.encoder.hypotheses(images + math.sqrt(noise_var) * noise)
                    rows = torch.arange(sl.stop - sl.start, device=m.device)
                    Rn, tn = Rh[rows, best_head[sl]], th[rows, best_head[sl]]
                    acc_a[sl] += geodesic_distance_deg(Rn, R[sl]).cpu().double().pow(2).float()
                    acc_s[sl] += (tn - t[sl]).pow(2).sum(-1).cpu()
            ang = (acc_a / s.n_spread_samples).sqrt()
            dsh = (acc_s / s.n_spread_samples).sqrt()
    return (R.cpu().double(), t.cpu().double(), e.cpu().double(), noise_var, ang.double(),
            dsh.double())


def final_posterior(m: _Model, batch_size: int) -> tuple[PosePosterior, np.ndarray, float]:
    """Per-particle poses of the trained model ``m``.

    Returns
    -------
    tuple
        The :class:`~cryoviz.inference.posterior.PosePosterior` (see
        :mod:`cryoviz.inference.amortized_pose` for the weights and spreads), the
        ``(N,)`` bool array of particles whose π-rotated branch won, and the
        residual noise standard deviation in the images' units.
    """
    R, t, e, noise_var, ang, dsh = _final_poses(m, batch_size)
    n = len(m.particles)
    flipped = (e[:, 1] < e[:, 0]) if m.s.symmetrized else torch.zeros(n, dtype=torch.bool)
    Rf, tf = flip_pose_180(R, t)
    best_R = torch.where(flipped[:, None, None], Rf, R)
    best_t = torch.where(flipped[:, None], tf, t)
    if m.s.symmetrized:  # both branches, weighted by their Gaussian likelihoods
        pixels = m.box**2
        loglik = -0.5 * pixels * e / max(noise_var, 1e-12)
        w = torch.softmax(loglik, dim=1)
        alt_R = torch.where(flipped[:, None, None], R, Rf)
        alt_t = torch.where(flipped[:, None], t, tf)
        topk_R = torch.stack([best_R, alt_R], 1)
        topk_t = torch.stack([best_t, alt_t], 1)
        topk_w = torch.sort(w, dim=1, descending=True).values
    else:
        topk_R, topk_t, topk_w = best_R[:, None], best_t[:, None], torch.ones(n, 1,
                                                                            dtype=torch.float64)
    ids = np.asarray(m.particles.particle_ids if m.particles.particle_ids is not None
                     else np.arange(n))
    post = PosePosterior(
        rotations=best_R.numpy(), shifts_angstrom=best_t.numpy(),
        angular_spread_deg=ang.numpy(), shift_spread_angstrom=dsh.numpy(),
        topk_rotations=topk_R.numpy(), topk_shifts_angstrom=topk_t.numpy(),
        topk_weights=topk_w.numpy(), particle_ids=ids)
    return post, flipped.numpy(), math.sqrt(noise_var) * m.image_std


def write_amortized_pose(result: AmortizedPoseResult, particles: ParticleSet,
                         output_dir: str | Path) -> dict:
    """Write ``volumes/map.mrc`` (with the voxel size), ``poses.npz``, the particles
    with the inferred poses as ``particles.star`` / ``particles.cs`` / ``poses.pkl``
    (cryoDRGN), and ``metrics.json``; return the metrics."""
    out = Path(output_dir)
    apix = result.pixel_size_angstrom
    write_volume(out / "volumes" / "map.mrc", result.map.numpy(), apix)
    export_poses(result.posterior, particles, out)
    spread = result.posterior.angular_spread_deg
    metrics = {
        "recipe": result.settings.recipe,
        "n_particles": len(particles),
        "final_loss": float(np.mean(result.losses[-50:])),
        "noise_std": result.noise_std,
        "flipped_fraction": float(result.flipped.mean()),
        "median_angular_spread_deg": float(np.median(spread)) if np.isfinite(spread).all()
        else None,
        "angular_spread_kind": "encoder sensitivity to resampled noise (not a posterior)",
        "seconds": result.seconds,
        "settings": asdict(result.settings),
    }
    with atomic_output(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2))
    return metrics
