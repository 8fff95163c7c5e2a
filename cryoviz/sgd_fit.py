"""Homogeneous voxel map fitted by stochastic gradients through the forward model.

Two half maps (gold standard) are fitted on the two halves of the data by
stochastic gradient steps on their Fourier coefficients, minimising the MAP
objective

    sum_i |X_i - CTF_i S_i slice_{R_i}(V)|^2 + sum_k lambda(|k|) |V(k)|^2

whose per-shell prior ``lambda = mean weight / SSNR`` comes from the FSC of the
two half maps, updated every epoch (RELION's tau^2 update, done by SGD). The
gradient is preconditioned by the objective's per-shell curvature, so every
frequency converges at the same rate (plain or Adam steps are either far too
slow at high frequency or keep jittering around the optimum, which destroys
the FSC of weakly determined shells).

Long work is a generator: :func:`iter_fit_voxel_sgd` yields a
:class:`SGDProgress` after every epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from cryoviz.backprojection import ssnr_from_fsc
from cryoviz.ctf import CTFParams, compute_ctf_2d
from cryoviz.fourier import centered_rfft2, shell_index_2d, shell_index_3d
from cryoviz.imaging import forward_fourier, volume_to_fourier
from cryoviz.metrics.fsc import fsc

__all__ = ["SGDProgress", "iter_fit_voxel_sgd", "half_map_fsc"]

ImageReader = Callable[[np.ndarray], torch.Tensor]


@dataclass(frozen=True)
class SGDProgress:
    """State after one epoch.

    Attributes
    ----------
    epoch
        1-based epoch number.
    loss
        Mean data term per image over the epoch.
    half_fsc
        ``(D // 2 + 1,)`` FSC between the two half maps.
    half_maps
        ``(2, D, D, D)`` current half maps (float32, detached, CPU).
    """

    epoch: int
    loss: float
    half_fsc: torch.Tensor
    half_maps: torch.Tensor


def half_map_fsc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """FSC ``(D // 2 + 1,)`` float64 of two ``(D, D, D)`` maps (used for the prior update)."""
    return fsc(a.to(torch.float64), b.to(torch.float64)).fsc.to(torch.float64)


def _rfft3_shells(box: int, device) -> torch.Tensor:
    full = shell_index_3d(box, device=device)
    full = torch.fft.ifftshift(full, dim=(-3, -2, -1))
    return full[..., : box // 2 + 1]


def _to_volume(coeffs: torch.Tensor, box: int) -> torch.Tensor:
    real = torch.fft.irfftn(coeffs, s=(box, box, box))
    return torch.fft.fftshift(real, dim=(-3, -2, -1))


def iter_fit_voxel_sgd(
    read_images: ImageReader,
    rotations: torch.Tensor,
    pixel_size_angstrom: float,
    half_set: np.ndarray,
    shifts_angstrom: torch.Tensor | None = None,
    ctf: CTFParams | None = None,
    epochs: int = 10,
    batch_size: int = 128,
    learning_rate: float = 1.0,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Iterator[SGDProgress]:
    """Fit two half maps by preconditioned SGD; yield progress after each epoch.

    Each step takes the gradient of the minibatch estimate of the MAP objective
    through the differentiable forward model and divides it by the objective's
    per-shell curvature ``2 (sum CTF^2 + lambda)`` (a diagonal Newton step); the
    step size falls as ``1 / t`` (floored at one over the steps per epoch), so the
    iterate averages the minibatch solutions instead of jittering around them.

    Parameters
    ----------
    read_images
        Function returning ``(B, D, D)`` images for an int array of particle indices.
    rotations
        ``(N, 3, 3)`` particle -> lab.
    pixel_size_angstrom
        Pixel size in Å.
    half_set
        ``(N,)`` 0 / 1 half assignment.
    shifts_angstrom
        ``(N, 2)`` or ``None``.
    ctf
        Parameters of the ``N`` particles or ``None``.
    epochs, batch_size, seed, device
        Optimisation settings.
    learning_rate
        Scale of the preconditioned step (1 = a full diagonal Newton step).

    Yields
    ------
    SGDProgress
    """
    n_particles = int(rotations.shape[0])
    halves = [np.flatnonzero(half_set == h) for h in (0, 1)]
    probe = read_images(np.arange(min(n_particles, 256)))
    box = int(probe.shape[-1])
    n_shells = box // 2 + 1
    shells_2d = shell_index_2d(box, rfft=True, device=device).clamp(max=n_shells - 1)
    raw_shells_3d = _rfft3_shells(box, device)
    inside_nyquist = raw_shells_3d <= box // 2
    shells_3d = raw_shells_3d.clamp(max=n_shells - 1)

    # Data weight (sum of CTF^2) per Fourier voxel and shell, for one half.
    ctf2 = torch.zeros(n_shells, dtype=torch.float64, device=device)
    all_idx = np.arange(n_particles)
    for start in range(0, n_particles, 1024):
        sel = all_idx[start:start + 1024]
        if ctf is None:
            c2 = torch.ones((len(sel),) + shells_2d.shape, dtype=torch.float64, device=device)
        else:
            c2 = compute_ctf_2d(ctf.subset(torch.as_tensor(sel)), box, pixel_size_angstrom,
                                dtype=torch.float64, device=device) ** 2
        ctf2.index_add_(0, shells_2d.reshape(-1), 2.0 * c2.sum(0).reshape(-1))
    voxels_3d = torch.bincount(shell_index_3d(box, device=device).reshape(-1).clamp(
        max=n_shells - 1), minlength=n_shells).to(torch.float64)
    weight_per_half = ctf2 / voxels_3d.clamp(min=1) / 2.0

    generator = torch.Generator().manual_seed(seed)
    params = [
        torch.zeros((box, box, box // 2 + 1), dtype=torch.complex64, device=device,
                    requires_grad=True)
        for _ in range(2)
    ]
    # start with a prior of SSNR 1 everywhere; from epoch 2 on, from the half-map FSC
    lam = weight_per_half.to(torch.float32)
    rot = rotations.to(device, torch.float32)
    shifts = None if shifts_angstrom is None else shifts_angstrom.to(device, torch.float32)
    weight_3d = weight_per_half.to(torch.float32)[shells_3d]
    steps_per_epoch = max(int(np.ceil(len(h) / batch_size)) for h in halves)
    step_count = 0

    def volume_of(h: int) -> torch.Tensor:
        return _to_volume(params[h] * inside_nyquist, box)

    for epoch in range(1, epochs + 1):
        orders = [h[torch.randperm(len(h), generator=generator).numpy()] for h in halves]
        total, seen = 0.0, 0
        lam_3d = lam[shells_3d]
        hessian = 2.0 * (weight_3d + lam_3d)
        for step in range(steps_per_epoch):
            for param in params:
                param.grad = None
            loss_sum = torch.zeros((), device=device)
            for h, order in enumerate(orders):
                sel = order[step * batch_size:(step + 1) * batch_size]
                if len(sel) == 0:
                    continue
                images = read_images(sel).to(device, torch.float32)
                target = centered_rfft2(images)
                volume_ft = volume_to_fourier(volume_of(h))
                sel_t = torch.as_tensor(sel)
                model = forward_fourier(
                    volume_ft, rot[sel_t], box, pixel_size_angstrom,
                    None if shifts is None else shifts[sel_t],
                    None if ctf is None else ctf.subset(sel_t),
                )
                residual = (model - target).abs().pow(2).sum(dim=(-2, -1))
                # unbiased estimate of the half's full objective
                data = residual.sum() * (len(halves[h]) / len(sel))
                prior = (lam_3d * params[h].abs().pow(2)).sum()
                loss_sum = loss_sum + data + prior
                total += float(residual.detach().sum())
                seen += len(sel)
            loss_sum.backward()
            # diagonal Newton step, averaged over the batches (step size 1 / t,
            # floored at one epoch's worth): the iterate is the running MAP estimate
            rate = learning_rate * max(1.0 / (step_count + 1), 1.0 / steps_per_epoch)
            with torch.no_grad():
                for param in params:
                    if param.grad is not None:
                        param -= rate * param.grad / hessian
            step_count += 1
        with torch.no_grad():
            maps = torch.stack([volume_of(0), volume_of(1)]).detach()
            fsc = half_map_fsc(maps[0], maps[1])
            lam = (weight_per_half / ssnr_from_fsc(fsc) * 2.0).to(torch.float32)
        yield SGDProgress(epoch=epoch, loss=total / max(seen, 1), half_fsc=fsc.cpu(),
                          half_maps=maps.cpu().to(torch.float32))
