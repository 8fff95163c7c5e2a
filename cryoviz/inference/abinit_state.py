"""The state of an ab initio run (:mod:`cryoviz.inference.abinit`), saved and restored.

A start's model (running half sums, noise, map, latest poses), its minibatch
schedule and random generator, the best finished start and, when starts are
screened, the screened starts kept to go on are what the next step needs.
:func:`save_abinit_state` writes them to ``abinit_state.pt`` in the
run folder (a temporary file, then renamed); a run resumed from it takes the
same steps with the same images and ends with the map an unbroken run gives.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cryoviz.backprojection import FourierAccumulator
from cryoviz.errors import InputError
from cryoviz.inference.refine_state import (
    check_identity,
    curve_payload,
    read_checkpoint,
    run_identity,
)
from cryoviz.io.mrc import atomic_output
from cryoviz.metrics.fsc import FSCCurve

__all__ = ["ABINIT_STATE_FILE", "Schedule", "StartState", "BestStart", "PausedStart",
           "top_starts", "keep_best", "AbinitCheckpoint", "abinit_finished", "save_abinit_state",
           "from_format_1", "load_abinit_state"]

ABINIT_STATE_FILE = "abinit_state.pt"
_FORMAT = 2


class Schedule:
    """Minibatch indices: passes over fresh random permutations of ``n`` images.

    Parameters
    ----------
    n, batch_size
        Images and images per batch.
    rng
        The start's generator; the first permutation is drawn on construction.
    """

    def __init__(self, n: int, batch_size: int, rng: np.random.Generator) -> None:
        self.n, self.batch_size, self.rng = int(n), int(batch_size), rng
        self.order = rng.permutation(self.n)
        self.position = 0

    def next_batch(self) -> np.ndarray:
        """``(batch_size,)`` sorted indices of the next batch."""
        if self.position + self.batch_size > self.n:
            self.order, self.position = self.rng.permutation(self.n), 0
        batch = np.sort(self.order[self.position:self.position + self.batch_size])
        self.position += self.batch_size
        return batch

    def state(self) -> dict:
        """Generator state (JSON text), current permutation and position."""
        return {"rng": json.dumps(self.rng.bit_generator.state),
                "order": torch.from_numpy(self.order.astype(np.int64)),
                "position": self.position}

    @classmethod
    def restore(cls, n: int, batch_size: int, saved: dict) -> Schedule:
        """The schedule as :meth:`state` left it."""
        schedule = cls.__new__(cls)
        schedule.n, schedule.batch_size = int(n), int(batch_size)
        schedule.rng = np.random.default_rng()
        schedule.rng.bit_generator.state = json.loads(saved["rng"])
        schedule.order = saved["order"].numpy().copy()
        schedule.position = int(saved["position"])
        return schedule


@dataclass
class StartState:
    """One start's model: running half sums, noise, map and latest poses.

    Attributes
    ----------
    accs
        The two half sets' running Fourier sums.
    sigma2
        ``(S,)`` noise power per shell.
    volume
        ``(d, d, d)`` float64 current map (low-passed, masked).
    curve
        Half-map FSC of the running sums.
    rotations, shifts_angstrom, seen
        ``(N, 3, 3)``, ``(N, 2)``, ``(N,)`` latest best pose of each particle and
        whether it was searched.
    """

    accs: list[FourierAccumulator]
    sigma2: torch.Tensor
    volume: torch.Tensor
    curve: FSCCurve
    rotations: np.ndarray
    shifts_angstrom: np.ndarray
    seen: np.ndarray

    def to_payload(self) -> dict:
        """Tensors on the CPU, for :func:`torch.save`."""
        return {"acc_data": [a.data.cpu() for a in self.accs],
                "acc_weight": [a.weight.cpu() for a in self.accs],
                "sigma2": self.sigma2.cpu(), "volume": self.volume.cpu(),
                "curve": curve_payload(self.curve),
                "rotations": torch.from_numpy(self.rotations),
                "shifts_angstrom": torch.from_numpy(self.shifts_angstrom),
                "seen": torch.from_numpy(self.seen)}

    @classmethod
    def from_payload(cls, saved: dict, box: int, device: torch.device) -> StartState:
        """The state :meth:`to_payload` saved, on ``device``."""
        accs = []
        for data, weight in zip(saved["acc_data"], saved["acc_weight"], strict=True):
            acc = FourierAccumulator(box, device=device)
            acc.data.copy_(data)
            acc.weight.copy_(weight)
            accs.append(acc)
        return cls(accs=accs, sigma2=saved["sigma2"].to(device),
                   volume=saved["volume"].to(device), curve=FSCCurve(**saved["curve"]),
                   rotations=saved["rotations"].numpy().copy(),
                   shifts_angstrom=saved["shifts_angstrom"].numpy().copy(),
                   seen=saved["seen"].numpy().copy())


@dataclass(frozen=True)
class BestStart:
    """What the result needs of the best finished start.

    Attributes
    ----------
    index
        0-based start.
    volume
        ``(d, d, d)`` float64 map of that start.
    curve, rotations, shifts_angstrom, seen
        As in :class:`StartState`.
    """

    index: int
    volume: torch.Tensor
    curve: FSCCurve
    rotations: np.ndarray
    shifts_angstrom: np.ndarray
    seen: np.ndarray

    @classmethod
    def of(cls, index: int, state: StartState) -> BestStart:
        """The finished ``state`` of start ``index``."""
        return cls(index=index, volume=state.volume, curve=state.curve,
                   rotations=state.rotations, shifts_angstrom=state.shifts_angstrom,
                   seen=state.seen)


@dataclass(frozen=True)
class PausedStart:
    """A screened start kept to go on after the screen.

    Attributes
    ----------
    start
        0-based start (its seed is the settings' seed + 1000 ``start``).
    evidence
        Mean log evidence of the common images under its map at the screen.
    schedule, current, noise0
        As in :class:`AbinitCheckpoint`, at the screen.
    """

    start: int
    evidence: float
    schedule: dict
    current: dict
    noise0: torch.Tensor

    def to_payload(self) -> dict:
        """Fields for :func:`torch.save`."""
        return {"start": self.start, "evidence": self.evidence, "schedule": self.schedule,
                "current": self.current, "noise0": self.noise0.cpu()}


def top_starts(evidence_by_start: dict[int, float], n_keep: int) -> tuple[int, ...]:
    """The ``n_keep`` starts of largest evidence (ties: the earlier start), in order of start."""
    ranked = sorted(evidence_by_start, key=lambda c: (-evidence_by_start[c], c))[:n_keep]
    return tuple(sorted(ranked))


def keep_best(paused: list[PausedStart], n_keep: int) -> list[PausedStart]:
    """The paused starts :func:`top_starts` keeps, in order of start."""
    kept = set(top_starts({p.start: p.evidence for p in paused}, n_keep))
    return sorted((p for p in paused if p.start in kept), key=lambda p: p.start)


@dataclass(frozen=True)
class AbinitCheckpoint:
    """The state of an ab initio run after ``step`` steps of start ``start``.

    Attributes
    ----------
    start, step
        0-based start and the steps it has done (``n_steps``, or
        ``screen_steps`` for a screening run: finished).
    screening
        Whether that start is being screened (run to ``screen_steps``) or is
        going on to ``n_steps``.
    schedule
        :meth:`Schedule.state` of that start.
    current
        :meth:`StartState.to_payload` of that start.
    noise0
        ``(S,)`` that start's first noise estimate (scores the finished starts).
    best
        The best finished start so far, or ``None``.
    evidences
        Mean log evidence of each finished start.
    screen_evidences
        Mean log evidence of each screened start at the screen.
    paused
        The screened starts kept to go on that have not begun to (in order of start).
    last_progress
        The figures of the last step's progress (``resolution_angstrom``,
        ``half_map_resolution_angstrom``, ``log_likelihood``).
    elapsed_seconds
        Wall time so far (resumed runs add theirs).
    """

    start: int
    step: int
    screening: bool
    schedule: dict
    current: dict
    noise0: torch.Tensor
    best: BestStart | None
    evidences: tuple[float, ...]
    screen_evidences: tuple[float, ...]
    paused: tuple[PausedStart, ...]
    last_progress: dict
    elapsed_seconds: float


def abinit_finished(saved: AbinitCheckpoint | None, settings) -> bool:
    """Whether ``saved`` is a run at the last step of its last start."""
    if saved is None or saved.screening or saved.step != settings.n_steps:
        return False
    if settings.screen_starts:
        return not saved.paused
    return saved.start == settings.n_starts - 1


def save_abinit_state(run_dir: str | Path, state: AbinitCheckpoint, settings,
                      particle_ids: np.ndarray) -> Path:
    """Write ``run_dir/abinit_state.pt`` atomically; returns its path.

    Parameters
    ----------
    run_dir
        Run folder (created if missing).
    state
        The run's state after its last step.
    settings
        The run's :class:`~cryoviz.inference.abinit.AbinitSettings` (none may
        change on resuming).
    particle_ids
        ``(N,)`` ids of the particles, in the run's order.
    """
    path = Path(run_dir) / ABINIT_STATE_FILE
    best = None
    if state.best is not None:
        b = state.best
        best = {"index": b.index, "volume": b.volume.cpu(), "curve": curve_payload(b.curve),
                "rotations": torch.from_numpy(b.rotations),
                "shifts_angstrom": torch.from_numpy(b.shifts_angstrom),
                "seen": torch.from_numpy(b.seen)}
    payload = {"format": _FORMAT, **run_identity(settings, particle_ids, ()),
               "start": state.start, "step": state.step, "screening": state.screening,
               "schedule": state.schedule, "current": state.current,
               "noise0": state.noise0.cpu(), "best": best, "evidences": list(state.evidences),
               "screen_evidences": list(state.screen_evidences),
               "paused": [p.to_payload() for p in state.paused],
               "last_progress": dict(state.last_progress),
               "elapsed_seconds": float(state.elapsed_seconds)}
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    return path


def from_format_1(saved: dict, settings) -> dict:
    """A checkpoint of format 1 (written before screening existed) in format 2.

    A format-1 run is a run without screening: its settings gain
    ``screen_starts = 0``, and the ``screen_steps`` of the run resuming it
    (they do nothing without screening); it screens no start and has no
    screened start to go on. Resuming it with screening on is refused by the
    identity check, which names ``screen_starts``.
    """
    old = dict(saved["settings"])
    old.setdefault("screen_starts", 0)
    old.setdefault("screen_steps", settings.screen_steps)
    return {**saved, "format": _FORMAT, "settings": old, "screening": False,
            "screen_evidences": [], "paused": []}


def load_abinit_state(run_dir: str | Path, settings,
                      particle_ids: np.ndarray) -> AbinitCheckpoint | None:
    """The checkpoint in ``run_dir``, or ``None`` if there is none.

    A checkpoint of format 1 (before screening) is read through
    :func:`from_format_1`.

    Raises
    ------
    InputError
        If the file is unreadable, or was written for other settings or other
        particles, or its start and step are outside the settings.
    """
    path = Path(run_dir) / ABINIT_STATE_FILE
    if not path.is_file():
        return None
    saved = read_checkpoint(path, ABINIT_STATE_FILE, _FORMAT, older=(1,))
    if saved["format"] == 1:
        saved = from_format_1(saved, settings)
    check_identity(path, saved, run_identity(settings, particle_ids, ()), ())
    n_runs = settings.screen_starts or settings.n_starts
    last = settings.screen_steps if saved["screening"] else settings.n_steps
    if not (0 <= saved["start"] < n_runs and 1 <= saved["step"] <= last):
        raise InputError(path, "start, step", f"a start below {n_runs} and a step from 1 to "
                         f"{last}", got=(saved["start"], saved["step"]))
    best = None
    if saved["best"] is not None:
        b = saved["best"]
        best = BestStart(index=int(b["index"]), volume=b["volume"], curve=FSCCurve(**b["curve"]),
                         rotations=b["rotations"].numpy().copy(),
                         shifts_angstrom=b["shifts_angstrom"].numpy().copy(),
                         seen=b["seen"].numpy().copy())
    paused = tuple(PausedStart(start=int(p["start"]), evidence=float(p["evidence"]),
                               schedule=p["schedule"], current=p["current"],
                               noise0=p["noise0"]) for p in saved["paused"])
    return AbinitCheckpoint(start=int(saved["start"]), step=int(saved["step"]),
                            screening=bool(saved["screening"]),
                            schedule=saved["schedule"], current=saved["current"],
                            noise0=saved["noise0"], best=best,
                            evidences=tuple(float(e) for e in saved["evidences"]),
                            screen_evidences=tuple(float(e)
                                                   for e in saved["screen_evidences"]),
                            paused=paused,
                            last_progress=dict(saved["last_progress"]),
                            elapsed_seconds=float(saved["elapsed_seconds"]))
