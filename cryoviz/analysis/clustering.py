"""Clustering of latents: k-means (Lloyd's algorithm, k-means++ seeding), cluster
representatives that are real particles, and agreement between two labelings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from cryoviz.analysis.embedding import as_latents

__all__ = ["KMeansResult", "kmeans", "cluster_centres_on_data", "label_agreement"]

_CHUNK = 65536  # rows per block when computing point-centre distances


@dataclass(frozen=True)
class KMeansResult:
    """Result of :func:`kmeans`.

    Attributes
    ----------
    labels
        ``(N,)`` int64 cluster of each point, in ``0 .. k-1`` (no cluster is empty).
    centres
        ``(k, L)`` cluster means.
    inertia
        Sum of squared distances of the points to their centres.
    n_iter
        Lloyd iterations of the best run.
    """

    labels: np.ndarray
    centres: np.ndarray
    inertia: float
    n_iter: int


def _assign(z: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centre ``(N,)`` and squared distance to it ``(N,)``, in row blocks."""
    n = z.shape[0]
    labels = np.empty(n, dtype=np.int64)
    d2 = np.empty(n, dtype=np.float64)
    c2 = np.einsum("kl,kl->k", centres, centres)
    for s in range(0, n, _CHUNK):
        block = z[s:s + _CHUNK]
        dist = np.einsum("nl,nl->n", block, block)[:, None] - 2.0 * block @ centres.T + c2
        lab = np.argmin(dist, axis=1)
        labels[s:s + _CHUNK] = lab
        d2[s:s + _CHUNK] = np.maximum(dist[np.arange(block.shape[0]), lab], 0.0)
    return labels, d2


