"""PC traversals, straight and kNN-graph paths, arc-length resampling, volume series."""

from __future__ import annotations

import numpy as np
import pytest

from cryoviz.analysis import (
    knn_graph_path,
    path_length,
    pc_traversal,
    pca,
    resample_path,
    straight_path,
    volume_series,
)


def test_pc_traversal_endpoints_at_percentiles():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(400, 4)) * np.array([4.0, 2.0, 1.0, 0.5]) + 3.0
    res = pca(z)
    for comp in (0, 1):
        path = pc_traversal(res, comp, n_points=7, percentile_range=(5, 95))
        assert path.shape == (7, 4)
        coords = res.transform(path)
        lo, hi = np.percentile(res.coords[:, comp], [5, 95])
        np.testing.assert_allclose(coords[[0, -1], comp], [lo, hi], atol=1e-10)
        np.testing.assert_allclose(np.diff(coords[:, comp]), (hi - lo) / 6, atol=1e-10)
        others = np.delete(coords, comp, axis=1)
        np.testing.assert_allclose(others, 0.0, atol=1e-10)  # on the axis through the mean
    with pytest.raises(ValueError, match="component"):
        pc_traversal(res, 4)


def test_straight_path():
    a, b = np.array([0.0, 1.0, 2.0]), np.array([4.0, 1.0, -2.0])
    p = straight_path(a, b, 5)
    assert p.shape == (5, 3)
    np.testing.assert_allclose(p[0], a)
    np.testing.assert_allclose(p[-1], b)
    np.testing.assert_allclose(p[2], (a + b) / 2)
    steps = np.linalg.norm(np.diff(p, axis=0), axis=1)
    np.testing.assert_allclose(steps, np.linalg.norm(b - a) / 4)


def _half_circle(n=200, seed=0, radius=10.0):
    rng = np.random.default_rng(seed)
    theta = np.sort(rng.uniform(0, np.pi, n))
    theta[0], theta[-1] = 0.0, np.pi
    z = np.stack([radius * np.cos(theta), radius * np.sin(theta), np.zeros(n)], axis=1)
    return z + rng.normal(size=z.shape) * 0.05, theta


def test_knn_graph_path_follows_the_manifold():
    z, theta = _half_circle()
    idx = knn_graph_path(z, 0, len(z) - 1, k=8)
    assert idx[0] == 0 and idx[-1] == len(z) - 1
    assert len(set(idx.tolist())) == idx.size
    pts = z[idx]
    # stays on the circle (the chord passes through radius 0 at its middle)
    r = np.linalg.norm(pts[:, :2], axis=1)
    assert np.all(np.abs(r - 10.0) < 0.5)
    # theta increases along the path
    assert np.all(np.diff(theta[idx]) > 0)
    # length near the arc (31.4), far from the chord (20)
    length = path_length(pts)
    assert abs(length - np.pi * 10.0) < 0.05 * np.pi * 10.0
    assert knn_graph_path(z, 5, 5).tolist() == [5]


def test_knn_graph_path_disconnected_raises():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(30, 2))
    z = np.concatenate([a, a + 100.0])
    idx = knn_graph_path(z, 0, 29, k=5)  # same group: fine
    assert idx[0] == 0 and idx[-1] == 29
    with pytest.raises(ValueError, match="not connected"):
        knn_graph_path(z, 0, 45, k=5)
    with pytest.raises(ValueError, match="end_index"):
        knn_graph_path(z, 0, 60)


def test_resample_path_equal_spacing():
    # an L-shaped polyline with uneven vertices and a repeated vertex
    pts = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [3.0, 0.0], [3.0, 1.0], [3.0, 4.0]])
    out = resample_path(pts, 8)  # total length 7: spacing 1
    assert out.shape == (8, 2)
    np.testing.assert_allclose(out[0], pts[0])
    np.testing.assert_allclose(out[-1], pts[-1])
    steps = np.linalg.norm(np.diff(out, axis=0), axis=1)
    np.testing.assert_allclose(steps, 1.0, atol=1e-12)
    np.testing.assert_allclose(out[3], [3.0, 0.0], atol=1e-12)
    # on a smooth curve, the arc steps are equal (chords equal up to curvature)
    t = np.linspace(0, 1, 50) ** 2  # very uneven sampling of a circle arc
    arc = np.stack([np.cos(t * np.pi), np.sin(t * np.pi)], axis=1)
    even = resample_path(arc, 11)
    ang = np.unwrap(np.arctan2(even[:, 1], even[:, 0]))
    np.testing.assert_allclose(np.diff(ang), np.pi / 10, rtol=0.02)
    assert resample_path(np.ones((3, 2)), 4).shape == (4, 2)


def test_volume_series_batches_and_stacks():
    calls = []

    def decode(zb):
        calls.append(zb.shape[0])
        d = 6
        return np.broadcast_to(zb[:, 0, None, None, None], (zb.shape[0], d, d, d)).astype(
            np.float32)

    path = straight_path(np.zeros(3), np.array([9.0, 1.0, 1.0]), 10)
    vols = volume_series(decode, path, batch=4)
    assert calls == [4, 4, 2]
    assert vols.shape == (10, 6, 6, 6) and vols.dtype == np.float32
    np.testing.assert_allclose(vols[:, 0, 0, 0], path[:, 0], rtol=1e-6)

    # a torch decoder works too
    torch = pytest.importorskip("torch")
    tvols = volume_series(lambda zb: torch.as_tensor(decode(zb)), path, batch=3)
    np.testing.assert_array_equal(tvols, vols)

    def bad(zb):
        return np.zeros((zb.shape[0], 4, 4))

    with pytest.raises(ValueError, match="D, D, D"):
        volume_series(bad, path)
