"""Render a screenshot of each dock on the demo run into ``docs/images/``.

Run under a display (or ``xvfb-run -a python plugins/napari-cryoviz/scripts/screenshots.py``).
Builds the demo dataset and run on first use (see ``napari_cryoviz._sample_data``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import napari
import numpy as np
from napari_cryoviz._sample_data import make_demo_dataset, make_demo_run
from napari_cryoviz.latent import VOLUME_LAYER
from napari_cryoviz.launcher import open_run
from PIL import Image
from qtpy.QtWidgets import QApplication

REPO = Path(__file__).resolve().parents[3]


def wait(*docks) -> None:
    """Process events until the docks' workers are done."""
    app = QApplication.instance()
    while any(getattr(d, "workers", []) for d in docks):
        app.processEvents()
    for _ in range(20):
        app.processEvents()


def save_png(image: np.ndarray | Image.Image, path: Path, max_kb: int = 290) -> None:
    """Save as a palette PNG, shrinking until it is under ``max_kb``."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    img = img.convert("RGB")
    while True:
        img.quantize(colors=256).save(path, optimize=True)
        if path.stat().st_size <= max_kb * 1024 or img.width < 300:
            break
        img = img.resize((int(img.width * 0.85), int(img.height * 0.85)), Image.LANCZOS)
    print(f"{path}  {path.stat().st_size // 1024} kB")


def grab(widget) -> Image.Image:
    """A QWidget rendered to an image."""
    pixmap = widget.grab()
    qimage = pixmap.toImage()
    path = Path(tempfile.mkstemp(suffix=".png")[1])
    qimage.save(str(path))
    return Image.open(path).copy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = make_demo_run()
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 950)
    docks = open_run(viewer, run_dir)
    latent, volume, inspector, training = (docks[k] for k in
                                           ("latent", "volume", "inspector", "training"))
    # latent explorer: colour by the true state, click two particles, lasso, kNN path
    latent.colour_box.setCurrentText("true_label")
    cols = latent.session.columns()
    labels = cols["true_label"]
    first, second = int(np.flatnonzero(labels == 0)[0]), int(np.flatnonzero(labels == 1)[0])
    latent.click_particle(first)
    wait(latent)
    viewer.layers[VOLUME_LAYER].name = "state A (decoded)"
    latent.click_particle(second)
    wait(latent)
    viewer.layers[VOLUME_LAYER].name = "state B (decoded)"
    xy = latent.coords_2d()
    cx, cy = np.median(xy, axis=0)
    span = xy.std(axis=0)
    latent.select_polygon(np.array([[cx - span[0], cy - span[1]], [cx, cy - span[1]],
                                    [cx, cy + span[1]], [cx - span[0], cy + span[1]]]))
    latent.make_path("knn", 8)
    wait(latent)
    save_png(grab(latent), args.out / "latent_explorer.png")
    # volume view: the two decoded states overlaid, with their FSC
    volume.refresh_layers()
    volume.first.setCurrentText("state A (decoded)")
    volume.second.setCurrentText("state B (decoded)")
    volume.compute_fsc()
    volume.overlay()
    volume.show_iso()
    wait(volume)
    save_png(grab(volume), args.out / "volume_view.png")
    save_png(viewer.screenshot(canvas_only=False, flash=False), args.out / "viewer_overlay.png")
    # particle inspector
    inspector.show_particle(first)
    wait(inspector)
    save_png(grab(inspector), args.out / "particle_inspector.png")
    # training dock: a short run on the demo data (Fourier-cropped to box 16)
    with tempfile.TemporaryDirectory() as tmp:
        training.particles.value = str(make_demo_dataset())
        training.output.value = tmp
        training.resume_box.setChecked(False)
        training.epochs.value = 3
        training.zdim.value = 2
        training.width.value = 32
        training.box.value = 16
        training.lr.value = 2e-3
        training.start()
        wait(training)
        save_png(grab(training), args.out / "training_dock.png")
    viewer.close()


if __name__ == "__main__":
    main()
