"""Select particles (by index, cluster or a polygon drawn on a 2-D embedding) and
export the selection as RELION STAR, cryoSPARC ``.cs`` and a cryoDRGN index pickle.

Selections are positions ``0 .. N-1`` in the :class:`~cryoviz.io.ParticleSet`
at hand; exports keep each particle's identity (``particle_ids``, the row in the
original file), so the index pickle applies to the original particle file and
the STAR / ``.cs`` files read back with the same ids, poses and CTF.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np

from cryoviz.io.cryodrgn import write_index_pkl
from cryoviz.io.cryosparc import write_cs
from cryoviz.io.particles import ParticleSet
from cryoviz.io.star import write_star

__all__ = ["points_in_polygon", "select_particles", "export_selection"]

_FORMATS = ("star", "cs", "pkl")


def points_in_polygon(points, polygon, rule: str = "evenodd") -> np.ndarray:
    """Which 2-D points lie inside a polygon.

    Parameters
    ----------
    points
        ``(N, 2)`` ``(x, y)`` coordinates.
    polygon
        ``(V, 2)`` vertices in order (``V >= 3``); the polygon is closed from the
        last vertex back to the first. Concave and self-intersecting outlines
        (a free-hand lasso) are allowed.
    rule
        ``"evenodd"`` (ray casting: inside if a ray from the point crosses the
        outline an odd number of times) or ``"nonzero"`` (winding number not 0;
        differs only where a self-intersecting outline covers a region twice).

    Returns
    -------
    np.ndarray
        ``(N,)`` bool. Points exactly on the outline may fall on either side.
    """
    pts = np.asarray(points, dtype=np.float64)
    poly = np.asarray(polygon, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must be (N, 2), got shape {pts.shape}")
    if poly.ndim != 2 or poly.shape[1] != 2 or poly.shape[0] < 3:
        raise ValueError(f"polygon must be (V, 2) with V >= 3 vertices, got shape {poly.shape}")
    if not (np.isfinite(pts).all() and np.isfinite(poly).all()):
        raise ValueError("points and polygon must be finite")
    if rule not in ("evenodd", "nonzero"):
        raise ValueError(f"rule must be 'evenodd' or 'nonzero', got {rule!r}")
    x, y = pts[:, 0], pts[:, 1]
    count = np.zeros(pts.shape[0], dtype=np.int64)
    nxt = np.roll(poly, -1, axis=0)
    for (x0, y0), (x1, y1) in zip(poly, nxt, strict=True):
        up = (y0 <= y) & (y < y1)    # edge crosses the point's horizontal line going up
        down = (y1 <= y) & (y < y0)  # ... going down
        # > 0: the point is left of the directed edge (x0, y0) -> (x1, y1)
        cross = (x1 - x0) * (y - y0) - (x - x0) * (y1 - y0)
        if rule == "evenodd":
            # the rightward ray crosses the edge when the point is on the edge's left
            # (upward edge) or right (downward edge), i.e. the crossing lies at x' > x
            count += (up & (cross > 0)) | (down & (cross < 0))
        else:
            count += (up & (cross > 0)).astype(np.int64) - (down & (cross < 0)).astype(np.int64)
    return (count % 2 == 1) if rule == "evenodd" else (count != 0)


def select_particles(
    particles: ParticleSet,
    index=None,
    cluster_labels=None,
    clusters=None,
    polygon=None,
    embedding=None,
) -> np.ndarray:
    """Positions of the particles that meet every criterion given.

    Parameters
    ----------
    particles
        The ``N`` particles (only ``len(particles)`` is used).
    index
        Positions ``(M,)`` (ints in ``0 .. N-1``, any order, repeats ignored) or
        an ``(N,)`` bool mask.
    cluster_labels, clusters
        ``(N,)`` label per particle and the label(s) to keep (one or a list).
    polygon, embedding
        ``(V, 2)`` polygon vertices and the ``(N, 2)`` embedding they were drawn
        on (e.g. UMAP or two PCs); keeps the particles inside (even-odd rule).

    Returns
    -------
    np.ndarray
        Sorted, unique int64 positions in ``particles`` (the intersection of the
        criteria given); at least one criterion is required.
    """
    n = len(particles)
    mask = np.ones(n, dtype=bool)
    used = False
    if index is not None:
        idx = np.asarray(index)
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise ValueError(f"a bool index must have one entry per particle ({n}), got "
                                 f"shape {idx.shape}")
            mask &= idx
        else:
            idx = idx.reshape(-1)
            if idx.size and not np.issubdtype(idx.dtype, np.integer):
                raise ValueError(f"index must hold integers or bools, got dtype {idx.dtype}")
            idx = idx.astype(np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise ValueError(f"index values must be in [0, {n}), got {idx.min()} .. "
                                 f"{idx.max()}")
            sel = np.zeros(n, dtype=bool)
            sel[idx] = True
            mask &= sel
        used = True
    if (cluster_labels is None) != (clusters is None):
        raise ValueError("cluster_labels and clusters go together: give both or neither")
    if cluster_labels is not None:
        labels = np.asarray(cluster_labels).reshape(-1)
        if labels.shape[0] != n:
            raise ValueError(f"cluster_labels must have one entry per particle ({n}), got "
                             f"{labels.shape[0]}")
        mask &= np.isin(labels, np.atleast_1d(np.asarray(clusters)))
        used = True
    if (polygon is None) != (embedding is None):
        raise ValueError("polygon and embedding go together: give both or neither")
    if polygon is not None:
        emb = np.asarray(embedding, dtype=np.float64)
        if emb.shape != (n, 2):
            raise ValueError(f"embedding must be ({n}, 2) (one 2-D point per particle), got "
                             f"shape {emb.shape}")
        mask &= points_in_polygon(emb, polygon)
        used = True
    if not used:
        raise ValueError("select_particles needs index, cluster_labels + clusters, or "
                         "polygon + embedding")
    return np.flatnonzero(mask).astype(np.int64)


def export_selection(
    particles: ParticleSet,
    indices,
    output_prefix: str | PathLike,
    formats: Sequence[str] = _FORMATS,
    star_version: str = "3.1",
) -> dict[str, Path]:
    """Write the selected particles, keeping their identities.

    Parameters
    ----------
    particles
        The particles the positions refer to.
    indices
        ``(M,)`` positions in ``particles`` (e.g. from :func:`select_particles`),
        or an ``(N,)`` bool mask; written in the order given.
    output_prefix
        Output path without extension; its folder is created.
    formats
        Any of ``"star"`` (``<prefix>.star``, RELION), ``"cs"``
        (``<prefix>.cs``, cryoSPARC) and ``"pkl"`` (``<prefix>_index.pkl``: the
        selected particles' ``particle_ids``, i.e. their rows in the original
        particle file, for cryoDRGN's ``--ind`` or
        ``load_particles(original, index=...)``).
    star_version
        RELION STAR layout (see :func:`cryoviz.io.write_star`).

    Returns
    -------
    dict[str, Path]
        Format name to the file written.
    """
    formats = tuple(formats)
    unknown = [f for f in formats if f not in _FORMATS]
    if unknown or not formats:
        raise ValueError(f"formats must be a non-empty subset of {_FORMATS}, got {formats}")
    n = len(particles)
    idx = np.asarray(indices)
    if idx.dtype == bool:
        if idx.shape != (n,):
            raise ValueError(f"a bool mask must have one entry per particle ({n}), got "
                             f"shape {idx.shape}")
        idx = np.flatnonzero(idx)
    idx = idx.reshape(-1)
    if idx.size == 0:
        raise ValueError("the selection is empty: nothing to export")
    if not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"indices must be integers, got dtype {idx.dtype}")
    idx = idx.astype(np.int64)
    if idx.min() < 0 or idx.max() >= n:
        raise ValueError(f"indices must be in [0, {n}), got {idx.min()} .. {idx.max()}")
    prefix = Path(output_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    chosen = particles.subset(idx)
    out: dict[str, Path] = {}
    if "star" in formats:
        out["star"] = prefix.with_name(prefix.name + ".star")
        write_star(chosen, out["star"], version=star_version)
    if "cs" in formats:
        out["cs"] = prefix.with_name(prefix.name + ".cs")
        write_cs(chosen, out["cs"])
    if "pkl" in formats:
        out["pkl"] = prefix.with_name(prefix.name + "_index.pkl")
        write_index_pkl(out["pkl"], chosen.particle_ids)
    return out
