"""Open napari with the cryoviz docks on a run (``cryoviz view RUN``)."""

from __future__ import annotations

from os import PathLike

import napari

from ._reader import read_run_layers
from ._session import RunSession
from .inspector import ParticleInspector
from .latent import LatentExplorer
from .training import TrainingDock
from .volume_view import VolumeView

__all__ = ["open_run", "launch"]


def open_run(viewer: napari.Viewer, run_dir: str | PathLike) -> dict[str, object]:
    """Add the run's map and the four docks, all on one loaded run.

    Clicking a point in the latent explorer shows that particle in the inspector.

    Returns
    -------
    dict
        The docks by name: ``latent``, ``volume``, ``inspector``, ``training``.
    """
    session = RunSession(run_dir)
    for data, kwargs, layer_type in read_run_layers(str(session.path)):
        getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    latent = LatentExplorer(viewer)
    volume = VolumeView(viewer)
    inspector = ParticleInspector(viewer)
    training = TrainingDock(viewer)
    source = session.run.config.get("data", {}).get("source")
    if source:
        training.particles.value = source
    training.output.value = str(session.path)
    training.resume_box.setChecked(True)
    viewer.window.add_dock_widget(latent, name="Latent explorer", area="right")
    viewer.window.add_dock_widget(inspector, name="Particle inspector", area="right")
    viewer.window.add_dock_widget(volume, name="Volume view", area="left")
    viewer.window.add_dock_widget(training, name="Training", area="left")
    latent.set_session(session)
    inspector.set_session(session)
    latent.particle_clicked.connect(inspector.show_particle)
    return {"latent": latent, "volume": volume, "inspector": inspector, "training": training}


def launch(run_dir: str | PathLike, block: bool = True) -> napari.Viewer:
    """Create a viewer with :func:`open_run` and run napari's event loop (when ``block``)."""
    viewer = napari.Viewer(title=f"cryoviz: {run_dir}")
    open_run(viewer, run_dir)
    if block:
        napari.run()
    return viewer
