"""Volume view dock: iso-surface with a threshold, orthogonal slices, two maps, their FSC."""

from __future__ import annotations

import math

import napari
import numpy as np
import torch
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)
from superqt import QLabeledDoubleSlider

from cryoviz import api

from ._common import ErrorLabel, PlotCanvas

__all__ = ["VolumeView", "SLICE_SUFFIX"]

SLICE_SUFFIX = " slice"
AXES = ("z", "y", "x")


class VolumeView(QWidget):
    """Show one map as an iso-surface or three orthogonal slices; compare two maps.

    Two maps are shown side by side (napari's grid) or overlaid (green and
    magenta, additive); the FSC between them is plotted with its 0.5 and 0.143
    resolutions (the first map's voxel size).
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.curve: api.FSCCurve | None = None
        self.first, self.second = QComboBox(), QComboBox()
        self.threshold = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        self.threshold.setRange(0.0, 1.0)
        self.threshold.setValue(0.5)
        self.threshold.valueChanged.connect(self._threshold_changed)
        self.first.currentIndexChanged.connect(self._range_from_layer)
        self.errors = ErrorLabel()
        self.resolution = QLabel("")
        self.canvas = PlotCanvas(4.0, 2.6)
        self.axes = self.canvas.figure.add_subplot(111)

        buttons = {"Iso-surface": self.show_iso, "Slices": self.show_slices,
                   "Side by side": self.side_by_side, "Overlay": self.overlay,
                   "FSC": self.compute_fsc}
        row = QHBoxLayout()
        for text, slot in buttons.items():
            b = QPushButton(text)
            b.clicked.connect(lambda _=False, f=slot: self._guarded(f))
            row.addWidget(b)
        form = QFormLayout()
        form.addRow("map", self.first)
        form.addRow("second map", self.second)
        form.addRow("iso threshold", self.threshold)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(row)
        layout.addWidget(self.canvas)
        layout.addWidget(self.resolution)
        layout.addWidget(self.errors)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self.refresh_layers)
        self.refresh_layers()

    # -- layers --------------------------------------------------------------------------
    def volume_layers(self) -> list[napari.layers.Image]:
        """Image layers holding 3-D maps (no slice copies)."""
        return [ly for ly in self.viewer.layers if isinstance(ly, napari.layers.Image)
                and ly.data.ndim == 3 and not ly.name.endswith(tuple(
                    SLICE_SUFFIX + " " + a for a in AXES))]

    def refresh_layers(self, *_) -> None:
        """Refill the map choices from the viewer's layers."""
        names = [ly.name for ly in self.volume_layers()]
        for i, box in enumerate((self.first, self.second)):
            current = box.currentText()
            box.blockSignals(True)
            box.clear()
            box.addItems(names)
            if current in names:
                box.setCurrentText(current)
            elif len(names) > i:
                box.setCurrentIndex(i)
            box.blockSignals(False)
        self._range_from_layer()

    def _layer(self, box: QComboBox) -> napari.layers.Image:
        name = box.currentText()
        if not name or name not in self.viewer.layers:
            raise api.InputError(None, "map", "an image layer holding a 3-D map", got="none")
        return self.viewer.layers[name]

    def _guarded(self, func) -> None:
        self.errors.clear_error()
        try:
            func()
        except Exception as err:  # noqa: BLE001 - shown as a message
            self.errors.show_error(err)

    # -- iso-surface and slices ----------------------------------------------------------
    def _range_from_layer(self, *_) -> None:
        if not self.first.currentText() or self.first.currentText() not in self.viewer.layers:
            return
        data = np.asarray(self._layer(self.first).data)
        lo, hi = float(data.min()), float(data.max())
        value = lo + 0.5 * (hi - lo)
        self.threshold.blockSignals(True)
        self.threshold.setRange(lo, hi if hi > lo else lo + 1.0)
        self.threshold.setValue(value)
        self.threshold.blockSignals(False)

    def _threshold_changed(self, value: float) -> None:
        if self.first.currentText() in self.viewer.layers:
            layer = self._layer(self.first)
            if layer.rendering == "iso":
                layer.iso_threshold = float(value)

    def show_iso(self) -> None:
        """Render the map as an iso-surface at the slider's threshold, in 3-D."""
        layer = self._layer(self.first)
        layer.depiction = "volume"
        layer.rendering = "iso"
        layer.iso_threshold = float(self.threshold.value())
        layer.visible = True
        self.viewer.dims.ndisplay = 3

    def show_slices(self) -> list[napari.layers.Image]:
        """Three orthogonal planes through the map's centre (``z``, ``y``, ``x`` normals)."""
        layer = self._layer(self.first)
        data = np.asarray(layer.data)
        centre = [s / 2 for s in data.shape]
        made = []
        for axis, name in enumerate(AXES):
            label = f"{layer.name}{SLICE_SUFFIX} {name}"
            if label in self.viewer.layers:
                self.viewer.layers.remove(label)
            normal = [0.0, 0.0, 0.0]
            normal[axis] = 1.0
            made.append(self.viewer.add_image(
                data, name=label, scale=layer.scale, colormap="gray", depiction="plane",
                rendering="average", blending="translucent",
                plane={"position": centre, "normal": normal, "thickness": 1.0}))
        layer.visible = False
        self.viewer.dims.ndisplay = 3
        return made

    # -- two maps ------------------------------------------------------------------------
    def _two(self) -> tuple[napari.layers.Image, napari.layers.Image]:
        a, b = self._layer(self.first), self._layer(self.second)
        if a is b:
            raise api.InputError(None, "second map", "a map other than the first", got=a.name)
        return a, b

    def side_by_side(self) -> None:
        """The two maps next to each other (napari grid mode)."""
        a, b = self._two()
        for ly in self.viewer.layers:
            ly.visible = ly in (a, b)
        a.colormap, b.colormap = "gray", "gray"
        a.blending = b.blending = "translucent"
        self.viewer.grid.enabled = True
        self.viewer.dims.ndisplay = 3

    def overlay(self) -> None:
        """The two maps on top of each other: green and magenta, additive."""
        a, b = self._two()
        for ly in self.viewer.layers:
            ly.visible = ly in (a, b)
        a.colormap, b.colormap = "green", "magenta"
        a.blending = b.blending = "additive"
        self.viewer.grid.enabled = False
        self.viewer.dims.ndisplay = 3

    def compute_fsc(self) -> api.FSCCurve:
        """FSC between the two maps; plot it with the 0.5 and 0.143 thresholds."""
        a, b = self._two()
        va = torch.as_tensor(np.asarray(a.data, dtype=np.float32))
        vb = torch.as_tensor(np.asarray(b.data, dtype=np.float32))
        if va.shape != vb.shape:
            raise api.InputError(None, "second map", f"the first map's shape {tuple(va.shape)}",
                                 got=tuple(vb.shape))
        curve = api.fsc(va, vb)
        self.curve = curve
        apix = float(a.scale[-1])
        freq = curve.frequency_per_px.numpy() / apix
        ax = self.axes
        ax.clear()
        ax.plot(freq, curve.fsc.numpy(), "-", lw=1.5)
        for level, style in ((0.5, ":"), (0.143, "--")):
            ax.axhline(level, ls=style, color="gray", lw=0.8)
        ax.set_xlabel("spatial frequency (1/Å)")
        ax.set_ylabel("FSC")
        ax.set_ylim(-0.1, 1.05)
        ax.set_title(f"{a.name} vs {b.name}", fontsize=8)
        self.canvas.draw_idle()
        parts = []
        for level in (0.5, 0.143):
            res = curve.resolution_angstrom(apix, level)
            parts.append(f"FSC={level}: " + ("not reached" if not math.isfinite(res)
                                               else f"{res:.1f} Å"))
        self.resolution.setText("   ".join(parts))
        return curve
