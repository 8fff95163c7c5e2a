"""Sample data: a small simulated dataset and a small run trained on it.

Both are built on first use into a cache folder (``$NAPARI_CRYOVIZ_DATA``, else
``~/.cache/napari-cryoviz``) and reused afterwards; building the run takes
about a minute on two CPU cores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryoviz import api

from ._reader import read_run_layers, read_volume_layers

__all__ = ["DemoSpec", "DEMO", "cache_dir", "make_demo_dataset", "make_demo_run",
           "demo_dataset_layers", "demo_run_layers"]


@dataclass(frozen=True)
class DemoSpec:
    """Size of a demo dataset and of the run trained on it."""

    n_particles: int = 1000
    box_size: int = 32
    pixel_size_angstrom: float = 3.0
    snr: float = 0.5
    epochs: int = 12
    zdim: int = 2
    width: int = 64
    depth: int = 2
    pe_dim: int = 16
    enc_width: int = 64
    lr: float = 2e-3
    batch_size: int = 64
    seed: int = 0

    @property
    def name(self) -> str:
        """Folder name that identifies the spec."""
        return f"demo_n{self.n_particles}_b{self.box_size}_e{self.epochs}_s{self.seed}"


DEMO = DemoSpec()


def cache_dir() -> Path:
    """Where sample data is built and kept."""
    root = os.environ.get("NAPARI_CRYOVIZ_DATA")
    return Path(root) if root else Path.home() / ".cache" / "napari-cryoviz"


def make_demo_dataset(spec: DemoSpec | None = None, root: Path | None = None) -> Path:
    """Simulate (once) two states of adenylate kinase; returns the ``particles.star`` path."""
    spec = DEMO if spec is None else spec
    folder = (cache_dir() if root is None else Path(root)) / spec.name / "data"
    star = folder / "particles.star"
    if not star.is_file():
        api.simulate(api.SimulationConfig(
            n_particles=spec.n_particles, box_size=spec.box_size,
            pixel_size_angstrom=spec.pixel_size_angstrom, snr=spec.snr,
            states=("4ake", "1ake"), seed=spec.seed), folder)
    return star


def demo_recipe(spec: DemoSpec | None = None, epochs: int | None = None) -> api.Recipe:
    """The small cryoDRGN-style recipe of the demo run."""
    spec = DEMO if spec is None else spec
    return api.get_recipe("cryodrgn", epochs=spec.epochs if epochs is None else epochs,
                          zdim=spec.zdim, width=spec.width, depth=spec.depth,
                          pe_dim=spec.pe_dim, enc_width=spec.enc_width, enc_depth=1,
                          lr=spec.lr, batch_size=spec.batch_size, seed=spec.seed)


def make_demo_run(spec: DemoSpec | None = None, root: Path | None = None) -> Path:
    """Train (once) the demo recipe on the demo dataset; returns the run folder."""
    spec = DEMO if spec is None else spec
    star = make_demo_dataset(spec, root)
    run_dir = star.parent.parent / "run"
    if not (run_dir / "latents.npz").is_file():
        api.train(api.load_particles(star), demo_recipe(spec), run_dir)
    return run_dir


def demo_dataset_layers() -> list[tuple]:
    """Sample data: the true maps of the demo dataset and its particle stack."""
    from ._reader import read_stack_layers

    star = make_demo_dataset()
    layers = []
    for state in sorted((star.parent / "truth").glob("state_*.mrc")):
        layers.extend(read_volume_layers(str(state)))
    layers.extend(read_stack_layers(str(star)))
    return layers


def demo_run_layers() -> list[tuple]:
    """Sample data: the demo run's map, with its latents and log in the layer metadata."""
    return read_run_layers(str(make_demo_run()))
