"""Wall time, peak memory and machine description of benchmark runs.

Peak memory of an in-process run is the resident-set high-water mark of the
process (``VmHWM`` in ``/proc/self/status``) after resetting it with
``/proc/self/clear_refs`` (Linux >= 4.0) just before the run, so it is the
peak *during* that run, including the interpreter, torch and the harness
(:func:`baseline_rss_mb` is that base). Where the reset is not possible the
process lifetime peak (``ru_maxrss``) is reported and the method says so. On
CUDA the peak of ``torch.cuda.max_memory_allocated`` is added as GPU memory.
A run in a child process (external tools) reports the child's ``ru_maxrss``
from ``os.wait4``.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import resource
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["Measurement", "measure", "machine_info", "baseline_rss_mb", "run_child",
           "cpu_model"]


@dataclass
class Measurement:
    """Filled in when the ``with measure(...)`` block ends.

    Attributes
    ----------
    wall_s
        Wall-clock seconds.
    peak_rss_mb
        Peak resident memory, MiB (see the module docstring).
    peak_gpu_mb
        Peak CUDA memory allocated by torch, MiB (None on CPU).
    method
        How the peak was measured, in words.
    """

    wall_s: float = 0.0
    peak_rss_mb: float | None = None
    peak_gpu_mb: float | None = None
    method: str = ""


def _status_kb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def baseline_rss_mb() -> float | None:
    """Current resident memory of this process, MiB (the base every in-process peak includes)."""
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024


@contextmanager
def measure(device: str = "cpu") -> Iterator[Measurement]:
    """Measure the wall time and peak memory of the enclosed block."""
    result = Measurement()
    reset = _reset_peak()
    cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        yield result
    finally:
        if cuda:
            torch.cuda.synchronize()
            result.peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20
        result.wall_s = time.perf_counter() - start
        hwm = _status_kb("VmHWM")
        if reset and hwm is not None:
            result.peak_rss_mb = hwm / 1024
            result.method = "VmHWM of the process, reset before the run (in-process)"
        else:
            result.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            result.method = "ru_maxrss of the process lifetime (no per-run reset)"


def run_child(cmd: list[str], log: Path, env: dict | None = None) -> Measurement:
    """Run a command (stdout + stderr to ``log``); wall time and the child's ``ru_maxrss``.

    Raises
    ------
    RuntimeError
        When the command exits with a non-zero status (the log's tail is in the message).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}: {tail}")
    return Measurement(wall_s=wall, peak_rss_mb=usage.ru_maxrss / 1024,
                       method="ru_maxrss of the child process (os.wait4)")


def cpu_model() -> str:
    """CPU model name from ``/proc/cpuinfo`` (or ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def device_name(device: str) -> str:
    """``cpu (<model>, N cores)`` or the CUDA device's name."""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name()})"
    return f"cpu ({cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def machine_info(device: str = "cpu") -> dict:
    """Machine, versions and date of a benchmark run."""
    import cryoviz  # noqa: PLC0415

    return {
        "date_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "cryoviz_version": getattr(cryoviz, "__version__", "unknown"),
        "device": device_name(device),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "baseline_rss_mb": baseline_rss_mb(),
    }
