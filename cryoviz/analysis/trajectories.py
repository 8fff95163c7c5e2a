"""Paths through latent space and the volumes along them.

* :func:`pc_traversal` walks along one principal axis;
* :func:`straight_path` interpolates linearly between two latents;
* :func:`knn_graph_path` follows the data: the shortest path between two
  particles on their k-nearest-neighbour graph;
* :func:`resample_path` spaces a polyline's points equally by arc length;
* :func:`volume_series` decodes a path into volumes, a few at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import dijkstra
from scipy.spatial import cKDTree

from cryoviz.analysis.embedding import PCAResult, as_latents

__all__ = [
    "pc_traversal",
    "straight_path",
    "knn_graph_path",
    "path_length",
    "resample_path",
    "volume_series",
]


def _check_n_points(n_points: int) -> int:
    n = int(n_points)
    if n < 1:
        raise ValueError(f"n_points must be at least 1, got {n_points}")
    return n


def pc_traversal(pca_result: PCAResult, component: int, n_points: int = 10,
                 percentile_range: tuple[float, float] = (5, 95)) -> np.ndarray:
    """Latents along one principal axis, between two percentiles of the data.

    Parameters
    ----------
    pca_result
        From :func:`cryoviz.analysis.pca`.
    component
        0-based index of the axis (0 = first PC).
    n_points
        Number of points ``n``.
    percentile_range
        ``(low, high)`` percentiles (0-100) of the data's coordinate along the axis;
        the first point sits at ``low``, the last at ``high``.

    Returns
    -------
    np.ndarray
        ``(n, L)`` latents ``mean + t_i * component_axis`` with ``t`` evenly spaced
        between the two percentiles (the other PC coordinates are 0).
    """
    n = _check_n_points(n_points)
    c = int(component)
    if not 0 <= c < pca_result.n_components:
        raise ValueError(f"component must be in [0, {pca_result.n_components}) (0-based), got "
                         f"{component}")
    lo, hi = (float(p) for p in percentile_range)
    if not 0 <= lo <= 100 or not 0 <= hi <= 100:
        raise ValueError(f"percentile_range must lie in [0, 100], got {percentile_range}")
    t_lo, t_hi = np.percentile(pca_result.coords[:, c], [lo, hi])
    t = np.linspace(t_lo, t_hi, n)
    return pca_result.mean[None, :] + t[:, None] * pca_result.components[c][None, :]


def straight_path(z_start, z_end, n_points: int) -> np.ndarray:
    """``n`` evenly spaced latents from ``z_start`` to ``z_end`` (both included).

    Parameters
    ----------
    z_start, z_end
        ``(L,)`` latents.
    n_points
        Number of points ``n`` (1 gives ``z_start`` alone).

    Returns
    -------
    np.ndarray
        ``(n, L)``.
    """
    n = _check_n_points(n_points)
    a = np.asarray(z_start, dtype=np.float64).reshape(-1)
    b = np.asarray(z_end, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"z_start and z_end must have the same length, got {a.size} and {b.size}")
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1.0 - t) * a + t * b


def knn_graph_path(z, start_index: int, end_index: int, k: int = 10) -> np.ndarray:
    """Shortest path between two particles on the k-nearest-neighbour graph of the latents.

    Each particle is joined to its ``k`` nearest neighbours (the graph is made
    symmetric: an edge exists if either end is among the other's neighbours),
    with Euclidean edge lengths; the path is found with Dijkstra's algorithm.
    It follows the data manifold instead of cutting across empty space.

    Parameters
    ----------
    z
        ``(N, L)`` latents.
    start_index, end_index
        Rows of ``z`` to join.
    k
        Neighbours per particle (clipped to ``N - 1``).

    Returns
    -------
    np.ndarray
        ``(P,)`` int64 particle indices from ``start_index`` to ``end_index``.

    Raises
    ------
    ValueError
        If the two particles are in different connected components of the graph.
    """
    z = as_latents(z)
    n = z.shape[0]
    start, end = int(start_index), int(end_index)
    for name, i in (("start_index", start), ("end_index", end)):
        if not 0 <= i < n:
            raise ValueError(f"{name} must be in [0, {n}), got {i}")
    if start == end:
        return np.array([start], dtype=np.int64)
    k = int(min(int(k), n - 1))
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    dist, nbr = cKDTree(z).query(z, k=k + 1)
    dist, nbr = dist[:, 1:], nbr[:, 1:]  # drop each point itself
    rows = np.repeat(np.arange(n), k)
    # keep zero-length edges (duplicate latents) as edges: sparse graphs drop explicit zeros
    scale = float(dist.max()) if dist.size and dist.max() > 0 else 1.0
    weights = np.maximum(dist.reshape(-1), 1e-12 * scale)
    graph = sp.csr_matrix((weights, (rows, nbr.reshape(-1))), shape=(n, n))
    graph = graph.maximum(graph.T).tocsr()
    lengths, pred = dijkstra(graph, directed=False, indices=start, return_predecessors=True)
    if not np.isfinite(lengths[end]):
        raise ValueError(
            f"particles {start} and {end} are not connected in the {k}-nearest-neighbour graph "
            "(they lie in separate groups of the latent space); increase k or choose another "
            "start / end")
    path = [end]
    while path[-1] != start:
        path.append(int(pred[path[-1]]))
    return np.asarray(path[::-1], dtype=np.int64)


def path_length(points) -> float:
    """Total length of the polyline through ``(P, L)`` points."""
    p = as_latents(points, name="points")
    return float(np.linalg.norm(np.diff(p, axis=0), axis=1).sum())


def resample_path(points, n_points: int) -> np.ndarray:
    """Resample a polyline to ``n`` points equally spaced by arc length.

    Parameters
    ----------
    points
        ``(P, L)`` polyline vertices in order.
    n_points
        Number of output points ``n``; the first and last are the polyline's ends.

    Returns
    -------
    np.ndarray
        ``(n, L)`` points on the polyline, consecutive ones the same arc length apart.
    """
    n = _check_n_points(n_points)
    p = as_latents(points, name="points")
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
    keep = np.concatenate([[True], seg > 0])  # drop repeated vertices
    p = p[keep]
    s = np.concatenate([[0.0], np.cumsum(seg[seg > 0])])
    if p.shape[0] == 1:
        return np.repeat(p, n, axis=0)
    targets = np.linspace(0.0, s[-1], n)
    return np.stack([np.interp(targets, s, p[:, j]) for j in range(p.shape[1])], axis=1)


def volume_series(decode: Callable[[np.ndarray], np.ndarray], path, batch: int = 4
                  ) -> np.ndarray:
    """Decode latents along a path into volumes, ``batch`` at a time.

    Parameters
    ----------
    decode
        Maps ``(M, L)`` latents (float64 numpy) to ``(M, D, D, D)`` volumes (a
        numpy array, or anything with ``.detach().cpu().numpy()`` such as a
        torch tensor).
    path
        ``(n, L)`` latents.
    batch
        Latents per ``decode`` call (the last call may get fewer).

    Returns
    -------
    np.ndarray
        ``(n, D, D, D)`` volumes, in path order, in the decoder's dtype.
    """
    z = as_latents(path, name="path")
    b = int(batch)
    if b < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    out: np.ndarray | None = None
    for s in range(0, z.shape[0], b):
        chunk = z[s:s + b]
        vols = decode(chunk)
        if hasattr(vols, "detach"):
            vols = vols.detach().cpu().numpy()
        vols = np.asarray(vols)
        if vols.ndim != 4 or vols.shape[0] != chunk.shape[0] or not (
                vols.shape[1] == vols.shape[2] == vols.shape[3]):
            raise ValueError(f"decode must return ({chunk.shape[0]}, D, D, D) volumes for "
                             f"{chunk.shape[0]} latents, got shape {vols.shape}")
        if out is None:
            out = np.empty((z.shape[0], *vols.shape[1:]), dtype=vols.dtype)
        elif vols.shape[1:] != out.shape[1:]:
            raise ValueError(f"decode returned volumes of shape {vols.shape[1:]} after "
                             f"{out.shape[1:]}")
        out[s:s + b] = vols
    return out
