"""A pose-aware encoder input for Gaussian-mixture recipes: the gradient of each
particle's fit with respect to the neutral mixture, as E2GMM's encoder reads.

For particle ``i`` with image ``X_i``, pose ``R_i``, shift ``t_i`` and CTF ``C_i``,
the mixture at ``z = 0`` (centres ``c_j``, log-amplitudes ``a_j``) is projected at
the particle's pose and compared with the image by the FRC over the shells below
the cropped box's Nyquist; the input is

    g_i = d FRC_i / d (c_j, a_j),   j = 1 .. M,

``(M, 4)`` numbers in the model's frame: each Gaussian's pull (where the image
wants it to move, and whether it wants more or less mass there). The image
MLP must learn the conformation through every viewing direction; this input
has the known pose taken out, so particles of one state seen from different
directions give similar gradients (each sees the components of the motion
across its view). As we read Chen & Ludtke 2021 (E2GMM), its encoder reads this
gradient rather than the image.

The fit is computed on the images Fourier-cropped to half the training box
(:func:`gradient_box`): conformational changes of domains show at low
resolution, and the projection costs a quarter of the training box's. Each
particle's two blocks (centres, amplitudes) are divided by their RMS, so the
input's scale does not drift as the neutral model fits the data better; the
encoder then scales the whole input to a small fixed norm
(:attr:`cryoviz.train.recipes.Recipe.fit_gradient_norm`), which keeps its first
Adam steps small.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cryoviz.ctf import CTFParams, compute_ctf_2d
from cryoviz.fourier import centered_rfft2, crop_half_transform
from cryoviz.imaging import apply_shift_and_ctf
from cryoviz.volumes.frc import frc_per_shell
from cryoviz.volumes.gmm import GaussianMixtureVolume, project_gaussians_batched

__all__ = ["FitGradientInput", "fit_gradients", "gradient_box", "FEATURES_PER_GAUSSIAN"]

#: Numbers per Gaussian in the gradient input: three centre components, one amplitude.
FEATURES_PER_GAUSSIAN = 4


def gradient_box(box_size: int) -> int:
    """Box of the fit whose gradient is the input: half the training box (even, >= 8)."""
    return max(8, (int(box_size) // 4) * 2)


def fit_gradients(volume: GaussianMixtureVolume, target_ft: torch.Tensor,
                  rotations: torch.Tensor, shifts_angstrom: torch.Tensor | None,
                  ctf: CTFParams | None, pixel_size_angstrom: float,
                  ctf_values: torch.Tensor | None = None) -> torch.Tensor:
    """Per-particle gradients of the FRC with the mixture at ``z = 0``, normalised.

    Parameters
    ----------
    volume
        The run's mixture (read, not changed: no gradient reaches its parameters).
    target_ft
        ``(B, D, D // 2 + 1)`` centred half transforms of the images.
    rotations
        ``(B, 3, 3)`` particle -> lab rotations.
    shifts_angstrom
        ``(B, 2)`` particle shifts in Å, or None.
    ctf
        CTF parameters of the ``B`` particles, or None.
    pixel_size_angstrom
        Pixel size of ``target_ft`` in Å.
    ctf_values
        ``(B, D, D // 2 + 1)`` ``ctf`` already evaluated on ``target_ft``'s grid (the
        training loop's), cropped here instead of evaluating ``ctf`` again.

    Returns
    -------
    torch.Tensor
        ``(B, M * 4)`` float32: per Gaussian the gradient with respect to its
        centre (x, y, z, Å) and its log-amplitude; each particle's centre block
        and amplitude block divided by its own RMS.
    """
    box = int(target_ft.shape[-2])
    size = gradient_box(box)
    apix = float(pixel_size_angstrom) * box / size
    target = crop_half_transform(target_ft, size)
    batch = int(target.shape[0])
    if ctf_values is not None:  # the same frequencies: a crop of the full grid's values
        ctf_values = crop_half_transform(ctf_values, size)
    elif ctf is not None:
        ctf_values = compute_ctf_2d(ctf, size, apix, rfft=True, device=target.device)
    with torch.no_grad():
        z = (None if volume.latent_dim == 0 else
             torch.zeros((1, volume.latent_dim), device=target.device))
        centres0, amplitudes0, sigmas = volume.mixture_parameters(z)
    with torch.enable_grad():
        centres = centres0.expand(batch, -1, -1).clone().requires_grad_(True)
        log_amplitudes = torch.log(amplitudes0.clamp(min=1e-30)).expand(batch, -1).clone()
        log_amplitudes.requires_grad_(True)
        model = project_gaussians_batched(centres, log_amplitudes.exp(), sigmas,
                                          rotations.to(centres.dtype), size, apix)
        model = apply_shift_and_ctf(model, apix, shifts_angstrom, ctf_values=ctf_values)
        # below the cropped box's Nyquist ring (its samples are aliased)
        frc = frc_per_shell(model, target, max_shell=size // 2 - 1)
        grad_c, grad_a = torch.autograd.grad(frc.mean(dim=1).sum(), (centres, log_amplitudes))
    grad_c = grad_c / grad_c.pow(2).mean(dim=(1, 2), keepdim=True).sqrt().clamp(min=1e-30)
    grad_a = grad_a / grad_a.pow(2).mean(dim=1, keepdim=True).sqrt().clamp(min=1e-30)
    return torch.cat([grad_c, grad_a[..., None]], dim=-1).reshape(batch, -1).detach()


@dataclass(frozen=True)
class FitGradientInput:
    """The gradient input of a training run's particles, computed batch by batch.

    Attributes
    ----------
    volume
        The run's Gaussian mixture (its current state is read at every call).
    pixel_size_angstrom
        Pixel size of the training images in Å.
    rotations
        ``(N, 3, 3)`` given rotations of all particles (file order).
    shifts_angstrom
        ``(N, 2)`` given shifts, or None.
    ctf
        CTF parameters of all ``N`` particles, or None.
    """

    volume: GaussianMixtureVolume
    pixel_size_angstrom: float
    rotations: torch.Tensor
    shifts_angstrom: torch.Tensor | None = None
    ctf: CTFParams | None = None

    def __call__(self, images: torch.Tensor, index: torch.Tensor,
                 ft: torch.Tensor | None = None,
                 ctf_values: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, M * 4)`` input of the particles ``index`` ``(B,)`` (file order).

        ``images`` ``(B, D, D)``, and their centred half transform ``ft`` and CTFs on
        that grid ``ctf_values`` if already computed (the training loop's).
        """
        target = centered_rfft2(images) if ft is None else ft
        shifts = None if self.shifts_angstrom is None else self.shifts_angstrom[index]
        ctf = None if self.ctf is None or ctf_values is not None else self.ctf.subset(index)
        return fit_gradients(self.volume, target, self.rotations[index], shifts, ctf,
                             self.pixel_size_angstrom, ctf_values)
