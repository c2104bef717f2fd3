"""The driver's live progress line: step/total, loss, τ, samples/s, ETA.

Rank 0 puts a small dict on a Ray queue every ``trainer.log_every`` steps; a thread on the
driver reads it. On a terminal the line redraws in place (rich); elsewhere (CI, ``ray job``
logs) a plain line is printed at most every few seconds so logs stay readable.
"""

from __future__ import annotations

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
    """Reads progress updates from a queue on a background thread and shows them."""

    def __init__(self, queue: Any, total: int, min_interval_s: float = 5.0) -> None:
        self.queue = queue
        self.total = total
        self.min_interval_s = min_interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._tty = sys.stderr.isatty()

    def start(self) -> None:
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
                info = (
                    f"loss {update.get('train/loss', float('nan')):.4f} "
                    f"τ {update.get('train/temperature', float('nan')):.3f} "
                    f"{update.get('train/samples_per_s', 0.0):,.0f} samples/s"
                )
                progress.update(task, completed=update["step"], info=info)
