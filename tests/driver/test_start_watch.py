"""A start that hangs ends: the driver's watch over the workers' start-up stages
(``trainer.start_timeout_s``) and the signal handler's loop that calls it."""

from __future__ import annotations

import threading
import time

import pytest

from dist_contrast.driver.run import StartTimeout, start_watch
from dist_contrast.driver.signals import Signals


class _Display:
    def __init__(self, silent: float, phase: str = "starting 2 workers (Ray Train)") -> None:
        self.silent, self.phase = silent, phase

    def stalled(self) -> float:
        return self.silent


def test_silence_past_the_timeout_is_one_line_naming_the_stage_the_setting_and_the_logs() -> None:
    watch = start_watch(_Display(901.0, "workers up (2): building"), 900.0,  # type: ignore[arg-type]
                        "/tmp/ray/session_x/logs")
    with pytest.raises(StartTimeout) as caught:
        watch()
    line = str(caught.value)
    assert "\n" not in line and caught.value.exit_code == 1
    assert "901 s" in line and "workers up (2): building" in line
    assert "trainer.start_timeout_s=900" in line and "/tmp/ray/session_x/logs" in line


@pytest.mark.parametrize(("silent", "timeout"), [(899.0, 900.0), (10_000.0, 0.0), (0.0, 1.0)])
def test_within_the_timeout_or_with_none_the_watch_lets_the_run_go_on(
    silent: float, timeout: float
) -> None:
    start_watch(_Display(silent), timeout, "logs")()  # type: ignore[arg-type]


def test_what_the_watch_raises_ends_the_wait_for_a_fit_that_never_returns() -> None:
    release = threading.Event()
    started = time.monotonic()
    calls = []

    def watch() -> None:
        calls.append(1)
        if len(calls) == 3:
            raise StartTimeout("stuck")

    with pytest.raises(StartTimeout):
        Signals().run(lambda: release.wait(60), on_first=lambda: None, watch=watch)
    release.set()
    assert time.monotonic() - started < 5 and len(calls) == 3
