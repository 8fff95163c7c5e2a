"""ipywidgets controls for the notebooks: a slider that re-renders a map along a latent path.

ipywidgets and plotly (``FigureWidget`` needs anywidget) are imported inside the
functions; importing this module needs only numpy.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cryoviz.errors import InputError
from cryoviz.viz.data import downsample_volume
from cryoviz.viz.figures import isosurface_figure

__all__ = ["volume_slider", "pc_slider"]


def volume_slider(decode: Callable[[np.ndarray], np.ndarray], points,
                  voxel_size_angstrom: float = 1.0, max_size: int = 32,
                  level: float | None = None, description: str = "point"):
    """A slider over the latent ``points`` ``(M, L)`` and an iso-surface of the map there.

    Parameters
    ----------
    decode
        Latents ``(B, L)`` -> maps ``(B, D, D, D)`` (e.g. ``lambda z: eval_volumes(run, z)``).
    points
        ``(M, L)`` latent points in order (a PC traversal or a drawn path).
    voxel_size_angstrom
        Voxel size of the decoded maps.
    max_size
        Side of the block-averaged grid that is drawn.
    level
        Iso level; ``None`` uses the first map's :func:`cryoviz.viz.iso_level` for all,
        so that changes along the path are not hidden by a moving threshold.
    description
        Slider label.

    Returns
    -------
    ipywidgets.VBox
        ``children = (slider, figure_widget)``; moving the slider decodes the map
        at that point (cached) and replaces the iso-surface values.
    """
    import ipywidgets as widgets
    import plotly.graph_objects as go

    from cryoviz.viz.data import iso_level

    pts = np.asarray(points, dtype=np.float32)
    if pts.ndim != 2 or len(pts) < 1:
        raise InputError(None, "points", "(M, L) latent points", got=f"shape {pts.shape}")
    cache: dict[int, np.ndarray] = {}

    def small_map(i: int) -> np.ndarray:
        if i not in cache:
            vol = np.asarray(decode(pts[i : i + 1]), dtype=np.float32)[0]
            cache[i] = vol
        return cache[i]

    first = small_map(0)
    if level is None:
        level = iso_level(downsample_volume(first, max_size)[0])
    figure = go.FigureWidget(isosurface_figure(first, voxel_size_angstrom, level, max_size,
                                               title=f"{description} 0"))
    slider = widgets.IntSlider(value=0, min=0, max=len(pts) - 1, step=1,
                               description=description, continuous_update=False)

    def on_change(change) -> None:
        i = int(change["new"])
        small, _ = downsample_volume(small_map(i), max_size)
        with figure.batch_update():
            figure.data[0].value = small.ravel()
            figure.data[0].isomax = max(float(small.max()), level)
            figure.layout.title.text = f"{description} {i}"

    slider.observe(on_change, names="value")
    return widgets.VBox([slider, figure])


def pc_slider(run, pca_result, component: int = 0, n_points: int = 10, max_size: int = 32,
              level: float | None = None):
    """:func:`volume_slider` along principal component ``component`` of a trained run.

    The path runs between the 5th and 95th percentiles of the particles' PC
    coordinates (:func:`cryoviz.api.pc_traversal`); maps come from
    :func:`cryoviz.api.eval_volumes`.
    """
    from cryoviz.analysis.trajectories import pc_traversal
    from cryoviz.train.evaluate import eval_volumes, voxel_size

    path = pc_traversal(pca_result, component, n_points=n_points)
    return volume_slider(lambda z: eval_volumes(run, z).numpy(), path, voxel_size(run),
                         max_size, level, description=f"PC{component + 1}")
