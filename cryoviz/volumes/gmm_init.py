"""Initial Gaussian mixtures: from an atomic structure, a map or a random ball.

Used by :class:`cryoviz.volumes.gmm.GaussianMixtureVolume` (reference-based or
reference-free E2GMM); :func:`load_reference` reads a PDB/mmCIF path, a built-in
structure name or an MRC map.
"""

from __future__ import annotations

import math
from os import PathLike
from pathlib import Path

import numpy as np
import torch

from cryoviz.errors import InputError
from cryoviz.fourier import lowpass_volume
from cryoviz.gaussians import GaussianMixture
from cryoviz.scattering import scattering_factor_gaussians
from cryoviz.structure import Structure, adenylate_kinase_pair, read_structure

__all__ = [
    "mixture_from_structure",
    "mixture_from_map",
    "random_ball_mixture",
    "load_reference",
]


def _total_scattering(element: str) -> float:
    """``f(0) = sum_i a_i`` (Å) of an element's Peng scattering factor."""
    return float(sum(scattering_factor_gaussians(element)[0]))


def mixture_from_structure(structure: Structure, level: str = "residue",
                           bfactor_a2: float = 20.0,
                           dtype: torch.dtype = torch.float64) -> GaussianMixture:
    """One Gaussian per residue (at its CA) or per atom.

    Amplitudes are the total electron scattering ``f(0)`` of the atoms represented
    (so the mixture has the mass of :func:`cryoviz.gaussians.structure_to_gaussians`).
    Widths: an atom's is ``sqrt((B + B_atom) / (8 pi^2))`` with ``B_atom`` the
    ``f(0)``-weighted mean of its Peng ``b_i``; a residue's adds the per-axis spread of
    its atoms about the CA (``mean |r - r_CA|^2 / 3``).

    Parameters
    ----------
    structure
        Atoms (coordinates used as they are).
    level
        ``'residue'`` or ``'atom'``.
    bfactor_a2
        Isotropic B-factor, Å^2.
    dtype
        Of the returned tensors.

    Returns
    -------
    GaussianMixture
        ``N_residues`` or ``N_atoms`` components.
    """
    if level not in ("residue", "atom"):
        raise ValueError(f"level must be 'residue' or 'atom', got {level!r}")
    coords = np.asarray(structure.coords_angstrom, dtype=np.float64)
    table = {e: scattering_factor_gaussians(e) for e in set(structure.elements.tolist())}
    f0 = np.array([sum(table[e][0]) for e in structure.elements])
    b_atom = np.array([float(np.dot(table[e][0], table[e][1])) / sum(table[e][0])
                       for e in structure.elements])
    atom_var = (b_atom + bfactor_a2) / (8.0 * math.pi**2)
    if level == "atom":
        centres, amps, var = coords, f0, atom_var
    else:
        keys = list(zip(structure.chain_ids.tolist(), structure.residue_ids.tolist(),
                        strict=True))
        order: dict[tuple[str, int], list[int]] = {}
        for i, key in enumerate(keys):
            order.setdefault(key, []).append(i)
        centres_l, amps_l, var_l = [], [], []
        for atoms in order.values():
            idx = np.asarray(atoms)
            ca = [i for i in atoms if structure.atom_names[i] == "CA"]
            centre = coords[ca[0]] if ca else coords[idx].mean(0)
            w = f0[idx]
            spread = float((w * ((coords[idx] - centre) ** 2).sum(1)).sum() / w.sum()) / 3.0
            centres_l.append(centre)
            amps_l.append(w.sum())
            var_l.append(spread + float((w * atom_var[idx]).sum() / w.sum()))
        centres, amps, var = np.array(centres_l), np.array(amps_l), np.array(var_l)
    return GaussianMixture(torch.as_tensor(centres, dtype=dtype),
                           torch.as_tensor(amps, dtype=dtype),
                           torch.as_tensor(np.sqrt(var), dtype=dtype))


