"""The driver's progress line."""

from __future__ import annotations

import queue
import time

import pytest

from dist_contrast.progress import ProgressDisplay, describe, format_eta


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
