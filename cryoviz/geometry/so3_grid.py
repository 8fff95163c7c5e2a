"""Hierarchical SO(3) grids: HEALPix directions x in-plane angles.

At order ``n`` (``nside = 2**n``) the grid has ``12 * 4**n`` HEALPix directions
(NESTED scheme) times ``6 * 2**n`` in-plane angles, ``72 * 8**n`` rotations in
all (order 0: 72, 1: 576, 2: 4608, 3: 36864). Grid point ``(p, j)`` has the flat
index ``p * n_inplane + j`` and the RELION Euler angles ``rot = phi``,
``tilt = theta`` (degrees, from ``healpy.pix2ang(nside, p, nest=True)``) and
``psi = (j + 0.5) * 360 / n_inplane``.

Near the poles, directions a small angle apart can differ by a large ``rot``;
with equal ``psi`` such rotations are far apart (their in-plane angle ``rot + psi``
differs). :meth:`SO3Grid.children` and :meth:`SO3Grid.neighbours` therefore
match in-plane indices by parallel transport: the in-plane index of a child or
neighbour direction is shifted by the (direction-pair dependent) amount that keeps
the rotation closest to the parent's, so children and neighbours are close in
SO(3) everywhere, and the children map is still a partition of the finer grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from cryoviz.geometry.rotations import (
    axis_angle_to_matrix,
    euler_relion_to_matrix,
)

__all__ = ["SO3Grid", "local_rotations", "nearest_grid_index"]


def _healpy():
    """healpy, imported on first use: importing it loads astropy and matplotlib
    (about 1 s), which every ``cryoviz`` command and the napari plugin would
    otherwise pay at start-up."""
    import healpy  # noqa: PLC0415

    return healpy


def _direction_frames(nside: int, pix: np.ndarray) -> torch.Tensor:
    """``(..., 3, 3)`` float64 matrices of HEALPix pixels with ``psi = 0``."""
    theta, phi = _healpy().pix2ang(nside, pix.reshape(-1), nest=True)
    euler = np.stack([np.rad2deg(phi), np.rad2deg(theta), np.zeros_like(theta)], -1)
    mats = euler_relion_to_matrix(torch.from_numpy(euler))
    return mats.reshape(*pix.shape, 3, 3)


def _transport_psi_shift_deg(frames_from: torch.Tensor, frames_to: torch.Tensor) -> torch.Tensor:
    """In-plane shift ``delta`` (deg): ``psi + delta`` at ``to`` best matches ``psi`` at ``from``.

    ``frames_*`` are ``(..., 3, 3)`` psi = 0 matrices ``B``; a grid rotation is
    ``Rz(-psi) B``. The rotation at ``from`` is carried to the direction of
    ``to`` by the smallest rotation of the viewing direction, ``A Q^T``, which
    equals ``Rz(-(psi + delta)) B_to``; ``delta`` does not depend on ``psi``.
    """
    v_from, v_to = frames_from[..., 2, :], frames_to[..., 2, :]
    axis = torch.linalg.cross(v_from, v_to, dim=-1)
    sin_a = torch.linalg.vector_norm(axis, dim=-1, keepdim=True)
    angle = torch.atan2(sin_a, (v_from * v_to).sum(-1, keepdim=True))
    scale = torch.where(sin_a > 1e-12, angle / sin_a.clamp_min(1e-12), torch.ones_like(sin_a))
    q = axis_angle_to_matrix(axis * scale)
    m = frames_from @ q.transpose(-1, -2) @ frames_to.transpose(-1, -2)  # = Rz(-delta)
    return -torch.rad2deg(torch.atan2(m[..., 1, 0], m[..., 0, 0]))


@dataclass(frozen=True)
class SO3Grid:
    """HEALPix x in-plane grid on SO(3) at a given order (see module docstring).

    Parameters
    ----------
    order
        Resolution level ``n >= 0``; ``nside = 2**n``.
    """

    order: int

    def __post_init__(self) -> None:
        if isinstance(self.order, bool) or not isinstance(self.order, int | np.integer):
            raise ValueError(f"order: expected a non-negative int, got {self.order!r}")
        if not 0 <= self.order <= 10:
            raise ValueError(f"order: expected 0 <= order <= 10, got {self.order}")

    @property
    def nside(self) -> int:
        return 2**self.order

    @property
    def n_directions(self) -> int:
        return 12 * 4**self.order

    @property
    def n_inplane(self) -> int:
        return 6 * 2**self.order

    @property
    def size(self) -> int:
        return self.n_directions * self.n_inplane

    @property
    def angular_step_deg(self) -> float:
        """Direction spacing ``sqrt(4 pi / n_directions)`` in degrees (~ 58.6 / 2**order)."""
        return math.degrees(math.sqrt(4 * math.pi / self.n_directions))

    @property
    def inplane_step_deg(self) -> float:
        """In-plane spacing ``360 / n_inplane`` in degrees (= 60 / 2**order)."""
        return 360.0 / self.n_inplane

    @cached_property
    def _euler(self) -> np.ndarray:
        theta, phi = _healpy().pix2ang(self.nside, np.arange(self.n_directions), nest=True)
        psi = (np.arange(self.n_inplane) + 0.5) * self.inplane_step_deg
        euler = np.empty((self.n_directions, self.n_inplane, 3), dtype=np.float64)
        euler[..., 0] = np.rad2deg(phi)[:, None]
        euler[..., 1] = np.rad2deg(theta)[:, None]
        euler[..., 2] = psi[None, :]
        euler = euler.reshape(-1, 3)
        euler.setflags(write=False)
        return euler

    def euler_deg(self) -> np.ndarray:
        """``(size, 3)`` read-only float64 RELION ``(rot, tilt, psi)``, in flat-index order."""
        return self._euler

    def rotations(
        self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """``(size, 3, 3)`` rotation matrices (computed in float64, then cast)."""
        mats = euler_relion_to_matrix(torch.from_numpy(self._euler.copy()))
        return mats.to(dtype=dtype, device=device)

    def _split(self, index: torch.Tensor, name: str) -> tuple[np.ndarray, torch.Tensor]:
        if not isinstance(index, torch.Tensor) or index.is_floating_point() or index.is_complex():
            raise ValueError(f"{name}: expected an integer tensor of flat grid indices")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.size):
            raise ValueError(f"{name}: indices must lie in [0, {self.size}) at order {self.order}")
        index = index.long()
        pix = torch.div(index, self.n_inplane, rounding_mode="floor")
        return pix.cpu().numpy(), index % self.n_inplane

    def children(self, index: torch.Tensor) -> torch.Tensor:
        """Flat indices in ``SO3Grid(order + 1)`` of the 8 children of each grid point.

        Child directions are the nested pixels ``4p .. 4p+3``; for each, two
        consecutive in-plane indices ``2j + m, 2j + m + 1`` (mod ``2 n_inplane``),
        with ``m`` the parallel-transport shift of that direction pair (``m = 0``
        away from the poles). For every child pixel ``j -> (2j + m, 2j + m + 1)``
        is a bijection, so the children of all points partition the finer grid.

        Parameters
        ----------
        index
            ``(...)`` integer flat indices at this order.

        Returns
        -------
        torch.Tensor
            ``(..., 8)`` int64 flat indices at ``order + 1`` (pixel-major, in-plane minor).
        """
        pix, j = self._split(index, "index")
        fine = SO3Grid(self.order + 1)
        child_pix = 4 * pix[..., None] + np.arange(4)  # (..., 4)
        frames_parent = _direction_frames(self.nside, pix)[..., None, :, :]
        frames_child = _direction_frames(fine.nside, child_pix)
        delta = _transport_psi_shift_deg(frames_parent, frames_child)  # (..., 4)
        # parent psi = (j + 1/2) s; children 2j + m + {0, 1} are centred on (j + 1/2 + m/2) s
        m = torch.round(delta / fine.inplane_step_deg).long().to(j.device)
        cp = torch.from_numpy(child_pix).to(j.device)
        jj = (2 * j[..., None, None] + m[..., None] + torch.arange(2, device=j.device))
        jj = jj % fine.n_inplane
        out = cp[..., None] * fine.n_inplane + jj  # (..., 4, 2)
        return out.reshape(*out.shape[:-2], 8)

    def neighbours(self, index: torch.Tensor) -> torch.Tensor:
        """Flat indices of the grid points adjacent to each point, itself included.

        The point's HEALPix pixel and its (up to 8) neighbours
        (``healpy.get_all_neighbours``, missing ones replaced by the pixel itself)
        times in-plane indices ``j' - 1, j', j' + 1`` (wrapping), where ``j'`` is
        ``j`` shifted by parallel transport to that direction.

        Parameters
        ----------
        index
            ``(B,)`` integer flat indices.

        Returns
        -------
        torch.Tensor
            ``(B, 27)`` int64 flat indices; column 13 is the point itself.
        """
        if not isinstance(index, torch.Tensor) or index.ndim != 1:
            raise ValueError("index: expected a 1-D integer tensor of flat grid indices")
        pix, j = self._split(index, "index")
        nb = _healpy().get_all_neighbours(self.nside, pix, nest=True).T.reshape(-1, 8)  # (B, 8)
        nb = np.where(nb < 0, pix[:, None], nb)
        dirs = np.concatenate([nb[:, :4], pix[:, None], nb[:, 4:]], axis=1)  # self at column 4
        frames_self = _direction_frames(self.nside, pix)[:, None]
        delta = _transport_psi_shift_deg(frames_self, _direction_frames(self.nside, dirs))
        shift = torch.round(delta / self.inplane_step_deg).long().to(j.device)
        shift[:, 4] = 0
        jc = j[:, None, None] + shift[..., None] + torch.arange(-1, 2, device=j.device)
        jc = jc % self.n_inplane
        out = torch.from_numpy(dirs).to(j.device)[..., None] * self.n_inplane + jc  # (B, 9, 3)
        return out.reshape(-1, 27)


def local_rotations(center: torch.Tensor, order: int, n_steps: int = 1) -> torch.Tensor:
    """Local grids of rotations around each centre, for local refinement.

    ``center @ exp([w]_x)`` for tangent offsets ``w`` on a cube
    ``step * {-n_steps .. n_steps}^3`` (radians), ``step`` = ``SO3Grid(order).angular_step_deg``.

    Parameters
    ----------
    center
        ``(B, 3, 3)`` rotation matrices.
    order
        Grid order setting the step.
    n_steps
        Half-width of the cube in steps.

    Returns
    -------
    torch.Tensor
        ``(B, K, 3, 3)`` with ``K = (2 n_steps + 1)**3``; entry ``K // 2`` is the centre.
    """
    if center.ndim != 3 or center.shape[-2:] != (3, 3):
        raise ValueError(f"center: expected shape (B, 3, 3), got {tuple(center.shape)}")
    if n_steps < 0:
        raise ValueError(f"n_steps: expected >= 0, got {n_steps}")
    step = math.radians(SO3Grid(order).angular_step_deg)
    r = torch.arange(-n_steps, n_steps + 1, dtype=center.dtype, device=center.device) * step
    offsets = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    return center[:, None] @ axis_angle_to_matrix(offsets)


def nearest_grid_index(grid: SO3Grid, R: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Index of the grid point closest (geodesic distance) to each rotation; brute force.

    Parameters
    ----------
    grid
        The grid.
    R
        ``(B, 3, 3)`` rotation matrices.
    chunk
        Rotations compared at a time.

    Returns
    -------
    torch.Tensor
        ``(B,)`` int64 flat indices.
    """
    if R.ndim != 3 or R.shape[-2:] != (3, 3):
        raise ValueError(f"R: expected shape (B, 3, 3), got {tuple(R.shape)}")
    dtype = R.dtype if R.is_floating_point() else torch.float64
    g = grid.rotations(dtype=dtype, device=R.device).reshape(-1, 9)
    # trace(R^T G) = <R, G>, monotone decreasing in the angle
    out = [
        (block.reshape(-1, 9).to(dtype) @ g.T).argmax(-1) for block in R.split(chunk)
    ]
    if not out:
        return torch.zeros(0, dtype=torch.long, device=R.device)
    return torch.cat(out)
