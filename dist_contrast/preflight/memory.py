"""One worker's memory, estimated before anything starts.

The memory estimate (per worker, bytes; W workers, D = ``model.embedding_dim``, P = the
encoder's parameters, n = training rows, B = ``trainer.batch_size``):

=====================  ==========================================================================
worker process         :data:`WORKER_BASE_BYTES`
model                  P × (4 weights + 4 grads [/W at ZeRO 2] + 8 Adam m, v [/W at ZeRO ≥ 1]
                       + 2 bf16 copy [bf16] + 4 momentum encoder [if any])
queue                  K × (4·D + 8 id) bytes, K = ``queue.size`` (⌈K/W⌉ rows when sharded)
memory bank            n × (4·D + 8 label + 8 write step)
miner                  keys × (:func:`index_bytes_per_key` + 4·D rebuild copy + 9 bookkeeping),
                       keys = n (⌈n/W⌉ when ``miner.layout=sharded``)
per-step negatives     B × D × 4 × (m noise samples [NCE] + M mined negatives [mined])
file data              2 × n × input features × 4 (the loaded array and the training split)
checkpoint copy        queue + bank again: ``state_dict`` clones the pools when a checkpoint is
                       saved, and a resume holds the loaded state beside the new pools
=====================  ==========================================================================

Not counted: activations of the encoder and the loss (bounded by ``loss.tile_size``), and the
bank as a pool (``bank.as_pool``: [B, n] logits). Locally :data:`LOCAL_RAY_BYTES` is added
once for Ray's own processes. With GPUs the model, pools and per-step negatives live in GPU
memory, which is not checked here.
"""

from __future__ import annotations

import math

import torch

from dist_contrast.config import Config
from dist_contrast.models import build_model
from dist_contrast.negatives.registry import (
    MemoryContext,
    MemoryTerm,
    source_names,
    source_spec,
)

MiB = 1 << 20


# One idle training worker: Python, torch, DeepSpeed's CPU engine, Ray's worker runtime and the
# data pipeline. Measured on the 2-core machine of the README (torch 2.13 CPU, DeepSpeed 0.19,
# Ray 2.60) as proportional set size (shared library pages split between the processes that
# map them): a plain process with DeepSpeed's engine for configs/synthetic.yaml 572 MiB (RSS
# 720 MiB); each ray::RayTrainWorker of a 2-worker synthetic.yaml run 512-576 MiB (RSS
# 778-846 MiB).
WORKER_BASE_BYTES = 600 * MiB


# Ray's own processes of a local run (raylet, GCS, dashboard and runtime-env agents, the train
# controller and its helper actors): 1.5 GiB proportional set size in the same run.
LOCAL_RAY_BYTES = 1536 * MiB


def count_parameters(cfg: Config, input_shape: tuple[int, ...]) -> int:
    """The encoder's parameters for ``input_shape``, counted on the meta device: no memory is
    allocated and nothing initialised, however wide the input."""
    with torch.device("meta"):
        model = build_model(cfg.model, input_shape)
    return sum(p.numel() for p in model.parameters())


def host_bytes(terms: list[MemoryTerm], on_gpu: bool) -> int:
    return sum(term.bytes for term in terms if not (on_gpu and term.on_device))


def estimate_memory(
    cfg: Config, *, train_size: int, input_shape: tuple[int, ...]
) -> list[MemoryTerm]:
    """One worker's memory, term by term (the table in the module docstring)."""
    terms = [MemoryTerm("the worker process (Python, torch, DeepSpeed, Ray)",
                        WORKER_BASE_BYTES, "lower trainer.num_workers")]
    terms.append(_model_term(cfg, input_shape))
    terms += _pool_terms(cfg, train_size)
    negatives = _step_negatives_term(cfg)
    if negatives is not None:
        terms.append(negatives)
    if _holds_rows(cfg):
        features = math.prod(input_shape)
        terms.append(MemoryTerm(f"the data ({train_size:,} rows × {features} features, twice)",
                                2 * train_size * features * 4, "use fewer rows or features"))
    return terms


def _holds_rows(cfg: Config) -> bool:
    from dist_contrast.data import get_dataset

    return get_dataset(cfg.data.name).in_memory


def _model_term(cfg: Config, input_shape: tuple[int, ...]) -> MemoryTerm:
    params = count_parameters(cfg, input_shape)
    workers, stage = cfg.trainer.num_workers, cfg.deepspeed.zero_stage
    per_param = 4 + 4 / (workers if stage >= 2 else 1) + 8 / (workers if stage >= 1 else 1)
    per_param += 2 if cfg.deepspeed.precision == "bf16" else 0
    per_param += 4 if cfg.negatives.momentum_encoder else 0
    return MemoryTerm(
        f"the model ({params:,} parameters: weights, grads, Adam's 2 states)",
        math.ceil(params * per_param), "lower model.hidden_dim or model.num_layers",
        on_device=True,
    )


def _memory_context(cfg: Config, train_size: int) -> MemoryContext:
    return MemoryContext(train_size=train_size, dim=cfg.model.embedding_dim,
                         workers=cfg.trainer.num_workers, batch_size=cfg.trainer.batch_size,
                         loss=cfg.loss_needs())


def _pool_terms(cfg: Config, train_size: int) -> list[MemoryTerm]:
    """What each configured source holds (its spec's ``memory``: e.g. the queue and the bank,
    each followed by the copy a checkpoint makes of it, and the miner's index)."""
    negatives, context = cfg.negatives, _memory_context(cfg, train_size)
    terms = []
    for name in source_names():
        spec = source_spec(name)
        if name in negatives.sources and spec.memory is not None:
            terms += spec.memory(negatives.settings_of(name), context)
    return terms


def _step_negatives_term(cfg: Config) -> MemoryTerm | None:
    """Each step's per-query negatives, float32: [B, m, D] NCE noise, [B, M, D] mined, ...
    (each configured source's spec's ``per_query``)."""
    negatives, context = cfg.negatives, _memory_context(cfg, train_size=0)
    counts: list[tuple[int, str]] = []
    for name in source_names():
        spec = source_spec(name)
        if name in negatives.sources and spec.per_query is not None:
            count = spec.per_query(negatives.settings_of(name), context)
            if count is not None:
                counts.append(count)
    total = sum(count for count, _ in counts)
    if total == 0:
        return None
    batch, dim = cfg.trainer.batch_size, cfg.model.embedding_dim
    return MemoryTerm(
        f"each step's negatives ({batch} queries × {total:,} × {dim} dims)",
        batch * total * dim * 4,
        f"lower {', '.join(setting for _, setting in counts)} or trainer.batch_size",
        on_device=True,
    )


def human_bytes(count: float) -> str:
    """Bytes in binary units, 3 significant digits: ``2.33 TiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.3g} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    raise AssertionError("unreachable")
