"""The versioned, seeded benchmark suite: simulated datasets made by ``cryoviz simulate``.

Suite version :data:`SUITE_VERSION`. Every dataset is a
:class:`cryoviz.simulate.SimulationConfig` fixed by four choices:

=================  ================================================================
kind               ``homogeneous`` (open adenylate kinase 4AKE, asymmetric),
                   ``mixture`` (open 4AKE / closed 1AKE, 50 / 50),
                   ``continuous`` (linear path open -> closed, uniform coordinate),
                   ``compositional`` (4AKE with / without its LID domain,
                   residues 122-159, 50 / 50; given to the simulator as two maps),
                   ``inplane`` (4AKE seen from one direction, uniform in-plane
                   angles, CTF unknown to the recipe:
                   :func:`cryoviz.inference.vaegan.data.simulate_inplane`;
                   ``uniform`` poses only)
snr                ``hi`` (0.1) or ``lo`` (0.01, CryoBench's SNR)
poses              ``uniform`` on SO(3) or ``preferred`` (half of the particles
                   within ~20° of one view, von Mises-Fisher kappa 10)
size               ``tiny`` (CI), ``small`` (CPU, under an hour), ``full`` (GPU,
                   CryoBench scale)
=================  ================================================================

Sizes (box, pixel size, particles): ``tiny`` 32 px, 4 Å, 400; ``small`` 64 px,
2 Å, 4,000; ``full`` 128 px, 1 Å, 100,000. The seed of a dataset is a fixed
function of its name (CRC32), so every dataset is reproducible by name alone;
``simulation.json`` in its folder records the whole configuration and the
suite version.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from cryoviz.errors import InputError
from cryoviz.gaussians import gaussians_volume, structure_to_gaussians
from cryoviz.inference.vaegan.data import InplaneSimulationConfig, simulate_inplane
from cryoviz.io.mrc import write_volume
from cryoviz.simulate import SimulationConfig, simulate
from cryoviz.structure import Structure, adenylate_kinase_pair

__all__ = [
    "SUITE_VERSION", "SIZES", "KINDS", "SNRS", "POSES", "DatasetSpec", "suite_datasets",
    "simulation_config", "build_dataset", "write_structure_maps", "LID_RESIDUES",
    "SINGLE_VIEW_KINDS",
]

SUITE_VERSION = "1"

#: ``size -> (box_size, pixel_size_angstrom, n_particles)``
SIZES: dict[str, tuple[int, float, int]] = {
    "tiny": (32, 4.0, 400),
    "small": (64, 2.0, 4_000),
    "full": (128, 1.0, 100_000),
}
KINDS = ("homogeneous", "mixture", "continuous", "compositional", "inplane")
#: Kinds with one viewing direction (2-D data): no ``preferred`` pose distribution.
SINGLE_VIEW_KINDS = ("inplane",)
SNRS: dict[str, float] = {"hi": 0.1, "lo": 0.01}
POSES = ("uniform", "preferred")

#: Adenylate kinase LID domain (the subunit absent in half of the compositional set).
LID_RESIDUES = ((122, 159),)


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of the suite.

    Attributes
    ----------
    kind
        One of :data:`KINDS`.
    snr
        ``"hi"`` or ``"lo"`` (:data:`SNRS`).
    poses
        ``"uniform"`` or ``"preferred"``.
    size
        ``"tiny"``, ``"small"`` or ``"full"`` (:data:`SIZES`).
    """

    kind: str
    snr: str = "hi"
    poses: str = "uniform"
    size: str = "tiny"

    def __post_init__(self) -> None:
        for field, value, allowed in (("kind", self.kind, KINDS), ("snr", self.snr, SNRS),
                                      ("poses", self.poses, POSES), ("size", self.size, SIZES)):
            if value not in allowed:
                raise InputError(None, field, f"one of {', '.join(allowed)}", value)
        if self.kind in SINGLE_VIEW_KINDS and self.poses != "uniform":
            raise InputError(None, "poses", f"'uniform' for the {self.kind} kind (one "
                             "viewing direction, uniform in-plane angles)", self.poses)

    @property
    def name(self) -> str:
        """``<kind>-<snr>-<poses>-<size>``, e.g. ``mixture-hi-uniform-tiny``."""
        return f"{self.kind}-{self.snr}-{self.poses}-{self.size}"

    @property
    def seed(self) -> int:
        """Seed derived from the name (CRC32 of ``v<version>/<name>``)."""
        return zlib.crc32(f"v{SUITE_VERSION}/{self.name}".encode()) % (2**31)

    @property
    def n_states(self) -> int:
        """Distinct true conformations (1 homogeneous, 2 discrete, 0 = continuous)."""
        return {"homogeneous": 1, "mixture": 2, "compositional": 2, "continuous": 0,
                "inplane": 1}[self.kind]

    @staticmethod
    def from_name(name: str) -> DatasetSpec:
        """Parse :attr:`name`."""
        parts = name.split("-")
        if len(parts) != 4:
            raise InputError(None, "dataset", "<kind>-<snr>-<poses>-<size>", name)
        return DatasetSpec(*parts)


