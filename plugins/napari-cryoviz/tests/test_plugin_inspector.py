"""Particle inspector: the residual of a trained model is smaller than the image."""

from __future__ import annotations

import threading

import numpy as np
from napari_cryoviz.inspector import ParticleInspector
from napari_cryoviz.launcher import open_run

from cryoviz import api


def test_inspector_shows_a_smaller_residual_than_image(make_napari_viewer, wait_workers,
                                                       tiny_run):
    viewer = make_napari_viewer()
    dock = ParticleInspector(viewer)
    viewer.window.add_dock_widget(dock)
    dock.load_run(tiny_run)
    threads = []
    inspect = dock.session.inspect
    dock.session.inspect = lambda i: threads.append(threading.current_thread()) or inspect(i)
    dock.show_particle(12)
    wait_workers(dock)
    assert threads and threads[0] is not threading.main_thread()  # off the GUI thread
    result = dock.inspection
    assert dock.errors.text() == ""
    assert result.images.shape == (1, 16, 16)
    assert np.linalg.norm(result.residuals) < np.linalg.norm(result.images)
    np.testing.assert_allclose(result.residuals, result.images - result.projections)
    assert "|residual| / |image|" in dock.info.text() and "latent posterior std" in \
        dock.info.text()
    assert len(dock.canvas.figure.axes) == 5
    np.testing.assert_allclose(np.linalg.norm(result.viewing_directions), 1.0)


def test_pose_posterior_is_shown_when_the_run_has_one(make_napari_viewer, wait_workers,
                                                      tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    particles = api.run_particles(api.load_run(run))
    n = len(particles)
    rot = particles.rotations
    weights = np.tile([0.7, 0.2, 0.1], (n, 1))
    api.write_pose_posterior(run, api.PosePosterior(
        rotations=rot, shifts_angstrom=np.zeros((n, 2)), angular_spread_deg=np.full(n, 4.5),
        shift_spread_angstrom=np.full(n, 0.5), topk_rotations=np.repeat(rot[:, None], 3, 1),
        topk_shifts_angstrom=np.zeros((n, 3, 2)), topk_weights=weights,
        particle_ids=np.arange(n)))
    dock = ParticleInspector(make_napari_viewer())
    dock.load_run(run)
    dock.show_particle(3)
    wait_workers(dock)
    assert "angular spread 4.5°" in dock.info.text()
    bars = dock.canvas.figure.axes[-1].patches
    np.testing.assert_allclose([b.get_height() for b in bars], [0.7, 0.2, 0.1])


def test_launcher_links_the_scatter_to_the_inspector(make_napari_viewer, wait_workers, tiny_run):
    viewer = make_napari_viewer()
    docks = open_run(viewer, tiny_run)
    assert docks["latent"].session is docks["inspector"].session
    assert docks["training"].resume_box.isChecked()
    docks["latent"].click_particle(9)
    wait_workers(docks["latent"], docks["inspector"])
    assert docks["inspector"].inspection.indices.tolist() == [9]
    assert docks["volume"].first.count() >= 2  # the run's map and the decoded map


def test_inspector_bad_index_is_a_message(make_napari_viewer, wait_workers, tiny_run):
    dock = ParticleInspector(make_napari_viewer())
    dock.show_particle(0)
    assert "load a run" in dock.errors.text()
    dock.load_run(tiny_run)
    dock.show_particle(10_000)
    wait_workers(dock)
    assert dock.inspection is None
    assert "indices" in dock.errors.text() and "Traceback" not in dock.errors.text()


def test_only_the_latest_pick_is_drawn(make_napari_viewer, wait_workers, tiny_run):
    dock = ParticleInspector(make_napari_viewer())
    dock.load_run(tiny_run)
    for index in (4, 30, 17):
        dock.show_particle(index)
    wait_workers(dock)
    assert dock.inspection.indices.tolist() == [17]
    assert "particle 17 " in dock.info.text()
