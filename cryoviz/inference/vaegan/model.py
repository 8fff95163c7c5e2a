"""CryoVAEGAN networks: encoder, canonical-image decoder, image discriminator.

The decoder has no volume: it renders a learned canonical 2-D image (a free
``D x D`` image plus ``L`` content basis images weighted by the latent ``z``)
turned in the image plane by the predicted angle (:func:`rotate_images`,
differentiable) and multiplied in Fourier space by the CTF of the predicted
defocus (:func:`cryoviz.ctf.compute_ctf_2d`, the engine's RELION convention).

In-plane angles are counter-clockwise (from +x towards +y) turns of the image
content about the pixel ``D // 2``, carried as unit 2-vectors ``(cos, sin)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from cryoviz.ctf import CTFParams, compute_ctf_2d
from cryoviz.fourier import centered_rfft2, shell_index_2d

__all__ = ["rotate_images", "circular_mask", "radial_power", "CanonicalDecoder",
           "EncoderOutput", "InplaneEncoder", "ImageDiscriminator", "Microscope"]


@dataclass(frozen=True)
class Microscope:
    """The CTF constants that are not estimated (voltage kV, Cs mm, amplitude contrast)."""

    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.1

    def ctf(self, defocus_u_angstrom: torch.Tensor, defocus_v_angstrom: torch.Tensor,
            astigmatism_angle_deg: torch.Tensor) -> CTFParams:
        """Per-particle :class:`CTFParams` from ``(B,)`` defoci and angles (keeps gradients)."""
        full = torch.ones_like(defocus_u_angstrom)
        return CTFParams(defocus_u_angstrom=defocus_u_angstrom,
                         defocus_v_angstrom=defocus_v_angstrom,
                         astigmatism_angle_deg=astigmatism_angle_deg,
                         voltage_kv=full * self.voltage_kv, cs_mm=full * self.cs_mm,
                         amplitude_contrast=full * self.amplitude_contrast,
                         phase_shift_deg=full * 0.0, bfactor_a2=full * 0.0)


def rotate_images(images: torch.Tensor, cos_sin: torch.Tensor,
                  mode: str = "bicubic") -> torch.Tensor:
    """Turn image content counter-clockwise about pixel ``D // 2``.

    Parameters
    ----------
    images
        ``(B, D, D)`` or ``(1, D, D)`` (broadcast) real images.
    cos_sin
        ``(B, 2)`` ``(cos a, sin a)`` of the angles ``a`` (need not be normalised:
        the sampling grid uses them as given).
    mode
        ``grid_sample`` interpolation.

    Returns
    -------
    torch.Tensor
        ``(B, D, D)``: ``out(p) = images(R(-a) p)``, zero outside the box.
    """
    box = images.shape[-1]
    batch = cos_sin.shape[0]
    axis = torch.arange(box, device=images.device, dtype=images.dtype) - box // 2
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    c = cos_sin[:, 0, None, None].to(images.dtype)
    s = cos_sin[:, 1, None, None].to(images.dtype)
    src_x = c * x + s * y
    src_y = -s * x + c * y
    grid = torch.stack([(2.0 * (src_x + box // 2) + 1.0) / box - 1.0,
                        (2.0 * (src_y + box // 2) + 1.0) / box - 1.0], dim=-1)
    source = images.expand(batch, box, box) if images.shape[0] == 1 else images
    out = F.grid_sample(source[:, None], grid, mode=mode, padding_mode="zeros",
                        align_corners=False)
    return out[:, 0]


def circular_mask(box_size: int, edge_px: float = 3.0, dtype=torch.float32,
                  device=None) -> torch.Tensor:
    """``(D, D)`` disc of radius ``D / 2 - edge`` with a raised-cosine edge (rotation-invariant)."""
    axis = torch.arange(box_size, dtype=torch.float64, device=device) - box_size // 2
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    r = torch.sqrt(x**2 + y**2)
    inner = box_size / 2.0 - edge_px
    t = ((r - inner) / edge_px).clamp(0.0, 1.0)
    return (0.5 * (1.0 + torch.cos(torch.pi * t))).to(dtype)


def radial_power(images: torch.Tensor) -> torch.Tensor:
    """Rotationally averaged power ``(B, D // 2 + 1)`` of ``(B, D, D)`` images."""
    box = images.shape[-1]
    shells = shell_index_2d(box, rfft=True, device=images.device).reshape(-1)
    n_shells = box // 2 + 1
    keep = shells < n_shells
    power = (centered_rfft2(images).abs() ** 2).reshape(images.shape[0], -1)[:, keep]
    total = torch.zeros(images.shape[0], n_shells, dtype=power.dtype, device=power.device)
    total.index_add_(1, shells[keep], power)
    count = torch.bincount(shells[keep], minlength=n_shells).to(power.dtype)
    return total / count.clamp_min(1.0)


class CanonicalDecoder(nn.Module):
    """Canonical image ``T(z) = T0 + sum_l z_l B_l``, turned and CTF-modulated.

    Parameters
    ----------
    box_size
        ``D``.
    latent_dim
        ``L`` content basis images (0: one fixed canonical image).
    seed
        Seed of the basis initialisation.
    """

    def __init__(self, box_size: int, latent_dim: int, seed: int = 0) -> None:
        super().__init__()
        self.box_size = int(box_size)
        self.latent_dim = int(latent_dim)
        gen = torch.Generator().manual_seed(seed)
        self.canonical = nn.Parameter(torch.zeros(box_size, box_size))
        self.basis = nn.Parameter(1e-3 * torch.randn(latent_dim, box_size, box_size,
                                                     generator=gen))
        self.register_buffer("mask", circular_mask(box_size))

    def images(self, z: torch.Tensor | None, batch: int) -> torch.Tensor:
        """``(B, D, D)`` (or ``(1, D, D)`` without content) canonical images, masked."""
        base = self.canonical[None]
        if self.latent_dim and z is not None:
            base = base + torch.einsum("bl,lyx->byx", z, self.basis)
        return base * self.mask

    def forward(self, cos_sin: torch.Tensor, ctf: CTFParams, z: torch.Tensor | None,
                pixel_size_angstrom: float) -> torch.Tensor:
        """``(B, D, D // 2 + 1)`` transforms of the model images of ``B`` particles."""
        turned = rotate_images(self.images(z, cos_sin.shape[0]), cos_sin)
        values = compute_ctf_2d(ctf, self.box_size, pixel_size_angstrom, rfft=True,
                                dtype=turned.dtype, device=turned.device)
        return centered_rfft2(turned) * values


@dataclass(frozen=True)
class EncoderOutput:
    """Encoder predictions for ``B`` images (defoci in units of the prior half-range).

    Attributes
    ----------
    angle
        ``(B, 2)`` raw angle vector (its direction is the angle).
    defocus_mu, defocus_logvar
        ``(B,)`` mean defocus ``(U + V) / 2``, standardised, and its log-variance.
    astig_mu, astig_logvar
        ``(B,)`` half-difference ``(U - V) / 2`` (>= 0), standardised, and its log-variance.
    astig_angle
        ``(B, 2)`` raw vector whose direction is twice the astigmatism angle.
    z_mu, z_logvar
        ``(B, L)`` latent content.
    """

    angle: torch.Tensor
    defocus_mu: torch.Tensor
    defocus_logvar: torch.Tensor
    astig_mu: torch.Tensor
    astig_logvar: torch.Tensor
    astig_angle: torch.Tensor
    z_mu: torch.Tensor
    z_logvar: torch.Tensor


def _conv_trunk(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, channels, 5, stride=2, padding=2), nn.LeakyReLU(0.2),
        nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.Conv2d(2 * channels, 2 * channels, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.Flatten())


class InplaneEncoder(nn.Module):
    """Convolutional encoder of the image and its rotationally averaged power spectrum.

    Parameters
    ----------
    box_size
        ``D`` (a multiple of 8).
    latent_dim
        ``L``.
    channels, width
        First convolution's channels and the hidden width of the fully connected layers.
    """

    def __init__(self, box_size: int, latent_dim: int, channels: int = 16,
                 width: int = 128) -> None:
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.conv = _conv_trunk(channels)
        n_conv = 2 * channels * ((box_size + 7) // 8) ** 2
        n_shells = box_size // 2 + 1
        self.spectrum = nn.Sequential(nn.Linear(n_shells, width), nn.LeakyReLU(0.2))
        self.trunk = nn.Sequential(nn.Linear(n_conv + width, width), nn.LeakyReLU(0.2),
                                   nn.Linear(width, width), nn.LeakyReLU(0.2))
        self.head = nn.Linear(width, 2 + 2 + 2 + 2 + 2 * latent_dim)
        self.register_buffer("input_scale", torch.ones(()))
        self.register_buffer("spectrum_offset", torch.zeros(n_shells))
        self.register_buffer("mask", circular_mask(box_size))

    def forward(self, images: torch.Tensor) -> EncoderOutput:
        """Predictions for ``(B, D, D)`` images (masked by a disc inside the encoder)."""
        x = images * self.mask / self.input_scale
        spec = torch.log(radial_power(x) + 1e-3) - self.spectrum_offset
        h = self.trunk(torch.cat([self.conv(x[:, None]), self.spectrum(spec)], dim=-1))
        out = self.head(h)
        latent = out[:, 8:]
        return EncoderOutput(
            angle=out[:, 0:2], defocus_mu=out[:, 2], defocus_logvar=out[:, 3].clamp(-12, 4),
            astig_mu=F.softplus(out[:, 4]), astig_logvar=out[:, 5].clamp(-12, 4),
            astig_angle=out[:, 6:8], z_mu=latent[:, :self.latent_dim],
            z_logvar=latent[:, self.latent_dim:].clamp(-12, 4))


class ImageDiscriminator(nn.Module):
    """Real / generated image classifier (one logit per image)."""

    def __init__(self, box_size: int, channels: int = 16, width: int = 64) -> None:
        super().__init__()
        self.conv = _conv_trunk(channels)
        n_conv = 2 * channels * ((box_size + 7) // 8) ** 2
        self.head = nn.Sequential(nn.Linear(n_conv, width), nn.LeakyReLU(0.2),
                                  nn.Linear(width, 1))
        self.register_buffer("input_scale", torch.ones(()))
        self.register_buffer("mask", circular_mask(box_size))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B,)`` logits for ``(B, D, D)`` images."""
        x = images * self.mask / self.input_scale
        return self.head(self.conv(x[:, None]))[:, 0]
