"""The Gaussian-mixture volume: batched analytic projection, gradients, FRC loss, init."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryoviz.errors import InputError
from cryoviz.fourier import centered_irfft2, centered_rfft2
from cryoviz.gaussian_projection import project_gaussians_fourier
from cryoviz.gaussians import GaussianMixture
from cryoviz.geometry.rotations import quaternion_to_matrix
from cryoviz.structure import adenylate_kinase_pair
from cryoviz.train.loop import build_models
from cryoviz.train.recipes import get_recipe
from cryoviz.volumes.frc import frc_per_shell
from cryoviz.volumes.gmm import (
    MAX_LOG_AMPLITUDE_CHANGE,
    GaussianMixtureVolume,
    project_gaussians_batched,
    random_ball_mixture,
)


def _rotations(n: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return quaternion_to_matrix(torch.randn(n, 4, generator=gen, dtype=torch.float64)).to(dtype)


def _mixture(m: int, seed: int = 0) -> GaussianMixture:
    gen = torch.Generator().manual_seed(seed)
    base = random_ball_mixture(m, 15.0, 3.0, seed=seed)
    return GaussianMixture(base.centres_angstrom,
                           0.5 + torch.rand(m, generator=gen, dtype=torch.float64),
                           2.0 + 2.0 * torch.rand(m, generator=gen, dtype=torch.float64))


@pytest.mark.parametrize("box", [24, 25])
def test_batched_projection_matches_shared_mixture(box):
    mix = _mixture(30)
    rot = _rotations(6)
    ref = project_gaussians_fourier(mix, rot, box, 4.0, dtype=torch.float64)
    out = project_gaussians_batched(mix.centres_angstrom, mix.amplitudes, mix.sigmas_angstrom,
                                    rot, box, 4.0)
    assert out.shape == (6, box, box // 2 + 1)
    assert torch.allclose(out, ref, atol=1e-10 * float(ref.abs().max()))
    # per-batch (B, M, 3) centres and (B, M) amplitudes, all equal: same result
    out_b = project_gaussians_batched(mix.centres_angstrom.expand(6, -1, -1),
                                      mix.amplitudes.expand(6, -1),
                                      mix.sigmas_angstrom, rot, box, 4.0)
    assert torch.allclose(out_b, ref, atol=1e-10 * float(ref.abs().max()))


def test_batched_projection_per_particle_mixtures():
    rot = _rotations(4, seed=1)
    mixtures = [_mixture(12, seed=s) for s in range(4)]
    centres = torch.stack([m.centres_angstrom for m in mixtures])
    amps = torch.stack([m.amplitudes for m in mixtures])
    sigmas = torch.stack([m.sigmas_angstrom for m in mixtures])
    out = project_gaussians_batched(centres, amps, sigmas, rot, 20, 3.0)
    for b, m in enumerate(mixtures):
        ref = project_gaussians_fourier(m, rot[b:b + 1], 20, 3.0, dtype=torch.float64)[0]
        assert torch.allclose(out[b], ref, atol=1e-10 * float(ref.abs().max()))
    # a real image (Hermitian half transform)
    images = centered_irfft2(out, 20)
    assert torch.allclose(centered_rfft2(images), out, atol=1e-9 * float(out.abs().max()))


@pytest.mark.parametrize(("box", "per_particle_sigmas"), [(8, False), (9, True)])
def test_batched_projection_gradients_match_finite_differences(box, per_particle_sigmas):
    """The written-out backward pass (not autograd's) against finite differences, for
    the centres, amplitudes and widths, shared or per particle, even and odd boxes."""
    mix = _mixture(3, seed=2)
    rot = _rotations(2, seed=3)
    centres = mix.centres_angstrom[None].repeat(2, 1, 1).clone().requires_grad_(True)
    amps = mix.amplitudes[None].repeat(2, 1).clone().requires_grad_(True)
    sigmas = (mix.sigmas_angstrom[None].repeat(2, 1) if per_particle_sigmas
              else mix.sigmas_angstrom).clone().requires_grad_(True)

    def fn(c, a, s):
        return torch.view_as_real(project_gaussians_batched(c, a, s, rot, box, 4.0))

    assert torch.autograd.gradcheck(fn, (centres, amps, sigmas), eps=1e-6, atol=1e-6,
                                    rtol=1e-5)
    # shared (M, 3) centres and (M,) amplitudes receive the sum over the batch
    shared_c = mix.centres_angstrom.clone().requires_grad_(True)
    shared_a = mix.amplitudes.clone().requires_grad_(True)
    fn(shared_c, shared_a, mix.sigmas_angstrom).sum().backward()
    fn(centres, amps, sigmas).sum().backward()
    assert torch.allclose(shared_c.grad, centres.grad.sum(0))
    assert torch.allclose(shared_a.grad, amps.grad.sum(0))


def test_batched_projection_refuses_second_derivatives():
    """First derivatives only: a second one raises instead of coming out wrong."""
    mix = _mixture(3, seed=2)
    centres = mix.centres_angstrom[None].clone().requires_grad_(True)
    out = project_gaussians_batched(centres, mix.amplitudes, mix.sigmas_angstrom,
                                    _rotations(1, seed=3), 8, 4.0)
    (grad,) = torch.autograd.grad(out.abs().sum(), centres, create_graph=True)
    with pytest.raises(RuntimeError):
        grad.sum().backward()


def test_volume_model_slices_and_volume_agree_with_mixture():
    model = GaussianMixtureVolume(20, 4.0, latent_dim=2, n_gaussians=16, width=16, seed=1)
    rot = _rotations(3, seed=4, dtype=torch.float32)
    z = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model.slices(rot, z, 20, 4.0)
        for b in range(3):
            mix = model.mixture(z[b])
            ref = project_gaussians_fourier(mix, rot[b:b + 1], 20, 4.0)[0]
            assert torch.allclose(out[b], ref, atol=1e-4 * float(ref.abs().max()))
        # different z -> different centres; the map's z-sum is the projection at identity
        assert not torch.allclose(model.mixture(z[0]).centres_angstrom,
                                  model.mixture(z[1]).centres_angstrom)
        vol = model.volume(z[0])
        proj = centered_irfft2(model.slices(torch.eye(3)[None], z[:1], 20, 4.0), 20)[0]
        assert torch.allclose(vol.sum(0), proj, atol=1e-4 * float(proj.abs().max()))
        # another box over the same extent keeps voxel values (smooth map)
        big = model.volume(z[0], box_size=40)
        assert abs(float(big.sum()) / float(vol.sum()) - 8.0) < 1e-2


def test_e2gmm_recipe_builds_models():
    recipe = get_recipe("e2gmm")
    assert recipe.volume == "gmm" and recipe.loss == "frc"
    volume, encoder = build_models(recipe, 24, 5.0, 10)
    assert isinstance(volume, GaussianMixtureVolume)
    # the box-scaled default: 24**3 // 128 Gaussians at box 24
    assert volume.n_gaussians == recipe.gaussian_count(24) == 108
    assert volume.latent_dim == recipe.zdim
    assert encoder is not None
    ref, _ = build_models(get_recipe("e2gmm", reference="4ake"), 24, 5.0, 10)
    assert ref.n_gaussians == adenylate_kinase_pair()[0].num_residues
    # same seed -> same model (load_run rebuilds it before loading weights)
    again, _ = build_models(recipe, 24, 5.0, 10)
    assert torch.equal(again.centres_px, volume.centres_px)
    with pytest.raises(InputError):
        get_recipe("e2gmm", loss="l1")
    with pytest.raises(InputError):
        get_recipe("e2gmm", reference_level="domain")
    assert np.isfinite(float(volume.amplitude_scale))


def test_a_runaway_latent_cannot_overflow_the_projection():
    """A decoder asking for ``da = 100`` (``exp(100)`` overflows float32) gets
    :data:`MAX_LOG_AMPLITUDE_CHANGE`; the projection and the FRC stay finite. Below
    the cap the change is the decoder's own."""
    vol = GaussianMixtureVolume(16, 4.0, latent_dim=2, n_gaussians=8, seed=0)
    with torch.no_grad():
        vol.decoder[-1].bias[3 * 8:] = 100.0
    _, da = vol.deltas(torch.zeros(3, 2))
    assert torch.equal(da, torch.full((3, 8), MAX_LOG_AMPLITUDE_CHANGE))
    rotations = torch.eye(3).expand(3, 3, 3)
    model = vol.slices(rotations, torch.zeros(3, 2), 16, 4.0)
    assert torch.isfinite(frc_per_shell(model, model)).all()
    with torch.no_grad():
        vol.decoder[-1].bias[3 * 8:] = 3.0
    z = torch.randn(4, 2)
    assert torch.equal(vol.deltas(z)[1], vol.decoder(z)[:, 3 * 8:])
