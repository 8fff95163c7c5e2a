"""Ab initio initial model by stochastic modal EM (cryoviz.inference.abinit).

Small simulated adenylate kinase (box 32, 4 Å/px, SNR 1, 1,200 particles); nothing
about the map or the poses is given. One start of 40 steps (about 8 s) gives a
rough model: measured on 2026-12-04, correlation 0.80 with the truth at 14 Å
after alignment (a sphere of the particle's size: 0.41) and a median rotation
error of 41° after one global rotation (random poses: about 126°). Seeds 1000 and
2000 gave 0.83 / 40° and 0.78 / 53°. The full-size figures (box 64, SNR 0.1, after
refinement) are in ``docs/benchmarks.md``; the pipeline's test is
``tests/test_abinit_pipeline.py``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from cryoviz.errors import InputError
from cryoviz.fourier import lowpass_volume
from cryoviz.inference.abinit import (
    AbinitSettings,
    iter_abinit,
    upsample_map,
)
from cryoviz.inference.subspace_ops import fourier_crop_volume
from cryoviz.io import load_particles, read_volume
from cryoviz.metrics import fsc, rotation_error_deg, soft_spherical_mask
from cryoviz.metrics.alignment import align_volume
from cryoviz.simulate import SimulationConfig, simulate

BOX = 32
APIX = 4.0
SETTINGS = AbinitSettings(n_steps=40, batch_size=100, box_size=24, memory_images=1000,
                          initial_images=300, initial_resolution_angstrom=35.0,
                          final_resolution_angstrom=14.0, n_starts=1, seed=0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    config = SimulationConfig(n_particles=1200, box_size=BOX, pixel_size_angstrom=APIX,
                              snr=1.0, seed=11)
    data = simulate(config, tmp_path_factory.mktemp("abinit") / "data")
    truth = torch.as_tensor(read_volume(data / "truth" / "state_0.mrc")[0])
    return load_particles(data / "particles.star"), truth


@pytest.fixture(scope="module")
def run(dataset):
    particles, _ = dataset
    return list(iter_abinit(particles, SETTINGS))


def test_initial_model_from_nothing_matches_the_truth(dataset, run):
    particles, truth = dataset
    result = run[-1].result
    assert result.map.shape == (BOX,) * 3 and result.working_map.shape == (24,) * 3
    assert result.working_pixel_size_angstrom == pytest.approx(APIX * BOX / 24)
    target = lowpass_volume(truth, 14.0, APIX)
    aligned = align_volume(result.map, target)
    assert aligned.correlation > 0.7, aligned.correlation
    resolution = fsc(aligned.aligned, truth).resolution_angstrom(APIX, 0.5)
    assert resolution < 28.0, resolution
    seen = result.seen
    assert seen.mean() > 0.95  # 40 steps of 100 over 1200 images: every image seen
    err = rotation_error_deg(torch.as_tensor(result.rotations[seen]),
                             torch.as_tensor(particles.rotations[seen]), align=True)
    assert float(err.median()) < 70.0, float(err.median())


def test_a_blob_does_not_align_like_the_model(dataset, run):
    """The control: a sphere of the particle's size correlates much less with the truth."""
    _, truth = dataset
    target = lowpass_volume(truth, 14.0, APIX)
    blob = lowpass_volume(soft_spherical_mask(BOX, 0.25 * BOX), 14.0, APIX)
    blob_corr = align_volume(blob, target).correlation
    model_corr = align_volume(run[-1].result.map, target).correlation
    assert model_corr > blob_corr + 0.25, (model_corr, blob_corr)


def test_frequency_marching_and_progress(run):
    limits = [p.resolution_angstrom for p in run]
    assert limits[0] >= 30.0 and limits[-1] <= 15.0
    assert all(b <= a + 1e-9 for a, b in zip(limits, limits[1:], strict=False))
    assert [p.step for p in run] == list(range(1, SETTINGS.n_steps + 1))
    assert all(p.result is None for p in run[:-1])
    assert all(p.step_seconds > 0 and p.images_per_second > 0 for p in run)
    elapsed = [p.elapsed_seconds for p in run]
    assert elapsed == sorted(elapsed)
    # the fit improves as the model forms (mean log evidence, same limit late on)
    late = [p.log_likelihood for p in run if p.resolution_angstrom == limits[-1]]
    assert late[-1] > late[0]