def _kmeans_pp(z: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeding: ``2 + log k`` candidates per step, keep the best."""
    n = z.shape[0]
    trials = 2 + int(np.log(k))
    centres = np.empty((k, z.shape[1]), dtype=np.float64)
    centres[0] = z[rng.integers(n)]
    closest = np.sum((z - centres[0]) ** 2, axis=1)
    for j in range(1, k):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than clusters so far: pick uniformly
            cand = rng.integers(n, size=trials)
        else:
            cum = np.cumsum(closest)
            cand = np.searchsorted(cum, rng.uniform(0, total, size=trials), side="right")
            cand = np.minimum(cand, n - 1)
        # squared distances to each candidate, then the potential after adding it
        d_cand = np.stack([np.sum((z - z[c]) ** 2, axis=1) for c in cand])
        pots = np.minimum(closest[None, :], d_cand).sum(axis=1)
        best = int(np.argmin(pots))
        centres[j] = z[cand[best]]
        closest = np.minimum(closest, d_cand[best])
    return centres


def _update(z: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    n = z.shape[0]
    onehot = sp.csr_matrix((np.ones(n), (labels, np.arange(n))), shape=(k, n))
    sums = np.asarray(onehot @ z)
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    return sums, counts


def _lloyd(z: np.ndarray, centres: np.ndarray, max_iter: int, tol: float
           ) -> tuple[np.ndarray, np.ndarray, float, int]:
    k = centres.shape[0]
    labels = None
    it = 0
    for _ in range(max_iter):
        it += 1
        new_labels, d2 = _assign(z, centres)
        sums, counts = _update(z, new_labels, k)
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            # re-seed each empty cluster with the point farthest from its centre, taken
            # from a cluster that keeps at least one member (k <= N makes this possible)
            order = iter(np.argsort(-d2, kind="stable"))
            for e in empty:
                p = next(q for q in order if counts[new_labels[q]] > 1)
                old = new_labels[p]
                sums[old] -= z[p]
                counts[old] -= 1
                new_labels[p] = e
                sums[e] = z[p]
                counts[e] = 1
        new_centres = sums / counts[:, None]
        shift = float(np.sum((new_centres - centres) ** 2))
        centres = new_centres
        converged = labels is not None and np.array_equal(labels, new_labels)
        labels = new_labels
        if converged or shift <= tol:
            break
    # final assignment to the final centres, unless it would empty a cluster
    final, _ = _assign(z, centres)
    sums, counts = _update(z, final, k)
    if np.all(counts > 0):
        labels, centres = final, sums / counts[:, None]
    inertia = float(np.sum((z - centres[labels]) ** 2))
    return labels, centres, inertia, it


def kmeans(z, k: int, seed: int = 0, n_init: int = 10, max_iter: int = 300,
           tol: float = 1e-8) -> KMeansResult:
    """k-means clustering (Lloyd's algorithm from ``n_init`` k-means++ starts).

    Parameters
    ----------
    z
        ``(N, L)`` points.
    k
        Number of clusters, ``1 <= k <= N``.
    seed
        Seed of the random starts; the same seed gives the same result.
    n_init
        Number of starts; the run with the lowest inertia is returned.
    max_iter
        Lloyd iterations per start at most.
    tol
        Stop when the summed squared centre displacement falls below
        ``tol * (total variance of z)`` (or when no label changes).

    Returns
    -------
    KMeansResult
        ``labels (N,)``, ``centres (k, L)``, ``inertia``, ``n_iter``.
    """
    z = as_latents(z)
    n = z.shape[0]
    k = int(k)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, N={n}], got {k}")
    if int(n_init) < 1:
        raise ValueError(f"n_init must be at least 1, got {n_init}")
    tol_abs = float(tol) * float(np.var(z, axis=0).sum())
    rng = np.random.default_rng(seed)
    best: KMeansResult | None = None
    for _ in range(int(n_init)):
        init = _kmeans_pp(z, k, rng)
        labels, centres, inertia, it = _lloyd(z, init, int(max_iter), tol_abs)
        if best is None or inertia < best.inertia:
            best = KMeansResult(labels=labels, centres=centres, inertia=inertia, n_iter=it)
    return best


def cluster_centres_on_data(z, labels, centres=None) -> np.ndarray:
    """For each cluster, the particle nearest to its centre (a real latent to decode).

    Parameters
    ----------
    z
        ``(N, L)`` latents.
    labels
        ``(N,)`` integer cluster labels.
    centres
        Optional ``(K, L)`` centres, one per distinct label in sorted order
        (e.g. :attr:`KMeansResult.centres` for labels ``0 .. k-1``); default:
        the mean latent of each cluster.

    Returns
    -------
    np.ndarray
        ``(K,)`` int64 particle indices, one per distinct label in sorted order
        (``np.unique(labels)``); each is a member of its own cluster, the one
        closest to the centre.
    """
    z = as_latents(z)
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != z.shape[0]:
        raise ValueError(f"labels has {labels.shape[0]} entries, z has {z.shape[0]} rows")
    uniq, inv = np.unique(labels, return_inverse=True)
    if centres is not None:
        centres = as_latents(centres, name="centres")
        if centres.shape != (uniq.size, z.shape[1]):
            raise ValueError(f"centres must be ({uniq.size}, {z.shape[1]}) for {uniq.size} "
                             f"distinct labels, got {centres.shape}")
    out = np.empty(uniq.size, dtype=np.int64)
    for j in range(uniq.size):
        members = np.flatnonzero(inv == j)
        c = z[members].mean(axis=0) if centres is None else centres[j]
        _, nearest = cKDTree(z[members]).query(c, k=1)
        out[j] = members[int(nearest)]
    return out


def label_agreement(pred, true) -> float:
    """Fraction of points whose labels agree after the best matching of label names.

    The matching of ``pred`` labels to ``true`` labels (one-to-one; the label
    sets may differ in size) maximises the number of agreeing points
    (Hungarian algorithm on the contingency table).

    Parameters
    ----------
    pred, true
        ``(N,)`` labels (any hashable numpy dtype).

    Returns
    -------
    float
        In ``[0, 1]``; 1.0 when the two labelings are equal up to renaming.
    """
    pred = np.asarray(pred).reshape(-1)
    true = np.asarray(true).reshape(-1)
    if pred.shape != true.shape:
        raise ValueError(f"pred and true must have the same length, got {pred.size} and "
                         f"{true.size}")
    if pred.size == 0:
        raise ValueError("label_agreement needs at least one label")
    _, p = np.unique(pred, return_inverse=True)
    _, t = np.unique(true, return_inverse=True)
    table = np.zeros((p.max() + 1, t.max() + 1), dtype=np.int64)
    np.add.at(table, (p, t), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / pred.size)
