"""Real checkpoints in seconds: short runs through the trainer's own builders and its own
checkpoint saving, on two gloo ranks in one spawn (no Ray).

Each run trains :data:`STEPS` steps of InfoNCE on a small file dataset (standardised, labels =
row numbers, so held-out rows say which raw rows they are), saves with ``save_and_report``
(DeepSpeed's state, every rank's trainer state, ``meta.json`` with the config and the
preprocessing) and returns, from rank 0, what the tests compare a loaded encoder against.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dist_contrast.config import Config, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ROWS, WIDTH, STEPS = 240, 12, 3
#: Name -> the DeepSpeed settings of the run.
RUNS: dict[str, tuple[str, ...]] = {
    "fp32": ("deepspeed.zero_stage=0", "deepspeed.precision=fp32"),
    "zero2_bf16": ("deepspeed.zero_stage=2", "deepspeed.precision=bf16"),
    "zero0_bf16": ("deepspeed.zero_stage=0", "deepspeed.precision=bf16"),
}


def write_features(root: Path) -> np.ndarray:
    """Raw rows far from zero mean and unit scale (standardising matters), and row-number
    labels. Shape: [ROWS, WIDTH] float32."""
    rng = np.random.default_rng(0)
    features = (rng.normal(size=(ROWS, WIDTH)) * rng.uniform(0.5, 20, WIDTH)
                + rng.normal(0, 30, WIDTH)).astype(np.float32)
    np.save(root / "x.npy", features)
    np.save(root / "ids.npy", np.arange(ROWS))
    return features


def run_config(root: str | Path, name: str) -> Config:
    return load_config(CONFIGS / "synthetic.yaml", run_overrides(root, name))


def run_overrides(root: str | Path, name: str) -> list[str]:
    """The overrides of ``configs/synthetic.yaml`` that run ``name`` trains with."""
    return [
        "data.name=file", f"data.path={Path(root) / 'x.npy'}",
        f"data.labels_path={Path(root) / 'ids.npy'}", "data.max_eval_test=null",
        "model.hidden_dim=32", "model.embedding_dim=8", "model.batch_norm=true",
        "trainer.num_workers=2", "trainer.batch_size=16", f"trainer.max_steps={STEPS}",
        # A short warm-up and a large rate: every step moves the weights well past bf16's
        # resolution (a run's first fp32 master weights are its bf16 weights, exactly).
        "optimizer.warmup_steps=1", "optimizer.lr=0.01",
        f"experiment.output_dir={Path(root) / 'results'}", f"experiment.run_name={name}",
        *RUNS[name],
    ]


class _RayTrainStub:
    """What ``save_and_report`` uses of ``ray.train``."""

    def report(self, metrics: dict[str, Any]) -> None:
        self.metrics = metrics


RESULTS = "results.pt"


@dataclass(frozen=True)
class Checkpoints:
    root: Path
    features: np.ndarray  # the raw rows [ROWS, WIDTH] the runs trained on
    runs: dict[str, dict[str, Any]]  # rank 0's results of each run (see checkpoints._run)

    def path(self, name: str) -> str:
        return str(self.runs[name]["checkpoint"])


def make_checkpoints(root: Path, names: tuple[str, ...] = tuple(RUNS)) -> Checkpoints:
    """The runs ``names`` of :data:`RUNS`, trained and saved under ``root`` (two gloo ranks)."""
    from tests.gloo import run_distributed

    features = write_features(root)
    run_distributed(write_checkpoints, str(root), names, world_size=2)
    return Checkpoints(root, features, torch.load(root / RESULTS, weights_only=True))


@dataclass(frozen=True)
class LoggedRun:
    tracking_uri: str
    run_id: str
    model_uri: str
    registered: str  # the registered model's name (version 1)


def log_fp32_run(checkpoints: Checkpoints, store: Path) -> LoggedRun:
    """The fp32 run's encoder, loaded from its checkpoint and logged as the trainer logs it,
    in a SQLite store under ``store``."""
    from dist_contrast.data import build_data
    from dist_contrast.serving import TrainedEncoder, load_encoder, log_encoder
    from dist_contrast.tracking import MlflowTracker, ensure_experiment

    uri = f"sqlite:///{store / 'mlflow.db'}"
    ensure_experiment(uri, "serving", store / "artifacts")
    tracker = MlflowTracker(uri, "serving", "fp32")
    loaded = load_encoder(checkpoints.path("fp32"))
    assert loaded.config is not None
    data = build_data(run_config(checkpoints.root, "fp32").data, seed=0)
    trained = TrainedEncoder(loaded.encoder, loaded.preprocessing, data.raw_example,
                             loaded.config)
    model_uri = log_encoder(trained, tracking_uri=uri, run_id=str(tracker.run_id),
                            registered_model_name="serving-encoder")
    return LoggedRun(uri, str(tracker.run_id), model_uri, "serving-encoder")


def write_checkpoints(root: str, names: tuple[str, ...] = tuple(RUNS)) -> None:
    """Every rank: each run of ``names``; rank 0 saves what the tests compare against (see
    ``_run``) into ``root/results.pt``. (A file, not the return value: tensors sent through a
    multiprocessing queue are shared memory that dies with the process.)"""
    from dist_contrast import dist

    os.environ["DS_ACCELERATOR"] = "cpu"
    os.environ["LOCAL_RANK"] = str(dist.rank())  # what a launcher would set
    results = {name: _run(root, name) for name in names}
    if dist.is_rank_zero():
        torch.save(results, Path(root) / RESULTS)


def _run(root: str, name: str) -> dict[str, Any]:
    """Train, save, and return: the checkpoint's path; the encoder's fp32 master weights read
    straight from DeepSpeed (``masters``); the weights the module computes with
    (``module_weights``, bf16 under bf16); what ``Worker.trained_encoder`` hands the reporter
    (``trained``); the fp32 engine's outputs on the held-out rows and those rows' numbers."""
    from dist_contrast import dist
    from dist_contrast.data import build_data, make_loader
    from dist_contrast.models import build_model
    from dist_contrast.tracking import NullTracker
    from dist_contrast.train import checkpoint, storage
    from dist_contrast.train.reporting import Reporter
    from dist_contrast.train.state import TrainProgress
    from dist_contrast.train.worker import Worker, build_engine, build_step

    cfg = run_config(root, name)
    torch.manual_seed(0)
    data = build_data(cfg.data, seed=0)
    encoder = build_model(cfg.model, data.input_shape)
    engine = build_engine(cfg, encoder)
    step = build_step(cfg, engine, data, encoder)
    loader = make_loader(data.train, batch_size=16, rank=dist.rank(), world_size=2, seed=0,
                         epoch=0, drop_last=True)
    for index, batch in zip(range(STEPS), loader, strict=False):
        step(batch, index)
    checkpoint.save_and_report(_RayTrainStub(), step, TrainProgress(STEPS), None, {}, cfg,
                               data.preprocessing)
    masters = _masters(engine)
    worker = Worker(cfg=cfg, data=data, step=step, progress=TrainProgress(STEPS),
                    reporter=Reporter(cfg=cfg, tracker=NullTracker(), active=False))
    trained = worker.trained_encoder()  # every rank: a collective under ZeRO 2
    engine.module.eval()
    with torch.no_grad():
        out = engine.module.encoder(data.eval_test[0])
    run_dir = storage.run_directory(cfg)
    return {
        "checkpoint": storage.join(run_dir, storage.checkpoint_name(STEPS)),
        "masters": masters,
        "module_weights": {k: p.detach().float().clone()
                           for k, p in engine.module.encoder.named_parameters()},
        "trained": None if trained is None else trained.encoder.state_dict(),
        "engine_out": out.float(),
        "test_ids": data.eval_test[1],
    }


def _masters(engine: Any) -> dict[str, torch.Tensor]:
    """The fp32 master weights as DeepSpeed holds them (independent of ``train.export``)."""
    from deepspeed.utils import safe_get_full_fp32_param

    params = list(engine.module.encoder.named_parameters())
    if engine.zero_optimization():  # ZeRO 1-2: gathered from every rank's partition
        return {k: safe_get_full_fp32_param(p).clone() for k, p in params}
    if engine.bfloat16_enabled():  # ZeRO 0 + bf16: the encoder is the first param group
        masters = engine.optimizer.fp32_groups[0]
        assert len(masters) == len(params)
        return {k: m.detach().clone() for (k, _), m in zip(params, masters, strict=True)}
    return {k: p.detach().clone() for k, p in params}
