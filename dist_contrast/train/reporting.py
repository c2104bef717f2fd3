"""Everything a run shows the outside world, and the one place that is gated on rank 0.

Every rank builds a :class:`Reporter`; on rank 0 it holds the MLflow tracker, the evaluator and
the run's channel to the driver, on the others a null tracker and nothing else, so its methods
are safe to call everywhere. Collectives never run in here: the trainer computes what needs every
rank before handing it over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from dist_contrast import dist
from dist_contrast.config import Config
from dist_contrast.tracking import Tracker
from dist_contrast.train import storage
from dist_contrast.train.evaluation import Evaluator, log_figure
from dist_contrast.train.evidence import PenaltySnapshots
from dist_contrast.train.model import TrainedEncoder, log_encoder
from dist_contrast.train.text_model import (
    TrainedTextEncoder,
    export_sentence_transformer_folders,
    log_text_encoder,
)

#: Logged at every step (batched); everything else once per ``trainer.log_every`` window.
EVERY_STEP = ("train/loss", "train/temperature", "train/lr", "train/skipped_steps")
#: Kept for the training-curves figure.
PLOTTED = ("train/loss", "train/temperature", "eval/knn_acc", "diag/penalty_entropy")


@dataclass
class MetricWindow:
    """Throughput and the miner's share of wall time since the last log step (each rank)."""

    started: float = field(default_factory=time.perf_counter)
    samples: int = 0
    miner_seconds: float | None = None

    def close(self, miner_seconds: float | None) -> dict[str, float]:
        """This window's rates; starts the next window."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rates = {"train/samples_per_s": self.samples / elapsed}
        if self.miner_seconds is not None:
            # Mining + index upkeep as a share of this rank's wall time since the last log.
            rates["miner/time_share"] = ((miner_seconds or 0.0) - self.miner_seconds) / elapsed
        self.started, self.samples, self.miner_seconds = time.perf_counter(), 0, miner_seconds
        return rates


@dataclass
class Reporter:
    """Metrics, evaluation, progress and figures of one run; active on rank 0 only."""

    cfg: Config
    tracker: Tracker
    evaluator: Evaluator | None = None
    channel: Any = None  # rank 0's progress updates to the driver (``put_nowait``)
    active: bool = field(default_factory=dist.is_rank_zero)
    last_metrics: dict[str, float] = field(default_factory=dict)
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    # Loss, τ and LR of every step since the last flush: logged every step, written in batches.
    pending: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    # After a restart, steps up to here are already in the run's history: a replayed step is
    # trained again but not logged twice.
    logged_through: int = 0

    def is_eval_step(self, step: int) -> bool:
        return step % self.cfg.eval.every_steps == 0 or step == self.cfg.trainer.max_steps

    def is_log_step(self, step: int) -> bool:
        return step % self.cfg.trainer.log_every == 0 or step == self.cfg.trainer.max_steps

    def start(self, model: nn.Module | None = None) -> None:
        """Where the run's history stops, and the raw-input baseline if the run has none yet
        (the driver has logged the params and the config); with ``eval.at_start`` a fresh run
        also evaluates ``model`` before its first step, at step 0."""
        if not self.active:
            return
        if self.cfg.tracking.system_metrics:
            # A daemon thread that also stops by itself once the driver ends the run, so a run
            # that fails before finish() leaves nothing behind.
            self.tracker.start_system_metrics()
        self.logged_through = self.tracker.last_step("train/loss") or 0
        if self.logged_through == 0:
            self._log_split_statistics()
        if self.evaluator is not None and not self.tracker.has_metric(
                self.evaluator.baseline_key):
            baseline = self.evaluator.raw_baseline()
            self.tracker.log_metrics(baseline, step=0)
            self.last_metrics.update(baseline)
        if (self.evaluator is not None and model is not None and self.cfg.eval.at_start
                and self.logged_through == 0):
            untrained = self.evaluator.evaluate(model, 0)
            self.tracker.log_metrics(untrained, step=0)
            self._remember(0, untrained)

    def step_done(self, step: int, metrics: dict[str, float], window: dict[str, float] | None,
                  model: nn.Module) -> None:
        """Record step ``step``: the every-step metrics always; on log steps (``window`` holds
        that window's rates) the whole row; on eval steps the evaluation. Each metric is
        written once per step."""
        if step <= self.logged_through:  # replayed after a restart: already in the history
            self.last_metrics.update(metrics)
            return
        evaluating = self.is_eval_step(step)
        if evaluating and self.active and self.evaluator is not None:
            metrics.update(self.evaluator.evaluate(model, step))
        if window is not None:
            metrics.update(window)
            self.pending.append((step, metrics))
            self.flush()
            self._send_progress(step, metrics)
        else:
            self.pending.append((step, {k: metrics[k] for k in EVERY_STEP}))
            if evaluating:
                self.tracker.log_metrics(
                    {k: v for k, v in metrics.items() if k.startswith(("eval/", "diag/"))}, step
                )
        if window is not None or evaluating:
            self._remember(step, metrics)
        self.last_metrics.update(metrics)

    def flush(self) -> None:
        """Write the batched every-step metrics (at log steps, and before a checkpoint, so the
        history is complete up to any step a restart resumes from)."""
        if self.pending:
            self.tracker.log_metric_history(self.pending)
            self.pending = []

    def _remember(self, step: int, metrics: dict[str, float]) -> None:
        """Keep the plotted series (rank 0's curves figure at the end)."""
        if not self.active:
            return
        for name in PLOTTED:
            series = self.history.setdefault(name, [])
            if name in metrics and (not series or series[-1][0] != step):
                series.append((step, metrics[name]))

    def _send_progress(self, step: int, metrics: dict[str, float]) -> None:
        if self.channel is None or not self.active:
            return
        update = {"step": step, "total": self.cfg.trainer.max_steps, **metrics}
        # Progress is best effort: a full or closed channel must not stop training.
        with contextlib.suppress(Exception):
            self.channel.put_nowait(update)

    def finish(self, trained: TrainedEncoder | TrainedTextEncoder | None = None,
               penalty: PenaltySnapshots | None = None) -> None:
        """The end-of-run figures (with ``penalty``, the relative penalty over training),
        summary and (given ``trained``) the encoder as the run's MLflow model; the run is
        marked FINISHED. (A run that stops otherwise is marked FAILED or KILLED by the driver,
        which sees why.)"""
        self.tracker.stop_system_metrics()  # training is over: sample no more, flush the rest
        if self.active:
            if self.evaluator is not None:
                self.evaluator.log_plots(self.tracker)
            self._log_curves()
            self._log_penalty(penalty)
            summary = {k: v for k, v in self.last_metrics.items() if not k.startswith("diag/")}
            self.tracker.log_text(json.dumps(summary, indent=2, sort_keys=True), "summary.json")
            if trained is not None:
                self._log_model(trained)
            if isinstance(trained, TrainedTextEncoder):
                self._export_sentence_transformers(trained)
        self.tracker.close("FINISHED")

    def _log_split_statistics(self) -> None:
        """The code-search pairs' ``stats.json`` (pairs and packages per side, the held-out
        packages, the split's rule) as the run's ``data/stats.json``."""
        data = self.cfg.data
        if data.params.get("build") != "pysource" or data.path is None:
            return
        stats = Path(str(data.path)).parent / "stats.json"
        if stats.is_file():
            self.tracker.log_artifact(stats, "data")

    def _export_sentence_transformers(self, trained: TrainedTextEncoder) -> None:
        """A transformer run's towers as sentence-transformers folders in its run folder
        (local run folders only). A failure is a warning and a run tag, as for the model."""
        folder = storage.run_directory(self.cfg)
        if "://" in folder or self.cfg.model.name != "transformer":
            return
        try:
            for path in export_sentence_transformer_folders(trained, Path(folder)):
                self.tracker.set_tags({f"dist_contrast.{path.name}": str(path)})
        except Exception as exc:
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
            logging.getLogger(__name__).warning(
                "no sentence-transformers folder was written (%s)", reason)
            self.tracker.set_tags({"dist_contrast.sentence_transformer_error": reason})

    def _log_model(self, trained: TrainedEncoder | TrainedTextEncoder) -> None:
        """``runs:/<run id>/encoder`` (and a new registry version with
        ``tracking.register_model``). A failure here is a warning and a run tag, not a failed
        run: training is done and its last checkpoint holds the same encoder."""
        tracking, run_id = self.cfg.tracking, self.tracker.run_id
        if run_id is None or tracking.tracking_uri is None:
            return
        try:
            if isinstance(trained, TrainedTextEncoder):
                log_text_encoder(trained, tracking_uri=tracking.tracking_uri, run_id=run_id,
                                 registered_model_name=tracking.register_model)
            else:
                log_encoder(trained, tracking_uri=tracking.tracking_uri, run_id=run_id,
                            output=tracking.model_output,
                            registered_model_name=tracking.register_model)
        except Exception as exc:
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
            logging.getLogger(__name__).warning(
                "the encoder was not logged as an MLflow model (%s); load it from the run's "
                "last checkpoint instead (dist-contrast embed CHECKPOINT ...)", reason)
            self.tracker.set_tags({"dist_contrast.model_error": reason})

    def _log_curves(self) -> None:
        from dist_contrast.plots import plot_curves

        series = {name: points for name, points in self.history.items() if points}
        if not series:
            return
        figure = plot_curves(series, title=str(self.cfg.experiment.run_name))
        log_figure(self.tracker, figure, "training_curves.png")

    def _log_penalty(self, penalty: PenaltySnapshots | None) -> None:
        from dist_contrast.plots import plot_relative_penalty

        snapshots = penalty.labelled() if penalty is not None else []
        if snapshots:
            log_figure(self.tracker, plot_relative_penalty(snapshots), "relative_penalty.png")
