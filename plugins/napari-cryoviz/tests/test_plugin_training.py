"""Training dock: a run in a worker to the end, pause / resume / cancel, readable errors."""

from __future__ import annotations

import numpy as np
from napari_cryoviz.training import TRAINING_LAYER, TrainingDock

from cryoviz import api


def _dock(make_napari_viewer, star, out):
    viewer = make_napari_viewer()
    dock = TrainingDock(viewer)
    viewer.window.add_dock_widget(dock)
    dock.particles.value = str(star)
    dock.output.value = str(out)
    dock.recipe.value = "cryodrgn"
    for widget, value in ((dock.epochs, 3), (dock.zdim, 2), (dock.batch_size, 80),
                          (dock.width, 16), (dock.lr, 3e-3)):
        widget.value = value
    return viewer, dock


def test_training_runs_in_a_worker_to_the_end(make_napari_viewer, wait_workers, tiny_star,
                                              tmp_path):
    viewer, dock = _dock(make_napari_viewer, tiny_star, tmp_path / "run")
    dock.start()
    assert dock.worker is not None and not dock.start_button.isEnabled()
    wait_workers(dock)
    assert dock.errors.text() == ""
    assert [p.epoch for p in dock.history] == [1, 2, 3] and dock.history[-1].done
    assert dock.progress.value() == 3
    layer = viewer.layers[TRAINING_LAYER]
    assert layer.data.shape == (16, 16, 16)
    assert not np.allclose(layer.data, dock.first_volume)  # the map changed while training
    assert (tmp_path / "run" / "latents.npz").is_file()
    assert len(dock.axes.get_lines()[0].get_xdata()) == 3  # the live loss plot
    assert dock.start_button.isEnabled()


def test_pause_resume_and_cancel(make_napari_viewer, qtbot, tiny_star, tmp_path, wait_workers):
    _, dock = _dock(make_napari_viewer, tiny_star, tmp_path / "run")
    dock.epochs.value = 6
    dock.start()
    # listen before asking: the worker thread may pause (and emit) at once
    with qtbot.waitSignal(dock.worker.paused, timeout=60_000):
        dock.pause()
    qtbot.wait(200)  # let yields queued before the pause arrive
    n_paused = len(dock.history)
    assert n_paused <= 1 and dock.status.text() == "paused"
    qtbot.wait(500)
    assert len(dock.history) == n_paused  # nothing runs while paused
    with qtbot.waitSignal(dock.worker.yielded, timeout=60_000):
        dock.resume()
    dock.cancel()
    wait_workers(dock)
    assert n_paused < len(dock.history) < 6 and not dock.history[-1].done
    assert "cancelled" in dock.status.text()
    assert not (tmp_path / "run" / "latents.npz").exists()
    # continue from the checkpoint to the end
    dock.resume_box.setChecked(True)
    dock.start()
    wait_workers(dock)
    assert dock.history[-1].epoch == 6 and dock.history[-1].done
    assert dock.history[0].epoch > 1  # it continued, it did not start again
    assert (tmp_path / "run" / "latents.npz").is_file()


def test_continuing_a_run_keeps_the_settings_the_form_does_not_show(
        make_napari_viewer, wait_workers, tiny_star, tmp_path):
    """A run started with ``domain='hartley'`` (the default before 2026-12-05) continues."""
    out = tmp_path / "run"
    started = api.get_recipe("cryodrgn", epochs=1, zdim=2, batch_size=80, width=16, lr=3e-3,
                             domain="hartley")
    assert started.domain != api.RECIPES["cryodrgn"].domain
    list(api.iter_train(api.load_particles(tiny_star), started, out))
    assert api.saved_recipe(out) == started and api.saved_recipe(tmp_path) is None
    _, dock = _dock(make_napari_viewer, tiny_star, out)
    dock.epochs.value = 2
    dock.resume_box.setChecked(True)
    dock.start()
    wait_workers(dock)
    assert dock.errors.text() == ""
    assert [p.epoch for p in dock.history] == [2] and dock.history[-1].done
    assert api.load_run(out).recipe.domain == "hartley"
    # a visible setting that differs from the run's is still refused, readably
    dock.width.value = 32
    dock.epochs.value = 3
    dock.start()
    wait_workers(dock)
    assert "width" in dock.errors.text() and "Traceback" not in dock.errors.text()


def test_bad_input_is_a_readable_message(make_napari_viewer, wait_workers, tmp_path):
    _, dock = _dock(make_napari_viewer, tmp_path / "missing.star", tmp_path / "run")
    dock.start()
    assert dock.worker is None
    assert "missing.star" in dock.errors.text() and "Traceback" not in dock.errors.text()
    # a file that exists but is not a particle file fails inside the worker
    bad = tmp_path / "bad.star"
    bad.write_text("data_\nnot a star file\n")
    dock.particles.value = str(bad)
    dock.start()
    wait_workers(dock)
    assert "bad.star" in dock.errors.text() and dock.status.text() == "failed"


def test_base_structure_recipes_take_a_reference(make_napari_viewer, tmp_path):
    """cryofold / atomvae: choosing them sets their defaults; without a reference the
    form gives a readable error, with one a recipe (atomvae: poses inferred)."""
    _, dock = _dock(make_napari_viewer, tmp_path / "p.star", tmp_path / "run")
    dock.recipe.value = "atomvae"
    assert dock.batch_size.value == 32 and dock.zdim.value == 4
    dock.start()  # no reference: refused before any worker starts
    assert dock.worker is None and "reference" in dock.errors.text()
    dock.reference.value = "4ake"
    recipe = dock.recipe_from_form()
    assert recipe.name == "atomvae" and recipe.reference == "4ake"
    assert recipe.poses == "amortized"
    dock.recipe.value = "cryofold"
    assert dock.recipe_from_form().reference == "4ake"


def test_other_settings_reach_the_recipe(make_napari_viewer, tmp_path):
    """The "other settings" field: typed KEY=VALUE pairs, refused when wrong or when the
    form has a field of its own for the setting."""
    _, dock = _dock(make_napari_viewer, tmp_path / "p.star", tmp_path / "run")
    dock.recipe.value = "e2gmm"
    dock.settings.value = "gaussians=24, weight_decay=0.001,depth=1"
    recipe = dock.recipe_from_form()
    assert (recipe.gaussians, recipe.weight_decay, recipe.depth) == (24, 0.001, 1)
    assert api.get_recipe("e2gmm").gaussians is None  # box-scaled default
    for text, message in (("gaussians=many", "other settings gaussians: expected an integer"),
                          ("colour=3", "other settings: expected a recipe setting"),
                          ("width=64", "has one")):
        dock.settings.value = text
        dock.start()
        assert dock.worker is None and message in dock.errors.text()
