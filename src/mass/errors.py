"""One exception type for bad input: the CLI prints it as one line and exits non-zero."""

from __future__ import annotations

from pathlib import Path


class MassError(Exception):
    """A user-facing error: bad file, bad config, incompatible checkpoint.

    Args:
        message: what is wrong, in one sentence.
        path: the file concerned, if any.
        line: 1-based line number in that file, if any.
    """

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = f"{self.path}:{self.line}: " if self.line is not None else f"{self.path}: "
        return f"{where}{self.message}"
