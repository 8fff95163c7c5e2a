"""Rotation conventions and conversions: the one place where they are defined.

Conventions
-----------
* A rotation matrix ``R`` maps particle (map) coordinates to lab coordinates,
  ``r_lab = R @ r_particle``; images are projections along lab ``z``.
  Coordinates are ``(x, y, z)``.
* RELION Euler angles ``(rot, tilt, psi)`` in degrees, ZYZ::

      R = (Rz(rot) @ Ry(tilt) @ Rz(psi)).T

  with the active matrices ``Rz(a) = [[cos a, -sin a, 0], [sin a, cos a, 0], [0, 0, 1]]``
  and ``Ry(b) = [[cos b, 0, sin b], [0, 1, 0], [-sin b, 0, cos b]]``. This is
  RELION's ``Euler_angles2matrix`` matrix ``A`` (e.g. ``A[0, 2] = -cos(psi) sin(tilt)``,
  ``A[2, 0] = sin(tilt) cos(rot)``, ``A[2, 2] = cos(tilt)``).
* Quaternions are ``(w, x, y, z)``, unit norm, canonical sign ``w >= 0``;
  ``(cos(a/2), sin(a/2) n)`` is the active rotation by ``a`` about ``n``.
* Axis-angle is the rotation vector ``v`` (angle ``|v|`` radians about ``v / |v|``),
  as in cryoSPARC's ``alignments3D/pose``.

All functions are pure torch, batched over leading dimensions and keep the
input's dtype and device.
"""

from __future__ import annotations

import torch

__all__ = [
    "euler_relion_to_matrix",
    "matrix_to_euler_relion",
    "quaternion_to_matrix",
    "matrix_to_quaternion",
    "axis_angle_to_matrix",
    "matrix_to_axis_angle",
    "random_rotations",
    "geodesic_distance_deg",
    "rotation_about_axis",
    "rotation_6d_to_matrix",
    "matrix_to_rotation_6d",
    "viewing_direction",
    "IN_PLANE_PI",
]

IN_PLANE_PI = torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64))
"""``Rz(π)`` ``(3, 3)`` in the lab frame: ``IN_PLANE_PI @ R`` views the particle along the
same direction with its projection rotated by π in the image plane."""


def _check_tail(x: torch.Tensor, tail: tuple[int, ...], name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim < len(tail) or tuple(x.shape[x.ndim - len(tail):]) != tail:
        want = "(..., " + ", ".join(str(t) for t in tail) + ")"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(x.shape)}")


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def _skew(v: torch.Tensor) -> torch.Tensor:
    """``(..., 3)`` -> ``(..., 3, 3)`` cross-product matrix ``[v]_x``."""
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack(
        [
            torch.stack([zero, -z, y], -1),
            torch.stack([z, zero, -x], -1),
            torch.stack([-y, x, zero], -1),
        ],
        -2,
    )


def rotation_about_axis(axis: str, angle_deg: torch.Tensor) -> torch.Tensor:
    """Active rotation about a coordinate axis.

    Parameters
    ----------
    axis
        ``'x'``, ``'y'`` or ``'z'``.
    angle_deg
        ``(...)`` angles in degrees (counter-clockwise looking down the axis).

    Returns
    -------
    torch.Tensor
        ``(..., 3, 3)`` rotation matrices.
    """
    if axis not in ("x", "y", "z"):
        raise ValueError(f"axis: expected 'x', 'y' or 'z', got {axis!r}")
    a = torch.deg2rad(_as_float(torch.as_tensor(angle_deg)))
    c, s = torch.cos(a), torch.sin(a)
    one, zero = torch.ones_like(a), torch.zeros_like(a)
    if axis == "x":
        rows = [[one, zero, zero], [zero, c, -s], [zero, s, c]]
    elif axis == "y":
        rows = [[c, zero, s], [zero, one, zero], [-s, zero, c]]
    else:
        rows = [[c, -s, zero], [s, c, zero], [zero, zero, one]]
    return torch.stack([torch.stack(r, -1) for r in rows], -2)


