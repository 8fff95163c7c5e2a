"""Latent-space and conformational-landscape metrics.

Metrics for what a heterogeneous method learned about the conformations,
beyond the quality of its maps:

* :func:`procrustes_align` and :func:`half_latent_wasserstein`: the 2-Wasserstein
  distance between the latent distributions that two independent models (one
  per half of the data) infer, after aligning their coordinates by a
  similarity transform (Procrustes: rotation or reflection, scale,
  translation) fitted on particles both models embedded. Reported in units of
  the reference distribution's RMS spread, so it does not depend on the scale
  of the latent space: 0 for identical distributions, about 1 when the
  alignment collapses the second distribution to its mean (no shared
  structure).
* :func:`neighbourhood_preservation`: how many of a particle's ``k`` nearest
  neighbours in latent space are also near it in the true conformation
  (continuous path coordinate, or discrete state label), with the value
  expected by chance.
* :func:`fsc_distance_matrix` and :func:`fsc_hierarchical_clustering`:
  agglomerative clustering of per-particle maps with the resolution (Å) at
  which two maps' FSC drops below a threshold as the distance, i.e. a
  *conformational resolution*: maps that agree to better than ``r`` Å are
  merged when the tree is cut at ``r``.

All functions take numpy arrays (latents) or torch tensors (maps) and return
plain Python numbers or numpy arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist

from cryoviz.analysis.embedding import as_latents
from cryoviz.fourier import centered_fft3, shell_index_3d

__all__ = [
    "ProcrustesResult",
    "procrustes_align",
    "wasserstein2",
    "half_latent_wasserstein",
    "NeighbourhoodPreservation",
    "neighbourhood_preservation",
    "fsc_distance_matrix",
    "FSCClustering",
    "fsc_hierarchical_clustering",
]


# -- alignment and Wasserstein distance -----------------------------------------------------
@dataclass(frozen=True)
class ProcrustesResult:
    """Similarity transform ``x -> scale * x @ rotation + translation`` onto a reference.

    Attributes
    ----------
    rotation
        ``(L, L)`` orthogonal matrix (a reflection is allowed: latent axes have
        no hand).
    scale
        Scalar factor (1 when scaling is not fitted).
    translation
        ``(L,)`` offset.
    rms_residual
        RMS distance between the transformed points and their reference points.
    """

    rotation: np.ndarray
    scale: float
    translation: np.ndarray
    rms_residual: float

    def apply(self, z) -> np.ndarray:
        """Transform ``(N, L)`` latents of the moving model into the reference's frame."""
        return self.scale * as_latents(z) @ self.rotation + self.translation


def procrustes_align(moving, reference, scaling: bool = True) -> ProcrustesResult:
    """Least-squares similarity transform mapping paired points ``moving`` onto ``reference``.

    Minimises ``sum_i |s R^T m_i + t - r_i|^2`` over orthogonal ``R``, scale
    ``s >= 0`` (if ``scaling``) and ``t`` (orthogonal Procrustes / Umeyama).

    Parameters
    ----------
    moving, reference
        ``(N, L)`` latents of the same ``N`` particles in two coordinate systems
        (row ``i`` of both is particle ``i``).
    scaling
        Fit the scale too (else ``s = 1``).

    Returns
    -------
    ProcrustesResult
    """
    m = as_latents(moving, "moving", min_rows=2)
    r = as_latents(reference, "reference", min_rows=2)
    if m.shape != r.shape:
        raise ValueError(f"moving and reference must have the same shape, got {m.shape} "
                         f"and {r.shape}")
    m_mean, r_mean = m.mean(axis=0), r.mean(axis=0)
    mc, rc = m - m_mean, r - r_mean
    u, sigma, vt = np.linalg.svd(mc.T @ rc)
    rotation = u @ vt
    power = float((mc**2).sum())
    scale = float(sigma.sum() / power) if scaling and power > 0 else 1.0
    translation = r_mean - scale * m_mean @ rotation
    aligned = scale * m @ rotation + translation
    rms = float(np.sqrt(((aligned - r) ** 2).sum(axis=1).mean()))
    return ProcrustesResult(rotation=rotation, scale=scale, translation=translation,
                            rms_residual=rms)


