"""Bond-length and elastic-network restraints: zero for rigid motions, exact for stretches."""

from __future__ import annotations

import math

import pytest
import torch

from cryoviz.geometry import random_rotations
from cryoviz.volumes import GaussianMixtureVolume
from cryoviz.volumes.elastic import (
    ElasticRestraints,
    bonded_pairs,
    contact_pairs,
    distance_penalty,
)
from cryoviz.volumes.gmm_init import load_reference


def _chain_with_gap() -> torch.Tensor:
    """Six CA-like points 3.8 Å apart along x, with a 9 Å gap between points 2 and 3."""
    x = torch.tensor([0.0, 3.8, 7.6, 16.6, 20.4, 24.2], dtype=torch.float64)
    return torch.stack([x, torch.zeros(6, dtype=torch.float64),
                        torch.zeros(6, dtype=torch.float64)], dim=1)


def test_bonds_follow_the_chain_and_skip_gaps():
    pairs = bonded_pairs(_chain_with_gap())
    assert pairs.tolist() == [[0, 1], [1, 2], [3, 4], [4, 5]]
    contacts = contact_pairs(_chain_with_gap(), cutoff_angstrom=8.0)
    assert contacts.tolist() == [[0, 1], [0, 2], [1, 2], [3, 4], [3, 5], [4, 5]]


def test_penalty_is_zero_for_rigid_motion_and_exact_for_a_stretch():
    base = load_reference("4ake").centres_angstrom.double()
    restraints = ElasticRestraints(base, bond_weight=1.0, contact_weight=1.0)
    assert restraints.bonds.shape[0] > 200  # 214 residues, one chain
    rot = random_rotations(3, generator=torch.Generator().manual_seed(0)).double()
    moved = base[None] @ rot.transpose(-1, -2) + torch.tensor([5.0, -2.0, 1.0],
                                                               dtype=torch.float64)
    terms = restraints.terms(moved)
    assert float(terms["bond"].abs().max()) < 1e-10
    assert float(terms["contact"].abs().max()) < 1e-10
    # scaling every distance by 1.1 changes a distance d0 by 0.1 d0
    scaled = 1.1 * base[None]
    expected = float((0.01 * restraints.bond_lengths.double() ** 2).mean())
    assert float(restraints.terms(scaled)["bond"][0]) == pytest.approx(expected, rel=1e-5)


def test_penalty_gradient_pulls_a_stretched_bond_back():
    centres = _chain_with_gap()[None].clone()
    pairs = torch.tensor([[0, 1]])
    centres[0, 1, 0] += 0.5
    centres.requires_grad_(True)
    penalty = distance_penalty(centres, pairs, torch.tensor([3.8], dtype=torch.float64))
    assert float(penalty.detach()) == pytest.approx(0.25)
    penalty.sum().backward()
    assert float(centres.grad[0, 1, 0]) == pytest.approx(1.0)  # d/dx (x - 3.8)^2 at 4.3
    assert float(centres.grad[0, 0, 0]) == pytest.approx(-1.0)
    assert math.isclose(float(centres.grad[0, 2:].abs().sum()), 0.0)


def test_gmm_restraints_and_fixed_amplitudes():
    initial = load_reference("4ake")
    vol = GaussianMixtureVolume(32, 4.0, latent_dim=2, initial=initial, width=16,
                                move_amplitudes=False, bond_weight=1.0, contact_weight=0.1)
    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        vol.decoder[-1].weight.mul_(30.0)  # large moves
    centres, amps, _ = vol.mixture_parameters(z)
    neutral = vol.amplitude_scale * vol.log_amplitudes.exp()
    torch.testing.assert_close(amps, neutral.expand_as(amps))  # masses kept
    loss = vol.regularization_loss(z)
    assert float(loss) > 0
    loss.backward()
    assert float(vol.decoder[-1].weight.grad.abs().sum()) > 0
    # no restraints: zero, and amplitudes move
    free = GaussianMixtureVolume(32, 4.0, latent_dim=2, initial=initial, width=16)
    with torch.no_grad():
        free.decoder[-1].weight.mul_(30.0)
    assert float(free.regularization_loss(z)) == 0.0
    _, free_amps, _ = free.mixture_parameters(z)
    assert not torch.allclose(free_amps, neutral.expand_as(free_amps))
    # the restraints are rebuilt from the reference, not saved in checkpoints
    assert not any(k.startswith("restraints") for k in vol.state_dict())
