"""PCA (numpy SVD) and UMAP embeddings of latents."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

# UMAP JIT-compiles its numba kernels on first use (about a minute on 2 cores); keep the
# compiled code in a folder that outlives the test run. Set before umap is first imported
# (cryoviz imports it lazily, inside umap_embedding).
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "cryoviz-numba"))

from cryoviz.analysis import kmeans, label_agreement, pca, umap_embedding  # noqa: E402


def _dominant_data(n=500, seed=0):
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=6)
    direction /= np.linalg.norm(direction)
    z = (rng.normal(size=(n, 1)) * 5.0) * direction + rng.normal(size=(n, 6)) * 0.3 + 2.0
    return z, direction


def test_pca_recovers_dominant_direction():
    z, direction = _dominant_data()
    res = pca(z)
    assert res.components.shape == (6, 6)
    assert abs(float(res.components[0] @ direction)) > 0.99
    ratio = res.explained_variance_ratio
    assert np.all(np.diff(ratio) <= 1e-12)
    assert ratio[0] > 0.9
    assert ratio.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(res.mean, z.mean(axis=0))
    # axes orthonormal, coords consistent, variance matches the coordinates' variance
    np.testing.assert_allclose(res.components @ res.components.T, np.eye(6), atol=1e-10)
    np.testing.assert_allclose(res.coords, (z - res.mean) @ res.components.T, atol=1e-10)
    np.testing.assert_allclose(res.explained_variance, res.coords.var(axis=0, ddof=1))
    np.testing.assert_allclose(res.inverse_transform(res.coords), z, atol=1e-10)


def test_pca_n_components_and_determinism():
    z, _ = _dominant_data(n=50, seed=1)
    a, b = pca(z, n_components=2), pca(z.copy(), n_components=2)
    assert a.components.shape == (2, 6) and a.coords.shape == (50, 2)
    np.testing.assert_array_equal(a.components, b.components)
    np.testing.assert_allclose(a.transform(z[:5]), a.coords[:5], atol=1e-12)
    with pytest.raises(ValueError, match="n_components"):
        pca(z, n_components=7)
    with pytest.raises(ValueError, match="NaN"):
        pca(np.full((4, 2), np.nan))


def _blobs(n=300, dim=8, seed=0, sep=20.0):
    rng = np.random.default_rng(seed)
    truth = np.repeat([0, 1], n // 2)
    centres = rng.normal(size=(2, dim))
    centres = centres / np.linalg.norm(centres, axis=1, keepdims=True) * sep / 2
    centres[1] = -centres[0]
    return centres[truth] + rng.normal(size=(n, dim)), truth


def test_umap_separates_two_blobs():
    pytest.importorskip("umap", reason="umap-learn not installed")
    z, truth = _blobs()
    t0 = time.perf_counter()
    emb = umap_embedding(z, n_neighbors=15, min_dist=0.1, seed=0)
    print(f"umap_embedding (incl. any JIT): {time.perf_counter() - t0:.1f} s")
    assert emb.shape == (300, 2) and emb.dtype == np.float64
    assert np.isfinite(emb).all()
    labels = kmeans(emb, 2, seed=0).labels
    assert label_agreement(labels, truth) >= 0.95
    # groups far apart compared with their size
    c0, c1 = emb[truth == 0].mean(axis=0), emb[truth == 1].mean(axis=0)
    spread = max(emb[truth == 0].std(axis=0).max(), emb[truth == 1].std(axis=0).max())
    assert np.linalg.norm(c0 - c1) > 3 * spread


def test_umap_missing_package_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # makes `import umap` raise ImportError
    z, _ = _blobs(n=20)
    with pytest.raises(ImportError, match="pip install umap-learn"):
        umap_embedding(z)
