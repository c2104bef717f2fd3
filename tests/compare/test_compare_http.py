"""``compare`` against a real ``mlflow server`` over HTTP gives what it gives on sqlite."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from dist_contrast.compare import compare
from tests.compare.conftest import Store

pytestmark = pytest.mark.cluster  # starts a real `mlflow server`


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server(store: Store) -> Iterator[str]:
    """An MLflow tracking server on 127.0.0.1 over the fixture's sqlite store."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", store.uri, "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                assert process.poll() is None, "mlflow server exited"
                assert time.monotonic() < deadline, "mlflow server did not start"
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_compare_over_http_matches_sqlite(store: Store, server: str, tmp_path: Path) -> None:
    local = compare(store.experiment, store.uri, out=tmp_path / "sqlite")
    remote = compare(store.experiment, server, out=tmp_path / "http")
    assert remote.table == local.table
    by_parent = compare(store.parent_id, server, out=tmp_path / "parent")
    assert [(g.loss, g.tau, len(g.runs)) for g in by_parent.groups] == [
        ("hcl", 0.1, 3), ("hcl", 0.5, 3), ("infonce", 0.1, 3), ("infonce", 0.5, 3)]
    import mlflow

    logged = {a.path for a in mlflow.MlflowClient(server).list_artifacts(store.parent_id,
                                                                         "compare")}
    assert "compare/report.html" in logged and "compare/comparison.md" in logged