def _subsample(z: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    if len(z) <= n:
        return z
    return z[np.sort(rng.choice(len(z), size=n, replace=False))]


def wasserstein2(a, b, max_points: int = 2000, seed: int = 0) -> float:
    """2-Wasserstein distance between two empirical distributions of equal weight per point.

    Exact for equal sizes (optimal assignment, Hungarian algorithm). Larger or
    unequal sets are first subsampled (seeded, without replacement) to
    ``min(len(a), len(b), max_points)`` points each.

    Parameters
    ----------
    a, b
        ``(Na, L)`` and ``(Nb, L)`` points.
    max_points
        Largest assignment problem solved.
    seed
        Seed of the subsampling.

    Returns
    -------
    float
        ``sqrt(min_pi mean |a_i - b_pi(i)|^2)``.
    """
    a = as_latents(a, "a")
    b = as_latents(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have the same latent length, got {a.shape[1]} and "
                         f"{b.shape[1]}")
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    rng = np.random.default_rng(seed)
    n = min(len(a), len(b), max_points)
    a, b = _subsample(a, n, rng), _subsample(b, n, rng)
    cost = cdist(a, b, metric="sqeuclidean")
    rows, cols = linear_sum_assignment(cost)
    return float(np.sqrt(cost[rows, cols].mean()))


def half_latent_wasserstein(z_half_a, z_half_b, paired_a=None, paired_b=None,
                            scaling: bool = True, max_points: int = 2000,
                            seed: int = 0) -> float:
    """Distance between the latent distributions inferred on two halves of the data.

    Model A is trained on half A and model B on half B. Model B's coordinates
    are aligned onto model A's by :func:`procrustes_align` fitted on particles
    both models embedded (``paired_b -> paired_a``); then the 2-Wasserstein
    distance (:func:`wasserstein2`) between ``z_half_a`` and the aligned
    ``z_half_b`` is divided by the RMS spread of ``z_half_a`` about its mean.

    Parameters
    ----------
    z_half_a
        ``(Na, L)`` latents of half A's particles from model A.
    z_half_b
        ``(Nb, L)`` latents of half B's particles from model B.
    paired_a, paired_b
        ``(M, L)`` latents of the same ``M`` particles from model A and model B
        (e.g. all particles encoded by both amortized encoders). ``None``: the
        halves themselves are taken as paired (``Na == Nb``, row ``i`` the same
        particle).
    scaling
        Fit a scale in the alignment.
    max_points, seed
        See :func:`wasserstein2`.

    Returns
    -------
    float
        0 for identical distributions (also after a rotation, reflection,
        scaling or translation of model B's latent space); about 1 when the
        pairs carry no shared structure (the fitted scale goes to 0).
    """
    za = as_latents(z_half_a, "z_half_a", min_rows=2)
    zb = as_latents(z_half_b, "z_half_b", min_rows=2)
    if (paired_a is None) != (paired_b is None):
        raise ValueError("give both paired_a and paired_b, or neither")
    if paired_a is None:
        paired_a, paired_b = za, zb
    fit = procrustes_align(paired_b, paired_a, scaling=scaling)
    spread = float(np.sqrt(((za - za.mean(axis=0)) ** 2).sum(axis=1).mean()))
    if spread == 0:
        raise ValueError("z_half_a has no spread: the distance is undefined")
    return wasserstein2(za, fit.apply(zb), max_points=max_points, seed=seed) / spread


# -- neighbourhood preservation -------------------------------------------------------------
@dataclass(frozen=True)
class NeighbourhoodPreservation:
    """Agreement of latent neighbourhoods with true-conformation neighbourhoods.

    Attributes
    ----------
    score
        Mean over particles of the fraction of its ``k`` latent nearest
        neighbours that lie within its true ``k``-neighbourhood (the ball
        reaching its ``k``-th nearest neighbour in true coordinates, ties
        included). 1 = perfect.
    chance
        The same fraction for random neighbours: mean over particles of
        (particles in the true ball) / (N - 1).
    k
        Neighbours per particle.
    """

    score: float
    chance: float
    k: int


def neighbourhood_preservation(z, truth, k: int = 10) -> NeighbourhoodPreservation:
    """Fraction of latent ``k``-nearest neighbours that are true neighbours.

    Parameters
    ----------
    z
        ``(N, L)`` latents.
    truth
        ``(N,)`` or ``(N, T)`` true conformation coordinates: a continuous path
        coordinate, or discrete state labels (then the true ball of a particle
        in a state with more than ``k`` members is its state, and the score is
        the kNN label purity).
    k
        Neighbours per particle, ``1 <= k < N``.

    Returns
    -------
    NeighbourhoodPreservation
    """
    zz = as_latents(z, "z", min_rows=2)
    tt = as_latents(truth, "truth", min_rows=2)
    n = len(zz)
    if len(tt) != n:
        raise ValueError(f"z and truth must have the same number of rows, got {n} and {len(tt)}")
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, N - 1] = [1, {n - 1}], got {k}")
    _, nbr_z = cKDTree(zz).query(zz, k=k + 1)
    nbr_z = nbr_z[:, 1:]
    true_dist = cdist(tt, tt)
    np.fill_diagonal(true_dist, np.inf)
    radius = np.partition(true_dist, k - 1, axis=1)[:, k - 1]
    tol = 1e-12 * max(1.0, float(np.abs(tt).max()))
    inside = true_dist <= radius[:, None] + tol
    hits = np.take_along_axis(inside, nbr_z, axis=1).mean(axis=1)
    chance = inside.sum(axis=1) / (n - 1)
    return NeighbourhoodPreservation(score=float(hits.mean()), chance=float(chance.mean()), k=k)


