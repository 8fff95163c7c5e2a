"""``cryoviz.train.cli_abinit``: the run log of ab initio runs and the initial-model settings.

The commands themselves (one map and ``--classes K``, resumed or not) are run end
to end in ``tests/test_abinit_pipeline.py``.
"""

from __future__ import annotations

import argparse
import json

import pytest

from cryoviz.cli import build_parser
from cryoviz.errors import InputError
from cryoviz.inference.abinit_pipeline import CLASS_GLOBAL_ITERATIONS, CLASS_SCREEN_FACTOR
from cryoviz.train.cli_abinit import _RunLog, abinit_refinement, abinit_settings


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


class _Particles:
    box_size = 64

    def __len__(self) -> int:
        return 4000


def _args(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(["train", "p.star", "--recipe", "cryosparc-abinit",
                                      "-o", "out", *flags])


@pytest.mark.parametrize(("flags", "classes", "expected"), [
    ((), False, (0, 75)),  # one map: no screening by default
    ((), True, (CLASS_SCREEN_FACTOR * 3, 75)),  # classes: 4 per kept start, half the steps
    (("--abinit-starts", "2", "--abinit-steps", "40"), True, (CLASS_SCREEN_FACTOR * 2, 20)),
    (("--abinit-screen", "0"), True, (0, 75)),
    (("--abinit-screen", "9", "--abinit-screen-steps", "30"), False, (9, 30)),
])
def test_screening_defaults(flags, classes, expected):
    settings = abinit_settings(_args(*flags), _Particles(), classes=classes)
    assert (settings.screen_starts, settings.screen_steps) == expected
    settings.validate(64)


@pytest.mark.parametrize(("flags", "classes", "expected"), [
    ((), False, (4, 1)),  # one map: one global search, then local ones
    ((), True, (4, CLASS_GLOBAL_ITERATIONS)),  # classes: 3 global searches
    (("--epochs", "2"), True, (2, 2)),  # the classes' default at most --epochs
    (("--epochs", "5", "--global-iterations", "3"), False, (5, 3)),
    (("--epochs", "5", "--global-iterations", "1"), True, (5, 1)),
    (("--epochs", "2", "--global-iterations", "9"), False, (2, 2)),  # at most --epochs
    (("--global-iterations", "0"), True, (4, 0)),
])
def test_refinement_global_iterations(flags, classes, expected):
    abinit = abinit_settings(_args(*flags), _Particles(), classes=classes)
    refine = abinit_refinement(_args(*flags), abinit, modal=True, classes=classes)
    assert (refine.n_iterations, refine.n_global_iterations) == expected
    refine.validate()


def test_negative_global_iterations_are_refused():
    args = _args("--global-iterations", "-1")
    with pytest.raises(InputError, match="--global-iterations"):
        abinit_refinement(args, abinit_settings(args, _Particles()), modal=True)
