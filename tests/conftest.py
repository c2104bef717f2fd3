"""Shared by every test folder: one way to run the CLI as a user does, and the real services
(a ``ray start`` head, an MLflow server) started once per session by the tests that need them.

Markers (pyproject.toml): ``ray`` for tests that start a Ray runtime or Ray Train run,
``cluster`` for tests that start real services, ``tools`` for tests that need a tool outside
the venv. ``make check`` deselects all three; ``make test`` runs everything.

A fixture that trains a run is session-scoped even where one module uses it: pytest tears a
module's fixtures down whenever its next test comes from another module, which pytest-xdist's
scheduling makes common, and the run would be trained again. A module that shares one names an
``xdist_group`` so that its tests run in one process.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.forks import cli_command, run_cli
from tests.services import MlflowServer, RayHead, start_mlflow_server, start_ray_head

ROOT = Path(__file__).resolve().parents[1]
#: What a user's shell may carry that would send a test's run somewhere else.
FOREIGN = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN",
           "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME",
           "MLFLOW_TRACKING_PASSWORD")


def cli_env(store: Path | str | None = None, base: Mapping[str, str] | None = None,
            **extra: str | None) -> dict[str, str]:
    """The environment of one CLI call: ``base`` as given, or else this process's without
    anything that points at another cluster or tracking store; DeepSpeed on CPU; MLflow in the
    SQLite file ``store`` when given; then ``extra`` (a None value removes the variable)."""
    own = {k: v for k, v in os.environ.items() if k not in FOREIGN}
    env = own if base is None else dict(base)
    env["DS_ACCELERATOR"] = "cpu"
    if store is not None:
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}"
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@dataclass(frozen=True)
class Cli:
    """``python -m dist_contrast.cli ARGS`` in a folder, as a user runs ``dist-contrast``.

    ``store`` is the SQLite file MLflow uses (default ``<cwd>/mlflow.db``; None: whatever
    ``env`` or ``base`` says); ``env`` entries are set (None removes one); ``base`` replaces
    this process's environment as the starting point (a cluster's submitting shell)."""

    def command(self, *args: str | Path) -> list[str]:
        return cli_command(args)

    def environment(self, cwd: Path, store: Path | str | None | bool = True,
                    base: Mapping[str, str] | None = None,
                    env: Mapping[str, str | None] | None = None) -> dict[str, str]:
        sqlite = cwd / "mlflow.db" if store is True else (store or None)
        return cli_env(sqlite, base, **dict(env or {}))

    def run(self, *args: str | Path, cwd: Path, store: Path | str | None | bool = True,
            base: Mapping[str, str] | None = None, env: Mapping[str, str | None] | None = None,
            timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """Run to the end; stdout and stderr captured as text."""
        return run_cli(args, cwd=cwd, env=self.environment(cwd, store, base, env),
                       timeout=timeout)

    def start(self, *args: str | Path, cwd: Path, store: Path | str | None | bool = True,
              base: Mapping[str, str] | None = None,
              env: Mapping[str, str | None] | None = None) -> subprocess.Popen[str]:
        """Start in the background (to signal or kill it); stdout and stderr are pipes."""
        return subprocess.Popen(self.command(*args), cwd=cwd,
                                env=self.environment(cwd, store, base, env),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="session")
def cli() -> Cli:
    return Cli()


@dataclass
class Services:
    """The session's real services and a clean environment to reach them from."""

    head: RayHead
    mlflow: MlflowServer
    base: dict[str, str]  # a shell on a fresh machine (HOME of its own), nothing set yet
    home: Path


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """A Ray head (``ray start --head``, token auth) and an MLflow server (basic auth,
    proxied artifacts) on 127.0.0.1, started together once per session (about a minute) and
    stopped however the session ends; only the processes they started are ended."""
    folder = tmp_path_factory.mktemp("services")
    home = folder / "home"
    home.mkdir()
    base = cli_env(**{
        "HOME": str(home),
        # A busy shared machine answers slowly; the default is 10 s.
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "120",
        # A DeepSpeed op JIT-compiled (none by default: train/deepspeed_config.py) is cached once
        # for the real HOME.
        "TORCH_EXTENSIONS_DIR": str(Path.home() / ".cache" / "torch_extensions"),
    })
    head, head_ready = start_ray_head(base)
    try:
        mlflow, mlflow_ready = start_mlflow_server(base)
        try:
            with ThreadPoolExecutor(2) as pool:
                for started in [pool.submit(head_ready), pool.submit(mlflow_ready)]:
                    started.result()
            yield Services(head, mlflow, base, home)
        finally:
            mlflow.service.stop()
    finally:
        head.service.stop()


@pytest.fixture(scope="session")
def ray_head(services: Services) -> RayHead:
    return services.head


@pytest.fixture(scope="session")
def mlflow_server(services: Services) -> MlflowServer:
    return services.mlflow


# ----------------------------------------------------------------------------- an MLflow store


def store_runs(store: Path, experiment: str = "dist-contrast") -> list[Any]:
    """The runs of ``experiment`` in the sqlite store at ``store``."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} in {store}"
    return list(client.search_runs([found.experiment_id]))


def metric_history(store: Path, run_id: str, key: str = "train/loss") -> list[tuple[int, float]]:
    """``(step, value)`` of one metric of a run in the sqlite store at ``store``, by step."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
