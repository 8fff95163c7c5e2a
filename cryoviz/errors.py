"""Errors raised on bad user input, and by a training run that diverges.

Every problem with a file a user gave us is reported as an :class:`InputError`
naming the file, the field and what was expected, so that the message alone
tells the user what to fix. A run whose loss stops being finite stops with a
:class:`TrainingDiverged` naming the epoch and the last good checkpoint.
"""

from __future__ import annotations

from os import PathLike


class InputError(ValueError):
    """A user-supplied file or option is invalid.

    Parameters
    ----------
    path
        The file (or option source) at fault; ``None`` for a command-line option.
    field
        The field, column, header entry or option that is wrong.
    expected
        What was expected, in words.
    got
        What was found instead (optional).
    """

    def __init__(
        self,
        path: str | PathLike | None,
        field: str,
        expected: str,
        got: object | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.field = field
        self.expected = expected
        self.got = got
        where = f"{self.path}: " if self.path is not None else ""
        message = f"{where}{field}: expected {expected}"
        if got is not None:
            message += f", got {got}"
        super().__init__(message)


class TrainingDiverged(RuntimeError):
    """A training run's loss became NaN or infinite; its weights are not saved.

    Parameters
    ----------
    run_dir
        The run folder.
    epoch
        The 1-based epoch whose mean loss was not finite.
    loss
        That mean loss.
    """

    def __init__(self, run_dir: str | PathLike, epoch: int, loss: float) -> None:
        self.run_dir = str(run_dir)
        self.epoch = int(epoch)
        self.loss = float(loss)
        last = (f"the checkpoint of epoch {self.epoch - 1} is the last good one"
                if self.epoch > 1 else "no epoch finished")
        super().__init__(
            f"{self.run_dir}: training diverged: the mean loss of epoch {self.epoch} is "
            f"{self.loss} (not finite), so its weights were not saved; {last}. Start a new "
            "run with another --seed or a lower --lr")
