"""Training dock: pick particles and a recipe, then start / pause / resume / cancel a run.

Training runs in a napari worker (the GUI stays responsive); after every epoch
the dock updates a progress bar, a live loss plot and the current map in the
viewer (the map at ``z = 0`` for latent recipes).
"""

from __future__ import annotations

from pathlib import Path

import napari
import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, FloatSpinBox, LineEdit, SpinBox
from matplotlib.ticker import MaxNLocator
from qtpy.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from cryoviz import api

from ._common import ErrorLabel, PlotCanvas, start_worker
from .latent import show_volume

__all__ = ["TrainingDock", "TRAINING_LAYER", "train_epochs"]

TRAINING_LAYER = "cryoviz training volume"


def train_epochs(particles_path: Path, recipe: api.Recipe, output_dir: Path, resume: bool):
    """Generator for the worker: yields ``(TrainProgress, map (d, d, d), voxel size)``.

    The particles need poses unless the recipe infers them (``atomvae``).
    """
    particles = api.load_particles(particles_path, require_poses=recipe.poses == "given")
    for progress in api.iter_train(particles, recipe, output_dir, resume=resume):
        run = api.load_run(output_dir)
        z = None if run.latent_dim == 0 else np.zeros((1, run.latent_dim), dtype=np.float32)
        volume = api.eval_volumes(run, z)[0].numpy()
        yield progress, volume, float(api.voxel_size(run))


