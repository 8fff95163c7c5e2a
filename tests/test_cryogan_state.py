"""CryoGAN checkpoints: the highest step is the latest, clearing removes only checkpoints."""

from __future__ import annotations

import torch

from cryoviz.inference.cryogan_state import (
    checkpoint_path,
    clear_states,
    latest_state,
    save_state,
)


def test_latest_is_the_highest_step_and_clear_keeps_other_files(tmp_path):
    assert latest_state(tmp_path) is None
    for step in (100, 20, 1000):
        save_state(tmp_path, step, {"step": step, "map": torch.full((2,), float(step))})
    assert checkpoint_path(tmp_path, 20).name == "step_000020.pt"
    state = latest_state(tmp_path)
    assert state["step"] == 1000 and torch.equal(state["map"], torch.full((2,), 1000.0))
    other = tmp_path / "checkpoints" / "notes.txt"
    other.write_text("kept")
    clear_states(tmp_path)
    assert latest_state(tmp_path) is None and other.read_text() == "kept"
    assert not list((tmp_path / "checkpoints").glob("*.tmp*"))  # atomic writes left nothing
