"""The per-worker training loop: one DeepSpeed engine per Ray worker.

The trainer orders the step; nothing else does:

    query forward -> key forward (no grad; momentum encoder with shuffle-BN when configured)
    -> gather keys -> negatives -> loss -> engine.backward / engine.step
    -> momentum update -> pool update

Ray appears here only through ``ray.train`` (context, report, checkpoints); DeepSpeed only here.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dist_contrast import dist
from dist_contrast.analysis import training_diagnostics
from dist_contrast.config import Config
from dist_contrast.data import DataBundle, build_data, make_loader
from dist_contrast.losses import NormalizerEstimator, monte_carlo_normalizer
from dist_contrast.models import build_model
from dist_contrast.negatives import (
    MomentumEncoder,
    NegativePool,
    Negatives,
    build_momentum_encoder,
    build_negative_pool,
    check_zero_stage,
)
from dist_contrast.negatives.collective import (
    batch_shuffle,
    batch_unshuffle,
    collect_negatives,
    sharded_pool_lse,
)
from dist_contrast.objectives import ObjectiveInputs, compute_objective, loss_options
from dist_contrast.temperature import Temperature
from dist_contrast.tracking import Tracker, make_tracker
from dist_contrast.train.evaluation import Evaluator
from dist_contrast.train.state import (
    DEEPSPEED_TAG,
    TrainProgress,
    load_trainer_state,
    rng_state,
    save_trainer_state,
    set_rng_state,
)


class ContrastiveModel(nn.Module):
    """Encoder plus temperature: one module, so a learnable τ is optimised with the encoder."""

    def __init__(self, encoder: nn.Module, temperature: Temperature) -> None:
        super().__init__()
        self.encoder = encoder
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


def build_temperature(cfg: Config) -> Temperature:
    loss = cfg.loss
    return Temperature(
        loss.temperature,
        mode=loss.temperature_mode,
        final=loss.temperature_final,
        steps=cfg.trainer.max_steps,
        min_value=loss.temperature_min,
        max_value=loss.temperature_max,
    )


@dataclass
class Worker:
    """Everything one rank holds during training."""

    cfg: Config
    engine: Any
    data: DataBundle
    tracker: Tracker
    progress: TrainProgress
    momentum_encoder: MomentumEncoder | None
    pool: NegativePool | None
    evaluator: Evaluator | None
    normalizer: NormalizerEstimator = field(default_factory=NormalizerEstimator)
    progress_queue: Any = None
    last_metrics: dict[str, float] = field(default_factory=dict)
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    # Loss, τ and LR of every step since the last flush: logged every step, written in batches.
    pending: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    _epoch_length: int | None = None

    @property
    def rank(self) -> int:
        return dist.rank()

    @property
    def device(self) -> torch.device:
        return torch.device(self.engine.device)

    # ------------------------------------------------------------------ one step

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One optimiser step in the order the module docstring gives; returns its metrics."""
        ids = batch["index"].to(self.device)
        # Labels exist for evaluation; the pools see them only for their label-aware options.
        labels = batch["label"].to(self.device) if self.data.num_classes is not None else None
        query = self.engine(batch["view1"].to(self.device))  # [B, D], unit norm
        keys = self._global_keys(batch["view2"].to(self.device))  # [W·B, D]
        key_labels = dist.all_gather_no_grad(labels) if labels is not None else None
        positive_index = dist.rank() * len(ids) + torch.arange(len(ids), device=self.device)

        tau = self.engine.module.temperature(self.progress.step)
        negatives = collect_negatives(self.pool, query.detach(), ids, labels) if self.pool else None
        inputs = ObjectiveInputs(
            query=query, key=keys, positive_index=positive_index, dataset_size=len(self.data.train)
        )
        if self.cfg.loss.name == "supcon":  # supervised: same-label samples are positives
            inputs.labels, inputs.key_labels = labels, key_labels
        if negatives is not None:
            self._attach_negatives(inputs, negatives, query, ids, tau)
        loss = self._loss(inputs, tau, ids)
        diagnostics = self._diagnostics(query, keys, negatives, tau, labels, positive_index)

        self.engine.backward(loss)
        self.engine.step()
        self._update_pools(keys, ids, key_labels)
        self.progress.step += 1
        self.progress.samples_seen += len(ids) * dist.world_size()
        metrics = {
            "train/loss": float(loss.detach()),
            "train/temperature": float(tau.detach()),
            "train/lr": float(self.engine.get_lr()[0]),
            "train/negatives_per_query": self._negatives_per_query(keys, negatives),
            **(negatives.metrics if negatives is not None else {}),
            **diagnostics,
        }
        return metrics

    def _global_keys(self, view2: torch.Tensor) -> torch.Tensor:
        """Keys of the global batch: the local rows keep their graph; other ranks' rows send
        their gradient home in backward (see ``dist.all_gather_with_grad``)."""
        keys_local = self._key_forward(view2)
        if keys_local.requires_grad:
            return dist.all_gather_with_grad(keys_local)
        return dist.all_gather_no_grad(keys_local)

    def _loss(self, inputs: ObjectiveInputs, tau: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        loss = compute_objective(self.cfg.loss.name, inputs, tau, **self._loss_params())
        proximal = self.cfg.negatives.bank.proximal
        if proximal > 0 and self.pool is not None and self.pool.bank is not None:
            # InstDisc's proximal term, against the bank entries before this step's update.
            loss = loss + self.pool.bank.proximal_penalty(inputs.query, ids, proximal)
        return loss

    @torch.no_grad()
    def _update_pools(
        self, keys: torch.Tensor, ids: torch.Tensor, key_labels: torch.Tensor | None
    ) -> None:
        """After the optimiser step: momentum encoder first, then the pools take the keys."""
        if self.momentum_encoder is not None:
            self.momentum_encoder.update(self.engine.module.encoder)
        if self.pool is not None:
            gathered_ids = dist.all_gather_no_grad(ids)
            self.pool.update(keys.detach(), gathered_ids, key_labels, self.progress.step + 1)

    def _loss_params(self) -> dict[str, Any]:
        params: dict[str, Any] = dict(self.cfg.loss.params)
        options = loss_options(self.cfg.loss.name)
        if self.cfg.loss.tile_size is not None:
            params["tile_size"] = self.cfg.loss.tile_size
        if "in_batch" in options:
            # The other keys of the global batch are negatives only when 'batch' is a source.
            params["in_batch"] = "batch" in self.cfg.negatives.sources
        return params

    def _is_eval_step(self, step: int) -> bool:
        return step % self.cfg.eval.every_steps == 0 or step == self.cfg.trainer.max_steps

    def _diagnostics(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        negatives: Negatives | None,
        tau: torch.Tensor,
        labels: torch.Tensor | None,
        positive_index: torch.Tensor,
    ) -> dict[str, float]:
        """SCIENCE.md §2 on this step's batch (rank 0, eval steps): how τ spreads the penalty."""
        if not dist.is_rank_zero() or not self._is_eval_step(self.progress.step + 1):
            return {}
        pool = None
        if negatives is not None and negatives.pool is not None and not negatives.pool_is_sharded:
            pool = negatives.pool
        with torch.no_grad():
            values = training_diagnostics(
                query.detach(),
                keys.detach(),
                pool,
                tau.detach(),
                labels=labels,
                top_k=self.cfg.eval.penalty_top_k,
                positive_index=positive_index,
            )
        return {f"diag/{k}": v for k, v in values.items()}

    def _key_forward(self, view2: torch.Tensor) -> torch.Tensor:
        if self.momentum_encoder is None:
            return self.engine(view2)
        with torch.no_grad():
            if self.cfg.negatives.shuffle_bn:
                # Seeded by the step so a resumed run shuffles exactly as the original would.
                generator = torch.Generator().manual_seed(
                    self.cfg.experiment.seed * 1_000_003 + self.progress.step
                )
                shuffled, unshuffle_index = batch_shuffle(view2, generator)
                return batch_unshuffle(self.momentum_encoder(shuffled), unshuffle_index)
            return self.momentum_encoder(view2)

    def _attach_negatives(
        self,
        inputs: ObjectiveInputs,
        negatives: Negatives,
        query: torch.Tensor,
        ids: torch.Tensor,
        tau: torch.Tensor,
    ) -> None:
        if negatives.pool is not None and negatives.pool_is_sharded:
            inputs.negative_lse = sharded_pool_lse(
                query,
                negatives,
                ids,
                temperature=tau,
                tile_size=self.cfg.loss.tile_size,
                mask_same_instance=self.cfg.negatives.queue.mask_same_instance,
            )
        else:
            inputs.negatives = negatives.pool
            inputs.negative_mask = negatives.pool_mask
        inputs.query_negatives = negatives.query_negatives
        inputs.query_negative_mask = negatives.query_negative_mask
        inputs.noise = negatives.noise
        if negatives.noise is not None and self.cfg.loss.name.startswith("nce"):
            inputs.normalizer = self._normalizer(query, negatives.noise, tau)
            self._nce_positive(inputs, ids)

    def _nce_positive(self, inputs: ObjectiveInputs, ids: torch.Tensor) -> None:
        """InstDisc's datum is (f_i, v_i): the query against its own bank entry, a constant
        written on earlier visits (before this step's update). The other view's key only
        refreshes the bank after the step. A positive that is a current feature with gradient
        lets both views collapse onto one point that outruns the stale noise entries."""
        assert self.pool is not None and self.pool.bank is not None  # NCE requires the bank
        inputs.key = self.pool.bank.entries(ids).to(inputs.query.dtype)
        inputs.positive_index = torch.arange(len(ids), device=inputs.key.device)

    def _normalizer(self, query: torch.Tensor, noise: torch.Tensor, tau: torch.Tensor) -> float:
        """InstDisc's Z: a Monte-Carlo estimate averaged over ranks, kept constant until the
        next one (never, by default; see ``negatives.bank.normalizer_every``)."""
        step = self.progress.step
        if self.normalizer.is_due(step):  # the same on every rank: the collective is safe
            estimate = monte_carlo_normalizer(
                query.detach(), noise, temperature=tau.detach(), dataset_size=len(self.data.train)
            )
            mean = dist.all_reduce(torch.tensor([float(estimate)], dtype=torch.float64), "mean")
            self.normalizer.set(float(mean), step)
        assert self.normalizer.value is not None
        return self.normalizer.value

    def _negatives_per_query(self, keys: torch.Tensor, negatives: Negatives | None) -> float:
        if negatives is not None and "negatives/per_query" in negatives.metrics:
            return float(negatives.metrics["negatives/per_query"])
        return float(keys.shape[0] - 1) if "batch" in self.cfg.negatives.sources else 0.0

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict[str, float]:
        import ray.train

        cfg = self.cfg
        total = cfg.trainer.max_steps
        loader_epoch = -1
        batches: Any = iter(())
        window_start, window_samples = time.perf_counter(), 0
        window_miner = self._miner_seconds()
        while self.progress.step < total:
            epoch, offset = divmod(self.progress.step, self._steps_per_epoch())
            if epoch != loader_epoch:
                batches = self._epoch_batches(epoch, offset)
                loader_epoch = epoch
            batch = next(batches)
            metrics = self.train_step(batch)
            window_samples += batch["view1"].shape[0] * dist.world_size()
            step = self.progress.step

            self.pending.append((step, {k: metrics[k] for k in self.EVERY_STEP}))
            if step % cfg.trainer.log_every == 0 or step == total:
                elapsed = time.perf_counter() - window_start
                metrics["train/samples_per_s"] = window_samples / max(elapsed, 1e-9)
                if window_miner is not None:
                    # Mining + index upkeep as a share of this rank's wall time since the last log.
                    spent = (self._miner_seconds() or 0.0) - window_miner
                    metrics["miner/time_share"] = spent / max(elapsed, 1e-9)
                window_start, window_samples = time.perf_counter(), 0
                window_miner = self._miner_seconds()
                self.pending[-1] = (step, metrics)
                self.tracker.log_metric_history(self.pending)
                self.pending = []
                self._send_progress(step, metrics)
                self._remember(step, metrics)
            if self._is_eval_step(step):
                metrics.update(self._evaluate(step))
                self._remember(step, metrics)
                self.tracker.log_metrics(
                    {k: v for k, v in metrics.items() if k.startswith("diag/")}, step=step
                )
            self.last_metrics.update(metrics)
            if step % cfg.checkpoint.every_steps == 0 or step == total:
                self._checkpoint_and_report(ray.train, step)
        return self.last_metrics

    def _miner_seconds(self) -> float | None:
        """The miner's running total of seconds (None without a miner)."""
        miner = self.pool.miner if self.pool is not None else None
        return miner.total_seconds if miner is not None else None

    def _loader(self, epoch: int, skip_batches: int = 0) -> Any:
        return make_loader(
            self.data.train,
            batch_size=self.cfg.trainer.batch_size,
            rank=dist.rank(),
            world_size=dist.world_size(),
            seed=self.cfg.experiment.seed,
            epoch=epoch,
            # A batch of one breaks BatchNorm in training; otherwise keep the short batch.
            drop_last=self.cfg.model.batch_norm,
            skip_batches=skip_batches,
        )

    def _steps_per_epoch(self) -> int:
        if self._epoch_length is None:
            self._epoch_length = len(self._loader(epoch=0))
            if self._epoch_length == 0:
                from dist_contrast.errors import UserError

                raise UserError(
                    f"trainer.batch_size={self.cfg.trainer.batch_size} leaves no full batch on "
                    f"{dist.world_size()} workers for {len(self.data.train)} training rows; "
                    "lower it"
                )
        return self._epoch_length

    def _epoch_batches(self, epoch: int, offset: int) -> Any:
        # Resume mid-epoch: the loader skips what was already trained on, without loading it.
        return iter(self._loader(epoch, skip_batches=offset))

    EVERY_STEP = ("train/loss", "train/temperature", "train/lr")
    PLOTTED = ("train/loss", "train/temperature", "eval/knn_acc", "diag/penalty_entropy")

    def _remember(self, step: int, metrics: dict[str, float]) -> None:
        """Keep the plotted series (rank 0's curves figure at the end)."""
        for name in self.PLOTTED:
            series = self.history.setdefault(name, [])
            if name in metrics and (not series or series[-1][0] != step):
                series.append((step, metrics[name]))

    def log_curves(self) -> None:
        from dist_contrast.plots import plot_curves

        series = {name: points for name, points in self.history.items() if points}
        if not series or not dist.is_rank_zero():
            return
        figure = plot_curves(series, title=str(self.cfg.experiment.run_name))
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "training_curves.png")
            figure.savefig(path, dpi=110, bbox_inches="tight")
            self.tracker.log_artifact(path, "plots")
        import matplotlib.pyplot as plt

        plt.close(figure)

    def _send_progress(self, step: int, metrics: dict[str, float]) -> None:
        if self.progress_queue is None or not dist.is_rank_zero():
            return
        update = {"step": step, "total": self.cfg.trainer.max_steps, **metrics}
        # Progress is best effort: a full or closed queue must not stop training.
        with contextlib.suppress(Exception):
            self.progress_queue.put_nowait(update)

    def _evaluate(self, step: int) -> dict[str, float]:
        if self.evaluator is None:  # only rank 0 evaluates; others continue to the next step
            return {}
        results = self.evaluator.evaluate(self.engine.module, step)
        self.tracker.log_metrics(results, step=step)
        return results

    # ------------------------------------------------------------------ checkpoints

    def trainer_state(self) -> dict[str, Any]:
        return {
            "progress": self.progress.state_dict(),
            "momentum_encoder": self.momentum_encoder.state_dict()
            if self.momentum_encoder
            else None,
            "negatives": self.pool.state_dict() if self.pool is not None else None,
            "normalizer": self.normalizer.state_dict(),
            "rng": rng_state(),
            "mlflow_run_id": self.tracker.run_id,
        }

    def load_trainer_state(self, state: dict[str, Any]) -> None:
        self.progress.load_state_dict(state["progress"])
        if self.momentum_encoder is not None and state.get("momentum_encoder") is not None:
            self.momentum_encoder.load_state_dict(state["momentum_encoder"])
        if self.pool is not None and state.get("negatives") is not None:
            self.pool.load_state_dict(state["negatives"])
        if state.get("normalizer") is not None:
            self.normalizer.load_state_dict(state["normalizer"])
        set_rng_state(state["rng"])

    def _checkpoint_and_report(self, train: Any, step: int) -> None:
        """Every rank saves (DeepSpeed + trainer state), then every rank reports the same call."""
        report = {k: v for k, v in self.last_metrics.items()}
        report["step"] = step
        with tempfile.TemporaryDirectory() as directory:
            self.engine.save_checkpoint(directory, tag=DEEPSPEED_TAG)
            save_trainer_state(directory, dist.rank(), self.trainer_state())
            dist.barrier()
            checkpoint = train.Checkpoint.from_directory(directory)
            train.report(report, checkpoint=checkpoint)


