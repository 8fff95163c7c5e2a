"""Failure modes of estimated rotations in a known frame.

When the map is known (or its frame was aligned), a wrong pose is rarely a
random one: a pose search or an encoder settles in a few local minima of the
image likelihood. :func:`pose_error_modes` sorts each particle into one of

* ``correct``: geodesic error at most ``tolerance_deg``;
* ``inplane_pi``: within ``tolerance_deg`` of ``Rz(π) R_true``, the pose whose
  image is the true image rotated by π in the plane (the minimum the
  symmetrized loss of cryoAI folds onto the right pose);
* ``same_view``: the viewing direction is right (within ``tolerance_deg``) but
  the in-plane angle is not (and not the π flip);
* ``opposite_view``: the viewing direction is within ``tolerance_deg`` of the
  opposite of the true one: the projection is the mirror image of the true one,
  which matches the image when the projection is nearly mirror-symmetric;
* ``other``.

Conventions: rotations map particle to lab coordinates and the beam runs along
the lab ``z`` axis, so the viewing direction in the particle frame is
``R^T e_z`` (:func:`cryoviz.geometry.viewing_direction`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cryoviz.geometry import IN_PLANE_PI, geodesic_distance_deg, viewing_direction

__all__ = ["POSE_ERROR_MODES", "PoseErrorModes", "pose_error_modes"]

#: The modes in the order they are assigned (the first that applies wins).
POSE_ERROR_MODES = ("correct", "inplane_pi", "same_view", "opposite_view", "other")


@dataclass(frozen=True)
class PoseErrorModes:
    """Per-particle failure modes.

    Attributes
    ----------
    labels
        ``(N,)`` strings, each one of :data:`POSE_ERROR_MODES`.
    rotation_error_deg
        ``(N,)`` geodesic errors in degrees.
    view_error_deg
        ``(N,)`` angle between the estimated and the true viewing directions.
    tolerance_deg
        The tolerance used.
    """

    labels: np.ndarray
    rotation_error_deg: np.ndarray
    view_error_deg: np.ndarray
    tolerance_deg: float

    def fractions(self) -> dict[str, float]:
        """Fraction of the particles in each mode (sums to 1)."""
        return {mode: float(np.mean(self.labels == mode)) for mode in POSE_ERROR_MODES}


def pose_error_modes(R_est: torch.Tensor, R_true: torch.Tensor,
                     tolerance_deg: float = 10.0) -> PoseErrorModes:
    """Sort estimated rotations into the failure modes of the module docstring.

    Parameters
    ----------
    R_est, R_true
        ``(N, 3, 3)`` estimated and true rotations (particle -> lab), in the same
        frame (no alignment is done here).
    tolerance_deg
        Angle within which a rotation or viewing direction counts as matching.

    Returns
    -------
    PoseErrorModes
        Labels and the angles they came from.
    """
    R_est = torch.as_tensor(R_est, dtype=torch.float64)
    R_true = torch.as_tensor(R_true, dtype=torch.float64)
    if R_est.shape != R_true.shape or R_est.ndim != 3 or R_est.shape[-2:] != (3, 3):
        raise ValueError(f"R_est and R_true must both be (N, 3, 3), got {tuple(R_est.shape)} "
                         f"and {tuple(R_true.shape)}")
    if not tolerance_deg > 0:
        raise ValueError(f"tolerance_deg must be > 0, got {tolerance_deg}")
    error = geodesic_distance_deg(R_est, R_true).numpy()
    error_pi = geodesic_distance_deg(R_est, IN_PLANE_PI @ R_true).numpy()
    cos_view = (viewing_direction(R_est) * viewing_direction(R_true)).sum(-1).clamp(-1.0, 1.0)
    view = torch.rad2deg(torch.arccos(cos_view)).numpy()
    labels = np.full(len(error), "other", dtype=object)
    tol = float(tolerance_deg)
    rules = (("opposite_view", view >= 180.0 - tol), ("same_view", view <= tol),
             ("inplane_pi", error_pi <= tol), ("correct", error <= tol))
    for mode, hit in rules:  # later rules take precedence
        labels[hit] = mode
    return PoseErrorModes(labels=labels.astype(str), rotation_error_deg=error,
                          view_error_deg=view, tolerance_deg=tol)
