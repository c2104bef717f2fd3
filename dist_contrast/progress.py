"""The driver's live progress line: step/total, loss, τ, samples/s, ETA.

Rank 0 sends a small dict to the run's :class:`RunChannel` (a Ray actor, which also carries
the stop request) every ``trainer.log_every`` steps; a thread on the driver reads it. On a
terminal the line redraws in place (rich); elsewhere (CI, ``ray job`` logs) a plain line is
printed at most every few seconds so logs stay readable.

Before the first step, rank 0 also sends the start-up stage it has reached
(``{"phase": ...}``); the display prints each stage as a line, and :meth:`ProgressDisplay.stalled`
tells the driver how long the workers have been silent in the current one, so a start that
hangs ends with a line naming the stage instead of waiting forever.
"""

from __future__ import annotations

import collections
import queue
import sys
import threading
import time
from typing import Any


def format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def describe(update: dict[str, Any], started: float, first_step: int) -> str:
    """One progress line from one rank-0 update."""
    step, total = int(update["step"]), int(update["total"])
    elapsed = time.monotonic() - started
    done = step - first_step
    eta = elapsed / done * (total - step) if done > 0 else float("nan")
    parts = [
        f"step {step}/{total}",
        f"loss {update.get('train/loss', float('nan')):.4f}",
        f"τ {update.get('train/temperature', float('nan')):.3f}",
        f"{update.get('train/samples_per_s', 0.0):,.0f} samples/s",
        f"ETA {format_eta(eta) if eta == eta else '--:--'}",
    ]
    return " | ".join(parts)


class ProgressDisplay:
    """Reads progress updates from a queue on a background thread and shows them.

    ``phase``: the start-up stage the run is in until the workers send theirs (printed at
    :meth:`start`)."""

    def __init__(self, queue: Any, total: int, min_interval_s: float = 5.0,
                 phase: str | None = None) -> None:
        self.queue = queue
        self.total = total
        self.min_interval_s = min_interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._tty = sys.stderr.isatty()
        self.phase = phase or "starting the workers"
        self._news_at = time.monotonic()
        self._stepped = False
        self._announce = phase is not None

    def stalled(self) -> float:
        """Seconds since the workers' last start-up news; 0 once they have reported a step."""
        return 0.0 if self._stepped else time.monotonic() - self._news_at

    def _phase(self, update: dict[str, Any]) -> bool:
        """Take a start-up stage (printed); False for a step update."""
        self._news_at = time.monotonic()
        if "phase" not in update:
            self._stepped = True
            return False
        self.phase = str(update["phase"])
        print(f"dist-contrast: {self.phase}", file=sys.stderr, flush=True)
        return True

    def start(self) -> None:
        self._news_at = time.monotonic()
        if self._announce:
            print(f"dist-contrast: {self.phase}", file=sys.stderr, flush=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        if self._tty:
            self._loop_rich()
        else:
            self._loop_plain()

    def _updates(self) -> Any:
        """Yield updates until stopped (drains what is left after stop)."""
        while True:
            try:
                yield self.queue.get(timeout=0.5)
            except Exception:  # queue.Empty, or the queue actor went away at shutdown
                if self._stop.is_set():
                    return

    def _loop_plain(self) -> None:
        started, first_step, last_print = time.monotonic(), None, 0.0
        for update in self._updates():
            if self._phase(update):
                continue
            first_step = update["step"] if first_step is None else first_step
            now = time.monotonic()
            if now - last_print >= self.min_interval_s or update["step"] >= update["total"]:
                print(describe(update, started, first_step), file=sys.stderr, flush=True)
                last_print = now

    def _loop_rich(self) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (
            TextColumn("[bold]train"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, transient=False) as progress:
            task = progress.add_task("train", total=self.total, info="starting workers…")
            for update in self._updates():
                if self._phase(update):
                    progress.update(task, info=self.phase)
                    continue
                info = (
                    f"loss {update.get('train/loss', float('nan')):.4f} "
                    f"τ {update.get('train/temperature', float('nan')):.3f} "
                    f"{update.get('train/samples_per_s', 0.0):,.0f} samples/s"
                )
                progress.update(task, completed=update["step"], info=info)


class RunChannel:
    """The one Ray actor a run adds to Ray Train's: rank 0 puts its progress updates here for
    the driver's display, and the driver sets the stop request here on SIGINT / SIGTERM, which
    rank 0 asks between steps. (A sweep's trials use only the stop request.)"""

    #: Updates kept for the display at most (it drains them every half second).
    KEEP = 1000

    def __init__(self) -> None:
        self.requested = False
        # Bounded: when the display falls behind, the oldest updates go first.
        self.updates: collections.deque[dict[str, Any]] = collections.deque(maxlen=self.KEEP)

    def put(self, update: dict[str, Any]) -> None:
        self.updates.append(update)

    def drain(self) -> list[dict[str, Any]]:
        updates = list(self.updates)
        self.updates.clear()
        return updates

    def request(self) -> None:
        self.requested = True

    def is_set(self) -> bool:
        return self.requested


class ChannelReader:
    """The driver's side of a :class:`RunChannel` as the queue :class:`ProgressDisplay`
    reads (``get`` with a timeout, ``queue.Empty`` when nothing came)."""

    def __init__(self, ray: Any, channel: Any) -> None:
        self._ray, self._channel = ray, channel
        self._pending: collections.deque[dict[str, Any]] = collections.deque()

    def get(self, timeout: float) -> dict[str, Any]:
        if not self._pending:
            time.sleep(timeout)
            self._pending.extend(self._ray.get(self._channel.drain.remote(), timeout=30))
        if not self._pending:
            raise queue.Empty
        return self._pending.popleft()
