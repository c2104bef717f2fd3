"""User-facing errors: one line that names the problem and the fix, exit status 2.

Every error here survives pickling with its attributes (``exit_code``, and a subclass's own),
whatever its ``__init__`` takes: Ray pickles an error raised in a worker to carry it to the
driver, which then prints the worker's own line and exits with its status.
"""

from __future__ import annotations

from typing import Any


class UserError(Exception):
    """A mistake the user can fix (bad config, missing file, unreachable service).

    The CLI prints ``str(error)`` as one line on stderr and exits with status 2, no traceback.
    Subclasses may take any ``__init__`` arguments: pickling restores the message and the
    instance's attributes without calling ``__init__`` again.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        # Keep the promise of "one line" even when a library's message has newlines in it.
        super().__init__(" ".join(message.split()))

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception's default rebuilds with ``cls(*self.args)``, which fails for a subclass
        # whose __init__ takes other arguments than the message (DataError's path, problem,
        # fix): the error would reach the driver as Ray's "could not unpickle".
        return _rebuild, (type(self), self.args, dict(self.__dict__))


def _rebuild(cls: type[UserError], args: tuple[Any, ...], state: dict[str, Any]) -> UserError:
    """A pickled ``UserError`` (or subclass) again: its args and attributes, no ``__init__``."""
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class RunFailed(UserError):
    """The run started but could not finish (a worker died, an error in a worker): one line,
    exit status 1; the full report is in a file the line names."""

    exit_code = 1
