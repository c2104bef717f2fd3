"""A checkpoint to resume from: complete (its ``meta.json``), every rank's files there, intact,
loadable without running code, and holding the model and pools this config builds."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from dist_contrast.config import Config
from dist_contrast.errors import UserError
from dist_contrast.models import build_model
from dist_contrast.negatives.registry import (
    ResumeContext,
    source_spec,
)
from dist_contrast.train import storage
from dist_contrast.train.state import (
    DEEPSPEED_TAG,
    MODEL_STATES,
    check_safe_to_load,
    load_weights_only,
    state_file,
)


def check_checkpoint(
    path: str | Path,
    cfg: Config,
    input_shape: tuple[int, ...],
    *,
    train_size: int,
) -> list[str]:
    """Refuse (one line) a ``trainer.resume_from`` folder this run cannot continue from.

    Checks, in order: the folder exists and is complete (it has ``meta.json``, which its save
    writes last); DeepSpeed's files (``ds/``) and one ``trainer_state_rank{r}.pt`` per worker
    of the world size ``meta.json`` records are there, and that world size is
    ``trainer.num_workers``; every
    ``.pt`` file is a complete zip and loads with ``weights_only=True`` (never running code);
    DeepSpeed's ZeRO stage and precision match; the model's parameter shapes match
    ``build_model(cfg.model, input_shape)``; each rank's pools match the config (sources,
    queue size/dim/layout, bank rows/dim against ``train_size``, the training rows). A URI
    (``s3://…``) is left to the workers: a note.
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
    world_size = _marked_world_size(folder)
    _check_files_present(folder, world_size, cfg.trainer.num_workers)
    check_safe_to_load(folder)
    model_states = load_weights_only(folder / DEEPSPEED_TAG / MODEL_STATES, deepspeed=True,
                                     mmap=True)
    _check_deepspeed_settings(folder, model_states, cfg)
    _check_model(folder, model_states.get("module", {}), cfg, input_shape)
    notes = []
    for rank in range(cfg.trainer.num_workers):
        state = load_weights_only(state_file(folder, rank), legacy_numpy=True, mmap=True)
        notes += _check_pools(folder, state, cfg, rank, train_size)
    return sorted(set(notes), key=notes.index)


def _state_ranks(folder: Path) -> list[int]:
    """The ranks whose ``trainer_state_rank{r}.pt`` is in ``folder``, sorted."""
    return sorted(int(p.stem.removeprefix("trainer_state_rank"))
                  for p in folder.glob("trainer_state_rank*.pt")
                  if p.stem.removeprefix("trainer_state_rank").isdigit())


def _marked_world_size(folder: Path) -> int:
    """The world size in the checkpoint's ``meta.json``. The save writes it last, once every
    rank's files are in place: a folder without it is refused (its save may have been
    interrupted), with the line that marks it complete by hand if the user knows it is."""
    marker = folder / storage.MARKER
    if not marker.is_file():
        raise UserError(_unmarked(folder))
    try:
        meta = json.loads(marker.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"checkpoint '{folder}' has a corrupt {storage.MARKER} "
                        f"({type(exc).__name__}); resume from another checkpoint of the run or "
                        "start a fresh run") from None
    world_size = meta.get("world_size") if isinstance(meta, dict) else None
    if type(world_size) is not int or world_size < 1:
        raise UserError(f"checkpoint '{folder}' has a {storage.MARKER} without a world_size (the "
                        f"number of workers that wrote it); add it, e.g. "
                        f"{{\"world_size\": {max(len(_state_ranks(folder)), 1)}}}")
    return world_size


def _unmarked(folder: Path) -> str:
    """Why a folder without ``meta.json`` is refused, and what to pass instead."""
    ranks = _state_ranks(folder)
    if not ranks:
        inside = storage.newest_complete(str(folder))
        if inside is not None:
            return (f"trainer.resume_from '{folder}' is a run folder, not a checkpoint; pass "
                    f"one of its checkpoints, e.g. {inside.path}")
        return (f"trainer.resume_from '{folder}' is not a checkpoint folder (no "
                f"{storage.MARKER}, no trainer states); pass a checkpoint_* folder from a "
                "previous run's results")
    beside = storage.newest_complete_beside(str(folder))
    instead = f"e.g. {beside.path}" if beside is not None else f"one with {storage.MARKER}"
    command = (f"echo '{{\"world_size\": {ranks[-1] + 1}}}' > "
               f"{shlex.quote(str(folder / storage.MARKER))}")
    return (f"checkpoint '{folder}' has no {storage.MARKER}, which its save writes last: the save "
            f"was interrupted, or the folder was copied without it; resume from a complete "
            f"checkpoint ({instead}), or, if every worker's files are there, mark it complete: "
            f"{command}")


def _check_files_present(folder: Path, world_size: int, workers: int) -> None:
    """DeepSpeed's model states and a trainer state for each of the ``world_size`` ranks that
    wrote the checkpoint (``meta.json``), and that world size is this config's ``workers``."""
    fix = "or start a fresh run"
    if not (folder / DEEPSPEED_TAG / MODEL_STATES).is_file():
        raise UserError(
            f"checkpoint '{folder}' has no DeepSpeed state ({DEEPSPEED_TAG}/{MODEL_STATES}); "
            f"pass a checkpoint_* folder this tool wrote {fix}"
        )
    ranks = _state_ranks(folder)
    missing = sorted(set(range(world_size)) - set(ranks))
    if missing:
        there = len(set(ranks) & set(range(world_size)))
        raise UserError(
            f"checkpoint '{folder}' is incomplete: {state_file(folder, missing[0]).name} is "
            f"missing ({there} of the {world_size} workers' trainer states that "
            f"{storage.MARKER} records are there); resume from another checkpoint {fix}"
        )
    if world_size != workers:
        raise UserError(
            f"checkpoint '{folder}' was written by {world_size} "
            f"worker{'s' if world_size > 1 else ''} ({storage.MARKER}), this config has "
            f"trainer.num_workers={workers}; resume with trainer.num_workers={world_size} {fix}"
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
    # Tensors only: a text encoder's state also holds its featurizer (lists and strings).
    expected = {f"encoder.{name}": tuple(value.shape) for name, value in
                build_model(cfg.model, input_shape).state_dict().items()
                if hasattr(value, "shape")}
    found = {name: tuple(value.shape) for name, value in module.items()
             if name.startswith("encoder.") and hasattr(value, "shape")}
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
    folder: Path, state: dict[str, Any], cfg: Config, rank: int, train_size: int
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
    context = ResumeContext(cfg.model.embedding_dim, cfg.trainer.num_workers, train_size)
    for name in negatives.stateful:  # each source's own check of its state
        spec = source_spec(name)
        if spec.resume_check is None:
            continue
        problem = spec.resume_check(negatives.settings_of(name), pools[spec.key], context)
        if problem is not None:
            raise UserError(f"{where} {problem}")
    notes = []
    if negatives.momentum_encoder and state.get("momentum_encoder") is None:
        notes.append(f"checkpoint '{folder}' has no momentum encoder: it starts as a copy of "
                     "the restored encoder")
    step = int((state.get("progress") or {}).get("step", 0))
    if step >= cfg.trainer.max_steps:
        notes.append(f"checkpoint '{folder}' is at step {step} ≥ trainer.max_steps="
                     f"{cfg.trainer.max_steps}: there is nothing left to train")
    return notes