# -- FSC-based clustering of per-particle maps ----------------------------------------------
def fsc_distance_matrix(volumes: torch.Tensor, pixel_size_angstrom: float,
                        threshold: float = 0.5, mask: torch.Tensor | None = None) -> np.ndarray:
    """Pairwise FSC resolution (Å) between maps: the distance of the FSC clustering.

    Entry ``(i, j)`` is the resolution at which ``FSC(V_i, V_j)`` first drops
    below ``threshold`` (linear interpolation between shells, as
    :meth:`cryoviz.metrics.FSCCurve.resolution_angstrom`): Nyquist
    (``2 * pixel_size``) when it never drops, the box (``D * pixel_size``) when
    it starts below. The diagonal is 0.

    Parameters
    ----------
    volumes
        ``(M, D, D, D)`` real maps.
    pixel_size_angstrom
        Voxel size, Å.
    threshold
        FSC threshold.
    mask
        Optional ``(D, D, D)`` real-space mask applied to every map.

    Returns
    -------
    numpy.ndarray
        ``(M, M)`` float64 symmetric matrix, Å.
    """
    if volumes.ndim != 4 or len(set(volumes.shape[1:])) != 1:
        raise ValueError(f"volumes must be (M, D, D, D), got {tuple(volumes.shape)}")
    if not pixel_size_angstrom > 0:
        raise ValueError(f"pixel_size_angstrom must be > 0, got {pixel_size_angstrom}")
    m, box = volumes.shape[0], volumes.shape[-1]
    vols = volumes.detach().to("cpu", torch.float64)
    if mask is not None:
        vols = vols * mask.to(vols)
    n_shells = box // 2 + 1
    shells = shell_index_3d(box).flatten()
    keep = shells < n_shells
    idx = shells[keep]
    ft = torch.stack([centered_fft3(v).flatten()[keep] for v in vols])  # (M, K)
    power = torch.zeros(m, n_shells, dtype=torch.float64).index_add(1, idx, ft.abs() ** 2)
    freqs = np.arange(n_shells) / box
    out = np.zeros((m, m))
    for i in range(m):
        cross = (ft[i:i + 1] * ft[i + 1:].conj()).real
        num = torch.zeros(len(cross), n_shells, dtype=torch.float64).index_add(1, idx, cross)
        den = torch.sqrt(power[i:i + 1] * power[i + 1:])
        curves = torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))
        for offset, curve in enumerate(curves.numpy()):
            j = i + 1 + offset
            out[i, j] = out[j, i] = _crossing_resolution(curve, freqs, threshold, box,
                                                         pixel_size_angstrom)
    return out


