"""Readers and writers for MRC, RELION STAR, cryoSPARC .cs and cryoDRGN pickles.

Pose conventions of each format, with the evidence, are in
:mod:`cryoviz.io.conventions`.
"""

from cryoviz.io.conventions import (
    cryodrgn_to_internal,
    cryosparc_to_internal,
    internal_to_cryodrgn,
    internal_to_cryosparc,
    internal_to_relion,
    relion_to_internal,
)
from cryoviz.io.cryodrgn import (
    ctf_array_from_params,
    ctf_params_from_array,
    read_ctf_pkl,
    read_index_pkl,
    read_pose_pkl,
    write_ctf_pkl,
    write_index_pkl,
    write_pose_pkl,
)
from cryoviz.io.cryosparc import read_cs, write_cs
from cryoviz.io.mrc import (
    MRCStack,
    StackWriter,
    open_stack,
    read_volume,
    write_stack,
    write_volume,
)
from cryoviz.io.particles import ImageSource, ParticleSet, load_particles
from cryoviz.io.star import read_star, write_star

__all__ = [
    "MRCStack",
    "StackWriter",
    "open_stack",
    "read_volume",
    "write_stack",
    "write_volume",
    "ParticleSet",
    "ImageSource",
    "load_particles",
    "read_star",
    "write_star",
    "read_cs",
    "write_cs",
    "read_pose_pkl",
    "write_pose_pkl",
    "read_ctf_pkl",
    "write_ctf_pkl",
    "read_index_pkl",
    "write_index_pkl",
    "ctf_array_from_params",
    "ctf_params_from_array",
    "relion_to_internal",
    "internal_to_relion",
    "cryosparc_to_internal",
    "internal_to_cryosparc",
    "cryodrgn_to_internal",
    "internal_to_cryodrgn",
]
