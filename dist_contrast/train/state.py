"""Checkpoint files written beside DeepSpeed's own, one per rank, and how any of them is read.

DeepSpeed's ``save_checkpoint`` holds the model, optimiser and LR-scheduler state. Everything
else the run needs to continue (step counter, negative pools, momentum encoder, τ estimate,
RNG states) goes into ``trainer_state_rank{r}.pt`` through ``state_dict``: a sharded pool
differs per rank, so every rank writes and reads its own file.

Safe loading. A ``.pt`` file is a zip archive holding a pickle; unpickling an arbitrary pickle
can run any code. Every trainer state holds only tensors, numbers, strings, ``None`` and
dicts/lists/tuples of them, so it is read with ``torch.load(weights_only=True)``, which refuses
anything else. DeepSpeed reads its own files with ``weights_only=False``; before it does,
:func:`check_safe_to_load` proves each of them loads under ``weights_only=True`` with only
three DeepSpeed classes allowed by name (:data:`DEEPSPEED_GLOBALS`, plain records), so
DeepSpeed's unrestricted load can call nothing else either.
"""

from __future__ import annotations

import os
import pickle
import random
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dist_contrast.errors import UserError

DEEPSPEED_TAG = "ds"
# DeepSpeed's model states (one file for every data-parallel rank at model-parallel rank 0).
MODEL_STATES = "mp_rank_00_model_states.pt"

# The non-tensor classes DeepSpeed (0.15-0.19) pickles into its ZeRO optimiser files, all plain
# records (a loss-scale holder, an (offset, numel) pair, an int enum). The check only proves a
# file references nothing else, so a stand-in is built in their place: DeepSpeed is not imported.
DEEPSPEED_GLOBALS = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.utils.tensor_fragment.fragment_address",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
)

#: What a checkpoint error tells the user to do instead, when the caller resumes training.
#: ``embed`` and ``evaluate`` pass their own (another checkpoint, the run's MLflow model).
RESUME_FIX = "resume from an earlier checkpoint or start a fresh run"


@dataclass
class TrainProgress:
    """Where the run stands; restored on resume."""

    step: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])


def rng_state() -> dict[str, Any]:
    """Python's, numpy's and torch's global RNG states, as tensors, ints and tuples of ints.

    numpy's state is split into its parts: its key array would otherwise be pickled as an
    ``ndarray``, which ``torch.load(weights_only=True)`` refuses.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s states (also the old format, numpy's state as a tuple)."""
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])


def state_file(directory: str | Path, rank: int) -> Path:
    return Path(directory) / f"trainer_state_rank{rank}.pt"


def save_trainer_state(directory: str | Path, rank: int, state: dict[str, Any]) -> Path:
    """Write atomically: a crash mid-write leaves the previous file (or none), never half a file."""
    path = state_file(directory, rank)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_trainer_state(directory: str | Path, rank: int) -> dict[str, Any]:
    """Rank ``rank``'s trainer state, checked and read without running code (weights only)."""
    path = state_file(directory, rank)
    if not path.is_file():
        raise UserError(
            f"checkpoint '{directory}' has no {path.name}; it was written by another world size "
            "or is incomplete: resume with the same trainer.num_workers or start a fresh run"
        )
    check_archive(path)
    state: dict[str, Any] = load_weights_only(path, legacy_numpy=True)
    return state


# ----------------------------------------------------------------------------- safe loading


def check_archive(path: Path, *, fix: str = RESUME_FIX) -> None:
    """A ``.pt`` file must be a complete zip whose members all match their CRCs (one line).

    ``torch.save`` writes a zip; a truncated copy has no central directory at its end, and a
    flipped byte fails its member's CRC (``torch.load`` itself never checks the CRCs).
    """
    problem = None
    if path.stat().st_size == 0:
        problem = "is empty (0 bytes)"
    else:
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            if bad is not None:
                problem = f"is corrupted (member {bad} fails its CRC check)"
        except (zipfile.BadZipFile, OSError, EOFError, ValueError):
            problem = "is truncated or corrupted (not a complete zip archive)"
    if problem is not None:
        raise UserError(f"checkpoint file '{path}' {problem}; {fix}")


