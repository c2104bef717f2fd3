"""SIGINT / SIGTERM on the driver: the first stops the workers after the current step with a
checkpoint, the second at once; :class:`Interrupted` tells the user what was kept."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from dist_contrast.errors import UserError


class Interrupted(UserError):
    """The user stopped the run (SIGINT / SIGTERM): what was saved and how to go on."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (str(self), self.signum)


class Signals:
    """SIGINT / SIGTERM during a run: the first asks the workers to stop after the current
    step (they save a checkpoint), the second stops at once. Ray Train's own SIGINT handler
    aborts the workers without a checkpoint, so ``fit`` runs in a thread, where Ray does not
    install it, and the main thread keeps the signals."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._on_first: Callable[[], Any] | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Signals:
        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread may handle signals; the caller's own rules hold
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def claim(self) -> None:
        """Take the signals back: ``ray.init`` installs its own SIGTERM handler (it aborts
        the process), so this runs again once Ray is up."""
        if self._previous:
            for signum in self._previous:
                signal.signal(signum, self._handle)

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        first = self.received is None
        self.received = signum
        if not first or self._on_first is None:
            raise KeyboardInterrupt  # before the workers run, or a second signal: at once
        print(f"\ndist-contrast: {signal.Signals(signum).name} received: stopping after the "
              "current step and saving a checkpoint (again to stop at once)",
              file=sys.stderr, flush=True)
        self._on_first()

    def run(self, fit: Callable[[], Any], on_first: Callable[[], Any],
            watch: Callable[[], None] | None = None) -> Any:
        """``fit()`` in a thread; signals are handled here meanwhile, and ``watch()`` is called
        every 0.2 s (what it raises ends the wait)."""
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome["result"] = fit()
            except BaseException as exc:  # handed to the main thread below
                outcome["error"] = exc

        thread = threading.Thread(target=target, name="ray-train-fit", daemon=True)
        self._on_first = on_first
        try:
            thread.start()
            while thread.is_alive():
                thread.join(0.2)
                if watch is not None and thread.is_alive():
                    watch()
        finally:
            self._on_first = None
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]