def _crossing_resolution(curve: np.ndarray, freqs: np.ndarray, threshold: float, box: int,
                         pixel_size_angstrom: float) -> float:
    if curve[0] < threshold:
        return box * pixel_size_angstrom
    below = np.flatnonzero(curve[1:] < threshold)
    if below.size == 0:
        return 2.0 * pixel_size_angstrom
    i = int(below[0]) + 1
    t = (curve[i - 1] - threshold) / (curve[i - 1] - curve[i])
    freq = freqs[i - 1] + t * (freqs[i] - freqs[i - 1])
    return min(box * pixel_size_angstrom, pixel_size_angstrom / freq) if freq > 0 else (
        box * pixel_size_angstrom)


@dataclass(frozen=True)
class FSCClustering:
    """Agglomerative clustering of maps by FSC resolution.

    Attributes
    ----------
    labels
        ``(M,)`` int64 cluster of each map, ``0 .. n_clusters - 1``.
    n_clusters
        Number of clusters after the cut.
    merge_resolutions_angstrom
        ``(M - 1,)`` resolutions (Å, increasing) at which clusters merge in the
        average-linkage tree: the conformational resolution of the set; the
        tree cut at ``r`` Å keeps apart only maps that differ at resolutions
        better than ``r``.
    distances_angstrom
        ``(M, M)`` pairwise FSC resolutions (:func:`fsc_distance_matrix`).
    linkage
        ``(M - 1, 4)`` scipy linkage matrix.
    """

    labels: np.ndarray
    n_clusters: int
    merge_resolutions_angstrom: np.ndarray
    distances_angstrom: np.ndarray
    linkage: np.ndarray


def fsc_hierarchical_clustering(volumes: torch.Tensor, pixel_size_angstrom: float,
                                resolution_angstrom: float | None = None,
                                n_clusters: int | None = None, threshold: float = 0.5,
                                mask: torch.Tensor | None = None) -> FSCClustering:
    """Average-linkage clustering of maps with the FSC resolution as distance.

    Give exactly one of ``resolution_angstrom`` (cut the tree there: maps that
    agree to better than this are merged) or ``n_clusters`` (cut into that
    many clusters).

    Parameters
    ----------
    volumes
        ``(M, D, D, D)`` real maps, ``M >= 2`` (e.g. maps decoded at particles'
        latents).
    pixel_size_angstrom
        Voxel size, Å.
    resolution_angstrom
        Cut height, Å.
    n_clusters
        Number of clusters.
    threshold
        FSC threshold of the distance.
    mask
        Optional ``(D, D, D)`` real-space mask.

    Returns
    -------
    FSCClustering
    """
    if (resolution_angstrom is None) == (n_clusters is None):
        raise ValueError("give exactly one of resolution_angstrom and n_clusters")
    if volumes.ndim != 4 or volumes.shape[0] < 2:
        raise ValueError(f"volumes must be (M, D, D, D) with M >= 2, got {tuple(volumes.shape)}")
    dist = fsc_distance_matrix(volumes, pixel_size_angstrom, threshold, mask)
    iu = np.triu_indices(len(dist), k=1)
    tree = linkage(dist[iu], method="average")
    if n_clusters is not None:
        if not 1 <= n_clusters <= len(dist):
            raise ValueError(f"n_clusters must be in [1, {len(dist)}], got {n_clusters}")
        raw = fcluster(tree, t=n_clusters, criterion="maxclust")
    else:
        if not (resolution_angstrom > 0 and math.isfinite(resolution_angstrom)):
            raise ValueError(f"resolution_angstrom must be > 0, got {resolution_angstrom}")
        raw = fcluster(tree, t=resolution_angstrom, criterion="distance")
    _, labels = np.unique(raw, return_inverse=True)
    return FSCClustering(labels=labels.astype(np.int64), n_clusters=int(labels.max()) + 1,
                         merge_resolutions_angstrom=np.sort(tree[:, 2]),
                         distances_angstrom=dist, linkage=tree)
