"""Load a trained encoder from anywhere: a checkpoint folder, an MLflow run, or a registered model.

Every source yields the same :class:`LoadedEncoder`: the float32 encoder in eval mode, the
preprocessing its training data got, and the module that maps raw rows to the chosen output.
Nothing is unpickled beyond tensors and numbers: a checkpoint's files are checked with
:func:`~dist_contrast.train.state.check_safe_to_load` before DeepSpeed's reader sees them, and an
MLflow model is read from the state dict logged beside its graph (``weights_only=True``).
Every failure is one ``UserError`` line naming the source and the fix.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from torch import Tensor

from dist_contrast.config import Config
from dist_contrast.data.preprocess import Preprocessing, float32_rows
from dist_contrast.errors import UserError
from dist_contrast.models import ContrastiveEncoder, build_model
from dist_contrast.train import storage
from dist_contrast.train.export import checkpoint_state_dict
from dist_contrast.train.model import (
    MODEL_NAME,
    OUTPUTS,
    RECORD_FILE,
    STATE_FILE,
    EncoderModule,
    Output,
    use_tracking_uri,
)
from dist_contrast.train.state import check_safe_to_load, load_weights_only, state_file
from dist_contrast.train.text_model import TEXT_RECORD_FORMAT

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
SOURCES_HELP = (
    "a checkpoint_<step> folder (with meta.json), an MLflow run id, runs:/RUN_ID/encoder or "
    "models:/NAME/VERSION"
)
#: How a refusal of a checkpoint's files ends: loading an encoder, not resuming a run.
CHECKPOINT_FIX = "give another checkpoint of the run, or its MLflow model (runs:/RUN_ID/encoder)"


class TextEncoderSource(UserError):
    """The source holds a text encoder (``serving.text`` loads it), not one of rows."""


@dataclass(frozen=True)
class LoadedEncoder:
    """A trained encoder, ready to embed raw rows.

    ``module`` maps raw rows to ``output`` (preprocessing included); ``encoder`` is the bare
    ``ContrastiveEncoder``. Both are float32, in eval mode, on the CPU.

    Shape: module [n, *raw_shape] -> [n, output_dim]; encoder [n, *input_shape] -> ...
    """

    module: EncoderModule
    encoder: ContrastiveEncoder
    preprocessing: Preprocessing
    config: Config | None
    output: Output
    run_id: str | None
    input_shape: tuple[int, ...]
    output_dim: int
    source: str

    @property
    def raw_shape(self) -> tuple[int, ...]:
        return self.preprocessing.raw_shape

    def with_output(self, output: Output) -> LoadedEncoder:
        """The same encoder putting out ``output`` ("embedding" or "representation")."""
        if output == self.output:
            return self
        module = EncoderModule(self.encoder, self.preprocessing, output).eval()
        return replace(self, module=module, output=output, output_dim=module.output_dim)

    @torch.inference_mode()
    def __call__(self, raw: np.ndarray | Tensor) -> Tensor:
        """Shape: [n, *raw_shape] -> [n, output_dim] float32 (on the module's device)."""
        device = next(self.module.parameters()).device
        return self.module(float32_rows(raw).to(device))


def load_encoder(source: str, *, tracking_uri: str | None = None) -> LoadedEncoder:
    """The encoder of ``source``: a checkpoint folder (``checkpoint_<step>`` with
    ``meta.json``), an MLflow run id (32 hex digits), ``runs:/<run id>[/encoder]``, or a
    registered model ``models:/NAME/VERSION`` (any ``models:/`` URI).

    ``tracking_uri`` is the MLflow store of a run or model (default: ``MLFLOW_TRACKING_URI``,
    else ``sqlite:///mlflow.db`` here). Raises ``UserError`` (one line) for anything unusable.
    """
    source = str(source).strip()
    if is_mlflow_source(source):  # a folder may look like an id: a folder wins
        return _from_mlflow(source, tracking_uri)
    if "://" in source:
        raise UserError(f"cannot load '{source}': copy the checkpoint folder to a local path "
                        f"first, or give {SOURCES_HELP}")
    return _from_checkpoint(source)


def _assemble(
    source: str, encoder: ContrastiveEncoder, preprocessing: Preprocessing, config: Config | None,
    output: Output, run_id: str | None,
) -> LoadedEncoder:
    encoder = encoder.float().eval()
    module = EncoderModule(encoder, preprocessing, output).eval()
    return LoadedEncoder(
        module=module, encoder=encoder, preprocessing=preprocessing, config=config,
        output=output, run_id=run_id, input_shape=preprocessing.input_shape,
        output_dim=module.output_dim, source=source,
    )


def _build(source: str, config: Config, preprocessing: Preprocessing,
           state: dict[str, Tensor]) -> ContrastiveEncoder:
    """The config's encoder holding ``state`` (its random initialisation is thrown away, so
    the global RNG is left where it was)."""
    with torch.random.fork_rng(devices=[]):
        encoder = build_model(config.model, preprocessing.input_shape)
    if not isinstance(encoder, ContrastiveEncoder):
        raise TextEncoderSource(f"'{source}' is a text encoder (model.name="
                                f"{config.model.name}): embed a .txt or .jsonl file of texts "
                                "with --side query or --side document")
    try:
        encoder.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise UserError(f"the weights in '{source}' do not fit the model its config describes "
                        f"({first}); it was written by another version of dist_contrast") from None
    return encoder


# ----------------------------------------------------------------------------- checkpoints


def _from_checkpoint(source: str) -> LoadedEncoder:
    directory = Path(source)
    meta = _read_meta(source, directory)
    config, preprocessing = _parse_record(source, meta, what="meta.json")
    check_safe_to_load(directory, fix=CHECKPOINT_FIX)  # before DeepSpeed's reader unpickles
    encoder = _build(source, config, preprocessing, checkpoint_state_dict(directory))
    output = config.tracking.model_output
    run_id = meta.get("mlflow_run_id")
    return _assemble(source, encoder, preprocessing, config, output,
                     str(run_id) if run_id else None)


def _read_meta(source: str, directory: Path) -> dict[str, Any]:
    if not directory.exists():
        raise UserError(f"'{source}' does not exist; give {SOURCES_HELP}")
    if not directory.is_dir():
        raise UserError(f"'{source}' is a file, not a checkpoint folder; give {SOURCES_HELP}")
    marker = directory / storage.MARKER
    if not marker.is_file():
        raise UserError(_no_meta(source, directory))
    try:
        meta = json.loads(marker.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"checkpoint '{source}' has a corrupt {storage.MARKER} "
                        f"({type(exc).__name__}); use another checkpoint of the run") from None
    if not isinstance(meta, dict):
        raise UserError(f"checkpoint '{source}' has a corrupt {storage.MARKER} (not an object); "
                        "use another checkpoint of the run")
    return meta


def _no_meta(source: str, directory: Path) -> str:
    """Why a folder without ``meta.json`` is refused, and what to give instead. Its save
    writes ``meta.json`` last (the config and preprocessing the encoder is rebuilt from): a
    folder without one may hold half a save."""
    complete = storage.newest_complete(str(directory))
    if complete is not None:
        return (f"'{source}' is a run folder, not a checkpoint; give one of its checkpoints, "
                f"e.g. {complete.path}")
    if storage.step_of(str(directory)) is None and not state_file(directory, 0).is_file():
        return f"'{source}' is not a checkpoint folder (no {storage.MARKER}); give {SOURCES_HELP}"
    problem = (f"checkpoint '{source}' has no {storage.MARKER}, which its save writes last: the "
               "save was interrupted, or the folder was copied without it")
    beside = storage.newest_complete_beside(str(directory))
    if beside is not None:
        marker = shlex.quote(storage.join(beside.path, storage.MARKER))
        return (f"{problem}; give a complete checkpoint of the run, e.g. {beside.path}, or, if "
                f"every worker's files are there, copy the run's marker into it: cp {marker} "
                f"{shlex.quote(str(directory / storage.MARKER))}")
    run_id = _run_id_of(directory)
    model = f"runs:/{run_id}/{MODEL_NAME}" if run_id else "runs:/RUN_ID/encoder"
    return f"{problem}; give a complete checkpoint of the run, or its MLflow model {model}"


def _run_id_of(directory: Path) -> str | None:
    """The MLflow run a checkpoint's rank-0 trainer state names (None if it cannot be read)."""
    try:
        state = load_weights_only(state_file(directory, 0), legacy_numpy=True, mmap=True)
    except UserError:
        return None
    run_id = state.get("mlflow_run_id") if isinstance(state, dict) else None
    return str(run_id) if run_id else None


def _parse_record(source: str, record: dict[str, Any], what: str) -> tuple[Config, Preprocessing]:
    """The config and the preprocessing a checkpoint's meta.json or a model's record holds."""
    if record.get("config") is None or record.get("preprocessing") is None:
        run = record.get("mlflow_run_id")
        instead = f"load the run's MLflow model ({run})" if run else "use a newer checkpoint"
        raise UserError(f"'{source}' was written before {what} recorded the config and the "
                        f"preprocessing, so its encoder cannot be rebuilt; {instead}")
    try:
        config = Config.model_validate(record["config"])
        preprocessing = Preprocessing.from_dict(record["preprocessing"])
    except (ValidationError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise UserError(f"'{source}': the config or preprocessing in its {what} does not load "
                        f"({first}); it was written by another version of dist_contrast") from None
    return config, preprocessing


# ----------------------------------------------------------------------------- MLflow


def is_mlflow_source(source: str) -> bool:
    """Whether ``source`` names an MLflow run or model rather than a folder."""
    return source.startswith(("runs:/", "models:/")) or bool(
        _RUN_ID.match(source) and not Path(source).exists())


def read_mlflow_model(
    source: str, tracking_uri: str | None
) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """The record, the state dict (tensors, and a text encoder's featurizer as plain data)
    and the source run id of a model dist_contrast logged. Raises ``UserError`` (one line)."""
    from dist_contrast.tracking import default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    _check_store(source, uri)
    model_uri = _model_uri(source)
    with tempfile.TemporaryDirectory() as tmp, use_tracking_uri(uri):
        local = _download(source, model_uri, uri, tmp)
        return _read_model(source, Path(local))


def _from_mlflow(source: str, tracking_uri: str | None) -> LoadedEncoder:
    record, state, run_id = read_mlflow_model(source, tracking_uri)
    if record.get("format") == TEXT_RECORD_FORMAT:
        raise TextEncoderSource(f"'{source}' is a text encoder: embed a .txt or .jsonl file of "
                                "texts with --side query or --side document")
    config, preprocessing = _parse_record(source, record, what="model record")
    output = record.get("output")
    if output not in OUTPUTS:
        raise UserError(f"'{source}' names an unknown output {output!r}; it was written by "
                        "another version of dist_contrast")
    encoder = _build(source, config, preprocessing, state)
    return _assemble(source, encoder, preprocessing, config, output, run_id)


def _model_uri(source: str) -> str:
    if _RUN_ID.match(source):
        return f"runs:/{source}/{MODEL_NAME}"
    if source.startswith("runs:/") and "/" not in source.removeprefix("runs:/").strip("/"):
        return f"runs:/{source.removeprefix('runs:/').strip('/')}/{MODEL_NAME}"
    return source


def _check_store(source: str, uri: str) -> None:
    """A local SQLite store must exist: MLflow would create an empty one and then say only
    that the run is not found."""
    from dist_contrast.tracking import sqlite_path

    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        raise UserError(f"cannot load '{source}': there is no MLflow store at {uri}; run from "
                        "the folder that holds mlflow.db, or set MLFLOW_TRACKING_URI "
                        "(--tracking-uri) to the store of the run")


def _download(source: str, model_uri: str, uri: str, tmp: str) -> str:
    import mlflow
    from mlflow.exceptions import MlflowException

    from dist_contrast.tracking import fail_fast

    fail_fast()  # an unreachable server: an answer in seconds, not minutes of retries
    run_id = model_uri.removeprefix("runs:/").split("/")[0] if model_uri.startswith("runs:/") \
        else None
    try:
        if run_id is not None:
            mlflow.MlflowClient(uri).get_run(run_id)
    except (MlflowException, OSError) as exc:
        _raise_if_unreachable(uri, exc)
        raise UserError(f"no MLflow run '{run_id}' in {uri} ({_first_line(exc)}); check the id, "
                        "or set MLFLOW_TRACKING_URI (--tracking-uri) to the run's store") from None
    try:
        with _no_progress_bars():
            return str(mlflow.artifacts.download_artifacts(
                artifact_uri=model_uri, dst_path=tmp, tracking_uri=uri))
    except (MlflowException, OSError) as exc:
        _raise_if_unreachable(uri, exc)
        fix = ("was tracking.log_model false, or did the run not finish? Load one of its "
               "checkpoints instead" if run_id is not None
               else "check the name and version (or alias) in the Model Registry")
        raise UserError(f"cannot load the model '{model_uri}' from {uri} ({_first_line(exc)}); "
                        f"{fix}") from None


def _raise_if_unreachable(uri: str, exc: BaseException) -> None:
    """One line for a tracking server that does not answer (or refuses our credentials),
    rather than blaming the run id or the model name."""
    import requests

    from dist_contrast.tracking import refusal

    refused = refusal(uri, exc)
    if refused is not None:
        raise refused from None
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, requests.ConnectionError | requests.Timeout):
            raise UserError(
                f"cannot reach the MLflow tracking server at {uri} ({_first_line(cause)}); "
                "start it, or set MLFLOW_TRACKING_URI (--tracking-uri) to the store of the run"
            ) from None
        cause = cause.__cause__ or cause.__context__


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """MLflow's artifact download bars (two per model, on stderr) off for the block, unless
    the user set ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR``: they would bury our one line."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if name in os.environ:
        yield
        return
    os.environ[name] = "false"
    try:
        yield
    finally:
        os.environ.pop(name, None)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _read_model(source: str, local: Path) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """The record, the float32 state dict and the source run id of a downloaded model."""
    from mlflow.models import Model

    extra = local / "extra_files"
    if not (extra / RECORD_FILE).is_file():  # a text encoder's pyfunc keeps them as artifacts
        extra = local / "artifacts"
    if not (extra / RECORD_FILE).is_file() or not (extra / STATE_FILE).is_file():
        raise UserError(f"'{source}' is not an encoder logged by dist_contrast (it has no "
                        f"extra_files/{RECORD_FILE}); give a model that `dist-contrast train` "
                        "logged")
    try:
        record = json.loads((extra / RECORD_FILE).read_text())
        state = torch.load(extra / STATE_FILE, map_location="cpu", weights_only=True)
        run_id = Model.load(str(local)).run_id
    except Exception as exc:  # a damaged download or file: any reader's failure
        raise UserError(f"the model '{source}' has a corrupt file ({type(exc).__name__}: "
                        f"{_first_line(exc)}); log the model again or load a checkpoint") from None
    if not isinstance(record, dict) or not isinstance(state, dict):
        raise UserError(f"the model '{source}' has a corrupt {RECORD_FILE} or {STATE_FILE}; log "
                        "the model again or load a checkpoint")
    return record, state, str(run_id) if run_id else None
