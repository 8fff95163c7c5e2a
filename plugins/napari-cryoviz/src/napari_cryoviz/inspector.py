"""Particle inspector dock: image, model projection, residual, view and pose uncertainty."""

from __future__ import annotations

from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QSpinBox, QVBoxLayout, QWidget

from cryoviz import api

from ._common import ErrorLabel, PlotCanvas, RunPicker, start_worker
from ._session import RunSession

__all__ = ["ParticleInspector"]


class ParticleInspector(QWidget):
    """Pick a particle (by index, or from the latent explorer) and see what the model makes of it.

    Panels: the particle image at the training box, the model's image at its
    pose / shift / CTF / ``z``, the residual (same grey scale), its viewing
    direction on the sphere over the orientation density of all particles,
    and its pose posterior (top-k weights and angular spread, from
    ``poses.npz``) or, without one, the latent posterior std the encoder gave.

    The computations run in a napari worker (the GUI stays responsive); only
    the drawing happens on the GUI thread. When particles are picked faster
    than they are computed, only the latest one is drawn.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session: RunSession | None = None
        self.inspection: api.ParticleInspection | None = None
        self._orientation_cache: tuple | None = None
        self.workers: list = []
        self._request = 0
        self.picker = RunPicker(self.load_run)
        self.index = QSpinBox()
        self.index.setRange(0, 0)
        show = QPushButton("Show")
        show.clicked.connect(lambda: self.show_particle(self.index.value()))
        row = QHBoxLayout()
        row.addWidget(QLabel("particle"))
        row.addWidget(self.index)
        row.addWidget(show)
        self.canvas = PlotCanvas(4.2, 4.6)
        self.info = QLabel("")
        self.info.setWordWrap(True)
        self.errors = ErrorLabel()
        layout = QVBoxLayout(self)
        layout.addWidget(self.picker)
        layout.addLayout(row)
        layout.addWidget(self.canvas)
        layout.addWidget(self.info)
        layout.addWidget(self.errors)

    def load_run(self, run_dir: str | Path) -> None:
        """Load a run folder (errors are shown in the dock)."""
        try:
            self.set_session(RunSession(run_dir))
        except Exception as err:  # noqa: BLE001 - any failure becomes a readable message
            self.errors.show_error(err)

    def set_session(self, session: RunSession) -> None:
        """Use ``session`` (shared with the other docks by the launcher)."""
        self.errors.clear_error()
        self.session = session
        self.picker.edit.setText(str(session.path))
        self.index.setRange(0, max(0, session.n_particles - 1))
        self._orientation_cache = None

    def _orientations(self, session: RunSession
                      ) -> tuple[np.ndarray, api.OrientationDensity]:
        """Viewing directions ``(N, 3)`` and their density (computed once per session)."""
        cached = self._orientation_cache
        if cached is None or cached[0] is not session:
            directions = api.viewing_directions(session.particles.rotations)
            cached = (session, directions, api.orientation_density(directions, n_bins=12))
            self._orientation_cache = cached
        return cached[1], cached[2]

    def show_particle(self, index: int) -> None:
        """Compute the panels for particle ``index`` (a position in the run) in a worker.

        The panels are drawn, and :attr:`inspection` set, when the worker
        returns; errors are shown in the dock.
        """
        if self.session is None:
            self.errors.show_error("load a run first")
            return
        self.errors.clear_error()
        self.index.blockSignals(True)
        self.index.setValue(int(index))
        self.index.blockSignals(False)
        self._request += 1
        request, session = self._request, self.session

        def compute():
            result = session.inspect(int(index))
            directions, density = self._orientations(session)
            return request, result, directions, density

        def done(out) -> None:
            if out[0] != self._request:
                return
            self.inspection = out[1]
            self._draw(*out[1:])

        def failed(err: BaseException) -> None:
            if request == self._request:
                self.errors.show_error(err)

        start_worker(self, compute, on_done=done, on_error=failed)

    def _draw(self, result: api.ParticleInspection, directions: np.ndarray,
              density: api.OrientationDensity) -> None:
        fig = self.canvas.figure
        fig.clear()
        fig.set_layout_engine("none")
        grid = fig.add_gridspec(2, 6, left=0.03, right=0.97, top=0.95, bottom=0.1,
                                wspace=0.5, hspace=0.2, height_ratios=[1.0, 1.4])
        image, proj, resid = result.images[0], result.projections[0], result.residuals[0]
        lo, hi = float(image.min()), float(image.max())
        for k, (title, data) in enumerate((("image", image), ("model", proj),
                                           ("residual", resid))):
            ax = fig.add_subplot(grid[0, 2 * k:2 * k + 2])
            ax.imshow(data, cmap="gray", vmin=lo, vmax=hi, origin="lower")
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        ax3 = fig.add_subplot(grid[1, :3], projection="3d")
        step = max(1, len(directions) // 2000)
        d = directions[::step]
        ax3.scatter(d[:, 0], d[:, 1], d[:, 2], c=density.at(d), cmap="viridis", s=2,
                    depthshade=False)
        v = result.viewing_directions[0]
        ax3.scatter([v[0]], [v[1]], [v[2]], c="red", s=60, marker="o")
        ax3.plot([0, v[0]], [0, v[1]], [0, v[2]], color="red", lw=1.5)
        ax3.set_title("viewing direction", fontsize=8)
        ax3.set_box_aspect((1, 1, 1), zoom=1.5)
        ax3.set_axis_off()
        ax4 = fig.add_subplot(grid[1, 3:])
        text = self._uncertainty(result, ax4)
        self.canvas.draw_idle()
        ratio = float(result.residual_ratio()[0])
        z = "" if result.z is None else "  z = " + np.array2string(
            result.z[0], precision=2, separator=", ")
        self.info.setText(f"particle {result.indices[0]} (id {result.particle_ids[0]}): "
                          f"|residual| / |image| = {ratio:.3f}{z}\n{text}")

    def _uncertainty(self, result: api.ParticleInspection, ax) -> str:
        i = int(result.indices[0])
        posterior = self.session.posterior
        if posterior is not None:
            weights = np.asarray(posterior.topk_weights[i])
            ax.bar(np.arange(1, len(weights) + 1), weights, color="#5c8dd6")
            ax.set_xticks(np.arange(1, len(weights) + 1))
            ax.set_xlabel("top-k pose")
            ax.set_title("pose posterior weights", fontsize=8)
            return (f"angular spread {posterior.angular_spread_deg[i]:.1f}°, shift spread "
                    f"{posterior.shift_spread_angstrom[i]:.2f} Å")
        logvar = self.session.run.logvar
        if logvar is not None:
            std = np.exp(0.5 * np.asarray(logvar[i]))
            ax.bar(np.arange(1, len(std) + 1), std, color="#5c8dd6")
            ax.set_xticks(np.arange(1, len(std) + 1))
            ax.set_xlabel("latent dimension")
            ax.set_title("latent posterior std", fontsize=8)
            return f"latent posterior std {np.array2string(std, precision=3, separator=', ')}"
        ax.set_axis_off()
        return "this run stored no posterior spread"
