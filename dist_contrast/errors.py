"""User-facing errors: one line that names the problem and the fix, exit status 2."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix (bad config, missing file, unreachable service).

    The CLI prints ``str(error)`` as one line on stderr and exits with status 2, no traceback.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        # Keep the promise of "one line" even when a library's message has newlines in it.
        super().__init__(" ".join(message.split()))


class RunFailed(UserError):
    """The run started but could not finish (a worker died, an error in a worker): one line,
    exit status 1; the full report is in a file the line names."""

    exit_code = 1
