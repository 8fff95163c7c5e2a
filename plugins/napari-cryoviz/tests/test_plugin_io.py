"""Readers, writer, sample data, npe2 manifest and the ``cryoviz view`` command."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from napari_cryoviz._reader import get_reader
from napari_cryoviz._writer import write_mrc

from cryoviz import api
from cryoviz.cli import main


def test_volume_reader_and_writer_round_trip(tmp_path):
    vol = np.random.default_rng(0).standard_normal((12, 12, 12)).astype(np.float32)
    api.write_volume(tmp_path / "v.mrc", vol, 2.5)
    reader = get_reader(str(tmp_path / "v.mrc"))
    [(data, kwargs, kind)] = reader(str(tmp_path / "v.mrc"))
    assert kind == "image" and kwargs["scale"] == (2.5, 2.5, 2.5)
    np.testing.assert_array_equal(data, vol)
    [out] = write_mrc(str(tmp_path / "w.map"), data, {"scale": kwargs["scale"]})
    back, apix = api.read_volume(out)
    np.testing.assert_array_equal(back, vol)
    assert apix == pytest.approx(2.5)
    with pytest.raises(api.InputError, match="scale"):
        write_mrc(str(tmp_path / "x.mrc"), data, {"scale": (1.0, 2.0, 2.0)})
    with pytest.raises(api.InputError, match="cubic"):
        write_mrc(str(tmp_path / "x.mrc"), data[:, :, :3], {"scale": (1.0, 1.0, 1.0)})
    assert get_reader(str(tmp_path / "nothing.txt")) is None


def test_particle_readers_are_lazy_stacks(tiny_star):
    particles = api.load_particles(tiny_star)
    for path in (tiny_star, tiny_star.parent / "particles.mrcs"):
        [(data, kwargs, kind)] = get_reader(str(path))(str(path))
        assert kind == "image" and data.shape == (240, 16, 16)
        assert kwargs["scale"] == (1.0, 6.0, 6.0)
        with api.ImageSource(particles) as source:
            np.testing.assert_allclose(np.asarray(data[70:72]),
                                       source.images(np.array([70, 71])).numpy())


def test_run_reader_has_map_latents_and_log(tiny_run):
    [(data, kwargs, kind)] = get_reader(str(tiny_run))(str(tiny_run))
    assert data.shape == (16, 16, 16) and kwargs["scale"] == (6.0, 6.0, 6.0)
    meta = kwargs["metadata"]
    assert meta["latents"].shape == (240, 2)
    assert [r["epoch"] for r in meta["log"]] == [1, 2, 3]
    assert meta["pose_posterior"] is None


def test_algorithm_run_reader_has_maps_and_the_traversal_as_a_series(tiny_star, tmp_path):
    """A multi-cryogan run (no config.toml): its maps, and the component traversal as one
    4-D layer in z order."""
    run = tmp_path / "gan"
    assert main(["train", str(tiny_star), "--recipe", "multi-cryogan", "--epochs", "1",
                 "--batch-size", "120", "--components", "1", "-o", str(run)]) == 0
    layers = get_reader(str(run))(str(run))
    assert [kwargs["name"] for _, kwargs, _ in layers] == [
        "gan component_1", "gan map", "gan component_1 series"]
    assert layers[1][0].shape == (16, 16, 16) and layers[1][1]["scale"] == (6.0, 6.0, 6.0)
    series_data, series, _ = layers[2]
    assert series_data.shape == (5, 16, 16, 16) and series["scale"] == (1.0, 6.0, 6.0, 6.0)
    assert series["metadata"]["series"] == ["z_-2.0", "z_-1.0", "z_+0.0", "z_+1.0", "z_+2.0"]
    assert series["metadata"]["metrics"]["recipe"] == "multi-cryogan"
    base, _ = api.read_volume(run / "volumes" / "map.mrc")
    component, _ = api.read_volume(run / "volumes" / "component_1.mrc")
    np.testing.assert_allclose(series_data[4], base + 2.0 * component, rtol=1e-5, atol=1e-5)
    assert get_reader(str(tmp_path)) is None  # a plain folder is no run


def test_sample_data_layers(monkeypatch, tiny_spec, tiny_root, tiny_run):
    from napari_cryoviz import _sample_data

    monkeypatch.setattr(_sample_data, "DEMO", tiny_spec)
    monkeypatch.setenv("NAPARI_CRYOVIZ_DATA", str(tiny_root))
    layers = _sample_data.demo_dataset_layers()
    names = [kwargs["name"] for _, kwargs, _ in layers]
    assert names == ["state_0", "state_1", "particles particles"]
    assert layers[0][0].shape == (16, 16, 16) and layers[2][0].shape == (240, 16, 16)
    [(data, kwargs, _)] = _sample_data.demo_run_layers()
    assert kwargs["metadata"]["run_path"] == str(tiny_run)
    assert data.shape == (16, 16, 16)


def test_manifest_validates_and_lists_the_contributions():
    npe2 = pytest.importorskip("npe2")
    manifest = npe2.PluginManifest.from_distribution("napari-cryoviz")
    manifest.validate_imports()
    widgets = {w.display_name for w in manifest.contributions.widgets}
    assert widgets == {"Training", "Latent explorer", "Volume view", "Particle inspector"}
    assert {s.key for s in manifest.contributions.sample_data} == {"demo_dataset", "demo_run"}


def test_cryoviz_view_opens_the_docks(make_napari_viewer, monkeypatch, tiny_run):
    import napari

    opened = []
    monkeypatch.setattr(napari, "run", lambda *a, **k: opened.append(True))
    viewer = make_napari_viewer()
    monkeypatch.setattr(napari, "Viewer", lambda *a, **k: viewer)
    assert main(["view", str(tiny_run)]) == 0
    assert opened == [True]
    assert {"Latent explorer", "Particle inspector", "Volume view", "Training"} <= set(
        viewer.window.dock_widgets)


def test_cryoviz_view_without_the_plugin_says_how_to_install(monkeypatch, tiny_run, capsys):
    monkeypatch.setitem(sys.modules, "napari_cryoviz.launcher", None)
    assert main(["view", str(tiny_run)]) == 2
    err = capsys.readouterr().err
    assert "pip install" in err and "napari-cryoviz" in err


def test_no_qt_binding_in_the_engine_or_plugin_dependencies():
    import tomllib
    from pathlib import Path

    plugin = Path(__file__).resolve().parents[1]
    with open(plugin / "pyproject.toml", "rb") as fh:
        plugin_deps = tomllib.load(fh)["project"]["dependencies"]
    with open(plugin.parents[1] / "pyproject.toml", "rb") as fh:
        engine_deps = tomllib.load(fh)["project"]["dependencies"]
    bindings = ("pyqt", "pyside", "qtpy", "napari", "magicgui", "matplotlib", "superqt")
    assert not [d for d in engine_deps if d.lower().startswith(bindings)]
    assert not [d for d in plugin_deps if d.lower().startswith(("pyqt", "pyside"))]
    assert any(d.startswith("cryoviz") for d in plugin_deps)
