"""``dist-contrast evaluate``: a trained encoder measured on any dataset the config can name.

The encoder comes from :func:`~dist_contrast.serving.load.load_encoder` (a run, a registered
model or a checkpoint folder); the dataset from its training config with the user's overrides
(``data.name=file data.path=…``). File data goes through the encoder's own preprocessing (its
training statistics), as ``embed`` would. The measures are the trainer's own
(:class:`~dist_contrast.train.evaluation.Evaluator`: kNN beside the raw-input baseline, linear
probe, alignment, uniformity, tolerance), logged as a new MLflow run tagged with what it
evaluates.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dist_contrast.config import Config, apply_overrides, flatten, to_yaml, validate
from dist_contrast.data import DataError, build_data
from dist_contrast.data.config import dataset_keys
from dist_contrast.errors import UserError
from dist_contrast.models import ContrastiveEncoder
from dist_contrast.serving.load import LoadedEncoder, TextEncoderSource, load_encoder
from dist_contrast.serving.text import load_text_encoder, text_checkpoint_config
from dist_contrast.tracking import MlflowTracker, default_tracking_uri, ensure_experiment
from dist_contrast.train.evaluation import Evaluator
from dist_contrast.train.model import Output
from dist_contrast.train.retrieval_eval import RetrievalEvaluator


@dataclass(frozen=True)
class Evaluation:
    run_id: str
    tracking_uri: str
    metrics: dict[str, float]


class _Outputs(nn.Module):
    """The encoder's chosen output on encoder inputs (what the evaluator embeds with)."""

    def __init__(self, encoder: ContrastiveEncoder, output: Output) -> None:
        super().__init__()
        self.encoder, self.output = encoder, output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.output == "representation":
            return self.encoder.encode(x)
        return self.encoder(x)


def evaluation_config(loaded: LoadedEncoder | Config | None, overrides: list[str]) -> Config:
    """The run's training config (defaults if the source has none) with ``overrides``.

    When the overrides name another dataset (another ``data.name``, or another
    ``data.path``), the keys only the trained dataset reads (``data.num_samples``,
    ``data.labels_path``, ...) are dropped first: they describe the training data, not the
    data the user names.
    """
    config = loaded if isinstance(loaded, Config) or loaded is None else loaded.config
    base = (config or Config()).model_dump(mode="json")
    base["trainer"]["resume_from"] = None
    trained, wanted = base["data"], apply_overrides(base, overrides)["data"]
    if _other_dataset(trained, wanted):
        try:
            own = dataset_keys(trained["name"])
        except ValueError:  # a dataset registered where it trained, not here: validate says so
            own = frozenset()
        base["data"] = {key: value for key, value in trained.items() if key not in own}
    return validate(apply_overrides(base, overrides), source="evaluate")


def _other_dataset(trained: dict[str, Any], wanted: dict[str, Any]) -> bool:
    if wanted.get("name") != trained.get("name"):
        return True
    old, new = trained.get("path"), wanted.get("path")
    if old is None or new is None or "://" in str(old) + str(new):
        return old != new
    return os.path.abspath(old) != os.path.abspath(new)


