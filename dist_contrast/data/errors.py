"""The one error type for bad user data."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A user data file (or data setting) that cannot be used as given.

    The message is one line: the file, what is wrong, and how to fix it, so the command line
    can print it without a traceback.
    """

    def __init__(self, path: str | Path | None, problem: str, fix: str) -> None:
        where = f"{path}: " if path is not None else ""
        super().__init__(f"{where}{problem}; {fix}")


SUPPORTED_SUFFIXES = (".npy", ".parquet")


def check_suffix(path: str | Path) -> str:
    """Return the file's suffix (``.npy`` or ``.parquet``) or raise a ``DataError``."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(
            path,
            f"unsupported extension {suffix or '(none)'!r}",
            "save the features as .npy (array [N, D]) or .parquet (one column per feature)",
        )
    return suffix
