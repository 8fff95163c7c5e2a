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

The scale depends on nothing but the particle's CTF, so a run finds it once per
particle (:func:`particle_scales`, by bisection) and each step only multiplies:
a handful of tensor operations, where the bisection in every step cost about
24 x 8 GPU kernel launches.
"""

from __future__ import annotations

import math

import torch

from cryoviz.ctf import CTFParams, compute_ctf_2d

__all__ = ["FLOOR", "amplitude_scales", "draw_probabilities", "particle_scales"]

#: Smallest probability of a coefficient, as a fraction of ``pixel_fraction``: keeps
#: the estimate of the loss *value* finite where the CTF is zero (its gradient is
#: zero there at any probability).
FLOOR = 0.1

#: Halvings of the bracket on the logarithm of each image's scale, from
#: ``ln((1 - FLOOR) fraction / mean|CTF|)`` to ``ln(1e6 / mean|CTF|)`` (16 wide at
#: fraction 0.1): the scale is then known to a relative 1e-11, far below float32.
BISECTIONS = 40

#: Fourier coefficients per CTF evaluation in :func:`particle_scales` (1,985 images at
#: box 64, 127 at box 256: about 32 MB per float64 copy).
CHUNK_COEFFICIENTS = 2**22


def amplitude_scales(fraction: float, inside: torch.Tensor,
                     ctf_values: torch.Tensor) -> torch.Tensor:
    """Each image's scale ``s``: ``clip(s |CTF|, FLOOR * fraction, 1)`` averages
    ``fraction`` over the coefficients inside Nyquist.

    Parameters
    ----------
    fraction
        Mean fraction of the coefficients, in ``(0, 1]`` (``Recipe.pixel_fraction``).
    inside
        ``(D, D // 2 + 1)`` bool: the coefficients inside Nyquist.
    ctf_values
        ``(B, D, D // 2 + 1)`` CTF of each image.

    Returns
    -------
    torch.Tensor
        ``(B,)`` float32 scales; each image's mean is ``fraction`` to a relative 1e-6
        (for an image whose CTF is zero on nearly every coefficient, the closest the
        bounds allow: probability 1 wherever the CTF is not zero).
    """
    mask = inside.to(torch.float64)
    amplitude = ctf_values.abs().to(torch.float64) * mask
    count = mask.sum()
    # an all-zero CTF gets scale 1e36, still finite in float32 (its probabilities: FLOOR)
    mean = (amplitude.sum(dim=(-2, -1), keepdim=True) / count).clamp(min=1.0e-30)
    floor = FLOOR * fraction

    def average(scale: torch.Tensor) -> torch.Tensor:  # (B, 1, 1) mean probability
        clipped = (scale * amplitude).clamp(min=floor, max=1.0) * mask
        return clipped.sum(dim=(-2, -1), keepdim=True) / count

    # the average grows with the scale: bisect its logarithm. It is at most
    # scale * mean + floor, so the scale is at least (1 - FLOOR) * fraction / mean.
    low = math.log((1.0 - FLOOR) * fraction) - mean.log()
    high = math.log(1.0e6) - mean.log()
    for _ in range(BISECTIONS):
        middle = 0.5 * (low + high)
        below = average(middle.exp()) < fraction
        low, high = torch.where(below, middle, low), torch.where(below, high, middle)
    return high.exp().reshape(-1).to(torch.float32)


def particle_scales(fraction: float, inside: torch.Tensor, ctf: CTFParams, box: int,
                    apix: float, device: torch.device | str) -> torch.Tensor:
    """:func:`amplitude_scales` of every particle, its CTF evaluated as a training step
    evaluates it, :data:`CHUNK_COEFFICIENTS` coefficients at a time.

    Parameters
    ----------
    fraction
        ``Recipe.pixel_fraction``.
    inside
        ``(D, D // 2 + 1)`` bool, on ``device``.
    ctf
        The ``N`` particles' CTF parameters, on ``device``.
    box, apix
        The training box ``D`` in pixels and its pixel size in Å.
    device
        Where the CTFs are evaluated and the scales kept.

    Returns
    -------
    torch.Tensor
        ``(N,)`` float32 scales, on ``device``.
    """
    index = torch.arange(len(ctf), device=device)
    return torch.cat([
        amplitude_scales(fraction, inside, compute_ctf_2d(ctf.subset(chunk), box, apix,
                                                          rfft=True, device=device))
        for chunk in index.split(max(1, CHUNK_COEFFICIENTS // (box * (box // 2 + 1))))])


def draw_probabilities(fraction: float, inside: torch.Tensor,
                       ctf_values: torch.Tensor | None, batch: int,
                       scales: torch.Tensor | None = None) -> torch.Tensor:
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
    scales
        ``(B,)`` the images' :func:`amplitude_scales`, found once per run by
        :func:`particle_scales`; found here when ``None``.

    Returns
    -------
    torch.Tensor
        ``(B, D, D // 2 + 1)`` float32 probabilities in ``[FLOOR * fraction, 1]``
        inside Nyquist (0 outside); each image's mean inside Nyquist is
        ``fraction`` to a relative 1e-6 (for an image whose CTF is zero on nearly
        every coefficient, the closest the bounds allow).
    """
    mask = inside.to(torch.float32)
    if ctf_values is None:
        return (fraction * mask).expand(batch, *inside.shape)
    if scales is None:
        scales = amplitude_scales(fraction, inside, ctf_values)
    amplitude = ctf_values.abs().to(torch.float32)
    return (scales.reshape(-1, 1, 1) * amplitude).clamp(min=FLOOR * fraction, max=1.0) * mask
