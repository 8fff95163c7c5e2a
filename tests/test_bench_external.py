"""Tests for cryoviz.bench.external: cryoDRGN outputs as leaderboard rows."""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from cryoviz.bench import cli as bench_cli
from cryoviz.bench.external import (
    _train_cmd,
    cryodrgn_entry,
    default_cryodrgn,
    import_cryodrgn,
    newest_pickle,
    write_render_zfile,
)
from cryoviz.bench.leaderboard import write_leaderboard
from cryoviz.bench.runner import run_bench
from cryoviz.bench.suite import DatasetSpec, build_dataset
from cryoviz.bench.tasks import load_truth, render_plan, score
from cryoviz.errors import InputError
from cryoviz.io.mrc import read_volume, write_volume
from cryoviz.train.recipes import get_recipe

SPEC = DatasetSpec("mixture")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return build_dataset(SPEC, tmp_path_factory.mktemp("datasets"))


def fake_cryodrgn_run(dataset: Path, folder: Path, render: np.ndarray) -> tuple[Path, Path]:
    """What cryoDRGN leaves: ``z.3.pkl`` (latents = true state + noise) and eval_vol maps.

    The maps are the true maps of the rendered particles' states, so the import
    must score them as perfect.
    """
    truth = load_truth(dataset)
    rng = np.random.default_rng(0)
    z = np.stack([truth.labels * 3.0, np.zeros(len(truth.labels))], axis=1)
    z = (z + 0.1 * rng.normal(size=z.shape)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    for epoch, values in ((1, z * 0), (3, z)):  # the newest epoch must be picked
        with open(folder / f"z.{epoch}.pkl", "wb") as fh:
            pickle.dump(values, fh)
    maps = folder / "maps"
    for i, particle in enumerate(render):
        vol = truth.maps[truth.labels[particle]].numpy().astype(np.float32)
        write_volume(maps / f"vol_{i:03d}.mrc", vol, truth.pixel_size_angstrom)
    return newest_pickle(folder, "z"), maps


def test_zfile_lists_the_rendered_particles(dataset, tmp_path):
    z = np.arange(800, dtype=np.float64).reshape(400, 2)
    render = write_render_zfile(dataset, z, tmp_path / "z.txt", per_state=3)
    truth = load_truth(dataset)
    assert np.array_equal(render, render_plan(truth, per_state=3, seed=SPEC.seed))
    assert np.array_equal(np.loadtxt(tmp_path / "z.txt"), z[render])
    assert sorted(np.bincount(truth.labels[render])) == [3, 3]


def test_imported_true_maps_score_as_perfect(dataset, tmp_path):
    truth = load_truth(dataset)
    render = render_plan(truth, per_state=3, seed=SPEC.seed)
    z_pkl, maps = fake_cryodrgn_run(dataset, tmp_path / "run", render)
    assert z_pkl.name == "z.3.pkl"
    outputs = import_cryodrgn(z_pkl, maps, len(render))
    metrics = score("conformation", outputs, truth, render)
    assert metrics["fsc_auc"] == pytest.approx(0.5, abs=1e-6)  # D = 32: (D // 2) / D
    assert metrics["fsc_cluster_agreement"] == 1.0
    assert metrics["fsc_top_merge_angstrom"] == pytest.approx(
        metrics["truth_top_merge_angstrom"])
    assert metrics["knn_preservation"] == pytest.approx(1.0)
    with pytest.raises(InputError, match="maps"):
        import_cryodrgn(z_pkl, maps, len(render) + 1)


def test_cli_import_adds_a_row(dataset, tmp_path):
    truth = load_truth(dataset)
    render = render_plan(truth, per_state=4, seed=SPEC.seed)
    z_pkl, maps = fake_cryodrgn_run(dataset, tmp_path / "run", render)
    bench = tmp_path / "bench"
    write_leaderboard(bench, [], {"suite_version": "1", "machine": {}, "datasets": []})
    parser = argparse.ArgumentParser()
    bench_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "import-cryodrgn", str(bench), "--dataset", str(dataset),
                              "--z", str(z_pkl), "--volumes", str(maps), "--name",
                              "cryodrgn-4.3.1", "--wall-s", "12.5"])
    assert bench_cli.run(args) == 0
    rows = json.loads((bench / "results.json").read_text())["rows"]
    assert [r["recipe"] for r in rows] == ["cryodrgn-4.3.1"]
    assert rows[0]["metrics"]["fsc_auc"] == pytest.approx(0.5, abs=1e-6)
    assert rows[0]["wall_s"] == 12.5 and rows[0]["source"] == "cryoDRGN (imported)"
    assert "cryodrgn-4.3.1" in (bench / "leaderboard.md").read_text()


def test_malicious_z_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    with open(tmp_path / "z.pkl", "wb") as fh:
        pickle.dump(Evil(), fh)
    with pytest.raises(InputError, match="numpy arrays only"):
        import_cryodrgn(tmp_path / "z.pkl", [], 0)


@pytest.mark.parametrize("domain", ["fourier", "hartley"])
def test_train_vae_gets_the_recipes_sizes_and_domain(domain):
    """cryoDRGN trains the network of cryoviz's recipe, in the recipe's output domain."""
    recipe = get_recipe("cryodrgn", domain=domain, width=96, depth=2, enc_width=48, zdim=3,
                        epochs=7, batch_size=24, seed=5)
    cmd = _train_cmd("cryodrgn", Path("p.mrcs"), Path("pose.pkl"), Path("ctf.pkl"),
                     Path("out"), recipe)
    options = dict(zip(cmd[3::2], cmd[4::2], strict=False))
    assert cmd[:3] == ["cryodrgn", "train_vae", "p.mrcs"]
    assert {k: options[k] for k in ("--domain", "--dec-dim", "--dec-layers", "--enc-dim",
                                    "--zdim", "-n", "-b", "--seed")} == {
        "--domain": domain, "--dec-dim": "96", "--dec-layers": "2", "--enc-dim": "48",
        "--zdim": "3", "-n": "7", "-b": "24", "--seed": "5"}


@pytest.mark.slow
@pytest.mark.skipif(default_cryodrgn() is None, reason="cryoDRGN is not installed")
def test_cryodrgn_runs_and_stands_in_the_leaderboard(tmp_path):
    """cryoDRGN 4.3.1 train_vae on the tiny mixture, imported as a leaderboard row."""
    entry = cryodrgn_entry(default_cryodrgn())
    rows = run_bench([SPEC], tmp_path, [entry], halves=False, raise_errors=True)
    (row,) = rows
    assert row.source.startswith("cryoDRGN")
    assert row.memory_method.startswith("ru_maxrss of the child")
    assert 0.0 < row.metrics["fsc_auc"] <= 0.5
    vol, _ = read_volume(next((tmp_path / "runs").rglob("vol_000.mrc")))
    assert vol.shape == (32, 32, 32)