def test_the_start_with_the_largest_evidence_is_kept(dataset):
    """Two starts: the result is the second-seeded start's own model when it wins."""
    particles, _ = dataset
    both = list(iter_abinit(particles, replace(SETTINGS, n_steps=6, n_starts=2)))
    assert [p.start for p in both] == [0] * 6 + [1] * 6
    result = both[-1].result
    assert len(result.start_evidences) == 2
    assert result.chosen_start == int(np.argmax(result.start_evidences))
    # start s runs as a single start seeded seed + 1000 s (the STAR file fixes the halves)
    alone = list(iter_abinit(particles, replace(SETTINGS, n_steps=6, n_starts=1,
                                                seed=1000 * result.chosen_start)))[-1].result
    torch.testing.assert_close(result.map, alone.map)


def test_screened_starts_go_on_where_they_stopped(dataset):
    """Screening: 3 starts of 3 steps, the 2 of largest evidence go on to step 6.

    Each kept start must be the very run it would be unscreened, and the result
    the best of the two at the end.
    """
    particles, _ = dataset
    screened = replace(SETTINGS, n_steps=6, n_starts=2, screen_starts=3, screen_steps=3)
    run = list(iter_abinit(particles, screened))
    result = run[-1].result
    assert len(result.screen_evidences) == 3
    ranked = np.argsort(-np.asarray(result.screen_evidences), kind="stable")
    assert result.finished_starts == tuple(sorted(ranked[:2].tolist()))
    kept = result.finished_starts
    assert [(p.start, p.seed_start, p.screening, p.step) for p in run] == [
        *((c, c, True, s) for c in range(3) for s in (1, 2, 3)),
        *((3 + i, c, False, s) for i, c in enumerate(kept) for s in (4, 5, 6))]
    assert {p.n_steps for p in run if p.screening} == {3}
    assert all(p.result is None for p in run[:-1])
    assert result.chosen_start == kept[int(np.argmax(result.start_evidences))]
    chosen = list(iter_abinit(particles, replace(SETTINGS, n_steps=6, n_starts=1,
                                                 seed=1000 * result.chosen_start)))[-1].result
    torch.testing.assert_close(result.map, chosen.map, rtol=0, atol=0)
    np.testing.assert_array_equal(result.rotations, chosen.rotations)


def test_same_seed_same_model(dataset):
    particles, _ = dataset
    short = replace(SETTINGS, n_steps=4)
    a = list(iter_abinit(particles, short))[-1].result
    b = list(iter_abinit(particles, short))[-1].result
    torch.testing.assert_close(a.map, b.map)
    np.testing.assert_array_equal(a.rotations, b.rotations)


def test_upsample_map_keeps_a_band_limited_map():
    small = lowpass_volume(soft_spherical_mask(16, 5.0), 12.0, 4.0)
    big = upsample_map(small, 32)
    assert big.shape == (32,) * 3
    back = fourier_crop_volume(big, 16)
    torch.testing.assert_close(back, small, atol=1e-5, rtol=1e-4)
    assert float(big.max()) == pytest.approx(float(small.max()), rel=0.05)


@pytest.mark.parametrize(("field", "value"), [
    ("n_steps", 0), ("box_size", 31), ("box_size", 64), ("memory_images", 10),
    ("final_resolution_angstrom", 50.0), ("marching_fraction", 0.0), ("n_levels", 4),
    ("screen_starts", 1),
])
def test_bad_settings_name_the_field(dataset, field, value):
    particles, _ = dataset
    with pytest.raises(InputError, match=field):
        next(iter_abinit(particles, replace(SETTINGS, **{field: value})))


@pytest.mark.parametrize("steps", [0, 40])
def test_a_screen_must_fall_within_the_steps(dataset, steps):
    particles, _ = dataset
    with pytest.raises(InputError, match="screen_steps"):
        next(iter_abinit(particles, replace(SETTINGS, screen_starts=2, screen_steps=steps)))
    # without screening screen_steps is not used
    replace(SETTINGS, screen_steps=steps).validate(BOX)


def test_particles_without_ctf_are_rejected(dataset):
    particles, _ = dataset
    with pytest.raises(InputError, match="ctf"):
        next(iter_abinit(replace(particles, ctf=None), SETTINGS))
