"""What :func:`cryoviz.inference.abinit_classes.iter_abinit_classes` yields, and its result file.

The K-class initial model ends with every image searched once more against the
final maps (the assignment pass). Its :class:`ClassAbinitResult` is written to
``abinit_classes_result.pt`` in the run's checkpoint folder
(:func:`save_class_abinit_result`), so that a run resumed after that stage reads
it back (:func:`load_class_abinit_result`) instead of searching every image again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from cryoviz.errors import InputError
from cryoviz.inference.refine_state import check_identity, read_checkpoint, run_identity
from cryoviz.io.mrc import atomic_output

if TYPE_CHECKING:
    from cryoviz.inference.abinit import AbinitSettings

__all__ = ["CLASS_ABINIT_RESULT_FILE", "ClassAbinitResult", "ClassAbinitProgress",
           "save_class_abinit_result", "load_class_abinit_result", "discard_class_abinit_result"]

CLASS_ABINIT_RESULT_FILE = "abinit_classes_result.pt"
_FORMAT = 1
_ARRAYS = ("posteriors", "best_class", "class_fractions", "rotations", "shifts_angstrom")


@dataclass(frozen=True)
class ClassAbinitResult:
    """Outcome of :func:`~cryoviz.inference.abinit_classes.iter_abinit_classes`.

    Attributes
    ----------
    maps
        ``(K, D, D, D)`` float32 class maps on the particles' box and voxel size
        (the working maps Fourier-padded).
    working_maps
        ``(K, d, d, d)`` float32 class maps on the working box.
    posteriors
        ``(N, K)`` class posteriors of every particle under the final maps.
    best_class
        ``(N,)`` each particle's most probable class.
    class_fractions
        ``(K,)`` the class prior at the end.
    rotations, shifts_angstrom
        ``(N, 3, 3)`` and ``(N, 2)`` each particle's most probable pose in its
        most probable class (in that class map's frame).
    pixel_size_angstrom, working_pixel_size_angstrom
        Voxel sizes of ``maps`` and ``working_maps``.
    chosen_maps
        ``K`` pairs (restart, class of that restart) the maps come from.
    start_log_likelihoods
        ``(R,)`` mean log evidence of the common images under each restart's own
        equal mixture of its ``K`` maps.
    log_likelihood
        The same for the kept maps (at least the largest of ``start_log_likelihoods``).
    seconds, settings
        Bookkeeping.
    """

    maps: torch.Tensor
    working_maps: torch.Tensor
    posteriors: np.ndarray
    best_class: np.ndarray
    class_fractions: np.ndarray
    rotations: np.ndarray
    shifts_angstrom: np.ndarray
    pixel_size_angstrom: float
    working_pixel_size_angstrom: float
    chosen_maps: tuple[tuple[int, int], ...]
    start_log_likelihoods: tuple[float, ...]
    log_likelihood: float
    seconds: float
    settings: AbinitSettings


@dataclass(frozen=True)
class ClassAbinitProgress:
    """State after one step of :func:`~cryoviz.inference.abinit_classes.iter_abinit_classes`.

    Attributes
    ----------
    step, n_steps
        1-based step and the steps of the run.
    resolution_angstrom
        The step's search and low-pass limit (Å).
    class_fractions
        ``(K,)`` class prior after the step.
    log_likelihood
        Mean over the batch of ``log sum_k pi_k p(X_i | k)``.
    images_per_second
        Images searched (against every class) and backprojected per second.
    step_seconds, elapsed_seconds
        Wall time of this step and since the run began (resumed runs add theirs).
    result
        The :class:`ClassAbinitResult` on the last step, else ``None``.
    start, n_starts
        0-based restart of the step and the run's restarts.
    """

    step: int
    n_steps: int
    resolution_angstrom: float
    class_fractions: tuple[float, ...]
    log_likelihood: float
    images_per_second: float
    step_seconds: float
    elapsed_seconds: float
    result: ClassAbinitResult | None = None
    start: int = 0
    n_starts: int = 1


def save_class_abinit_result(run_dir: str | Path, result: ClassAbinitResult,
                             particle_ids: np.ndarray, last_progress: dict) -> Path:
    """Write ``run_dir/abinit_classes_result.pt`` atomically; returns its path.

    Parameters
    ----------
    run_dir
        The run's checkpoint folder (created if missing).
    result
        The finished stage's result.
    particle_ids
        ``(N,)`` ids of the particles, in the run's order; with ``result.settings``
        the run's identity, checked when the file is read back.
    last_progress
        The figures of the last step (``resolution_angstrom``, ``class_fractions``,
        ``log_likelihood``, ``images_per_second``, ``step_seconds``), for the
        progress record a resumed run yields.
    """
    path = Path(run_dir) / CLASS_ABINIT_RESULT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": _FORMAT, **run_identity(result.settings, particle_ids, ()),
               "n_classes": len(result.maps),
               "maps": result.maps.cpu(), "working_maps": result.working_maps.cpu(),
               **{name: torch.from_numpy(np.ascontiguousarray(getattr(result, name)))
                  for name in _ARRAYS},
               "pixel_size_angstrom": float(result.pixel_size_angstrom),
               "working_pixel_size_angstrom": float(result.working_pixel_size_angstrom),
               "chosen_maps": list(result.chosen_maps),
               "start_log_likelihoods": [float(v) for v in result.start_log_likelihoods],
               "log_likelihood": float(result.log_likelihood),
               "seconds": float(result.seconds),
               "last_progress": dict(last_progress)}
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_class_abinit_result(run_dir: str | Path, settings: AbinitSettings,
                             particle_ids: np.ndarray, n_classes: int
                             ) -> tuple[ClassAbinitResult, dict] | None:
    """The result in ``run_dir`` and its last step's figures, or ``None`` if there is none.

    ``settings``, ``particle_ids`` (``(N,)``, in the run's order) and
    ``n_classes`` are the resuming run's; the file must have been written by a
    run with the same.

    Raises
    ------
    InputError
        If the file is unreadable, of another format, or of another run (settings,
        particles or number of classes), naming the file and the field.
    """
    path = Path(run_dir) / CLASS_ABINIT_RESULT_FILE
    if not path.is_file():
        return None
    saved = read_checkpoint(path, CLASS_ABINIT_RESULT_FILE, _FORMAT)
    check_identity(path, saved, run_identity(settings, particle_ids, ()), ())
    if int(saved["n_classes"]) != int(n_classes):
        raise InputError(path, "n_classes", f"{n_classes} (the run being resumed)",
                         saved["n_classes"])
    n = int(saved["n_particles"])
    if saved["posteriors"].shape != (n, int(n_classes)):
        raise InputError(path, "posteriors", f"shape ({n}, {n_classes})",
                         tuple(saved["posteriors"].shape))
    result = ClassAbinitResult(
        maps=saved["maps"], working_maps=saved["working_maps"],
        **{name: saved[name].numpy() for name in _ARRAYS},
        pixel_size_angstrom=float(saved["pixel_size_angstrom"]),
        working_pixel_size_angstrom=float(saved["working_pixel_size_angstrom"]),
        chosen_maps=tuple(tuple(int(v) for v in pair) for pair in saved["chosen_maps"]),
        start_log_likelihoods=tuple(float(v) for v in saved["start_log_likelihoods"]),
        log_likelihood=float(saved["log_likelihood"]), seconds=float(saved["seconds"]),
        settings=settings)
    last = dict(saved["last_progress"])
    last["class_fractions"] = tuple(float(v) for v in last["class_fractions"])
    return result, last


def discard_class_abinit_result(run_dir: str | Path) -> None:
    """Remove ``run_dir``'s result file: a run started afresh there replaces its stage."""
    (Path(run_dir) / CLASS_ABINIT_RESULT_FILE).unlink(missing_ok=True)
