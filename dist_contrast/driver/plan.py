"""The run's plan: everything the driver decides before anything starts, computed once.

:func:`make_plan` resolves the config (run name, tracking URI, every path against the caller's
working directory), checks what can be checked on the driver in seconds (the output folder, the
data, the batch against a worker's shard, the objective against the data, this machine's
resources, the checkpoint to resume), and returns a :class:`RunPlan` that everything after it
reads: the driver's runtime, the MLflow run, the trainer and the sweep. A mistake raises
:class:`~dist_contrast.errors.UserError` (one line) and leaves nothing behind.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from dist_contrast.config import Config
from dist_contrast.errors import UserError
from dist_contrast.paths import is_uri, resolve_paths
from dist_contrast.tracking import TrainingData, default_run_name, default_tracking_uri
from dist_contrast.train import storage


@dataclass(frozen=True)
class DataSummary:
    """What the driver learnt of the training data: its size and shape (for the resource and
    checkpoint checks), its classes and dtype, and its provenance as MLflow records it."""

    train_size: int
    input_shape: tuple[int, ...]
    num_classes: int | None
    feature_dtype: str
    provenance: TrainingData


@dataclass(frozen=True)
class RunPlan:
    """One run, decided: read by the runtime, the MLflow run, the trainer and the sweep."""

    config: Config  # resolved: run name, tracking URI, absolute local paths
    run_dir: str  # <experiment.output_dir>/<run_name>
    continues: bool  # the run folder exists: the run goes on (same MLflow run, its checkpoints)
    resume_source: str | None  # the checkpoint the workers start from (None: from scratch)
    data: DataSummary
    notes: list[str] = field(default_factory=list)

    @property
    def tracking_uri(self) -> str:
        return str(self.config.tracking.tracking_uri)

    @property
    def run_name(self) -> str:
        return str(self.config.experiment.run_name)

    def tags(self) -> dict[str, str]:
        """The MLflow run's tags: the world size, and where a resumed run came from."""
        tags = {"dist_contrast.world_size": str(self.config.trainer.num_workers)}
        resume = self.config.trainer.resume_from
        if resume is not None:
            # A resumed run is a new MLflow run that says where it came from.
            tags["dist_contrast.resumed_from_checkpoint"] = resume
            meta = storage.read_meta(resume)
            if meta and meta.get("mlflow_run_id"):
                tags["dist_contrast.resumed_from_run"] = str(meta["mlflow_run_id"])
        return tags


def resolve(cfg: Config, cwd: str | Path | None = None) -> Config:
    """Fill what depends on where we run: the run name, the tracking URI, and every path the
    config names made absolute against ``cwd`` (default: the working directory)."""
    cfg = resolve_paths(cfg, cwd)
    run_name = cfg.experiment.run_name or default_run_name(cfg.experiment.name)
    tracking_uri = cfg.tracking.tracking_uri or default_tracking_uri(cwd)
    return cfg.model_copy(update={
        "experiment": cfg.experiment.model_copy(update={"run_name": run_name}),
        "tracking": cfg.tracking.model_copy(update={"tracking_uri": tracking_uri}),
    })


def make_plan(cfg: Config, *, local: bool) -> RunPlan:
    """Resolve ``cfg`` and check it on the driver; ``local``: the run starts its own Ray
    runtime on this machine (then this machine's CPUs and memory are checked too)."""
    from dist_contrast import preflight as checks

    cfg = resolve(cfg)
    check_output_dir(cfg.experiment.output_dir)
    cpus, gpus, memory = checks.local_resources()
    # The batch against a shard, and the model's size, from the data's header: no row read.
    checks.check_data_shape(cfg, gpus if local else None)
    data = summarize_data(cfg)
    check_objective_data(cfg, data)
    notes = checks.config_notes(cfg)
    if local:
        notes += checks.check_resources(cfg, cpus=cpus, gpus=gpus, memory_bytes=memory,
                                        local=True, train_size=data.train_size,
                                        input_shape=data.input_shape)
    run_dir = storage.run_directory(cfg)
    source = storage.resume_source(run_dir, cfg.trainer.resume_from)
    if source is not None:
        notes += checks.check_checkpoint(source, cfg, data.input_shape,
                                         train_size=data.train_size)
    notes += _resume_notes(cfg, source)
    return RunPlan(cfg, run_dir, storage.exists(run_dir), source, data, notes)


