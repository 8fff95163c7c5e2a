"""Atomic per-iteration checkpoints of an exact-EM refinement, and resuming from them.

After each iteration :func:`cryoviz.inference.refine.iter_refine` can save what
the next iteration needs (half maps, noise spectrum, FSC, pose summaries, the
log-likelihoods so far) to ``refine_state.pt`` in the run folder, written to a
temporary file and renamed. A resumed run starts from the saved iteration and
ends with the map an unbroken run gives.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cryoviz.errors import InputError
from cryoviz.io.mrc import atomic_output
from cryoviz.metrics.fsc import FSCCurve

__all__ = ["STATE_FILE", "RefineCheckpoint", "save_refine_state", "load_refine_state",
           "run_identity", "refine_identity", "read_checkpoint", "check_identity",
           "check_global_searches", "curve_payload"]

STATE_FILE = "refine_state.pt"
_FORMAT = 1
# settings that may change between the first run and its resumption (the global
# searches only where the iterations done keep their kind: check_global_searches)
_MAY_CHANGE = ("n_iterations", "n_global_iterations")


@dataclass(frozen=True)
class RefineCheckpoint:
    """The state of a refinement after ``iteration`` iterations.

    Attributes
    ----------
    iteration
        Iterations done (1-based count).
    full_map
        ``(D, D, D)`` float32 map of the last iteration.
    half_maps
        ``(2, D, D, D)`` float64 half maps (the next iteration's references).
    sigma2
        ``(S,)`` float64 noise power per shell.
    curve
        Half-map FSC of the last iteration.
    summaries
        Pose summaries per particle (``rotations`` ``(N, 3, 3)``, ``shifts_angstrom``
        ``(N, 2)``, spreads, top-k), as :func:`~cryoviz.inference.pose_search.summarise`
        gives them, on the CPU.
    log_likelihoods
        Total log evidence of each iteration so far.
    elapsed_seconds
        Wall time of the iterations so far (resumed runs add theirs).
    e_step_limit
        Shell limit (pixels) of the last iteration's E-step.
    """

    iteration: int
    full_map: torch.Tensor
    half_maps: torch.Tensor
    sigma2: torch.Tensor
    curve: FSCCurve
    summaries: dict[str, torch.Tensor]
    log_likelihoods: tuple[float, ...]
    elapsed_seconds: float
    e_step_limit: int


def run_identity(settings, particle_ids: np.ndarray,
                 may_change: tuple[str, ...] = _MAY_CHANGE) -> dict:
    """What a checkpoint must share with the run that resumes it.

    The settings (a dataclass) except the fields in ``may_change``, and the
    particle ids in the run's order.
    """
    fixed = {k: v for k, v in dataclasses.asdict(settings).items() if k not in may_change}
    ids = np.asarray(particle_ids, dtype=np.int64)
    return {"settings": fixed, "n_particles": int(ids.size),
            "particle_ids": torch.from_numpy(ids.copy())}


def refine_identity(settings, particle_ids: np.ndarray,
                    may_change: tuple[str, ...] = _MAY_CHANGE) -> dict:
    """:func:`run_identity` of a refinement's or classification's
    :class:`~cryoviz.inference.refine.RefineSettings`, ``n_global_iterations`` kept
    on its own for :func:`check_global_searches`."""
    return {**run_identity(settings, particle_ids, may_change),
            "n_global_iterations": int(settings.n_global_iterations)}


def curve_payload(curve: FSCCurve) -> dict:
    """An FSC curve's fields as CPU tensors (``FSCCurve(**payload)`` rebuilds it)."""
    return {f.name: getattr(curve, f.name).cpu() for f in dataclasses.fields(curve)}


def read_checkpoint(path: Path, what: str, fmt: int, older: tuple[int, ...] = ()) -> dict:
    """``torch.load`` a checkpoint file; :class:`InputError` if unreadable or of another format.

    ``what`` names the file kind in the message (e.g. ``'refine_state.pt'``);
    ``older`` lists earlier formats the caller converts itself.
    """
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise InputError(path, "checkpoint", f"a {what} written by cryoviz",
                         got=f"unreadable ({type(exc).__name__}: {exc})") from exc
    if not isinstance(saved, dict) or saved.get("format") not in (fmt, *older):
        expected = " or ".join(str(v) for v in (fmt, *older))
        raise InputError(path, "format", f"version {expected}",
                         got=saved.get("format") if isinstance(saved, dict) else type(saved))
    return saved


def check_identity(path: Path, saved: dict, expected: dict, may_change: tuple[str, ...]) -> None:
    """:class:`InputError` unless ``saved`` has ``expected``'s settings and particles.

    Both are :func:`run_identity` dictionaries; ``may_change`` names the settings
    that may differ (for the message).
    """
    if saved["settings"] != expected["settings"]:
        changed = sorted(k for k in expected["settings"]
                         if saved["settings"].get(k) != expected["settings"][k])
        allowed = f"only {', '.join(may_change)} may change" if may_change else "none may change"
        raise InputError(path, "settings", f"the settings of the run being resumed ({allowed})",
                         got=f"different {', '.join(changed)}")
    if (saved["n_particles"] != expected["n_particles"]
            or not torch.equal(saved["particle_ids"], expected["particle_ids"])):
        raise InputError(path, "particles", f"the {saved['n_particles']} particles of the run "
                         "being resumed, in the same order",
                         got=f"{expected['n_particles']} particles or another order")


def check_global_searches(path: Path, saved: dict, settings) -> None:
    """:class:`InputError` unless ``settings`` gives the iterations done the same kind.

    A resumed run may change ``n_global_iterations`` (e.g. its default grows with
    more ``n_iterations``) as long as each of the ``saved["iteration"]``
    iterations done would have been global, or local, under the new value too:
    the resumed run then ends as an unbroken run with the new settings would.
    ``saved`` is a :func:`refine_identity` checkpoint; one written before
    ``n_global_iterations`` could change keeps it in its settings, and is
    moved out of them here (before :func:`check_identity`).
    """
    if "n_global_iterations" not in saved:
        saved["n_global_iterations"] = saved["settings"].pop("n_global_iterations")
    done = int(saved["iteration"])
    before = int(saved["n_global_iterations"])
    if min(before, done) != min(settings.n_global_iterations, done):
        keep = f"{before}" if before < done else f"{done} or more"
        raise InputError(path, "n_global_iterations",
                         f"{keep}: {min(before, done)} of the {done} iterations done searched "
                         "all of SO(3)", got=settings.n_global_iterations)


def save_refine_state(run_dir: str | Path, state: RefineCheckpoint, settings,
                      particle_ids: np.ndarray) -> Path:
    """Write ``run_dir/refine_state.pt`` atomically; returns its path.

    Parameters
    ----------
    run_dir
        Run folder (created if missing).
    state
        The state after the iteration just finished.
    settings
        The run's :class:`~cryoviz.inference.refine.RefineSettings`.
    particle_ids
        ``(N,)`` ids of the particles, in the run's order.
    """
    path = Path(run_dir) / STATE_FILE
    payload = {
        "format": _FORMAT, **refine_identity(settings, particle_ids),
        "iteration": state.iteration, "full_map": state.full_map.cpu(),
        "half_maps": state.half_maps.cpu(), "sigma2": state.sigma2.cpu(),
        "curve": curve_payload(state.curve),
        "summaries": {k: v.cpu() for k, v in state.summaries.items()},
        "log_likelihoods": list(state.log_likelihoods),
        "elapsed_seconds": float(state.elapsed_seconds),
        "e_step_limit": int(state.e_step_limit),
    }
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_refine_state(run_dir: str | Path, settings,
                      particle_ids: np.ndarray) -> RefineCheckpoint | None:
    """The checkpoint in ``run_dir``, or ``None`` if there is none.

    Raises
    ------
    InputError
        If the file is unreadable, or was written for other settings (anything but
        ``n_iterations``, and ``n_global_iterations`` as :func:`check_global_searches`
        allows) or other particles, or has more iterations than asked for.
    """
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        return None
    saved = read_checkpoint(path, STATE_FILE, _FORMAT)
    check_global_searches(path, saved, settings)
    check_identity(path, saved, refine_identity(settings, particle_ids), _MAY_CHANGE)
    if saved["iteration"] > settings.n_iterations:
        raise InputError(path, "iteration", f"at most n_iterations = {settings.n_iterations}",
                         got=saved["iteration"])
    return RefineCheckpoint(
        iteration=int(saved["iteration"]), full_map=saved["full_map"],
        half_maps=saved["half_maps"], sigma2=saved["sigma2"], curve=FSCCurve(**saved["curve"]),
        summaries=dict(saved["summaries"]), log_likelihoods=tuple(saved["log_likelihoods"]),
        elapsed_seconds=float(saved["elapsed_seconds"]), e_step_limit=int(saved["e_step_limit"]))
