"""The driver's progress line."""

from __future__ import annotations

import queue
import time
from types import SimpleNamespace
from typing import Any

import pytest

from dist_contrast.progress import (
    ChannelReader,
    ProgressDisplay,
    RunChannel,
    describe,
    format_eta,
)


def test_format_eta() -> None:
    assert format_eta(0) == "00:00"
    assert format_eta(75) == "01:15"
    assert format_eta(3725) == "1:02:05"


def test_describe_has_step_loss_rate_and_eta() -> None:
    update = {
        "step": 50,
        "total": 100,
        "train/loss": 2.5,
        "train/temperature": 0.1,
        "train/samples_per_s": 1234.0,
    }
    line = describe(update, started=time.monotonic() - 10.0, first_step=0)
    assert "step 50/100" in line and "loss 2.5000" in line and "1,234 samples/s" in line
    assert "ETA 00:1" in line  # ~10 s for the remaining half


def test_plain_display_prints_updates(capsys: pytest.CaptureFixture[str]) -> None:
    q: queue.Queue = queue.Queue()
    display = ProgressDisplay(q, total=10, min_interval_s=0.0)
    display.start()
    q.put({"step": 5, "total": 10, "train/loss": 1.0})
    q.put({"step": 10, "total": 10, "train/loss": 0.5})
    time.sleep(1.0)
    display.stop()
    err = capsys.readouterr().err
    assert "step 5/10" in err and "step 10/10" in err


class _Handle:
    """A Ray actor handle's shape over a local object: ``handle.method.remote(...)``."""

    def __init__(self, target: Any) -> None:
        self._target = target

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._target, name)
        return SimpleNamespace(remote=method)


def test_run_channel_hands_the_display_every_update_in_order_then_empty() -> None:
    channel = RunChannel()
    reader = ChannelReader(SimpleNamespace(get=lambda value, timeout: value), _Handle(channel))
    for step in (10, 20, 30):
        channel.put({"step": step, "total": 30})
    assert [reader.get(timeout=0.0)["step"] for _ in range(3)] == [10, 20, 30]
    with pytest.raises(queue.Empty):
        reader.get(timeout=0.0)
    assert not channel.is_set()
    channel.request()
    assert channel.is_set()


def test_run_channel_keeps_only_the_newest_updates_when_nobody_reads() -> None:
    channel = RunChannel()
    for step in range(RunChannel.KEEP + 5):
        channel.put({"step": step})
    kept = channel.drain()
    assert len(kept) == RunChannel.KEEP and kept[-1]["step"] == RunChannel.KEEP + 4
    assert channel.drain() == []


def test_start_up_stages_are_printed_and_the_silence_is_counted_until_the_first_step(
    capsys: pytest.CaptureFixture[str],
) -> None:
    q: queue.Queue = queue.Queue()
    display = ProgressDisplay(q, total=10, min_interval_s=0.0, phase="starting 2 workers")
    display.start()
    time.sleep(0.6)
    assert display.stalled() >= 0.5 and display.phase == "starting 2 workers"
    q.put({"phase": "workers up (2): building the engine"})
    time.sleep(0.7)
    assert display.stalled() < 1.0  # restarted by the stage's news (1.3 s otherwise)
    assert display.phase == "workers up (2): building the engine"
    q.put({"step": 1, "total": 10, "train/loss": 1.0})
    time.sleep(0.7)
    assert display.stalled() == 0.0  # stepping: no start-up silence any more
    display.stop()
    err = capsys.readouterr().err.splitlines()
    assert err[:2] == ["dist-contrast: starting 2 workers",
                       "dist-contrast: workers up (2): building the engine"]
    assert err[2].startswith("step 1/10")