def euler_relion_to_matrix(euler_deg: torch.Tensor) -> torch.Tensor:
    """RELION Euler angles to rotation matrices.

    Parameters
    ----------
    euler_deg
        ``(..., 3)`` angles ``(rot, tilt, psi)`` in degrees.

    Returns
    -------
    torch.Tensor
        ``(..., 3, 3)`` matrices ``R = (Rz(rot) Ry(tilt) Rz(psi))^T`` (particle -> lab).
    """
    _check_tail(euler_deg, (3,), "euler_deg")
    euler_deg = _as_float(euler_deg)
    rot, tilt, psi = euler_deg.unbind(-1)
    forward = (
        rotation_about_axis("z", rot)
        @ rotation_about_axis("y", tilt)
        @ rotation_about_axis("z", psi)
    )
    return forward.transpose(-1, -2)


def _wrap_deg(a: torch.Tensor) -> torch.Tensor:
    """Wrap degrees to ``(-180, 180]``."""
    return 180.0 - torch.remainder(180.0 - a, 360.0)


def matrix_to_euler_relion(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrices to RELION Euler angles.

    ``rot`` comes from the third row; ``psi`` from ``rot + psi`` (northern
    hemisphere) or ``rot - psi`` (southern), read from the well-conditioned
    combinations of the upper-left 2x2 block, so the result round-trips to
    machine precision for every tilt. At gimbal lock (``sin(tilt)`` at rounding
    level) ``rot`` is set to 0 and the whole in-plane angle goes into ``psi``.

    Parameters
    ----------
    R
        ``(..., 3, 3)`` rotation matrices.

    Returns
    -------
    torch.Tensor
        ``(..., 3)`` ``(rot, tilt, psi)`` in degrees; ``tilt`` in ``[0, 180]``,
        ``rot`` and ``psi`` in ``(-180, 180]``.
    """
    _check_tail(R, (3, 3), "R")
    R = _as_float(R)
    r00, r01, r02 = R[..., 0, 0], R[..., 0, 1], R[..., 0, 2]
    r10, r11, r12 = R[..., 1, 0], R[..., 1, 1], R[..., 1, 2]
    r20, r21, r22 = R[..., 2, 0], R[..., 2, 1], R[..., 2, 2]
    sin_tilt = 0.5 * (torch.hypot(r20, r21) + torch.hypot(r02, r12))
    tilt = torch.atan2(sin_tilt, r22)
    rot = torch.atan2(r21, r20)
    # (1 + cos tilt) (cos, sin)(rot + psi) and (1 - cos tilt) (cos, sin)(rot - psi):
    # psi from whichever combination is well conditioned in this hemisphere
    s = torch.atan2(r01 - r10, r00 + r11)
    d = torch.atan2(-(r01 + r10), r11 - r00)
    north = r22 >= 0
    psi = torch.where(north, s - rot, rot - d)
    # gimbal lock (sin tilt at rounding level): rot = 0, psi = the whole in-plane angle
    locked = sin_tilt < 8 * torch.finfo(R.dtype).eps
    rot = torch.where(locked, torch.zeros_like(rot), rot)
    psi = torch.where(locked, torch.where(north, s, -d), psi)
    rot_deg = _wrap_deg(torch.rad2deg(rot))
    psi_deg = _wrap_deg(torch.rad2deg(psi))
    return torch.stack([rot_deg, torch.rad2deg(tilt), psi_deg], -1)


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Quaternions ``(w, x, y, z)`` to rotation matrices.

    Parameters
    ----------
    q
        ``(..., 4)`` quaternions; they are normalised here (non-zero norm required).

    Returns
    -------
    torch.Tensor
        ``(..., 3, 3)`` rotation matrices.
    """
    _check_tail(q, (4,), "q")
    q = _as_float(q)
    w, x, y, z = q.unbind(-1)
    two_s = 2.0 / (q * q).sum(-1)
    rows = [
        [1 - two_s * (y * y + z * z), two_s * (x * y - z * w), two_s * (x * z + y * w)],
        [two_s * (x * y + z * w), 1 - two_s * (x * x + z * z), two_s * (y * z - x * w)],
        [two_s * (x * z - y * w), two_s * (y * z + x * w), 1 - two_s * (x * x + y * y)],
    ]
    return torch.stack([torch.stack(r, -1) for r in rows], -2)


def matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrices to unit quaternions ``(w, x, y, z)``, ``w >= 0`` (Shepperd's method).

    Four candidate vectors proportional to ``q`` are formed (scaled by ``4 w``,
    ``4 x``, ``4 y``, ``4 z``); the one with the largest scale is normalised, so
    no small denominator ever occurs.

    Parameters
    ----------
    R
        ``(..., 3, 3)`` rotation matrices.

    Returns
    -------
    torch.Tensor
        ``(..., 4)`` unit quaternions with ``w >= 0``.
    """
    _check_tail(R, (3, 3), "R")
    R = _as_float(R)
    r00, r01, r02 = R[..., 0, 0], R[..., 0, 1], R[..., 0, 2]
    r10, r11, r12 = R[..., 1, 0], R[..., 1, 1], R[..., 1, 2]
    r20, r21, r22 = R[..., 2, 0], R[..., 2, 1], R[..., 2, 2]
    cand = torch.stack(
        [
            torch.stack([1 + r00 + r11 + r22, r21 - r12, r02 - r20, r10 - r01], -1),
            torch.stack([r21 - r12, 1 + r00 - r11 - r22, r01 + r10, r02 + r20], -1),
            torch.stack([r02 - r20, r01 + r10, 1 - r00 + r11 - r22, r12 + r21], -1),
            torch.stack([r10 - r01, r02 + r20, r12 + r21, 1 - r00 - r11 + r22], -1),
        ],
        -2,
    )  # (..., 4, 4): row k = 4 q_k q
    diag = torch.diagonal(cand, dim1=-2, dim2=-1)
    best = diag.argmax(-1, keepdim=True)
    q = torch.gather(cand, -2, best[..., None].expand(*best.shape, 4)).squeeze(-2)
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def axis_angle_to_matrix(v: torch.Tensor) -> torch.Tensor:
    """Rotation vectors to rotation matrices (Rodrigues), stable and differentiable at 0.

    Parameters
    ----------
    v
        ``(..., 3)`` rotation vectors; angle ``|v|`` in radians.

    Returns
    -------
    torch.Tensor
        ``(..., 3, 3)`` rotation matrices ``I + sin(a)/a K + (1 - cos a)/a^2 K^2``.
    """
    _check_tail(v, (3,), "v")
    v = _as_float(v)
    theta2 = (v * v).sum(-1)
    small = theta2 < 1e-6
    theta2_safe = torch.where(small, torch.ones_like(theta2), theta2)
    theta = torch.sqrt(theta2_safe)
    a = torch.where(small, 1 - theta2 / 6 + theta2 * theta2 / 120, torch.sin(theta) / theta)
    b = torch.where(
        small, 0.5 - theta2 / 24 + theta2 * theta2 / 720, (1 - torch.cos(theta)) / theta2_safe
    )
    k = _skew(v)
    eye = torch.eye(3, dtype=v.dtype, device=v.device).expand(k.shape)
    return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)


def matrix_to_axis_angle(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrices to rotation vectors, stable near angle 0 and angle pi.

    Goes through :func:`matrix_to_quaternion`: angle ``= 2 atan2(|q_xyz|, w)`` in ``[0, pi]``.

    Parameters
    ----------
    R
        ``(..., 3, 3)`` rotation matrices.

    Returns
    -------
    torch.Tensor
        ``(..., 3)`` rotation vectors with ``|v| <= pi``.
    """
    q = matrix_to_quaternion(R)
    w, xyz = q[..., 0], q[..., 1:]
    s2 = (xyz * xyz).sum(-1)
    small = s2 < 1e-12
    s = torch.sqrt(torch.where(small, torch.ones_like(s2), s2))
    angle = 2 * torch.atan2(s, w)
    # angle / s -> 2 / w (1 - s^2 / (3 w^2)) as s -> 0 (w ~ 1 there)
    scale = torch.where(small, 2 / w * (1 - s2 / (3 * w * w)), angle / s)
    return xyz * scale[..., None]


def random_rotations(
    n: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Rotations drawn uniformly (Haar measure) from SO(3).

    Normalised 4-D Gaussian vectors are uniform on S^3, hence uniform quaternions.

    Parameters
    ----------
    n
        Number of rotations.
    generator
        Optional random generator (reproducible draws); its device is used for sampling.
    dtype, device
        Output dtype and device.

    Returns
    -------
    torch.Tensor
        ``(n, 3, 3)`` rotation matrices.
    """
    if n < 0:
        raise ValueError(f"n: expected a non-negative count, got {n}")
    sample_device = generator.device if generator is not None else device
    q = torch.randn(n, 4, generator=generator, dtype=dtype, device=sample_device)
    return quaternion_to_matrix(q).to(device=device)


def geodesic_distance_deg(R1: torch.Tensor, R2: torch.Tensor) -> torch.Tensor:
    """Angle of the relative rotation ``R1^T R2`` in degrees (broadcast over leading dims).

    Uses ``atan2(|skew part|, trace - 1)``, accurate near 0 and 180 degrees.

    Parameters
    ----------
    R1, R2
        ``(..., 3, 3)`` rotation matrices (broadcastable).

    Returns
    -------
    torch.Tensor
        ``(...)`` angles in ``[0, 180]`` degrees.
    """
    _check_tail(R1, (3, 3), "R1")
    _check_tail(R2, (3, 3), "R2")
    M = _as_float(R1).transpose(-1, -2) @ _as_float(R2)
    skew = torch.stack(
        [M[..., 2, 1] - M[..., 1, 2], M[..., 0, 2] - M[..., 2, 0], M[..., 1, 0] - M[..., 0, 1]],
        -1,
    )
    trace = M[..., 0, 0] + M[..., 1, 1] + M[..., 2, 2]
    return torch.rad2deg(torch.atan2(torch.linalg.vector_norm(skew, dim=-1), trace - 1))


def rotation_6d_to_matrix(x: torch.Tensor) -> torch.Tensor:
    """6-D representation (Zhou et al. 2019) to rotation matrices by Gram-Schmidt.

    Parameters
    ----------
    x
        ``(..., 6)``: two 3-vectors ``a1 = x[..., :3]``, ``a2 = x[..., 3:]``.

    Returns
    -------
    torch.Tensor
        ``(..., 3, 3)`` with columns ``b1 = a1/|a1|``, ``b2`` = normalised part of
        ``a2`` orthogonal to ``b1``, ``b3 = b1 x b2``.
    """
    _check_tail(x, (6,), "x")
    x = _as_float(x)
    a1, a2 = x[..., :3], x[..., 3:]
    b1 = a1 / torch.linalg.vector_norm(a1, dim=-1, keepdim=True)
    u2 = a2 - (b1 * a2).sum(-1, keepdim=True) * b1
    b2 = u2 / torch.linalg.vector_norm(u2, dim=-1, keepdim=True)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], -1)


def matrix_to_rotation_6d(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrices to the 6-D representation: first two columns, ``(..., 6)``."""
    _check_tail(R, (3, 3), "R")
    return torch.cat([R[..., :, 0], R[..., :, 1]], -1)


def viewing_direction(R: torch.Tensor) -> torch.Tensor:
    """Projection direction in the particle frame, ``R^T @ (0, 0, 1)``.

    Parameters
    ----------
    R
        ``(..., 3, 3)`` rotation matrices (particle -> lab).

    Returns
    -------
    torch.Tensor
        ``(..., 3)`` unit vectors (the third row of ``R``); for RELION angles this is
        ``(sin(tilt) cos(rot), sin(tilt) sin(rot), cos(tilt))``.
    """
    _check_tail(R, (3, 3), "R")
    return R[..., 2, :]
