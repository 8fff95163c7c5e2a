"""Map and pose quality metrics."""

from cryoviz.metrics.alignment import AlignmentResult, align_volume
from cryoviz.metrics.fsc import FSCCurve, fsc, soft_spherical_mask
from cryoviz.metrics.landscape import (
    FSCClustering,
    NeighbourhoodPreservation,
    ProcrustesResult,
    fsc_distance_matrix,
    fsc_hierarchical_clustering,
    half_latent_wasserstein,
    neighbourhood_preservation,
    procrustes_align,
    wasserstein2,
)
from cryoviz.metrics.pose_modes import POSE_ERROR_MODES, PoseErrorModes, pose_error_modes
from cryoviz.metrics.poses import (
    RotationAlignment,
    align_rotations,
    apply_rotation_alignment,
    rotation_error_deg,
    shift_error_angstrom,
)
from cryoviz.metrics.volume_transforms import flip_hand, rotate_volume

__all__ = [
    "POSE_ERROR_MODES",
    "PoseErrorModes",
    "pose_error_modes",
    "AlignmentResult",
    "FSCClustering",
    "FSCCurve",
    "NeighbourhoodPreservation",
    "ProcrustesResult",
    "RotationAlignment",
    "align_rotations",
    "align_volume",
    "apply_rotation_alignment",
    "flip_hand",
    "fsc",
    "fsc_distance_matrix",
    "fsc_hierarchical_clustering",
    "half_latent_wasserstein",
    "neighbourhood_preservation",
    "procrustes_align",
    "rotate_volume",
    "rotation_error_deg",
    "shift_error_angstrom",
    "soft_spherical_mask",
    "wasserstein2",
]
