"""Latent explorer: click decodes a map, paths give 4-D layers, lasso exports a STAR file."""

from __future__ import annotations

import numpy as np
import pytest
from napari_cryoviz.latent import PATH_LAYER, VOLUME_LAYER, LatentExplorer

from cryoviz import api


def assert_same_map(got: np.ndarray, expected: np.ndarray) -> None:
    """Equal to float32 rounding: the explorer's decoder caches the network's first layer
    (other summation order than ``eval_volumes``)."""
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * float(np.abs(expected).max()))


@pytest.fixture
def explorer(make_napari_viewer, wait_workers, tiny_run):
    viewer = make_napari_viewer()
    dock = LatentExplorer(viewer)
    viewer.window.add_dock_widget(dock)
    dock.load_run(tiny_run)
    assert dock.errors.text() == ""
    dock.fast_decode.setChecked(False)  # float32: maps compared with eval_volumes exactly
    yield viewer, dock
    wait_workers(dock)


def test_click_adds_a_volume_with_the_run_voxel_size(explorer, wait_workers):
    viewer, dock = explorer
    seen = []
    dock.particle_clicked.connect(seen.append)
    run = api.load_run(dock.session.path)
    dock.preview.setChecked(False)
    dock.click_particle(5)
    wait_workers(dock)
    layer = viewer.layers[VOLUME_LAYER]
    assert layer.data.shape == (16, 16, 16) and dock.shown_stages == ["full"]
    np.testing.assert_allclose(layer.scale, [6.0] * 3)
    expected = api.eval_volumes(run, run.mu[5:6]).numpy()[0]
    assert_same_map(layer.data, expected)
    assert seen == [5] and viewer.dims.ndisplay == 3
    assert dock.last_decode_seconds > 0
    limits = tuple(layer.contrast_limits)
    np.testing.assert_allclose(limits, [expected.min(), expected.max()], rtol=1e-6)
    # the next click replaces the data in the same layer and keeps the run's limits
    dock.preview.setChecked(True)
    dock.click_particle(7)
    wait_workers(dock)
    assert viewer.layers[VOLUME_LAYER] is layer and dock.shown_stages == ["preview", "full"]
    assert_same_map(layer.data, api.eval_volumes(run, run.mu[7:8]).numpy()[0])
    assert tuple(layer.contrast_limits) == limits
    assert 0 < dock.last_preview_seconds <= dock.last_decode_seconds
    # the last two clicked particles are marked on the scatter (moved, not redrawn)
    np.testing.assert_allclose(dock._click_artist.get_offsets(), dock.coords_2d()[[5, 7]])
    dock.canvas.draw()  # a full draw saves the background without the markers
    draws = []
    dock.canvas.mpl_connect("draw_event", draws.append)
    dock.click_particle(2)
    wait_workers(dock)
    assert draws == []  # the markers were drawn over the background, the scatter was not
    image = np.asarray(dock.canvas.buffer_rgba())
    x, y = dock.axes.transData.transform(dock.coords_2d()[2])
    row, col = int(round(image.shape[0] - y)), int(round(x))
    patch = image[row - 1:row + 2, col - 1:col + 2].astype(int)
    assert (patch[..., 0] - patch[..., 1]).max() > 100  # red 'x' where particle 2 is
    # a different decode box keeps the physical extent: voxel size scales
    dock.decode_box.setValue(32)
    dock.click_particle(7)
    wait_workers(dock)
    layer = viewer.layers[VOLUME_LAYER]
    assert layer.data.shape == (32, 32, 32) and dock.shown_stages == ["preview", "full"]
    np.testing.assert_allclose(layer.scale, [3.0] * 3)
    assert_same_map(layer.data, api.eval_volumes(run, run.mu[7:8], 32).numpy()[0])


def test_fast_decode_gives_nearly_the_float32_map(explorer, wait_workers):
    viewer, dock = explorer
    if not dock.session.fast_decode_available:
        assert not dock.fast_decode.isEnabled()
        pytest.skip("no native bfloat16 on this machine")
    dock.fast_decode.setChecked(True)
    assert dock.session.decode_precision == "bf16"
    dock.click_particle(5)
    wait_workers(dock)
    run = api.load_run(dock.session.path)
    expected = api.eval_volumes(run, run.mu[5:6]).numpy()[0]
    got = viewer.layers[VOLUME_LAYER].data
    rel = float(np.linalg.norm(got - expected) / np.linalg.norm(expected))
    assert 0.0 < rel < 0.01, rel
    dock.fast_decode.setChecked(False)
    dock.click_particle(5)
    wait_workers(dock)
    assert_same_map(viewer.layers[VOLUME_LAYER].data, expected)


