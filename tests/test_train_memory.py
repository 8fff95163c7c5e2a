"""Training streams a stack three times larger than the memory it is allowed.

One epoch of the ``cryodrgn`` recipe (a small network, images Fourier-cropped to
box 16 so the compute is cheap, every image still read from the full-size 128 px
stack) runs in a child process on a float32 stack written batch-wise with
:class:`cryoviz.io.mrc.StackWriter`, with a RELION STAR file of random poses and
CTF. What is limited and measured is the child's *anonymous* memory.

Why anonymous memory: :class:`cryoviz.io.particles.ImageSource` memory-maps the
stack read-only, and the mapped pages it touches count in RSS (as ``RssFile``,
page cache that the kernel can drop at any time), so RSS (and ``ru_maxrss`` /
``VmHWM``) grows towards the stack size even when the loader keeps nothing.
``RssAnon`` (``/proc/PID/status``) counts only anonymous pages (heap, tensors,
copies of the data), which is what a loader that read the whole stack into
memory would fill. ``RLIMIT_AS`` cannot be used as a limit (mapping the stack
takes its size in address space; torch and glibc reserve far more than they
use); ``RLIMIT_DATA`` (Linux >= 4.7) caps private writable mappings (heap,
anonymous ``mmap``) but not read-only file mappings, so it is a real limit that
an in-memory copy of the stack hits while memory-mapped reads go through. Its
base has to be the process's ``VmData`` at the start of the limited phase:
``VmData`` counts reserved, never-touched memory (about 1.4 GB after importing
torch), so it cannot be an absolute cap on resident memory.

Two forms of the claim are tested, both with the same child:

- default (315 MB stack, 4,800 images): the *training's* memory. The child
  first trains the same recipe on a tiny 256-image stack of the same box (the
  warm-up: torch's first-use allocations, lazy imports, thread pools), loads
  the big STAR file, then takes its baseline. The training on the big stack is
  given a limit of a third of the stack above that baseline: ``RLIMIT_DATA`` set
  to the baseline ``VmData`` plus the limit, and the parent checks that the
  sampled peak ``RssAnon`` stays below the baseline plus the limit. The limit
  has to hold the model, the optimizer and one batch; what it must not hold is
  anything that grows with the stack.
- slow (1.3 GB stack, 20,000 images): the whole *process*. No warm-up; the
  parent checks that the child's peak ``RssAnon`` over its whole life (python,
  torch, the metadata, the training) stays below a third of the stack, and the
  training runs under ``RLIMIT_DATA`` set to its ``VmData`` before training plus
  what is left of that third.

A control run in the same harness copies the stack into memory instead of
training; it must be caught by both checks (peak ``RssAnon`` above 90 % of the
stack without the limit; a ``MemoryError`` under it), so the checks would fail
for a loader that reads the whole stack.

Measured on 2026-11-25 (2 shared cores, load average 11-16, OMP_NUM_THREADS=1):
default, peak ``RssAnon`` 21-23 MB above a warmed-up baseline of 313-350 MB,
limit 105 MB; slow, whole-process peak 379 MB, limit 437 MB (1,311 MB stack).
The code before the fixes in ``encode_all`` (one small tensor kept per batch
pinned the malloc heap: +200 MB during the final latent pass) and
``ParticleBatches.read`` (a whole batch of full-size images and their complex
transforms at once: +50 MB) failed the default test: it hit ``RLIMIT_DATA``
(torch ``RuntimeError``, cannot allocate memory) at 99 MB above its baseline.

The last test checks the chunked read of :meth:`ParticleBatches.read` that keeps
a batch's temporaries small.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

needs_proc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not Path("/proc/self/status").is_file(),
    reason="reads /proc/PID/status (Linux)",
)

BOX = 128
IMAGE_BYTES = BOX * BOX * 4
N_WARMUP = 256
N_IMAGES = 4800  # default: 315 MB
N_IMAGES_SLOW = 20000  # slow: 1.31 GB
BATCH = 64
MB = 1e6

CHILD = textwrap.dedent("""
    import json, resource, sys, time

    def status():
        out = {}
        with open("/proc/self/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if value.strip().endswith("kB"):
                    out[key] = int(value.split()[0]) * 1024
        return out

    mode, star, run_dir, limit_bytes, limit_mode, warmup = sys.argv[1:7]
    limit_bytes = int(limit_bytes)
    import numpy as np
    import torch
    from cryoviz.io.particles import load_particles
    from cryoviz.train.loop import train
    from cryoviz.train.recipes import get_recipe

    torch.set_num_threads(1)
    recipe = get_recipe("cryodrgn", epochs=1, box=16, batch_size=BATCH, zdim=2, width=32,
                        depth=1, pe_dim=8, enc_width=32, enc_depth=1)
    if warmup != "-":
        train(load_particles(warmup, require_poses=True), recipe, run_dir + "_warmup")
    particles = load_particles(star, require_poses=True)
    before = status()
    cap = None
    if limit_mode == "above_baseline":  # the limit is on top of the warmed-up process
        cap = before["VmData"] + limit_bytes
    elif limit_mode == "whole_process":  # the limit is on the whole process's RssAnon
        cap = before["VmData"] + max(limit_bytes - before["RssAnon"], 0)
    if cap is not None:
        resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    print("READY " + json.dumps({**before, "cap": cap}), flush=True)
    sys.stdin.readline()  # the parent is now sampling
    result = {"mode": mode}
    t0 = time.perf_counter()
    try:
        if mode == "train":
            p = train(particles, recipe, run_dir)
            result["steps"] = p.step
        else:  # control: what a loader that reads the whole stack into memory does
            from cryoviz.io.mrc import open_stack
            stack = open_stack(particles.image_stacks[0])
            data = stack.read(np.arange(len(particles)))
            result["copied_bytes"] = int(data.nbytes)
        result["error"] = None
    except (MemoryError, RuntimeError) as err:  # torch reports a failed allocation as RuntimeError
        result["error"] = type(err).__name__ + ": " + str(err)[:300]
    result["seconds"] = time.perf_counter() - t0
    result["after"] = status()
    print("RESULT " + json.dumps(result), flush=True)
""").replace("BATCH", str(BATCH))


def _read_kb(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _run_child(mode: str, star: Path, run_dir: Path, limit_bytes: int, limit_mode: str,
               warmup: Path | None = None) -> dict:
    """Run the child; return its reports and the peak ``RssAnon`` sampled from here.

    ``peak_whole`` is the peak over the child's whole life, ``peak_after_ready`` the
    peak from its baseline on (the child waits for the parent's go after reporting
    its baseline, so the sampling covers all of the measured phase).
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, mode, str(star), str(run_dir), str(limit_bytes),
         limit_mode, "-" if warmup is None else str(warmup)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    peak = {"whole": 0, "after_ready": 0}
    measuring = threading.Event()
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            value = _read_kb(proc.pid, "RssAnon")
            if value is not None:
                peak["whole"] = max(peak["whole"], value)
                if measuring.is_set():
                    peak["after_ready"] = max(peak["after_ready"], value)
            time.sleep(0.003)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    reports: dict = {}
    try:
        for line in proc.stdout:
            tag, _, payload = line.partition(" ")
            if tag == "READY":
                reports["READY"] = json.loads(payload)
                measuring.set()
                time.sleep(0.01)
                proc.stdin.write("go\n")
                proc.stdin.flush()
            elif tag == "RESULT":
                reports["RESULT"] = json.loads(payload)
        stderr = proc.stderr.read()
        proc.wait(timeout=900)
    finally:
        done.set()
        sampler.join()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "RESULT" in reports, (proc.returncode, stderr[-3000:])
    return {"before": reports["READY"], **reports["RESULT"], "peak_whole": peak["whole"],
            "peak_after_ready": peak["after_ready"]}


def _write_dataset(folder: Path, n_images: int, seed: int = 0) -> Path:
    """A stack of ``n_images`` random 128 px images and its STAR file (random poses, CTF)."""
    import torch

    from cryoviz.ctf import CTFParams
    from cryoviz.geometry.rotations import random_rotations
    from cryoviz.io.mrc import StackWriter
    from cryoviz.io.particles import ParticleSet
    from cryoviz.io.star import write_star

    folder.mkdir(parents=True, exist_ok=True)
    stack = folder / "particles.mrcs"
    rng = np.random.default_rng(seed)
    block = rng.standard_normal((min(400, n_images), BOX, BOX), dtype=np.float32)
    with StackWriter(stack, BOX, 2.0, n_images=n_images) as writer:
        for start in range(0, n_images, len(block)):
            part = np.roll(block, start // len(block), axis=0) * (1 + start / n_images)
            writer.write(part[: n_images - start])
    rotations = random_rotations(n_images, generator=torch.Generator().manual_seed(seed))
    ctf = CTFParams.from_arrays(
        defocus_u_angstrom=rng.uniform(10000, 25000, n_images),
        defocus_v_angstrom=rng.uniform(10000, 25000, n_images),
        astigmatism_angle_deg=rng.uniform(0, 180, n_images),
        voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.1)
    ps = ParticleSet(image_stacks=[stack], stack_index=np.zeros(n_images, dtype=np.int64),
                     image_index=np.arange(n_images), box_size=BOX, pixel_size_angstrom=2.0,
                     rotations=rotations.numpy(), shifts_angstrom=rng.normal(0, 2, (n_images, 2)),
                     ctf=ctf)
    write_star(ps, folder / "particles.star")
    assert stack.stat().st_size >= n_images * IMAGE_BYTES
    return folder / "particles.star"


def _stack_bytes(star: Path) -> int:
    return (star.parent / "particles.mrcs").stat().st_size


def _check_outputs(run_dir: Path, n_images: int) -> None:
    """Every particle got a finite latent, in order."""
    with np.load(run_dir / "latents.npz") as latents:
        assert latents["mu"].shape == (n_images, 2)
        assert np.isfinite(latents["mu"]).all()
        assert np.array_equal(latents["particle_ids"], np.arange(n_images))


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> Iterator[dict[str, Path]]:
    """The 315 MB stack and the 256-image warm-up stack."""
    folder = tmp_path_factory.mktemp("train_memory")
    stars = {"big": _write_dataset(folder / "big", N_IMAGES),
             "warmup": _write_dataset(folder / "warmup", N_WARMUP, seed=1)}
    yield stars
    for star in stars.values():  # pytest keeps the last few temporary folders
        (star.parent / "particles.mrcs").unlink(missing_ok=True)


@needs_proc
def test_training_runs_under_a_limit_a_third_of_the_stack(datasets, tmp_path):
    """A warmed-up process trains on a stack 3x the memory it is then given."""
    star = datasets["big"]
    stack_bytes = _stack_bytes(star)
    limit = stack_bytes // 3
    r = _run_child("train", star, tmp_path / "run", limit, "above_baseline",
                   warmup=datasets["warmup"])
    base = r["before"]["RssAnon"]
    grown = r["peak_after_ready"] - base
    figures = (f"peak RssAnon {r['peak_after_ready'] / MB:.0f} MB = baseline {base / MB:.0f} MB "
               f"+ {grown / MB:.1f} MB, limit {limit / MB:.0f} MB above the baseline "
               f"(RLIMIT_DATA {r['before']['cap'] / MB:.0f} MB of VmData), stack "
               f"{stack_bytes / MB:.0f} MB ({N_IMAGES} images of {BOX} px)")
    print(figures)
    assert r["error"] is None, f"{r['error']} ({figures})"
    assert r["steps"] == -(-N_IMAGES // BATCH)
    assert grown < limit, f"anonymous memory exceeded the limit: {figures}"
    _check_outputs(tmp_path / "run", N_IMAGES)


@needs_proc
def test_control_reading_the_whole_stack_is_caught(datasets, tmp_path):
    """The measurement and the limit both catch a loader that copies the stack to memory."""
    star = datasets["big"]
    stack_bytes = _stack_bytes(star)
    limit = stack_bytes // 3
    r = _run_child("copy", star, tmp_path / "run", limit, "none")
    grown = r["peak_after_ready"] - r["before"]["RssAnon"]
    assert r["error"] is None, r["error"]
    assert grown > 0.9 * stack_bytes, (grown / MB, stack_bytes / MB)
    r = _run_child("copy", star, tmp_path / "run", limit, "above_baseline")
    assert r["error"] is not None and r["error"].startswith("MemoryError"), r["error"]


@needs_proc
@pytest.mark.slow
def test_whole_process_trains_a_stack_three_times_its_memory(tmp_path):
    """The process's whole anonymous memory stays below a third of a 1.3 GB stack."""
    star = _write_dataset(tmp_path / "data", N_IMAGES_SLOW)
    try:
        _check_whole_process(star, tmp_path / "run")
    finally:  # pytest keeps the last few temporary folders
        (star.parent / "particles.mrcs").unlink(missing_ok=True)


def _check_whole_process(star: Path, run_dir: Path) -> None:
    """Train under a third of the stack for the whole process; the copy control fails."""
    stack_bytes = _stack_bytes(star)
    limit = stack_bytes // 3
    r = _run_child("train", star, run_dir, limit, "whole_process")
    figures = (f"peak RssAnon of the whole process {r['peak_whole'] / MB:.0f} MB "
               f"(before training {r['before']['RssAnon'] / MB:.0f} MB), limit "
               f"{limit / MB:.0f} MB (RLIMIT_DATA {r['before']['cap'] / MB:.0f} MB of VmData), "
               f"stack {stack_bytes / MB:.0f} MB ({N_IMAGES_SLOW} images of {BOX} px)")
    print(figures)
    assert r["error"] is None, f"{r['error']} ({figures})"
    assert r["steps"] == -(-N_IMAGES_SLOW // BATCH)
    assert r["peak_whole"] < limit, f"anonymous memory exceeded the limit: {figures}"
    _check_outputs(run_dir, N_IMAGES_SLOW)
    r = _run_child("copy", star, run_dir, limit, "whole_process")
    assert r["error"] is not None and r["error"].startswith("MemoryError"), r["error"]


def test_batches_read_a_few_images_at_a_time_when_downsampling(tmp_path, monkeypatch):
    """``ParticleBatches.read`` bounds its full-size temporaries and returns the same images."""
    import torch

    import cryoviz.train.data as data
    from cryoviz.io.mrc import write_stack
    from cryoviz.io.particles import ImageSource, ParticleSet

    n, box = 23, 16
    images = np.random.default_rng(2).standard_normal((n, box, box)).astype(np.float32)
    write_stack(tmp_path / "s.mrcs", images, 2.0)
    ps = ParticleSet(image_stacks=[tmp_path / "s.mrcs"], stack_index=np.zeros(n),
                     image_index=np.arange(n), box_size=box, pixel_size_angstrom=2.0)
    source = ImageSource(ps)
    sizes: list[int] = []
    read_images = source.images

    def spy(index):
        sizes.append(int(np.size(index)))
        return read_images(index)

    monkeypatch.setattr(source, "images", spy)
    monkeypatch.setattr(data, "READ_CHUNK_BYTES", 3 * 4 * box * box)  # 3 images per step
    batches = data.ParticleBatches(source, batch_size=n, box_size=10)
    index = np.random.default_rng(3).permutation(n)[:17]
    got = batches.read(index)
    assert sizes == [3, 3, 3, 3, 3, 2]
    want = data.fourier_downsample(torch.from_numpy(images[index]), 10)
    torch.testing.assert_close(got, want)  # each image is transformed on its own
    sizes.clear()
    full = data.ParticleBatches(source, batch_size=n)  # no downsampling: one read
    assert torch.equal(full.read(index), torch.from_numpy(images[index]))
    assert sizes == [17]
