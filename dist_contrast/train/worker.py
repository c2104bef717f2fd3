"""One rank's training run: build the DeepSpeed engine and the pools, then loop over steps.

The pieces, each in its own module: the step's order (:mod:`~dist_contrast.train.step`), what
the run reports and the rank-0 gate (:mod:`~dist_contrast.train.reporting`), checkpoints
(:mod:`~dist_contrast.train.checkpoint`) and the Ray entry point
(:mod:`~dist_contrast.train.entry`). DeepSpeed is initialised here and nowhere else.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dist_contrast import dist
from dist_contrast.config import Config
from dist_contrast.data import DataBundle, build_data, make_loader
from dist_contrast.errors import RunFailed, UserError
from dist_contrast.losses import NormalizerEstimator
from dist_contrast.models import ContrastiveEncoder, build_model
from dist_contrast.models.build import fit_featurizer
from dist_contrast.negatives import build_momentum_encoder, build_negative_pool
from dist_contrast.objectives import get_objective
from dist_contrast.temperature import Temperature
from dist_contrast.timing import mark
from dist_contrast.tracking import make_tracker
from dist_contrast.train import checkpoint, export, storage
from dist_contrast.train.evaluation import Evaluator
from dist_contrast.train.model import TrainedEncoder
from dist_contrast.train.remining import build_corpus_miner
from dist_contrast.train.reporting import MetricWindow, Reporter
from dist_contrast.train.state import TrainProgress
from dist_contrast.train.step import TrainStep
from dist_contrast.train.text_model import TrainedTextEncoder, build_text_encoder


class ContrastiveModel(nn.Module):
    """Encoder plus temperature: one module, so a learnable τ is optimised with the encoder."""

    def __init__(self, encoder: nn.Module, temperature: Temperature) -> None:
        super().__init__()
        self.encoder = encoder
        self.temperature = temperature

    def forward(self, x: Any, side: str = "query") -> torch.Tensor:
        """The ``side`` tower's embedding of ``x`` (a batch of rows, or of texts)."""
        return self.encoder(x, side=side)


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
    data: DataBundle
    step: TrainStep
    reporter: Reporter
    progress: TrainProgress

    def run(self, train: Any, should_stop: Callable[[], bool] = lambda: False) -> bool:
        """Train until ``trainer.max_steps``; ``train`` is ``ray.train`` (report, checkpoints).

        ``should_stop`` is asked before every step (on rank 0; the ranks agree in the step's
        own all-reduce): when it says so, the run saves a checkpoint after that step and
        returns False. Returns True when every step is done.
        Raises ``UserError`` after ``trainer.max_bad_steps`` non-finite steps in a row."""
        cfg, reporter = self.cfg, self.reporter
        total = cfg.trainer.max_steps
        loader_epoch = -1
        batches: Any = iter(())
        window = MetricWindow(miner_seconds=self._miner_seconds())
        saved_at = self.progress.step
        while self.progress.step < total:
            epoch, offset = divmod(self.progress.step, self.steps_per_epoch)
            if epoch != loader_epoch:
                # Resume mid-epoch: the loader skips what was already trained on, unloaded.
                batches, loader_epoch = iter(self._loader(epoch, offset)), epoch
            batch = next(batches)
            corpus = self.step.corpus
            if corpus is not None:  # negatives.corpus: the table's negatives, swapped in here
                corpus.before_step(self.progress.step,
                                   lambda: export.master_state_dict(self.step.engine))
                batch["negatives"] = corpus.negatives(batch["index"], self.progress.step)
            diagnose = reporter.active and reporter.is_eval_step(self.progress.step + 1)
            stop = dist.is_rank_zero() and should_stop()
            metrics = self.step(batch, self.progress.step, diagnose=diagnose, stop=stop)
            if corpus is not None:
                metrics.update(corpus.metrics(self.progress.step))
            self.progress.step += 1
            step = self.progress.step
            if step == 1:
                mark("first_step")
            window.samples += len(batch["index"]) * dist.world_size()
            rates = window.close(self._miner_seconds()) if reporter.is_log_step(step) else None
            reporter.step_done(step, metrics, rates, self.step.engine.module)
            if self.step.bad_in_a_row >= cfg.trainer.max_bad_steps:
                raise self._too_many_bad_steps()
            if step % cfg.checkpoint.every_steps == 0 or step == total:
                self._save(train)
                saved_at = step
            if self.step.stop_agreed:
                if saved_at != step:
                    self._save(train)
                return False
        mark("last_step")
        return True

    def _save(self, train: Any) -> None:
        self.reporter.flush()
        checkpoint.save_and_report(train, self.step, self.progress, self.reporter.tracker.run_id,
                                   self.reporter.last_metrics, self.cfg, self.data.preprocessing)

    def trained_encoder(self) -> TrainedEncoder | TrainedTextEncoder | None:
        """The query encoder to log as the run's MLflow model: float32 with the optimiser's
        master weights, in eval mode, on the CPU (rank 0; None elsewhere, or without
        ``tracking.log_model``); a text run's both towers with their featurizer. Every rank
        must call it: under ZeRO 1-2 it gathers."""
        if not self.cfg.tracking.log_model:
            return None
        state = export.master_state_dict(self.step.engine)
        if not dist.is_rank_zero():
            return None
        if self.cfg.model.is_text:
            return TrainedTextEncoder(build_text_encoder(self.cfg, state), self.cfg)
        with torch.random.fork_rng(devices=[]):  # a fresh copy must not move the run's RNG
            encoder = build_model(self.cfg.model, self.data.input_shape)
        assert isinstance(encoder, ContrastiveEncoder)  # text encoders returned None above
        encoder.load_state_dict(state)
        return TrainedEncoder(encoder.eval(), self.data.preprocessing, self.data.raw_example,
                              self.cfg)

    def _too_many_bad_steps(self) -> RunFailed:
        cfg, step = self.cfg, self.progress.step
        first = step - self.step.bad_in_a_row + 1
        kept = storage.newest_complete(
            storage.run_directory(cfg)
        )
        where = f"the last good checkpoint is {kept.path}" if kept else "no checkpoint was saved"
        return RunFailed(
            f"steps {first}-{step} had a non-finite loss or gradient ({self.step.bad_in_a_row} "
            f"in a row, trainer.max_bad_steps={cfg.trainer.max_bad_steps}); stopped, {where}; "
            "lower optimizer.lr, keep deepspeed.gradient_clipping > 0 or check the inputs "
            "(data.standardize)"
        )

    def _miner_seconds(self) -> float | None:
        """The miner's running total of seconds (None without a miner)."""
        pool = self.step.pool
        return pool.seconds() if pool is not None else None

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

    @functools.cached_property
    def steps_per_epoch(self) -> int:
        length = len(self._loader(epoch=0))
        if length == 0:
            raise UserError(
                f"trainer.batch_size={self.cfg.trainer.batch_size} leaves no full batch on "
                f"{dist.world_size()} workers for {len(self.data.train)} training rows; "
                "lower it"
            )
        return length


