"""Interactivity benchmark: latent click -> map shown, and the frame rate of a path movie.

For each box size, a cryoDRGN run with the recipe's default network is trained
for one epoch on a small simulated dataset of that box (the weights do not
change the timing). Then, in a shown napari viewer with the latent explorer:

* ``click_to_shown_ms``: decode the map at a particle's ``z`` (the same call
  the explorer's click makes), put it in the volume layer and render one
  frame of the 3-D canvas (forced by a canvas screenshot, which also reads the
  frame back: an upper bound on the time to shown);
* ``decode_ms``: the decoding alone;
* ``click_to_preview_shown_ms``: the same for the explorer's coarse preview
  (decoded at ``--preview-box``, same physical extent), shown before the full map;
* ``movie_fps``: frames per second stepping a 10-map path layer along napari's
  time axis, each step rendered (and read back) as above.

Figures go to ``interactivity.json`` beside this script with the machine,
torch and napari versions and the OpenGL renderer. Run under a display, e.g.
``xvfb-run -a python plugins/napari-cryoviz/benchmarks/interactivity.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import napari
import numpy as np
import torch
from napari_cryoviz._session import RunSession
from napari_cryoviz.latent import PATH_LAYER, VOLUME_LAYER, show_volume
from qtpy.QtWidgets import QApplication

from cryoviz import api

HERE = Path(__file__).resolve().parent


def make_run(root: Path, box: int) -> Path:
    """A one-epoch default-network cryoDRGN run on 64 simulated particles of ``box``."""
    data = root / f"data_{box}"
    run = root / f"run_{box}"
    if not (run / "latents.npz").is_file():
        api.simulate(api.SimulationConfig(n_particles=64, box_size=box,
                                          pixel_size_angstrom=128.0 / box, snr=1.0,
                                          states=("4ake", "1ake"), seed=0), data)
        api.train(api.load_particles(data / "particles.star"),
                  api.get_recipe("cryodrgn", epochs=1, batch_size=32), run)
    return run


def render(viewer: napari.Viewer) -> None:
    """Process pending events and render one frame of the canvas."""
    QApplication.instance().processEvents()
    viewer.screenshot(canvas_only=True, flash=False)


def gl_renderer() -> str:
    try:
        from vispy.gloo import gl

        return str(gl.glGetParameter(gl.GL_RENDERER))
    except Exception as err:  # noqa: BLE001 - informational only
        return f"unknown ({type(err).__name__})"


def bench_box(viewer: napari.Viewer, session: RunSession, box: int, repeats: int,
              preview_box: int) -> dict:
    z = session.z
    voxel = session.voxel_size(box)
    show_volume(viewer, session.decode(z[:1], box)[0], VOLUME_LAYER, voxel, rendering="mip")
    viewer.dims.ndisplay = 3
    render(viewer)
    decode_ms, shown_ms, preview_ms = [], [], []
    for i in range(repeats):
        zi = z[(i + 1) % len(z)][None]
        t0 = time.perf_counter()
        volume = session.decode(zi, box)[0]
        t1 = time.perf_counter()
        show_volume(viewer, volume, VOLUME_LAYER, voxel, rendering="mip")
        render(viewer)
        t2 = time.perf_counter()
        decode_ms.append(1e3 * (t1 - t0))
        shown_ms.append(1e3 * (t2 - t0))
        if preview_box < box:
            t0 = time.perf_counter()
            coarse = session.decode(zi, preview_box)[0]
            show_volume(viewer, coarse, VOLUME_LAYER + " preview",
                        session.voxel_size(preview_box), rendering="mip")
            render(viewer)
            preview_ms.append(1e3 * (time.perf_counter() - t0))
    if preview_ms:
        viewer.layers.remove(VOLUME_LAYER + " preview")
    path = session.straight_path(0, len(z) - 1, 10)
    series = session.volume_series(path, box)
    viewer.layers.remove(VOLUME_LAYER)
    show_volume(viewer, series, PATH_LAYER, voxel, rendering="mip")
    viewer.dims.set_current_step(0, 0)
    render(viewer)
    frames = 30
    t0 = time.perf_counter()
    for f in range(frames):
        viewer.dims.set_current_step(0, f % len(series))
        render(viewer)
    fps = frames / (time.perf_counter() - t0)
    viewer.layers.remove(PATH_LAYER)
    return {"box": box, "voxel_size_angstrom": voxel, "repeats": repeats,
            "decode_ms_median": statistics.median(decode_ms),
            "click_to_shown_ms_median": statistics.median(shown_ms),
            "click_to_shown_ms_max": max(shown_ms),
            "preview_box": preview_box if preview_ms else None,
            "click_to_preview_shown_ms_median": (statistics.median(preview_ms) if preview_ms
                                                 else None),
            "movie_fps": fps,
            "movie_volumes": len(series)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--boxes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--preview-box", type=int, default=32,
                        help="also time the explorer's coarse preview at this box")
    parser.add_argument("--work", type=Path, default=None, help="where the runs are built")
    parser.add_argument("--out", type=Path, default=HERE / "interactivity.json")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="cryoviz_bench_"))
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1200, 900)
    results: list[dict] = []
    for box in args.boxes:
        session = RunSession(make_run(work, box))
        row = bench_box(viewer, session, box, args.repeats, args.preview_box)
        print(json.dumps(row))
        results.append(row)
        write_results(args.out, results)  # after every box: partial results survive
    print(f"wrote {args.out}")
    viewer.close()


def write_results(path: Path, results: list[dict]) -> None:
    """Write the figures with the machine description."""
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    out = {
        "benchmark": "napari-cryoviz interactivity",
        "goal": "click_to_shown_ms_median < 200 at box 64 on CPU",
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "device": "cpu",
                    "napari": napari.__version__, "numpy": np.__version__,
                    "gl_renderer": gl_renderer()},
        "model": "cryodrgn recipe defaults (implicit Hartley MLP width 128, depth 3), "
                 "maps decoded at the training box",
        "load_average_1_5_15_min": load,
        "results": results,
    }
    path.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
