"""One fork server per test process, shared by the gloo ranks and the CLI calls.

It is started once (by :mod:`multiprocessing`'s ``forkserver``) and imports torch, DeepSpeed,
MLflow and the package before it forks anything, so a gloo rank or a ``dist-contrast`` call
starts in milliseconds instead of the seconds a fresh interpreter spends on imports (about
2.5 s of CPU for each of the suite's ~135 CLI calls in ``make check``).

A CLI call through :func:`run_cli` is still a new process, in its own folder and with the
environment the test gives it, whose stdout and stderr are captured from its file descriptors
and whose exit status is the one ``python -m dist_contrast.cli`` would have. It differs from a
fresh interpreter only in what was imported before it started, so a call whose environment
differs from the server's in a variable read at import or start-up (``PYTHON*``,
``DS_ACCELERATOR``) replaces itself with a fresh interpreter (``exec``) before it runs.
"""

from __future__ import annotations

import atexit
import functools
import json
import locale
import os
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch.multiprocessing as mp

#: What the fork server imports before it forks the first process (nothing that imports Ray:
#: ``dist-contrast`` chooses Ray Train's version in the environment before it imports it).
PRELOAD = ["torch", "torch.distributed", "deepspeed", "mlflow", "mlflow.pyfunc",
           "dist_contrast.config", "dist_contrast.train.entry", "dist_contrast.serving.embed",
           "dist_contrast.serving.mine", "dist_contrast.compare", "tests.forks", "tests.gloo"]

#: Read when the interpreter starts or a preloaded module is imported, not afterwards.
_AT_IMPORT = ("DS_ACCELERATOR",)


def context() -> Any:
    """The forkserver context, its server started (once per process) on first use."""
    # DeepSpeed picks its accelerator when it is imported, in the fork server: the CPU, as in
    # every test (a child's own setting would come too late; run_cli re-executes for another).
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _starts_otherwise(environment: Mapping[str, str]) -> bool:
    """Whether a fresh interpreter with ``environment`` would start or import otherwise than
    this one (the fork server, in the child before it takes the call's environment)."""
    keys = {k for k in (*environment, *os.environ) if k.startswith("PYTHON") or k in _AT_IMPORT}
    return any(environment.get(k) != os.environ.get(k) for k in keys)


@functools.cache
def _fresh_path() -> list[str]:
    """``sys.path`` of a fresh interpreter without ``PYTHONPATH``, less its first entry (the
    folder ``-m`` adds): a forked child has the test process's, which pytest extended."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    shown = subprocess.run([sys.executable, "-c", "import json, sys; print(json.dumps(sys.path))"],
                           capture_output=True, text=True, check=True, env=env)
    return list(json.loads(shown.stdout))[1:]


def cli_command(args: Sequence[str | Path]) -> list[str]:
    """The command line of ``python -m dist_contrast.cli ARGS`` in this interpreter."""
    return [sys.executable, "-m", "dist_contrast.cli", *map(str, args)]


def _cli_child(args: Sequence[str], cwd: str, environment: dict[str, str], umask: int,
               path: list[str], out: str, err: str) -> None:
    """In the forked process: become ``python -m dist_contrast.cli ARGS`` and exit with its
    status, never returning to multiprocessing's own exit path."""
    for fd, name in ((1, out), (2, err)):
        target = os.open(name, os.O_WRONLY | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    os.chdir(cwd)
    if umask >= 0:
        os.umask(umask)
    command = cli_command(args)
    if _starts_otherwise(environment):
        os.execve(sys.executable, command, environment)  # no return
    os.environ.clear()
    os.environ.update(environment)
    # As `python -m` in cwd has it: the folder, PYTHONPATH's entries, then the installation's.
    given = [e for e in environment.get("PYTHONPATH", "").split(os.pathsep) if e]
    sys.path[:] = [os.getcwd(), *given, *path]
    sys.argv = [str(Path(__file__).resolve().parents[1] / "dist_contrast" / "cli.py"), *args]
    from dist_contrast.cli import main

    try:
        code: Any = main(args)
    except SystemExit as stop:
        code = stop.code
    except BaseException:  # what the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    # The interpreter's shutdown: non-daemon threads, then atexit, then the streams.
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def run_cli(args: Sequence[str | Path], *, cwd: Path | str, env: Mapping[str, str],
            timeout: float, umask: int = -1) -> subprocess.CompletedProcess[str]:
    """``python -m dist_contrast.cli ARGS`` in ``cwd`` with exactly ``env`` (and ``umask``,
    when not -1), run to the end as :func:`subprocess.run` with ``capture_output=True,
    text=True`` would run it (the same result object; :class:`subprocess.TimeoutExpired` after
    ``timeout`` s, the process killed)."""
    argv = [str(a) for a in args]
    command = cli_command(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        for path in (out, err):
            Path(path).touch()
        proc = context().Process(target=_cli_child,
                                 args=(argv, str(cwd), dict(env), umask, _fresh_path(), out, err))
        proc.start()
        proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            proc.join(10)
            raise subprocess.TimeoutExpired(command, timeout, _read(out), _read(err))
        return subprocess.CompletedProcess(command, proc.exitcode, _read(out), _read(err))


def _read(path: str) -> str:
    # As subprocess's text mode reads a pipe: the locale's encoding, universal newlines.
    with open(path, encoding=locale.getpreferredencoding(False), newline=None) as f:
        return f.read()