def run_evaluation(
    source: str, overrides: list[str], *, output: Output | None = None,
    tracking_uri: str | None = None, run_name: str | None = None,
) -> Evaluation:
    """Evaluate ``source`` on the dataset of its config with ``overrides``; log a new run.
    A text encoder is measured by retrieval on the pairs' held-out split, beside BM25."""
    if text_checkpoint_config(source) is not None:
        return _run_text_evaluation(source, overrides, tracking_uri, run_name)
    try:
        loaded = load_encoder(source, tracking_uri=tracking_uri)
    except TextEncoderSource:
        return _run_text_evaluation(source, overrides, tracking_uri, run_name)
    if output is not None:
        loaded = loaded.with_output(output)
    cfg = evaluation_config(loaded, overrides)
    try:  # a dataset whose preprocessing depends on its rows takes the encoder's instead
        data = build_data(cfg.data, seed=cfg.experiment.seed, preprocessing=loaded.preprocessing)
    except DataError as exc:
        raise UserError(str(exc)) from None
    if tuple(data.input_shape) != tuple(loaded.input_shape):
        raise UserError(
            f"data.name={cfg.data.name} gives inputs of shape {tuple(data.input_shape)}, the "
            f"encoder of {source} takes {tuple(loaded.input_shape)}; name a dataset like its "
            "training data"
        )
    evaluator = Evaluator(cfg, data, torch.device("cpu"))
    metrics = evaluator.raw_baseline()
    metrics |= evaluator.evaluate(_Outputs(loaded.encoder, loaded.output),
                                  step=cfg.trainer.max_steps)
    uri = tracking_uri or str(cfg.tracking.tracking_uri or default_tracking_uri())
    run_id = _log(uri, cfg, _Evaluated(loaded.source, loaded.output, loaded.run_id), metrics,
                  run_name)
    return Evaluation(run_id=run_id, tracking_uri=uri, metrics=metrics)


def _run_text_evaluation(source: str, overrides: list[str], tracking_uri: str | None,
                         run_name: str | None) -> Evaluation:
    """A text encoder's retrieval metrics (MRR@10, Recall@k, nDCG@10) on the held-out pairs of
    its config with ``overrides`` (``data.eval_path=other.jsonl``), beside BM25 and the
    hybrids, as :class:`RetrievalEvaluator` computes them during training."""
    encoder, trained = load_text_encoder(source, tracking_uri)
    cfg = evaluation_config(trained, overrides)
    if not cfg.data.yields_text:
        raise UserError(f"{source} is a text encoder: evaluate it on pairs (data.name=pairs "
                        "data.path=... data.eval_path=...), not data.name="
                        f"{cfg.data.name}")
    try:
        data = build_data(cfg.data, seed=cfg.experiment.seed)
    except DataError as exc:
        raise UserError(str(exc)) from None
    assert data.retrieval is not None
    evaluator = RetrievalEvaluator(data.retrieval, torch.device("cpu"))
    metrics = {**evaluator.baseline(), **evaluator.evaluate(encoder)}
    uri = tracking_uri or str(cfg.tracking.tracking_uri or default_tracking_uri())
    run_id = _log(uri, cfg, _Evaluated(source, "embedding", None), metrics, run_name)
    return Evaluation(run_id=run_id, tracking_uri=uri, metrics=metrics)


@dataclass(frozen=True)
class _Evaluated:
    """What the evaluation run's tags name: the source, its output and its training run."""

    source: str
    output: str
    run_id: str | None


def _log(uri: str, cfg: Config, loaded: _Evaluated, metrics: dict[str, float],
         run_name: str | None) -> str:
    ensure_experiment(uri, cfg.tracking.experiment, None)
    name = run_name or f"evaluate-{cfg.experiment.run_name or cfg.experiment.name}"
    tracker = MlflowTracker(uri, cfg.tracking.experiment, name)
    assert tracker.run_id is not None
    try:
        _fill(tracker, cfg, loaded, metrics)
    except BaseException as exc:  # Ctrl-C included: the run is not left RUNNING
        tracker.close("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    tracker.close("FINISHED")
    return tracker.run_id


def _fill(tracker: MlflowTracker, cfg: Config, loaded: _Evaluated,
          metrics: dict[str, float]) -> None:
    tags = {
        "dist_contrast.evaluates_source": loaded.source,
        "dist_contrast.evaluation_output": loaded.output,
        "mlflow.source.name": " ".join(["dist-contrast", *sys.argv[1:]]),
    }
    if loaded.run_id is not None:
        tags["dist_contrast.evaluates_run"] = loaded.run_id
    tracker.set_tags(tags)
    tracker.log_params({k: v for k, v in flatten(cfg).items()
                        if k.startswith(("data.", "eval.", "model."))})
    tracker.log_text(to_yaml(cfg), "config.yaml")
    tracker.log_metrics(metrics, step=0)
