"""Atomic checkpoints of a CryoGAN run, and the latest one to resume from.

A checkpoint (``checkpoints/step_NNNNNN.pt`` in the run folder, written at every
progress report) holds everything the next steps depend on: the map and the
critic, both Adam states, the draws generator (rotations, shifts, CTF rows,
noise, penalty weights), the numpy generator and position of the real-image
order, the report history and the settings. It is loaded with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from cryoviz.io.mrc import atomic_output

__all__ = ["checkpoint_path", "latest_state", "save_state", "clear_states"]

_NAME = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    """``run_dir/checkpoints/step_{step:06d}.pt``."""
    return Path(run_dir) / "checkpoints" / f"step_{step:06d}.pt"


def save_state(run_dir: str | Path, step: int, state: dict) -> Path:
    """Write ``state`` atomically as the checkpoint of map step ``step``."""
    path = checkpoint_path(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        torch.save(state, tmp)
    return path


def latest_state(run_dir: str | Path) -> dict | None:
    """The checkpoint of the highest step in ``run_dir/checkpoints`` (None: none)."""
    folder = Path(run_dir) / "checkpoints"
    found = ([(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
             if folder.is_dir() else [])
    if not found:
        return None
    return torch.load(max(found)[1], map_location="cpu", weights_only=True)


def clear_states(run_dir: str | Path) -> None:
    """Remove a previous run's checkpoints (a fresh start in the same folder)."""
    folder = Path(run_dir) / "checkpoints"
    if folder.is_dir():
        for path in folder.iterdir():
            if _NAME.match(path.name):
                path.unlink()
