"""The trained encoder's float32 weights, out of a live DeepSpeed engine or a checkpoint folder.

Under bf16 the module DeepSpeed runs holds bf16 copies of the weights; what the optimiser
updates are its fp32 *master* weights, and those are the trained model. Where they live:

* ZeRO 1-2 (fp32 or bf16): flat fp32 partitions, one per rank (``*_optim_states.pt`` in a
  checkpoint; ``deepspeed.utils.zero_to_fp32`` joins them, ``safe_get_full_fp32_param``
  gathers a live one).
* ZeRO 0 + bf16: DeepSpeed's unfused mixed-precision optimiser keeps a full fp32 copy of
  every parameter on every rank (``optimizer.fp32_groups``; in a checkpoint, under
  ``"optimizer"`` in ``mp_rank_00_model_states.pt``, which then holds bf16 module weights).
* ZeRO 0 + fp32: the module's weights are the master weights.

Buffers (BatchNorm's running statistics) have no master copy: they are cast to float32, as
``zero_to_fp32`` does. State dicts here are keyed like the encoder's own ``state_dict``.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

from torch import Tensor

from dist_contrast.errors import UserError
from dist_contrast.train.state import DEEPSPEED_TAG, MODEL_STATES, load_weights_only

# The engine's module is ``ContrastiveModel(encoder, temperature)``: the encoder's keys start so.
ENCODER_PREFIX = "encoder."
# How every refusal of a checkpoint folder here ends: its readers load an encoder, not resume.
_FIX = "use another checkpoint of the run"


def master_state_dict(engine: Any) -> dict[str, Tensor]:
    """The encoder's state on the CPU in float32, with the optimiser's master weights.

    Collective under ZeRO 1-2: every rank must call it (each holds a part of the weights).
    """
    from deepspeed.utils import safe_get_full_fp32_param

    encoder = engine.module.encoder
    state = {name: _float_cpu(value) for name, value in encoder.state_dict().items()}
    unfused = _unfused_masters(engine.optimizer)
    # named_parameters has one fixed order on every rank, which the gathers below rely on.
    for name, param in encoder.named_parameters():
        master = safe_get_full_fp32_param(param)  # ZeRO 1-2 and the bf16 optimiser: gathered
        if master is None:
            master = unfused.get(id(param), param)
        state[name] = _float_cpu(master.reshape(param.shape))
    return state


def _unfused_masters(optimizer: Any) -> dict[int, Tensor]:
    """ZeRO 0 + bf16: DeepSpeed's unfused optimiser pairs each module parameter with its fp32
    copy (``fp16_groups`` with ``fp32_groups``); empty for any other optimiser."""
    low, full = getattr(optimizer, "fp16_groups", None), getattr(optimizer, "fp32_groups", None)
    if not isinstance(low, list) or not isinstance(full, list):
        return {}
    return {id(p): m for lows, masters in zip(low, full, strict=True)
            for p, m in zip(lows, masters, strict=True)}


def _float_cpu(tensor: Any) -> Any:
    """A tensor in float32 on the CPU; a module's extra state (a text encoder's featurizer
    record, not a tensor) as it is."""
    if not isinstance(tensor, Tensor):
        return tensor
    tensor = tensor.detach().cpu()
    return (tensor.float() if tensor.is_floating_point() else tensor).clone()


#: The state-dict key suffix of a module's ``get_extra_state``.
EXTRA_STATE = "_extra_state"


def checkpoint_state_dict(directory: str | Path) -> dict[str, Tensor]:
    """The encoder's float32 state from a checkpoint folder's DeepSpeed state (``ds/``).

    Call :func:`~dist_contrast.train.state.check_safe_to_load` on ``directory`` first:
    DeepSpeed's reader unpickles without restrictions. Raises ``UserError`` (one line) for
    missing or unreadable state.
    """
    ds_dir = Path(directory) / DEEPSPEED_TAG
    states = ds_dir / MODEL_STATES
    if not states.is_file():
        raise UserError(
            f"checkpoint '{directory}' has no DeepSpeed state ({DEEPSPEED_TAG}/{MODEL_STATES} is "
            f"missing): it is incomplete; {_FIX}"
        )
    if sorted(ds_dir.glob("*_optim_states.pt")):
        model = _zero_checkpoint(directory)
        # DeepSpeed's reader rebuilds parameters and buffers only: a module's extra state
        # (a text encoder's featurizer) comes from the module's own saved state.
        module = load_weights_only(states, deepspeed=True, fix=_FIX).get("module") or {}
        model.update({k: v for k, v in module.items() if k.endswith(EXTRA_STATE)})
    else:
        model = _stage0_checkpoint(directory, load_weights_only(states, deepspeed=True, fix=_FIX))
    encoder = {k.removeprefix(ENCODER_PREFIX): _float_cpu(v) for k, v in model.items()
               if k.startswith(ENCODER_PREFIX)}
    if not encoder:
        raise UserError(f"checkpoint '{directory}' holds no encoder weights; use a checkpoint "
                        "this tool wrote")
    return encoder


def _zero_checkpoint(directory: str | Path) -> dict[str, Tensor]:
    """ZeRO 1-2: DeepSpeed's own reader joins every rank's fp32 partition."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    try:
        # It prints its progress (stdout) and a bar (stderr): neither belongs in our output.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            state: dict[str, Tensor] = get_fp32_state_dict_from_zero_checkpoint(
                str(directory), tag=DEEPSPEED_TAG
            )
    except Exception as exc:  # missing rank files, a mismatched world size, damaged tensors
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise UserError(
            f"checkpoint '{directory}' has incomplete or unreadable ZeRO state "
            f"({type(exc).__name__}: {reason}); {_FIX}"
        ) from None
    return state


def _stage0_checkpoint(directory: str | Path, states: dict[str, Any]) -> dict[str, Tensor]:
    """ZeRO 0: the module's weights, replaced by the optimiser's fp32 copies under bf16."""
    module = states.get("module")
    if not isinstance(module, dict):
        raise UserError(f"checkpoint '{directory}' has no module weights in "
                        f"{DEEPSPEED_TAG}/{MODEL_STATES}; use a checkpoint this tool wrote")
    state = dict(module)
    optimizer = states.get("optimizer")
    groups = optimizer.get("fp32_groups") if isinstance(optimizer, dict) else None
    if groups is None:  # fp32 training: the module's weights are the master weights
        return state
    # The encoder's parameters are the first parameter group (build_engine), in module order.
    buffers = set(states.get("buffer_names") or ())
    names = [k for k in module if k.startswith(ENCODER_PREFIX) and k not in buffers]
    masters = list(groups[0]) if groups else []
    if len(masters) != len(names) or any(
        tuple(m.shape) != tuple(module[n].shape) for n, m in zip(names, masters, strict=False)
    ):
        raise UserError(
            f"checkpoint '{directory}': its fp32 master weights do not match the module's "
            f"{len(names)} encoder parameters; use a checkpoint this tool wrote"
        )
    state.update(zip(names, masters, strict=True))
    return state

