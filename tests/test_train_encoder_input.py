"""The image encoder's input: images moved back by their shifts and phase-flipped by
their CTF, in training and in the final latents; runs saved before the change."""

from __future__ import annotations

import tomllib

import numpy as np
import pytest
import torch

from cryoviz.analysis.inspect import inspect_particles
from cryoviz.bench.entries import _encode
from cryoviz.ctf import CTFParams, compute_ctf_2d
from cryoviz.fourier import centered_irfft2, centered_rfft2
from cryoviz.io.particles import ImageSource, load_particles
from cryoviz.simulate import SimulationConfig, simulate
from cryoviz.train.encoder_input import EncoderInput, corrected_images, run_encoder_input
from cryoviz.train.encoders import LatentTable, MLPEncoder
from cryoviz.train.evaluate import load_run, saved_recipe
from cryoviz.train.loop import train
from cryoviz.train.recipes import get_recipe
from cryoviz.train.run_files import check_resume_settings, write_toml

TINY = dict(width=16, depth=1, pe_dim=8, enc_width=32, enc_depth=1, batch_size=50, zdim=2,
            lr=1e-3)


def _ctf(n: int, defocus_angstrom: float = 15000.0) -> CTFParams:
    full = torch.full((n,), 1.0, dtype=torch.float64)
    return CTFParams(defocus_u_angstrom=full * defocus_angstrom,
                     defocus_v_angstrom=full * (defocus_angstrom - 300.0),
                     astigmatism_angle_deg=full * 30.0, voltage_kv=full * 300.0,
                     cs_mm=full * 2.7, amplitude_contrast=full * 0.1,
                     phase_shift_deg=full * 0.0, bfactor_a2=full * 0.0)


