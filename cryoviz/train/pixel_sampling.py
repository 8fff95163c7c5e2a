"""Which Fourier coefficients of each image enter a training step (``Recipe.pixel_fraction``).

A step of the ``implicit`` recipes reads the decoder at every coefficient of every
image; the data term is a sum over them. Reading it at a random subset and dividing
each drawn term by its probability keeps the sum's expectation (an unbiased
estimate) at a fraction of the cost. The probabilities follow the CTF: a
coefficient's gradient with respect to the model is proportional to ``|CTF|``, so
coefficients near a CTF zero carry almost none and are drawn rarely, those near a
CTF maximum often (probability ``fraction * |CTF| / mean |CTF|`` per image, at
least :data:`FLOOR` times ``fraction`` and at most 1). Without CTFs every
coefficient has probability ``fraction``.
"""

from __future__ import annotations

import torch

__all__ = ["FLOOR", "draw_probabilities"]

#: Smallest probability of a coefficient, as a fraction of ``pixel_fraction``: keeps
#: the estimate of the loss *value* finite where the CTF is zero (its gradient is
#: zero there at any probability).
FLOOR = 0.1


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
        Nyquist (0 outside); with CTFs each image's mean inside Nyquist is about
        ``fraction`` (less where the bounds clip).
    """
    mask = inside.to(torch.float32)
    if ctf_values is None:
        return (fraction * mask).expand(batch, *inside.shape)
    amplitude = ctf_values.abs().to(torch.float32) * mask
    mean = amplitude.sum(dim=(-2, -1), keepdim=True) / mask.sum()
    prob = fraction * amplitude / mean.clamp(min=torch.finfo(torch.float32).tiny)
    return prob.clamp(min=FLOOR * fraction, max=1.0) * mask
