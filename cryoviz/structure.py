"""Atomic models: reading, matching, superposing and interpolating structures.

Coordinates are in Å, in the model file's frame unless moved by :meth:`Structure.center`
or :func:`kabsch`. Nothing here knows about boxes or pixels; see
:mod:`cryoviz.gaussians` to turn a structure into a density.

Built-in models (package data, ``cryoviz/data/<name>_A.pdb``): the chain A protein heavy
atoms of E. coli adenylate kinase, open (PDB 4AKE) and closed (PDB 1AKE). If a data
file is absent from the installation, :func:`builtin_structure` raises
:class:`FileNotFoundError` naming it.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import gemmi
import numpy as np

__all__ = [
    "Structure",
    "read_structure",
    "builtin_structure",
    "adenylate_kinase_pair",
    "kabsch",
    "BUILTIN_STRUCTURES",
    "ADK_CORE_RESIDUES",
]

#: Built-in model names -> package data file.
BUILTIN_STRUCTURES: dict[str, str] = {"4ake": "4ake_A.pdb", "1ake": "1ake_A.pdb"}

#: Residue ranges (inclusive) of the adenylate kinase CORE domain used for superposition.
ADK_CORE_RESIDUES: tuple[tuple[int, int], ...] = ((1, 29), (60, 121), (160, 214))


@dataclass(frozen=True, eq=False)
class Structure:
    """An atomic model (one model, any number of chains).

    Attributes
    ----------
    coords_angstrom
        ``(N, 3)`` float64 atom positions ``(x, y, z)`` in Å.
    elements
        ``(N,)`` str array of element symbols, capitalised as in the periodic table
        (``"C"``, ``"Fe"``).
    residue_ids
        ``(N,)`` int array of residue sequence numbers (author numbering).
    atom_names
        ``(N,)`` str array of atom names (``"CA"``, ``"OG1"``).
    chain_ids
        ``(N,)`` str array of chain identifiers.
    name
        A label for messages and plots.
    """

    coords_angstrom: np.ndarray
    elements: np.ndarray
    residue_ids: np.ndarray
    atom_names: np.ndarray
    chain_ids: np.ndarray
    name: str = ""

    def __post_init__(self) -> None:
        coords = np.asarray(self.coords_angstrom, dtype=np.float64)
        if coords.ndim != 2 or coords.shape[1] != 3:
            raise ValueError(f"coords_angstrom must be (N, 3), got {coords.shape}")
        n = coords.shape[0]
        fields = {
            "elements": np.asarray(self.elements, dtype=str),
            "residue_ids": np.asarray(self.residue_ids, dtype=np.int64),
            "atom_names": np.asarray(self.atom_names, dtype=str),
            "chain_ids": np.asarray(self.chain_ids, dtype=str),
        }
        for key, value in fields.items():
            if value.shape != (n,):
                raise ValueError(f"{key} must have shape ({n},), got {value.shape}")
            object.__setattr__(self, key, value)
        object.__setattr__(self, "coords_angstrom", coords)

    def __len__(self) -> int:
        return int(self.coords_angstrom.shape[0])

    @property
    def num_residues(self) -> int:
        """Number of distinct ``(chain, residue id)`` pairs."""
        return len(set(zip(self.chain_ids.tolist(), self.residue_ids.tolist(), strict=True)))

    def with_coords(self, coords_angstrom: np.ndarray, name: str | None = None) -> Structure:
        """Copy with new ``(N, 3)`` coordinates (Å), same atoms."""
        return Structure(
            coords_angstrom=np.array(coords_angstrom, dtype=np.float64),
            elements=self.elements,
            residue_ids=self.residue_ids,
            atom_names=self.atom_names,
            chain_ids=self.chain_ids,
            name=self.name if name is None else name,
        )

    def subset(self, index: np.ndarray) -> Structure:
        """Atoms selected by an integer or boolean index array, in that order."""
        return Structure(
            coords_angstrom=self.coords_angstrom[index],
            elements=self.elements[index],
            residue_ids=self.residue_ids[index],
            atom_names=self.atom_names[index],
            chain_ids=self.chain_ids[index],
            name=self.name,
        )

    def centroid(self) -> np.ndarray:
        """``(3,)`` mean of the atom coordinates, Å (unweighted)."""
        return self.coords_angstrom.mean(axis=0)

    def center(self) -> Structure:
        """Copy translated so that the mean of the coordinates is at the origin.

        The unweighted mean is used (not the mass-weighted centre of mass).
        """
        return self.with_coords(self.coords_angstrom - self.centroid())

    def transformed(self, rotation: np.ndarray, translation: np.ndarray) -> Structure:
        """Copy with coordinates ``x -> R x + t`` (``R`` (3, 3), ``t`` (3,) in Å)."""
        rot = np.asarray(rotation, dtype=np.float64)
        shift = np.asarray(translation, dtype=np.float64)
        return self.with_coords(self.coords_angstrom @ rot.T + shift)

    def residue_mask(self, ranges: tuple[tuple[int, int], ...]) -> np.ndarray:
        """``(N,)`` bool, True for atoms whose residue id lies in one of the inclusive ranges."""
        mask = np.zeros(len(self), dtype=bool)
        for lo, hi in ranges:
            mask |= (self.residue_ids >= lo) & (self.residue_ids <= hi)
        return mask

    def _keys(self) -> list[tuple[str, int, str]]:
        return list(
            zip(
                self.chain_ids.tolist(),
                self.residue_ids.tolist(),
                self.atom_names.tolist(),
                strict=True,
            )
        )

    def select_common(self, other: Structure) -> tuple[Structure, Structure]:
        """Atoms present in both structures, matched by ``(chain, residue id, atom name)``.

        Parameters
        ----------
        other
            The second structure.

        Returns
        -------
        (Structure, Structure)
            ``self`` and ``other`` restricted to the common atoms, both in ``self``'s
            atom order, so that atom ``i`` of one corresponds to atom ``i`` of the other.

        Raises
        ------
        ValueError
            If the structures have no atom in common.
        """
        other_index: dict[tuple[str, int, str], int] = {}
        for i, key in enumerate(other._keys()):
            other_index.setdefault(key, i)
        mine: list[int] = []
        theirs: list[int] = []
        seen: set[tuple[str, int, str]] = set()
        for i, key in enumerate(self._keys()):
            if key in other_index and key not in seen:
                seen.add(key)
                mine.append(i)
                theirs.append(other_index[key])
        if not mine:
            raise ValueError(f"structures {self.name!r} and {other.name!r} share no atoms")
        return self.subset(np.array(mine)), other.subset(np.array(theirs))

    def interpolate(self, other: Structure, t: float) -> Structure:
        """Linear interpolation ``(1 - t) self + t other`` of the common atoms' coordinates.

        Parameters
        ----------
        other
            End state (``t = 1``); atoms are matched with :meth:`select_common`.
        t
            Interpolation parameter; 0 gives ``self``, 1 gives ``other`` (values outside
            ``[0, 1]`` extrapolate).

        Returns
        -------
        Structure
            Common atoms in ``self``'s order with interpolated coordinates (Å).
        """
        a, b = self.select_common(other)
        coords = (1.0 - t) * a.coords_angstrom + t * b.coords_angstrom
        return a.with_coords(coords, name=f"{self.name}->{other.name}@{t:g}")

    def rmsd(self, other: Structure) -> float:
        """Root-mean-square deviation in Å over the common atoms (no superposition)."""
        a, b = self.select_common(other)
        diff = a.coords_angstrom - b.coords_angstrom
        return float(np.sqrt(np.mean(np.sum(diff**2, axis=1))))


def kabsch(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares rigid superposition of point set ``b`` onto ``a``.

    Parameters
    ----------
    a
        ``(N, 3)`` target coordinates (Å).
    b
        ``(N, 3)`` mobile coordinates (Å), row ``i`` corresponding to row ``i`` of ``a``.

    Returns
    -------
    (R, t)
        Proper rotation ``R`` (3, 3) and translation ``t`` (3,) minimising
        ``sum_i |a_i - (R b_i + t)|^2``.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != 3 or a.shape[0] < 3:
        raise ValueError(f"kabsch needs two (N, 3) arrays with N >= 3, got {a.shape}, {b.shape}")
    ca = a.mean(axis=0)
    cb = b.mean(axis=0)
    h = (b - cb).T @ (a - ca)  # (3, 3) cross-covariance
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    if d == 0:
        d = 1.0
    rot = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return rot, ca - rot @ cb


def _normalise_element(name: str) -> str:
    name = name.strip()
    return name[:1].upper() + name[1:].lower() if name else "X"


def read_structure(
    path: str | PathLike,
    protein_only: bool = True,
    heavy_atoms_only: bool = True,
    skip_waters: bool = True,
    name: str | None = None,
) -> Structure:
    """Read the first model of a PDB or mmCIF file with gemmi.

    Parameters
    ----------
    path
        ``.pdb``/``.ent``/``.cif``/``.mmcif`` file (optionally gzipped).
    protein_only
        Keep only standard amino-acid residues (ATOM-like records); ligands are dropped.
    heavy_atoms_only
        Drop hydrogen and deuterium atoms.
    skip_waters
        Drop water molecules.
    name
        Label for the structure; defaults to the file name stem.

    Returns
    -------
    Structure
        Atoms in file order; alternative conformations reduced to the first one.

    Raises
    ------
    ValueError
        If the file cannot be read or no atom is left after filtering (the message names
        the file).
    """
    path = Path(path)
    try:
        st = gemmi.read_structure(str(path))
    except Exception as exc:  # gemmi raises RuntimeError/ValueError/OSError variants
        raise ValueError(f"{path}: cannot read atomic model ({exc})") from exc
    if len(st) == 0:
        raise ValueError(f"{path}: no model found in file")
    st.remove_alternative_conformations()
    model = st[0]
    coords: list[tuple[float, float, float]] = []
    elements: list[str] = []
    residue_ids: list[int] = []
    atom_names: list[str] = []
    chain_ids: list[str] = []
    for chain in model:
        for res in chain:
            if skip_waters and res.is_water():
                continue
            if protein_only:
                info = gemmi.find_tabulated_residue(res.name)
                if info is None or not info.is_amino_acid():
                    continue
            for atom in res:
                if heavy_atoms_only and atom.is_hydrogen():
                    continue
                coords.append((atom.pos.x, atom.pos.y, atom.pos.z))
                elements.append(_normalise_element(atom.element.name))
                residue_ids.append(int(res.seqid.num))
                atom_names.append(atom.name)
                chain_ids.append(chain.name)
    if not coords:
        raise ValueError(f"{path}: no atoms left after filtering (protein_only={protein_only})")
    return Structure(
        coords_angstrom=np.array(coords, dtype=np.float64),
        elements=np.array(elements),
        residue_ids=np.array(residue_ids, dtype=np.int64),
        atom_names=np.array(atom_names),
        chain_ids=np.array(chain_ids),
        name=path.stem if name is None else name,
    )


def builtin_structure(name: str) -> Structure:
    """A structure shipped with cryoviz.

    Parameters
    ----------
    name
        ``"4ake"`` (adenylate kinase, open, chain A) or ``"1ake"`` (closed, chain A;
        AP5A inhibitor removed). Case-insensitive.

    Returns
    -------
    Structure
        Protein heavy atoms, in the deposited frame.

    Raises
    ------
    ValueError
        Unknown name.
    FileNotFoundError
        The data file is not part of this installation.
    """
    key = name.lower()
    if key not in BUILTIN_STRUCTURES:
        known = sorted(BUILTIN_STRUCTURES)
        raise ValueError(f"unknown built-in structure {name!r}; known: {known}")
    resource = importlib.resources.files("cryoviz") / "data" / BUILTIN_STRUCTURES[key]
    with importlib.resources.as_file(resource) as file:
        if not Path(file).is_file():
            raise FileNotFoundError(f"built-in structure {key!r}: data file {file} is missing")
        return read_structure(file, name=key)


def adenylate_kinase_pair(aligned: bool = True) -> tuple[Structure, Structure]:
    """Open (4AKE) and closed (1AKE) E. coli adenylate kinase, atom-matched.

    Parameters
    ----------
    aligned
        If True, superpose the closed state onto the open one by a Kabsch fit of the
        CORE domain only (residues 1-29, 60-121 and 160-214, see
        :data:`ADK_CORE_RESIDUES`), then translate both so that the open state's
        coordinate mean is at the origin. The remaining difference is then essentially
        the closure of the LID (~122-159) and NMP (~30-59) domains. If False, both
        are returned in their deposited frames.

    Returns
    -------
    (open, closed)
        Two structures with the same atoms in the same order.
    """
    open_state, closed_state = builtin_structure("4ake").select_common(builtin_structure("1ake"))
    if not aligned:
        return open_state, closed_state
    core = open_state.residue_mask(ADK_CORE_RESIDUES)
    rot, shift = kabsch(open_state.coords_angstrom[core], closed_state.coords_angstrom[core])
    closed_state = closed_state.transformed(rot, shift)
    origin = open_state.centroid()
    return (
        open_state.with_coords(open_state.coords_angstrom - origin),
        closed_state.with_coords(closed_state.coords_angstrom - origin),
    )
