"""Per-voxel spread of a map over the particles' pose posteriors (volume uncertainty).

A method with per-particle pose posteriors ``q_i`` (``fstdiff``) backprojects
each particle at ``M`` draws of its ``q_i``. Putting draw ``k`` of every
particle into its own accumulator gives ``M`` maps, each a full reconstruction
with one pose per particle drawn from the posterior; their per-voxel standard
deviation is a Monte Carlo estimate of how much the map depends on where the
poses lie within their posteriors: large where the posteriors are broad and the
density varies, near zero where poses are certain. The refined map (the average
over all draws) has ``1 / sqrt(M)`` of this spread from the draws.

Each draw map is Wiener-filtered with the regulariser of the run's gold-standard
FSC (:func:`cryoviz.backprojection.wiener_regularizer`), like the full map.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cryoviz.backprojection import FourierAccumulator, wiener_regularizer

__all__ = ["draw_maps", "draw_spread"]


def draw_maps(accumulators: Sequence[FourierAccumulator], half_fsc: torch.Tensor
              ) -> torch.Tensor:
    """The ``(M, D, D, D)`` float32 maps of ``M`` accumulators (one per draw index).

    Parameters
    ----------
    accumulators
        ``M >= 2`` accumulators, each holding every particle once at its draw ``k``.
    half_fsc
        ``(D // 2 + 1,)`` gold-standard half-map FSC of the run (the regulariser's SSNR).
    """
    if len(accumulators) < 2:
        raise ValueError(f"need at least 2 draws, got {len(accumulators)}")
    curve = torch.as_tensor(half_fsc, dtype=torch.float64)
    return torch.stack([acc.reconstruct(wiener_regularizer(acc.mean_weight_per_shell(), curve))
                        for acc in accumulators])


def draw_spread(accumulators: Sequence[FourierAccumulator], half_fsc: torch.Tensor
                ) -> torch.Tensor:
    """Per-voxel standard deviation ``(D, D, D)`` (float32, ``ddof = 1``) over the draw maps."""
    return draw_maps(accumulators, half_fsc).std(dim=0)
