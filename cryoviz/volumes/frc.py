"""E2GMM's loss (Chen & Ludtke 2021): one minus the mean Fourier ring correlation.

Over Fourier shells up to a maximum resolution, the FRC between each model
projection and its particle image; it ignores each image's overall scale.
"""

from __future__ import annotations

import torch

__all__ = ["shell_matrix", "frc_per_shell", "frc_loss"]


def shell_matrix(box_size: int, max_shell: int, min_shell: int, device,
                  dtype: torch.dtype) -> torch.Tensor:
    """``(D * (D//2+1), S)`` weights: half-plane sample -> shell.

    Shells ``round(|k| D)`` from ``min_shell`` to ``max_shell``; the columns
    ``0 < kx < D/2`` count twice (they stand for their Hermitian mirrors too).
    """
    d = box_size
    ky = torch.arange(d, device=device, dtype=torch.float64) - d // 2
    kx = torch.arange(d // 2 + 1, device=device, dtype=torch.float64)
    shell = torch.round(torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)).long()
    # columns 0 < kx < D/2 stand for themselves and their Hermitian mirrors
    mult = torch.ones(d, d // 2 + 1, device=device, dtype=dtype)
    last = d // 2 if d % 2 == 0 else d // 2 + 1
    mult[:, 1:last] = 2.0
    n_shells = max_shell - min_shell + 1
    onehot = torch.zeros(d * (d // 2 + 1), n_shells, device=device, dtype=dtype)
    flat = shell.reshape(-1)
    keep = (flat >= min_shell) & (flat <= max_shell)
    rows = torch.nonzero(keep).squeeze(1)
    onehot[rows, flat[rows] - min_shell] = mult.reshape(-1)[rows]
    return onehot


def frc_per_shell(model: torch.Tensor, target: torch.Tensor, max_shell: int | None = None,
                  min_shell: int = 1, eps: float = 1e-12) -> torch.Tensor:
    """Fourier ring correlation of each model / image pair, per shell.

    Parameters
    ----------
    model, target
        ``(B, D, D//2+1)`` centred half transforms.
    max_shell
        Highest shell ``round(|k| D)`` included (default ``D // 2``, Nyquist).
    min_shell
        Lowest shell (default 1: the DC term is left out).
    eps
        Added under the square root of the denominator.

    Returns
    -------
    torch.Tensor
        ``(B, S)`` real FRC for shells ``min_shell .. max_shell``.
    """
    d = int(model.shape[-2])
    top = d // 2 if max_shell is None else int(max_shell)
    if not 0 <= min_shell <= top:
        raise ValueError(f"need 0 <= min_shell <= max_shell, got {min_shell}, {top}")
    rdtype = model.real.dtype
    weights = shell_matrix(d, top, min_shell, model.device, rdtype)
    mflat = model.reshape(model.shape[0], -1)
    tflat = target.to(model.dtype).reshape(target.shape[0], -1)
    cross = (mflat * tflat.conj()).real @ weights
    pm = (mflat.abs() ** 2) @ weights
    pt = (tflat.abs() ** 2) @ weights
    return cross / torch.sqrt(pm * pt + eps)


def frc_loss(model: torch.Tensor, target: torch.Tensor, max_shell: int | None = None,
             min_shell: int = 1) -> torch.Tensor:
    """E2GMM's loss: ``1 - mean_{particles, shells} FRC(model, target)``.

    Parameters
    ----------
    model, target
        ``(B, D, D//2+1)`` centred half transforms (CTF applied to the model).
    max_shell, min_shell
        Shell range, as in :func:`frc_per_shell`.

    Returns
    -------
    torch.Tensor
        Scalar in ``[0, 2]``.
    """
    return 1.0 - frc_per_shell(model, target, max_shell, min_shell).mean()
