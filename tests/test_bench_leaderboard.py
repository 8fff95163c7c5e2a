"""Tests for cryoviz.bench.leaderboard: tables over seeds, merging by seed (synthetic rows)."""

from __future__ import annotations

import pytest

from cryoviz.bench.leaderboard import (
    Spread,
    markdown_table,
    merge,
    read_results,
    seed_groups,
    write_leaderboard,
)

INFO = {"suite_version": 1, "machine": {}, "datasets": ["d"]}


def _row(recipe: str, seed: int, auc: float, wall: float, rss: float, status: str = "ok",
         **metrics) -> dict:
    return {"recipe": recipe, "task": "conformation", "dataset": "d", "seed": seed,
            "metrics": {"fsc_auc": auc, **metrics}, "wall_s": wall, "peak_rss_mb": rss,
            "device": "cpu", "source": "cryoviz", "status": status, "memory_method": ""}


def test_rows_of_several_seeds_are_one_line_with_mean_and_sd():
    rows = [_row("a", s, auc, wall, rss, knn_preservation=0.9, knn_chance=0.5, poses=p)
            for s, auc, wall, rss, p in ((0, 0.2, 10.0, 100.0, "x"), (1, 0.3, 20.0, 300.0, "x"),
                                         (2, 0.4, 30.0, 200.0, "y"))]
    rows += [_row("b", 0, 0.35, 5.0, 50.0), _row("a", 3, 0.9, 1.0, 1.0, status="error: boom")]
    lines = {r["recipe"]: r for r in seed_groups(rows, "conformation")}
    a = lines["a"]
    assert a["n_seeds"] == 3  # the failed seed is left out of the line
    assert a["metrics"]["fsc_auc"].mean == pytest.approx(0.3)
    assert a["metrics"]["fsc_auc"].sd == pytest.approx(0.1)  # sample sd of 0.2, 0.3, 0.4
    assert a["metrics"]["knn_preservation"] == Spread(pytest.approx(0.9), 0.0, 3)
    assert a["metrics"]["poses"] == "mixed"
    assert (a["wall_s"], a["peak_rss_mb"]) == (pytest.approx(20.0), 300.0)
    assert lines["b"]["n_seeds"] == 1 and lines["b"]["metrics"]["fsc_auc"] == 0.35
    table = markdown_table(rows, "conformation").splitlines()
    assert "| seeds |" in table[0]
    # best mean FSC-AUC first: b (0.35) above a (0.30)
    assert table[2].startswith("| b | d | 0.350 |") and "| 1 | 5.000 |" in table[2]
    assert table[3].startswith("| a | d | 0.300 ± 0.100 |")
    assert "| 0.900 ± 0.000 |" in table[3] and "| 3 | 20.000 | 300.0 |" in table[3]
    assert "| 0.900 ± 0.000 | 0.500 |" in table[3]  # the dataset's chance level: no spread


def test_rows_without_a_seed_field_are_seed_0(tmp_path):
    old = _row("a", 0, 0.2, 1.0, 1.0)
    del old["seed"]
    write_leaderboard(tmp_path, [old], INFO)
    md = (tmp_path / "leaderboard.md").read_text()
    assert "| a | d | 0.200 |" in md and "| 1 |" in md


def test_failed_runs_name_their_seed(tmp_path):
    write_leaderboard(tmp_path, [_row("a", 2, 0.1, 1.0, 1.0, status="error: boom")], INFO)
    assert "- a / conformation / d (seed 2): error: boom" in (
        tmp_path / "leaderboard.md").read_text()


def test_replace_acts_per_seed(tmp_path):
    write_leaderboard(tmp_path / "first", [_row("a", 0, 0.2, 1.0, 1.0),
                                           _row("a", 1, 0.3, 1.0, 1.0)], INFO)
    write_leaderboard(tmp_path / "rerun", [_row("a", 1, 0.5, 1.0, 1.0),
                                           _row("a", 2, 0.4, 1.0, 1.0)], INFO)
    merge(tmp_path / "m", [tmp_path / "first", tmp_path / "rerun"], replace=True)
    merged = read_results(tmp_path / "m")
    assert [(r["seed"], r["metrics"]["fsc_auc"]) for r in merged["rows"]] == [
        (0, 0.2), (1, 0.5), (2, 0.4)]
    (entry,) = merged["replaced"]
    assert entry["seed"] == 1 and entry["old_metrics"]["fsc_auc"] == 0.3
