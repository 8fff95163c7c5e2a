"""Files of a training run folder: ``config.toml``, ``z.pkl``, epoch checkpoints.

Shared by the training loop and the algorithms with their own loops (so that
they need not import the loop).
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from pathlib import Path

import numpy as np

from cryoviz.errors import InputError
from cryoviz.io.mrc import atomic_output

__all__ = ["CHECKPOINT_RE", "write_toml", "write_z_pkl", "latest_checkpoint",
           "check_resume_settings"]

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
        saved = tomllib.load(fh).get("recipe", {})
    current = {k: _plain(v) for k, v in recipe.items() if v is not None}
    for key in sorted(set(saved) | set(current)):
        if key not in may_change and saved.get(key) != current.get(key):
            raise InputError(path, f"recipe {key}",
                             f"{saved.get(key)!r}, the value the run was started with (on "
                             f"--resume only {', '.join(may_change)} may change)",
                             current.get(key))
