"""Training streams a stack three times larger than the memory it is allowed.

A 315 MB float32 stack (4,800 images of 128 x 128) is written batch-wise with
:class:`cryoviz.io.mrc.StackWriter`, with a RELION STAR file of random poses and CTF,
and one epoch of the ``cryodrgn`` recipe (a small network, images Fourier-cropped to
box 16 so the compute is cheap, every image still read from the full-size stack)
runs in a child process.

What is limited and measured is the child's *anonymous* memory, not its RSS.
:class:`cryoviz.io.particles.ImageSource` memory-maps the stack read-only, and the
mapped pages it touches count in RSS (as ``RssFile``, page cache that the kernel can
drop at any time), so RSS (and ``ru_maxrss`` / ``VmHWM``) grow towards the stack
size even when the loader keeps nothing: that is not memory the process owns.
``RssAnon`` (``/proc/PID/status``) counts only anonymous pages (heap, tensors,
copies of the data), which is what a loader that read the whole stack into memory
would fill. So:

- the parent samples the child's ``RssAnon`` every few milliseconds while it trains
  and checks that its peak, minus the child's ``RssAnon`` just before training
  (after importing torch and reading the STAR file), stays below a third of the
  stack size;
- the child runs under a real limit, ``RLIMIT_DATA`` set to its data segment just
  before training plus a third of the stack size: on Linux >= 4.7 it caps private
  writable mappings (heap, anonymous ``mmap``) but not read-only file mappings, so
  an in-memory copy of the stack would fail with ``MemoryError`` while the
  memory-mapped reads go through;
- a control run in the same harness copies the stack into memory instead of
  training, and must be caught by both (peak ``RssAnon`` above 90 % of the stack
  size without the limit; a ``MemoryError`` with it), so the check would fail for a
  loader that reads the whole stack.

``RLIMIT_AS`` (address space) cannot be used: mapping the stack takes its full size
of address space, and torch / glibc reserve far more virtual memory than they use.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not Path("/proc/self/status").is_file(),
    reason="reads /proc/PID/status (Linux)",
)

N_IMAGES = 4800
BOX = 128
STACK_BYTES = N_IMAGES * BOX * BOX * 4  # 315 MB (+ the 1 KB header)
BUDGET = STACK_BYTES // 3  # 105 MB

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

    mode, star, run_dir, budget = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    limit = sys.argv[5] == "limit"
    import numpy as np
    import torch
    from cryoviz.io.particles import load_particles
    from cryoviz.train.loop import train
    from cryoviz.train.recipes import get_recipe

    torch.set_num_threads(2)
    particles = load_particles(star, require_poses=True)
    recipe = get_recipe("cryodrgn", epochs=1, box=16, batch_size=64, zdim=2, width=32,
                        depth=1, pe_dim=8, enc_width=32, enc_depth=1)
    before = status()
    if limit:
        cap = before["VmData"] + budget
        resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    print("READY " + json.dumps(before), flush=True)
    result = {"mode": mode, "limit": limit}
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
    except MemoryError as err:
        result["error"] = "MemoryError: " + str(err)
    result["seconds"] = time.perf_counter() - t0
    result["after"] = status()
    result["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("RESULT " + json.dumps(result), flush=True)
""")


