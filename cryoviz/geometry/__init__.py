"""Rotations and SO(3) grids."""

from cryoviz.geometry.rotations import (
    IN_PLANE_PI,
    axis_angle_to_matrix,
    euler_relion_to_matrix,
    geodesic_distance_deg,
    matrix_to_axis_angle,
    matrix_to_euler_relion,
    matrix_to_quaternion,
    matrix_to_rotation_6d,
    quaternion_to_matrix,
    random_rotations,
    rotation_6d_to_matrix,
    rotation_about_axis,
    viewing_direction,
)
from cryoviz.geometry.so3_grid import SO3Grid, local_rotations, nearest_grid_index

__all__ = [
    "IN_PLANE_PI",
    "SO3Grid",
    "axis_angle_to_matrix",
    "euler_relion_to_matrix",
    "geodesic_distance_deg",
    "local_rotations",
    "matrix_to_axis_angle",
    "matrix_to_euler_relion",
    "matrix_to_quaternion",
    "matrix_to_rotation_6d",
    "nearest_grid_index",
    "quaternion_to_matrix",
    "random_rotations",
    "rotation_6d_to_matrix",
    "rotation_about_axis",
    "viewing_direction",
]
