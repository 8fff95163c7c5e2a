"""Noise models: white noise at a given SNR and per-shell (coloured) Gaussian noise.

SNR convention: ``SNR = var(clean images) / sigma^2``, with the signal variance
taken over the whole box and averaged over the particles of the batch, and
``sigma^2`` the per-pixel variance of the added white Gaussian noise.
"""

from __future__ import annotations

import torch

from cryoviz.fourier import centered_irfft2, centered_rfft2, shell_index_2d

__all__ = ["noise_sigma_for_snr", "add_white_noise", "per_shell_power", "sample_shell_noise"]


def noise_sigma_for_snr(clean_images: torch.Tensor, snr: float) -> float:
    """Per-pixel noise standard deviation giving ``snr`` for ``(B, D, D)`` clean images."""
    if snr <= 0:
        raise ValueError(f"snr must be > 0, got {snr}")
    signal_var = clean_images.var(dim=(-2, -1)).mean().item()
    return (signal_var / snr) ** 0.5


def add_white_noise(
    clean_images: torch.Tensor, sigma: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Add white Gaussian noise of standard deviation ``sigma`` to ``(B, D, D)`` images."""
    noise = torch.randn(
        clean_images.shape, generator=generator, dtype=clean_images.dtype,
        device=clean_images.device,
    )
    return clean_images + sigma * noise


def per_shell_power(images: torch.Tensor) -> torch.Tensor:
    """Mean power ``|X(k)|^2`` per Fourier shell of ``(B, D, D)`` images, ``(D // 2 + 1,)``.

    For white noise of variance ``sigma^2`` each shell's power is ``D^2 sigma^2``
    (unnormalised FFT).
    """
    box = images.shape[-1]
    ft = centered_rfft2(images)
    shells = shell_index_2d(box, rfft=True, device=images.device)
    power = (ft.abs() ** 2).mean(dim=0)
    n_shells = box // 2 + 1
    keep = shells < n_shells
    total = torch.zeros(n_shells, dtype=power.dtype, device=power.device)
    count = torch.zeros(n_shells, dtype=power.dtype, device=power.device)
    total.index_add_(0, shells[keep], power[keep])
    count.index_add_(0, shells[keep], torch.ones_like(power[keep]))
    return total / count.clamp(min=1)


def sample_shell_noise(
    shape: tuple[int, int, int],
    shell_sigma2: torch.Tensor,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Gaussian noise images ``(B, D, D)`` with a given power spectrum.

    Parameters
    ----------
    shape
        ``(B, D, D)``.
    shell_sigma2
        ``(D // 2 + 1,)`` per-pixel real-space variance that each shell would
        have if the noise were white at that level; shells beyond the last
        entry use the last value.

    Returns
    -------
    torch.Tensor
        ``(B, D, D)`` real noise whose shell power is ``D^2 * shell_sigma2``.
    """
    batch, box, _ = shape
    white = torch.randn(shape, generator=generator, dtype=dtype)
    shells = shell_index_2d(box, rfft=True).clamp(max=shell_sigma2.numel() - 1)
    scale = shell_sigma2.to(dtype)[shells].sqrt()
    return centered_irfft2(centered_rfft2(white) * scale, box)
