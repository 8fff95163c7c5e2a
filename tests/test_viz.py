"""cryoviz.viz: array helpers, plotly figure builders and the slider widget on small data."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from cryoviz.metrics import fsc
from cryoviz.viz import (
    downsample_volume,
    fsc_figure,
    image_grid_figure,
    iso_level,
    isosurface_figure,
    latent_scatter_figure,
    loss_figure,
    metrics_table_figure,
    pose_distribution_figure,
    viewing_directions,
    volume_slider,
)

from ._phantoms import rotation_y


def blob(box: int, centre_xyz: tuple[float, float, float], sigma: float = 1.5) -> np.ndarray:
    """A Gaussian blob ``(box,)*3`` ``[z, y, x]`` centred at ``centre_xyz`` px from D // 2."""
    grid = np.arange(box) - box // 2
    zz, yy, xx = np.meshgrid(grid, grid, grid, indexing="ij")
    cx, cy, cz = centre_xyz
    return np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2 + (zz - cz) ** 2) / (2 * sigma**2))


def test_import_does_not_load_gui_plotting_or_notebook_libraries():
    """The engine, its API and CLI load no GUI, plotting or notebook library (matplotlib
    came in through healpy until the SO(3) grid imported it on first use)."""
    code = ("import sys, cryoviz, cryoviz.viz, cryoviz.viz.widgets, cryoviz.api, cryoviz.cli; "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('plotly', 'ipywidgets', 'anywidget', 'matplotlib', 'napari', 'magicgui', "
            "'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'vispy')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_downsample_volume_is_a_block_mean():
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(10, 10, 10)).astype(np.float32)
    small, factor = downsample_volume(vol, max_size=4)
    assert factor == 3 and small.shape == (4, 4, 4)
    np.testing.assert_allclose(small[1, 2, 0], vol[3:6, 6:9, 0:3].mean(), rtol=1e-5)
    # the last block is zero-padded: 1 voxel of 3 on each axis is data
    np.testing.assert_allclose(small[3, 3, 3], vol[9, 9, 9] / 27, rtol=1e-5)
    same, one = downsample_volume(vol, max_size=10)
    assert one == 1 and np.array_equal(same, vol)


def test_iso_level_encloses_the_requested_fraction():
    vol = np.random.default_rng(1).normal(size=(20, 20, 20))
    level = iso_level(vol, 0.05)
    assert np.mean(vol > level) == pytest.approx(0.05, abs=0.002)


def test_viewing_direction_is_the_particle_frame_projection_axis():
    # R = rotation by +90 deg about y maps particle +x to lab -z: particle seen along x
    rot = rotation_y(90.0).numpy()[None]
    np.testing.assert_allclose(np.abs(viewing_directions(rot)), [[1.0, 0.0, 0.0]], atol=1e-12)
    np.testing.assert_allclose(viewing_directions(np.eye(3)[None]), [[0.0, 0.0, 1.0]])


def test_fsc_figure_plots_the_curve_values():
    a = torch.randn(16, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    b = a + 0.5 * torch.randn(16, 16, 16, dtype=torch.float64,
                              generator=torch.Generator().manual_seed(1))
    curve = fsc(a, b)
    fig = fsc_figure({"a vs b": curve, "as dict": curve.to_dict()}, pixel_size_angstrom=2.0)
    assert len(fig.data) == 2
    np.testing.assert_allclose(fig.data[0].y, curve.fsc.numpy())
    np.testing.assert_allclose(fig.data[1].x, curve.frequency_per_px.numpy() / 2.0)
    assert {s.y0 for s in fig.layout.shapes} == {0.143, 0.5}


def test_latent_scatter_one_trace_per_state_with_all_points():
    coords = np.random.default_rng(2).normal(size=(50, 3))
    labels = np.repeat([0, 2], 25)
    fig = latent_scatter_figure(coords, labels, color_name="state")
    assert [t.name for t in fig.data] == ["state 0", "state 2"]
    ids = np.concatenate([t.customdata for t in fig.data])
    assert sorted(ids.tolist()) == list(range(50))
    for t in fig.data:
        np.testing.assert_allclose(t.x, coords[t.customdata, 0])
        np.testing.assert_allclose(t.y, coords[t.customdata, 1])
    continuous = latent_scatter_figure(coords, coords[:, 2], color_name="z3")
    assert len(continuous.data) == 1
    np.testing.assert_allclose(continuous.data[0].marker.color, coords[:, 2])


def test_isosurface_is_placed_at_the_density_in_angstrom():
    vol = blob(20, (4.0, -2.0, 0.0))
    fig = isosurface_figure(vol, voxel_size_angstrom=3.0, max_size=20)
    trace = fig.data[0]
    peak = int(np.argmax(trace.value))
    assert (trace.x[peak], trace.y[peak], trace.z[peak]) == (12.0, -6.0, 0.0)
    assert trace.isomin == pytest.approx(iso_level(vol))
    coarse = isosurface_figure(np.stack([vol, vol]), 3.0, max_size=10, titles=["a", "b"])
    assert len(coarse.data) == 2 and len(coarse.data[1].value) == 10**3
    # the last 2x2x2 block averages voxels 18 and 19: it sits at (18.5 - 10) px
    assert float(np.max(coarse.data[0].x)) == pytest.approx((18.5 - 10) * 3.0)


def test_small_figures_hold_their_data():
    log = {"epoch": np.array([1.0, 2.0, 3.0]), "loss": np.array([3.0, 2.0, 1.5]),
           "kl": np.array([0.0, 0.1, 0.2])}
    fig = loss_figure(log)
    np.testing.assert_allclose(fig.data[0].y, log["loss"])
    assert fig.data[1].name == "KL per particle"
    images = np.random.default_rng(3).normal(size=(5, 8, 8))
    grid = image_grid_figure(images, n_cols=3)
    assert len(grid.data) == 5
    np.testing.assert_allclose(np.asarray(grid.data[4].z), images[4], rtol=1e-6)
    table = metrics_table_figure([{"recipe": "a", "seconds": 1.23456}, {"recipe": "b"}])
    assert list(table.data[0].header.values) == ["recipe", "seconds"]
    assert list(table.data[0].cells.values[1]) == ["1.23", ""]
    poses = pose_distribution_figure(np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))
    np.testing.assert_allclose(poses.data[0].y, [90.0, 0.0])
    np.testing.assert_allclose(poses.data[0].x, [0.0, 90.0])


def test_volume_slider_re_renders_the_map_at_the_chosen_point():
    calls = []

    def decode(z: np.ndarray) -> np.ndarray:
        calls.append(float(z[0, 0]))
        return blob(16, (float(z[0, 0]), 0.0, 0.0))[None]

    points = np.array([[-4.0], [0.0], [4.0]])
    box = volume_slider(decode, points, voxel_size_angstrom=2.0, max_size=16)
    slider, figure = box.children
    assert slider.max == 2 and calls == [-4.0]
    trace = figure.data[0]
    assert trace.x[int(np.argmax(trace.value))] == -8.0
    slider.value = 2
    trace = figure.data[0]
    np.testing.assert_allclose(trace.value, blob(16, (4.0, 0.0, 0.0)).ravel(), rtol=1e-6)
    assert trace.x[int(np.argmax(trace.value))] == 8.0
    assert figure.layout.title.text == "point 2"
    slider.value = 0
    slider.value = 2
    assert calls == [-4.0, 4.0]  # decoded maps are cached


def test_bench_helpers_read_maps_and_rows(tmp_path):
    from cryoviz.io.mrc import write_volume
    from cryoviz.viz import bench_fsc_curves, bench_table_rows

    truth = blob(16, (2.0, 0.0, -1.0), sigma=2.0).astype(np.float32)
    noisy = truth + 0.3 * np.random.default_rng(5).normal(size=truth.shape).astype(np.float32)
    write_volume(tmp_path / "datasets" / "d" / "truth" / "state_0.mrc", truth, 3.0)
    write_volume(tmp_path / "runs" / "d" / "same-volume" / "map.mrc", truth, 3.0)
    write_volume(tmp_path / "runs" / "d" / "noisy-volume" / "all" / "volumes" / "map.mrc",
                 noisy, 3.0)
    rows = [
        {"recipe": "same", "task": "volume", "dataset": "d", "status": "ok", "wall_s": 1.0,
         "peak_rss_mb": 10.0, "metrics": {"fsc_auc": 0.5}},
        {"recipe": "noisy", "task": "volume", "dataset": "d", "status": "ok", "wall_s": 2.0,
         "peak_rss_mb": 20.0, "metrics": {"fsc_auc": 0.3}},
        {"recipe": "broken", "task": "volume", "dataset": "d", "status": "error: x",
         "metrics": {}},
        {"recipe": "het", "task": "conformation", "dataset": "d", "status": "ok",
         "metrics": {"knn_preservation": 0.9}},
    ]
    curves, apix = bench_fsc_curves(tmp_path, rows)
    assert list(curves) == ["same (d)", "noisy (d)"] and apix == pytest.approx(3.0)
    np.testing.assert_allclose(curves["same (d)"].fsc.numpy(), 1.0, atol=1e-9)
    assert float(curves["noisy (d)"].fsc[-1]) < 0.9
    table = bench_table_rows(rows, task="volume")
    assert [r["recipe"] for r in table] == ["same", "noisy", "broken"]
    assert table[1]["fsc_auc"] == 0.3 and table[1]["peak_rss_mb"] == 20.0
    assert bench_table_rows(rows)[3]["knn_preservation"] == 0.9