def build_engine(cfg: Config, encoder: nn.Module) -> Any:
    """The DeepSpeed engine over encoder + τ (τ gets no weight decay)."""
    import deepspeed

    from dist_contrast.train.deepspeed_config import build_deepspeed_config, skip_shm_comm_op
    from dist_contrast.train.schedule import ResumableCosineLR

    model = ContrastiveModel(encoder, build_temperature(cfg))
    # Decaying log τ would drag the temperature towards 1.
    encoder_params = [p for p in encoder.parameters() if p.requires_grad]
    temperature_params = [p for p in model.temperature.parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": encoder_params}]
    if temperature_params:
        groups.append({"params": temperature_params, "weight_decay": 0.0})
    config = build_deepspeed_config(cfg, dist.world_size())
    lr_scheduler = None
    if config["scheduler"]["type"] == "WarmupCosineLR":
        # The same schedule, continuous when a resume changes trainer.max_steps.
        params = config.pop("scheduler")["params"]
        lr_scheduler = functools.partial(ResumableCosineLR, **params)
    skip_shm_comm_op()
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=groups, config=config, lr_scheduler=lr_scheduler
    )
    if cfg.deepspeed.precision == "bf16":
        # DeepSpeed casts parameters but not buffers: BatchNorm's running statistics would
        # stay float32 and clash with bf16 weights. Parameters are bf16 already, so this
        # converts only the buffers and leaves DeepSpeed's flat parameter storage alone.
        engine.module.to(torch.bfloat16)
    return engine


def build_step(cfg: Config, engine: Any, data: DataBundle, encoder: nn.Module) -> TrainStep:
    """The step with the pools and momentum encoder the config asks for, on the engine's
    device."""
    device = torch.device(engine.device)
    momentum_encoder = build_momentum_encoder(cfg.negatives, encoder)
    if momentum_encoder is not None:
        momentum_encoder = momentum_encoder.to(device)
    pool = None
    if cfg.negatives.stateful:
        pool = build_negative_pool(
            cfg.negatives,
            dataset_size=len(data.train),
            dim=cfg.model.embedding_dim,
            rank=dist.rank(),
            world_size=dist.world_size(),
            device=device,
            seed=cfg.experiment.seed,
            nce_noise=get_objective(cfg.loss.name).needs_noise,
        )
    return TrainStep(
        cfg=cfg,
        engine=engine,
        momentum_encoder=momentum_encoder,
        pool=pool,
        dataset_size=len(data.train),
        has_labels=data.num_classes is not None,
        normalizer=NormalizerEstimator(pool.normalizer_every if pool is not None else 0),
    )


def build_worker(cfg: Config, channel: Any = None, run_id: str | None = None) -> Worker:
    """Data, model, DeepSpeed engine, pools and the (rank-0) tracker of one rank; ``channel``
    takes rank 0's progress updates (``put_nowait``; None: none are sent)."""
    torch.manual_seed(cfg.experiment.seed)
    data = build_data(cfg.data, seed=cfg.experiment.seed, rank=dist.rank(),
                      world_size=dist.world_size())
    mark("data")
    encoder = build_model(cfg.model, data.input_shape)
    texts = getattr(data.train, "texts", None)
    if texts is not None:  # a text encoder's vocabulary, from the training text
        fit_featurizer(encoder, cfg.model, texts())
        mark("featurizer")
    engine = build_engine(cfg, encoder)
    mark("deepspeed")
    step = build_step(cfg, engine, data, encoder)
    step.corpus = build_corpus_miner(cfg, data.train)
    mark("pools")
    rank_zero = dist.is_rank_zero()
    tracker = make_tracker(
        rank_zero,
        tracking_uri=str(cfg.tracking.tracking_uri),
        experiment=cfg.tracking.experiment,
        run_name=str(cfg.experiment.run_name),
        run_id=run_id,
    )
    reporter = Reporter(
        cfg=cfg,
        tracker=tracker,
        evaluator=Evaluator(cfg, data, step.device) if rank_zero else None,
        channel=channel,
        active=rank_zero,
    )
    return Worker(cfg=cfg, data=data, step=step, reporter=reporter, progress=TrainProgress())

