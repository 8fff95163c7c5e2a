"""build_models and initialise_models: every recipe's models, put on the data's scale."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cryoviz.errors import InputError
from cryoviz.fourier import frequency_grid_2d
from cryoviz.io.particles import ImageSource, load_particles
from cryoviz.simulate import SimulationConfig, simulate
from cryoviz.train.data import ParticleBatches
from cryoviz.train.encoders import GradientEncoder, LatentTable, MLPEncoder
from cryoviz.train.evaluate import saved_recipe
from cryoviz.train.models import as_tensor, build_models, initialise_models
from cryoviz.train.recipes import RECIPES, get_recipe
from cryoviz.train.run_files import write_toml
from cryoviz.volumes import (
    DeformationVolume,
    GaussianMixtureVolume,
    ImplicitVolume,
    VoxelVolume,
)
from cryoviz.volumes.residual import ReferenceResidualVolume


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    simulate(SimulationConfig(n_particles=40, box_size=16, pixel_size_angstrom=7.5, snr=1.0,
                              states=("4ake", "1ake"), seed=2), folder)
    return load_particles(folder / "particles.star")


EXPECTED = {"implicit": ImplicitVolume, "voxel": VoxelVolume, "gmm": GaussianMixtureVolume,
            "deformation": DeformationVolume}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_is_built_and_put_on_the_data_scale(name, data):
    overrides = {"reference": "4ake"} if name in ("cryofold", "atomvae") else {}
    recipe = get_recipe(name, width=16, depth=1, **overrides)
    volume, encoder = build_models(recipe, 16, 7.5, len(data))
    assert isinstance(volume, EXPECTED[recipe.volume])
    assert encoder is None or isinstance(encoder, (MLPEncoder, GradientEncoder, LatentTable))
    with ImageSource(data) as source:
        batches = ParticleBatches(source, 8, seed=0)
        ky, kx = frequency_grid_2d(16, rfft=True)
        scale = initialise_models(volume, encoder, recipe, data, batches,
                                  (ky**2 + kx**2).sqrt() < 0.5, torch.device("cpu"))
    assert scale > 0
    if isinstance(encoder, MLPEncoder):  # the data's real-space standard deviation
        with ImageSource(data) as source:
            std = float(source.images(np.arange(len(data))).double().std())
        assert float(encoder.input_scale) == pytest.approx(std, rel=1e-3)
    z = None if volume.latent_dim == 0 else torch.zeros(2, volume.latent_dim)
    rot = as_tensor(data.rotations[:2], "cpu")
    assert torch.isfinite(torch.view_as_real(volume.slices(rot, z, 16, 7.5))).all()


def test_a_reference_model_starts_at_the_scaled_reference(data):
    recipe = get_recipe("cryodrgn", width=16, depth=1, reference="4ake")
    volume, encoder = build_models(recipe, 16, 7.5, len(data))
    assert isinstance(volume, ReferenceResidualVolume)
    with ImageSource(data) as source:
        batches = ParticleBatches(source, 8, seed=0)
        ky, kx = frequency_grid_2d(16, rfft=True)
        initialise_models(volume, encoder, recipe, data, batches,
                          (ky**2 + kx**2).sqrt() < 0.5, torch.device("cpu"))
    assert float(volume.reference_scale) > 0
    z = torch.randn(3, recipe.zdim)
    with torch.no_grad():  # dV is zero whatever z: the model is the reference
        torch.testing.assert_close(volume.volume(z[0]),
                                   volume.reference_map * volume.reference_scale)
    assert as_tensor(None, "cpu") is None


@pytest.mark.parametrize(("box", "pe_dim", "frequencies"), [(16, None, 24), (64, None, 96),
                                                             (16, 10, 10)])
def test_implicit_volume_draws_cryodrgns_number_of_random_frequencies(box, pe_dim, frequencies):
    """cryoDRGN's Gaussian encoding: ``3 * pe_dim`` frequencies, ``pe_dim = D / 2`` unless
    given; cryoviz's ``pe_dim`` counts the frequencies (``None``: ``3 * (D // 2)``)."""
    recipe = get_recipe("cryodrgn", width=16, depth=1, pe_dim=pe_dim)
    assert recipe.random_frequencies(box) == frequencies
    volume, _ = build_models(recipe, box, 4.0, n_particles=4)
    assert volume.pe_frequencies.shape == (3, frequencies)
    assert volume.mlp.inp.in_features == 2 * frequencies + recipe.zdim
    with pytest.raises(InputError, match="pe_dim"):
        get_recipe("cryodrgn", pe_dim=0)


@pytest.mark.parametrize(("box", "gaussians", "count"), [(16, None, 32), (32, None, 256),
                                                         (64, None, 2048), (64, 300, 300)])
def test_gmm_volume_scales_its_gaussians_with_the_box_unless_given(box, gaussians, count):
    """A reference-free ``gmm`` volume has ``D**3 // 128`` Gaussians (2,048 at box 64)
    unless ``gaussians`` is given."""
    recipe = get_recipe("e2gmm", width=16, depth=1, enc_width=16, enc_depth=1,
                        gaussians=gaussians)
    assert recipe.gaussian_count(box) == count
    volume, _ = build_models(recipe, box, 4.0, n_particles=4)
    assert isinstance(volume, GaussianMixtureVolume) and volume.n_gaussians == count
    with pytest.raises(InputError, match="gaussians"):
        get_recipe("e2gmm", gaussians=0)


@pytest.mark.parametrize(("recipe", "reference", "counts"), [
    ("e2gmm", None, True), ("e2gmm", "map.mrc", True), ("e2gmm", "model.pdb", False),
    ("cryofold", "4ake", False), ("cryodrgn", None, False)])
def test_only_a_mixture_without_a_base_structure_counts_its_gaussians(recipe, reference,
                                                                      counts):
    assert get_recipe(recipe, reference=reference).counts_gaussians is counts


def test_implicit_recipes_use_cryodrgns_residual_layers_and_earlier_runs_keep_theirs(tmp_path):
    """``residual_relu = 'after_sum'`` since 2026-12-07; a run saved before it reads
    ``'before_sum'`` and builds the network it was trained with."""
    recipe = get_recipe("cryodrgn")
    assert recipe.residual_relu == "after_sum"
    assert build_models(recipe, 16, 4.0, 10)[0].mlp.relu_after_sum
    old = {k: v for k, v in dataclasses.asdict(recipe).items() if k != "residual_relu"}
    write_toml(tmp_path / "config.toml", {"recipe": old})
    loaded = saved_recipe(tmp_path)
    assert loaded.residual_relu == "before_sum"
    assert not build_models(loaded, 16, 4.0, 10)[0].mlp.relu_after_sum
    with pytest.raises(InputError, match="residual_relu"):
        get_recipe("cryodrgn", residual_relu="middle")
