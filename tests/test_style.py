"""Project rules checked on every run: ruff clean, no GUI imports in the engine."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUI_MODULES = {"napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui",
               "ipywidgets", "anywidget", "matplotlib", "plotly", "tqdm"}
# cryoviz/viz/ (notebook and report helpers) may import these, inside function bodies only
VIZ_LAZY_MODULES = {"plotly", "ipywidgets", "anywidget"}


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="ruff not installed")
def test_ruff_clean():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "cryoviz", "tests"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _imports(tree: ast.AST) -> list[tuple[str, bool]]:
    """``(module, inside_a_function)`` for every absolute import in ``tree``."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend((alias.name, in_function) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, in_function))
        inside = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(tree, False)
    return found


def gui_import_offenders(source: str, relative_path: str) -> list[str]:
    """GUI imports that ``relative_path`` (posix, from the repository root) may not make."""
    in_viz = relative_path.startswith("cryoviz/viz/")
    offenders = []
    for name, in_function in _imports(ast.parse(source, filename=relative_path)):
        top = name.split(".")[0]
        if top not in GUI_MODULES:
            continue
        if in_viz and in_function and top in VIZ_LAZY_MODULES:
            continue
        offenders.append(f"{relative_path}: {name}")
    return offenders


def test_engine_imports_no_gui_library():
    offenders = []
    for path in (ROOT / "cryoviz").rglob("*.py"):
        offenders += gui_import_offenders(path.read_text(), path.relative_to(ROOT).as_posix())
    assert not offenders, offenders


@pytest.mark.parametrize(("source", "path", "allowed"), [
    ("def f():\n    import plotly.graph_objects as go\n", "cryoviz/viz/figures.py", True),
    ("def f():\n    from ipywidgets import IntSlider\n", "cryoviz/viz/widgets.py", True),
    ("import plotly\n", "cryoviz/viz/figures.py", False),
    ("from plotly import graph_objects\n", "cryoviz/viz/figures.py", False),
    ("try:\n    import ipywidgets\nexcept ImportError:\n    pass\n", "cryoviz/viz/w.py", False),
    ("def f():\n    import matplotlib.pyplot\n", "cryoviz/viz/figures.py", False),
    ("def f():\n    import napari\n", "cryoviz/viz/figures.py", False),
    ("def f():\n    import plotly\n", "cryoviz/analysis/embedding.py", False),
    ("class A:\n    import tqdm\n", "cryoviz/train/loop.py", False),
])
def test_gui_import_rule(source, path, allowed):
    assert (gui_import_offenders(source, path) == []) == allowed
