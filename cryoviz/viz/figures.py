"""Plotly figure builders shared by the notebooks and the HTML report.

plotly is imported inside each function, so importing this module needs only
numpy. Every builder returns a ``plotly.graph_objects.Figure``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from cryoviz.errors import InputError
from cryoviz.viz.data import central_slices, direction_angles_deg, downsample_volume, iso_level

__all__ = [
    "bar_figure", "fsc_figure", "loss_figure", "latent_scatter_figure", "explained_variance_figure",
    "isosurface_figure", "isosurface_trace", "slices_figure", "image_grid_figure",
    "pose_distribution_figure", "scatter_figure", "metrics_table_figure",
]

_HEIGHT_2D = 380
_HEIGHT_3D = 460


def _go():
    import plotly.graph_objects as go

    return go


def _curve_arrays(curve) -> tuple[np.ndarray, np.ndarray]:
    """``(frequency_per_px, fsc)`` of an :class:`FSCCurve` or its ``to_dict()``."""
    if isinstance(curve, Mapping):
        freq, values = curve.get("frequency_per_px"), curve.get("fsc")
    else:
        freq, values = getattr(curve, "frequency_per_px", None), getattr(curve, "fsc", None)
    if freq is None or values is None:
        raise InputError(None, "FSC curve", "an FSCCurve or a dict with frequency_per_px and fsc",
                         got=type(curve).__name__)
    freq = np.asarray(freq.detach().cpu() if hasattr(freq, "detach") else freq, dtype=float)
    values = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values,
                        dtype=float)
    return freq, values


def fsc_figure(curves: Mapping[str, object], pixel_size_angstrom: float | None = None,
               thresholds: Sequence[float] = (0.143, 0.5), title: str = "FSC"):
    """FSC curves, one line each, with horizontal threshold lines.

    Parameters
    ----------
    curves
        Name -> :class:`cryoviz.metrics.FSCCurve` (or its ``to_dict()``), ``S`` shells.
    pixel_size_angstrom
        Voxel size: the x axis is in 1/Å; ``None`` keeps cycles per pixel.
    thresholds
        FSC values drawn as dashed lines.
    """
    go = _go()
    fig = go.Figure()
    scale = 1.0 if pixel_size_angstrom is None else 1.0 / float(pixel_size_angstrom)
    for name, curve in curves.items():
        freq, values = _curve_arrays(curve)
        fig.add_trace(go.Scatter(x=freq * scale, y=values, mode="lines+markers", name=name))
    for t in thresholds:
        fig.add_hline(y=t, line_dash="dash", line_color="grey",
                      annotation_text=f"{t:g}", annotation_position="bottom left")
    unit = "cycles/px" if pixel_size_angstrom is None else "1/Å"
    fig.update_layout(title=title, xaxis_title=f"spatial frequency ({unit})",
                      yaxis_title="FSC", yaxis_range=[-0.1, 1.05], height=_HEIGHT_2D)
    return fig


def loss_figure(log: Mapping[str, np.ndarray], title: str = "training loss"):
    """Loss (and KL, when non-zero) per epoch from :func:`cryoviz.viz.read_log` columns."""
    go = _go()
    if "epoch" not in log or "loss" not in log:
        raise InputError(None, "log", "columns 'epoch' and 'loss'", got=sorted(log))
    fig = go.Figure(go.Scatter(x=log["epoch"], y=log["loss"], mode="lines+markers", name="loss"))
    if "kl" in log and np.nanmax(np.abs(log["kl"])) > 0:
        fig.add_trace(go.Scatter(x=log["epoch"], y=log["kl"], mode="lines+markers",
                                 name="KL per particle", yaxis="y2"))
        fig.update_layout(yaxis2={"title": "KL", "overlaying": "y", "side": "right"})
    fig.update_layout(title=title, xaxis_title="epoch", yaxis_title="loss", height=_HEIGHT_2D)
    return fig


def latent_scatter_figure(coords, color=None, color_name: str = "label",
                          axis_names: tuple[str, str] = ("PC1", "PC2"),
                          title: str = "latent space", max_points: int = 20_000):
    """2-D scatter of per-particle coordinates ``(N, >=2)``.

    Integer ``color`` ``(N,)`` (states, clusters) gives one trace per value, so the
    legend names them; float ``color`` gives one trace with a colour bar. Hover
    shows the particle index. At most ``max_points`` evenly strided points are drawn.
    """
    go = _go()
    xy = np.asarray(coords, dtype=float)
    if xy.ndim != 2 or xy.shape[1] < 1:
        raise InputError(None, "coords", "(N, 2) coordinates", got=f"shape {xy.shape}")
    if xy.shape[1] == 1:
        xy = np.concatenate([xy, np.zeros_like(xy)], axis=1)
    index = np.arange(len(xy))
    if len(xy) > max_points:
        index = index[:: int(np.ceil(len(xy) / max_points))]
    fig = go.Figure()
    marker = {"size": 4, "opacity": 0.7}
    if color is None:
        fig.add_trace(go.Scattergl(x=xy[index, 0], y=xy[index, 1], mode="markers",
                                   marker=marker, customdata=index, name="particles",
                                   hovertemplate="particle %{customdata}<extra></extra>"))
    else:
        values = np.asarray(color)
        if values.shape != (len(xy),):
            raise InputError(None, "color", f"({len(xy)},) values", got=f"shape {values.shape}")
        if np.issubdtype(values.dtype, np.integer) or values.dtype == bool:
            for v in np.unique(values[index]):
                sel = index[values[index] == v]
                fig.add_trace(go.Scattergl(
                    x=xy[sel, 0], y=xy[sel, 1], mode="markers", marker=marker, customdata=sel,
                    name=f"{color_name} {v}",
                    hovertemplate="particle %{customdata}<extra>%{fullData.name}</extra>"))
        else:
            fig.add_trace(go.Scattergl(
                x=xy[index, 0], y=xy[index, 1], mode="markers", customdata=index,
                marker={**marker, "color": values[index].astype(float), "colorscale": "Viridis",
                        "colorbar": {"title": color_name}},
                name="particles", hovertemplate="particle %{customdata}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title=axis_names[0], yaxis_title=axis_names[1],
                      height=_HEIGHT_2D + 60)
    return fig


def explained_variance_figure(ratio, title: str = "PCA explained variance"):
    """Bar chart of the explained variance ratio ``(C,)`` per principal component."""
    go = _go()
    r = np.asarray(ratio, dtype=float).ravel()
    fig = go.Figure(go.Bar(x=[f"PC{i + 1}" for i in range(len(r))], y=r))
    fig.update_layout(title=title, yaxis_title="fraction of variance", height=_HEIGHT_2D)
    return fig


def bar_figure(names: Sequence[str], values, y_title: str, title: str = ""):
    """One bar per name (e.g. wall time per recipe); ``values`` ``(M,)``."""
    go = _go()
    v = np.asarray(values, dtype=float).ravel()
    if len(v) != len(names):
        raise InputError(None, "values", f"{len(names)} values, one per name", got=len(v))
    fig = go.Figure(go.Bar(x=list(names), y=v))
    fig.update_layout(title=title, yaxis_title=y_title, height=_HEIGHT_2D)
    return fig


def isosurface_trace(volume, voxel_size_angstrom: float = 1.0, level: float | None = None,
                     max_size: int = 32, color: str = "#4a90d9", name: str = "map"):
    """A ``go.Isosurface`` of a ``(D, D, D)`` ``[z, y, x]`` map on a block-averaged grid.

    Coordinates are (x, y, z) in Å with the box centre (index ``D // 2``) at 0.
    ``level`` defaults to :func:`cryoviz.viz.iso_level` of the downsampled map.
    """
    go = _go()
    small, factor = downsample_volume(volume, max_size)
    level = iso_level(small) if level is None else float(level)
    d = np.asarray(volume).shape[-1]
    # block k averages input voxels k*f .. k*f+f-1: its centre in input voxel units
    axes = [(np.arange(n) * factor + (factor - 1) / 2.0 - d // 2) * voxel_size_angstrom
            for n in small.shape]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    top = float(small.max())
    return go.Isosurface(
        x=xx.ravel(), y=yy.ravel(), z=zz.ravel(), value=small.ravel(),
        isomin=level, isomax=max(top, level), surface_count=1, caps={"x_show": False,
                                                                      "y_show": False,
                                                                      "z_show": False},
        colorscale=[[0, color], [1, color]], showscale=False, name=name,
        lighting={"ambient": 0.5, "diffuse": 0.8, "specular": 0.3},
    )


def isosurface_figure(volumes, voxel_size_angstrom: float = 1.0, level: float | None = None,
                      max_size: int = 32, titles: Sequence[str] | None = None,
                      title: str = "map"):
    """Iso-surfaces of one ``(D, D, D)`` map or ``(M, D, D, D)`` maps side by side."""
    from plotly.subplots import make_subplots

    vols = np.asarray(volumes, dtype=np.float32)
    if vols.ndim == 3:
        vols = vols[None]
    if vols.ndim != 4:
        raise InputError(None, "volumes", "(D, D, D) or (M, D, D, D)", got=f"shape {vols.shape}")
    m = len(vols)
    names = list(titles) if titles is not None else [f"map {i}" for i in range(m)]
    fig = make_subplots(rows=1, cols=m, specs=[[{"type": "scene"}] * m],
                        subplot_titles=names if m > 1 else None)
    palette = ["#4a90d9", "#d9734a", "#5cb85c", "#9b59b6", "#e6c229", "#17becf"]
    for i, vol in enumerate(vols):
        fig.add_trace(isosurface_trace(vol, voxel_size_angstrom, level, max_size,
                                       palette[i % len(palette)], names[i]), row=1, col=i + 1)
    scene = {"aspectmode": "cube", "xaxis_title": "x (Å)", "yaxis_title": "y (Å)",
             "zaxis_title": "z (Å)"}
    fig.update_scenes(**scene)
    fig.update_layout(title=title, height=_HEIGHT_3D, margin={"l": 0, "r": 0, "b": 0})
    return fig


def slices_figure(volume, title: str = "central sections"):
    """Heat maps of the three central sections of a ``(D, D, D)`` map (no WebGL needed)."""
    from plotly.subplots import make_subplots

    go = _go()
    sections = central_slices(volume)
    fig = make_subplots(rows=1, cols=3, subplot_titles=[f"{k} section" for k in sections])
    for i, image in enumerate(sections.values()):
        fig.add_trace(go.Heatmap(z=image, colorscale="Greys_r", showscale=False), 1, i + 1)
        fig.update_yaxes(scaleanchor=f"x{i + 1 if i else ''}", row=1, col=i + 1)
    fig.update_layout(title=title, height=_HEIGHT_2D)
    return fig


def image_grid_figure(images, titles: Sequence[str] | None = None, n_cols: int = 4,
                      title: str = "particles"):
    """Grey heat maps of ``(N, D, D)`` images (``[y, x]``, y up) in a grid."""
    from plotly.subplots import make_subplots

    go = _go()
    imgs = np.asarray(images, dtype=np.float32)
    if imgs.ndim != 3:
        raise InputError(None, "images", "(N, D, D) images", got=f"shape {imgs.shape}")
    n = len(imgs)
    cols = max(1, min(n_cols, n))
    rows = int(np.ceil(n / cols))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(titles) if titles else None,
                        horizontal_spacing=0.02, vertical_spacing=0.06)
    for i, image in enumerate(imgs):
        row, col = i // cols + 1, i % cols + 1
        fig.add_trace(go.Heatmap(z=image, colorscale="Greys_r", showscale=False), row, col)
        fig.update_yaxes(scaleanchor=f"x{i + 1 if i else ''}", row=row, col=col)
    fig.update_xaxes(showticklabels=False, constrain="domain")
    fig.update_yaxes(showticklabels=False, constrain="domain")
    fig.update_layout(title=title, height=max(_HEIGHT_2D, 230 * rows + 80))
    return fig


def pose_distribution_figure(directions, color=None, color_name: str = "",
                             title: str = "viewing directions"):
    """Viewing directions ``(N, 3)`` as azimuth / elevation in degrees (an equirectangular map).

    ``color`` ``(N,)`` (e.g. the posterior angular spread) colours the points.
    """
    go = _go()
    azimuth, elevation = direction_angles_deg(directions)
    marker: dict = {"size": 4, "opacity": 0.6}
    if color is not None:
        marker.update(color=np.asarray(color, dtype=float), colorscale="Viridis",
                      colorbar={"title": color_name})
    fig = go.Figure(go.Scattergl(x=azimuth, y=elevation, mode="markers", marker=marker,
                                 name="particles"))
    fig.update_layout(title=title, xaxis_title="azimuth (deg)", yaxis_title="elevation (deg)",
                      xaxis_range=[-180, 180], yaxis_range=[-90, 90], height=_HEIGHT_2D + 60)
    return fig


def scatter_figure(x, y, x_title: str, y_title: str, color=None, color_name: str = "",
                   title: str = ""):
    """A plain 2-D scatter of ``(N,)`` against ``(N,)`` (e.g. pose spread against defocus)."""
    go = _go()
    marker: dict = {"size": 5, "opacity": 0.7}
    if color is not None:
        marker.update(color=np.asarray(color, dtype=float), colorscale="Viridis",
                      colorbar={"title": color_name})
    fig = go.Figure(go.Scattergl(x=np.asarray(x, dtype=float), y=np.asarray(y, dtype=float),
                                 mode="markers", marker=marker))
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, height=_HEIGHT_2D)
    return fig


def metrics_table_figure(rows: Sequence[Mapping[str, object]], title: str = "metrics",
                         digits: int = 3):
    """A table with one row per mapping; columns are the union of the keys, in order."""
    go = _go()
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)

    def fmt(v) -> str:
        if v is None:
            return ""
        if isinstance(v, float | np.floating):
            return f"{float(v):.{digits}g}"
        return str(v)

    cells = [[fmt(row.get(c)) for row in rows] for c in columns]
    fig = go.Figure(go.Table(header={"values": columns, "align": "left"},
                             cells={"values": cells, "align": "left"}))
    fig.update_layout(title=title, height=140 + 28 * len(rows),
                      margin={"t": 50, "b": 10, "l": 40, "r": 40})
    return fig
