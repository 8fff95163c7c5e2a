"""Analysis of a trained run's latent space, written into ``RUN/analysis/``.

What :func:`analyze_run` writes (all maps as MRC with the run's voxel size):

* ``pca.npz`` (``coords (N, C)``, ``components``, ``explained_variance_ratio``,
  ``mean``) and, when requested, ``umap.npy`` (``(N, 2)``);
* ``kmeans.npz`` (``labels (N,)``, ``centres (K, L)``, ``centre_particles (K,)``)
  and ``kmeans/vol_XXX.mrc``, decoded at the particle nearest each centre;
* ``pc<j>/vol_XXX.mrc``: traversals along the first principal components
  between the 5th and 95th percentiles;
* ``graph/vol_XXX.mrc`` and ``graph_path.npy``: the shortest path on the kNN
  graph between two particles, when asked;
* ``summary.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

from cryoviz.analysis.clustering import cluster_centres_on_data, kmeans
from cryoviz.analysis.embedding import pca, umap_embedding
from cryoviz.analysis.trajectories import knn_graph_path, pc_traversal, volume_series
from cryoviz.errors import InputError
from cryoviz.io.mrc import atomic_output
from cryoviz.train.evaluate import Run, eval_volumes, load_run, voxel_size, write_volumes

__all__ = ["AnalysisSettings", "analyze_run", "run_latents"]


@dataclass(frozen=True)
class AnalysisSettings:
    """What :func:`analyze_run` computes.

    Attributes
    ----------
    n_clusters
        ``K`` of k-means.
    n_pcs
        Principal components to traverse.
    n_points
        Maps per traversal.
    umap
        Compute a UMAP embedding (about 10 s of JIT compilation on first use).
    graph_endpoints
        Two particle indices for a kNN-graph path, or ``None``.
    graph_k
        Neighbours of the kNN graph.
    seed
        Seed of k-means and UMAP.
    """

    n_clusters: int = 8
    n_pcs: int = 2
    n_points: int = 10
    umap: bool = True
    graph_endpoints: tuple[int, int] | None = None
    graph_k: int = 10
    seed: int = 0


def run_latents(run: Run) -> np.ndarray:
    """The run's per-particle latent means ``(N, L)``; a clear error if it has none."""
    if run.latent_dim == 0 or run.mu is None:
        raise InputError(run.path, "latents.npz",
                         "a run with a latent space (heterogeneous recipe, finished)",
                         got="none")
    return np.asarray(run.mu, dtype=np.float64)


def _write_npz(path: Path, **arrays) -> None:
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def analyze_run(
    run_dir: str | PathLike | Run,
    settings: AnalysisSettings = AnalysisSettings(),
    output_dir: str | PathLike | None = None,
) -> dict:
    """PCA, UMAP, k-means and traversals of a run; write maps and arrays.

    Parameters
    ----------
    run_dir
        A training run folder (or a loaded :class:`Run`).
    settings
        What to compute.
    output_dir
        Where to write (default ``RUN/analysis``).

    Returns
    -------
    dict
        The summary written to ``summary.json``.
    """
    run = run_dir if isinstance(run_dir, Run) else load_run(run_dir)
    z = run_latents(run)
    out = Path(output_dir) if output_dir is not None else run.path / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    apix = voxel_size(run)

    def decode(points: np.ndarray) -> np.ndarray:
        return eval_volumes(run, points).numpy()

    n_pcs = min(settings.n_pcs, z.shape[1])
    result = pca(z)
    _write_npz(out / "pca.npz", coords=result.coords, components=result.components,
               explained_variance_ratio=result.explained_variance_ratio, mean=result.mean)
    summary: dict = {
        "n_particles": int(z.shape[0]),
        "latent_dim": int(z.shape[1]),
        "explained_variance_ratio": result.explained_variance_ratio.tolist(),
        "voxel_size_angstrom": apix,
    }
    if settings.umap:
        embedding = umap_embedding(z, seed=settings.seed)
        with atomic_output(out / "umap.npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, embedding)
    k = min(settings.n_clusters, z.shape[0])
    clusters = kmeans(z, k, seed=settings.seed)
    on_data = cluster_centres_on_data(z, clusters.labels, clusters.centres)
    _write_npz(out / "kmeans.npz", labels=clusters.labels, centres=clusters.centres,
               centre_particles=on_data)
    write_volumes(volume_series(decode, z[on_data]), out / "kmeans", apix)
    summary["kmeans"] = {
        "k": k,
        "counts": np.bincount(clusters.labels, minlength=k).tolist(),
        "centre_particles": on_data.tolist(),
    }
    for j in range(n_pcs):
        path = pc_traversal(result, j, n_points=settings.n_points)
        write_volumes(volume_series(decode, path), out / f"pc{j + 1}", apix)
    summary["pc_traversals"] = n_pcs
    if settings.graph_endpoints is not None:
        start, end = settings.graph_endpoints
        for index in (start, end):
            if not 0 <= index < z.shape[0]:
                raise InputError(None, "--graph-path", f"particle indices in [0, {z.shape[0]})",
                                 index)
        nodes = knn_graph_path(z, start, end, k=settings.graph_k)
        with atomic_output(out / "graph_path.npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, nodes)
        write_volumes(volume_series(decode, z[nodes]), out / "graph", apix)
        summary["graph_path"] = nodes.tolist()
    with atomic_output(out / "summary.json") as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=2))
    return summary
