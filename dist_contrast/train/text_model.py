"""A text run's encoder as an MLflow model that takes raw strings.

The model is an MLflow ``pyfunc`` whose input is a column of texts (``text``; a list of
strings works too) and whose ``side`` parameter picks the tower (``query``, the default, or
``document``); its output is the unit-norm embeddings, float32 ``[n, embedding_dim]``. A side
of numeric feature rows takes them in a ``features`` column (a list of numbers each; a 2-D
array or a list of lists works too). The
featurizer (the bag's vocabulary, or the trained or loaded tokenizer) is inside the encoder's
state, so the model needs nothing but itself to turn text into embeddings. Its artifacts are
the float32 state dict (tensors, and the featurizer as plain lists and strings, read with
``weights_only=True``) and the JSON record of the run's config; loading it needs
``dist_contrast`` importable (the towers and the featurizer are its code).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dist_contrast.config import Config
from dist_contrast.models import build_model
from dist_contrast.models.text import SIDES, Side, TextEncoder
from dist_contrast.train.model import (
    MODEL_NAME,
    RECORD_FILE,
    STATE_FILE,
    logged_model,
    requirements,
)

#: The record's format for a text model (the row model's record is format 1).
TEXT_RECORD_FORMAT = "text-1"

try:  # the class MLflow pickles by reference: its base must exist where MLflow does
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover - mlflow is a dependency
    PythonModel = object  # type: ignore[assignment,misc]


@dataclass
class TrainedTextEncoder:
    """What a text run hands over at its end: the float32 encoder (eval, CPU) and config."""

    encoder: TextEncoder
    config: Config


def build_text_encoder(config: Config, state: dict[str, Any]) -> TextEncoder:
    """The config's text encoder holding ``state`` (its featurizer included), float32, eval.
    The global RNG is left where it was."""
    with torch.random.fork_rng(devices=[]):
        encoder = build_model(config.model, (1,))
    if not isinstance(encoder, TextEncoder):
        raise ValueError(f"model.name={config.model.name} is not a text encoder")
    encoder.load_state_dict(state)
    return encoder.float().eval()


def inputs_of(encoder: TextEncoder, model_input: Any, side: str) -> Any:
    """What ``side``'s tower takes from a pyfunc input: texts (:func:`texts_of`), or for a
    side of feature rows a DataFrame's ``features`` column (or its only column), a 2-D array
    or a list of rows."""
    if encoder.takes_text(side):  # type: ignore[arg-type]  # predict checks the side
        return texts_of(model_input)
    if getattr(model_input, "columns", None) is None:
        return model_input
    rows = _column(model_input, "features", f"the {side} side's feature rows")
    return [np.asarray(row, dtype=np.float32) for row in rows]


def texts_of(model_input: Any) -> list[str]:
    """The texts of a pyfunc input: a DataFrame (its ``text`` column, or its only column), a
    Series, a list or array of strings, or one string."""
    if isinstance(model_input, str):
        return [model_input]
    if getattr(model_input, "columns", None) is not None:
        model_input = _column(model_input, "text", "the texts")
    texts = [str(t) for t in (model_input.tolist() if hasattr(model_input, "tolist")
                              else model_input)]
    return texts


def _column(frame: Any, name: str, what: str) -> Any:
    """A DataFrame's column ``name``, or its only column."""
    names = list(frame.columns)
    if name in names:
        return frame[name]
    if len(names) == 1:
        return frame[names[0]]
    raise ValueError(f"give {what} in a column named {name!r} (got columns {names})")


class TextEncoderModel(PythonModel):  # type: ignore[misc,valid-type]
    """The pyfunc: texts (+ ``params={"side": ...}``) -> float32 embeddings [n, D]."""

    encoder: TextEncoder | None = None
    # The input's schema is the logged signature; MLflow's own reading of predict's type
    # hints would wrap predict and warn at import.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        record = json.loads(Path(context.artifacts["record"]).read_text())
        state = torch.load(context.artifacts["state"], map_location="cpu", weights_only=True)
        self.encoder = build_text_encoder(Config.model_validate(record["config"]), state)

    def predict(self, context: Any, model_input: Any,
                params: dict[str, Any] | None = None) -> np.ndarray:
        if self.encoder is None:
            raise RuntimeError("the model was not loaded (load it with mlflow.pyfunc)")
        side = (params or {}).get("side", "query")
        if side not in SIDES:
            raise ValueError(f"params side must be one of {SIDES}, got {side!r}")
        return embed(self.encoder, inputs_of(self.encoder, model_input, side), side)


