"""Latent explorer dock: scatter of z, click to decode, lasso to select, paths as movies."""

from __future__ import annotations

import time
from pathlib import Path

import napari
import numpy as np
from matplotlib.widgets import LassoSelector
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ._common import ErrorLabel, PlotCanvas, RunPicker, start_worker
from ._session import LatentPath, RunSession

__all__ = ["LatentExplorer", "VOLUME_LAYER", "PATH_LAYER", "PREVIEW_FRACTION", "show_volume",
           "data_limits"]

VOLUME_LAYER = "cryoviz z volume"
PATH_LAYER = "cryoviz latent path"
PREVIEW_FRACTION = 0.5  # the preview keeps frequencies below this fraction of the band
PATH_KINDS = {"along PC (x axis)": "pc", "straight line (last 2 clicks)": "straight",
              "kNN graph (last 2 clicks)": "knn"}


def data_limits(data: np.ndarray) -> tuple[float, float]:
    """``(min, max)`` of ``data`` as contrast limits (widened when the map is flat)."""
    lo, hi = float(np.min(data)), float(np.max(data))
    return lo, (hi if hi > lo else lo + 1e-6)


def show_volume(viewer: napari.Viewer, data: np.ndarray, name: str, voxel_size: float,
                contrast_limits: tuple[float, float] | None = None,
                **kwargs) -> napari.layers.Image:
    """Put ``data`` (``(..., D, D, D)``) in layer ``name``.

    An existing layer of the same shape and scale gets the new data in place
    (much cheaper than a new layer: no new visual, no new texture object);
    otherwise the layer is (re)created with ``kwargs``. ``contrast_limits``:
    fixed limits to use; ``None`` computes them from ``data``.
    """
    scale = (1.0,) * (data.ndim - 3) + (voxel_size,) * 3
    limits = data_limits(data) if contrast_limits is None else tuple(contrast_limits)
    if name in viewer.layers:
        layer = viewer.layers[name]
        if layer.data.shape == data.shape and np.allclose(layer.scale, scale):
            layer.data = data
            if tuple(layer.contrast_limits) != limits:
                layer.contrast_limits = limits
            return layer
        viewer.layers.remove(name)
    return viewer.add_image(data, name=name, scale=scale, contrast_limits=limits, **kwargs)


