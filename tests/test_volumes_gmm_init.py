"""Initial Gaussian mixtures: from a structure, from a map, random; reading references."""

from __future__ import annotations

import math

import pytest
import torch

from cryoviz.errors import InputError
from cryoviz.gaussians import GaussianMixture, gaussians_volume, structure_to_gaussians
from cryoviz.metrics.fsc import fsc
from cryoviz.structure import adenylate_kinase_pair
from cryoviz.volumes.gmm import GaussianMixtureVolume
from cryoviz.volumes.gmm_init import (
    load_reference,
    mixture_from_map,
    mixture_from_structure,
    random_ball_mixture,
)


def test_reference_gmm_from_4ake_matches_atomic_map():
    open_state, _ = adenylate_kinase_pair(aligned=True)
    atomic = gaussians_volume(structure_to_gaussians(open_state, bfactor_a2=20.0), 32, 4.0,
                              dtype=torch.float64)
    for level, floor in (("residue", 0.9), ("atom", 0.99)):
        model = GaussianMixtureVolume(32, 4.0, initial=load_reference("4ake", level))
        with torch.no_grad():
            vol = model.volume(None).double()
        curve = fsc(vol, atomic)
        low = curve.frequency_per_px <= 0.25  # 16 Å and lower resolution
        assert float(curve.fsc[low].min()) > floor, (level, curve.fsc)
        assert abs(float(vol.sum()) / float(atomic.sum()) - 1.0) < 1e-3
    per_residue = mixture_from_structure(open_state, "residue")
    assert len(per_residue) == open_state.num_residues


def test_mixture_from_map_finds_density():
    mix = GaussianMixture(torch.tensor([[8.0, -4.0, 0.0]], dtype=torch.float64),
                          torch.tensor([5.0], dtype=torch.float64),
                          torch.tensor([3.0], dtype=torch.float64))
    vol = gaussians_volume(mix, 20, 2.0, dtype=torch.float64)
    found = mixture_from_map(vol, 2.0, 5)
    assert len(found) == 5
    dist = (found.centres_angstrom - mix.centres_angstrom).norm(dim=1)
    assert float(dist.min()) < 1e-6 and float(dist.max()) <= 2.0 * math.sqrt(3) + 1e-6
    assert found.total_mass == pytest.approx(5.0, rel=1e-3)


def test_random_ball_mixture_is_seeded_and_inside_the_ball():
    first = random_ball_mixture(200, 15.0, 3.0, seed=4)
    again = random_ball_mixture(200, 15.0, 3.0, seed=4)
    other = random_ball_mixture(200, 15.0, 3.0, seed=5)
    assert torch.equal(first.centres_angstrom, again.centres_angstrom)
    assert not torch.equal(first.centres_angstrom, other.centres_angstrom)
    radii = first.centres_angstrom.norm(dim=1)
    assert float(radii.max()) <= 15.0 + 1e-9
    # uniform in the ball: about half of the points lie beyond 15 / 2^(1/3) Å
    assert 0.35 < float((radii > 15.0 / 2 ** (1 / 3)).double().mean()) < 0.65


def test_unknown_reference_is_input_error():
    with pytest.raises(InputError, match="reference"):
        load_reference("no-such-structure.pdb")
