"""End to end: a reduced tiny suite through the harness, and the leaderboard's figures."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cryoviz.bench import cli as bench_cli
from cryoviz.bench.diagnostics import perturb_rotations
from cryoviz.bench.entries import (
    EM_ITERATIONS,
    ENTRIES,
    HETEROGENEOUS_KINDS,
    TRAIN_SETTINGS,
    BenchEntry,
    RunContext,
    train_entry,
)
from cryoviz.bench.runner import run_bench, select_entries
from cryoviz.bench.suite import KINDS, DatasetSpec
from cryoviz.bench.tasks import PER_STATE, RunOutputs, load_truth, score
from cryoviz.errors import InputError
from cryoviz.geometry import axis_angle_to_matrix
from cryoviz.inference.abinit_pipeline import CLASS_GLOBAL_ITERATIONS
from cryoviz.inference.posterior import PosePosterior, write_pose_posterior
from cryoviz.io.mrc import read_volume
from cryoviz.io.particles import load_particles
from cryoviz.metrics import flip_hand, fsc, rotate_volume
from cryoviz.reconstruct import reconstruct

POSE_ERROR_DEG = 5.0
GLOBAL = axis_angle_to_matrix(torch.tensor([0.3, -0.8, 0.5], dtype=torch.float64)).numpy()
MIRROR = np.diag([1.0, 1.0, -1.0])


def shuffled_backprojection(dataset: Path, output: Path, ctx: RunContext) -> RunOutputs:
    """Control: the same backprojection with the poses permuted between particles."""
    particles = load_particles(dataset / "particles.star", require_poses=True)
    order = np.random.default_rng(0).permutation(len(particles))
    particles.rotations = particles.rotations[order]
    result = reconstruct(particles)
    return RunOutputs(volumes=result.full_map[None],
                      pixel_size_angstrom=result.pixel_size_angstrom)


def _posterior(rotations: np.ndarray) -> PosePosterior:
    n = len(rotations)
    return PosePosterior(
        rotations=rotations, shifts_angstrom=np.zeros((n, 2)),
        angular_spread_deg=np.zeros(n), shift_spread_angstrom=np.zeros(n),
        topk_rotations=rotations[:, None], topk_shifts_angstrom=np.zeros((n, 1, 2)),
        topk_weights=np.ones((n, 1)), particle_ids=np.arange(n))


def perturbed_poses(mirror: bool):
    """A pose 'recipe': the true poses with a known error, in another frame (and hand)."""

    def run(dataset: Path, output: Path, ctx: RunContext) -> RunOutputs:
        truth = load_truth(dataset)
        est = perturb_rotations(truth.rotations, POSE_ERROR_DEG, seed=1) @ GLOBAL.T
        volume = None
        if mirror:  # the other hand: poses F R F, map mirrored (and rotated)
            est = MIRROR @ est @ MIRROR
            volume = rotate_volume(flip_hand(truth.maps[0].to(torch.float32)),
                                   torch.as_tensor(GLOBAL, dtype=torch.float32))[None]
        path = write_pose_posterior(output, _posterior(est))
        return RunOutputs(volumes=volume, pixel_size_angstrom=truth.pixel_size_angstrom,
                          poses_file=path)

    return run


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("bench")
    entries = [ENTRIES[("backprojection", "volume")],
               BenchEntry("backprojection-shuffled-poses", "volume", shuffled_backprojection,
                          ("homogeneous",), "control"),
               BenchEntry("perturbed-truth", "pose", perturbed_poses(False), ("homogeneous",)),
               BenchEntry("perturbed-truth-mirrored", "abinit", perturbed_poses(True),
                          ("homogeneous",)),
               ENTRIES[("consensus-backprojection", "conformation")],
               BenchEntry("e2gmm", "conformation", train_entry("e2gmm", epochs=2),
                          HETEROGENEOUS_KINDS)]
    datasets = [DatasetSpec("homogeneous"), DatasetSpec("mixture")]
    rows = run_bench(datasets, out, entries, halves=True, per_state=3, raise_errors=True)
    by_key = {(r.recipe, r.dataset): r for r in rows}
    return out, by_key


def test_every_run_has_a_row_with_costs(bench):
    out, rows = bench
    assert len(rows) == 6
    for row in rows.values():
        assert row.status == "ok"
        assert row.wall_s > 0 and row.peak_rss_mb > 50
        assert row.device == "cpu" and row.memory_method
    results = json.loads((out / "results.json").read_text())
    assert len(results["rows"]) == 6
    assert results["suite_version"] == "1"
    assert results["machine"]["torch_version"] == torch.__version__
    assert results["overrides"]["per_state"] == 3  # another render plan than the default
    md = (out / "leaderboard.md").read_text()
    html = (out / "leaderboard.html").read_text()
    for name in ("backprojection-shuffled-poses", "perturbed-truth-mirrored", "e2gmm"):
        assert name in md and name in html
    assert "## Task: pose" in md and "<table>" in html


def test_volume_fsc_auc_recomputed_independently(bench):
    out, rows = bench
    row = rows[("backprojection", "homogeneous-hi-uniform-tiny")]
    run_dir = out / "runs" / "homogeneous-hi-uniform-tiny" / "backprojection-volume"
    rec, apix = read_volume(run_dir / "map.mrc")
    true_map, _ = read_volume(out / "datasets" / "homogeneous-hi-uniform-tiny" / "truth" /
                              "state_0.mrc")
    curve = fsc(torch.as_tensor(rec, dtype=torch.float64),
                torch.as_tensor(true_map, dtype=torch.float64))
    assert row.metrics["fsc_auc"] == pytest.approx(curve.auc(), rel=1e-5)
    assert row.metrics["resolution_05_angstrom"] == pytest.approx(
        curve.resolution_angstrom(apix, 0.5), rel=1e-5)
    assert row.metrics["fsc_auc"] > 0.3


def test_true_poses_beat_shuffled_poses(bench):
    _, rows = bench
    true = rows[("backprojection", "homogeneous-hi-uniform-tiny")].metrics
    shuffled = rows[("backprojection-shuffled-poses", "homogeneous-hi-uniform-tiny")].metrics
    assert true["fsc_auc"] > shuffled["fsc_auc"] + 0.15
    assert true["resolution_05_angstrom"] < shuffled["resolution_05_angstrom"]


def test_pose_scorers_recover_the_injected_error(bench):
    _, rows = bench
    pose = rows[("perturbed-truth", "homogeneous-hi-uniform-tiny")].metrics
    assert pose["pose_median_error_deg"] == pytest.approx(POSE_ERROR_DEG, abs=0.2)
    assert pose["pose_mean_error_deg"] == pytest.approx(POSE_ERROR_DEG, abs=0.3)
    assert pose["pose_within_10deg"] == 1.0
    assert pose["pose_hand_flipped"] is False
    abinit = rows[("perturbed-truth-mirrored", "homogeneous-hi-uniform-tiny")].metrics
    assert abinit["pose_median_error_deg"] == pytest.approx(POSE_ERROR_DEG, abs=0.2)
    assert abinit["pose_hand_flipped"] is True
    assert abinit["mirrored"] is True
    assert abinit["fsc_auc"] > 0.4  # the rotated, mirrored true map aligns back


@pytest.mark.parametrize(("lab", "mode"), [
    (np.diag([-1.0, -1.0, 1.0]), "pose_inplane_pi"),  # Rz(pi): the image rotated by pi
    (np.diag([1.0, -1.0, -1.0]), "pose_opposite_view"),  # Rx(pi): the mirror image
])
def test_pose_scores_count_the_particles_in_each_failure_mode(bench, tmp_path, lab, mode):
    """60 % right (in another frame), 40 % in one failure mode: the scores say so."""
    truth = load_truth(bench[0] / "datasets" / "homogeneous-hi-uniform-tiny")
    est = truth.rotations.copy()
    wrong = np.arange(len(est)) % 5 < 2
    est[wrong] = lab @ est[wrong]
    run = RunOutputs(poses_file=write_pose_posterior(tmp_path, _posterior(est @ GLOBAL.T)))
    metrics = score("pose", run, truth)
    assert metrics["pose_within_10deg"] == pytest.approx(1 - wrong.mean(), abs=1e-9)
    assert metrics[mode] == pytest.approx(wrong.mean(), abs=1e-9)
    other = {"pose_inplane_pi", "pose_opposite_view"} - {mode}
    assert metrics[other.pop()] == 0.0


def test_abinit_rows_without_poses_score_the_map_only(bench):
    """A recipe without per-particle poses (cryogan) is scored on its aligned map; the
    pose task still needs poses."""
    truth = load_truth(bench[0] / "datasets" / "homogeneous-hi-uniform-tiny")
    out = RunOutputs(volumes=truth.maps[:1].flip(-1).to(torch.float32),
                     pixel_size_angstrom=truth.pixel_size_angstrom)
    metrics = score("abinit", out, truth)
    assert metrics["fsc_auc"] > 0.4 and "pose_median_error_deg" not in metrics
    with pytest.raises(InputError, match="poses"):
        score("pose", out, truth)


def test_conformation_scores(bench):
    out, rows = bench
    dataset = out / "datasets" / "mixture-hi-uniform-tiny"
    consensus = rows[("consensus-backprojection", "mixture-hi-uniform-tiny")].metrics
    rec, _ = read_volume(out / "runs" / dataset.name / "consensus-backprojection-conformation" /
                         "map.mrc")
    states = [read_volume(dataset / "truth" / f"state_{k}.mrc")[0] for k in (0, 1)]
    expected = np.mean([fsc(torch.as_tensor(rec, dtype=torch.float64),
                            torch.as_tensor(s, dtype=torch.float64)).auc() for s in states])
    assert consensus["fsc_auc"] == pytest.approx(expected, rel=1e-5)
    # one map for every particle cannot tell the states apart; the true maps can
    assert consensus["fsc_top_merge_angstrom"] == pytest.approx(2 * 4.0)
    assert consensus["truth_top_merge_angstrom"] > 3 * 4.0
    learned = rows[("e2gmm", "mixture-hi-uniform-tiny")].metrics
    for key in ("fsc_auc", "knn_preservation", "knn_chance", "half_w2",
                "fsc_cluster_agreement", "kmeans_agreement"):
        assert learned[key] is not None and np.isfinite(learned[key])
    assert 0.5 <= learned["kmeans_agreement"] <= 1.0
    assert "kmeans_agreement" not in consensus  # no latents
    assert learned["knn_chance"] == pytest.approx(0.5, abs=0.05)
    assert 0.0 <= learned["half_w2"]


def test_conformation_rows_score_inferred_poses(bench, tmp_path):
    """A conformation run that inferred its poses (poses.npz) also gets the pose errors:
    the true maps per particle with the true poses perturbed by 5 degrees."""
    out, _ = bench
    dataset = out / "datasets" / "mixture-hi-uniform-tiny"
    truth = load_truth(dataset)
    render = np.arange(0, len(truth.labels), 7)
    est = perturb_rotations(truth.rotations, POSE_ERROR_DEG, seed=2) @ GLOBAL.T
    run = RunOutputs(volumes=truth.maps[truth.labels[render]].to(torch.float32),
                     pixel_size_angstrom=truth.pixel_size_angstrom,
                     z=truth.labels[:, None].astype(np.float64),
                     poses_file=write_pose_posterior(tmp_path, _posterior(est)))
    metrics = score("conformation", run, truth, render)
    assert metrics["pose_median_error_deg"] == pytest.approx(POSE_ERROR_DEG, abs=0.2)
    assert metrics["fsc_cluster_agreement"] == pytest.approx(1.0)
    assert metrics["kmeans_agreement"] == 1.0
    # latents that put the first 10 % of particles in the other state's cluster
    misplaced = truth.labels.copy()
    tenth = len(misplaced) // 10
    misplaced[:tenth] = 1 - misplaced[:tenth]
    swapped = score("conformation", RunOutputs(z=misplaced[:, None].astype(np.float64)),
                    truth)
    assert swapped["kmeans_agreement"] == pytest.approx(1 - tenth / len(misplaced))
    without = score("conformation", RunOutputs(
        volumes=run.volumes, pixel_size_angstrom=run.pixel_size_angstrom, z=run.z),
        truth, render)
    assert "pose_median_error_deg" not in without  # given poses: nothing to score
    assert without["fsc_auc"] == pytest.approx(metrics["fsc_auc"])


def test_cli_regenerates_the_tables(bench, capsys):
    out, _ = bench
    md = (out / "leaderboard.md").read_text()
    (out / "leaderboard.md").unlink()
    parser = argparse.ArgumentParser()
    bench_cli.add_parser(parser.add_subparsers(dest="command"))
    assert bench_cli.run(parser.parse_args(["bench", "regenerate", str(out)])) == 0
    assert (out / "leaderboard.md").read_text() == md
    assert bench_cli.run(parser.parse_args(["bench", "regenerate", str(out / "nope")])) == 2
    assert "results.json" in capsys.readouterr().err


def test_unknown_recipe_is_input_error():
    with pytest.raises(InputError, match="recipes"):
        select_entries(["no-such-recipe"])
    assert {e.name for e in select_entries(tasks=["volume"])} >= {"backprojection", "sgd"}
    assert all(set(e.kinds) <= set(HETEROGENEOUS_KINDS)
               for e in select_entries(tasks=["conformation"]))


def test_cli_bench_runs_a_filtered_suite(bench, tmp_path, capsys):
    out, rows = bench
    # reuse the fixture's simulated dataset (same suite version and configuration)
    name = "homogeneous-hi-uniform-tiny"
    shutil.copytree(out / "datasets" / name, tmp_path / "datasets" / name)
    parser = argparse.ArgumentParser()
    bench_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--suite", "tiny", "-o", str(tmp_path), "--kinds",
                              "homogeneous", "--snrs", "hi", "--poses", "uniform",
                              "--recipes", "backprojection", "--error-propagation"])
    assert bench_cli.run(args) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    (row,) = results["rows"]
    assert row["recipe"] == "backprojection" and row["dataset"] == name
    # same data, same method: the same figure as the fixture's run
    assert row["metrics"]["fsc_auc"] == pytest.approx(
        rows[("backprojection", name)].metrics["fsc_auc"], rel=1e-6)
    diag = json.loads((tmp_path / "diagnostics" / name / "error_propagation.json").read_text())
    assert diag["pose"][0]["fsc_auc"] == pytest.approx(row["metrics"]["fsc_auc"], rel=1e-6)
    assert diag["pose"][-1]["fsc_auc"] < diag["pose"][0]["fsc_auc"]
    bad = parser.parse_args(["bench", "-o", str(tmp_path), "--sweep", "cryodrgn-zdim"])
    assert bench_cli.run(bad) == 2
    assert "--sweep" in capsys.readouterr().err


def by_epochs(rows: list[dict]) -> set:
    """The training epochs recorded in the rows of training recipes."""
    return {r["metrics"]["epochs"] for r in rows if "epochs" in r["metrics"]}


def test_cli_per_state_defaults_are_the_harness_default(tmp_path):
    """The CLI writes the default as a literal (its module stays light); it must agree."""
    parser = argparse.ArgumentParser()
    bench_cli.add_parser(parser.add_subparsers(dest="command"))
    z = str(tmp_path / "z.pkl")
    for argv in (["bench"], ["bench", "zfile", "--dataset", "d", "--z", z, "-o", "z.txt"],
                 ["bench", "import-cryodrgn", str(tmp_path), "--dataset", "d", "--z", z,
                  "--volumes", "v"]):
        assert parser.parse_args(argv).per_state == PER_STATE


def test_ci_subset_of_the_tiny_suite(tmp_path):
    """``cryoviz bench --suite tiny --subset ci``: every registered recipe runs and is scored.

    About a minute on a quiet machine (one thread); this is the CI run of the bench.
    """
    parser = argparse.ArgumentParser()
    bench_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--suite", "tiny", "--subset", "ci", "-o", str(tmp_path)])
    assert args.device == "auto"
    assert bench_cli.run(args) == 0
    assert args.device == ("cuda" if torch.cuda.is_available() else "cpu")  # resolved
    results = json.loads((tmp_path / "results.json").read_text())
    rows = results["rows"]
    assert {r["recipe"] for r in rows} == {name for name, _ in ENTRIES}
    assert all(r["status"] == "ok" for r in rows)
    # one high-SNR, uniform-pose dataset per kind; every entry on every dataset of its kinds
    datasets = {r["dataset"] for r in rows}
    assert datasets == {f"{k}-hi-uniform-tiny" for k in KINDS}
    expected = sum(len(e.kinds) for e in ENTRIES.values())
    assert len(rows) == expected
    assert results["overrides"] == {"epochs": 2, "em_iterations": 3, "halves": False}
    assert by_epochs(rows) == {2}
    by = {(r["recipe"], r["dataset"]): r["metrics"] for r in rows}
    for r in rows:
        if r["task"] in ("volume", "conformation", "abinit"):
            assert r["metrics"]["fsc_auc"] is not None
        assert "half_w2" not in r["metrics"]  # no half-set trainings in the CI subset
    # a map from the true poses resolves the structure; random in-plane angles would not
    assert by[("backprojection", "homogeneous-hi-uniform-tiny")]["fsc_auc"] > 0.3
    vaegan = by[("cryovaegan", "inplane-hi-uniform-tiny")]
    assert vaegan["angle_median_error_deg"] < 10.0  # chance: ~90 degrees
    assert vaegan["angle_within_5deg"] > 0.5
    assert 0.0 <= vaegan["frc_auc_loss_fraction"] < 0.5
    md = (tmp_path / "leaderboard.md").read_text()
    assert "## Task: inplane" in md and "## Task: pose" in md
    # cryofold's residues, 2 epochs: closer to the true CA than 4AKE is to 1AKE (8.0 Å)
    assert 0 < by[("cryofold", "mixture-hi-uniform-tiny")]["ca_rmsd_angstrom"] < 6.0
    # atomvae infers its poses (none given): scored like cryofold, by CA RMSD and FSC
    assert np.isfinite(by[("atomvae", "mixture-hi-uniform-tiny")]["ca_rmsd_angstrom"])
    assert by[("atomvae", "continuous-hi-uniform-tiny")]["pose_only_epochs"] == 1
    assert 0.0 <= by[("atomvae", "mixture-hi-uniform-tiny")]["pose_within_10deg"] <= 1.0
    # classification with searched poses from low-passed true end states (tiny, SNR 0.1,
    # 3 iterations) is scored on its class maps and its poses (measured when written:
    # FSC-clustering agreement 0.875, chance 0.5; median pose error 73 degrees, the
    # poses are not found at this size)
    # fstdiff from a 20 Å low-pass (measured when written: median 11.9°, FSC-AUC 0.318);
    # the abinit recipes without a known map are scored after alignment, cryogan on its
    # map alone (no per-particle poses)
    assert by[("fstdiff", "homogeneous-hi-uniform-tiny")]["pose_median_error_deg"] < 30.0
    gan = by[("cryogan", "homogeneous-hi-uniform-tiny")]
    assert gan["fsc_auc"] > 0.05 and "pose_median_error_deg" not in gan
    by_task = {(r["recipe"], r["task"]): r["metrics"] for r in rows
               if r["dataset"] == "homogeneous-hi-uniform-tiny"}
    for name in ("cryoai", "cryoposenet"):
        row = by_task[(name, "abinit")]
        assert 0.0 <= row["pose_median_error_deg"] <= 180.0 and row["steps"] == 150
        assert row["heads"] == 1 and row["pose_only_steps"] == 0
        refined = by_task[(name, "pose")]  # from a 20 Å low-pass, 8 heads, half pose-only
        assert 0.0 <= refined["pose_median_error_deg"] <= 180.0
        assert refined["heads"] == 8 and refined["pose_only_steps"] == 75
        assert refined["fsc_auc"] is not None
    # the two ab initio EM entries make the initial model once: the second reads it
    # and counts the seconds it took in its own wall time
    made = {n: by_task[(n, "abinit")] for n in ("cryosparc-abinit", "relion-refine")}
    assert {m["initial_model"] for m in made.values()} == {
        "computed", "shared (made by cryosparc-abinit)"}
    reader = next(r for r in rows if r["task"] == "abinit"
                  and r["metrics"].get("initial_model", "").startswith("shared"))
    assert reader["wall_s"] > reader["metrics"]["shared_wall_s"] > 0
    search = by[("relion-class3d-search", "mixture-hi-uniform-tiny")]
    assert search["fsc_cluster_agreement"] is not None
    assert 0.0 <= search["pose_median_error_deg"] <= 180.0
    assert search["classes"] == 2
    # nothing given: the recipe's global searches (CLASS_GLOBAL_ITERATIONS) of the 3 iterations
    from_nothing = by[("cryosparc-abinit-classes", "mixture-hi-uniform-tiny")]
    assert from_nothing["global_iterations"] == min(CLASS_GLOBAL_ITERATIONS, 3) == 3
    assert from_nothing["start"] == "nothing"


def test_ca_rmsd_of_the_base_structure_is_the_known_distance(tmp_path):
    """A cryofold model that does not move its residues sits on 4AKE: RMSD 0 for open
    particles and the 4AKE-1AKE RMSD (no superposition) for closed ones."""
    from types import SimpleNamespace  # noqa: PLC0415

    from cryoviz.bench.entries import _adk_ca_rmsd  # noqa: PLC0415
    from cryoviz.simulate import SimulationConfig, simulate  # noqa: PLC0415
    from cryoviz.volumes import GaussianMixtureVolume  # noqa: PLC0415
    from cryoviz.volumes.gmm_init import load_reference  # noqa: PLC0415

    simulate(SimulationConfig(n_particles=12, box_size=16, pixel_size_angstrom=6.0, snr=1.0,
                              states=("4ake", "1ake"), seed=4), tmp_path)
    labels = np.load(tmp_path / "truth" / "truth.npz")["labels"]
    open_ca, closed_ca = (load_reference(s).centres_angstrom.numpy() for s in ("4ake", "1ake"))
    apart = float(np.sqrt(((open_ca - closed_ca) ** 2).sum(1).mean()))
    volume = GaussianMixtureVolume(16, 6.0, latent_dim=2, initial=load_reference("4ake"),
                                   width=8, bond_weight=1.0)  # decoder head starts at zero
    torch.nn.init.zeros_(volume.decoder[-1].weight)
    run = SimpleNamespace(volume=volume)
    render = np.arange(12)
    got = _adk_ca_rmsd(run, np.ones((12, 2)), tmp_path, render)
    assert 0 < labels.sum() < 12
    assert got == pytest.approx(apart * labels.mean(), rel=1e-5)


def test_epoch_and_iteration_overrides(capsys):
    """``--epochs`` / ``--em-iterations`` reach every recipe (cryoDRGN's command line too)."""
    from cryoviz.bench.entries import _recipe  # noqa: PLC0415
    from cryoviz.bench.external import _train_cmd  # noqa: PLC0415

    default = RunContext(render=np.zeros(0, dtype=np.int64), size="small")
    assert _recipe("cryodrgn", default, {}).epochs == TRAIN_SETTINGS["small"]["epochs"]
    assert _recipe("e2gmm", default, {}).epochs == TRAIN_SETTINGS["small"]["epochs"] + 1
    assert default.iterations == EM_ITERATIONS["small"]
    short = RunContext(render=np.zeros(0, dtype=np.int64), size="small", epochs=3,
                       em_iterations=2)
    assert _recipe("cryodrgn", short, {}).epochs == 3
    assert _recipe("e2gmm", short, {}).epochs == 3
    assert _recipe("cryodrgn", short, {"epochs": 7}).epochs == 7  # a sweep's own value wins
    assert _recipe("cryodrgn", short, {}).seed == short.seed
    assert _recipe("cryodrgn", short, {"seed": short.seed + 3}).seed == short.seed + 3  # seed sweep
    assert short.iterations == 2
    recipe = _recipe("cryodrgn", short, {})
    cmd = _train_cmd("cryodrgn", Path("p.mrcs"), Path("pose.pkl"), Path("ctf.pkl"),
                     Path("out"), recipe)
    assert cmd[cmd.index("-n") + 1] == "3"
    assert cmd[cmd.index("--dec-dim") + 1] == str(recipe.width)  # the same network
    assert cmd[cmd.index("--enc-dim") + 1] == str(recipe.enc_width)
    assert cmd[cmd.index("--zdim") + 1] == str(recipe.zdim)
    with pytest.raises(InputError, match="epochs"):
        RunContext(render=np.zeros(0, dtype=np.int64), epochs=0)
    parser = argparse.ArgumentParser()
    bench_cli.add_parser(parser.add_subparsers(dest="command"))
    assert bench_cli.run(parser.parse_args(["bench", "--em-iterations", "0"])) == 2
    assert "--em-iterations" in capsys.readouterr().err


def test_cli_merges_bench_folders(bench, tmp_path, capsys):
    """``cryoviz bench merge``: the rows of parallel runs in one leaderboard."""
    from cryoviz.bench.leaderboard import read_results, write_leaderboard  # noqa: PLC0415

    out, _ = bench
    results = read_results(out)
    rows = results.pop("rows")
    volume = [r for r in rows if r["task"] == "volume"]
    others = [r for r in rows if r["task"] != "volume"]
    write_leaderboard(tmp_path / "a", volume, results)
    write_leaderboard(tmp_path / "b", others, {**results, "overrides": {"epochs": 1}})
    parser = argparse.ArgumentParser()
    bench_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "merge", str(tmp_path / "a"), str(tmp_path / "b"),
                              "-o", str(tmp_path / "m")])
    assert bench_cli.run(args) == 0
    merged = read_results(tmp_path / "m")
    assert merged["rows"] == volume + others
    # folder a keeps the fixture's overrides (per_state 3: not the default render plan)
    assert [m["overrides"] for m in merged["merged_from"]] == [
        {"halves": True, "per_state": 3}, {"epochs": 1}]
    md = (tmp_path / "m" / "leaderboard.md").read_text()
    assert all(f"| {r['recipe']} | {r['dataset']} |" in md for r in rows)
    # merging into a merged leaderboard keeps the earlier parts' provenance
    write_leaderboard(tmp_path / "d", others[:1], {**results, "overrides": {"epochs": 7}})
    again = parser.parse_args(["bench", "merge", str(tmp_path / "m"), str(tmp_path / "d"),
                               "-o", str(tmp_path / "m")])
    assert bench_cli.run(again) == 0
    merged = read_results(tmp_path / "m")
    assert merged["rows"] == volume + others + others[:1]
    assert [m["overrides"] for m in merged["merged_from"]] == [
        {"halves": True, "per_state": 3}, {"epochs": 1}, {"epochs": 7}]
    assert [m["folder"] for m in merged["merged_from"]] == [
        str(tmp_path / n) for n in ("a", "b", "d")]
    # --replace: a re-run row takes the earlier row's place, and the change is recorded
    rerun = {**others[0], "metrics": {**others[0]["metrics"], "wall_s_marker": 1.0}}
    write_leaderboard(tmp_path / "e", [rerun], {**results, "overrides": {"epochs": 9}})
    swap = parser.parse_args(["bench", "merge", str(tmp_path / "a"), str(tmp_path / "b"),
                              str(tmp_path / "e"), "-o", str(tmp_path / "r"), "--replace"])
    assert bench_cli.run(swap) == 0
    swapped = read_results(tmp_path / "r")
    assert swapped["rows"] == volume + [rerun] + others[1:]
    (entry,) = swapped["replaced"]
    assert (entry["recipe"], entry["task"], entry["dataset"]) == (
        others[0]["recipe"], others[0]["task"], others[0]["dataset"])
    assert entry["from"] == str(tmp_path / "b") and entry["by"] == str(tmp_path / "e")
    assert entry["old_metrics"] == others[0]["metrics"]
    assert entry["new_metrics"]["wall_s_marker"] == 1.0
    # a later merge into it keeps the record
    keep = parser.parse_args(["bench", "merge", str(tmp_path / "r"), str(tmp_path / "d"),
                              "-o", str(tmp_path / "r")])
    assert bench_cli.run(keep) == 0
    assert read_results(tmp_path / "r")["replaced"] == swapped["replaced"]
    write_leaderboard(tmp_path / "c", volume, {**results, "suite_version": "0"})
    bad = parser.parse_args(["bench", "merge", str(tmp_path / "a"), str(tmp_path / "c"),
                             "-o", str(tmp_path / "m2")])
    assert bench_cli.run(bad) == 2
    assert "suite_version" in capsys.readouterr().err


