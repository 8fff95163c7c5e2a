"""``cryoviz report RUN``: a standalone HTML page with a run's figures.

The page inlines plotly.js (no network access needed to open it) and holds the
figures the notebooks show, for whatever the folder contains:

* a reconstruction (``metrics.json`` + ``map.mrc`` or ``volumes/map.mrc``, e.g.
  from ``cryoviz reconstruct``): FSC curves (half maps, against the truth) when
  ``metrics.json`` has them, a metrics table, the map; for a classification
  (``relion-class3d``, ``cryosparc-abinit --classes``) each class's half-map
  FSC, its particles and its map (``volumes/class_#.mrc``);
* a training run (``config.toml``): the loss per epoch; for latent recipes the
  PCA scatter of the latents (coloured by the simulated state when the dataset
  has ``truth/``, otherwise by k-means cluster), the explained variance, UMAP
  when ``cryoviz analyze`` wrote it, and maps at the k-means centres; for
  homogeneous recipes the map;
* a pose posterior (``poses.npz``, e.g. from ``relion-refine``): viewing
  directions coloured by the angular spread, and the spread against defocus
  when the folder holds its particles' ``particles.star``.

Sections whose inputs are absent are listed as skipped, not drawn empty.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np

from cryoviz.errors import InputError
from cryoviz.io.mrc import atomic_output, read_volume
from cryoviz.viz.data import dataset_truth, read_log, run_source, viewing_directions
from cryoviz.viz.figures import (
    explained_variance_figure,
    fsc_figure,
    isosurface_figure,
    latent_scatter_figure,
    loss_figure,
    metrics_table_figure,
    pose_distribution_figure,
    scatter_figure,
    slices_figure,
)

__all__ = ["Section", "report_sections", "write_report"]

MAX_REPORT_MAPS = 4


@dataclass
class Section:
    """One heading of the report: a sentence of text and its figures."""

    title: str
    text: str = ""
    figures: list = field(default_factory=list)


def _map_sections(volumes: np.ndarray, voxel: float, names: list[str], what: str,
                  max_size: int) -> list[Section]:
    sections = [Section(f"{what}: iso-surface",
                        f"Iso-surface enclosing the densest 2% of the voxels, on a grid "
                        f"block-averaged to at most {max_size}^3 (voxel {voxel:.3g} Å).",
                        [isosurface_figure(volumes, voxel, max_size=max_size, titles=names,
                                           title=what)])]
    sections.append(Section(f"{what}: central sections", "",
                            [slices_figure(v, title=n) for v, n in zip(volumes, names,
                                                                        strict=True)]))
    return sections


def _reconstruction_sections(folder: Path, max_size: int) -> list[Section]:
    metrics = json.loads((folder / "metrics.json").read_text())
    apix = float(metrics.get("pixel_size_angstrom", 1.0))
    curves = {}
    half = metrics.get("half_map_fsc")
    if isinstance(half, list):  # a classification: one curve per class
        curves.update({f"class {k} half maps": curve for k, curve in enumerate(half)})
    elif half is not None:
        curves["half map 1 vs 2"] = half
    if "fsc_vs_truth" in metrics:
        curves["map vs truth"] = metrics["fsc_vs_truth"]
    sections = []
    if curves:
        sections.append(Section("Fourier shell correlation",
                                "Gold-standard FSC between half maps (threshold 0.143) and "
                                "against the true map when known (threshold 0.5).",
                                [fsc_figure(curves, apix)]))
    rows = [{"metric": k, "value": v} for k, v in metrics.items()
            if isinstance(v, int | float | str)]
    counts = metrics.get("class_counts") or []
    rows += [{"metric": f"class {k}", "value": f"{count} particles ({fraction:.3f})"}
             for k, (count, fraction) in enumerate(zip(counts, metrics.get("class_fractions", []),
                                                       strict=False))]
    sections.append(Section("Metrics", "", [metrics_table_figure(rows)]))
    if (folder / "config.toml").is_file():
        return sections
    maps = [p for p in (folder / "map.mrc", folder / "volumes" / "map.mrc") if p.is_file()]
    if maps:
        volume, voxel = read_volume(maps[0])
        sections += _map_sections(volume[None], voxel or apix, ["map"], "Map", max_size)
    n_classes = int(metrics.get("n_classes", 0))
    class_files = [folder / "volumes" / f"class_{k}.mrc" for k in range(n_classes)]
    if class_files and all(p.is_file() for p in class_files):
        volumes = [read_volume(p) for p in class_files]
        names = [f"class {k}" + (f" ({counts[k]} particles)" if k < len(counts) else "")
                 for k in range(n_classes)]
        sections += _map_sections(np.stack([v for v, _ in volumes]), volumes[0][1] or apix,
                                  names, "Class maps", max_size)
    return sections


def _latent_sections(folder: Path, max_size: int) -> list[Section]:
    from cryoviz.analysis.clustering import cluster_centres_on_data, kmeans
    from cryoviz.analysis.embedding import pca
    from cryoviz.train.evaluate import eval_volumes, load_run, voxel_size

    with np.load(folder / "latents.npz") as npz:
        z = np.asarray(npz["mu"], dtype=np.float64)
        ids = npz["particle_ids"] if "particle_ids" in npz else np.arange(len(z))
    analysis = folder / "analysis"
    truth = dataset_truth(run_source(folder))
    color, color_name, how = None, "", "uncoloured"
    if truth is not None and "labels" in truth and len(truth["labels"]) > int(ids.max()):
        color, color_name, how = truth["labels"][ids].astype(np.int64), "state", \
            "coloured by the simulated state (ground truth)"
    elif (analysis / "kmeans.npz").is_file():
        color = np.load(analysis / "kmeans.npz")["labels"].astype(np.int64)
        color_name, how = "cluster", "coloured by k-means cluster"
    sections = []
    if z.shape[1] >= 1 and len(z) >= 2:
        result = pca(z)
        sections.append(Section(
            "Latent space", f"{len(z)} particles, latent dimension {z.shape[1]}; "
            f"first two principal components, {how}.",
            [latent_scatter_figure(result.coords[:, :2], color, color_name),
             explained_variance_figure(result.explained_variance_ratio)]))
    if (analysis / "umap.npy").is_file():
        sections.append(Section("UMAP", f"UMAP embedding from cryoviz analyze, {how}.",
                                [latent_scatter_figure(np.load(analysis / "umap.npy"), color,
                                                       color_name, ("UMAP1", "UMAP2"),
                                                       title="UMAP")]))
    kmeans_maps = sorted((analysis / "kmeans").glob("vol_*.mrc"))[:MAX_REPORT_MAPS]
    if kmeans_maps:
        loaded = [read_volume(p) for p in kmeans_maps]
        volumes = np.stack([v for v, _ in loaded])
        voxel = loaded[0][1] or 1.0
        names = [f"cluster {i}" for i in range(len(kmeans_maps))]
        text = "from cryoviz analyze"
    else:
        run = load_run(folder)
        k = min(MAX_REPORT_MAPS, len(z))
        clusters = kmeans(z, k, seed=0)
        centres = cluster_centres_on_data(z, clusters.labels, clusters.centres)
        volumes = eval_volumes(run, z[centres]).numpy()
        voxel = voxel_size(run)
        names = [f"cluster {i} (particle {p})" for i, p in enumerate(centres)]
        text = "computed for this report (k-means of the latent means)"
    sections += _map_sections(volumes, voxel, names, f"Maps at k-means centres, {text}",
                              max_size)
    return sections


def _training_sections(folder: Path, max_size: int) -> list[Section]:
    sections = []
    log = read_log(folder)
    if log.get("epoch") is not None and len(log["epoch"]):
        total = float(np.nansum(log.get("seconds", np.zeros(1))))
        sections.append(Section("Training", f"{len(log['epoch'])} epochs, "
                                f"{total:.1f} s of training.", [loss_figure(log)]))
    if (folder / "latents.npz").is_file():
        sections += _latent_sections(folder, max_size)
    elif (folder / "volumes" / "map.mrc").is_file():
        volume, voxel = read_volume(folder / "volumes" / "map.mrc")
        sections += _map_sections(volume[None], voxel or 1.0, ["map"], "Map", max_size)
    return sections


def _pose_sections(folder: Path) -> list[Section]:
    from cryoviz.inference.posterior import read_pose_posterior
    from cryoviz.io.particles import load_particles

    post = read_pose_posterior(folder / "poses.npz")
    figures = [pose_distribution_figure(viewing_directions(post.rotations),
                                        post.angular_spread_deg, "spread (deg)")]
    defocus = None
    if (folder / "particles.star").is_file():  # the particles with their inferred poses
        particles = load_particles(folder / "particles.star")
        if particles.ctf is not None and len(particles) == len(post.rotations):
            defocus = particles.ctf.defocus_u_angstrom.numpy()
    if defocus is not None:
        figures.append(scatter_figure(defocus, post.angular_spread_deg, "defocus U (Å)",
                                      "angular spread (deg)", title="pose spread vs defocus"))
    return [Section("Pose posterior", f"{len(post.rotations)} particles; viewing directions "
                    "coloured by the posterior angular standard deviation.", figures)]


def report_sections(run_dir: str | PathLike, max_size: int = 32) -> list[Section]:
    """The sections of the report of ``run_dir`` (see the module docstring)."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise InputError(folder, "run folder", "a folder", got="no such folder")
    sections: list[Section] = []
    found = []
    if (folder / "metrics.json").is_file():
        found.append("reconstruction")
        sections += _reconstruction_sections(folder, max_size)
    if (folder / "config.toml").is_file():
        found.append("training run")
        sections += _training_sections(folder, max_size)
    if (folder / "poses.npz").is_file():
        found.append("pose posterior")
        sections += _pose_sections(folder)
    if not found:
        raise InputError(folder, "run folder",
                         "a reconstruction (metrics.json), training run (config.toml) or "
                         "pose posterior (poses.npz)", got="none of them")
    skipped = []
    if "training run" in found and not (folder / "latents.npz").is_file():
        skipped.append("latent space (no latents.npz: homogeneous recipe or unfinished run)")
    if "pose posterior" not in found:
        skipped.append("pose posterior (no poses.npz)")
    if skipped:
        sections.append(Section("Not in this run", "; ".join(skipped) + "."))
    return sections


