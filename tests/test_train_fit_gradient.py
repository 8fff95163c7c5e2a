"""The fit-gradient encoder input (``encoder_input = 'fit_gradient'``).

Known answers first: a mixture whose image has one Gaussian moved and one made
heavier gives, at every pose that shows the motion, a gradient pointing along
the motion in the model's frame and a positive amplitude gradient. Then the
recipe: ``e2gmm``'s default input where poses are given, and a trained run
encodes particles after training (inspector, bench half sets) exactly as it did
at the end of training. ``tests/test_train_e2gmm.py`` separates open / closed
adenylate kinase with it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cryoviz.ctf import CTFParams, compute_ctf_2d
from cryoviz.errors import InputError
from cryoviz.fourier import centered_irfft2, crop_half_transform
from cryoviz.gaussians import GaussianMixture
from cryoviz.geometry.rotations import rotation_about_axis
from cryoviz.io.particles import ImageSource, load_particles
from cryoviz.simulate import SimulationConfig, simulate
from cryoviz.train.data import ParticleBatches
from cryoviz.train.encoder_input import particle_encoder_input, run_encoder_input
from cryoviz.train.encoders import GradientEncoder, MLPEncoder
from cryoviz.train.evaluate import load_run, saved_recipe
from cryoviz.train.final_outputs import encode_all
from cryoviz.train.fit_gradient import FitGradientInput, fit_gradients, gradient_box
from cryoviz.train.loop import train
from cryoviz.train.models import build_models
from cryoviz.train.recipes import get_recipe
from cryoviz.train.run_files import write_toml
from cryoviz.volumes.gmm import GaussianMixtureVolume, project_gaussians_batched

BOX, APIX = 32, 2.0


def _two_gaussians(first_x_angstrom: float, second_amplitude: float) -> GaussianMixture:
    return GaussianMixture(torch.tensor([[first_x_angstrom, 0.0, 0.0], [0.0, 10.0, 0.0]]),
                           torch.tensor([1.0, second_amplitude]), torch.tensor([4.0, 4.0]))


def _views(rotations: torch.Tensor, truth: GaussianMixture) -> torch.Tensor:
    return project_gaussians_batched(truth.centres_angstrom, truth.amplitudes,
                                     truth.sigmas_angstrom, rotations, BOX, APIX)


def test_gradient_box_is_half_the_training_box():
    assert [gradient_box(d) for d in (8, 16, 24, 64, 65, 128)] == [8, 8, 12, 32, 32, 64]


def test_gradients_point_along_the_motion_in_the_model_frame_at_every_pose():
    """Gaussian 0 sits 3 Å further along +x and Gaussian 1 is 1.5x heavier in the images.

    Rotations about the model's x axis keep the motion across every view, while
    the images themselves differ (the y-offset Gaussian turns around x).
    """
    volume = GaussianMixtureVolume(BOX, APIX, initial=_two_gaussians(-6.0, 1.0))
    rotations = rotation_about_axis("x", torch.tensor([0.0, 50.0, 100.0, 160.0]))
    images = _views(rotations, _two_gaussians(-3.0, 1.5))
    grads = fit_gradients(volume, images, rotations, None, None, APIX).reshape(4, 2, 4)
    move = grads[:, 0, :3]
    along_x = move[:, 0] / move.norm(dim=1)
    assert (along_x > 0.9).all(), move
    assert (grads[:, 1, 3] > 0).all() and (grads[:, 1, 3] > grads[:, 0, 3]).all(), grads
    # the images differ from one pose to the next; the gradients hardly do
    flat = grads[:, :, :3].reshape(4, -1)
    cosine = torch.nn.functional.cosine_similarity(flat[:, None], flat[None], dim=-1)
    assert cosine.min() > 0.8, cosine  # 0.82 at 50° against 100° (measured)
    pixels = centered_irfft2(images, BOX).reshape(4, -1)
    image_cos = torch.nn.functional.cosine_similarity(pixels[:, None], pixels[None], dim=-1)
    assert image_cos.min() < 0.5, image_cos  # 0.42 at 0° against 160° (measured)


def test_a_motion_along_the_beam_gives_no_centre_gradient_along_it():
    """Viewed down the model's x axis (90° about y), a shift along x is invisible."""
    volume = GaussianMixtureVolume(BOX, APIX, initial=_two_gaussians(-6.0, 1.0))
    rotation = rotation_about_axis("y", torch.tensor([90.0]))
    images = _views(rotation, _two_gaussians(-3.0, 1.0))
    grads = fit_gradients(volume, images, rotation, None, None, APIX).reshape(2, 4)
    assert abs(float(grads[0, 0])) < 1e-3 * float(grads[:, :3].abs().max()) + 1e-6


