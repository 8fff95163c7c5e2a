"""Noise models: white noise at a given SNR and per-shell (coloured) Gaussian noise.

SNR convention: ``SNR = var(clean images) / sigma^2``, with the signal variance
taken over the whole box and averaged over the particles of the batch, and
``sigma^2`` the per-pixel variance of the added white Gaussian noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cryoviz.fourier import centered_irfft2, centered_rfft2, shell_index_2d

__all__ = [
    "noise_sigma_for_snr",
    "add_white_noise",
    "per_shell_power",
    "sample_shell_noise",
    "HalfPlaneShells",
    "half_plane_shells",
]


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


@dataclass(frozen=True)
class HalfPlaneShells:
    """Pixels of a centred half (rfft) image transform grouped by Fourier shell.

    Per-shell Gaussian likelihoods over the half plane count each independent
    coefficient once: the ``kx = 0`` column (and ``kx = D/2`` for even ``D``) holds
    both members of Hermitian pairs, so it gets weight 1/2.

    Attributes
    ----------
    pixels
        ``(P,)`` flat indices into the ``(D, D // 2 + 1)`` half plane (shell 0 left out).
    shell
        ``(P,)`` shell of each kept pixel.
    weight
        ``(P,)`` 1, or 1/2 on the Hermitian-redundant columns.
    count
        ``(D // 2 + 1,)`` sum of weights per shell.
    n_shells
        ``D // 2 + 1``.
    """

    pixels: torch.Tensor
    shell: torch.Tensor
    weight: torch.Tensor
    count: torch.Tensor
    n_shells: int

    def sums(self, values: torch.Tensor) -> torch.Tensor:
        """Weighted per-shell sums ``(..., S)`` of ``(..., D, D // 2 + 1)`` real values."""
        flat = values.reshape(*values.shape[:-2], -1)[..., self.pixels] * self.weight
        out = torch.zeros((*flat.shape[:-1], self.n_shells), dtype=flat.dtype,
                          device=flat.device)
        return out.index_add_(-1, self.shell, flat)


def half_plane_shells(
    box_size: int, last_shell: int | None = None, device: torch.device | str | None = None
) -> HalfPlaneShells:
    """The :class:`HalfPlaneShells` of shells ``1 .. last_shell`` (default ``D // 2``)."""
    n_shells = box_size // 2 + 1
    last = n_shells - 1 if last_shell is None else int(last_shell)
    shells = shell_index_2d(box_size, rfft=True, device=device)
    weight = torch.ones(shells.shape, dtype=torch.float64, device=device)
    weight[:, 0] = 0.5
    if box_size % 2 == 0:
        weight[:, -1] = 0.5
    keep = ((shells >= 1) & (shells <= last)).reshape(-1)
    pixels = torch.nonzero(keep).flatten()
    shell = shells.reshape(-1)[pixels]
    w = weight.reshape(-1)[pixels]
    count = torch.zeros(n_shells, dtype=torch.float64, device=device).index_add_(0, shell, w)
    return HalfPlaneShells(pixels=pixels, shell=shell, weight=w, count=count,
                           n_shells=n_shells)