def test_a_newer_click_wins_over_an_older_decode(explorer, wait_workers):
    viewer, dock = explorer
    dock.decode_box.setValue(32)
    for index in (3, 11, 20):
        dock.click_particle(index)
    wait_workers(dock)
    run = api.load_run(dock.session.path)
    assert_same_map(viewer.layers[VOLUME_LAYER].data,
                    api.eval_volumes(run, run.mu[20:21], 32).numpy()[0])
    assert dock.shown_stages[-1] == "full"


@pytest.mark.parametrize("kind", ["pc", "straight", "knn"])
def test_path_gives_a_4d_layer_with_the_requested_volumes(explorer, wait_workers, kind):
    viewer, dock = explorer
    dock.click_particle(1)
    dock.click_particle(100)
    dock.make_path(kind, n_points=6)
    wait_workers(dock)
    layer = viewer.layers[PATH_LAYER]
    assert layer.data.shape == (6, 16, 16, 16)
    np.testing.assert_allclose(layer.scale, [1.0, 6.0, 6.0, 6.0])
    z = dock.path.z
    assert z.shape == (6, 2)
    if kind != "pc":
        np.testing.assert_allclose(z[0], dock.session.z[1], rtol=1e-6)
        np.testing.assert_allclose(z[-1], dock.session.z[100], rtol=1e-6)
    run = api.load_run(dock.session.path)
    assert_same_map(layer.data[3], api.eval_volumes(run, z[3:4]).numpy()[0])
    # the path is drawn on the scatter
    assert any(len(line.get_xdata()) == 6 for line in dock.axes.get_lines())


def test_lasso_selection_exports_a_star_that_reads_back(explorer, tmp_path):
    _, dock = explorer
    xy = dock.coords_2d()
    cx = float(np.median(xy[:, 0]))
    lo, hi = xy[:, 1].min() - 1, xy[:, 1].max() + 1
    polygon = np.array([[xy[:, 0].min() - 1, lo], [cx, lo], [cx, hi], [xy[:, 0].min() - 1, hi]])
    chosen = dock.select_polygon(polygon)
    expected = np.flatnonzero(xy[:, 0] < cx)
    np.testing.assert_array_equal(np.sort(chosen), expected)
    written = dock.export_selection(tmp_path / "left")
    back = api.load_particles(written["star"])
    np.testing.assert_array_equal(np.sort(back.particle_ids), expected)
    original = dock.session.particles
    np.testing.assert_allclose(back.rotations[np.argsort(back.particle_ids)],
                               original.rotations[expected], atol=1e-6)


def test_colour_columns_include_cluster_defocus_and_truth(explorer):
    _, dock = explorer
    cols = dock.session.columns()
    assert {"cluster", "defocus_angstrom", "view_theta_deg", "true_label",
            "latent_spread"} <= set(cols)
    for name, values in cols.items():
        assert values.shape == (240,), name
    labels = [dock.colour_box.itemText(i) for i in range(dock.colour_box.count())]
    assert "true_label" in labels
    dock.colour_box.setCurrentText("true_label")
    assert len(dock.canvas.figure.axes) == 2  # scatter + colour bar


def test_bad_run_folder_is_a_readable_message(make_napari_viewer, tmp_path):
    dock = LatentExplorer(make_napari_viewer())
    dock.load_run(tmp_path)
    assert "config.toml" in dock.errors.text() and "Traceback" not in dock.errors.text()


@pytest.mark.slow
def test_umap_scatter_is_computed_in_a_worker(explorer, wait_workers):
    _, dock = explorer
    dock.embedding_box.setCurrentText("umap")
    assert "UMAP" in dock.status.text()  # the GUI thread returned at once
    wait_workers(dock, timeout_ms=600_000)
    assert dock.session.has_umap and dock.coords_2d().shape == (240, 2)
    assert "240 particles" in dock.status.text()
