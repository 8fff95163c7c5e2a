"""What the image encoder sees: each image moved back by its known shift and
phase-flipped by its CTF, as cryoDRGN's ``train_vae`` encodes its images.

The decoder's loss compares the model with the image as recorded; only the
encoder's input is corrected. Both corrections are unitary in Fourier space (a
phase ramp, a sign per frequency), so the image's power and the encoder's
``input_scale`` are unchanged. Without them the encoder must learn the
conformation through every defocus's sign pattern and every particle offset.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cryoviz.ctf import CTFParams, compute_ctf_2d
from cryoviz.fourier import centered_irfft2, centered_rfft2, phase_shift, real_dtype_of
from cryoviz.io.particles import ParticleSet
from cryoviz.train.encoders import GradientEncoder, MLPEncoder
from cryoviz.train.fit_gradient import FitGradientInput
from cryoviz.train.recipes import Recipe
from cryoviz.volumes.base import VolumeModel

__all__ = ["EncoderInput", "EncoderView", "corrected_images", "run_encoder_input",
           "particle_encoder_input"]


def corrected_images(images: torch.Tensor, pixel_size_angstrom: float,
                     shifts_angstrom: torch.Tensor | None = None,
                     ctf: CTFParams | None = None,
                     ft: torch.Tensor | None = None,
                     ctf_values: torch.Tensor | None = None) -> torch.Tensor:
    """Images moved back by their shifts and multiplied in Fourier space by ``sign(CTF)``.

    Parameters
    ----------
    images
        ``(B, D, D)`` real images.
    pixel_size_angstrom
        Pixel size of ``images`` in Å.
    shifts_angstrom
        ``(B, 2)`` displacements ``(x, y)`` of the particles in Å (as
        :func:`cryoviz.imaging.apply_shift_and_ctf` applies them), or None.
    ctf
        CTF parameters of the ``B`` particles, or None.
    ft
        ``(B, D, D // 2 + 1)`` centred half transform of ``images`` when the
        caller already has it (the training loop's target), else computed here.
    ctf_values
        ``(B, D, D // 2 + 1)`` ``ctf`` already evaluated on the half grid (the
        training loop's, shared with the decoder's loss), else computed here.

    Returns
    -------
    torch.Tensor
        ``(B, D, D)`` real images; ``images`` itself when both are None.
    """
    if shifts_angstrom is None and ctf is None and ctf_values is None:
        return images
    box = int(images.shape[-1])
    if ft is None:
        ft = centered_rfft2(images)
    rdtype = real_dtype_of(ft.dtype)
    if shifts_angstrom is not None:
        back_px = -shifts_angstrom.to(dtype=rdtype, device=ft.device) / pixel_size_angstrom
        ft = phase_shift(ft, back_px, box, rfft=True)
    if ctf_values is None and ctf is not None:
        ctf_values = compute_ctf_2d(ctf, box, pixel_size_angstrom, rfft=True, dtype=rdtype,
                                    device=ft.device)
    if ctf_values is not None:
        ft = ft * torch.sign(ctf_values.to(rdtype))
    return centered_irfft2(ft, box).to(images.dtype)


@dataclass(frozen=True)
class EncoderInput:
    """The per-particle corrections of a training run, applied batch by batch.

    Attributes
    ----------
    pixel_size_angstrom
        Pixel size of the training images in Å.
    shifts_angstrom
        ``(N, 2)`` shifts of all particles (file order), or None: not corrected.
    ctf
        CTF parameters of all ``N`` particles, or None: not phase-flipped.
    """

    pixel_size_angstrom: float
    shifts_angstrom: torch.Tensor | None = None
    ctf: CTFParams | None = None

    def __call__(self, images: torch.Tensor, index: torch.Tensor,
                 ft: torch.Tensor | None = None,
                 ctf_values: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, D, D)`` encoder input of the particles ``index`` ``(B,)`` (file order);
        ``ft``: the images' centred half transform and ``ctf_values`` their CTFs on
        the half grid, if already computed (``ctf_values`` is used only when this
        input phase-flips, i.e. :attr:`ctf` is set)."""
        shifts = None if self.shifts_angstrom is None else self.shifts_angstrom[index]
        if self.ctf is None:
            return corrected_images(images, self.pixel_size_angstrom, shifts, None, ft)
        return corrected_images(images, self.pixel_size_angstrom, shifts,
                                self.ctf.subset(index), ft, ctf_values)


#: What a run's encoder is fed, batch by batch: corrected images or fit gradients.
EncoderView = EncoderInput | FitGradientInput


def run_encoder_input(recipe: Recipe, encoder: torch.nn.Module | None,
                      pixel_size_angstrom: float, shifts_angstrom: torch.Tensor | None,
                      ctf: CTFParams | None, volume: VolumeModel | None = None,
                      rotations: torch.Tensor | None = None) -> EncoderView:
    """The encoder input of a training run: the recipe's corrections for an image MLP,
    or the fit gradients for a :class:`~cryoviz.train.encoders.GradientEncoder`.

    Parameters
    ----------
    recipe
        Its ``encoder_centre`` and ``encoder_phase_flip`` choose the corrections.
    encoder
        The run's latent encoder; only an :class:`~cryoviz.train.encoders.MLPEncoder`
        reads images (a latent table and the amortized CNN get no correction).
    pixel_size_angstrom
        Training pixel size in Å.
    shifts_angstrom
        ``(N, 2)`` given shifts of all particles, or None (none given, or poses
        inferred by the run).
    ctf
        CTF parameters of all ``N`` particles, or None.
    volume, rotations
        The run's Gaussian mixture and the ``(N, 3, 3)`` given rotations: needed by
        a gradient encoder only.
    """
    if isinstance(encoder, GradientEncoder):
        if volume is None or rotations is None:
            raise ValueError("a gradient encoder's input needs the run's volume and the "
                             "particles' rotations")
        return FitGradientInput(volume, pixel_size_angstrom, rotations, shifts_angstrom, ctf)
    if not isinstance(encoder, MLPEncoder):
        return EncoderInput(pixel_size_angstrom)
    return EncoderInput(pixel_size_angstrom,
                        shifts_angstrom if recipe.encoder_centre else None,
                        ctf if recipe.encoder_phase_flip else None)


def particle_encoder_input(recipe: Recipe, encoder: torch.nn.Module | None,
                           particles: ParticleSet, pixel_size_angstrom: float,
                           device: torch.device | str = "cpu",
                           volume: VolumeModel | None = None) -> EncoderView:
    """The encoder input of a trained run for ``particles`` (all of them, file order).

    For encoding particles after training (a run's inspector, the bench's half-set
    latents) exactly as the run's training encoded them: the shifts are used only
    when the recipe's poses are given, as in training. ``volume``: the run's
    volume, needed by a gradient encoder.
    """
    shifts, rotations = None, None
    if recipe.poses == "given" and particles.shifts_angstrom is not None:
        shifts = torch.as_tensor(particles.shifts_angstrom, dtype=torch.float32, device=device)
    if recipe.poses == "given" and particles.rotations is not None:
        rotations = torch.as_tensor(particles.rotations, dtype=torch.float32, device=device)
    ctf = None if particles.ctf is None else particles.ctf.to(device)
    return run_encoder_input(recipe, encoder, pixel_size_angstrom, shifts, ctf, volume,
                             rotations)