class _StandIn:
    """Takes the place of an allowed DeepSpeed record while checking a file; never used."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _legacy_numpy_globals() -> list[Callable[..., Any] | tuple[Callable[..., Any], str]]:
    """What an old trainer state's numpy RNG key array needs (a uint32 ``ndarray``).

    The weights-only unpickler rebuilds the array from raw bytes: no code runs.
    """
    try:  # numpy 2 moved numpy.core to numpy._core; a file names the module that wrote it
        from numpy._core.multiarray import _reconstruct  # type: ignore[attr-defined]
    except ImportError:  # numpy 1.26
        from numpy.core.multiarray import _reconstruct  # type: ignore[attr-defined,no-redef]
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


@contextmanager
def _allowed(
    globals_: list[Callable[..., Any] | tuple[Callable[..., Any], str]],
) -> Iterator[None]:
    with torch.serialization.safe_globals(globals_):
        yield


def load_weights_only(
    path: Path, *, legacy_numpy: bool = False, deepspeed: bool = False, mmap: bool = False,
    fix: str = RESUME_FIX,
) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, every failure one ``UserError`` line.

    ``legacy_numpy`` also accepts a numpy array (old trainer states' RNG keys); ``deepspeed``
    accepts :data:`DEEPSPEED_GLOBALS` as stand-ins (only to check a file, the object is not
    DeepSpeed's). ``mmap`` maps tensor data instead of reading it: a large bank loads in
    milliseconds. ``fix`` ends the line (what to do instead).
    """
    allowed: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = []
    if legacy_numpy:
        allowed += _legacy_numpy_globals()
    if deepspeed:
        allowed += [(_StandIn, name) for name in DEEPSPEED_GLOBALS]
    try:
        with _allowed(allowed):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        unsafe = _unsafe_globals(path, allowed)
        what = f"unpickling {unsafe}" if unsafe else "unpickling beyond tensors and numbers"
        raise UserError(
            f"checkpoint file '{path}' needs {what}, which could run code; refusing to load it "
            f"(only checkpoints this tool wrote are loaded): {fix}"
        ) from None
    except Exception as exc:  # any other failure: the file's pickle or data are damaged
        raise UserError(
            f"checkpoint file '{path}' is corrupted ({type(exc).__name__}); {fix}"
        ) from None


def _unsafe_globals(
    path: Path, allowed: list[Callable[..., Any] | tuple[Callable[..., Any], str]]
) -> str:
    """The first global the file references beyond torch's safe set and ``allowed`` (or '')."""
    names = {
        entry[1] if isinstance(entry, tuple) else f"{entry.__module__}.{entry.__qualname__}"
        for entry in allowed
    }
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # the pickle does not even parse: say nothing more specific
        return ""
    rest = [name for name in unsafe if name not in names]
    return rest[0] if rest else ""


def deepspeed_files(directory: str | Path) -> list[Path]:
    """DeepSpeed's ``.pt`` files of a checkpoint folder (under its ``ds`` tag), sorted."""
    return sorted((Path(directory) / DEEPSPEED_TAG).glob("*.pt"))


def check_safe_to_load(
    directory: str | Path, rank: int | None = None, *, fix: str = RESUME_FIX
) -> None:
    """Every ``.pt`` file DeepSpeed will read from ``directory`` (all of ``ds/``: ZeRO reads
    every rank's optimiser file), and the trainer state of ``rank`` (every rank's when None),
    is a complete zip and loads with ``weights_only=True``; else one ``UserError`` line.

    Call it right before ``engine.load_checkpoint`` (which unpickles without restrictions).
    Tensor data is memory-mapped, not read: a checkpoint of a large bank checks in seconds.
    ``fix`` ends a refusal's line (what to do instead).
    """
    files = deepspeed_files(directory)
    if rank is None:
        files += sorted(Path(directory).glob("trainer_state_rank*.pt"))
    elif state_file(directory, rank).is_file():
        files.append(state_file(directory, rank))
    for path in files:
        check_archive(path, fix=fix)
        load_weights_only(path, legacy_numpy=True, deepspeed=True, mmap=True, fix=fix)
