"""Files of a training run folder: ``config.toml``, ``z.pkl``, ``log.jsonl``, epoch checkpoints.

Shared by the training loop and the algorithms with their own loops (so that
they need not import the loop).
"""

from __future__ import annotations

import json
import math
import random
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from cryoviz.errors import InputError
from cryoviz.io.mrc import atomic_output
from cryoviz.train.recipes import ADDED_SETTINGS

if TYPE_CHECKING:
    from cryoviz.train.data import ParticleBatches

__all__ = ["CHECKPOINT_RE", "write_toml", "write_z_pkl", "latest_checkpoint",
           "check_resume_settings", "truncate_log", "rng_state", "set_rng_state"]

#: Name of an epoch checkpoint in ``RUN/checkpoints``.
CHECKPOINT_RE = re.compile(r"^epoch_(\d+)\.pt$")


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if value != value else
                                                         ("inf" if value > 0 else "-inf"))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string is a JSON string


def write_toml(path: str | Path, sections: dict[str, dict]) -> None:
    """Write ``{section: {key: value}}`` as TOML (``None`` values are left out), atomically."""
    lines: list[str] = []
    for section, entries in sections.items():
        lines.append(f"[{section}]")
        for key, value in entries.items():
            if value is not None:
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    with atomic_output(path) as tmp:
        Path(tmp).write_text("\n".join(lines))


def write_z_pkl(path: str | Path, z: np.ndarray) -> None:
    """Write an ``(N, L)`` float32 array as a protocol-4 pickle (cryoDRGN ``z.pkl``)."""
    import pickle  # noqa: PLC0415

    arr = np.ascontiguousarray(np.asarray(z, dtype=np.float32))
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        pickle.dump(arr, fh, protocol=4)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint of the highest epoch in ``run_dir/checkpoints``, or None."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if (m := CHECKPOINT_RE.match(p.name))]
    return max(found)[1] if found else None


def _plain(value):
    """A setting as TOML gives it back (tuples as lists; ``None`` is never written)."""
    return json.loads(json.dumps(value)) if isinstance(value, (list, tuple)) else value


def check_resume_settings(run_dir: str | Path, recipe: dict,
                          may_change: tuple[str, ...] = ("epochs",)) -> None:
    """Refuse to resume a run with other recipe settings than it was started with.

    Parameters
    ----------
    run_dir
        The run folder (its ``config.toml`` holds the recipe it was started with; a
        folder without one is not checked).
    recipe
        The recipe of the resuming call as a dict (``dataclasses.asdict``).
    may_change
        Settings a resumed run may change (more epochs continue the run).

    Raises
    ------
    InputError
        Naming ``config.toml``, the first differing setting, the run's value and the
        new one: loading the checkpoint into other models would fail or silently
        train something else.
    """
    path = Path(run_dir) / "config.toml"
    if not path.is_file():
        return
    with open(path, "rb") as fh:
        saved = {**ADDED_SETTINGS, **tomllib.load(fh).get("recipe", {})}
    current = {k: _plain(v) for k, v in recipe.items() if v is not None}
    for key in sorted(set(saved) | set(current)):
        if key not in may_change and saved.get(key) != current.get(key):
            raise InputError(path, f"recipe {key}",
                             f"{saved.get(key)!r}, the value the run was started with (on "
                             f"--resume only {', '.join(may_change)} may change)",
                             current.get(key))


def truncate_log(path: Path, last_epoch: int) -> None:
    """Drop log lines of epochs after ``last_epoch`` (from a run killed after its checkpoint)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["epoch"] <= last_epoch]
    with atomic_output(path) as tmp:
        Path(tmp).write_text("".join(line + "\n" for line in keep))


def rng_state(batches: ParticleBatches, noise: torch.Generator) -> dict:
    """The RNG states an epoch checkpoint of :func:`cryoviz.train.loop.iter_train` holds.

    The global torch, numpy and python generators, the data order's generator
    (``batches.generator``) and the latent noise generator ``noise``, as tensors and
    plain values (loadable with ``torch.load(weights_only=True)``).
    """
    np_state = np.random.get_state()  # noqa: NPY002 - the global state is saved
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(np_state[0]),
                  "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py_state[0]),
                   "state": torch.tensor(py_state[1], dtype=torch.int64),
                   "gauss": py_state[2]},
        "data": batches.generator.get_state(),
        "noise": noise.get_state(),
    }


def set_rng_state(state: dict, batches: ParticleBatches, noise: torch.Generator) -> None:
    """Restore the generators saved by :func:`rng_state`."""
    # generator states are CPU byte tensors, also for a CUDA generator; a checkpoint
    # loaded with map_location="cuda" brings them back on the GPU
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np_state = (n["name"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                n["cached_gaussian"])
    np.random.set_state(np_state)  # noqa: NPY002
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    batches.generator.set_state(state["data"].cpu())
    noise.set_state(state["noise"].cpu())
