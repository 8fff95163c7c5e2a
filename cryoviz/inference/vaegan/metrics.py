"""Scores of in-plane angle and defocus estimates against ground truth.

An in-plane angle is defined only up to the orientation of the learned
canonical image: errors are measured after removing the best global offset
(the circular mean of the differences), and the mirrored assignment
(``-estimate``) is tried too; the one with the smaller median error is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["AngleAlignment", "align_inplane_angles", "defocus_errors"]


@dataclass(frozen=True)
class AngleAlignment:
    """Best global map ``true ~ sign * estimate + offset_deg`` and the errors after it.

    Attributes
    ----------
    offset_deg
        Global offset (degrees).
    mirrored
        True when ``sign = -1`` fitted better.
    errors_deg
        ``(N,)`` absolute wrapped errors in [0, 180].
    """

    offset_deg: float
    mirrored: bool
    errors_deg: np.ndarray

    @property
    def median_deg(self) -> float:
        """Median absolute error (degrees)."""
        return float(np.median(self.errors_deg))

    def apply(self, estimate_deg: np.ndarray) -> np.ndarray:
        """Estimates mapped into the truth frame (degrees in [0, 360))."""
        sign = -1.0 if self.mirrored else 1.0
        return (sign * np.asarray(estimate_deg, dtype=np.float64) + self.offset_deg) % 360.0


def _wrap(a: np.ndarray) -> np.ndarray:
    return (a + 180.0) % 360.0 - 180.0


def align_inplane_angles(estimate_deg: np.ndarray, true_deg: np.ndarray) -> AngleAlignment:
    """Fit the global offset (and mirror) between ``(N,)`` estimated and true angles."""
    est = np.asarray(estimate_deg, dtype=np.float64).reshape(-1)
    true = np.asarray(true_deg, dtype=np.float64).reshape(-1)
    if est.shape != true.shape or est.size == 0:
        raise ValueError(f"need two equal, non-empty (N,) arrays, got {est.shape}, {true.shape}")
    best = None
    for mirrored in (False, True):
        sign = -1.0 if mirrored else 1.0
        diff = np.deg2rad(true - sign * est)
        offset = float(np.rad2deg(np.angle(np.mean(np.exp(1j * diff)))))
        # refine the offset to the circular median (robust to outliers)
        err = _wrap(true - sign * est - offset)
        offset += float(np.median(err))
        err = np.abs(_wrap(true - sign * est - offset))
        candidate = AngleAlignment(offset % 360.0, mirrored, err)
        if best is None or candidate.median_deg < best.median_deg:
            best = candidate
    return best


def defocus_errors(estimate_angstrom: np.ndarray, true_angstrom: np.ndarray) -> np.ndarray:
    """``(N,)`` absolute defocus errors (Å)."""
    return np.abs(np.asarray(estimate_angstrom, np.float64) - np.asarray(true_angstrom,
                                                                          np.float64))