def random_ball_mixture(n_gaussians: int, radius_angstrom: float, sigma_angstrom: float,
                        total_mass: float = 1.0, seed: int = 0,
                        dtype: torch.dtype = torch.float64) -> GaussianMixture:
    """``n_gaussians`` equal Gaussians with centres uniform in a ball (seeded).

    Parameters
    ----------
    n_gaussians
        ``M``.
    radius_angstrom
        Ball radius, Å (centred on the origin).
    sigma_angstrom
        Width of every component, Å.
    total_mass
        Sum of the amplitudes.
    seed
        Seed of the centres.
    dtype
        Of the returned tensors.
    """
    gen = torch.Generator().manual_seed(seed)
    direction = torch.randn(n_gaussians, 3, generator=gen, dtype=torch.float64)
    direction = direction / direction.norm(dim=1, keepdim=True).clamp(min=1e-12)
    radius = radius_angstrom * torch.rand(n_gaussians, 1, generator=gen,
                                          dtype=torch.float64) ** (1.0 / 3.0)
    return GaussianMixture((direction * radius).to(dtype),
                           torch.full((n_gaussians,), total_mass / n_gaussians, dtype=dtype),
                           torch.full((n_gaussians,), float(sigma_angstrom), dtype=dtype))


def mixture_from_map(volume: torch.Tensor, pixel_size_angstrom: float, n_gaussians: int,
                     resolution_angstrom: float | None = None,
                     dtype: torch.dtype = torch.float64) -> GaussianMixture:
    """Gaussians at the ``n_gaussians`` strongest voxels of a low-passed map.

    Parameters
    ----------
    volume
        ``(D, D, D)`` map, ``[z, y, x]``, origin at voxel ``D // 2``.
    pixel_size_angstrom
        Voxel size, Å.
    n_gaussians
        ``M`` (at most the number of voxels).
    resolution_angstrom
        Low-pass cut-off (default ``4`` voxels).
    dtype
        Of the returned tensors.

    Returns
    -------
    GaussianMixture
        Amplitudes proportional to the voxel values (summing to the map's positive
        mass), widths of one voxel.
    """
    vol = torch.as_tensor(volume, dtype=torch.float64)
    d = int(vol.shape[-1])
    res = 4.0 * pixel_size_angstrom if resolution_angstrom is None else resolution_angstrom
    low = lowpass_volume(vol, res, pixel_size_angstrom)
    values, flat = torch.topk(low.reshape(-1), min(int(n_gaussians), low.numel()))
    iz, iy, ix = flat // (d * d), (flat // d) % d, flat % d
    centres = torch.stack([ix, iy, iz], dim=1).to(torch.float64) - d // 2
    weights = values.clamp(min=0) + 1e-6 * values.abs().max()
    mass = float(vol.clamp(min=0).sum())
    amps = weights / weights.sum() * max(mass, 1e-12)
    return GaussianMixture((centres * pixel_size_angstrom).to(dtype), amps.to(dtype),
                           torch.full((len(values),), float(pixel_size_angstrom), dtype=dtype))


def load_reference(reference: str | PathLike, level: str = "residue",
                   bfactor_a2: float = 20.0, n_gaussians: int = 512,
                   pixel_size_angstrom: float | None = None) -> GaussianMixture:
    """An initial mixture from a reference.

    Parameters
    ----------
    reference
        ``'4ake'`` / ``'1ake'``: the built-in adenylate kinase in the simulator's frame
        (:func:`cryoviz.structure.adenylate_kinase_pair`, open state's mean at the
        origin); a PDB / mmCIF path (centred on its coordinate mean, as the simulator
        does); or an MRC map (:func:`mixture_from_map` with ``n_gaussians``).
    level, bfactor_a2
        As for :func:`mixture_from_structure`.
    n_gaussians, pixel_size_angstrom
        For map references (the voxel size defaults to the file's).
    """
    key = str(reference)
    if key.lower() in ("4ake", "1ake"):
        open_state, closed_state = adenylate_kinase_pair(aligned=True)
        structure = open_state if key.lower() == "4ake" else closed_state
        return mixture_from_structure(structure, level, bfactor_a2)
    path = Path(key)
    if not path.is_file():
        raise InputError(path, "reference",
                         "a PDB / mmCIF / MRC file or a built-in name (4ake, 1ake)",
                         "no such file")
    if path.suffix.lower() in (".mrc", ".map", ".mrcs"):
        from cryoviz.io.mrc import read_volume  # noqa: PLC0415

        data, voxel = read_volume(path)
        apix = pixel_size_angstrom or voxel
        if apix is None:
            raise InputError(path, "voxel size", "a voxel size in the header or "
                             "pixel_size_angstrom", voxel)
        return mixture_from_map(torch.as_tensor(data), float(apix), n_gaussians)
    return mixture_from_structure(read_structure(path).center(), level, bfactor_a2)