def summarize_data(cfg: Config) -> DataSummary:
    """Build the data as a worker will (a user mistake: one line) and summarise it."""
    from dist_contrast.data import DataError, build_data, validate_data

    try:
        # A dataset that checks its rows as a stream (text pairs) is never held here.
        checked = validate_data(cfg.data, seed=cfg.experiment.seed)
        if checked is not None:
            check_feature_sides(cfg, checked.feature_widths)
            size, shape, dtype, classes = checked.rows, tuple(checked.input_shape), "float32", None
        else:
            bundle = build_data(cfg.data, seed=cfg.experiment.seed)
            size, shape = len(bundle.train), tuple(bundle.input_shape)
            dtype = str(bundle.eval_train[0].dtype).removeprefix("torch.")
            classes = bundle.num_classes
    except DataError as exc:
        raise UserError(str(exc)) from None
    return DataSummary(size, shape, classes, dtype,
                       _training_data(cfg, size, shape, dtype, classes))


def check_feature_sides(cfg: Config, widths: dict[str, int]) -> None:
    """The model's sides take what the data's sides hold: text, or feature rows of the width
    ``model.<side>_features`` names (``widths``: the data's sides of feature rows)."""
    for side in ("query", "document"):
        wanted, found = getattr(cfg.model, f"{side}_features", None), widths.get(side)
        if wanted == found:
            continue
        if found is None:
            raise UserError(f"model.{side}_features={wanted}, but the {side} side of "
                            f"data.path is text; drop model.{side}_features")
        fix = f"set model.{side}_features={found}" + (
            " and model.towers=separate" if cfg.model.towers == "shared" else "")
        held = "" if wanted is None else f", not model.{side}_features={wanted}"
        raise UserError(f"the {side} side of data.path holds feature rows of {found} "
                        f"numbers{held}; {fix}")


def check_objective_data(cfg: Config, data: DataSummary) -> None:
    """A supervised objective needs labelled data: refuse it on data without labels. Each
    configured negative source's settings against the training rows."""
    from dist_contrast.objectives import get_objective

    problem = cfg.negatives.data_problem(data.train_size)
    if problem is not None:
        raise UserError(problem)

    if get_objective(cfg.loss.name).needs_labels and data.num_classes is None:
        raise UserError(
            f"loss.name={cfg.loss.name} is supervised and needs labels, but the data has none; "
            "give labels (data.labels_path for .npy, data.label_column for .parquet) or choose "
            "a self-supervised loss such as loss.name=info_nce"
        )


def check_output_dir(output_dir: str) -> None:
    """``experiment.output_dir`` can hold the run's folder: an existing folder we can write
    in, or a path whose nearest existing parent is one. Nothing is created (a probe folder is
    made and removed). URIs are left to the storage layer."""
    if is_uri(output_dir):
        return
    path = Path(output_dir)
    key = f"experiment.output_dir={output_dir}"
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file" if existing == path else f"is below a file ({existing})"
        raise UserError(f"{key} {what}, not a folder; set experiment.output_dir to a folder "
                        "(it is created if missing)")
    try:
        probe = tempfile.mkdtemp(prefix=".dist-contrast-probe-", dir=existing)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            reason = f"{reason}: cannot create folders in {existing}"
        raise UserError(f"{key} cannot be used ({reason}); set experiment.output_dir to a "
                        "folder you can write to") from None
    shutil.rmtree(probe, ignore_errors=True)


def _resume_notes(cfg: Config, source: str | None) -> list[str]:
    """What a continued or resumed run changes that the user may not expect."""
    meta = storage.read_meta(source) if source is not None else None
    if not meta or meta.get("max_steps") in (None, cfg.trainer.max_steps):
        return []
    if cfg.optimizer.schedule != "cosine":  # a constant schedule does not depend on the length
        return []
    return [
        f"trainer.max_steps changed from {meta['max_steps']} to {cfg.trainer.max_steps} since "
        f"the checkpoint at step {meta['step']}: the learning rate goes on from its value there "
        "along a cosine to the new end (no jump)"
    ]


def _training_data(cfg: Config, rows: int, shape: tuple[int, ...], dtype: str,
                   num_classes: int | None) -> TrainingData:
    """The training data as the MLflow run records it: the file (digest of its bytes), or the
    generator with its seed, size and settings (digest of those)."""
    from dist_contrast.data import provenance

    source = provenance(cfg.data, cfg.experiment.seed)  # the dataset's own declaration
    if source.path is not None:
        return TrainingData.from_file(
            source.path, rows=rows, feature_shape=shape, dtype=dtype,
            labels_path=source.labels_path, label_column=source.label_column,
        )
    generator = source.generator
    label = "label" if num_classes is not None else None
    return TrainingData.generated(cfg.data.name, generator, rows=rows, feature_shape=shape,
                                  dtype=dtype, label=label)
