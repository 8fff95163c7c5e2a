"""Volume view: iso-surface threshold, orthogonal slices, two maps and their FSC."""

from __future__ import annotations

import numpy as np
import pytest
from napari_cryoviz.volume_view import VolumeView

from cryoviz import api


def _blob(box: int, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    g = np.arange(box) - box // 2
    zz, yy, xx = np.meshgrid(g, g, g, indexing="ij")
    vol = np.exp(-(xx**2 + yy**2 + zz**2) / (2 * sigma**2))
    return (vol + 0.01 * rng.standard_normal(vol.shape)).astype(np.float32)


@pytest.fixture
def view(make_napari_viewer):
    viewer = make_napari_viewer()
    a = viewer.add_image(_blob(16, 3.0, 0), name="a", scale=(2.0, 2.0, 2.0))
    b = viewer.add_image(_blob(16, 3.0, 1), name="b", scale=(2.0, 2.0, 2.0))
    dock = VolumeView(viewer)
    viewer.window.add_dock_widget(dock)
    return viewer, dock, a, b


def test_iso_surface_follows_the_threshold(view):
    viewer, dock, a, _ = view
    assert [dock.first.itemText(i) for i in range(dock.first.count())] == ["a", "b"]
    dock.first.setCurrentText("a")
    dock.show_iso()
    assert a.rendering == "iso" and viewer.dims.ndisplay == 3
    dock.threshold.setValue(0.3)
    assert a.iso_threshold == pytest.approx(0.3, abs=0.02)


def test_orthogonal_slices_are_three_planes(view):
    viewer, dock, a, _ = view
    planes = dock.show_slices()
    assert len(planes) == 3 and not a.visible
    normals = sorted(tuple(np.round(np.abs(p.plane.normal), 6)) for p in planes)
    assert normals == [(0, 0, 1), (0, 1, 0), (1, 0, 0)]
    assert all(p.depiction == "plane" for p in planes)
    # slice copies are not offered as maps
    assert dock.first.count() == 2


def test_side_by_side_overlay_and_fsc(view):
    viewer, dock, a, b = view
    dock.second.setCurrentText("b")
    dock.side_by_side()
    assert viewer.grid.enabled and a.visible and b.visible
    dock.overlay()
    assert not viewer.grid.enabled and a.blending == "additive"
    curve = dock.compute_fsc()
    expected = api.fsc(*(__import__("torch").from_numpy(np.asarray(x.data)) for x in (a, b)))
    np.testing.assert_allclose(curve.fsc.numpy(), expected.fsc.numpy())
    assert curve.fsc[0] > 0.99
    assert "Å" in dock.resolution.text()
    assert len(dock.axes.get_lines()) >= 1


def test_fsc_of_one_map_with_itself_is_an_error_message(view):
    _, dock, _, _ = view
    dock.second.setCurrentText("a")
    dock._guarded(dock.compute_fsc)
    assert "second map" in dock.errors.text()
