"""Simulated particle datasets with full ground truth.

A dataset is drawn from one or more states (atomic models turned into
Gaussian-mixture potentials, or maps), either as a discrete mixture with given
weights or along a continuous linear path between two atom-matched
structures. Each particle gets a pose (uniform on SO(3) or with a preferred
viewing direction), a shift, CTF parameters and white noise at a given SNR
(``cryoviz.noise``: SNR = var(clean image) / sigma^2 over the box).

Projections of atomic models are analytic (:func:`project_gaussians_fourier`),
so the images contain no interpolation error; projections of maps use the
Fourier-slice forward model. Outputs in the dataset folder:

* ``particles.mrcs`` and ``particles.star`` (RELION 3.1, optics group);
* ``truth/`` with one map per state (``state_<k>.mrc``; for a path, maps at
  ``n_path_volumes`` evenly spaced path coordinates) and ``truth.npz``
  (rotations, shifts, CTF fields, ``labels`` (state index or path level),
  ``path_coordinate``, ``noise_sigma``);
* ``simulation.json``, the configuration.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from cryoviz.ctf import CTFParams
from cryoviz.errors import InputError
from cryoviz.fourier import centered_irfft2
from cryoviz.gaussian_projection import project_gaussians_fourier
from cryoviz.gaussians import GaussianMixture, gaussians_volume, structure_to_gaussians
from cryoviz.geometry import euler_relion_to_matrix, random_rotations
from cryoviz.imaging import apply_shift_and_ctf, forward_fourier, volume_to_fourier
from cryoviz.io.mrc import StackWriter, read_volume, write_volume
from cryoviz.io.particles import ParticleSet
from cryoviz.io.star import write_star
from cryoviz.noise import noise_sigma_for_snr
from cryoviz.structure import Structure, adenylate_kinase_pair, builtin_structure, read_structure

__all__ = [
    "SimulationConfig",
    "SimulationProgress",
    "iter_simulate",
    "simulate",
    "sample_rotations",
    "sample_ctf",
]


@dataclass(frozen=True)
class SimulationConfig:
    """Settings of a simulated dataset.

    Attributes
    ----------
    n_particles, box_size, pixel_size_angstrom, snr
        Size, sampling and noise level.
    states
        Built-in structure names (``4ake``, ``1ake``), paths to PDB / mmCIF
        files, or paths to maps (``.mrc``, box and voxel size must match).
    ensemble
        ``"discrete"`` (each particle from one state, drawn with ``weights``)
        or ``"continuous"`` (a linear path from ``states[0]`` to ``states[1]``,
        path coordinate uniform in [0, 1], quantised to ``n_path_levels``).
    weights
        Relative state weights for ``discrete`` (default: equal).
    bfactor_a2
        B-factor applied to the atomic potential (Å^2).
    pose_distribution
        ``"uniform"`` or ``"preferred"``: a fraction ``preferred_fraction`` of
        the particles has viewing directions drawn from a von Mises-Fisher
        distribution of concentration ``preferred_kappa`` around +z.
    shift_sigma_angstrom
        Standard deviation of the Gaussian particle shifts.
    defocus_range_angstrom, max_astigmatism_angstrom, voltage_kv, cs_mm, amplitude_contrast
        CTF distribution: defocus U uniform in the range, V = U - uniform(0, max),
        astigmatism angle uniform in [0, 180).
    seed
        Everything is drawn from generators seeded with this.
    """

    n_particles: int = 10_000
    box_size: int = 64
    pixel_size_angstrom: float = 2.0
    snr: float = 0.1
    states: tuple[str, ...] = ("4ake",)
    ensemble: str = "discrete"
    weights: tuple[float, ...] | None = None
    bfactor_a2: float = 20.0
    pose_distribution: str = "uniform"
    preferred_fraction: float = 0.5
    preferred_kappa: float = 10.0
    shift_sigma_angstrom: float = 2.0
    defocus_range_angstrom: tuple[float, float] = (10_000.0, 25_000.0)
    max_astigmatism_angstrom: float = 500.0
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.1
    n_path_levels: int = 100
    n_path_volumes: int = 10
    seed: int = 0
    batch_size: int = 256

    def validate(self) -> None:
        """Raise :class:`InputError` for settings that cannot work."""
        if self.n_particles < 1:
            raise InputError(None, "n_particles", "a positive integer", self.n_particles)
        if self.box_size < 8:
            raise InputError(None, "box_size", "at least 8 pixels", self.box_size)
        if self.pixel_size_angstrom <= 0:
            raise InputError(None, "pixel_size_angstrom", "> 0", self.pixel_size_angstrom)
        if self.snr <= 0 or not math.isfinite(self.snr):
            raise InputError(None, "snr", "a finite number > 0", self.snr)
        if self.ensemble not in ("discrete", "continuous"):
            raise InputError(None, "ensemble", "'discrete' or 'continuous'", self.ensemble)
        if self.ensemble == "continuous" and len(self.states) != 2:
            raise InputError(None, "states", "exactly two states for a continuous path",
                             len(self.states))
        if self.weights is not None and len(self.weights) != len(self.states):
            raise InputError(None, "weights", f"{len(self.states)} values (one per state)",
                             len(self.weights))
        if self.pose_distribution not in ("uniform", "preferred"):
            raise InputError(None, "pose_distribution", "'uniform' or 'preferred'",
                             self.pose_distribution)
        low, high = self.defocus_range_angstrom
        if not 0 < low <= high:
            raise InputError(None, "defocus_range_angstrom", "0 < min <= max", (low, high))


@dataclass(frozen=True)
class SimulationProgress:
    """Progress of :func:`iter_simulate`: particles written so far."""

    done: int
    total: int
    output_dir: Path


def _load_state(spec: str) -> Structure | Path:
    """A built-in or file structure, or the path of a map."""
    path = Path(spec)
    if spec.lower() in ("4ake", "1ake"):
        return builtin_structure(spec)
    if not path.exists():
        raise InputError(spec, "state", "a built-in name (4ake, 1ake) or an existing file",
                         "no such file")
    if path.suffix.lower() in (".mrc", ".map"):
        return path
    return read_structure(path)


def sample_rotations(config: SimulationConfig, generator: torch.Generator) -> torch.Tensor:
    """``(N, 3, 3)`` float64 rotations from the configured pose distribution."""
    n = config.n_particles
    rotations = random_rotations(n, generator=generator, dtype=torch.float64)
    if config.pose_distribution == "uniform":
        return rotations
    n_pref = int(round(config.preferred_fraction * n))
    kappa = config.preferred_kappa
    # von Mises-Fisher on S^2 around +z: cos(tilt) = 1 + log(u + (1 - u) e^{-2 kappa}) / kappa
    u = torch.rand(n_pref, generator=generator, dtype=torch.float64)
    cos_tilt = 1.0 + torch.log(u + (1.0 - u) * math.exp(-2.0 * kappa)) / kappa
    tilt = torch.rad2deg(torch.arccos(cos_tilt.clamp(-1.0, 1.0)))
    rot = torch.rand(n_pref, generator=generator, dtype=torch.float64) * 360.0
    psi = torch.rand(n_pref, generator=generator, dtype=torch.float64) * 360.0
    preferred = euler_relion_to_matrix(torch.stack([rot, tilt, psi], dim=-1))
    which = torch.randperm(n, generator=generator)[:n_pref]
    rotations[which] = preferred
    return rotations


def sample_ctf(config: SimulationConfig, generator: torch.Generator) -> CTFParams:
    """CTF parameters of the ``N`` particles."""
    n = config.n_particles
    low, high = config.defocus_range_angstrom
    u = low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)
    v = u - config.max_astigmatism_angstrom * torch.rand(n, generator=generator,
                                                          dtype=torch.float64)
    angle = 180.0 * torch.rand(n, generator=generator, dtype=torch.float64)
    return CTFParams.from_arrays(
        defocus_u_angstrom=u, defocus_v_angstrom=v, astigmatism_angle_deg=angle,
        voltage_kv=config.voltage_kv, cs_mm=config.cs_mm,
        amplitude_contrast=config.amplitude_contrast,
    )


class _StateRenderer:
    """Renders clean image transforms for particles of one state."""

    def __init__(self, source: GaussianMixture | torch.Tensor, config: SimulationConfig):
        self.config = config
        self.mixture = source if isinstance(source, GaussianMixture) else None
        self.volume_ft = None if self.mixture is not None else volume_to_fourier(source)

    def project(self, rotations: torch.Tensor) -> torch.Tensor:
        c = self.config
        if self.mixture is not None:
            return project_gaussians_fourier(self.mixture, rotations, c.box_size,
                                             c.pixel_size_angstrom)
        return forward_fourier(self.volume_ft, rotations.to(torch.float32), c.box_size,
                               c.pixel_size_angstrom)


def _states_and_truth(config: SimulationConfig) -> tuple[list, list[torch.Tensor], np.ndarray]:
    """Renderable sources per label, their truth maps, and path coordinates per label."""
    loaded = [_load_state(s) for s in config.states]
    box, apix = config.box_size, config.pixel_size_angstrom

    def as_source(item):
        if isinstance(item, Path):
            volume, voxel = read_volume(item)
            if volume.shape != (box,) * 3:
                raise InputError(item, "box size", f"{box}^3 voxels", volume.shape)
            if voxel is not None and abs(voxel - apix) > 1e-3 * apix:
                raise InputError(item, "voxel size", f"{apix} Å", voxel)
            return torch.as_tensor(volume, dtype=torch.float32)
        return structure_to_gaussians(item, bfactor_a2=config.bfactor_a2)

    if config.ensemble == "continuous":
        first, second = loaded
        if not (isinstance(first, Structure) and isinstance(second, Structure)):
            raise InputError(None, "states", "two atomic models for a continuous path",
                             config.states)
        if {s.lower() for s in config.states} == {"4ake", "1ake"}:
            open_state, closed_state = adenylate_kinase_pair(aligned=True)
            first, second = ((open_state, closed_state) if config.states[0].lower() == "4ake"
                             else (closed_state, open_state))
        else:
            first, second = first.select_common(second)
        levels = np.linspace(0.0, 1.0, config.n_path_levels)
        sources = [as_source(first.interpolate(second, float(t))) for t in levels]
        truth_t = np.linspace(0.0, 1.0, config.n_path_volumes)
        truth = [gaussians_volume(as_source(first.interpolate(second, float(t))), box, apix)
                 for t in truth_t]
        return sources, truth, levels
    if {s.lower() for s in config.states} == {"4ake", "1ake"}:
        open_state, closed_state = adenylate_kinase_pair(aligned=True)
        loaded = [open_state if s.lower() == "4ake" else closed_state for s in config.states]
    else:
        loaded = [item.center() if isinstance(item, Structure) else item for item in loaded]
    sources = [as_source(item) for item in loaded]
    truth = [s if isinstance(s, torch.Tensor) else gaussians_volume(s, box, apix)
             for s in sources]
    return sources, truth, np.zeros(len(sources))


def iter_simulate(config: SimulationConfig, output_dir: str | Path) -> Iterator[SimulationProgress]:
    """Simulate a dataset into ``output_dir``, yielding progress after each batch."""
    config.validate()
    out = Path(output_dir)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(config.seed)
    n = config.n_particles
    sources, truth_maps, level_coords = _states_and_truth(config)
    if config.ensemble == "continuous":
        labels = torch.randint(len(sources), (n,), generator=generator).numpy()
        path_coordinate = level_coords[labels]
    else:
        weights = np.ones(len(sources)) if config.weights is None else np.asarray(config.weights)
        probs = torch.as_tensor(weights / weights.sum(), dtype=torch.float64)
        labels = torch.multinomial(probs, n, replacement=True, generator=generator).numpy()
        path_coordinate = np.full(n, np.nan)
    rotations = sample_rotations(config, generator)
    shifts = config.shift_sigma_angstrom * torch.randn(n, 2, generator=generator,
                                                        dtype=torch.float64)
    ctf = sample_ctf(config, generator)
    noise_gen = torch.Generator().manual_seed(config.seed + 1)
    renderers = [_StateRenderer(s, config) for s in sources]

    def clean_batch(index: np.ndarray) -> torch.Tensor:
        ft = torch.zeros((len(index), config.box_size, config.box_size // 2 + 1),
                         dtype=torch.complex64)
        for label in np.unique(labels[index]):
            pos = np.flatnonzero(labels[index] == label)
            sel = torch.as_tensor(index[pos])
            ft[torch.as_tensor(pos)] = renderers[label].project(rotations[sel]).to(torch.complex64)
        sel = torch.as_tensor(index)
        ft = apply_shift_and_ctf(ft, config.pixel_size_angstrom,
                                 shifts[sel].to(torch.float32), ctf.subset(sel))
        return centered_irfft2(ft, config.box_size)

    probe = clean_batch(np.arange(min(n, 1024)))
    sigma = noise_sigma_for_snr(probe, config.snr)
    stack_path = out / "particles.mrcs"
    with StackWriter(stack_path, config.box_size, config.pixel_size_angstrom, n) as writer:
        for start in range(0, n, config.batch_size):
            index = np.arange(start, min(n, start + config.batch_size))
            clean = clean_batch(index)
            noise = torch.randn(clean.shape, generator=noise_gen, dtype=torch.float32)
            writer.write((clean + sigma * noise).numpy())
            yield SimulationProgress(done=int(index[-1]) + 1, total=n, output_dir=out)

    for k, volume in enumerate(truth_maps):
        name = f"path_{k:02d}.mrc" if config.ensemble == "continuous" else f"state_{k}.mrc"
        write_volume(out / "truth" / name, volume.numpy().astype(np.float32),
                     config.pixel_size_angstrom)
    half_set = torch.randperm(n, generator=generator).numpy() % 2
    particles = ParticleSet(
        image_stacks=[stack_path],
        stack_index=np.zeros(n, dtype=np.int64),
        image_index=np.arange(n, dtype=np.int64),
        box_size=config.box_size,
        pixel_size_angstrom=config.pixel_size_angstrom,
        rotations=rotations.numpy(),
        shifts_angstrom=shifts.numpy(),
        ctf=ctf,
        particle_ids=np.arange(n, dtype=np.int64),
        half_set=half_set,
    )
    write_star(particles, out / "particles.star")
    np.savez(
        out / "truth" / "truth.npz",
        rotations=rotations.numpy(), shifts_angstrom=shifts.numpy(), labels=labels,
        path_coordinate=path_coordinate, noise_sigma=np.float64(sigma),
        half_set=half_set, **{f"ctf_{k}": v for k, v in ctf.as_numpy().items()},
    )
    settings = asdict(config)
    settings["noise_sigma"] = sigma
    (out / "simulation.json").write_text(json.dumps(settings, indent=2, default=list))


def simulate(config: SimulationConfig, output_dir: str | Path) -> Path:
    """Run :func:`iter_simulate` to the end; return the dataset folder."""
    for _ in iter_simulate(config, output_dir):
        pass
    return Path(output_dir)
