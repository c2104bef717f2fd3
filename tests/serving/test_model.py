"""The encoder as an MLflow model: logged as the trainer logs it, then loaded through
``mlflow.pyfunc``, ``mlflow.pytorch`` and ``load_encoder``, it embeds raw rows (standardisation
included) exactly as the checkpoint's encoder does."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from dist_contrast.config import Config, load_config
from dist_contrast.data import build_data
from dist_contrast.models import build_model
from dist_contrast.serving import EncoderModule, TrainedEncoder, load_encoder, log_encoder
from dist_contrast.tracking import MlflowTracker
from dist_contrast.train import reporting
from dist_contrast.train.model import use_tracking_uri
from dist_contrast.train.reporting import Reporter
from tests.serving.checkpoints import CONFIGS, WIDTH
from tests.serving.conftest import Checkpoints, LoggedRun

# The session's trained checkpoints (or run) are made once per pytest-xdist process: one process
# for the module (make check runs --dist loadgroup).
pytestmark = pytest.mark.xdist_group("serving_checkpoints")


@pytest.fixture
def store(logged_run: LoggedRun) -> Iterator[str]:
    """MLflow's fluent API pointed at the logged run's store for the test."""
    with use_tracking_uri(logged_run.tracking_uri):
        yield logged_run.tracking_uri


def _expected(checkpoints: Checkpoints, rows: np.ndarray) -> np.ndarray:
    return load_encoder(checkpoints.path("fp32"))(rows).numpy()


def test_pyfunc_and_pytorch_flavors_embed_raw_rows_like_the_checkpoint(
    checkpoints: Checkpoints, logged_run: LoggedRun, store: str
) -> None:
    rows = checkpoints.features  # raw: the flavours standardise them themselves
    expected = _expected(checkpoints, rows)
    uri = f"runs:/{logged_run.run_id}/encoder"
    predicted = mlflow.pyfunc.load_model(uri).predict(rows)
    np.testing.assert_array_equal(predicted, expected)
    with torch.no_grad():
        module_out = mlflow.pytorch.load_model(uri)(torch.tensor(rows)).numpy()
    np.testing.assert_array_equal(module_out, expected)
    # ... and the rows the fp32 engine embedded during training.
    run = checkpoints.runs["fp32"]
    test_rows = rows[run["test_ids"].numpy()]
    np.testing.assert_array_equal(mlflow.pyfunc.load_model(uri).predict(test_rows),
                                  run["engine_out"].numpy())


def test_signature_input_example_and_registration(logged_run: LoggedRun, store: str) -> None:
    info = mlflow.models.get_model_info(f"runs:/{logged_run.run_id}/encoder")
    assert info.signature is not None
    (raw,), (out,) = info.signature.inputs.inputs, info.signature.outputs.inputs
    assert (raw.type, raw.shape) == (np.dtype(np.float32), (-1, WIDTH))
    assert (out.type, out.shape) == (np.dtype(np.float32), (-1, 8))
    assert info.saved_input_example_info is not None
    client = mlflow.MlflowClient(logged_run.tracking_uri)
    logged = client.get_logged_model(logged_run.model_uri.removeprefix("models:/"))
    assert (logged.name, logged.source_run_id) == ("encoder", logged_run.run_id)
    assert str(logged.status) == "READY"
    version = client.get_model_version(logged_run.registered, "1")
    assert version.run_id == logged_run.run_id
    # The run itself was left as it was: logging makes no run active and ends none.
    assert client.get_run(logged_run.run_id).info.status == "RUNNING"
    assert mlflow.active_run() is None


@pytest.mark.parametrize("form", ["run id", "runs uri", "runs uri without a name", "registry"])
def test_load_encoder_reads_every_mlflow_form(
    checkpoints: Checkpoints, logged_run: LoggedRun, form: str
) -> None:
    run_id = logged_run.run_id
    source = {"run id": run_id, "runs uri": f"runs:/{run_id}/encoder",
              "runs uri without a name": f"runs:/{run_id}",
              "registry": f"models:/{logged_run.registered}/1"}[form]
    loaded = load_encoder(source, tracking_uri=logged_run.tracking_uri)
    assert loaded.run_id == run_id and loaded.output == "embedding"
    assert loaded.config == load_encoder(checkpoints.path("fp32")).config
    rows = checkpoints.features[:50]
    np.testing.assert_array_equal(loaded(rows).numpy(), _expected(checkpoints, rows))


def _reporter(cfg: Config, uri: str, **tracking: object) -> Reporter:
    cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(
        update={"tracking_uri": uri, "experiment": "serving", **tracking})})
    tracker = MlflowTracker(uri, "serving", "finish")
    return Reporter(cfg=cfg, tracker=tracker, evaluator=None, active=True)


def test_reporter_finish_logs_and_registers_the_model(
    checkpoints: Checkpoints, logged_run: LoggedRun
) -> None:
    loaded = load_encoder(checkpoints.path("fp32"))
    assert loaded.config is not None
    reporter = _reporter(loaded.config, logged_run.tracking_uri, register_model="finished",
                         model_output="representation")
    example = torch.from_numpy(checkpoints.features[:3])
    reporter.finish(TrainedEncoder(loaded.encoder, loaded.preprocessing, example, loaded.config))
    run_id = str(reporter.tracker.run_id)
    client = mlflow.MlflowClient(logged_run.tracking_uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert client.get_model_version("finished", "1").run_id == run_id
    again = load_encoder(run_id, tracking_uri=logged_run.tracking_uri)
    assert again.output == "representation" and again.output_dim == 32
    rows = checkpoints.features[:40]
    np.testing.assert_array_equal(
        again(rows).numpy(), loaded.with_output("representation")(rows).numpy())


def test_a_model_that_cannot_be_logged_is_a_warning_not_a_failed_run(
    checkpoints: Checkpoints, logged_run: LoggedRun, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(*args: object, **kwargs: object) -> str:
        raise RuntimeError("the registry is down")

    monkeypatch.setattr(reporting, "log_encoder", broken)
    loaded = load_encoder(checkpoints.path("fp32"))
    assert loaded.config is not None
    reporter = _reporter(loaded.config, logged_run.tracking_uri)
    example = torch.from_numpy(checkpoints.features[:3])
    with caplog.at_level(logging.WARNING):
        reporter.finish(TrainedEncoder(loaded.encoder, loaded.preprocessing, example,
                                       loaded.config))
    run = mlflow.MlflowClient(logged_run.tracking_uri).get_run(str(reporter.tracker.run_id))
    assert run.info.status == "FINISHED"
    assert run.data.tags["dist_contrast.model_error"] == "RuntimeError: the registry is down"
    assert "dist-contrast embed CHECKPOINT" in caplog.text


def test_a_digits_cnn_round_trips_with_its_scaling(logged_run: LoggedRun, tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    cfg = load_config(CONFIGS / "digits.yaml")
    data = build_data(cfg.data, seed=0)
    torch.manual_seed(0)
    encoder = build_model(cfg.model, data.input_shape).eval()
    tracker = MlflowTracker(logged_run.tracking_uri, "serving", "digits")
    log_encoder(TrainedEncoder(encoder, data.preprocessing, data.raw_example, cfg),
                tracking_uri=logged_run.tracking_uri, run_id=str(tracker.run_id))
    raw = load_digits().data[:64].astype(np.float32)  # 0..16, flat rows of 64
    with torch.no_grad():
        expected = EncoderModule(encoder, data.preprocessing, "embedding")(torch.from_numpy(raw))
    with use_tracking_uri(logged_run.tracking_uri):
        predicted = mlflow.pyfunc.load_model(f"runs:/{tracker.run_id}/encoder").predict(raw)
    np.testing.assert_allclose(predicted, expected.numpy(), rtol=0, atol=1e-6)
    loaded = load_encoder(str(tracker.run_id), tracking_uri=logged_run.tracking_uri)
    assert loaded.input_shape == (1, 8, 8) and loaded.raw_shape == (64,)
    assert torch.equal(loaded(raw), expected)

