"""``cryoviz train`` -> ``analyze`` -> ``select`` on a small simulated mixture."""

from __future__ import annotations

import json
import tomllib

import numpy as np
import pytest

from cryoviz.cli import main
from cryoviz.io.cryodrgn import read_index_pkl
from cryoviz.io.mrc import read_volume
from cryoviz.io.particles import load_particles
from cryoviz.simulate import SimulationConfig, simulate


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    config = SimulationConfig(n_particles=300, states=("4ake", "1ake"), box_size=24,
                              pixel_size_angstrom=5.0, snr=1.0, seed=4)
    data = simulate(config, root / "data")
    status = main(["train", str(data / "particles.star"), "--recipe", "cryodrgn",
                   "-o", str(root / "run"), "--epochs", "2", "--zdim", "2", "--width", "32",
                   "--depth", "1", "--batch-size", "32", "--lr", "1e-3"])
    assert status == 0
    return root


def test_analyze_writes_maps_and_arrays(trained_run):
    run = trained_run / "run"
    assert main(["analyze", str(run), "--k", "3", "--pcs", "1", "--n-points", "4",
                 "--skip-umap", "--graph-path", "0", "5"]) == 0
    out = run / "analysis"
    summary = json.loads((out / "summary.json").read_text())
    assert sum(summary["kmeans"]["counts"]) == 300
    assert len(list((out / "kmeans").glob("*.mrc"))) == 3
    assert len(list((out / "pc1").glob("*.mrc"))) == 4
    volume, voxel = read_volume(out / "kmeans" / "vol_000.mrc")
    assert volume.shape == (24, 24, 24) and voxel == pytest.approx(5.0)
    path = np.load(out / "graph_path.npy")
    assert path[0] == 0 and path[-1] == 5
    labels = np.load(out / "kmeans.npz")["labels"]
    assert labels.shape == (300,) and set(labels.tolist()) == {0, 1, 2}


def test_select_clusters_exports_the_right_particles(trained_run, tmp_path):
    run = trained_run / "run"
    if not (run / "analysis" / "kmeans.npz").is_file():
        assert main(["analyze", str(run), "--k", "3", "--pcs", "1", "--skip-umap"]) == 0
    labels = np.load(run / "analysis" / "kmeans.npz")["labels"]
    assert main(["select", str(run), "--clusters", "0,2", "--embedding", "pca",
                 "-o", str(tmp_path / "subset")]) == 0
    expected = np.flatnonzero(np.isin(labels, [0, 2]))
    subset = load_particles(tmp_path / "subset.star")
    np.testing.assert_array_equal(subset.particle_ids, expected)
    np.testing.assert_array_equal(read_index_pkl(tmp_path / "subset_index.pkl"), expected)
    original = load_particles(trained_run / "data" / "particles.star")
    np.testing.assert_allclose(subset.rotations, original.rotations[expected], atol=1e-5)


def test_select_polygon_in_pca_space(trained_run, tmp_path):
    run = trained_run / "run"
    if not (run / "analysis" / "pca.npz").is_file():
        assert main(["analyze", str(run), "--k", "3", "--pcs", "1", "--skip-umap"]) == 0
    coords = np.load(run / "analysis" / "pca.npz")["coords"][:, :2]
    polygon = "-100,-100 0,-100 0,100 -100,100"  # the half plane pc1 < 0
    assert main(["select", str(run), "--polygon", polygon, "--embedding", "pca",
                 "-o", str(tmp_path / "left")]) == 0
    expected = np.flatnonzero(coords[:, 0] < 0)
    np.testing.assert_array_equal(read_index_pkl(tmp_path / "left_index.pkl"), expected)


def test_select_needs_analysis_first(tmp_path, trained_run, capsys):
    fresh = tmp_path / "copy"
    fresh.mkdir()
    (fresh / "config.toml").write_text((trained_run / "run" / "config.toml").read_text())
    assert main(["select", str(fresh), "--clusters", "0", "-o", str(tmp_path / "x")]) == 2
    assert "kmeans.npz" in capsys.readouterr().err


def test_analyze_homogeneous_run_is_a_clear_error(tmp_path, trained_run, capsys):
    status = main(["train", str(trained_run / "data" / "particles.star"),
                   "--recipe", "voxel-homogeneous", "-o", str(tmp_path / "homo"),
                   "--epochs", "1", "--batch-size", "64"])
    assert status == 0
    assert main(["analyze", str(tmp_path / "homo"), "--skip-umap"]) == 2
    assert "latent" in capsys.readouterr().err


def test_train_relion_class3d_recipe(trained_run, tmp_path):
    out = tmp_path / "class3d"
    status = main(["train", str(trained_run / "data" / "particles.star"),
                   "--recipe", "relion-class3d", "--classes", "2", "--epochs", "3",
                   "-o", str(out)])
    assert status == 0
    classes = np.load(out / "classes.npz")
    assert classes["posteriors"].shape == (300, 2)
    volume, voxel = read_volume(out / "volumes" / "class_1.mrc")
    assert volume.shape == (24, 24, 24) and voxel == pytest.approx(5.0)
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["class_fractions"]) == 2


def test_train_3dva_recipe(trained_run, tmp_path):
    out = tmp_path / "3dva"
    status = main(["train", str(trained_run / "data" / "particles.star"),
                   "--recipe", "3dva", "--components", "2", "--epochs", "2", "-o", str(out)])
    assert status == 0
    with np.load(out / "latents.npz") as latents:
        assert latents["mu"].shape == (300, 2)
    volume, _ = read_volume(out / "volumes" / "component_0.mrc")
    assert volume.shape[0] <= 24


def test_domain_flag_and_resuming_a_hartley_run(trained_run, tmp_path, capsys):
    """``--domain hartley`` is kept in the run; ``--resume`` keeps it without the flag
    (settings not given are the run's), and refuses a different one, readably."""
    with open(trained_run / "run" / "config.toml", "rb") as fh:
        assert tomllib.load(fh)["recipe"]["domain"] == "fourier"  # the default
    out = tmp_path / "hartley"
    args = ["train", str(trained_run / "data" / "particles.star"), "--recipe", "cryodrgn",
            "-o", str(out), "--zdim", "2", "--width", "16", "--depth", "1",
            "--batch-size", "64"]
    assert main([*args, "--epochs", "1", "--domain", "hartley"]) == 0
    with open(out / "config.toml", "rb") as fh:
        assert tomllib.load(fh)["recipe"]["domain"] == "hartley"
    capsys.readouterr()
    assert main([*args, "--epochs", "2", "--resume", "--domain", "fourier"]) == 2
    err = capsys.readouterr().err
    assert "recipe domain" in err and "'hartley'" in err, err
    assert main([*args, "--epochs", "2", "--resume"]) == 0
    assert len((out / "log.jsonl").read_text().splitlines()) == 2
    with open(out / "config.toml", "rb") as fh:
        assert tomllib.load(fh)["recipe"]["domain"] == "hartley"
    # settings not given come from the run: its 2 epochs, so a bare resume is done
    assert main(["train", str(trained_run / "data" / "particles.star"), "--recipe",
                 "cryodrgn", "-o", str(out), "--resume"]) == 0
    assert len((out / "log.jsonl").read_text().splitlines()) == 2
