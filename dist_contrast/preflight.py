"""Checks on the driver, in seconds, before any worker starts.

Each check either raises :class:`~dist_contrast.errors.UserError` with one line that names the
problem and the fix, or returns one-line notes for the driver to print. Nothing is written.

* :func:`check_resources`: CPUs, GPUs and an estimate of the memory the workers will need,
  against what this machine (or the Ray cluster) has.
* :func:`check_checkpoint`: a ``trainer.resume_from`` folder is complete, intact, loadable
  without running code, and holds the model and pools this config builds.
* :func:`config_notes`: settings the run adjusts (a warm-up longer than the run).
* :func:`check_storage`: on a cluster of several nodes, an ``experiment.output_dir`` on this
  node's own disk (checkpoints need storage that every node reaches).

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
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dist_contrast.config import Config
from dist_contrast.errors import UserError
from dist_contrast.models import build_model
from dist_contrast.negatives.config import MinerConfig
from dist_contrast.negatives.registry import source_spec
from dist_contrast.objectives import get_objective
from dist_contrast.train.deepspeed_config import warmup_steps
from dist_contrast.train.state import (
    DEEPSPEED_TAG,
    MODEL_STATES,
    check_safe_to_load,
    load_weights_only,
    state_file,
)

# check_safe_to_load is re-exported for the driver; the worker imports it from
# dist_contrast.train.state (train/ does not import this module).
__all__ = [
    "check_checkpoint",
    "check_resources",
    "check_storage",
    "check_safe_to_load",
    "config_notes",
    "estimate_memory",
    "index_bytes_per_key",
    "local_resources",
]

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
# Locally Ray lets the workers time-share the cores; beyond this many worker CPUs per core a
# run spends its time switching between them.
LOCAL_OVERSUBSCRIPTION = 4
# Above this share of the available memory the estimate is printed as a note.
TIGHT_SHARE = 0.75
# FAISS per-key overheads beyond the codes, measured at 200k keys, D = 64 (faiss-cpu 1.15):
# IVF lists hold an 8-byte id per key, the hash-table direct map (``remove_ids``) an entry,
# and the lists grow by doubling (69-110 B measured); IndexIDMap2 (exact, HNSW) keeps an id
# and a reverse-map entry (51 B measured); HNSW's levels and offsets ~24 B.
IVF_OVERHEAD = 112
IDMAP_OVERHEAD = 56
HNSW_LEVELS = 24
# scikit-learn's bundled digits (data.name=digits).
DIGITS_ROWS = 1797
DIGITS_SHAPE = (1, 8, 8)


# ----------------------------------------------------------------------------- resources


@dataclass(frozen=True)
class Term:
    """One part of a worker's memory: what it is, its bytes, how to shrink it."""

    what: str
    bytes: int
    fix: str
    # GPU-resident when the workers train on GPUs (then not counted against host memory).
    on_device: bool = False


def local_resources() -> tuple[float, float, int]:
    """This machine's CPUs, GPUs and available memory in bytes (``MemAvailable``)."""
    return float(os.cpu_count() or 1), float(torch.cuda.device_count()), available_memory()


