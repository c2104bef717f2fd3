"""The training data as a run's page records it: an MLflow dataset input (context "training")
with a digest of the files' bytes, or of a generator's parameters."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA_CONTEXT = "mlflow.data.context"


def file_digest(*paths: str | Path, chunk: int = 1 << 20) -> str:
    """A digest of the files' bytes, read in chunks (a file may not fit in memory)."""
    sha = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            while block := handle.read(chunk):
                sha.update(block)
    return sha.hexdigest()[:16]  # MLflow keeps at most 36 characters; 64 bits tell files apart


def params_digest(params: Mapping[str, Any]) -> str:
    """A digest of a generator's parameters: generated data is a function of them."""
    text = json.dumps({str(k): str(v) for k, v in params.items()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TrainingData:
    """The training data as the run's page records it (a dataset input, context "training"),
    in plain values: the driver computes them from the config and the data it checked.

    ``source`` is MLflow's source JSON for ``source_type``: ``{"uri": path}`` for ``local``
    files, ``{"tags": {...}}`` (the generator, its seed and size) for ``code``."""

    name: str
    source_type: str
    source: Mapping[str, Any]
    digest: str
    rows: int
    feature_shape: tuple[int, ...]
    dtype: str = "float32"
    label: str | None = None

    @classmethod
    def from_file(
        cls, path: str | Path, *, rows: int, feature_shape: tuple[int, ...],
        dtype: str = "float32", labels_path: str | Path | None = None,
        label_column: str | None = None,
    ) -> TrainingData:
        """A ``.npy`` / ``.parquet`` file (labels in a column or a second ``.npy`` file)."""
        files = [Path(path).resolve(), *([Path(labels_path).resolve()] if labels_path else [])]
        source: dict[str, str] = {"uri": str(files[0])}
        if labels_path:
            source["labels_uri"] = str(files[1])
        label = label_column or ("label" if labels_path else None)
        return cls(files[0].name, "local", source, file_digest(*files), rows, feature_shape,
                   dtype, label)

    @classmethod
    def generated(
        cls, name: str, generator: Mapping[str, Any], *, rows: int,
        feature_shape: tuple[int, ...], dtype: str = "float32", label: str | None = "label",
    ) -> TrainingData:
        """Data made by code from ``generator`` (its description, seed, size and settings)."""
        tags = {str(k): str(v) for k, v in generator.items()}
        return cls(name, "code", {"tags": tags}, params_digest({"name": name, **tags}), rows,
                   feature_shape, dtype, label)

    @property
    def num_features(self) -> int:
        return math.prod(self.feature_shape)

    def schema_json(self) -> str:
        """MLflow's tensor schema: features [-1, *shape] of ``dtype``; labels [-1] int64."""
        import numpy as np
        from mlflow.data.schema import TensorDatasetSchema
        from mlflow.types import Schema, TensorSpec

        features = Schema([TensorSpec(np.dtype(self.dtype), (-1, *self.feature_shape), "features")])
        if self.label is None:
            return json.dumps(TensorDatasetSchema(features).to_dict())
        # Labels reach the trainer as int64 class codes, whatever the file stored.
        targets = Schema([TensorSpec(np.dtype("int64"), (-1,), self.label)])
        return json.dumps(TensorDatasetSchema(features, targets).to_dict())

    def profile_json(self) -> str:
        return json.dumps({"num_rows": self.rows, "num_features": self.num_features})


def log_training_data(tracking_uri: str, run_id: str, data: TrainingData | None) -> None:
    """Record ``data`` as the run's training dataset (MLflow skips an input logged before)."""
    if data is None:
        return
    import mlflow
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(
        name=data.name[:500], digest=data.digest, source_type=data.source_type,
        source=json.dumps(dict(data.source)), schema=data.schema_json(),
        profile=data.profile_json(),
    )
    mlflow.MlflowClient(tracking_uri=tracking_uri).log_inputs(
        run_id, [DatasetInput(dataset, [InputTag(DATA_CONTEXT, "training")])]
    )