def _read_kb(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _run_child(mode: str, star: Path, run_dir: Path, limit: bool) -> dict:
    """Run the child; return its reports and the peak ``RssAnon`` sampled from here."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, mode, str(star), str(run_dir), str(BUDGET),
         "limit" if limit else "nolimit"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    peak = {"RssAnon": 0, "VmRSS": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for key in peak:
                value = _read_kb(proc.pid, key)
                if value is not None:
                    peak[key] = max(peak[key], value)
            time.sleep(0.003)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        done.set()
        sampler.join()
    reports = {}
    for line in stdout.splitlines():
        tag, _, payload = line.partition(" ")
        if tag in ("READY", "RESULT"):
            reports[tag] = json.loads(payload)
    assert proc.returncode == 0 and "RESULT" in reports, (proc.returncode, stdout, stderr[-3000:])
    return {"before": reports["READY"], **reports["RESULT"], "peak_sampled": peak}


@pytest.fixture(scope="module")
def big_stack(tmp_path_factory) -> Path:
    """A 315 MB stack (random pixels) and its STAR file with random poses and CTF."""
    import torch

    from cryoviz.ctf import CTFParams
    from cryoviz.geometry.rotations import random_rotations
    from cryoviz.io.mrc import StackWriter
    from cryoviz.io.particles import ParticleSet
    from cryoviz.io.star import write_star

    folder = tmp_path_factory.mktemp("big_stack")
    stack = folder / "particles.mrcs"
    rng = np.random.default_rng(0)
    block = rng.standard_normal((400, BOX, BOX), dtype=np.float32)
    with StackWriter(stack, BOX, 2.0, n_images=N_IMAGES) as writer:
        for start in range(0, N_IMAGES, len(block)):
            writer.write(np.roll(block, start // len(block), axis=0) * (1 + start / N_IMAGES))
    rotations = random_rotations(N_IMAGES, generator=torch.Generator().manual_seed(0))
    ctf = CTFParams.from_arrays(
        defocus_u_angstrom=rng.uniform(10000, 25000, N_IMAGES),
        defocus_v_angstrom=rng.uniform(10000, 25000, N_IMAGES),
        astigmatism_angle_deg=rng.uniform(0, 180, N_IMAGES),
        voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.1)
    ps = ParticleSet(image_stacks=[stack], stack_index=np.zeros(N_IMAGES, dtype=np.int64),
                     image_index=np.arange(N_IMAGES), box_size=BOX, pixel_size_angstrom=2.0,
                     rotations=rotations.numpy(), shifts_angstrom=rng.normal(0, 2, (N_IMAGES, 2)),
                     ctf=ctf)
    write_star(ps, folder / "particles.star")
    assert stack.stat().st_size >= STACK_BYTES
    return folder / "particles.star"


# Both fail on the current loop (2026-11-25). Fixed since first written: the final
# latent pass kept autograd graphs, and the data-scale estimate read 512 full-size
# images at once. Left: about 115 MB of fixed first-use allocations (model, optimizer,
# torch) plus about 160 MB of glibc per-thread arena retention during the final encode
# (gone with MALLOC_ARENA_MAX=1), against a bound of 105 MB. strict: remove when fixed.
KNOWN_ISSUE = pytest.mark.xfail(
    strict=True, reason="training's anonymous memory exceeds a third of the stack (see above)")


@KNOWN_ISSUE
def test_training_streams_a_stack_three_times_the_memory_budget(big_stack, tmp_path):
    r = _run_child("train", big_stack, tmp_path / "run", limit=False)
    grown = r["peak_sampled"]["RssAnon"] - r["before"]["RssAnon"]
    assert r["error"] is None and r["steps"] == -(-N_IMAGES // 64)
    assert grown < BUDGET, (f"anonymous memory grew by {grown / 1e6:.0f} MB while training on "
                            f"a {STACK_BYTES / 1e6:.0f} MB stack (budget {BUDGET / 1e6:.0f} MB)")
    assert (tmp_path / "run" / "latents.npz").is_file()


@KNOWN_ISSUE
def test_training_runs_under_a_data_limit_of_a_third_of_the_stack(big_stack, tmp_path):
    r = _run_child("train", big_stack, tmp_path / "run", limit=True)
    assert r["error"] is None, r["error"]
    assert r["steps"] == -(-N_IMAGES // 64)
    assert (tmp_path / "run" / "latents.npz").is_file()


def test_control_reading_the_whole_stack_is_caught(big_stack, tmp_path):
    """The measurement and the limit both catch a loader that copies the stack to memory."""
    r = _run_child("copy", big_stack, tmp_path / "run", limit=False)
    assert r["error"] is None
    assert r["peak_sampled"]["RssAnon"] - r["before"]["RssAnon"] > 0.9 * STACK_BYTES
    r = _run_child("copy", big_stack, tmp_path / "run", limit=True)
    assert r["error"] is not None and r["error"].startswith("MemoryError")
