"""Which Fourier coefficients of each image enter a training step (``Recipe.pixel_fraction``).

A step of the ``implicit`` recipes reads the decoder at every coefficient of every
image; the data term is a sum over them. Reading it at a random subset and dividing
each drawn term by its probability keeps the sum's expectation (an unbiased
estimate) at a fraction of the cost. The probabilities follow the CTF: a
coefficient's gradient with respect to the model is proportional to ``|CTF|``, so
coefficients near a CTF zero carry almost none and are drawn rarely, those near a
CTF maximum often: probability ``s * |CTF|`` per coefficient, clipped to at least
:data:`FLOOR` times ``fraction`` and at most 1, with the scale ``s`` of each image
chosen so that its probabilities average ``fraction`` inside Nyquist (an epoch reads
that fraction of the coefficients; without the rescaling the clipping at 1 would
read fewer, 0.73 of them for 0.8 on the benchmark's data). Without CTFs every
coefficient has probability ``fraction``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["FLOOR", "draw_probabilities"]

#: Smallest probability of a coefficient, as a fraction of ``pixel_fraction``: keeps
#: the estimate of the loss *value* finite where the CTF is zero (its gradient is
#: zero there at any probability).
FLOOR = 0.1

#: Halvings of the bracket on the logarithm of each image's scale, from
#: ``ln((1 - FLOOR) fraction)`` to ``ln 1e6`` (16 wide at fraction 0.1): the scale is
#: then known to a relative 1e-6 for fractions down to 0.1, and so is the mean.
BISECTIONS = 24


def draw_probabilities(fraction: float, inside: torch.Tensor,
                       ctf_values: torch.Tensor | None, batch: int) -> torch.Tensor:
    """Each coefficient's probability of entering the step's data term.

    Parameters
    ----------
    fraction
        Mean fraction of the coefficients, in ``(0, 1]`` (``Recipe.pixel_fraction``).
    inside
        ``(D, D // 2 + 1)`` bool: the coefficients inside Nyquist (the others are
        never drawn).
    ctf_values
        ``(B, D, D // 2 + 1)`` CTF of each image, or ``None``.
    batch
        ``B`` (used without CTFs).

    Returns
    -------
    torch.Tensor
        ``(B, D, D // 2 + 1)`` probabilities in ``[FLOOR * fraction, 1]`` inside
        Nyquist (0 outside); each image's mean inside Nyquist is ``fraction`` to a
        relative 1e-6 (for an image whose CTF is zero on nearly every coefficient,
        the closest the bounds allow).
    """
    mask = inside.to(torch.float32)
    if ctf_values is None:
        return (fraction * mask).expand(batch, *inside.shape)
    amplitude = ctf_values.abs().to(torch.float32) * mask
    count = mask.sum()
    mean = amplitude.sum(dim=(-2, -1), keepdim=True) / count
    weight = amplitude / mean.clamp(min=torch.finfo(torch.float32).tiny)  # mean 1 per image

    def average(scale: torch.Tensor) -> torch.Tensor:  # (B, 1, 1) mean probability
        clipped = (scale * weight).clamp(min=FLOOR * fraction, max=1.0) * mask
        return clipped.sum(dim=(-2, -1), keepdim=True) / count

    # the average grows with the scale: bisect its logarithm. It is at most
    # scale + FLOOR * fraction, so the scale is at least (1 - FLOOR) * fraction.
    low = torch.full_like(mean, math.log((1.0 - FLOOR) * fraction))
    high = torch.full_like(mean, math.log(1.0e6))
    for _ in range(BISECTIONS):
        middle = 0.5 * (low + high)
        below = average(middle.exp()) < fraction
        low, high = torch.where(below, middle, low), torch.where(below, high, middle)
    return (high.exp() * weight).clamp(min=FLOOR * fraction, max=1.0) * mask
