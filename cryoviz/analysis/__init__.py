"""Latent-space analysis: embeddings, clustering, trajectories and particle selection.

Front-end independent (numpy in, numpy out): the napari plugin and notebooks
call these. UMAP needs the optional ``umap-learn`` package, imported on first use.
"""

from cryoviz.analysis.clustering import (
    KMeansResult,
    cluster_centres_on_data,
    kmeans,
    label_agreement,
)
from cryoviz.analysis.embedding import PCAResult, pca, umap_embedding
from cryoviz.analysis.select import export_selection, points_in_polygon, select_particles
from cryoviz.analysis.trajectories import (
    knn_graph_path,
    path_length,
    pc_traversal,
    resample_path,
    straight_path,
    volume_series,
)

__all__ = [
    "PCAResult",
    "pca",
    "umap_embedding",
    "KMeansResult",
    "kmeans",
    "cluster_centres_on_data",
    "label_agreement",
    "pc_traversal",
    "straight_path",
    "knn_graph_path",
    "path_length",
    "resample_path",
    "volume_series",
    "points_in_polygon",
    "select_particles",
    "export_selection",
]
