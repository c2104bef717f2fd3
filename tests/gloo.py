"""Run a function in W real gloo processes and collect what each rank returns.

Used by every distributed test: the result of W processes is compared with the
single-process result on the concatenated inputs.

The ranks are forks of the fork server of :mod:`tests.forks` (one per test process), which
imported torch, DeepSpeed and the trainer once: a rank starts in milliseconds instead of the
seconds of a fresh interpreter's imports (a spawned rank), which most of these tests spent more
on than on their work. Each rank is still a new process with the test's current environment.
"""

from __future__ import annotations

import faulthandler
import os
import pickle
import queue as queue_module
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch.distributed as dist

from tests.forks import context

#: How long the parent waits for a rank's result; a rank still working after RANK_LIMIT_S
#: prints every thread's stack to stderr (shown in the test's report) and exits.
WAIT_S = 300
RANK_LIMIT_S = WAIT_S - 20


def _worker(
    rank: int, world_size: int, init_file: str, fn: Callable[..., Any], args: tuple, queue: Any,
    environment: dict[str, str], limit_s: float,
) -> None:
    # The fork server's environment is the one it started with: the test's, as it is now.
    os.environ.clear()
    os.environ.update(environment)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    faulthandler.dump_traceback_later(limit_s, exit=True)
    try:
        dist.init_process_group(
            "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
        )
        # Pickled here, by value: a tensor put on the queue as it is would travel as a handle
        # to this process's shared memory, which is gone if this process exits before the
        # parent reads it (FileNotFoundError in the parent, seen under load).
        queue.put((rank, "ok", pickle.dumps(fn(*args))))
    except BaseException:  # report every failure to the parent, then exit non-zero
        queue.put((rank, "error", traceback.format_exc()))
    finally:
        faulthandler.cancel_dump_traceback_later()
        if dist.is_initialized():
            dist.destroy_process_group()


def run_distributed(fn: Callable[..., Any], *args: Any, world_size: int = 2) -> list[Any]:
    """Return ``[fn(*args) on rank 0, ..., on rank W-1]``, each rank in its own gloo process.

    ``fn`` must be a module-level function (it is pickled for the ranks);
    its return values must be picklable (move tensors to CPU and detach them); they are copied.
    """
    ctx = context()
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "rendezvous")
        procs = [
            ctx.Process(target=_worker, args=(r, world_size, init_file, fn, args, queue,
                                                dict(os.environ), RANK_LIMIT_S))
            for r in range(world_size)
        ]
        results: dict[int, Any] = {}
        errors: list[str] = []
        try:
            for p in procs:
                p.start()
            for r, status, payload in _reports(queue, procs):
                if status == "ok":
                    results[r] = pickle.loads(payload)
                else:
                    errors.append(f"rank {r}:\n{payload}")
            for p in procs:
                p.join(timeout=60)
        finally:  # a rank that hangs or outlives the test is ended, never left behind
            for p in procs:
                if p.is_alive():
                    p.kill()
                    p.join(timeout=10)
    if errors:
        raise RuntimeError("distributed worker failed:\n" + "\n".join(errors))
    return [results[r] for r in range(world_size)]


def _reports(queue: Any, procs: list[Any]) -> list[tuple[int, str, Any]]:
    """One report per rank, in the order they come; a rank that ended without one (killed,
    crashed, or stopped by RANK_LIMIT_S) or no report within WAIT_S is an error at once."""
    reports: list[tuple[int, str, Any]] = []
    deadline = time.monotonic() + WAIT_S
    ended_at: float | None = None
    while len(reports) < len(procs):
        try:
            reports.append(queue.get(timeout=1.0))
            continue
        except queue_module.Empty:
            pass
        silent = [r for r, p in enumerate(procs)
                  if r not in {rank for rank, _, _ in reports} and not p.is_alive()]
        if silent:  # its report, if any, was in the pipe before it ended: one more second
            ended_at = ended_at or time.monotonic()
            if time.monotonic() - ended_at > 1.0:
                codes = ", ".join(f"rank {r}: exit code {procs[r].exitcode}" for r in silent)
                raise RuntimeError(f"distributed worker ended without a result ({codes}; "
                                   "a rank past RANK_LIMIT_S printed its stacks to stderr)")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no result from every rank within {WAIT_S} s")
    return reports

