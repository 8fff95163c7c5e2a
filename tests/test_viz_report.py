"""``cryoviz report``: the standalone HTML report of reconstructions and training runs.

The screenshot test opens the report in headless Chromium (Debian ``chromium``)
and checks that the plots were drawn; it is skipped only where
``/usr/bin/chromium`` is absent.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from cryoviz import api, viz
from cryoviz.cli import main
from cryoviz.viz import report_sections, write_report

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    config = api.SimulationConfig(n_particles=160, states=("4ake", "1ake"), box_size=16,
                                  pixel_size_angstrom=6.0, snr=1.0, seed=2)
    data = api.simulate(config, root / "data")
    particles = api.load_particles(data / "particles.star", require_poses=True)
    result = None
    for progress in api.iter_reconstruct(particles, batch_size=64):
        result = progress.result
    truth, _ = api.read_volume(data / "truth" / "state_0.mrc")
    api.write_reconstruction(result, root / "rec", torch.as_tensor(truth))
    api.train(particles, api.get_recipe("cryodrgn", epochs=2, zdim=2, width=16, depth=1,
                                        batch_size=40, lr=1e-3), root / "latent")
    api.train(particles, api.get_recipe("voxel-homogeneous", epochs=1, batch_size=80),
              root / "homog")
    return root


def _figure_titles(sections) -> list[str]:
    return [fig.layout.title.text for s in sections for fig in s.figures]


def test_reconstruction_report_shows_its_fsc_curves(runs):
    import json

    metrics = json.loads((runs / "rec" / "metrics.json").read_text())
    sections = report_sections(runs / "rec", max_size=8)
    fsc_fig = next(f for s in sections for f in s.figures if f.layout.title.text == "FSC")
    names = [t.name for t in fsc_fig.data]
    assert names == ["half map 1 vs 2", "map vs truth"]
    np.testing.assert_allclose(fsc_fig.data[0].y, metrics["half_map_fsc"]["fsc"])
    np.testing.assert_allclose(fsc_fig.data[1].y, metrics["fsc_vs_truth"]["fsc"])
    iso = next(f for s in sections for f in s.figures if f.data[0].type == "isosurface")
    assert len(iso.data[0].value) == 8**3


def test_latent_run_report_colours_the_latents_by_true_state(runs):
    sections = report_sections(runs / "latent", max_size=8)
    titles = _figure_titles(sections)
    assert "training loss" in titles and "latent space" in titles
    scatter = next(f for s in sections for f in s.figures if f.layout.title.text == "latent space")
    labels = np.load(runs / "data" / "truth" / "truth.npz")["labels"]
    for trace in scatter.data:
        state = int(trace.name.split()[-1])
        assert np.all(labels[np.asarray(trace.customdata)] == state)
    assert sum(len(t.x) for t in scatter.data) == 160
    maps = next(f for s in sections for f in s.figures if f.data[0].type == "isosurface")
    assert len(maps.data) == 4  # k-means centres decoded for the report
    assert not any(s.title == "Not in this run" and "latent" in s.text for s in sections)


def test_homogeneous_run_report_skips_the_latent_sections(runs):
    sections = report_sections(runs / "homog", max_size=8)
    titles = _figure_titles(sections)
    assert "latent space" not in titles and "training loss" in titles
    skipped = next(s for s in sections if s.title == "Not in this run")
    assert "latent space" in skipped.text


def test_report_is_standalone_html(runs, tmp_path):
    from plotly.offline import get_plotlyjs

    out = write_report(runs / "rec", tmp_path / "sub" / "rec.html", max_size=8)
    text = out.read_text(encoding="utf-8")
    assert get_plotlyjs() in text
    assert text.count("Plotly.newPlot") >= 3
    assert not re.search(r"<script[^>]*\bsrc\s*=\s*['\"]?(https?:)?//", text, re.I)
    assert not re.search(r"<link[^>]*href\s*=\s*['\"]?(https?:)?//", text, re.I)


def test_report_command(runs, tmp_path, capsys):
    out = tmp_path / "latent.html"
    assert main(["report", str(runs / "latent"), "-o", str(out), "--max-size", "8"]) == 0
    assert out.is_file() and str(out) in capsys.readouterr().out
    assert main(["report", str(runs / "data"), "-o", str(tmp_path / "x.html")]) == 2
    assert "metrics.json" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium "
                    "(apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(runs, tmp_path):
    from PIL import Image

    html_path = write_report(runs / "latent", tmp_path / "report.html", max_size=8)
    png = tmp_path / "shot.png"
    subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}",
         "--window-size=1200,1600", html_path.resolve().as_uri()],
        check=True, capture_output=True, timeout=180,
    )
    image = np.asarray(Image.open(png).convert("RGB"), dtype=np.float64)
    assert image.shape == (1600, 1200, 3)
    assert image.std() > 10.0
    colours = {tuple(c) for c in image[::4, ::4].reshape(-1, 3).astype(int).tolist()}
    assert len(colours) > 50
    # plotly draws its plot area in #E5ECF6 and the latent traces in its colour cycle
    plot_area = np.all(np.abs(image - [229, 236, 246]) < 3, axis=-1)
    assert plot_area.mean() > 0.05
    blue, red = np.array([99, 110, 250]), np.array([239, 85, 59])
    assert np.any(np.all(np.abs(image - blue) < 12, axis=-1))
    assert np.any(np.all(np.abs(image - red) < 12, axis=-1))


def test_pose_inference_folder_report(runs, tmp_path):
    """A ``relion-refine``-like folder: metrics.json, volumes/map.mrc, poses.npz, particles.star."""
    particles = api.load_particles(runs / "data" / "particles.star", require_poses=True)
    n = len(particles)
    folder = tmp_path / "refine"
    spread = np.linspace(0.5, 20.0, n)
    rotations = particles.rotations.astype(np.float64)
    api.write_pose_posterior(folder / "poses.npz", api.PosePosterior(
        rotations=rotations, shifts_angstrom=particles.shifts_angstrom.astype(np.float64),
        angular_spread_deg=spread, shift_spread_angstrom=np.ones(n),
        topk_rotations=np.repeat(rotations[:, None], 2, axis=1),
        topk_shifts_angstrom=np.zeros((n, 2, 2)), topk_weights=np.full((n, 2), 0.5),
        particle_ids=np.arange(n)))
    api.write_star(particles, folder / "particles.star")
    truth, apix = api.read_volume(runs / "data" / "truth" / "state_0.mrc")
    api.write_volume(folder / "volumes" / "map.mrc", truth, apix)
    (folder / "metrics.json").write_text('{"recipe": "relion-refine", "seconds": 1.5}')
    sections = report_sections(folder, max_size=8)
    figures = {f.layout.title.text: f for s in sections for f in s.figures}
    assert "FSC" not in figures and "Map" in figures
    np.testing.assert_allclose(figures["viewing directions"].data[0].marker.color, spread)
    np.testing.assert_allclose(figures["pose spread vs defocus"].data[0].x,
                               particles.ctf.defocus_u_angstrom.numpy(), rtol=1e-6)
    assert not any(s.title == "Not in this run" for s in sections)


def test_analyzed_run_report_uses_the_analysis_maps(runs, tmp_path):
    import shutil

    run = tmp_path / "latent"
    shutil.copytree(runs / "latent", run)
    api.analyze_run(run, api.AnalysisSettings(n_clusters=3, n_pcs=1, n_points=3, umap=False))
    sections = report_sections(run, max_size=8)
    maps = next(f for s in sections for f in s.figures if f.data[0].type == "isosurface")
    assert [t.name for t in maps.data] == ["cluster 0", "cluster 1", "cluster 2"]
    first, _ = api.read_volume(run / "analysis" / "kmeans" / "vol_000.mrc")
    small, _ = viz.downsample_volume(first, 8)
    np.testing.assert_allclose(maps.data[0].value, small.ravel(), rtol=1e-6)
    assert any("from cryoviz analyze" in s.title for s in sections)


def test_classification_report_shows_every_class(runs, tmp_path):
    """A ``relion-class3d`` folder: one half-map FSC curve and one map per class."""
    import json

    particles = api.load_particles(runs / "data" / "particles.star", require_poses=True)
    result = None
    for progress in api.iter_class_em(particles, 2, n_iterations=2):
        result = progress.result or result
    folder = tmp_path / "classes"
    api.write_class_em(result, folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    sections = report_sections(folder, max_size=8)
    fsc_fig = next(f for s in sections for f in s.figures if f.layout.title.text == "FSC")
    assert [t.name for t in fsc_fig.data] == ["class 0 half maps", "class 1 half maps"]
    for k in (0, 1):
        np.testing.assert_allclose(fsc_fig.data[k].y, metrics["half_map_fsc"][k]["fsc"])
    titles = _figure_titles(sections)
    assert "Class maps" in titles
    assert any(t.startswith("class 1 (") for t in titles)
    table = next(f for s in sections if s.title == "Metrics" for f in s.figures)
    cells = [list(column) for column in table.data[0].cells.values]
    assert f"{metrics['class_counts'][0]} particles" in " ".join(map(str, cells[1]))
