"""The one error type for bad user data."""

from __future__ import annotations

from pathlib import Path

from dist_contrast.errors import UserError


class DataError(UserError, ValueError):
    """A user data file (or data setting) that cannot be used as given.

    The message is one line: the file, what is wrong, and how to fix it, so the command line
    can print it without a traceback (exit status 2). A ``UserError``, so one raised in a
    worker reaches the driver as the same line; a ``ValueError`` too, so that a config
    validator raising it reports a validation error.
    """

    def __init__(self, path: str | Path | None, problem: str, fix: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        self.fix = fix
        where = f"{path}: " if path is not None else ""
        super().__init__(f"{where}{problem}; {fix}")


SUPPORTED_SUFFIXES = (".npy", ".parquet")


def check_suffix(path: str | Path, key: str = "data.path") -> str:
    """Return the file's suffix (``.npy`` or ``.parquet``) or raise a ``DataError``.

    ``key``: the setting that named the file, for the message.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(
            path,
            f"unsupported extension {suffix or '(none)'!r} for {key}",
            "save the features as .npy (array [N, D]) or .parquet (one column per feature)",
        )
    return suffix
