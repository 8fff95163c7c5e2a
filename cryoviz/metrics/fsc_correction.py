"""Masked FSC corrected for the mask's own correlation by phase randomisation.

A real-space mask multiplies both maps, so their transforms are convolved with
the mask's: the correlation of the shells where the maps agree (low resolution)
leaks into the shells beyond, and a tight or sharp mask inflates the FSC there.
The correction of Chen et al. (2013, Ultramicroscopy 135, 24), as RELION's
post-processing applies it: the phases of both maps are replaced by random ones
from the shell where the *unmasked* FSC first drops below ``randomize_at_fsc``
(0.8 by default) outwards, the randomised maps are masked the same way, and in
those shells

    FSC_true = (FSC_masked - FSC_randomised) / (1 - FSC_randomised)

Below that shell the masked FSC is kept. Random phases carry no correlation, so
``FSC_randomised`` is what the mask alone adds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cryoviz.fourier import centered_fft3, centered_ifft3, shell_index_3d
from cryoviz.metrics.fsc import FSCCurve, fsc

__all__ = ["MaskCorrectedFSC", "mask_corrected_fsc", "randomize_phases"]


@dataclass(frozen=True)
class MaskCorrectedFSC:
    """The curves of :func:`mask_corrected_fsc`.

    Attributes
    ----------
    unmasked, masked, randomized_masked, corrected
        FSC of the maps, of the masked maps, of the masked phase-randomised maps,
        and the corrected masked FSC (``D // 2 + 1`` shells each).
    randomize_from_shell
        First shell whose phases were randomised (``D // 2 + 1``: none, the
        unmasked FSC never dropped below the threshold; then ``corrected`` is
        ``masked``).
    """

    unmasked: FSCCurve
    masked: FSCCurve
    randomized_masked: FSCCurve
    corrected: FSCCurve
    randomize_from_shell: int


def randomize_phases(volume: torch.Tensor, from_shell: int, seed: int = 0) -> torch.Tensor:
    """``volume`` ``(D, D, D)`` with the phases of shells ``>= from_shell`` made random.

    The amplitudes are kept; the new phases are those of a seeded white-noise
    map, so the transform stays Hermitian and the result real.
    """
    work = volume.to(torch.float64)
    ft = centered_fft3(work)
    gen = torch.Generator().manual_seed(int(seed))
    noise = centered_fft3(torch.randn(tuple(volume.shape), generator=gen,
                                      dtype=torch.float64).to(work.device))
    phase = noise / noise.abs().clamp_min(torch.finfo(torch.float64).tiny)
    shells = shell_index_3d(volume.shape[-1], device=work.device)
    mixed = torch.where(shells >= from_shell, ft.abs() * phase, ft)
    return centered_ifft3(mixed).real.to(volume.dtype)


def mask_corrected_fsc(vol1: torch.Tensor, vol2: torch.Tensor, mask: torch.Tensor,
                       randomize_at_fsc: float = 0.8, seed: int = 0) -> MaskCorrectedFSC:
    """Masked FSC of two maps with the phase-randomisation correction.

    Parameters
    ----------
    vol1, vol2
        ``(D, D, D)`` maps (e.g. half maps).
    mask
        ``(D, D, D)`` real-space mask.
    randomize_at_fsc
        Phases are randomised from the first shell (``>= 1``) where the unmasked
        FSC is below this.
    seed
        Seed of the random phases (``seed`` for ``vol1``, ``seed + 1`` for ``vol2``).

    Returns
    -------
    MaskCorrectedFSC
    """
    if not 0.0 < randomize_at_fsc < 1.0:
        raise ValueError(f"randomize_at_fsc must be in (0, 1), got {randomize_at_fsc}")
    unmasked = fsc(vol1, vol2)
    masked = fsc(vol1, vol2, mask=mask)
    values = unmasked.fsc.detach().cpu()
    n_shells = values.numel()
    below = torch.nonzero(values[1:] < randomize_at_fsc).flatten()
    start = int(below[0]) + 1 if below.numel() else n_shells
    randomized = fsc(randomize_phases(vol1, start, seed), randomize_phases(vol2, start, seed + 1),
                     mask=mask)
    corrected = masked.fsc.clone()
    if start < n_shells:
        t, n = masked.fsc[start:], randomized.fsc[start:]
        corrected[start:] = (t - n) / (1.0 - n).clamp_min(1e-6)
    return MaskCorrectedFSC(
        unmasked=unmasked, masked=masked, randomized_masked=randomized,
        corrected=FSCCurve(frequency_per_px=masked.frequency_per_px, fsc=corrected,
                           n_voxels=masked.n_voxels),
        randomize_from_shell=start)