def test_integer_shift_is_undone_exactly_as_a_roll():
    """Content displaced by (+3, -2) px (a circular roll, known independently of the
    Fourier code) comes back to where it was: shifts are (x, y) in Å."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(2, 16, 16, generator=gen, dtype=torch.float64)
    moved = torch.roll(images, shifts=(-2, 3), dims=(-2, -1))  # rows are y, columns x
    shifts = torch.tensor([[3.0, -2.0], [3.0, -2.0]], dtype=torch.float64) * 1.5
    back = corrected_images(moved, 1.5, shifts, None)
    torch.testing.assert_close(back, images)
    with pytest.raises(AssertionError):  # the opposite sign would move it further
        torch.testing.assert_close(corrected_images(moved, 1.5, -shifts, None), images)


def test_phase_flip_leaves_the_transform_times_the_ctf_magnitude():
    gen = torch.Generator().manual_seed(1)
    clean = centered_rfft2(torch.randn(3, 32, 32, generator=gen, dtype=torch.float64))
    ctf = _ctf(3)
    values = compute_ctf_2d(ctf, 32, 2.0, rfft=True, dtype=torch.float64)
    assert bool((values < 0).any()) and bool((values > 0).any())  # the sign changes
    recorded = centered_irfft2(clean * values, 32)
    flipped = corrected_images(recorded, 2.0, None, ctf)
    # the Nyquist column (its own Hermitian partner folded) is left out: an astigmatic
    # CTF is not symmetric in ky there, so no real image has exactly that transform
    torch.testing.assert_close(centered_rfft2(flipped)[..., :-1], (clean * values.abs())[..., :-1])
    # unitary: the power of the image stays
    torch.testing.assert_close(flipped.norm(), recorded.norm(), rtol=1e-2, atol=0.0)


def test_precomputed_ctf_values_give_the_same_input():
    """The training loop evaluates each batch's CTFs once and hands them to the encoder's
    input and to the loss: the input is the one made from the CTF parameters."""
    gen = torch.Generator().manual_seed(2)
    images = torch.randn(3, 32, 32, generator=gen)
    ctf = _ctf(3)
    shifts = torch.tensor([[1.5, -3.0], [0.0, 2.0], [4.0, 0.5]])
    values = compute_ctf_2d(ctf, 32, 2.0, rfft=True, dtype=torch.float32)
    view = EncoderInput(2.0, shifts, ctf)
    index = torch.arange(3)
    torch.testing.assert_close(view(images, index, ctf_values=values), view(images, index),
                               rtol=0, atol=0)
    # an input that does not phase-flip ignores them
    unflipped = EncoderInput(2.0, shifts, None)
    torch.testing.assert_close(unflipped(images, index, ctf_values=values),
                               corrected_images(images, 2.0, shifts, None), rtol=0, atol=0)


def test_no_correction_returns_the_images_themselves():
    images = torch.zeros(2, 8, 8)
    assert corrected_images(images, 1.0) is images
    assert EncoderInput(1.0)(images, torch.arange(2)) is images


def test_run_encoder_input_follows_the_recipe_and_the_encoder():
    shifts, ctf = torch.zeros(4, 2), _ctf(4)
    mlp = MLPEncoder(8, 2, width=4, depth=1)
    both = run_encoder_input(get_recipe("cryodrgn"), mlp, 2.0, shifts, ctf)
    assert both.shifts_angstrom is shifts and both.ctf is ctf
    off = run_encoder_input(get_recipe("cryodrgn", encoder_centre=False,
                                       encoder_phase_flip=False), mlp, 2.0, shifts, ctf)
    assert off.shifts_angstrom is None and off.ctf is None
    table = run_encoder_input(get_recipe("autodecoder"), LatentTable(4, 2), 2.0, shifts, ctf)
    assert table.shifts_angstrom is None and table.ctf is None


@pytest.fixture(scope="module")
def shifted_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("shifted")
    simulate(SimulationConfig(n_particles=100, box_size=16, pixel_size_angstrom=6.0, snr=1.0,
                              states=("4ake", "1ake"), shift_sigma_angstrom=6.0, seed=2), out)
    return out


def test_training_and_final_latents_encode_the_corrected_images(shifted_dataset, tmp_path):
    """The encoder sees the corrected images in every training step, and the run's
    latents.npz holds the encoder's means of the corrected (not the raw) images."""
    ps = load_particles(shifted_dataset / "particles.star")
    assert np.abs(ps.shifts_angstrom).max() > 3.0  # the data has shifts to undo
    seen: list[torch.Tensor] = []
    original_forward = MLPEncoder.forward

    def recording_forward(self, images, indices=None):
        seen.append(images.detach().clone())
        return original_forward(self, images, indices)

    MLPEncoder.forward = recording_forward
    try:
        run = train(ps, get_recipe("cryodrgn", epochs=1, **TINY), tmp_path / "run")
    finally:
        MLPEncoder.forward = original_forward
    assert run.done
    with ImageSource(ps) as source:
        images = source.images(np.arange(len(ps)))
    view = EncoderInput(ps.pixel_size_angstrom, torch.as_tensor(ps.shifts_angstrom,
                                                                dtype=torch.float32),
                        ps.ctf)
    expected = view(images, torch.arange(len(ps)))
    first_step = seen[0]
    matches = [int(torch.isclose(expected, img, atol=1e-5).all(dim=(-1, -2)).any())
               for img in first_step]
    raw_matches = [int(torch.isclose(images, img, atol=1e-5).all(dim=(-1, -2)).any())
                   for img in first_step]
    assert sum(matches) == len(first_step) and sum(raw_matches) == 0

    loaded = load_run(tmp_path / "run")
    with torch.no_grad():
        mu, _ = loaded.encoder(expected)
        mu_raw, _ = loaded.encoder(images)
    np.testing.assert_allclose(loaded.mu, mu.numpy(), atol=1e-5)
    assert not np.allclose(loaded.mu, mu_raw.numpy(), atol=1e-3)

    # encoding after training sees the same input: the inspector (no latents.npz)
    # and the bench's half-set latents
    saved_mu, loaded.mu = loaded.mu, None
    inspected = inspect_particles(loaded, [3, 0, 7], particles=ps)
    np.testing.assert_allclose(inspected.z, saved_mu[[3, 0, 7]], atol=1e-5)
    np.testing.assert_allclose(_encode(tmp_path / "run", ps, "cpu"), saved_mu, atol=1e-5)


def test_a_run_saved_without_the_settings_reads_as_uncorrected(shifted_dataset, tmp_path):
    """A config.toml of a run made before the encoder corrections existed: its recipe
    reads as uncorrected, and resuming it with that recipe is not refused."""
    ps = load_particles(shifted_dataset / "particles.star")
    train(ps, get_recipe("cryodrgn", epochs=1, **TINY), tmp_path / "old")
    path = tmp_path / "old" / "config.toml"
    with open(path, "rb") as fh:
        config = tomllib.load(fh)
    for key in ("encoder_centre", "encoder_phase_flip"):
        del config["recipe"][key]
    write_toml(path, config)
    saved = saved_recipe(tmp_path / "old")
    assert not saved.encoder_centre and not saved.encoder_phase_flip
    resumed = get_recipe("cryodrgn", base=saved, epochs=2)
    check_resume_settings(tmp_path / "old", resumed.__dict__)
    assert get_recipe("cryodrgn").encoder_phase_flip  # new runs correct