_STYLE = """
body { font-family: sans-serif; margin: 24px auto; max-width: 1150px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; }
p.note { color: #555; }
"""


def write_report(run_dir: str | PathLike, out_html: str | PathLike,
                 max_size: int = 32) -> Path:
    """Write a standalone HTML report of ``run_dir`` to ``out_html``.

    Parameters
    ----------
    run_dir
        A reconstruction, training run or pose-inference folder.
    out_html
        Output file (its folder is created).
    max_size
        Side of the block-averaged grid of the 3-D iso-surfaces.

    Returns
    -------
    Path
        ``out_html``. The file inlines plotly.js once and needs no network.
    """
    import plotly
    from plotly.offline import get_plotlyjs

    folder = Path(run_dir)
    sections = report_sections(folder, max_size)
    parts = [
        "<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>cryoviz report: {html.escape(folder.name)}</title>",
        f"<style>{_STYLE}</style>",
        f"<script type='text/javascript'>{get_plotlyjs()}</script>",
        "</head><body>",
        f"<h1>cryoviz report: {html.escape(str(folder))}</h1>",
        f"<p class='note'>plotly {plotly.__version__}; 3-D panels need WebGL.</p>",
    ]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.text:
            parts.append(f"<p class='note'>{html.escape(section.text)}</p>")
        for fig in section.figures:
            parts.append(fig.to_html(full_html=False, include_plotlyjs=False,
                                     config={"displaylogo": False}))
    parts.append("</body></html>")
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out) as tmp:
        Path(tmp).write_text("\n".join(parts), encoding="utf-8")
    return out
