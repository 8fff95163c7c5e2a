"""The public API that every front end (CLI, napari plugin, notebooks) uses.

Front ends import from here and nowhere deeper, so the engine can be
reorganised without breaking them. Long work is a generator yielding immutable
progress states (``iter_simulate``, ``iter_reconstruct``, ``iter_train``,
``iter_class_em``, ``iter_ppca``); the caller shows progress its own way.
"""

from __future__ import annotations

from cryoviz.analysis import (
    KMeansResult,
    PCAResult,
    cluster_centres_on_data,
    export_selection,
    kmeans,
    knn_graph_path,
    label_agreement,
    path_length,
    pc_traversal,
    pca,
    points_in_polygon,
    resample_path,
    select_particles,
    straight_path,
    umap_embedding,
    volume_series,
)
from cryoviz.analysis.inspect import (
    OrientationDensity,
    ParticleInspection,
    inspect_particles,
    orientation_density,
    run_particles,
    viewing_directions,
)
from cryoviz.analysis.run_analysis import AnalysisSettings, analyze_run, run_latents
from cryoviz.ctf import CTFParams, compute_ctf_2d
from cryoviz.errors import InputError
from cryoviz.imaging import render_images
from cryoviz.inference.amortized_pose import (
    AmortizedPoseProgress,
    AmortizedPoseResult,
    AmortizedPoseSettings,
    iter_amortized_pose,
)
from cryoviz.inference.amortized_pose_output import write_amortized_pose
from cryoviz.inference.class_em import iter_class_em, write_class_em
from cryoviz.inference.cryogan import (
    CryoGANProgress,
    CryoGANResult,
    CryoGANSettings,
    iter_cryogan,
)
from cryoviz.inference.cryogan_output import write_cryogan
from cryoviz.inference.posterior import PosePosterior, read_pose_posterior, write_pose_posterior
from cryoviz.inference.ppca import eval_ppca, iter_ppca, write_ppca
from cryoviz.inference.refine import (
    RefineProgress,
    RefineResult,
    RefineSettings,
    iter_refine,
    write_refine,
)
from cryoviz.inference.variational import (
    VariationalProgress,
    VariationalResult,
    VariationalSettings,
    iter_variational,
    write_variational,
)
from cryoviz.io import (
    ImageSource,
    ParticleSet,
    load_particles,
    read_star,
    read_volume,
    write_star,
    write_volume,
)
from cryoviz.metrics import FSCCurve, align_volume, fsc, rotation_error_deg, soft_spherical_mask
from cryoviz.reconstruct import iter_reconstruct, write_reconstruction
from cryoviz.simulate import SimulationConfig, iter_simulate, simulate
from cryoviz.train.distributed import bf16_is_fast
from cryoviz.train.evaluate import (
    LatticeDecoder,
    Run,
    eval_volumes,
    load_run,
    saved_recipe,
    voxel_size,
    write_volumes,
)
from cryoviz.train.loop import TrainProgress, iter_train, train
from cryoviz.train.recipe_settings import parse_setting
from cryoviz.train.recipes import RECIPES, Recipe, get_recipe

__all__ = [
    "AmortizedPoseProgress", "AmortizedPoseResult", "AmortizedPoseSettings",
    "iter_amortized_pose", "write_amortized_pose",
    "RefineProgress", "RefineResult", "RefineSettings", "iter_refine", "write_refine",
    "CryoGANProgress", "CryoGANResult", "CryoGANSettings", "iter_cryogan", "write_cryogan",
    "VariationalProgress", "VariationalResult", "VariationalSettings", "iter_variational",
    "write_variational",
    "AnalysisSettings", "bf16_is_fast", "CTFParams", "FSCCurve", "ImageSource", "InputError",
    "KMeansResult",
    "LatticeDecoder", "PCAResult", "ParticleSet", "PosePosterior", "RECIPES", "Recipe", "Run",
    "SimulationConfig", "TrainProgress", "align_volume", "analyze_run",
    "cluster_centres_on_data", "compute_ctf_2d", "eval_ppca", "eval_volumes",
    "export_selection", "fsc", "get_recipe", "iter_class_em", "iter_ppca",
    "iter_reconstruct", "iter_simulate", "iter_train", "kmeans", "knn_graph_path",
    "label_agreement", "load_particles", "load_run", "parse_setting", "path_length",
    "pc_traversal", "pca",
    "points_in_polygon", "read_pose_posterior", "read_star", "read_volume", "render_images",
    "resample_path", "rotation_error_deg", "run_latents", "saved_recipe", "select_particles",
    "simulate",
    "soft_spherical_mask", "straight_path", "train", "umap_embedding", "volume_series",
    "voxel_size", "write_class_em", "write_pose_posterior", "write_ppca",
    "write_reconstruction", "write_star", "write_volume", "write_volumes",
    "OrientationDensity", "ParticleInspection", "inspect_particles", "orientation_density",
    "run_particles", "viewing_directions",
]
