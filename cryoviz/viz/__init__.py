"""Figures, widgets and the HTML report for the notebooks and ``cryoviz report``.

plotly and ipywidgets (with anywidget for ``FigureWidget``) are optional: they
are imported inside the functions that need them (install the ``notebook``
extra), so ``import cryoviz.viz`` works without them.
"""

from __future__ import annotations

from cryoviz.viz.compare import bench_fsc_curves, bench_run_dir, bench_table_rows
from cryoviz.viz.data import (
    central_slices,
    dataset_truth,
    direction_angles_deg,
    downsample_volume,
    iso_level,
    read_log,
    run_source,
    signal_to_noise,
    viewing_directions,
)
from cryoviz.viz.figures import (
    bar_figure,
    explained_variance_figure,
    fsc_figure,
    image_grid_figure,
    isosurface_figure,
    isosurface_trace,
    latent_scatter_figure,
    loss_figure,
    metrics_table_figure,
    pose_distribution_figure,
    scatter_figure,
    slices_figure,
)
from cryoviz.viz.report import Section, report_sections, write_report
from cryoviz.viz.widgets import pc_slider, volume_slider

__all__ = [
    "Section", "bar_figure", "bench_fsc_curves", "bench_run_dir", "bench_table_rows",
    "central_slices", "dataset_truth", "direction_angles_deg", "downsample_volume",
    "explained_variance_figure", "fsc_figure", "image_grid_figure", "iso_level",
    "isosurface_figure", "isosurface_trace", "latent_scatter_figure", "loss_figure",
    "metrics_table_figure", "pc_slider", "pose_distribution_figure", "read_log", "report_sections",
    "run_source", "scatter_figure", "signal_to_noise", "slices_figure", "viewing_directions",
    "volume_slider", "write_report",
]