def suite_datasets(size: str, kinds: tuple[str, ...] = KINDS,
                   snrs: tuple[str, ...] = tuple(SNRS),
                   poses: tuple[str, ...] = POSES) -> list[DatasetSpec]:
    """All datasets of a size: ``kinds x snrs x poses`` (single-view kinds: uniform only)."""
    if size not in SIZES:
        raise InputError(None, "suite", f"one of {', '.join(SIZES)}", size)
    return [DatasetSpec(k, s, p, size) for k in kinds for s in snrs for p in poses
            if not (k in SINGLE_VIEW_KINDS and p != "uniform")]


def simulation_config(spec: DatasetSpec, states: tuple[str, ...] | None = None
                      ) -> SimulationConfig | InplaneSimulationConfig:
    """The simulator settings of a dataset (``states`` overrides the state list: maps)."""
    box, apix, n = SIZES[spec.size]
    if spec.kind == "inplane":
        return InplaneSimulationConfig(n_particles=n, box_size=box, pixel_size_angstrom=apix,
                                       snr=SNRS[spec.snr], seed=spec.seed)
    default_states = {"homogeneous": ("4ake",), "mixture": ("4ake", "1ake"),
                      "continuous": ("4ake", "1ake"), "compositional": ("4ake", "4ake-lid")}
    return SimulationConfig(
        n_particles=n, box_size=box, pixel_size_angstrom=apix, snr=SNRS[spec.snr],
        states=states or default_states[spec.kind],
        ensemble="continuous" if spec.kind == "continuous" else "discrete",
        pose_distribution=spec.poses, seed=spec.seed,
    )


def write_structure_maps(structures: dict[str, Structure], folder: Path, box: int,
                         apix: float) -> list[str]:
    """Render each structure (B 20 Å², its own frame) as ``folder/<name>``; the paths.

    Parameters
    ----------
    structures
        File name (``*.mrc``) to structure.
    box, apix
        Grid of the ``(box, box, box)`` maps and its voxel size, Å.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, structure in structures.items():
        volume = gaussians_volume(structure_to_gaussians(structure, bfactor_a2=20.0), box, apix)
        write_volume(folder / name, volume.numpy().astype(np.float32), apix)
        paths.append(str(folder / name))
    return paths


def _compositional_maps(spec: DatasetSpec, folder: Path) -> tuple[str, str]:
    """Write the full and the LID-less 4AKE maps (same frame) and return their paths."""
    box, apix, _ = SIZES[spec.size]
    open_state, _ = adenylate_kinase_pair(aligned=True)
    without_lid = open_state.subset(~open_state.residue_mask(LID_RESIDUES))
    full, no_lid = write_structure_maps({"4ake_full.mrc": open_state,
                                         "4ake_no_lid.mrc": without_lid}, folder, box, apix)
    return full, no_lid


def build_dataset(spec: DatasetSpec, root: str | Path, force: bool = False) -> Path:
    """Simulate ``spec`` into ``root/<name>`` unless an identical dataset is already there.

    A dataset counts as present when its ``simulation.json`` carries the same
    suite version and configuration.

    Returns
    -------
    Path
        The dataset folder (``particles.star``, ``truth/``, ``simulation.json``).
    """
    folder = Path(root) / spec.name
    states = None
    if spec.kind == "compositional":
        states = _compositional_maps(spec, folder / "inputs")
    config = simulation_config(spec, states)
    record = folder / "bench_dataset.json"
    wanted = {"suite_version": SUITE_VERSION, "dataset": spec.name,
              "config": json.loads(json.dumps(asdict(config), default=list))}
    if not force and record.is_file() and (folder / "particles.star").is_file():
        if json.loads(record.read_text()) == wanted:
            return folder
    if isinstance(config, InplaneSimulationConfig):
        simulate_inplane(config, folder)
    else:
        simulate(replace(config), folder)
    record.write_text(json.dumps(wanted, indent=2))
    return folder