class TrainingDock(QWidget):
    """Train a recipe on a particle set inside napari."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.workers: list = []
        self.worker = None
        self.history: list[api.TrainProgress] = []
        self.first_volume: np.ndarray | None = None

        self.particles = FileEdit(label="particles", mode="r",
                                  filter="Particles (*.star *.cs *.mrcs)")
        self.output = FileEdit(label="run folder", mode="d")
        self.recipe = ComboBox(label="recipe", choices=list(api.RECIPES), value="cryodrgn")
        self.epochs = SpinBox(label="epochs", min=1, max=10_000, value=20)
        self.zdim = SpinBox(label="z dim", min=1, max=256, value=8)
        self.box = SpinBox(label="train box (0: data)", min=0, max=1024, value=0)
        self.batch_size = SpinBox(label="batch size", min=1, max=4096, value=64)
        self.lr = FloatSpinBox(label="learning rate", min=1e-6, max=1.0, step=1e-4,
                               value=1e-4)
        self.width = SpinBox(label="network width", min=4, max=2048, value=128)
        self.reference = LineEdit(label="reference", value="",
                                  tooltip="base structure (PDB / mmCIF path, or 4ake / 1ake) "
                                  "or map (MRC); needed by cryofold and atomvae")
        self.settings = LineEdit(label="other settings", value="",
                                 tooltip="more recipe settings, comma separated KEY=VALUE "
                                 "(e.g. gaussians=512, beta=0.5, depth=3): the fields of "
                                 "cryoviz.api.Recipe, as cryoviz train --set")
        self.recipe.changed.connect(self._recipe_defaults)
        self.form = Container(widgets=[self.particles, self.output, self.recipe, self.epochs,
                                       self.zdim, self.box, self.batch_size, self.lr,
                                       self.width, self.reference, self.settings])
        self.resume_box = QCheckBox("continue from the last checkpoint")

        self.start_button = QPushButton("Start")
        self.pause_button = QPushButton("Pause")
        self.resume_button = QPushButton("Resume")
        self.cancel_button = QPushButton("Cancel")
        self.start_button.clicked.connect(lambda: self.start())
        self.pause_button.clicked.connect(self.pause)
        self.resume_button.clicked.connect(self.resume)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.status = QLabel("idle")
        self.errors = ErrorLabel()
        self.canvas = PlotCanvas(4.0, 2.4)
        self.axes = self.canvas.figure.add_subplot(111)

        buttons = QHBoxLayout()
        for b in (self.start_button, self.pause_button, self.resume_button,
                  self.cancel_button):
            buttons.addWidget(b)
        layout = QVBoxLayout(self)
        layout.addWidget(self.form.native)
        layout.addWidget(self.resume_box)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.canvas)
        layout.addWidget(self.errors)
        self._recipe_defaults(self.recipe.value)
        self._set_running(False)

    # -- settings ------------------------------------------------------------------------
    def _recipe_defaults(self, name: str) -> None:
        base = api.RECIPES[name]  # the defaults (a base-structure recipe needs --reference)
        self.epochs.value = base.epochs
        self.batch_size.value = base.batch_size
        self.lr.value = base.lr
        self.width.value = base.width
        self.zdim.value = max(1, base.zdim)
        self.zdim.enabled = base.latent_dim > 0

    def recipe_from_form(self, base: api.Recipe | None = None) -> api.Recipe:
        """The recipe with the form's settings (an :class:`InputError` for bad ones).

        ``base``: a run's saved recipe (:func:`cryoviz.api.saved_recipe`), which
        gives the settings the form does not show when a run is continued.
        """
        name = self.recipe.value
        overrides = {"epochs": self.epochs.value, "batch_size": self.batch_size.value,
                     "lr": float(self.lr.value), "width": self.width.value,
                     "box": self.box.value or None,
                     "reference": self.reference.value.strip() or None}
        if api.RECIPES[name].latent_dim > 0:
            overrides["zdim"] = self.zdim.value
        for item in filter(None, (t.strip() for t in self.settings.value.split(","))):
            key, value = api.parse_setting(item, source="other settings")
            if key in overrides:
                raise api.InputError(None, "other settings", f"settings the form has no field "
                                     f"for ({key} has one)", item)
            overrides[key] = value
        return api.get_recipe(name, base=base, **overrides)

    # -- run control ---------------------------------------------------------------------
    def start(self, recipe: api.Recipe | None = None) -> None:
        """Start training (``recipe`` overrides the form, e.g. from a script)."""
        if self.worker is not None:
            return
        self.errors.clear_error()
        try:
            output = Path(str(self.output.value))
            has_output = str(self.output.value) not in ("", ".")
            if recipe is None:
                # continuing a run: the settings the form does not show are the run's
                continuing = has_output and self.resume_box.isChecked()
                recipe = self.recipe_from_form(api.saved_recipe(output) if continuing
                                               else None)
            particles = Path(str(self.particles.value))
            if not particles.is_file():
                raise api.InputError(particles, "particles", "an existing .star, .cs or "
                                     ".mrcs file", got="no such file")
            if not has_output:
                raise api.InputError(None, "run folder", "a folder for the run's outputs",
                                     got="none")
        except Exception as err:  # noqa: BLE001 - shown as a message
            self.errors.show_error(err)
            return
        self.history, self.first_volume = [], None
        self.progress.setRange(0, recipe.epochs)
        self.progress.setValue(0)
        self.status.setText(f"training {recipe.name} …")
        self.worker = start_worker(self, train_epochs, particles, recipe, output,
                                   self.resume_box.isChecked(), on_yield=self._on_epoch,
                                   on_error=self._on_error)
        self.worker.finished.connect(self._on_finished)
        self.worker.paused.connect(lambda: self.status.setText("paused"))
        self.worker.resumed.connect(lambda: self.status.setText("resumed"))
        self._set_running(True)

    def pause(self) -> None:
        """Pause after the current epoch."""
        if self.worker is not None:
            self.worker.pause()

    def resume(self) -> None:
        """Resume a paused run."""
        if self.worker is not None:
            self.worker.resume()

    def cancel(self) -> None:
        """Stop after the current epoch (the checkpoints stay: tick 'continue' to resume)."""
        if self.worker is not None:
            self.worker.quit()
            self.status.setText("cancelling after this epoch …")

    def _set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        for b in (self.pause_button, self.resume_button, self.cancel_button):
            b.setEnabled(running)

    # -- progress ------------------------------------------------------------------------
    def _on_epoch(self, item) -> None:
        progress, volume, voxel = item
        self.history.append(progress)
        if self.first_volume is None:
            self.first_volume = volume.copy()
        self.progress.setValue(progress.epoch)
        self.status.setText(f"epoch {progress.epoch}/{progress.epochs}  "
                            f"loss {progress.loss:.4g}  ({progress.seconds:.1f} s)")
        ax = self.axes
        ax.clear()
        ax.plot([p.epoch for p in self.history], [p.loss for p in self.history], "-o", ms=3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        self.canvas.draw_idle()
        show_volume(self.viewer, volume, TRAINING_LAYER, voxel, rendering="mip")

    def _on_error(self, err: BaseException) -> None:
        self.errors.show_error(err)
        self.status.setText("failed")

    def _on_finished(self) -> None:
        done = bool(self.history) and self.history[-1].done
        if done:
            self.status.setText(f"done: {self.history[-1].output_dir}")
        elif not self.errors.text():
            self.status.setText("cancelled (checkpoints kept)")
        self.worker = None
        self._set_running(False)