def test_blocks_are_normalised_and_the_volume_gets_no_gradient():
    volume = GaussianMixtureVolume(BOX, APIX, latent_dim=2, n_gaussians=16, seed=3)
    rotations = rotation_about_axis("z", torch.tensor([0.0, 30.0, 70.0]))
    images = _views(rotations, _two_gaussians(-3.0, 1.5)) + 0.1
    feats = fit_gradients(volume, images, rotations, torch.ones(3, 2), None, APIX)
    assert feats.shape == (3, 64) and not feats.requires_grad
    blocks = feats.reshape(3, 16, 4)
    assert torch.allclose(blocks[..., :3].pow(2).mean(dim=(1, 2)), torch.ones(3), atol=1e-4)
    assert torch.allclose(blocks[..., 3].pow(2).mean(dim=1), torch.ones(3), atol=1e-4)
    assert all(p.grad is None for p in volume.parameters())


def test_the_training_grids_ctf_cropped_is_the_ctf_of_the_cropped_box():
    """The loop's CTF values, cropped, stand for the CTF evaluated at the gradient box."""
    ctf = CTFParams.from_arrays(defocus_u_angstrom=[9000.0, 21000.0],
                                defocus_v_angstrom=[8500.0, 20000.0],
                                astigmatism_angle_deg=[10.0, 70.0], voltage_kv=300.0,
                                cs_mm=2.7, amplitude_contrast=0.1)
    small = gradient_box(BOX)
    full = compute_ctf_2d(ctf, BOX, APIX)
    direct = compute_ctf_2d(ctf, small, APIX * BOX / small)
    torch.testing.assert_close(crop_half_transform(full, small), direct, atol=1e-5, rtol=0)
    volume = GaussianMixtureVolume(BOX, APIX, latent_dim=2, n_gaussians=16, seed=1)
    rotations = rotation_about_axis("z", torch.tensor([0.0, 40.0]))
    images = _views(rotations, _two_gaussians(-3.0, 1.5)) * full
    from_params = fit_gradients(volume, images, rotations, None, ctf, APIX)
    from_values = fit_gradients(volume, images, rotations, None, None, APIX, full)
    torch.testing.assert_close(from_values, from_params, atol=1e-4, rtol=1e-4)


def test_the_recipe_accepts_the_input_for_a_mixture_with_given_poses_only():
    get_recipe("e2gmm", encoder_input="fit_gradient").validate()
    for bad in (dict(name="cryodrgn"), dict(name="3dflex"),
                dict(name="atomvae", reference="4ake")):
        with pytest.raises(InputError, match="fit_gradient"):
            get_recipe(bad.pop("name"), encoder_input="fit_gradient", **bad).validate()


def test_e2gmm_defaults_to_the_input_and_falls_back_where_it_cannot_work():
    """``e2gmm`` takes fit gradients by default; amortized poses, a latent table or
    an implicit volume give the image MLP, unless the gradients are asked for by name."""
    assert get_recipe("e2gmm").encoder_input == "fit_gradient"
    assert get_recipe("e2gmm", encoder="ae").encoder_input == "fit_gradient"
    for change in (dict(poses="amortized", loss="gaussian"), dict(encoder="table"),
                   dict(volume="implicit")):
        assert get_recipe("e2gmm", **change).encoder_input == "real", change
    with pytest.raises(InputError, match="fit_gradient"):
        get_recipe("e2gmm", poses="amortized", loss="gaussian", encoder_input="fit_gradient")
    assert get_recipe("e2gmm", encoder_input="hartley").encoder_input == "hartley"
    # a run's saved recipe keeps its input (runs before 2026-12-07 used the image MLP)
    saved = get_recipe("e2gmm", encoder_input="real")
    assert get_recipe("e2gmm", base=saved, epochs=40).encoder_input == "real"
    assert get_recipe("cryodrgn").encoder_input == "real"


def _first_layer_move(input_norm: float, features: torch.Tensor) -> float:
    """Largest change of the first layer's output after one Adam step (lr 1e-3)."""
    torch.manual_seed(0)
    encoder = GradientEncoder(features.shape[1] // 4, 4, width=128, depth=2,
                              input_norm=input_norm)
    scaled = features if input_norm == 0 else features * (
        input_norm / features.norm(dim=1, keepdim=True))
    before = encoder.hidden[0](scaled).detach()
    optimizer = torch.optim.Adam(encoder.parameters(), lr=1e-3)
    mu, logvar = encoder(features)
    (mu.sum() + logvar.sum()).backward()
    optimizer.step()
    return float((encoder.hidden[0](scaled).detach() - before).abs().max())


