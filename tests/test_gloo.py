"""The gloo test harness itself: a rank that crashes, hangs or outlives the wait is an error
at once and is never left running."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests import gloo


def _rank_sum(x: int) -> int:
    import torch
    import torch.distributed as dist

    t = torch.tensor([x + dist.get_rank()])
    dist.all_reduce(t)
    return int(t.item())


def _crash_on_rank_one() -> int:
    import torch.distributed as dist

    if dist.get_rank() == 1:
        os._exit(3)
    return 0


def _sleep(pid_file: str) -> None:
    import torch.distributed as dist

    Path(f"{pid_file}.{dist.get_rank()}").write_text(str(os.getpid()))
    time.sleep(120)


def _gone(pid: int, within_s: float = 15.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z":
            return True  # ended, waiting for its parent (the fork server) to reap it
        time.sleep(0.2)
    return False


def test_every_rank_reports() -> None:
    assert gloo.run_distributed(_rank_sum, 5) == [11, 11]


def test_a_rank_that_ends_without_a_result_fails_at_once() -> None:
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="rank 1: exit code 3"):
        gloo.run_distributed(_crash_on_rank_one)
    assert time.monotonic() - start < 60  # not the 300 s wait


@pytest.mark.parametrize(("limit", "value", "error", "says"), [
    # the rank's own limit: it prints its stacks and exits with faulthandler's code 1
    ("RANK_LIMIT_S", 2, RuntimeError, "rank 0: exit code 1.*rank 1: exit code 1"),
    # the parent's wait ends first: the ranks still running are killed
    ("WAIT_S", 4, TimeoutError, "within 4 s"),
])
def test_a_rank_past_a_limit_fails_the_call_and_is_not_left_running(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, limit: str, value: int,
    error: type[Exception], says: str,
) -> None:
    monkeypatch.setattr(gloo, limit, value)
    with pytest.raises(error, match=says):
        gloo.run_distributed(_sleep, str(tmp_path / "pid"))
    for rank in (0, 1):
        assert _gone(int((tmp_path / f"pid.{rank}").read_text()))