def restore(worker: Worker, directory: str, state: dict[str, Any]) -> None:
    """DeepSpeed's state from ``directory``, then the trainer state already read from it."""
    load_path, _ = worker.engine.load_checkpoint(directory, tag=DEEPSPEED_TAG)
    if load_path is None:
        from dist_contrast.errors import UserError

        raise UserError(
            f"checkpoint '{directory}' has no DeepSpeed state; "
            "resume from a checkpoint this tool wrote or start a fresh run"
        )
    worker.load_trainer_state(state)


def build_worker(cfg: Config, progress_queue: Any = None, run_id: str | None = None) -> Worker:
    import deepspeed

    from dist_contrast.train.deepspeed_config import build_deepspeed_config

    torch.manual_seed(cfg.experiment.seed)
    data = build_data(cfg.data, seed=cfg.experiment.seed)
    encoder = build_model(cfg.model, data.input_shape)
    model = ContrastiveModel(encoder, build_temperature(cfg))
    # τ gets no weight decay: decaying log τ would drag the temperature towards 1.
    encoder_params = [p for p in encoder.parameters() if p.requires_grad]
    temperature_params = [p for p in model.temperature.parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": encoder_params}]
    if temperature_params:
        groups.append({"params": temperature_params, "weight_decay": 0.0})
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=groups,
        config=build_deepspeed_config(cfg, dist.world_size()),
    )
    device = torch.device(engine.device)
    if cfg.deepspeed.precision == "bf16":
        # DeepSpeed casts parameters but not buffers: BatchNorm's running statistics would
        # stay float32 and clash with bf16 weights. Parameters are bf16 already, so this
        # converts only the buffers and leaves DeepSpeed's flat parameter storage alone.
        engine.module.to(torch.bfloat16)
    check_zero_stage(cfg.deepspeed.zero_stage)
    momentum_encoder = build_momentum_encoder(cfg.negatives, encoder)
    if momentum_encoder is not None:
        momentum_encoder = momentum_encoder.to(device)
    pool = None
    if set(cfg.negatives.sources) - {"batch"}:
        pool = build_negative_pool(
            cfg.negatives,
            dataset_size=len(data.train),
            dim=cfg.model.embedding_dim,
            rank=dist.rank(),
            world_size=dist.world_size(),
            device=device,
            seed=cfg.experiment.seed,
            nce_noise=cfg.loss.name.startswith("nce"),
        )
    tracker = make_tracker(
        dist.is_rank_zero(),
        tracking_uri=str(cfg.tracking.tracking_uri),
        experiment=cfg.tracking.experiment,
        run_name=str(cfg.experiment.run_name),
        run_id=run_id,
    )
    evaluator = Evaluator(cfg, data, device) if dist.is_rank_zero() else None
    return Worker(
        cfg=cfg,
        engine=engine,
        data=data,
        tracker=tracker,
        progress=TrainProgress(),
        momentum_encoder=momentum_encoder,
        pool=pool,
        evaluator=evaluator,
        normalizer=NormalizerEstimator(cfg.negatives.bank.normalizer_every),
        progress_queue=progress_queue,
    )


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Entry point that ``ray.train.torch.TorchTrainer`` runs on every worker."""
    import ray.train

    cfg = Config.model_validate(loop_config["config"])
    torch.set_num_threads(cfg.trainer.threads_per_worker)
    os.environ.setdefault("OMP_NUM_THREADS", str(cfg.trainer.threads_per_worker))
    _quiet_deepspeed()

    # A restart within this run (or a re-run with the same name and storage path) gets Ray's
    # latest checkpoint; otherwise trainer.resume_from names one to start from.
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and loop_config.get("resume_from"):
        checkpoint = ray.train.Checkpoint(loop_config["resume_from"])
    queue = loop_config.get("progress_queue")
    if checkpoint is not None:
        # One download and one read of the trainer state (it holds the pools, e.g. a bank of
        # every instance's key): the MLflow run id and the restore both come from it.
        with checkpoint.as_directory() as directory:
            state = load_trainer_state(directory, dist.rank())
            run_id = state.get("mlflow_run_id")
            worker = build_worker(cfg, queue, run_id=str(run_id) if run_id else None)
            restore(worker, directory, state)
    else:
        worker = build_worker(cfg, queue)
    if checkpoint is None and dist.is_rank_zero():
        worker.tracker.log_params(loop_config["params"])
        worker.tracker.log_text(loop_config["config_yaml"], "config.yaml")
        worker.tracker.set_tags({"dist_contrast.world_size": str(dist.world_size())})
        if worker.evaluator is not None:
            baseline = worker.evaluator.raw_baseline()
            worker.tracker.log_metrics(baseline, step=0)
            worker.last_metrics.update(baseline)
    try:
        worker.run()
        if worker.evaluator is not None:
            worker.evaluator.log_plots(worker.tracker)
        worker.log_curves()
        summary = {k: v for k, v in worker.last_metrics.items() if not k.startswith("diag/")}
        worker.tracker.log_text(json.dumps(summary, indent=2, sort_keys=True), "summary.json")
        worker.tracker.close("FINISHED")
    except BaseException:
        worker.tracker.close("FAILED")
        raise


def _quiet_deepspeed() -> None:
    import logging

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    logging.getLogger("deepspeed").setLevel(logging.WARNING)