def seed_recording_backprojection(dataset: Path, output: Path, ctx: RunContext) -> RunOutputs:
    """The backprojection, with the seed the harness gave and the run folder it wrote to."""
    (output / "marker").write_text(str(ctx.seed))
    result = reconstruct(load_particles(dataset / "particles.star", require_poses=True))
    return RunOutputs(volumes=result.full_map[None],
                      pixel_size_angstrom=result.pixel_size_angstrom,
                      extra={"seed_given": ctx.seed})


def test_seeds_run_each_entry_once_per_seed(bench, tmp_path, capsys):
    out, _ = bench
    name = "homogeneous-hi-uniform-tiny"
    shutil.copytree(out / "datasets" / name, tmp_path / "datasets" / name)
    entry = BenchEntry("seeded", "volume", seed_recording_backprojection, ("homogeneous",))
    rows = run_bench([DatasetSpec("homogeneous")], tmp_path, [entry], seeds=(0, 4),
                     raise_errors=True)
    assert [(r.seed, r.metrics["seed_given"]) for r in rows] == [(0, 0), (4, 4)]
    runs = tmp_path / "runs" / name
    assert (runs / "seeded-volume" / "marker").read_text() == "0"
    assert (runs / "seeded-volume-seed4" / "marker").read_text() == "4"
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["overrides"]["seeds"] == [0, 4]
    md = (tmp_path / "leaderboard.md").read_text()
    assert "| seeded | homogeneous-hi-uniform-tiny | " in md and " ± 0.000 |" in md
    parser = argparse.ArgumentParser()
    bench_cli.add_parser(parser.add_subparsers(dest="command"))
    for bad in ("1,1", "-1", "x", ","):
        assert bench_cli.run(parser.parse_args(["bench", "-o", str(tmp_path / "bad"),
                                                "--seeds", bad])) == 2
        assert "seeds" in capsys.readouterr().err


