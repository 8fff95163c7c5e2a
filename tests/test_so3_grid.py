"""Tests for cryoviz.geometry.so3_grid (HEALPix x in-plane grids on SO(3))."""

from __future__ import annotations

import math

import healpy
import numpy as np
import pytest
import torch

from cryoviz.geometry import (
    SO3Grid,
    geodesic_distance_deg,
    local_rotations,
    nearest_grid_index,
    random_rotations,
    viewing_direction,
)

F64 = torch.float64


@pytest.mark.parametrize("order, size", [(0, 72), (1, 576), (2, 4608), (3, 36864)])
def test_grid_sizes(order, size):
    g = SO3Grid(order)
    assert g.nside == 2**order
    assert g.n_directions == 12 * 4**order == healpy.nside2npix(g.nside)
    assert g.n_inplane == 6 * 2**order
    assert g.size == size == 72 * 8**order
    assert g.euler_deg().shape == (size, 3)
    assert g.rotations().shape == (size, 3, 3)
    step = math.degrees(math.sqrt(4 * math.pi / g.n_directions))
    assert g.angular_step_deg == pytest.approx(step)
    assert g.inplane_step_deg == pytest.approx(60.0 / 2**order)


def test_bad_order():
    for bad in (-1, 1.5, "2", 11):
        with pytest.raises(ValueError):
            SO3Grid(bad)


def test_flat_index_layout_and_euler():
    g = SO3Grid(1)
    euler = g.euler_deg()
    for p, j in [(0, 0), (5, 3), (47, 11), (20, 7)]:
        theta, phi = healpy.pix2ang(g.nside, p, nest=True)
        expected = [math.degrees(phi), math.degrees(theta), (j + 0.5) * 360 / g.n_inplane]
        np.testing.assert_allclose(euler[p * g.n_inplane + j], expected, atol=1e-12)
    # viewing direction of grid point (p, j) is HEALPix pixel p's centre (rot = phi, tilt = theta)
    R = g.rotations(F64)
    vec = np.stack(healpy.pix2vec(g.nside, np.arange(g.n_directions), nest=True), -1)
    np.testing.assert_allclose(viewing_direction(R).numpy(), np.repeat(vec, g.n_inplane, 0),
                               atol=1e-12)


def test_rotations_valid_distinct_and_typed():
    g = SO3Grid(1)
    R = g.rotations(F64)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(g.size, dtype=F64))
    d = geodesic_distance_deg(R[:, None], R[None])
    d.fill_diagonal_(1e9)
    assert d.min() > 0.3 * g.angular_step_deg
    assert g.rotations().dtype == torch.float32


def test_grid_covers_so3():
    g = SO3Grid(2)
    R = random_rotations(2000, torch.Generator().manual_seed(0))
    idx = nearest_grid_index(g, R)
    d = geodesic_distance_deg(R, g.rotations(F64)[idx])
    assert d.max() < 1.5 * g.angular_step_deg
    assert d.mean() < 0.75 * g.angular_step_deg
    # a coarser grid covers worse: the distances scale with the step
    d1 = geodesic_distance_deg(R, SO3Grid(1).rotations(F64)[nearest_grid_index(SO3Grid(1), R)])
    assert d1.mean() > 1.5 * d.mean()


def test_nearest_grid_index_recovers_grid_points():
    g = SO3Grid(2)
    idx = torch.arange(0, g.size, 37)
    assert torch.equal(nearest_grid_index(g, g.rotations(F64)[idx]), idx)
    assert torch.equal(nearest_grid_index(g, g.rotations()[idx]), idx)
    with pytest.raises(ValueError):
        nearest_grid_index(g, torch.zeros(3, 3))


@pytest.mark.parametrize("order", [0, 1, 2])
def test_children_partition_and_proximity(order):
    g, fine = SO3Grid(order), SO3Grid(order + 1)
    idx = torch.arange(g.size)
    ch = g.children(idx)
    assert ch.shape == (g.size, 8) and ch.dtype == torch.long
    # every fine grid point is the child of exactly one parent
    assert torch.equal(ch.flatten().sort().values, torch.arange(fine.size))
    # child directions are the nested HEALPix children 4p .. 4p + 3, two in-plane each
    child_pix = torch.div(ch, fine.n_inplane, rounding_mode="floor")
    parent_pix = torch.div(idx, g.n_inplane, rounding_mode="floor")
    expected_pix = (4 * parent_pix[:, None] + torch.arange(4)).repeat_interleave(2, 1)
    assert torch.equal(child_pix, expected_pix)
    # children are close to their parent everywhere, poles included
    d = geodesic_distance_deg(g.rotations(F64)[:, None], fine.rotations(F64)[ch])
    assert d.max() < 0.75 * g.angular_step_deg  # = 1.5 steps of the finer grid
    assert d.mean() < 0.5 * g.angular_step_deg


def test_children_batched_shape():
    g = SO3Grid(1)
    idx = torch.tensor([[0, 5, 9], [100, 575, 3]])
    ch = g.children(idx)
    assert ch.shape == (2, 3, 8)
    assert torch.equal(ch[1, 1], g.children(torch.tensor([575]))[0])
    with pytest.raises(ValueError):
        g.children(torch.tensor([g.size]))


@pytest.mark.parametrize("order", [1, 2])
def test_neighbours(order):
    g = SO3Grid(order)
    R = g.rotations(F64)
    idx = torch.arange(0, g.size, 3 ** order)
    nb = g.neighbours(idx)
    assert nb.shape == (len(idx), 27)
    assert torch.equal(nb[:, 13], idx)
    assert nb.min() >= 0 and nb.max() < g.size
    d = geodesic_distance_deg(R[idx][:, None], R[nb])
    assert d.max() < 2.5 * g.angular_step_deg
    # the six closest other grid points are always among the neighbours
    all_d = (R[idx].reshape(-1, 1, 9) * R.reshape(1, -1, 9)).sum(-1).neg()  # -trace, monotone
    all_d[torch.arange(len(idx)), idx] = float("inf")
    nearest = all_d.topk(6, largest=False).indices
    assert (nearest[..., None] == nb[:, None, :]).any(-1).all()


def test_local_rotations():
    centers = random_rotations(4, torch.Generator().manual_seed(1))
    for order, n_steps in [(2, 1), (3, 2)]:
        step = SO3Grid(order).angular_step_deg
        loc = local_rotations(centers, order, n_steps)
        k = (2 * n_steps + 1) ** 3
        assert loc.shape == (4, k, 3, 3)
        torch.testing.assert_close(loc[:, k // 2], centers)
        d = geodesic_distance_deg(centers[:, None], loc)
        # nearest non-centre offsets are exactly one step away; corners sqrt(3) n_steps steps
        off = d.clone()
        off[:, k // 2] = float("inf")
        torch.testing.assert_close(off.min(1).values, torch.full((4,), step, dtype=F64))
        torch.testing.assert_close(d.max(1).values, torch.full((4,), math.sqrt(3) * n_steps * step,
                                                               dtype=F64))
    with pytest.raises(ValueError):
        local_rotations(torch.eye(3), 2)
