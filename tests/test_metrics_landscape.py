"""Tests for cryoviz.metrics.landscape: latent and conformational-landscape metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryoviz.gaussians import gaussians_volume, structure_to_gaussians
from cryoviz.metrics import (
    fsc,
    fsc_distance_matrix,
    fsc_hierarchical_clustering,
    half_latent_wasserstein,
    neighbourhood_preservation,
    procrustes_align,
    wasserstein2,
)
from cryoviz.structure import adenylate_kinase_pair


def clustered_latents(n: int = 300, seed: int = 0) -> np.ndarray:
    """Anisotropic 3-D latents: three clusters on a line plus a spread along a second axis."""
    rng = np.random.default_rng(seed)
    centres = np.array([[-3.0, 0.0, 0.0], [0.0, 1.0, 0.0], [3.0, -0.5, 0.0]])
    labels = rng.integers(0, 3, n)
    return centres[labels] + rng.normal(scale=[0.3, 0.6, 0.1], size=(n, 3))


def random_orthogonal(dim: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
    return q * np.sign(np.diag(r))


def test_procrustes_recovers_similarity_transform():
    z = clustered_latents()
    q = random_orthogonal(3, 1)
    moved = 2.5 * z @ q + np.array([1.0, -2.0, 0.5])
    fit = procrustes_align(moved, z)
    assert fit.scale == pytest.approx(1 / 2.5, rel=1e-10)
    assert np.allclose(fit.apply(moved), z, atol=1e-10)
    assert fit.rms_residual < 1e-10
    assert np.allclose(fit.rotation @ fit.rotation.T, np.eye(3), atol=1e-12)


def test_wasserstein2_known_values():
    a = clustered_latents(200)
    assert wasserstein2(a, a) == pytest.approx(0.0, abs=1e-12)
    # a translated copy: every point moves by |t|, and no other assignment is cheaper
    t = np.array([0.3, -0.4, 0.0])
    assert wasserstein2(a, a + t) == pytest.approx(0.5, rel=1e-9)
    # order of the points does not matter (it is a distance between distributions)
    perm = np.random.default_rng(3).permutation(len(a))
    assert wasserstein2(a, a[perm]) == pytest.approx(0.0, abs=1e-12)


def test_half_wasserstein_identical_halves_is_zero():
    z = clustered_latents()
    assert half_latent_wasserstein(z, z) == pytest.approx(0.0, abs=1e-9)


def test_half_wasserstein_rotated_copy_is_zero_after_alignment():
    z = clustered_latents()
    q = random_orthogonal(3, 2)
    rotated = 0.7 * z @ q - 1.0
    assert wasserstein2(z, rotated) > 1.0  # far apart before the alignment
    assert half_latent_wasserstein(z, rotated) == pytest.approx(0.0, abs=1e-6)


def test_half_wasserstein_different_particles_same_distribution_is_small():
    # two halves hold different particles; the pairing comes from particles both models saw
    z_all = clustered_latents(600, seed=4)
    q = random_orthogonal(3, 5)
    model_b = z_all @ q + 2.0
    half_a, half_b = z_all[:300], model_b[300:]
    small = half_latent_wasserstein(half_a, half_b, paired_a=z_all, paired_b=model_b)
    shuffled = np.random.default_rng(6).permutation(len(z_all))
    large = half_latent_wasserstein(half_a, half_b, paired_a=z_all, paired_b=model_b[shuffled])
    assert small < 0.3
    assert large > 0.8
    assert large > 3 * small


def test_half_wasserstein_shuffled_labels_is_large():
    z = clustered_latents()
    shuffled = z[np.random.default_rng(7).permutation(len(z))]
    # the pairing is broken: the best similarity transform collapses towards the mean
    value = half_latent_wasserstein(z, shuffled)
    assert value > 0.8


def test_half_wasserstein_bad_input():
    z = clustered_latents(50)
    with pytest.raises(ValueError, match="paired_a"):
        half_latent_wasserstein(z, z, paired_a=z)
    with pytest.raises(ValueError, match="no spread"):
        half_latent_wasserstein(np.ones((10, 2)), np.ones((10, 2)))


def test_neighbourhood_preservation_continuous():
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 1, 400)
    # a curved 2-D embedding of the path coordinate keeps neighbourhoods
    z_good = np.stack([np.cos(2 * t), np.sin(2 * t)], axis=1) + rng.normal(scale=1e-3,
                                                                          size=(400, 2))
    z_random = rng.normal(size=(400, 2))
    good = neighbourhood_preservation(z_good, t, k=10)
    bad = neighbourhood_preservation(z_random, t, k=10)
    assert good.score > 0.8
    assert bad.score < 0.1
    assert bad.chance == pytest.approx(10 / 399, rel=0.05)
    assert abs(bad.score - bad.chance) < 0.03


def test_neighbourhood_preservation_discrete_labels_is_purity():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    z_sep = labels[:, None] * 10.0 + rng.normal(size=(300, 2))
    z_mixed = rng.normal(size=(300, 2))
    sep = neighbourhood_preservation(z_sep, labels, k=8)
    mixed = neighbourhood_preservation(z_mixed, labels, k=8)
    assert sep.score == pytest.approx(1.0)
    assert mixed.score == pytest.approx(0.5, abs=0.08)
    assert mixed.chance == pytest.approx(0.5, abs=0.05)


@pytest.fixture(scope="module")
def adk_maps() -> tuple[torch.Tensor, torch.Tensor, float]:
    box, apix = 32, 4.0
    open_s, closed_s = adenylate_kinase_pair(aligned=True)
    maps = [gaussians_volume(structure_to_gaussians(s, bfactor_a2=20.0), box, apix)
            for s in (open_s, closed_s)]
    return maps[0].to(torch.float64), maps[1].to(torch.float64), apix


def test_fsc_distance_matches_fsc_resolution(adk_maps):
    open_map, closed_map, apix = adk_maps
    dist = fsc_distance_matrix(torch.stack([open_map, closed_map, open_map]), apix)
    expected = fsc(open_map, closed_map).resolution_angstrom(apix, 0.5)
    assert dist[0, 1] == pytest.approx(expected, rel=1e-6)
    assert dist[1, 0] == dist[0, 1]
    assert dist[0, 2] == pytest.approx(2 * apix)  # identical maps agree to Nyquist
    assert np.all(np.diag(dist) == 0)


def test_fsc_clustering_separates_states_and_merges_copies(adk_maps):
    open_map, closed_map, apix = adk_maps
    gen = torch.Generator().manual_seed(0)
    scale = float(open_map.std())

    def noisy(v: torch.Tensor) -> torch.Tensor:
        return v + 0.05 * scale * torch.randn(v.shape, generator=gen, dtype=v.dtype)

    truth = np.array([0, 1, 0, 1, 0, 1])
    volumes = torch.stack([noisy(open_map if t == 0 else closed_map) for t in truth])
    between = fsc(open_map, closed_map).resolution_angstrom(apix, 0.5)
    assert between > 3 * apix  # the two states differ well below Nyquist
    cut = math.sqrt(2 * apix * between)  # between Nyquist and the states' difference
    result = fsc_hierarchical_clustering(volumes, apix, resolution_angstrom=cut)
    assert result.n_clusters == 2
    assert len(set(result.labels[truth == 0])) == 1
    assert len(set(result.labels[truth == 1])) == 1
    assert result.labels[0] != result.labels[1]
    # the last merge happens at about the resolution that tells the states apart
    assert result.merge_resolutions_angstrom[-1] == pytest.approx(between, rel=0.2)
    assert np.all(result.merge_resolutions_angstrom[:-1] < cut)
    by_count = fsc_hierarchical_clustering(volumes, apix, n_clusters=2)
    assert np.array_equal(by_count.labels, result.labels)


def test_fsc_clustering_merges_copies_of_one_state(adk_maps):
    open_map, _, apix = adk_maps
    gen = torch.Generator().manual_seed(1)
    noise = 0.05 * float(open_map.std())
    volumes = torch.stack([open_map + noise * torch.randn(open_map.shape, generator=gen,
                                                          dtype=open_map.dtype)
                           for _ in range(4)])
    result = fsc_hierarchical_clustering(volumes, apix, resolution_angstrom=3 * apix)
    assert result.n_clusters == 1


def test_fsc_clustering_bad_input(adk_maps):
    open_map, closed_map, apix = adk_maps
    vols = torch.stack([open_map, closed_map])
    with pytest.raises(ValueError, match="exactly one"):
        fsc_hierarchical_clustering(vols, apix)
    with pytest.raises(ValueError, match="M >= 2"):
        fsc_hierarchical_clustering(vols[:1], apix, n_clusters=1)