def test_conformation_rows_in_their_own_frames(bench, tmp_path):
    """Class maps and poses each in their own frame and hand (ab initio classes): with
    ``frames`` they score as the truth-frame run; without, they do not."""
    out, _ = bench
    truth = load_truth(out / "datasets" / "mixture-hi-uniform-tiny")
    render = np.arange(0, len(truth.labels), 7)
    other = axis_angle_to_matrix(torch.tensor([-1.1, 0.2, 0.4], dtype=torch.float64)).numpy()
    maps = [rotate_volume(truth.maps[0].to(torch.float32),
                          torch.as_tensor(GLOBAL, dtype=torch.float32)),
            rotate_volume(flip_hand(truth.maps[1].to(torch.float32)),
                          torch.as_tensor(other, dtype=torch.float32))]
    est = perturb_rotations(truth.rotations, POSE_ERROR_DEG, seed=2)
    first = truth.labels == 0
    est[first] = est[first] @ GLOBAL.T
    est[~first] = MIRROR @ est[~first] @ MIRROR @ other.T
    run = RunOutputs(volumes=torch.stack([maps[s] for s in truth.labels[render]]),
                     pixel_size_angstrom=truth.pixel_size_angstrom,
                     poses_file=write_pose_posterior(tmp_path, _posterior(est)),
                     frames=truth.labels.copy())
    metrics = score("conformation", run, truth, render)
    in_truth_frame = score("conformation", RunOutputs(
        volumes=truth.maps[truth.labels[render]].to(torch.float32),
        pixel_size_angstrom=truth.pixel_size_angstrom), truth, render)
    assert metrics["pose_median_error_deg"] == pytest.approx(POSE_ERROR_DEG, abs=0.3)
    assert metrics["pose_within_10deg"] == 1.0
    assert metrics["fsc_auc"] == pytest.approx(in_truth_frame["fsc_auc"], rel=0.1)
    assert metrics["fsc_cluster_agreement"] == pytest.approx(1.0)
    run.frames = None
    unaligned = score("conformation", run, truth, render)
    assert unaligned["pose_within_10deg"] < 0.7  # one frame's poses only
    assert unaligned["fsc_auc"] < metrics["fsc_auc"] - 0.05