def available_memory() -> int:
    """Bytes the kernel could give new processes without swapping (``MemAvailable``)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_resources(
    cfg: Config,
    *,
    cpus: float,
    gpus: float,
    memory_bytes: int,
    local: bool,
    train_size: int | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> list[str]:
    """Refuse (one ``UserError`` line) a run this machine or cluster cannot hold; else notes.

    ``cpus``/``gpus``/``memory_bytes``: locally :func:`local_resources`; on a cluster Ray's
    ``cluster_resources()`` ``CPU``, ``GPU`` and ``memory``. ``train_size``/``input_shape``:
    the built dataset's ``len(bundle.train)`` and ``bundle.input_shape`` (needed for
    ``data.name=file``; derived from the config otherwise).
    """
    notes = _check_cpus(cfg, cpus, local)
    on_gpu, gpu_notes = _check_gpus(cfg, gpus, local)
    rows, shape = _data_shape(cfg, train_size, input_shape)
    notes += gpu_notes
    notes += _check_memory(cfg, memory_bytes, local, on_gpu, rows, shape)
    return notes


def _check_cpus(cfg: Config, cpus: float, local: bool) -> list[str]:
    trainer = cfg.trainer
    need = trainer.num_workers * trainer.cpus_per_worker
    asked = (
        f"trainer.num_workers={trainer.num_workers} × trainer.cpus_per_worker="
        f"{trainer.cpus_per_worker:g} = {need:g} CPUs"
    )
    if not local:
        if need > cpus:
            raise UserError(
                f"{asked}, but the Ray cluster has {cpus:g}; lower them or add nodes"
            )
        return []
    limit = cpus * LOCAL_OVERSUBSCRIPTION
    if need > limit:
        raise UserError(
            f"{asked} on a machine with {cpus:g} cores (at most {limit:g} can time-share them); "
            "lower trainer.num_workers or run on a Ray cluster (RAY_ADDRESS)"
        )
    if need > cpus:
        return [f"{asked} time-share {cpus:g} cores: each worker runs slower"]
    return []


def _check_gpus(cfg: Config, gpus: float, local: bool) -> tuple[bool, list[str]]:
    """Whether the workers will train on GPUs (orchestrate's rule), and a note or refusal."""
    workers, use_gpu = cfg.trainer.num_workers, cfg.trainer.use_gpu
    where = "on this machine" if local else "in the Ray cluster"
    if use_gpu == "true" and gpus < workers:
        raise UserError(
            f"trainer.use_gpu=true needs one GPU per worker, {workers} for "
            f"trainer.num_workers={workers}, but there are {gpus:g} {where}; lower "
            "trainer.num_workers or set trainer.use_gpu=auto"
        )
    on_gpu = use_gpu == "true" or (use_gpu == "auto" and gpus >= workers)
    notes = []
    if use_gpu == "auto" and 0 < gpus < workers:
        notes.append(
            f"trainer.use_gpu=auto: {gpus:g} GPUs {where} for {workers} workers, so the "
            "workers train on the CPU"
        )
    if on_gpu:
        notes.append("memory check: host memory only; the GPUs' memory is not checked")
    return on_gpu, notes


def _data_shape(
    cfg: Config, train_size: int | None, input_shape: tuple[int, ...] | None
) -> tuple[int, tuple[int, ...]]:
    """Training rows and input shape: as given, else as ``build_data`` would make them."""
    if cfg.data.name == "file":
        if train_size is None or input_shape is None:
            raise ValueError("data.name=file: pass the built dataset's train_size and input_shape")
        return train_size, tuple(input_shape)
    shape = (cfg.data.dim,) if cfg.data.name == "synthetic" else DIGITS_SHAPE
    rows = train_size if train_size is not None else _train_rows(cfg)
    assert rows is not None
    return rows, tuple(input_shape or shape)


def _train_rows(cfg: Config) -> int | None:
    """``build_data``'s training rows for synthetic and digits data (None for a file)."""
    data = cfg.data
    if data.name == "file":
        return None
    rows = data.num_samples if data.name == "synthetic" else DIGITS_ROWS
    held_out = data.num_test if data.num_test is not None else round(data.test_fraction * rows)
    return rows - max(1, held_out)


def _check_memory(
    cfg: Config, available: int, local: bool, on_gpu: bool, rows: int, shape: tuple[int, ...]
) -> list[str]:
    workers = cfg.trainer.num_workers
    overhead = LOCAL_RAY_BYTES if local else 0
    terms = [term for term in estimate_memory(cfg, train_size=rows, input_shape=shape)
             if not (on_gpu and term.on_device)]
    per_worker = sum(term.bytes for term in terms)
    total = workers * per_worker + overhead
    if total <= TIGHT_SHARE * available:
        return []
    if total <= available:
        return [f"memory: the estimate, {_human(total)}, is close to the {_human(available)} "
                "available"]
    biggest = max(terms, key=lambda term: term.bytes)
    twice = any(term.what == f"the checkpoint copy of {biggest.what}" for term in terms)
    ray = f" + {_human(overhead)} for Ray" if overhead else ""
    message = (
        f"memory: {workers} workers × ~{_human(per_worker)}{ray} = {_human(total)} exceed the "
        f"{_human(available)} available; the biggest part is {biggest.what}, "
        f"{_human(biggest.bytes)} per worker{' (twice that while checkpointing)' if twice else ''}"
        f": {biggest.fix}"
    )
    hint = _sharding_hint(cfg, available - overhead, on_gpu, rows, shape)
    raise UserError(message + (f"; {hint}" if hint else ""))


def _host_bytes(terms: list[Term], on_gpu: bool) -> int:
    return sum(term.bytes for term in terms if not (on_gpu and term.on_device))


def _sharding_hint(
    cfg: Config, available: int, on_gpu: bool, rows: int, shape: tuple[int, ...]
) -> str:
    """Say so when sharding the queue or the miner's index (still replicated) would fit."""
    negatives, workers = cfg.negatives, cfg.trainer.num_workers
    if workers < 2:
        return ""
    hints: list[tuple[str, dict[str, Any]]] = []
    queue_can = get_objective(cfg.loss.name).sharded_pool and "queue" in negatives.sources
    if queue_can and negatives.queue.layout == "replicated":
        queue = negatives.queue.model_copy(update={"layout": "sharded"})
        hints.append(("negatives.queue.layout=sharded", {"queue": queue}))
    if "mined" in negatives.sources and negatives.miner.layout == "replicated":
        miner = negatives.miner.model_copy(update={"layout": "sharded"})
        hints.append(("negatives.miner.layout=sharded", {"miner": miner}))
    for setting, update in hints:
        changed = cfg.model_copy(update={"negatives": negatives.model_copy(update=update)})
        per_worker = _host_bytes(
            estimate_memory(changed, train_size=rows, input_shape=shape), on_gpu
        )
        if workers * per_worker <= available:
            return f"{setting} would fit (~{_human(per_worker)} per worker)"
    return ""


def estimate_memory(cfg: Config, *, train_size: int, input_shape: tuple[int, ...]) -> list[Term]:
    """One worker's memory, term by term (the table in the module docstring)."""
    terms = [Term("the worker process (Python, torch, DeepSpeed, Ray)", WORKER_BASE_BYTES,
                  "lower trainer.num_workers")]
    terms.append(_model_term(cfg, input_shape))
    terms += _pool_terms(cfg, train_size)
    negatives = _step_negatives_term(cfg)
    if negatives is not None:
        terms.append(negatives)
    if cfg.data.name == "file":
        features = math.prod(input_shape)
        terms.append(Term(f"the data ({train_size:,} rows × {features} features, twice)",
                          2 * train_size * features * 4, "use fewer rows or features"))
    return terms


def _model_term(cfg: Config, input_shape: tuple[int, ...]) -> Term:
    params = sum(p.numel() for p in build_model(cfg.model, input_shape).parameters())
    workers, stage = cfg.trainer.num_workers, cfg.deepspeed.zero_stage
    per_param = 4 + 4 / (workers if stage >= 2 else 1) + 8 / (workers if stage >= 1 else 1)
    per_param += 2 if cfg.deepspeed.precision == "bf16" else 0
    per_param += 4 if cfg.negatives.momentum_encoder else 0
    return Term(
        f"the model ({params:,} parameters: weights, grads, Adam's 2 states)",
        math.ceil(params * per_param), "lower model.hidden_dim or model.num_layers",
        on_device=True,
    )


def _pool_terms(cfg: Config, train_size: int) -> list[Term]:
    """Queue, bank and miner, each followed by the copy a checkpoint makes of queue and bank."""
    negatives, dim, workers = cfg.negatives, cfg.model.embedding_dim, cfg.trainer.num_workers
    terms = []
    if "queue" in negatives.sources:
        size = negatives.queue.size
        sharded = negatives.queue.layout == "sharded" and workers > 1
        rows = -(-size // workers) if sharded else size
        layout = f", sharded over {workers} workers" if sharded else ""
        what = f"the MoCo queue (negatives.queue.size={size:,} × {dim} dims{layout})"
        fix = "lower negatives.queue.size"
        terms.append(Term(what, rows * (4 * dim + 8), fix, on_device=True))
        terms.append(Term(f"the checkpoint copy of {what}", rows * (4 * dim + 8), fix, True))
    if "bank" in negatives.sources:
        what = f"the memory bank ({train_size:,} training rows × {dim} dims)"
        fix = "use fewer training rows or a smaller model.embedding_dim"
        terms.append(Term(what, train_size * (4 * dim + 16), fix, on_device=True))
        terms.append(Term(f"the checkpoint copy of {what}", train_size * (4 * dim + 16), fix,
                          on_device=True))
    if "mined" in negatives.sources:
        terms.append(_miner_term(negatives.miner, dim, train_size, workers))
    return terms


def _miner_term(miner: MinerConfig, dim: int, train_size: int, workers: int) -> Term:
    sharded = miner.layout == "sharded" and workers > 1
    keys = -(-train_size // workers) if sharded else train_size
    per_key = index_bytes_per_key(miner, dim) + 4 * dim + 9
    layout = f", sharded over {workers} workers" if sharded else ""
    fix = ("set negatives.miner.index to ivf_fp16, ivf_sq8 or ivf_pq (fewer bytes per key)"
           if miner.index in ("exact", "ivf_flat", "hnsw") else "use fewer training rows")
    if not sharded and workers > 1:
        fix += " or negatives.miner.layout=sharded"
    return Term(f"the miner's FAISS index (negatives.miner.index={miner.index}, "
                f"{keys:,} keys{layout})", keys * per_key, fix)


def index_bytes_per_key(miner: MinerConfig, dim: int) -> int:
    """FAISS memory per indexed key of ``miner.index`` at embedding dim ``dim`` (closed form).

    Codes: exact, ivf_flat and hnsw 4·D; ivf_fp16 2·D; ivf_sq8 D; ivf_pq ``pq_m`` (8-bit
    codes). Plus :data:`IVF_OVERHEAD` for IVF indexes, :data:`IDMAP_OVERHEAD` for the ID map
    of exact and HNSW, and HNSW's graph: 2·M level-0 links of 4 bytes plus :data:`HNSW_LEVELS`.
    """
    kind = miner.index
    if kind == "exact":
        return 4 * dim + IDMAP_OVERHEAD
    if kind == "hnsw":
        return 4 * dim + 8 * miner.hnsw_m + HNSW_LEVELS + IDMAP_OVERHEAD
    codes = {"ivf_flat": 4 * dim, "ivf_fp16": 2 * dim, "ivf_sq8": dim, "ivf_pq": miner.pq_m}
    return codes[kind] + IVF_OVERHEAD


def _step_negatives_term(cfg: Config) -> Term | None:
    """Each step's NCE noise [B, m, D] and mined negatives [B, M, D], float32."""
    negatives = cfg.negatives
    noise = negatives.bank.noise_samples if (
        "bank" in negatives.sources and get_objective(cfg.loss.name).needs_noise) else 0
    mined = negatives.miner.num_negatives if "mined" in negatives.sources else 0
    if noise + mined == 0:
        return None
    batch, dim = cfg.trainer.batch_size, cfg.model.embedding_dim
    return Term(
        f"each step's negatives ({batch} queries × {noise + mined:,} × {dim} dims)",
        batch * (noise + mined) * dim * 4,
        "lower negatives.bank.noise_samples, negatives.miner.num_negatives or "
        "trainer.batch_size",
        on_device=True,
    )


def _human(count: float) -> str:
    """Bytes in binary units, 3 significant digits: ``2.33 TiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.3g} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------- storage

#: Filesystems that several machines mount (plus every FUSE filesystem: s3fs, gcsfuse,
#: JuiceFS, sshfs ...). Anything else (ext4, xfs, btrfs, overlay, tmpfs ...) is one node's own.
SHARED_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "lustre", "gpfs", "beegfs",
    "virtiofs", "9p", "afs", "ocfs2", "gfs2", "wekafs", "panfs",
})


def filesystem_type(path: str, mounts: str | None = None) -> str:
    """The type of the filesystem ``path`` is on (``mounts``: the text of /proc/self/mounts,
    read when not given); "unknown" when the mount table cannot be read."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return "unknown"
    target = os.path.abspath(path)
    best, kind = "", "unknown"
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def check_storage(output_dir: str, nodes: int, mounts: str | None = None) -> list[str]:
    """One line when a cluster of ``nodes`` > 1 nodes would write checkpoints to a path on
    this node's own disk: every rank writes its files into one checkpoint folder, and a
    restart on another node reads them back, so ``experiment.output_dir`` must be a shared
    filesystem (the same path on every node) or an object store URI."""
    if nodes <= 1 or "://" in output_dir:
        return []
    kind = filesystem_type(output_dir, mounts)
    if kind in SHARED_FILESYSTEMS or kind.startswith("fuse"):
        return []
    return [
        f"the Ray cluster has {nodes} nodes and experiment.output_dir={output_dir} is on this "
        f"node's own disk ({kind}): checkpoints need storage every node reaches; set "
        "experiment.output_dir to a shared filesystem mounted at the same path on every node "
        "or to an s3:// URI"
    ]


# ----------------------------------------------------------------------------- notes


def config_notes(cfg: Config) -> list[str]:
    """What the run adjusts in the config, one line each (print them before it starts)."""
    notes = []
    warmup, max_steps = cfg.optimizer.warmup_steps, cfg.trainer.max_steps
    if warmup >= max_steps:
        capped = warmup_steps(cfg)
        notes.append(
            f"optimizer.warmup_steps={warmup} ≥ trainer.max_steps={max_steps}: warm-up capped "
            f"at {capped} step{'s' if capped != 1 else ''}"
        )
    return notes


# ----------------------------------------------------------------------------- checkpoints


def check_checkpoint(
    path: str | Path,
    cfg: Config,
    input_shape: tuple[int, ...],
    *,
    train_size: int | None = None,
) -> list[str]:
    """Refuse (one line) a ``trainer.resume_from`` folder this run cannot continue from.

    Checks, in order: the folder exists; DeepSpeed's files (``ds/``) and one
    ``trainer_state_rank{r}.pt`` per worker of ``trainer.num_workers`` are there; every
    ``.pt`` file is a complete zip and loads with ``weights_only=True`` (never running code);
    DeepSpeed's ZeRO stage and precision match; the model's parameter shapes match
    ``build_model(cfg.model, input_shape)``; each rank's pools match the config (sources,
    queue size/dim/layout, bank rows/dim; bank rows only when ``train_size`` is known, which
    ``data.name=file`` needs passed). A URI (``s3://…``) is left to the workers: a note.
    """
    if "://" in str(path):
        return [f"trainer.resume_from={path} is not checked on the driver (a URI); the workers "
                "check it as they load it"]
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(
            f"trainer.resume_from '{path}' is not a checkpoint folder; pass a checkpoint_* "
            "folder from a previous run's results"
        )
    _check_files_present(folder, cfg.trainer.num_workers)
    check_safe_to_load(folder)
    model_states = load_weights_only(folder / DEEPSPEED_TAG / MODEL_STATES, deepspeed=True,
                                     mmap=True)
    _check_deepspeed_settings(folder, model_states, cfg)
    _check_model(folder, model_states.get("module", {}), cfg, input_shape)
    rows = train_size if train_size is not None else _train_rows(cfg)
    notes = []
    for rank in range(cfg.trainer.num_workers):
        state = load_weights_only(state_file(folder, rank), legacy_numpy=True, mmap=True)
        notes += _check_pools(folder, state, cfg, rank, rows)
    return sorted(set(notes), key=notes.index)


def _check_files_present(folder: Path, workers: int) -> None:
    """DeepSpeed's model states and a trainer state per rank, written by ``workers`` ranks."""
    fix = "or start a fresh run"
    if not (folder / DEEPSPEED_TAG / MODEL_STATES).is_file():
        raise UserError(
            f"checkpoint '{folder}' has no DeepSpeed state ({DEEPSPEED_TAG}/{MODEL_STATES}); "
            f"pass a checkpoint_* folder this tool wrote {fix}"
        )
    ranks = sorted(int(p.stem.removeprefix("trainer_state_rank"))
                   for p in folder.glob("trainer_state_rank*.pt")
                   if p.stem.removeprefix("trainer_state_rank").isdigit())
    if not ranks:
        raise UserError(f"checkpoint '{folder}' has no trainer_state_rank*.pt files; pass a "
                        f"checkpoint_* folder this tool wrote {fix}")
    written = ranks[-1] + 1
    missing = sorted(set(range(written)) - set(ranks))
    if missing:
        raise UserError(
            f"checkpoint '{folder}' is incomplete: {state_file(folder, missing[0]).name} is "
            f"missing ({len(ranks)} of {written} ranks' trainer states are there); resume from "
            f"another checkpoint {fix}"
        )
    if written != workers:
        raise UserError(
            f"checkpoint '{folder}' was written by {written} worker{'s' if written > 1 else ''}, "
            f"this config has "
            f"trainer.num_workers={workers}; resume with trainer.num_workers={written} {fix}"
        )


def _check_deepspeed_settings(folder: Path, states: dict[str, Any], cfg: Config) -> None:
    """ZeRO-partitioned vs unpartitioned optimiser state, and the precision, must match:
    DeepSpeed fails deep inside ``load_checkpoint`` otherwise (missing file, KeyError)."""
    ds_config = states.get("ds_config") or {}
    stage = int((ds_config.get("zero_optimization") or {}).get("stage", 0))
    bf16 = bool((ds_config.get("bf16") or {}).get("enabled", False))
    precision = "bf16" if bf16 else "fp32"
    wanted = cfg.deepspeed
    if (stage == 0) != (wanted.zero_stage == 0) or precision != wanted.precision:
        raise UserError(
            f"checkpoint '{folder}' was written with deepspeed.zero_stage={stage} and "
            f"deepspeed.precision={precision}, this config has zero_stage={wanted.zero_stage} "
            f"and {wanted.precision}; resume with the checkpoint's settings or start a fresh run"
        )
    files = {p.name for p in (folder / DEEPSPEED_TAG).glob("*optim_states.pt")}
    dp_ranks = int(states.get("dp_world_size", cfg.trainer.num_workers))
    prefix = "bf16_" if bf16 else ""
    for rank in range(dp_ranks if stage > 0 else 0):
        name = f"{prefix}zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
        if name not in files:
            raise UserError(f"checkpoint '{folder}' is incomplete: {DEEPSPEED_TAG}/{name} is "
                            "missing; resume from another checkpoint or start a fresh run")


def _check_model(
    folder: Path, module: dict[str, Any], cfg: Config, input_shape: tuple[int, ...]
) -> None:
    """The encoder's parameter names and shapes against the one this config builds."""
    expected = {f"encoder.{name}": tuple(value.shape) for name, value in
                build_model(cfg.model, input_shape).state_dict().items()}
    found = {name: tuple(value.shape) for name, value in module.items()
             if name.startswith("encoder.")}
    fix = "set the model.* and data.* values it was trained with, or start a fresh run"
    for name, shape in expected.items():
        if name not in found:
            raise UserError(
                f"checkpoint '{folder}' holds a different model: it has no {name}, this "
                f"config's model has (model.name, num_layers, projection_layers or batch_norm "
                f"differ?); {fix}"
            )
        if found[name] != shape:
            raise UserError(
                f"checkpoint '{folder}' holds a different model: {name} is {list(found[name])} "
                f"there, {list(shape)} for this config{_dims_hint(found, cfg)}; {fix}"
            )
    extra = [name for name in found if name not in expected]
    if extra:
        raise UserError(
            f"checkpoint '{folder}' holds a different model: it has {extra[0]}, this config's "
            f"model has not (model.name, num_layers, projection_layers or batch_norm differ?); "
            f"{fix}"
        )


def _dims_hint(found: dict[str, tuple[int, ...]], cfg: Config) -> str:
    """Which of model.embedding_dim / model.hidden_dim the checkpoint has otherwise."""
    def out_dim(prefix: str) -> int | None:
        weights = [shape for name, shape in found.items()
                   if name.startswith(prefix) and name.endswith(".weight") and len(shape) == 2]
        return weights[-1][0] if weights else None

    hints = []
    embedding, hidden = out_dim("encoder.head."), out_dim("encoder.backbone.")
    if embedding is not None and embedding != cfg.model.embedding_dim:
        hints.append(f"model.embedding_dim={embedding} (here {cfg.model.embedding_dim})")
    if hidden is not None and hidden != cfg.model.hidden_dim:
        hints.append(f"model.hidden_dim={hidden} (here {cfg.model.hidden_dim})")
    return f": it was trained with {' and '.join(hints)}" if hints else ""


def _check_pools(
    folder: Path, state: dict[str, Any], cfg: Config, rank: int, train_size: int | None
) -> list[str]:
    """Rank ``rank``'s pools against the config; notes on what resuming will not restore."""
    negatives = cfg.negatives
    where = f"checkpoint '{folder}' (rank {rank})"
    expected = sorted({source_spec(name).key for name in negatives.sources
                       if source_spec(name).build is not None})
    pools = state.get("negatives") or {}
    if sorted(pools) != expected:
        raise UserError(
            f"{where} holds the negative pools {sorted(pools) or 'none'}, this config builds "
            f"{expected or 'none'}; resume with the negatives.sources it was trained with"
        )
    if "queue" in pools:
        _check_queue(where, pools["queue"], cfg)
    if "bank" in pools:
        _check_bank(where, pools["bank"], cfg, train_size)
    notes = []
    if negatives.momentum_encoder and state.get("momentum_encoder") is None:
        notes.append(f"checkpoint '{folder}' has no momentum encoder: it starts as a copy of "
                     "the restored encoder")
    step = int((state.get("progress") or {}).get("step", 0))
    if step >= cfg.trainer.max_steps:
        notes.append(f"checkpoint '{folder}' is at step {step} ≥ trainer.max_steps="
                     f"{cfg.trainer.max_steps}: there is nothing left to train")
    return notes


def _check_queue(where: str, queue: dict[str, Any], cfg: Config) -> None:
    wanted, workers = cfg.negatives.queue, cfg.trainer.num_workers
    size, dim = int(queue["size"]), int(queue["keys"].shape[1])
    if size != wanted.size:
        raise UserError(f"{where} has a queue of {size:,} keys, this config has "
                        f"negatives.queue.size={wanted.size}; set negatives.queue.size={size}")
    if dim != cfg.model.embedding_dim:
        raise UserError(f"{where} has queue keys of {dim} dims, this config has "
                        f"model.embedding_dim={cfg.model.embedding_dim}; set "
                        f"model.embedding_dim={dim}")
    sharded = int(queue["world_size"]) > 1
    if sharded != (wanted.layout == "sharded" and workers > 1):
        layout = "sharded" if sharded else "replicated"
        raise UserError(f"{where} has a {layout} queue, this config has "
                        f"negatives.queue.layout={wanted.layout}; set "
                        f"negatives.queue.layout={layout}")


def _check_bank(where: str, bank: dict[str, Any], cfg: Config, train_size: int | None) -> None:
    rows, dim = (int(size) for size in bank["vectors"].shape)
    if dim != cfg.model.embedding_dim:
        raise UserError(f"{where} has a memory bank of {dim} dims, this config has "
                        f"model.embedding_dim={cfg.model.embedding_dim}; set "
                        f"model.embedding_dim={dim}")
    if train_size is not None and rows != train_size:
        raise UserError(f"{where} has a memory bank of {rows:,} entries (one per training row), "
                        f"this config's data has {train_size:,} training rows; resume with the "
                        "same data and data.test_fraction / data.num_test")