def test_the_input_norm_bounds_the_first_steps_on_agreeing_gradients():
    """2,048 Gaussians (8,192 features) and a batch whose gradients agree: unscaled,
    one Adam step moves a first-layer output by about ``lr`` times the input's L1
    norm (~6.5); scaled to norm 8, by about ``8 / sqrt(8192)`` of that."""
    gen = torch.Generator().manual_seed(1)
    shared = torch.randn(1, 8192, generator=gen)
    features = shared + 0.3 * torch.randn(32, 8192, generator=gen)
    unscaled, scaled = _first_layer_move(0.0, features), _first_layer_move(8.0, features)
    l1 = float(features.abs().sum(dim=1).mean())
    assert 0.5 * 1e-3 * l1 < unscaled <= 1.01e-3 * l1 + 1e-3, (unscaled, l1)
    assert scaled < 1.0 and scaled < unscaled / 5, (scaled, unscaled)
    encoder = GradientEncoder(2048, 4, input_norm=8.0)  # only the direction is read
    mu, logvar = encoder(features[:2])
    mu3, logvar3 = encoder(3.0 * features[:2])
    torch.testing.assert_close((mu3, logvar3), (mu, logvar))


def test_e2gmm_scales_its_gradient_input_and_earlier_runs_keep_theirs(tmp_path):
    """``fit_gradient_norm = 8`` since 2026-12-07; a run saved before it reads 0."""
    recipe = get_recipe("e2gmm", gaussians=16)
    assert recipe.fit_gradient_norm == 8.0
    _, encoder = build_models(recipe, BOX, APIX, 10)
    assert isinstance(encoder, GradientEncoder) and encoder.input_norm == 8.0
    old = {k: v for k, v in dataclasses.asdict(recipe).items() if k != "fit_gradient_norm"}
    write_toml(tmp_path / "config.toml", {"recipe": old})
    loaded = saved_recipe(tmp_path)
    assert loaded.fit_gradient_norm == 0.0
    assert build_models(loaded, BOX, APIX, 10)[1].input_norm == 0.0
    for bad in (-1.0, float("inf")):
        with pytest.raises(InputError, match="fit_gradient_norm"):
            get_recipe("e2gmm", fit_gradient_norm=bad)


def test_run_encoder_input_needs_the_volume_for_a_gradient_encoder():
    encoder = GradientEncoder(16, 2)
    with pytest.raises(ValueError, match="volume"):
        run_encoder_input(get_recipe("e2gmm"), encoder, APIX, None, None)
    volume = GaussianMixtureVolume(BOX, APIX, latent_dim=2, n_gaussians=16)
    view = run_encoder_input(get_recipe("e2gmm"), encoder, APIX, None, None, volume,
                             torch.eye(3).expand(5, 3, 3))
    assert isinstance(view, FitGradientInput)
    mu, logvar = encoder(view(torch.randn(2, BOX, BOX), torch.tensor([0, 3])))
    assert mu.shape == logvar.shape == (2, 2)
    with pytest.raises(ValueError, match="features"):
        encoder(torch.randn(2, BOX, BOX))
    assert not isinstance(encoder, MLPEncoder)


def test_a_trained_run_encodes_particles_as_its_training_did(tmp_path):
    """``particle_encoder_input`` with the run's volume reproduces ``latents.npz``."""
    data = tmp_path / "data"
    simulate(SimulationConfig(n_particles=64, box_size=16, pixel_size_angstrom=6.0, snr=1.0,
                              states=("4ake", "1ake"), seed=2), data)
    particles = load_particles(data / "particles.star")
    recipe = get_recipe("e2gmm", epochs=1, gaussians=32, batch_size=16,
                        encoder_input="fit_gradient")
    train(particles, recipe, tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert isinstance(run.encoder, GradientEncoder)
    view = particle_encoder_input(run.recipe, run.encoder, particles, run.pixel_size_angstrom,
                                  "cpu", run.volume)
    with ImageSource(particles) as source:
        batches = ParticleBatches(source, 16, seed=0)
        mu, _ = encode_all(run.encoder, batches, torch.device("cpu"), view)
    np.testing.assert_allclose(mu, run.mu, atol=1e-5)
    assert np.std(mu, axis=0).min() > 0
