"""Interactivity benchmark: latent click -> map shown, and the frame rate of a path movie.

For each box size, a cryoDRGN run with the recipe's default network is trained
for one epoch on a small simulated dataset of that box (the weights do not
change the timing). Then, for each torch thread count (each box and thread
count in its own process), in a shown napari viewer with the latent explorer
dock:

* engine only (no GUI), wall and process CPU time (``*_cpu_ms``: with one
  thread, the wall time the same work takes on an otherwise idle core):
  ``eval_volumes_ms`` (the batch decoder,
  ``api.eval_volumes``, one map), ``decoder_full_ms`` and
  ``decoder_preview_ms`` (``api.LatticeDecoder``: the full map, and the
  low-pass preview with the frequencies below half the band), and
  ``decoder_setup_ms`` (preparing its lattice, once per run and box);
* ``click_to_*``: wall time from the explorer's click handler
  (``LatentExplorer.click_particle``, which also redraws the scatter) to the
  preview's data set in the layer, to the full map's data set, and to the end
  of the first frame the viewer draws on its own after that (``*_drawn_*``: a
  draw of napari's canvas that began after the data were set, timed at the
  end of the draw event after ``glFinish``, so the rasterisation is included;
  ``full_draw_ms``: that draw alone). The decode runs in the explorer's
  worker thread; the Qt event loop is run in between (with 2 ms sleeps), so
  renders of the preview that napari schedules are included, as in the app.
  With the preview off, only the full map is decoded and shown. Two ways of
  clicking: ``settled`` clicks come after ``--settle-s`` seconds (default 1)
  of the event loop running idle, as when a user looks at a map before the
  next click (the paints the previous map caused are over); ``back_to_back``
  clicks come as soon as the previous one's frame was drawn, so the window
  paints it left pending (e.g. the scatter's markers) compete with the next
  decode for the CPU.
  ``first_click_ms``: the first click of a run (the layer is made; the
  decoder's lattice was prepared when the run was loaded).
* ``movie_fps``: frames per second stepping a 10-map path layer along napari's
  time axis, each step rendered and read back with a canvas screenshot (an
  upper bound: a read-back costs more than a draw); ``path_decode_ms``:
  decoding those 10 maps.

Each row is one box, torch thread count and decode precision of the clicked
maps (``fp32``, and ``bf16`` where the CPU multiplies bfloat16 natively: the
explorer's default there).

Figures go to ``interactivity.json`` beside this script with the machine,
torch and napari versions, the OpenGL renderer and the load averages. Run
under a display, e.g.
``xvfb-run -a python plugins/napari-cryoviz/benchmarks/interactivity.py``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import napari
import numpy as np
import torch
from napari_cryoviz._session import RunSession
from napari_cryoviz.latent import PATH_LAYER, VOLUME_LAYER, LatentExplorer, show_volume
from qtpy.QtWidgets import QApplication

from cryoviz import api
from cryoviz.bench.measure import cpu_model

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
    """Process pending events and render one frame of the canvas (read back)."""
    QApplication.instance().processEvents()
    viewer.screenshot(canvas_only=True, flash=False)


def gl_renderer() -> str:
    try:
        from vispy.gloo import gl

        return str(gl.glGetParameter(gl.GL_RENDERER))
    except Exception as err:  # noqa: BLE001 - informational only
        return f"unknown ({type(err).__name__})"


def load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def timed_ms(func, repeats: int) -> tuple[list[float], list[float]]:
    """Wall and process CPU milliseconds of ``repeats`` calls."""
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        func()
        wall.append(1e3 * (time.perf_counter() - t0))
        cpu.append(1e3 * (time.process_time() - c0))
    return wall, cpu


def engine_times(session: RunSession, box: int, repeats: int) -> dict:
    """Decode times without the GUI (the same calls the explorer's worker makes)."""
    z = session.z
    t0 = time.perf_counter()
    decoder = api.LatticeDecoder(session.run.volume, box, precision=session.decode_precision)
    setup_ms = 1e3 * (time.perf_counter() - t0)
    decoder(z[0])  # warm-up
    full, full_cpu = timed_ms(lambda: decoder(z[1]), repeats)
    preview, preview_cpu = timed_ms(lambda: next(decoder.progressive(z[1], 0.5)), repeats)
    old, old_cpu = timed_ms(lambda: api.eval_volumes(session.run, z[1:2], box),
                            max(1, repeats // 3))
    return {"decoder_setup_ms": setup_ms, "network_points_full": decoder.n_points,
            "network_points_preview": decoder.preview_points(0.5),
            "decoder_full_ms_median": statistics.median(full), "decoder_full_ms_min": min(full),
            "decoder_full_cpu_ms_median": statistics.median(full_cpu),
            "decoder_preview_ms_median": statistics.median(preview),
            "decoder_preview_cpu_ms_median": statistics.median(preview_cpu),
            "eval_volumes_ms_median": statistics.median(old),
            "eval_volumes_cpu_ms_median": statistics.median(old_cpu)}


def idle(seconds: float) -> None:
    """Run the Qt event loop for ``seconds``."""
    app = QApplication.instance()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        app.processEvents()
        time.sleep(0.005)


class DrawClock:
    """Start and end times (``time.perf_counter``) of the draws of napari's canvas.

    Hooks the vispy canvas's draw event (napari's ``_qt_viewer.canvas``: private,
    read only here); the end is taken after ``glFinish`` so the frame is
    rasterised. ``draws`` holds ``(start, end)`` pairs.
    """

    def __init__(self, viewer: napari.Viewer) -> None:
        from vispy.gloo import gl

        self._finish = gl.glFinish
        self.draws: list[tuple[float, float]] = []
        self._start = 0.0
        events = viewer.window._qt_viewer.canvas._scene_canvas.events.draw
        events.connect(self._on_start, position="first")
        events.connect(self._on_end, position="last")

    def _on_start(self, event) -> None:
        self._start = time.perf_counter()

    def _on_end(self, event) -> None:
        self._finish()
        self.draws.append((self._start, time.perf_counter()))

    def first_after(self, t: float) -> tuple[float, float] | None:
        """``(start, end)`` of the first draw that began after ``t``, or None."""
        return next(((start, end) for start, end in self.draws if start > t), None)


def click(viewer: napari.Viewer, dock: LatentExplorer, clock: DrawClock, index: int,
          settle_s: float = 0.0) -> tuple[float | None, ...]:
    """One click after ``settle_s`` idle: ms to the preview's data set (or None), to the
    full's, to the end of the first frame drawn after it and that draw's own length
    (both None if none within 5 s)."""
    app = QApplication.instance()
    idle(settle_s)
    dock.last_decode_seconds = dock.last_preview_seconds = None
    clock.draws.clear()
    t0 = time.perf_counter()
    dock.click_particle(index)
    while dock.last_decode_seconds is None or dock.workers:
        app.processEvents()
        time.sleep(0.002)
    data_set = t0 + dock.last_decode_seconds
    while clock.first_after(data_set) is None and time.perf_counter() - data_set < 5.0:
        app.processEvents()
        time.sleep(0.002)
    draw = clock.first_after(data_set)
    preview = None if dock.last_preview_seconds is None else 1e3 * dock.last_preview_seconds
    if draw is None:
        return preview, 1e3 * dock.last_decode_seconds, None, None
    return (preview, 1e3 * dock.last_decode_seconds, 1e3 * (draw[1] - t0),
            1e3 * (draw[1] - draw[0]))


def gui_times(viewer: napari.Viewer, session: RunSession, box: int, repeats: int,
              settle_s: float) -> dict:
    dock = LatentExplorer(viewer)
    viewer.window.add_dock_widget(dock)
    dock.set_session(session)  # starts preparing the decoder at the training box
    dock.decode_box.setValue(box)
    app = QApplication.instance()
    while dock.workers:
        app.processEvents()
        time.sleep(0.002)
    n = len(session.z)
    clock = DrawClock(viewer)
    out: dict = {"settle_s": settle_s}
    modes = {"settled": settle_s, "back_to_back": 0.0} if settle_s > 0 else {"back_to_back": 0.0}
    for (mode, settle), preview in itertools.product(modes.items(), (True, False)):
        dock.preview.setChecked(preview)
        first = click(viewer, dock, clock, 0, settle)
        if preview and "first_click_ms" not in out:
            out["first_click_ms"] = first[1]
        rows = [click(viewer, dock, clock, (i + 1) % n, settle) for i in range(repeats)]
        key = "with_preview" if preview else "no_preview"
        drawn = [r for r in rows if r[2] is not None]
        fig = {"click_to_full_data_set_ms_median": statistics.median(r[1] for r in rows),
               "click_to_full_data_set_ms_max": max(r[1] for r in rows),
               "click_to_full_drawn_ms_median": (statistics.median(r[2] for r in drawn)
                                                 if drawn else None),
               "click_to_full_drawn_ms_max": max(r[2] for r in drawn) if drawn else None,
               "full_draw_ms_median": (statistics.median(r[3] for r in drawn)
                                       if drawn else None),
               "clicks_without_a_draw_in_5_s": len(rows) - len(drawn)}
        if preview:
            fig["click_to_preview_data_set_ms_median"] = statistics.median(r[0] for r in rows)
            fig["click_to_preview_data_set_ms_max"] = max(r[0] for r in rows)
        out.setdefault(mode, {})[key] = fig
    viewer.window.remove_dock_widget(dock)
    viewer.layers.remove(VOLUME_LAYER)
    return out


def movie(viewer: napari.Viewer, session: RunSession, box: int) -> dict:
    path = session.straight_path(0, len(session.z) - 1, 10)
    t0 = time.perf_counter()
    series = session.volume_series(path, box)
    decode_ms = 1e3 * (time.perf_counter() - t0)
    show_volume(viewer, series, PATH_LAYER, session.voxel_size(box), rendering="mip")
    viewer.dims.ndisplay = 3
    viewer.dims.set_current_step(0, 0)
    render(viewer)
    frames = 30
    t0 = time.perf_counter()
    for f in range(frames):
        viewer.dims.set_current_step(0, f % len(series))
        render(viewer)
    fps = frames / (time.perf_counter() - t0)
    viewer.layers.remove(PATH_LAYER)
    return {"movie_fps": fps, "movie_volumes": len(series), "path_decode_ms": decode_ms}


def measure(args: argparse.Namespace, box: int, threads: int, work: Path) -> None:
    """Write ``args.out``: the rows of one box at one thread count (one per precision)."""
    torch.set_num_threads(threads)
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1200, 900)
    session = RunSession(make_run(work, box))
    precisions = [p for p in args.precisions if p == "fp32" or session.fast_decode_available]
    rows = []
    for precision in precisions:
        session.decode_precision = precision
        repeats = args.repeats if box <= 64 else max(3, args.repeats // 2)
        row = {"box": box, "torch_threads": threads, "decode_precision": precision,
               "voxel_size_angstrom": session.voxel_size(box), "repeats": repeats,
               "load_average_before": load()}
        row.update(engine_times(session, box, repeats))
        row.update(gui_times(viewer, session, box, repeats, args.settle_s))
        row.update(movie(viewer, session, box))
        row["load_average_after"] = load()
        print(json.dumps(row), flush=True)
        rows.append(row)
        write_results(args.out, rows)  # while the viewer is open: its OpenGL renderer
    viewer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--boxes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="torch thread counts to run with (each in its own process: "
                             "OpenMP keeps the count a worker thread started with)")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"],
                        choices=["fp32", "bf16"],
                        help="decode precisions of the clicked maps (bf16 only where the "
                             "CPU has it natively)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--settle-s", type=float, default=1.0,
                        help="idle event-loop seconds before each 'settled' click (0: only "
                             "back-to-back clicks)")
    parser.add_argument("--work", type=Path, default=None, help="where the runs are built")
    parser.add_argument("--out", type=Path, default=HERE / "interactivity.json")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="cryoviz_bench_"))
    if len(args.boxes) == 1 and len(args.threads) == 1:
        measure(args, args.boxes[0], args.threads[0], work)
        print(f"wrote {args.out}")
        return
    results: list[dict] = []
    for box, threads in itertools.product(args.boxes, args.threads):
        # a fresh process per thread count: the napari worker threads of an earlier
        # count would keep running its OpenMP thread count
        part = work / f"part_{box}_{threads}.json"
        cmd = [sys.executable, __file__, "--boxes", str(box), "--threads", str(threads),
               "--precisions", *args.precisions, "--repeats", str(args.repeats),
               "--settle-s", str(args.settle_s), "--work", str(work), "--out", str(part)]
        subprocess.run(cmd, check=True)
        written = json.loads(part.read_text())
        results.extend(written["results"])
        # after every process (partial results survive), with the machine as a child
        # saw it (the OpenGL renderer is only known where a viewer was open)
        write_results(args.out, results, written["machine"])
    print(f"wrote {args.out}")


def write_results(path: Path, results: list[dict], machine: dict | None = None) -> None:
    """Write the figures with the machine description (``machine``: one already made)."""
    out = {
        "benchmark": "napari-cryoviz interactivity",
        "goal": "click to the map shown under 200 ms at box 64 on CPU",
        "machine": machine or {"platform": platform.platform(), "processor": cpu_model(),
                    "native_bfloat16": api.bf16_is_fast("cpu"),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__, "device": "cpu",
                    "napari": napari.__version__, "numpy": np.__version__,
                    "gl_renderer": gl_renderer(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "model": "cryodrgn recipe defaults (implicit MLP width 128, depth 3, domain "
                 f"{api.get_recipe('cryodrgn').domain}, "
                 "pe_dim 64, zdim 8), maps decoded at the training box; clicks in each "
                 "row's decode_precision (bf16: the MLP under bfloat16 autocast), "
                 "path movies in float32; api.LatticeDecoder with its first-layer cache "
                 "(on at both boxes)",
        "viewer": "napari window 1200 x 900, volume layer rendered as MIP",
        "load_average_1_5_15_min_at_end": load(),
        "results": results,
    }
    path.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
