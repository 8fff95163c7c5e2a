"""k-means, cluster representatives on the data and label agreement."""

from __future__ import annotations

import numpy as np
import pytest

from cryoviz.analysis import cluster_centres_on_data, kmeans, label_agreement


def _blobs(k=4, per=60, dim=5, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)) * 10.0
    truth = np.repeat(np.arange(k), per)
    z = centres[truth] + rng.normal(size=(k * per, dim)) * 0.5
    perm = rng.permutation(z.shape[0])
    return z[perm], truth[perm], centres


def test_kmeans_recovers_separated_blobs():
    z, truth, centres = _blobs()
    res = kmeans(z, 4, seed=0)
    assert res.labels.shape == (240,) and res.centres.shape == (4, 5)
    assert label_agreement(res.labels, truth) == 1.0
    # each fitted centre is the mean of its points, close to a true centre
    for j in range(4):
        np.testing.assert_allclose(res.centres[j], z[res.labels == j].mean(axis=0))
        assert np.min(np.linalg.norm(centres - res.centres[j], axis=1)) < 0.5
    assert res.inertia == pytest.approx(float(np.sum((z - res.centres[res.labels]) ** 2)))


def test_kmeans_deterministic_with_seed():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(400, 3))  # no cluster structure: starts matter
    a, b = kmeans(z, 6, seed=7), kmeans(z, 6, seed=7)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centres, b.centres)
    assert a.inertia == b.inertia
    assert np.bincount(a.labels, minlength=6).min() > 0
    # more starts never give a worse optimum than the first of them
    assert kmeans(z, 6, seed=7, n_init=20).inertia <= kmeans(z, 6, seed=7, n_init=1).inertia


@pytest.mark.filterwarnings("error")
def test_kmeans_edge_cases():
    z = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    for seed in range(5):  # fewer distinct points than clusters: still k non-empty clusters
        res = kmeans(z, 3, seed=seed)
        assert sorted(np.bincount(res.labels, minlength=3)) == [1, 1, 1]
        assert np.isfinite(res.centres).all()
    assert res.inertia == pytest.approx(0.0)
    assert kmeans(z, 1).labels.tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="k must be"):
        kmeans(z, 4)


def test_cluster_centres_on_data():
    z, truth, _ = _blobs(k=3, per=30, seed=1)
    res = kmeans(z, 3, seed=0)
    idx = cluster_centres_on_data(z, res.labels)
    assert idx.shape == (3,)
    for j in range(3):
        members = np.flatnonzero(res.labels == j)
        assert idx[j] in members
        d = np.linalg.norm(z[members] - res.centres[j], axis=1)
        assert idx[j] == members[np.argmin(d)]
    # explicit centres, and non-contiguous labels ordered as np.unique
    np.testing.assert_array_equal(cluster_centres_on_data(z, res.labels, res.centres), idx)
    np.testing.assert_array_equal(cluster_centres_on_data(z, res.labels * 10 + 5), idx)
    with pytest.raises(ValueError, match="centres must be"):
        cluster_centres_on_data(z, res.labels, res.centres[:2])


def test_label_agreement_permutations():
    true = np.array([0, 0, 1, 1, 2, 2, 2, 3])
    assert label_agreement(true, true) == 1.0
    renamed = np.array([7, 7, 3, 3, 5, 5, 5, 1])
    assert label_agreement(renamed, true) == 1.0
    one_wrong = np.array([7, 7, 3, 3, 5, 5, 3, 1])
    assert label_agreement(one_wrong, true) == pytest.approx(7 / 8)
    # different numbers of clusters: merged clusters lose the smaller one
    assert label_agreement(np.zeros(8, int), true) == pytest.approx(3 / 8)
    assert label_agreement(np.array(["a", "b"]), np.array([1, 1])) == 0.5
    with pytest.raises(ValueError, match="same length"):
        label_agreement([0, 1], [0])
