"""Pose conventions of RELION, cryoSPARC and cryoDRGN, converted to ours.

Internal convention (docs/CONVENTIONS.md)
-----------------------------------------
* ``R (N, 3, 3)`` maps particle (map) coordinates to lab (image) coordinates;
  for RELION Euler angles ``R`` is RELION's ``Euler_angles2matrix`` matrix ``A``.
* ``shifts_angstrom (N, 2)`` is the ``(x, y)`` displacement of the particle
  centre from the box centre in the image; the forward model translates the
  centred projection by ``+shift``.

RELION origins: ``origin = -shift``
-----------------------------------
The RELION documentation (relion-documents, Reference/Conventions, section
"Orientations") states that Euler angles rotate the reference into the
observation, while the translations ``rlnOriginX/YAngst`` "shift observations
into the reference projection", and that "origin offsets reported for
individual images translate the image to its center". So the origin is the
translation that *re-centres* the particle: a particle whose centre sits at
``+3`` px in x in the image has ``rlnOriginX = -3`` (px, RELION <= 3.0) and
``rlnOriginXAngst = -3 * pixel_size`` (RELION >= 3.1, Å). Hence
``origin_angstrom = -shifts_angstrom``; ``rlnOriginX/Y`` (3.0) are the same
quantity in pixels.

cryoSPARC ``alignments3D``: ``R = expmap(pose)^T``, ``shift_px = origin_px``
----------------------------------------------------------------------------
``alignments3D/pose`` is an axis-angle vector (radians) and
``alignments3D/shift`` a shift in pixels of ``alignments3D/psize_A``.
Evidence:

* cryoDRGN ``parse_pose_csparc`` builds its rotation as the Rodrigues matrix
  of the pose (``lie_tools.expmap``, the standard right-handed exponential
  map) followed by a transpose, and its translation as ``shift / D`` with no
  sign change.
* pyem (``metadata/cryosparc2.py``) maps ``shift`` straight to
  ``rlnOriginX/Y`` (pixels) and converts ``pose`` to RELION Euler angles via
  its ``expmap``, which returns the *transposed* Rodrigues matrix, and
  ``rot2euler``, the inverse of its ``euler2rot`` (the same element formulas as
  RELION's ``Euler_angles2matrix``).

Both agree: RELION's ``A`` (our ``R``) equals ``Rodrigues(pose)^T``, i.e.
``pose = axis_angle(R^T) = -axis_angle(R)``, and the cryoSPARC shift has the
RELION origin sign: ``shift_px = -shifts_angstrom / pixel_size``.
Check: pose ``(0, 0, pi/2)`` is RELION ``(rot, tilt, psi) = (90, 0, 0)``.

cryoDRGN pose pickle: ``rot = R``, ``trans = origin_px / D``
------------------------------------------------------------
cryoDRGN ``parse_pose_star`` stores ``utils.R_from_relion(rot, tilt, psi)``
and ``trans = rlnOriginX/Y`` in pixels (``rlnOriginX/YAngst / Apix``) divided
by the box size ``D``, no sign change. ``R_from_relion`` multiplies
``Rz(psi) Ry(-tilt) Rz(rot)`` and flips the signs of elements (0,1), (1,0),
(1,2), (2,1), i.e. conjugates by ``diag(1, -1, 1)``, which gives
``Rz(-psi) Ry(-tilt) Rz(-rot) = (Rz(rot) Ry(tilt) Rz(psi))^T = A``. So the
cryoDRGN ``rot`` is our ``R`` unchanged, and ``trans = -shifts_angstrom /
(pixel_size * D)``. cryoDRGN also "centres the image" by translating it by
``+trans`` (``preprocess_input`` / ``Lattice.translate_ht``), consistent with
the RELION origin meaning. cryoDRGN's ``parse_pose_csparc`` (transpose of the
Rodrigues matrix, ``shift / D``) closes the triangle with the cryoSPARC rule.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "relion_to_internal",
    "internal_to_relion",
    "cryosparc_to_internal",
    "internal_to_cryosparc",
    "cryodrgn_to_internal",
    "internal_to_cryodrgn",
]


def _rotations():
    from cryoviz.geometry import rotations  # imported lazily: written alongside this module

    return rotations


def _apply(fn, x: np.ndarray) -> np.ndarray:
    """Call a rotation helper on a float64 array (it may work in numpy or torch)."""
    out = fn(torch.tensor(np.array(x, dtype=np.float64)))
    if isinstance(out, torch.Tensor):
        out = out.detach().cpu().numpy()
    return np.asarray(out, dtype=np.float64)


def _swap(m: np.ndarray) -> np.ndarray:
    return np.swapaxes(m, -1, -2)


def relion_to_internal(
    euler_deg: np.ndarray, origin_angstrom: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """RELION ``(rot, tilt, psi)`` and ``rlnOriginX/YAngst`` to ``(R, shifts_angstrom)``.

    Parameters
    ----------
    euler_deg
        ``(N, 3)`` RELION Euler angles in degrees.
    origin_angstrom
        ``(N, 2)`` ``(rlnOriginXAngst, rlnOriginYAngst)``; None means zero. For
        RELION 3.0 files pass ``(rlnOriginX, rlnOriginY) * pixel_size``.

    Returns
    -------
    R
        ``(N, 3, 3)`` float64, RELION's ``A``.
    shifts_angstrom
        ``(N, 2)`` float64, ``-origin``.
    """
    euler_deg = np.asarray(euler_deg, dtype=np.float64).reshape(-1, 3)
    R = _apply(_rotations().euler_relion_to_matrix, euler_deg)
    if origin_angstrom is None:
        shifts = np.zeros((euler_deg.shape[0], 2))
    else:
        shifts = -np.asarray(origin_angstrom, dtype=np.float64).reshape(-1, 2)
    return R, shifts


def internal_to_relion(
    R: np.ndarray, shifts_angstrom: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """``(R, shifts_angstrom)`` to RELION ``(euler_deg (N, 3), origin_angstrom (N, 2))``."""
    R = np.asarray(R, dtype=np.float64).reshape(-1, 3, 3)
    euler = _apply(_rotations().matrix_to_euler_relion, R)
    if shifts_angstrom is None:
        origin = np.zeros((R.shape[0], 2))
    else:
        origin = -np.asarray(shifts_angstrom, dtype=np.float64).reshape(-1, 2)
    return euler, origin


def cryosparc_to_internal(
    pose_axis_angle: np.ndarray, shift_px: np.ndarray | None, pixel_size: float
) -> tuple[np.ndarray, np.ndarray]:
    """cryoSPARC ``alignments3D/pose`` and ``/shift`` to ``(R, shifts_angstrom)``.

    Parameters
    ----------
    pose_axis_angle
        ``(N, 3)`` axis-angle vectors in radians.
    shift_px
        ``(N, 2)`` shifts in pixels of ``pixel_size`` (None means zero).
    pixel_size
        ``alignments3D/psize_A`` (Å).

    Returns
    -------
    R
        ``(N, 3, 3)`` = ``Rodrigues(pose)^T``.
    shifts_angstrom
        ``(N, 2)`` = ``-shift_px * pixel_size``.
    """
    pose = np.asarray(pose_axis_angle, dtype=np.float64).reshape(-1, 3)
    R = _swap(_apply(_rotations().axis_angle_to_matrix, pose))
    if shift_px is None:
        shifts = np.zeros((pose.shape[0], 2))
    else:
        shifts = -np.asarray(shift_px, dtype=np.float64).reshape(-1, 2) * float(pixel_size)
    return R, shifts


def internal_to_cryosparc(
    R: np.ndarray, shifts_angstrom: np.ndarray | None, pixel_size: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(R, shifts_angstrom)`` to cryoSPARC ``(pose (N, 3) rad, shift_px (N, 2))``."""
    R = np.asarray(R, dtype=np.float64).reshape(-1, 3, 3)
    pose = _apply(_rotations().matrix_to_axis_angle, _swap(R))
    if shifts_angstrom is None:
        shift = np.zeros((R.shape[0], 2))
    else:
        shift = -np.asarray(shifts_angstrom, dtype=np.float64).reshape(-1, 2) / float(pixel_size)
    return pose, shift


