"""Real services for the cluster tests: a Ray head (`ray start --head`, token auth on) and an
MLflow tracking server (basic-auth, proxied artifacts), each on 127.0.0.1 and free ports.

Every process they start carries a marker in its environment (Ray's workers and job drivers
inherit it), and :meth:`Service.stop` ends exactly the processes that carry it: never
`ray stop`, which would end every Ray process on the machine.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

BIN = Path(sys.executable).parent
MARKER = "DIST_CONTRAST_TEST_SERVICE"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    """A started process group plus everything that inherited its marker."""

    name: str
    marker: str
    process: subprocess.Popen[bytes]
    log: Path
    folder: Path
    env: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        """End the service and every process that carries its marker; remove its folder."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        for _ in range(3):
            found = marked(self.marker)
            if not found:
                break
            for proc in found:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            psutil.wait_procs(found, timeout=10)
        shutil.rmtree(self.folder, ignore_errors=True)

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def marked(marker: str) -> list[psutil.Process]:
    """The processes whose environment carries ``marker``."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get(MARKER) == marker:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _start(name: str, argv: list[str], env: Mapping[str, str], folder: Path) -> Service:
    marker = f"{name}-{uuid.uuid4().hex}"
    log = folder / f"{name}.log"
    # As in an activated virtualenv (or a cluster image): the job's entrypoint `dist-contrast`
    # is on the PATH.
    path = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    full_env = {**env, "PATH": path, MARKER: marker}
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                   cwd=folder, start_new_session=True)
    return Service(name, marker, process, log, folder, full_env)


def _wait(service: Service, ready: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(f"{service.name} exited: {service.tail()}")
        try:
            if ready():
                return
        except requests.RequestException:
            pass
        time.sleep(1.0)
    raise RuntimeError(f"{service.name} not ready after {timeout:.0f} s: {service.tail()}")


@dataclass
class RayHead:
    service: Service
    address: str  # the job server, http://127.0.0.1:<port>
    token: str


def start_ray_head(env: Mapping[str, str], num_cpus: int = 2) -> tuple[RayHead, Callable[[], None]]:
    """``ray start --head --block`` with token auth; returns the head and a wait-until-ready."""
    token = secrets.token_hex(16)
    # Short: Ray's socket paths under the temp dir must stay below 108 characters.
    folder = Path(tempfile.mkdtemp(prefix="dc-ray-", dir="/tmp"))
    ports = {flag: free_port() for flag in (
        "--port", "--dashboard-port", "--ray-client-server-port",
        "--dashboard-agent-listen-port", "--metrics-export-port", "--runtime-env-agent-port",
    )}
    argv = [
        str(BIN / "ray"), "start", "--head", "--block", f"--num-cpus={num_cpus}",
        "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", "--include-dashboard=true",
        "--disable-usage-stats", f"--temp-dir={folder / 'ray'}",
        *(f"{flag}={port}" for flag, port in ports.items()),
    ]
    service = _start("ray-head", argv, {**env, "RAY_AUTH_MODE": "token",
                                        "RAY_AUTH_TOKEN": token}, folder)
    address = f"http://127.0.0.1:{ports['--dashboard-port']}"
    head = RayHead(service, address, token)

    def ready() -> bool:
        answer = requests.get(f"{address}/api/version", timeout=5,
                              headers={"Authorization": f"Bearer {token}"})
        return answer.status_code == 200

    return head, lambda: _wait(service, ready, 240)


@dataclass
class MlflowServer:
    service: Service
    uri: str
    username: str
    password: str
    artifacts: Path


def start_mlflow_server(env: Mapping[str, str]) -> tuple[MlflowServer, Callable[[], None]]:
    """``mlflow server --app-name basic-auth --serve-artifacts`` with a fresh admin account
    (from an auth config file in its folder) and a sqlite store; returns it and a
    wait-until-ready."""
    folder = Path(tempfile.mkdtemp(prefix="dc-mlflow-"))
    port = free_port()
    username, password = "admin", "pw-" + secrets.token_hex(8)
    (folder / "basic_auth.ini").write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{folder / 'auth.db'}\n"
        f"admin_username = {username}\n"
        f"admin_password = {password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    artifacts = folder / "artifacts"
    argv = [
        str(BIN / "mlflow"), "server", "--app-name", "basic-auth",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
        "--serve-artifacts", "--artifacts-destination", str(artifacts),
        "--allowed-hosts", f"127.0.0.1:{port},localhost:{port}",
    ]
    server_env = {
        **{k: v for k, v in env.items() if not k.startswith("MLFLOW_TRACKING")},
        "MLFLOW_AUTH_CONFIG_PATH": str(folder / "basic_auth.ini"),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
    }
    service = _start("mlflow", argv, server_env, folder)
    uri = f"http://127.0.0.1:{port}"
    server = MlflowServer(service, uri, username, password, artifacts)

    def ready() -> bool:
        return requests.get(f"{uri}/health", timeout=5).status_code == 200

    return server, lambda: _wait(service, ready, 300)
