"""Shared fixtures: real checkpoints (ZeRO 0 fp32, ZeRO 2 + bf16, ZeRO 0 + bf16) written once
per session, and an MLflow run in a local SQLite store with the fp32 encoder logged."""

from __future__ import annotations

import pytest

from tests.serving.checkpoints import (
    Checkpoints,
    LoggedRun,
    log_fp32_run,
    make_checkpoints,
)

__all__ = ["Checkpoints", "LoggedRun"]


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Checkpoints:
    return make_checkpoints(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="session")
def logged_run(checkpoints: Checkpoints, tmp_path_factory: pytest.TempPathFactory) -> LoggedRun:
    return log_fp32_run(checkpoints, tmp_path_factory.mktemp("mlflow"))
