"""The trained encoder as an MLflow model: one module from raw rows to outputs, and its logging.

The trainer logs the model at the end of a run (:mod:`dist_contrast.train.reporting`); loading
an encoder from a checkpoint or from MLflow lives in :mod:`dist_contrast.serving.load`, which
builds on ``train``. This module imports only ``config``, ``data``, ``models`` and ``errors``.

The model is logged in MLflow 3's ``pt2`` format (``torch.export``): a traced graph that
loads with torch alone, without this package and without unpickling code. Its input is raw
float32 rows ``[n, *raw_shape]`` (the signature says so); the graph applies the training
preprocessing, the encoder and the output choice. Beside it, ``extra_files/`` holds what this
package's loader reads instead of the graph: the encoder's float32 state dict (read with
``weights_only=True``) and a JSON record of the preprocessing, the output and the run's config.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from dist_contrast.config import Config
from dist_contrast.data.preprocess import Preprocessing
from dist_contrast.models import ContrastiveEncoder

Output = Literal["embedding", "representation"]
OUTPUTS: tuple[Output, ...] = ("embedding", "representation")
#: The model's name in its run (``runs:/<run id>/encoder``).
MODEL_NAME = "encoder"
#: Files beside the graph, under the model's ``extra_files/``.
RECORD_FILE = "dist_contrast.json"
STATE_FILE = "encoder_state.pt"
RECORD_FORMAT = 1


class EncoderModule(nn.Module):
    """Raw rows -> the encoder's output, with the training preprocessing built in.

    ``output="embedding"`` is the projection head's unit-norm output (what the loss saw);
    ``"representation"`` the backbone's features before the head.

    Shape: [n, *raw_shape] -> [n, output_dim] float32.
    """

    def __init__(
        self, encoder: ContrastiveEncoder, preprocessing: Preprocessing, output: Output
    ) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        self.encoder = encoder
        self.preprocessing = preprocessing
        self.output = output

    @property
    def output_dim(self) -> int:
        return int(self.encoder.embedding_dim if self.output == "embedding"
                    else self.encoder.feature_dim)

    def forward(self, raw: Tensor) -> Tensor:
        x = self.preprocessing.apply(raw)
        out = self.encoder(x) if self.output == "embedding" else self.encoder.encode(x)
        return out.float()


@dataclass(frozen=True)
class TrainedEncoder:
    """What the trainer hands over at the end of a run to be logged.

    Shape: example [k, *preprocessing.raw_shape] raw rows (k >= 1).
    """

    encoder: ContrastiveEncoder  # float32, eval mode, on the CPU
    preprocessing: Preprocessing
    example: Tensor
    config: Config


def model_record(
    preprocessing: Preprocessing, output: Output, output_dim: int, config: Config
) -> dict[str, Any]:
    """The JSON record logged beside the model (and read back by the loader)."""
    return {
        "format": RECORD_FORMAT,
        "output": output,
        "output_dim": output_dim,
        "preprocessing": preprocessing.to_dict(),
        "config": config.model_dump(mode="json"),
    }


def log_encoder(
    trained: TrainedEncoder,
    *,
    tracking_uri: str,
    run_id: str,
    output: Output = "embedding",
    registered_model_name: str | None = None,
) -> str:
    """Log ``trained`` as the MLflow model ``encoder`` of run ``run_id`` (``runs:/<id>/encoder``);
    with ``registered_model_name``, also register it as a new version of that model.

    Client-side: the run is not made active and its status is left as it is. Returns the
    logged model's URI (``models:/m-...``).
    """
    import mlflow

    module = EncoderModule(trained.encoder, trained.preprocessing, output).eval()
    example = _example(trained.example, trained.preprocessing)
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / RECORD_FILE
        record.write_text(json.dumps(model_record(
            trained.preprocessing, output, module.output_dim, trained.config), indent=1))
        state = Path(tmp) / STATE_FILE
        torch.save(trained.encoder.state_dict(), state)
        with logged_model(tracking_uri, run_id) as model_id:
            info = mlflow.pytorch.log_model(
                module, name=MODEL_NAME, model_id=model_id, run_id=run_id,
                serialization_format="pt2", signature=_signature(module, example),
                input_example=example, extra_files=[str(record), str(state)],
                pip_requirements=requirements(),
                registered_model_name=registered_model_name,
                metadata={"dist_contrast": {"output": output,
                                            "output_dim": module.output_dim,
                                            "preprocessing": trained.preprocessing.kind}},
            )
    return str(info.model_uri)


@contextlib.contextmanager
def logged_model(tracking_uri: str, run_id: str) -> Iterator[str]:
    """The id of a new logged model ``encoder`` of run ``run_id``, with MLflow's global URI
    set to ``tracking_uri`` for the block; a block that fails marks the model FAILED (not
    left PENDING: the model page says it failed)."""
    import mlflow

    with use_tracking_uri(tracking_uri):
        client = mlflow.MlflowClient(tracking_uri)
        # Created here, in the run's experiment: without an active run MLflow would file
        # the model under the default experiment, where runs:/<id>/encoder cannot find it.
        logged = client.create_logged_model(
            experiment_id=client.get_run(run_id).info.experiment_id,
            name=MODEL_NAME, source_run_id=run_id,
        )
        try:
            yield str(logged.model_id)
        except BaseException:
            with contextlib.suppress(Exception):
                client.finalize_logged_model(logged.model_id, "FAILED")
            raise


def _example(rows: Tensor, preprocessing: Preprocessing) -> np.ndarray:
    """Raw float32 rows with at least 2 of them: ``torch.export`` fixes a batch of 1."""
    example = rows.detach().cpu().float().reshape(-1, *preprocessing.raw_shape)
    if len(example) == 1:
        example = torch.cat([example, example])
    return example.numpy()


def _signature(module: EncoderModule, example: np.ndarray) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    # Unnamed: a named input makes pyfunc hand the model a dict, which the pytorch flavor refuses.
    raw = TensorSpec(np.dtype(np.float32), (-1, *example.shape[1:]))
    out = TensorSpec(np.dtype(np.float32), (-1, module.output_dim))
    return ModelSignature(inputs=Schema([raw]), outputs=Schema([out]))


def requirements() -> list[str]:
    """What the pt2 model needs to load: torch (the version that exported it) and numpy.
    Given explicitly: inferring them would load the model again in a subprocess."""
    torch_version = torch.__version__.split("+")[0]  # no local tag: "+cpu" is not on PyPI
    return [f"torch=={torch_version}", f"numpy=={np.__version__}"]


@contextlib.contextmanager
def use_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI set to ``uri`` for the block, then put back as it was:
    unset (None) or set, and the ``MLFLOW_TRACKING_URI`` variable that setting it writes.
    Some of MLflow's model and artifact calls read only the global URI."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    # Private, but the only way to tell "unset" from "set to the default" (get_tracking_uri
    # resolves both); restoring the resolved value would pin it against later changes.
    explicit: Any = getattr(tracking_utils, "_tracking_uri", None)
    variable = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(explicit)
        if variable is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = variable
