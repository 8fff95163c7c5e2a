"""Small Qt helpers shared by the docks: plot canvases, run pickers, workers, messages."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.qt.threading import create_worker
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QWidget,
)

__all__ = ["PlotCanvas", "RunPicker", "ErrorLabel", "start_worker", "error_text"]


class PlotCanvas(FigureCanvasQTAgg):
    """A matplotlib figure inside a dock (dark background to match napari)."""

    def __init__(self, width_in: float = 4.0, height_in: float = 3.0) -> None:
        self.figure = Figure(figsize=(width_in, height_in), dpi=90, tight_layout=True)
        super().__init__(self.figure)
        self.setMinimumHeight(int(height_in * 70))


def error_text(err: BaseException) -> str:
    """A one-line, user-readable message for an exception (no traceback)."""
    name = "" if type(err).__name__ in ("InputError",) else f"{type(err).__name__}: "
    return f"{name}{err}"


class ErrorLabel(QLabel):
    """A red, word-wrapped label for readable error messages."""

    def __init__(self) -> None:
        super().__init__("")
        self.setWordWrap(True)
        self.setStyleSheet("color: #ff6b6b;")

    def show_error(self, err: BaseException | str) -> None:
        """Show ``err`` (an exception or a message)."""
        self.setText(err if isinstance(err, str) else error_text(err))

    def clear_error(self) -> None:
        """Remove the message."""
        self.setText("")


class RunPicker(QWidget):
    """A run-folder line edit with a browse button and a load button."""

    def __init__(self, on_load: Callable[[Path], None], label: str = "Run") -> None:
        super().__init__()
        self._on_load = on_load
        self.edit = QLineEdit()
        self.edit.setPlaceholderText("run folder")
        browse = QPushButton("…")
        browse.setMaximumWidth(30)
        browse.clicked.connect(self._browse)
        load = QPushButton("Load")
        load.clicked.connect(self._load)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel(label))
        row.addWidget(self.edit)
        row.addWidget(browse)
        row.addWidget(load)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a cryoviz run folder")
        if folder:
            self.edit.setText(folder)
            self._load()

    def _load(self) -> None:
        text = self.edit.text().strip()
        if text:
            self._on_load(Path(text))


def start_worker(owner: object, func: Callable, *args,
                 on_done: Callable | None = None, on_error: Callable | None = None,
                 on_yield: Callable | None = None, **kwargs):
    """Run ``func(*args, **kwargs)`` in a napari worker thread; keep it on ``owner``.

    ``owner.workers`` (a list) holds the running workers so that tests and
    teardown can wait for them; finished workers remove themselves.
    """
    worker = create_worker(func, *args, _start_thread=False, _ignore_errors=True, **kwargs)
    workers = owner.__dict__.setdefault("workers", [])
    workers.append(worker)
    if on_done is not None:
        worker.returned.connect(on_done)
    if on_yield is not None and hasattr(worker, "yielded"):
        worker.yielded.connect(on_yield)
    if on_error is not None:
        worker.errored.connect(on_error)
    worker.finished.connect(lambda: workers.remove(worker) if worker in workers else None)
    worker.start()
    return worker