@torch.inference_mode()
def embed(encoder: TextEncoder, texts: Sequence[Any], side: str,
          batch_size: int = 256) -> np.ndarray:
    """Shape: [n] texts (or feature rows) -> [n, embedding_dim] float32."""
    parts = [encoder(list(texts[i : i + batch_size]), side=side).float().cpu().numpy()
             for i in range(0, len(texts), batch_size)]
    if not parts:
        return np.zeros((0, encoder.embedding_dim), dtype=np.float32)
    return np.concatenate(parts)


#: A (config as a dict, state) snapshot of a text encoder: what Ray tasks are sent.
Snapshot = tuple[dict[str, Any], dict[str, Any]]
_ENCODERS: dict[str, TextEncoder] = {}  # one rebuilt encoder per process, reused by its shards


def encode_shard(snapshot: Snapshot, side: str, texts: list[Any], batch_size: int,
                 key: str) -> np.ndarray:
    """``side``'s embeddings of one shard of ``texts`` from a weights ``snapshot`` (the body
    of a Ray task): the encoder is rebuilt once per process and ``key`` (naming the
    snapshot) and kept for the next shard. Shape: [n] -> [n, embedding_dim] float32."""
    encoder = _ENCODERS.get(key)
    if encoder is None:
        _ENCODERS.clear()
        encoder = build_text_encoder(Config.model_validate(snapshot[0]), snapshot[1])
        _ENCODERS[key] = encoder
    return embed(encoder, texts, side, batch_size=batch_size)


def log_text_encoder(
    trained: TrainedTextEncoder, *, tracking_uri: str, run_id: str,
    registered_model_name: str | None = None,
) -> str:
    """Log ``trained`` as the MLflow model ``encoder`` of run ``run_id`` (a pyfunc over raw
    strings; see the module docstring); returns the logged model's URI."""
    import mlflow
    from mlflow.models import Model, ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec
    from mlflow.types.schema import Array

    encoder, config = trained.encoder, trained.config
    inputs: list[ColSpec | TensorSpec] = [ColSpec("string", "text")]
    if encoder.feature_widths:  # one side takes texts, the other feature rows
        inputs = [ColSpec("string", "text", required=False),
                  ColSpec(Array("double"), "features", required=False)]
    signature = ModelSignature(
        inputs=Schema(inputs),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, encoder.embedding_dim))]),
        params=ParamSchema([ParamSpec("side", "string", "query")]),
    )
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / RECORD_FILE
        record.write_text(json.dumps({
            "format": TEXT_RECORD_FORMAT, "output": "embedding",
            "output_dim": encoder.embedding_dim, "config": config.model_dump(mode="json"),
        }, indent=1))
        state = Path(tmp) / STATE_FILE
        torch.save(encoder.state_dict(), state)
        with logged_model(tracking_uri, run_id) as model_id:
            # Model.log: pyfunc.log_model has no run_id, and the run is not made active.
            info = Model.log(
                None, name=MODEL_NAME, flavor=mlflow.pyfunc, python_model=TextEncoderModel(),
                model_id=model_id, run_id=run_id,
                artifacts={"record": str(record), "state": str(state)},
                signature=signature, registered_model_name=registered_model_name,
                pip_requirements=requirements(),
                metadata={"dist_contrast": {"output": "embedding", "text": True,
                                            "output_dim": encoder.embedding_dim}},
            )
    return str(info.model_uri)


#: The sentence-transformers folder(s) of a transformer run, in its run folder.
ST_FOLDER = "sentence_transformer"


def export_sentence_transformer_folders(trained: TrainedTextEncoder, folder: Path) -> list[Path]:
    """A transformer encoder's towers as folders that ``SentenceTransformer(path)`` loads and
    that embed as the towers do: ``folder/sentence_transformer`` for a shared tower,
    ``..._query`` and ``..._document`` for two (the text tower's alone beside a side of
    feature rows). Nothing for a bag-of-n-grams encoder.
    Raises ``ValueError`` for a head sentence-transformers cannot hold (BatchNorm)."""
    from dist_contrast.models.text import TokenizerFeaturizer
    from dist_contrast.models.transformer import TransformerBody
    from dist_contrast.text import export_sentence_transformers

    encoder = trained.encoder
    featurizer = encoder.featurizer
    if not isinstance(featurizer, TokenizerFeaturizer):
        return []
    written = []
    for name in encoder.towers:
        side: Side = "query" if name in ("shared", "query") else "document"
        tower = encoder.tower(side)
        body = tower.body
        if not encoder.takes_text(side):  # a side of feature rows: an MLP, not a text model
            continue
        if not isinstance(body, TransformerBody):
            return []
        target = folder / (ST_FOLDER if name == "shared" else f"{ST_FOLDER}_{name}")
        export_sentence_transformers(body, tower.head, featurizer.tokenizer,
                                     encoder.max_lengths[side], target)
        written.append(target)
    return written
