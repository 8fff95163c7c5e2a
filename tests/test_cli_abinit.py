"""``cryoviz.train.cli_abinit``: the run log of ab initio runs.

The commands themselves (one map and ``--classes K``, resumed or not) are run end
to end in ``tests/test_abinit_pipeline.py``.
"""

from __future__ import annotations

import json

from cryoviz.train.cli_abinit import _RunLog


def _record(phase: str, number: int) -> dict:
    if phase == "abinit":
        return {"phase": "abinit", "start": 0, "step": number}
    return {"phase": "refine", "iteration": number}


def test_a_resumed_log_keeps_the_lines_before_the_first_repeated_one(tmp_path):
    log = _RunLog(tmp_path, resume=False)
    firsts = [log.add(_record("abinit", s)) for s in (1, 2, 3)]
    firsts += [log.add(_record("refine", 1))]
    assert firsts == [False] * 4
    # resumed after step 2's checkpoint: steps 3 and on are repeated
    resumed = _RunLog(tmp_path, resume=True)
    assert resumed.add(_record("abinit", 3)) is True
    assert resumed.add(_record("refine", 1)) is False
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [(r["phase"], r.get("step", r.get("iteration"))) for r in lines] == [
        ("abinit", 1), ("abinit", 2), ("abinit", 3), ("refine", 1)]


def test_a_fresh_run_starts_a_new_log(tmp_path):
    (tmp_path / "log.jsonl").write_text(json.dumps(_record("abinit", 1)) + "\n")
    log = _RunLog(tmp_path, resume=False)
    assert log.add(_record("abinit", 1)) is False
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 1