class LatentExplorer(QWidget):
    """2-D scatter of a run's latents (PCA or UMAP, any two axes), coloured by a column.

    Click a point: the map at that particle's ``z`` is decoded (in a worker) and
    shown in 3-D: with "low-pass preview" on, first the map with only the
    frequencies below half the band (about 1/8 of the work), then the full
    map in the same layer (data replaced in place; contrast limits fixed from
    the first full map of the run at that box). Lasso: selects particles,
    exported as STAR / ``.cs`` / index pickle. Paths (along a PC, straight
    between the last two clicks, or the kNN-graph path between them) are drawn
    on the scatter and become a 4-D layer whose first axis is napari's time
    slider.

    Signals
    -------
    particle_clicked(int)
        The position of the particle picked on the scatter.
    """

    particle_clicked = Signal(int)

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session: RunSession | None = None
        self.workers: list = []
        self.clicked: list[int] = []
        self.selection = np.zeros(0, dtype=np.int64)
        self.path: LatentPath | None = None
        self.last_decode_seconds: float | None = None  # click -> full map's data set
        self.last_preview_seconds: float | None = None  # click -> preview's data set
        self.shown_stages: list[str] = []
        self._limits: dict[int, tuple[float, float]] = {}
        self._click_id = 0
        self._decode_worker = None
        self._lasso: LassoSelector | None = None
        self._click_artist = None  # the clicked-point markers on the scatter (blitted)
        self._background = None  # the canvas without the markers, saved at each full draw

        self.picker = RunPicker(self.load_run)
        self.embedding_box = QComboBox()
        self.embedding_box.addItems(["pca", "umap"])
        self.x_axis, self.y_axis = QSpinBox(), QSpinBox()
        self.y_axis.setValue(1)
        self.colour_box = QComboBox()
        self.decode_box = QSpinBox()
        self.decode_box.setRange(8, 512)
        self.decode_box.setSingleStep(2)
        self.preview = QCheckBox("low-pass preview first")
        self.preview.setChecked(True)
        self.preview.setToolTip("show the map's low frequencies (half the band) while the "
                                "full map is decoded")
        self.fast_decode = QCheckBox("fast decode (bfloat16)")
        self.fast_decode.setToolTip("run the map network in bfloat16 where the CPU or GPU does "
                                    "so natively: maps within a few 1e-3 of float32 ones")
        self.fast_decode.toggled.connect(self._set_fast_decode)
        self.path_kind = QComboBox()
        self.path_kind.addItems(list(PATH_KINDS))
        self.path_points = QSpinBox()
        self.path_points.setRange(2, 100)
        self.path_points.setValue(10)
        for box in (self.embedding_box, self.colour_box):
            box.currentIndexChanged.connect(self.redraw)
        for spin in (self.x_axis, self.y_axis):
            spin.valueChanged.connect(self.redraw)

        self.canvas = PlotCanvas(4.0, 3.6)
        self.axes = self.canvas.figure.add_subplot(111)
        self.canvas.mpl_connect("button_press_event", self._on_press)
        self.canvas.mpl_connect("draw_event", self._on_draw)
        self.status = QLabel("load a run")
        self.status.setWordWrap(True)
        self.errors = ErrorLabel()

        lasso_button = QPushButton("Lasso")
        lasso_button.setCheckable(True)
        lasso_button.toggled.connect(self.set_lasso)
        self.lasso_button = lasso_button
        export_button = QPushButton("Export selection…")
        export_button.clicked.connect(self._export_dialog)
        path_button = QPushButton("Make path")
        path_button.clicked.connect(lambda: self.make_path())

        form = QFormLayout()
        form.addRow("embedding", self.embedding_box)
        axes_row = QHBoxLayout()
        axes_row.addWidget(self.x_axis)
        axes_row.addWidget(self.y_axis)
        form.addRow("axes (x, y)", axes_row)
        form.addRow("colour by", self.colour_box)
        form.addRow("decode box", self.decode_box)
        form.addRow("", self.preview)
        form.addRow("", self.fast_decode)
        form.addRow("path", self.path_kind)
        form.addRow("path volumes", self.path_points)
        buttons = QHBoxLayout()
        for b in (lasso_button, export_button, path_button):
            buttons.addWidget(b)
        layout = QVBoxLayout(self)
        layout.addWidget(self.picker)
        layout.addLayout(form)
        layout.addWidget(self.canvas)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        layout.addWidget(self.errors)

    # -- loading -------------------------------------------------------------------------
    def load_run(self, run_dir: str | Path) -> None:
        """Load a run folder (errors are shown in the dock)."""
        try:
            self.set_session(RunSession(run_dir))
        except Exception as err:  # noqa: BLE001 - any failure becomes a readable message
            self.errors.show_error(err)

    def set_session(self, session: RunSession) -> None:
        """Show ``session`` (shared with the other docks by the launcher)."""
        self.errors.clear_error()
        self.session = session
        self.picker.edit.setText(str(session.path))
        self.clicked, self.path = [], None
        self._limits = {}
        self.selection = np.zeros(0, dtype=np.int64)
        if session.latent_dim == 0 or session.run.mu is None:
            self.status.setText("this run has no latent space (homogeneous)")
            self.canvas.figure.clear()
            self.axes = self.canvas.figure.add_subplot(111)
            self.canvas.draw_idle()
            return
        n_pcs = session.embedding("pca").shape[1]
        for spin in (self.x_axis, self.y_axis):
            spin.blockSignals(True)
            spin.setRange(0, max(0, n_pcs - 1))
            spin.blockSignals(False)
        self.y_axis.setValue(min(1, n_pcs - 1))
        self.decode_box.setValue(session.run.box_size)
        self.fast_decode.blockSignals(True)
        self.fast_decode.setEnabled(session.fast_decode_available)
        self.fast_decode.setChecked(session.decode_precision == "bf16")
        self.fast_decode.blockSignals(False)
        # prepare the decoder's lattice now, so that the first click does not wait for it
        start_worker(self, session.decoder, session.run.box_size,
                     on_error=self.errors.show_error)
        self.colour_box.blockSignals(True)
        self.colour_box.clear()
        self.colour_box.addItems(["none", *session.columns()])
        self.colour_box.blockSignals(False)
        self.redraw()

    # -- scatter -------------------------------------------------------------------------
    def axes_pair(self) -> tuple[int, int]:
        """The embedding columns on the x and y axes (UMAP has only two)."""
        if self.embedding_box.currentText() == "umap":
            return 0, 1
        return int(self.x_axis.value()), int(self.y_axis.value())

    def coords_2d(self) -> np.ndarray:
        """``(N, 2)`` scatter coordinates."""
        emb = self.session.embedding(self.embedding_box.currentText())
        if emb.shape[1] == 1:
            emb = np.column_stack([emb, np.zeros(len(emb))])
        x, y = self.axes_pair()
        return emb[:, [min(x, emb.shape[1] - 1), min(y, emb.shape[1] - 1)]]

    def redraw(self) -> None:
        """Redraw the scatter, the selection, the clicked points and the path."""
        if self.session is None or self.session.run.mu is None:
            return
        if self.embedding_box.currentText() == "umap" and not self.session.has_umap:
            self.status.setText("computing UMAP …")
            start_worker(self, self.session.embedding, "umap", on_done=lambda _: self.redraw(),
                         on_error=self.errors.show_error)
            return
        try:
            xy = self.coords_2d()
        except Exception as err:  # noqa: BLE001
            self.errors.show_error(err)
            return
        fig = self.canvas.figure
        fig.clear()
        ax = self.axes = fig.add_subplot(111)
        if self._lasso is not None:
            self._lasso.disconnect_events()
            self._lasso = LassoSelector(ax, onselect=self.select_polygon)
        column = self.colour_box.currentText()
        cols = self.session.columns()
        colour = cols.get(column) if column in cols else None
        style = {"c": "#5c8dd6"} if colour is None else {"c": colour, "cmap": "viridis"}
        sc = ax.scatter(xy[:, 0], xy[:, 1], s=4, linewidths=0, **style)
        if len(self.selection):
            ax.scatter(xy[self.selection, 0], xy[self.selection, 1], s=8, facecolors="none",
                       edgecolors="orange", linewidths=0.6)
        # the clicked points: one animated artist, blitted over the saved background
        self._background = None
        self._click_artist = ax.scatter(np.zeros(0), np.zeros(0), s=60, marker="x", c="red",
                                        animated=True)
        if self.clicked:
            self._click_artist.set_offsets(xy[self.clicked[-2:]])
        if self.path is not None:
            p = self.session.embed_path(self.path, self.embedding_box.currentText(),
                                        self.axes_pair())
            ax.plot(p[:, 0], p[:, 1], "-o", color="crimson", ms=3, lw=1.2)
        kind = self.embedding_box.currentText().upper()
        x, y = self.axes_pair()
        ax.set_xlabel(f"{kind} {x + 1}")
        ax.set_ylabel(f"{kind} {y + 1}")
        if colour is not None and np.ptp(colour) > 0:
            fig.colorbar(sc, ax=ax, label=column)
        self.canvas.draw_idle()
        self.status.setText(f"{len(xy)} particles, {len(self.selection)} selected")

    # -- clicks and decoding -------------------------------------------------------------
    def _on_press(self, event) -> None:
        if self.session is None or event.inaxes is not self.axes or self._lasso is not None:
            return
        if event.xdata is None:
            return
        xy = self.coords_2d()
        d2 = (xy[:, 0] - event.xdata) ** 2 + (xy[:, 1] - event.ydata) ** 2
        self.click_particle(int(np.argmin(d2)))

    def click_particle(self, index: int) -> None:
        """Pick particle ``index``: decode and show the map at its ``z`` (in a worker).

        With the preview on, the low-pass map is shown first and replaced by the
        full one. A newer click stops an older decode, and an older decode's maps
        are never shown over a newer click's.
        """
        self.clicked = [*self.clicked[-1:], int(index)]
        self.particle_clicked.emit(int(index))
        session = self.session
        z = session.z[int(index)]
        box = int(self.decode_box.value())
        fraction = PREVIEW_FRACTION if self.preview.isChecked() else 1.0
        start = time.perf_counter()
        self._click_id += 1
        click_id = self._click_id
        self.shown_stages = []
        if self._decode_worker is not None:
            self._decode_worker.quit()  # a generator worker stops at its next yield

        def decode():
            yield from session.decode_progressive(z, box, fraction)

        def shown(item: tuple[str, np.ndarray]) -> None:
            if click_id != self._click_id:
                return
            stage, volume = item
            limits = self._limits.get(box)
            if limits is None and stage == "full":
                limits = self._limits[box] = data_limits(volume)
            show_volume(self.viewer, volume, VOLUME_LAYER, session.voxel_size(box),
                        contrast_limits=limits, rendering="mip")
            if self.viewer.dims.ndisplay != 3:
                self.viewer.dims.ndisplay = 3
            self.shown_stages.append(stage)
            elapsed = time.perf_counter() - start
            if len(self.shown_stages) == 1:
                self.canvas.update()  # the moved markers, painted with the map
            if stage == "preview":
                self.last_preview_seconds = elapsed
            else:
                self.last_decode_seconds = elapsed

        self._decode_worker = start_worker(self, decode, on_yield=shown,
                                           on_error=self.errors.show_error)
        self._mark_clicked()

    def _set_fast_decode(self, on: bool) -> None:
        """Decode clicked maps in bfloat16 (``on``) or float32 from the next click on."""
        if self.session is not None:
            self.session.decode_precision = "bf16" if on else "fp32"

    def _on_draw(self, _event) -> None:
        """After a full draw: save the background and draw the markers on it."""
        artist = self._click_artist
        if artist is None or artist.axes is not self.axes:
            return
        self._background = self.canvas.copy_from_bbox(self.axes.bbox)
        self.axes.draw_artist(artist)

    def _mark_clicked(self) -> None:
        """Move the clicked-point markers in the canvas's image: drawn over the saved
        background (a few ms) instead of redrawing the scatter (about 100 ms at
        4,000 points). The image is painted with the first map of the click
        (``canvas.update()`` in the decode's callback): a window paint costs 150-190
        ms with software OpenGL and would compete with the decode for the CPU."""
        artist = self._click_artist
        if artist is None or artist.axes is not self.axes:
            self.redraw()
            return
        artist.set_offsets(self.coords_2d()[self.clicked[-2:]])
        if self._background is None:
            self.canvas.draw_idle()
            return
        self.canvas.restore_region(self._background)
        self.axes.draw_artist(artist)

    # -- lasso and export ----------------------------------------------------------------
    def set_lasso(self, on: bool) -> None:
        """Turn the lasso tool on or off."""
        if on and self._lasso is None:
            self._lasso = LassoSelector(self.axes, onselect=self.select_polygon)
        elif not on and self._lasso is not None:
            self._lasso.disconnect_events()
            self._lasso = None

    def select_polygon(self, vertices) -> np.ndarray:
        """Select the particles inside ``vertices`` ``(V, 2)`` (scatter coordinates)."""
        polygon = np.asarray(vertices, dtype=np.float64)
        if len(polygon) < 3:
            return self.selection
        try:
            self.selection = self.session.select_polygon(polygon, self.coords_2d())
        except Exception as err:  # noqa: BLE001
            self.errors.show_error(err)
        self.redraw()
        return self.selection

    def export_selection(self, output_prefix: str | Path,
                         formats: tuple[str, ...] = ("star", "cs", "pkl")) -> dict[str, Path]:
        """Write the selection as ``PREFIX.star``, ``PREFIX.cs`` and ``PREFIX_index.pkl``."""
        written = self.session.export(self.selection, output_prefix, formats=formats)
        self.status.setText(f"exported {len(self.selection)} particles to "
                            + ", ".join(str(p) for p in written.values()))
        return written

    def _export_dialog(self) -> None:
        if self.session is None or not len(self.selection):
            self.errors.show_error("select particles with the lasso first")
            return
        name, _ = QFileDialog.getSaveFileName(self, "Export selection (prefix)")
        if name:
            try:
                self.export_selection(Path(name).with_suffix(""))
            except Exception as err:  # noqa: BLE001
                self.errors.show_error(err)

    # -- paths ---------------------------------------------------------------------------
    def compute_path(self, kind: str | None = None, n_points: int | None = None) -> LatentPath:
        """The path of ``kind`` (``'pc'``, ``'straight'``, ``'knn'``) with ``n_points``."""
        kind = PATH_KINDS[self.path_kind.currentText()] if kind is None else kind
        n = int(self.path_points.value()) if n_points is None else int(n_points)
        if kind == "pc":
            component = self.axes_pair()[0] if self.embedding_box.currentText() == "pca" else 0
            return self.session.pc_path(component, n)
        if len(self.clicked) < 2:
            raise ValueError("click two points on the scatter first")
        start, end = self.clicked[-2], self.clicked[-1]
        if kind == "straight":
            return self.session.straight_path(start, end, n)
        return self.session.knn_path(start, end, n)

    def make_path(self, kind: str | None = None, n_points: int | None = None) -> None:
        """Compute a path, draw it, and decode its maps into a 4-D layer (in a worker)."""
        try:
            self.path = self.compute_path(kind, n_points)
        except Exception as err:  # noqa: BLE001
            self.errors.show_error(err)
            return
        self.errors.clear_error()
        self.redraw()
        box = int(self.decode_box.value())
        path = self.path

        def shown(series: np.ndarray) -> None:
            show_volume(self.viewer, series, PATH_LAYER, self.session.voxel_size(box),
                        rendering="mip")
            self.viewer.dims.ndisplay = 3
            self.viewer.dims.set_current_step(0, 0)
            self.status.setText(f"path of {len(series)} maps on the time axis: press play")

        start_worker(self, lambda: self.session.volume_series(path, box), on_done=shown,
                     on_error=self.errors.show_error)
