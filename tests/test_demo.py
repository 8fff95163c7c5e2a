"""The README's demo: simulate adenylate kinase and reconstruct it with known poses."""

from __future__ import annotations

import json

import pytest

from cryoviz.cli import main


def run_demo(tmp_path, *extra: str) -> dict:
    assert main(["demo", "-o", str(tmp_path), *extra]) == 0
    return json.loads((tmp_path / "reconstruction" / "metrics.json").read_text())


def test_small_demo_reconstructs_adenylate_kinase(tmp_path):
    metrics = run_demo(tmp_path, "--n-particles", "1500", "--box", "32", "--pixel-size", "4")
    assert metrics["n_particles"] == 1500
    assert metrics["resolution_vs_truth_05_px"] < 3.0
    assert metrics["pixel_size_angstrom"] == pytest.approx(4.0)


@pytest.mark.slow
def test_full_demo_meets_the_targets(tmp_path):
    """10,000 particles, box 64, 2 Å/px, CTF, SNR 0.1 (the issue's demo).

    Backprojection reaches FSC 0.5 vs truth at 2.5 px or better; the SGD voxel fit
    gets within 10% of that.
    """
    bp = run_demo(tmp_path / "bp")
    assert bp["resolution_vs_truth_05_px"] <= 2.5
    sgd = run_demo(tmp_path / "sgd", "--method", "sgd", "--epochs", "3")
    assert sgd["resolution_vs_truth_05_px"] <= 1.1 * bp["resolution_vs_truth_05_px"]
