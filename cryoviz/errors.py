"""Errors raised on bad user input.

Every problem with a file a user gave us is reported as an :class:`InputError`
naming the file, the field and what was expected, so that the message alone
tells the user what to fix.
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
