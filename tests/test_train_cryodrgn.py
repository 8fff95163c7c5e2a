"""The science test: the ``cryodrgn`` recipe separates open / closed adenylate kinase.

A 50/50 mixture of 4AKE (open) and 1AKE (closed) particles with known poses is
simulated; after training, 2-means on the latent means must recover the true
states, and the maps decoded at the two cluster centres must each correlate
better (FSC at mid frequencies) with their own true state than with the other.
"""

from __future__ import annotations

import time

import pytest

from tests._science import run_mixture_science, run_path_science


def test_cryodrgn_separates_open_and_closed(tmp_path):
    """Box 32 at 4 Å/px, 2000 particles, SNR 1; trained on 24 px Fourier-cropped images."""
    t0 = time.perf_counter()
    run_mixture_science(
        tmp_path, "cryodrgn", n=2000, box=32, apix=4.0, snr=1.0, train_box=24, epochs=8,
        overrides=dict(zdim=4, width=64, depth=2, lr=1e-3, batch_size=32),
        min_accuracy=0.90, fsc_band=(0.1, 0.35),
    )
    print(f"total {time.perf_counter() - t0:.1f} s")


def test_reference_based_cryodrgn_sharpens_the_reference_state(tmp_path):
    """``reference='4ake'``: V(z) = V0 + dV(z) against the reference-free recipe, SNR 0.1.

    Measured 2026-12-04 (2,000 particles, box 32 at 4 Å/px trained at 24, 3 epochs):
    2-means agreement 0.937 vs 0.918; open state (the reference) own-state FSC
    0.985 vs 0.875; closed state 0.903 vs 0.905, but its FSC with the open state
    0.728 vs 0.697 (the reference pulls it a little towards itself).
    """
    settings = dict(n=2000, box=32, apix=4.0, snr=0.1, train_box=24, epochs=3,
                    min_accuracy=0.85, fsc_band=(0.1, 0.35))
    common = dict(zdim=4, width=64, depth=2, lr=1e-3, batch_size=32)
    with_ref = run_mixture_science(tmp_path / "ref", "cryodrgn",
                                   overrides={**common, "reference": "4ake"}, **settings)
    without = run_mixture_science(tmp_path / "free", "cryodrgn", overrides=common, **settings)
    assert with_ref["state0_own"] > without["state0_own"] + 0.05, (with_ref, without)
    assert with_ref["state1_own"] > without["state1_own"] - 0.03, (with_ref, without)


#: The engine issue's dataset: adenylate kinase, box 64, 2 Å/px, CTF, SNR 0.1.
ISSUE_SCALE = {"n": 4000, "box": 64, "apix": 2.0, "snr": 0.1}


@pytest.mark.slow
def test_cryodrgn_separates_states_at_issue_scale(tmp_path):
    """50/50 open / closed, poses known, 4,000 particles, 15 epochs of batch 16.

    Targets: 2-means of z agrees with the true state for >= 95 % of particles;
    the map at each cluster centre reaches FSC 0.5 against its true state at 3 px
    or better. The recipe's default network (decoder width 128 x 3, zdim 8).
    Measured 2026-12-05 through this test with the ``fourier`` output (2 threads,
    quiet machine): agreement 1.000, FSC 0.5 at 2.02 / 2.00 px (Nyquist is 2 px),
    39 s per epoch, 10 minutes in all; with the earlier ``hartley`` default
    (``bench_heterogeneity_targets.py``, same data) 1.000, 2.03 / 2.01 px; with
    cryoDRGN's 96 random frequencies and its KL weighting (eleventh session)
    1.000, 2.01 / 2.00 px, 34 s per epoch; with the encoder's input shift-corrected
    and phase-flipped as cryoDRGN's (thirteenth session, 2026-12-05 18:12 UTC):
    1.000, 2.01 / 2.00 px, 35-38 s per epoch (one epoch took 215 s while a second
    torch process shared the 2 cores); with cryoDRGN's residual layer
    ``ReLU(h + W h + b)`` (thirtieth session, 2026-12-07 20:14 UTC, the AVX-512 VM,
    quiet): 1.000, 2.01 / 2.00 px, 19 s per epoch.
    """
    report = run_mixture_science(
        tmp_path, "cryodrgn", train_box=None, epochs=15, overrides=dict(batch_size=16),
        min_accuracy=0.95, fsc_band=(0.1, 0.3), **ISSUE_SCALE,
    )
    for s in (0, 1):
        assert report[f"state{s}_res05_px"] <= 3.0, report


@pytest.mark.slow
def test_cryodrgn_first_component_follows_the_issue_scale_path(tmp_path):
    """Continuous open -> closed path, 4,000 particles, 8 epochs of batch 16.

    Target ``|rho(PC 1, path coordinate)| >= 0.9``; measured 2026-12-05 through
    this test with the ``fourier`` output: 0.911 (with the earlier ``hartley``
    default, by ``bench_heterogeneity_targets.py``: 0.932); with cryoDRGN's 96
    random frequencies and its KL weighting (eleventh session): 0.902, one seed,
    close to the target; with the encoder's input shift-corrected and
    phase-flipped as cryoDRGN's (twelfth session): 0.911, 36-38 s per epoch; with
    cryoDRGN's residual layer (thirtieth session, the AVX-512 VM): 0.907, closer to
    the target again.
    """
    rho = run_path_science(tmp_path, "cryodrgn", epochs=8, overrides=dict(batch_size=16),
                           **ISSUE_SCALE)
    assert rho >= 0.9, rho
