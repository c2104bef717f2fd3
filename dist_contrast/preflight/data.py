"""The checks that need only the data's size, from the config or a file's header, before any
row is read: the batch against a worker's shard, and the model's size."""

from __future__ import annotations

import math

from dist_contrast.config import Config
from dist_contrast.errors import UserError
from dist_contrast.preflight.memory import count_parameters, human_bytes

# The largest encoder CPU workers are asked to train (parameters). Past it the optimiser and
# the gradient all-reduce alone take seconds a step on CPU, and every checkpoint is many GB:
# a 1,000,000-feature file under the default MLP (hidden_dim 256) makes 256M parameters.
MAX_CPU_PARAMETERS = 100_000_000


def _planned_shape(cfg: Config) -> tuple[int, tuple[int, ...]]:
    from dist_contrast.data import training_shape

    return training_shape(cfg.data)  # a DataError is a UserError: one line


def check_data_shape(cfg: Config, gpus: float | None = None) -> tuple[int, tuple[int, ...]]:
    """The checks that need only the data's size, made from the config or a file's header
    before any row is read (a wide file is refused in seconds, not after it is read whole):
    the batch against a worker's shard and, when ``gpus`` (this machine's or the cluster's)
    is known, the model's size on CPU workers. Returns the training rows and input shape."""
    rows, shape = _planned_shape(cfg)
    check_batch(cfg, rows)
    if gpus is not None:
        check_model_size(cfg, shape, cfg.trainer.trains_on_gpu(gpus))
    return rows, shape


def check_batch(cfg: Config, train_size: int) -> None:
    """Refuse (one line) a ``trainer.batch_size`` larger than a worker's shard.

    Each worker's epoch is ``train_size // trainer.num_workers`` rows (``ShardSampler``'s
    shard), so a larger batch would silently be the whole shard, every step.
    """
    workers, batch = cfg.trainer.num_workers, cfg.trainer.batch_size
    shard = train_size // workers
    rows = f"{train_size:,} training rows over trainer.num_workers={workers}"
    if shard < 2:  # the smallest batch a contrastive step takes (trainer.batch_size >= 2)
        raise UserError(
            f"{rows} leave {shard} row{'s' if shard != 1 else ''} per worker, too few for a "
            f"batch of 2; lower trainer.num_workers to {max(1, train_size // 2)} or less, or "
            "use more rows"
        )
    if batch > shard:
        raise UserError(
            f"trainer.batch_size={batch} is larger than a worker's shard ({rows} give "
            f"{shard:,} rows per worker), so every step would train on the whole shard; set "
            f"trainer.batch_size={shard} or less, or use fewer workers or more rows"
        )


def check_model_size(cfg: Config, input_shape: tuple[int, ...], on_gpu: bool) -> None:
    """Refuse (one line) a model too big to train on CPU workers, most often one whose first
    layer is as wide as a very wide data file (``model.hidden_dim`` weights per feature)."""
    if on_gpu:
        return
    params = count_parameters(cfg, input_shape)
    if params <= MAX_CPU_PARAMETERS:
        return
    width = math.prod(input_shape)
    first = width * cfg.model.hidden_dim if cfg.model.name == "mlp" else 0
    where = (f", {first:,} of them in the first layer ({width:,} input features × "
             f"model.hidden_dim={cfg.model.hidden_dim})" if first > params // 2 else "")
    raise UserError(
        f"the model would have {params:,} parameters{where}, more than the "
        f"{MAX_CPU_PARAMETERS:,} CPU workers can train in reasonable time (each step updates "
        f"and all-reduces them all, each checkpoint writes ~{human_bytes(16 * params)}); reduce "
        "the input features (e.g. PCA or feature selection), lower model.hidden_dim, or train on "
        "GPUs (trainer.use_gpu=true)"
    )