def cryodrgn_to_internal(
    rot: np.ndarray, trans_fraction: np.ndarray | None, box_size: int, pixel_size: float
) -> tuple[np.ndarray, np.ndarray]:
    """cryoDRGN pose pickle ``(rot, trans)`` to ``(R, shifts_angstrom)``.

    Parameters
    ----------
    rot
        ``(N, 3, 3)``; equal to our ``R``.
    trans_fraction
        ``(N, 2)`` RELION-sign origins as a fraction of the box (None means zero).
    box_size, pixel_size
        ``D`` (pixels) and Å per pixel of the images the poses refer to.

    Returns
    -------
    R
        ``(N, 3, 3)`` float64.
    shifts_angstrom
        ``(N, 2)`` = ``-trans * D * pixel_size``.
    """
    R = np.asarray(rot, dtype=np.float64).reshape(-1, 3, 3).copy()
    if trans_fraction is None:
        shifts = np.zeros((R.shape[0], 2))
    else:
        trans = np.asarray(trans_fraction, dtype=np.float64).reshape(-1, 2)
        shifts = -trans * float(box_size) * float(pixel_size)
    return R, shifts


def internal_to_cryodrgn(
    R: np.ndarray, shifts_angstrom: np.ndarray | None, box_size: int, pixel_size: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(R, shifts_angstrom)`` to cryoDRGN ``(rot (N,3,3) float32, trans (N,2) float32)``."""
    R = np.asarray(R, dtype=np.float64).reshape(-1, 3, 3)
    if shifts_angstrom is None:
        trans = np.zeros((R.shape[0], 2))
    else:
        trans = -np.asarray(shifts_angstrom, dtype=np.float64).reshape(-1, 2)
        trans = trans / (float(box_size) * float(pixel_size))
    return R.astype(np.float32), trans.astype(np.float32)
