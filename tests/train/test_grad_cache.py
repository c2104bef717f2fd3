"""GradCache through the real step and real DeepSpeed engines, in float64: the update of a step
with ``trainer.grad_cache`` equals the update without it (same batch, same dropout masks) to
1e-10 relative, in one process and in two gloo processes, under ZeRO 0 and 2; two processes
with GradCache give the single process's gradient of the whole batch (each worker's rows get
their own gradient back); the engine reduces and steps once per batch however many chunks; the
dropout replay is what makes it exact; a learnable τ gets its gradient too."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.gloo import run_distributed

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
GLOBAL_BATCH = 16
CHUNK = 3  # uneven: 16 rows are chunks of 3, 3, 3, 3, 3, 1


Mode = tuple[int | None, bool]  # GradCache's chunk size (None: off), and whether it replays
PLAIN: Mode = (None, True)
CACHED: Mode = (CHUNK, True)


def _updates(world_size: int, overrides: list[str], modes: list[Mode]) -> list[dict[str, Any]]:
    """:func:`_update` in each mode, one after the other in this process (a fresh engine
    each)."""
    return [_update(world_size, overrides, chunk, replay) for chunk, replay in modes]


def _update(world_size: int, overrides: list[str], chunk: int | None,
            replay: bool = True) -> dict[str, Any]:
    """Three steps on this rank's rows of the first 16; the third step's update divided by its
    learning rate (SGD without momentum: the gradient), and the engine's counters.

    DeepSpeed's warm-up gives the first two steps no learning rate, so the third starts from
    the initial weights; both modes draw the same random numbers in every step."""
    from dist_contrast import dist
    from dist_contrast.config import load_config
    from dist_contrast.data import build_data
    from dist_contrast.models import build_model
    from dist_contrast.train import grad_cache
    from dist_contrast.train.worker import build_engine, build_step

    os.environ["DS_ACCELERATOR"] = "cpu"
    os.environ["LOCAL_RANK"] = str(dist.rank())
    _reduce_float64()
    batch_size = GLOBAL_BATCH // world_size
    cache = [f"trainer.grad_cache={{chunk_size: {chunk}}}"] if chunk else []
    cfg = load_config(CONFIGS / "synthetic.yaml", [
        "data.num_samples=64", "model.hidden_dim=24", "model.embedding_dim=8",
        "model.num_layers=1", "model.batch_norm=false", "optimizer.name=sgd",
        "optimizer.lr=1.0", "optimizer.momentum=0", "optimizer.weight_decay=0",
        "optimizer.warmup_steps=0", "deepspeed.gradient_clipping=0",
        f"trainer.num_workers={world_size}", f"trainer.batch_size={batch_size}",
        "trainer.max_steps=5", *cache, *overrides,
    ])
    torch.manual_seed(0)
    data = build_data(cfg.data, seed=0)
    encoder = build_model(cfg.model, data.input_shape).double()
    engine = build_engine(cfg, encoder)
    engine.module.double()
    engine.communication_data_type = torch.float64  # DeepSpeed reduces in float32 by default
    step = build_step(cfg, engine, data, encoder)
    rows = list(range(dist.rank() * batch_size, (dist.rank() + 1) * batch_size))
    batch = torch.utils.data.default_collate(data.train.__getitems__(rows))
    batch = {k: v.double() if torch.is_floating_point(v) else v for k, v in batch.items()}
    reductions = 0
    reduce = engine.buffered_allreduce_fallback

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal reductions
        reductions += 1
        return reduce(*args, **kwargs)

    engine.buffered_allreduce_fallback = counted

    def flat() -> np.ndarray:
        return torch.cat([p.detach().flatten()
                          for p in engine.module.parameters()]).numpy().copy()

    with contextlib.nullcontext() if replay else _replay_removed(grad_cache):
        lrs = []
        for index in range(3):
            lrs.append(engine.get_lr()[0])
            before = flat()
            second = step(batch, index)
    lr = lrs[-1]
    assert lrs[:2] == [0.0, 0.0] and lr > 0
    return {"gradient": (before - flat()) / lr, "loss": second["train/loss"],
            "global_steps": engine.global_steps, "micro_steps": engine.micro_steps,
            "reductions": reductions, "dtype": str(next(engine.module.parameters()).dtype)}


def _reduce_float64() -> None:
    """DeepSpeed's CPU accelerator lists float32, bf16 and fp16 as the dtypes it reduces; its
    reduction itself (flatten, all-reduce, unflatten) is dtype-agnostic, and float64 is what
    lets a gradient be compared to 1e-10."""
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    dtypes = accelerator.supported_dtypes()
    if torch.float64 not in dtypes:
        accelerator.supported_dtypes = lambda: [*dtypes, torch.float64]


@contextlib.contextmanager
def _replay_removed(grad_cache: Any) -> Iterator[None]:
    """GradCache without its dropout replay: the second pass draws new masks."""
    original = grad_cache.RandomState.replayed

    @contextlib.contextmanager
    def fresh(self: Any, device: Any) -> Iterator[None]:
        yield

    grad_cache.RandomState.replayed = fresh
    try:
        yield
    finally:
        grad_cache.RandomState.replayed = original


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


DROPOUT = ["model.dropout=0.3"]
# ZeRO 1 and 2 keep the master weights and the reduced gradient partitions in float32 whatever
# the parameters' dtype (DeepSpeed's master_weights_and_grads_dtype): the chunks' gradients are
# summed there in float32 (measured 6.6e-8 relative for 6 chunks), while ZeRO 0 sums them in
# the parameters' float64 .grad.
TOLERANCE = {0: 1e-10, 2: 1e-6}


@pytest.mark.parametrize("zero_stage", [0, 2])
@pytest.mark.parametrize("world_size", [1, 2])
def test_the_update_equals_the_whole_batch_s_with_dropout(world_size: int,
                                                          zero_stage: int) -> None:
    overrides = [*DROPOUT, f"deepspeed.zero_stage={zero_stage}"]
    ranks = run_distributed(_updates, world_size, overrides, [PLAIN, CACHED],
                            world_size=world_size)
    for reference, mine in ranks:
        assert mine["dtype"] == "torch.float64"
        assert np.linalg.norm(reference["gradient"]) > 1e-3  # a real update
        assert _relative(mine["gradient"], reference["gradient"]) < TOLERANCE[zero_stage]
        assert mine["loss"] == pytest.approx(reference["loss"], rel=1e-12)
        # One optimiser step per batch, not one per chunk.
        assert mine["global_steps"] == mine["micro_steps"] == 3
        if zero_stage == 0:  # gradients reduced once per batch (6 chunks on each side)
            assert mine["reductions"] == reference["reductions"] == 3


def test_two_workers_with_gradcache_give_the_one_process_gradient() -> None:
    """Without dropout the 2-process gradient is the 1-process one of all 16 rows: a worker
    whose rows got another worker's gradient (or none) would move elsewhere."""
    ((one,),) = run_distributed(_updates, 1, [], [PLAIN], world_size=1)
    two = run_distributed(_updates, 2, [], [CACHED], world_size=2)
    for (rank,) in two:
        assert _relative(rank["gradient"], one["gradient"]) < 1e-10


def test_without_the_replay_the_gradient_is_not_the_batch_s() -> None:
    ((plain, unreplayed),) = run_distributed(_updates, 1, DROPOUT, [PLAIN, (CHUNK, False)],
                                             world_size=1)
    assert _relative(unreplayed["gradient"], plain["gradient"]) > 1e-3


def test_a_learnable_temperature_gets_its_gradient() -> None:
    learnable = ["loss.temperature_mode=learnable", "loss.temperature_min=0.01",
                 "loss.temperature_max=1.0"]
    ((plain, cached),) = run_distributed(_updates, 1, learnable, [PLAIN, CACHED], world_size=1)
    assert abs(plain["gradient"][-1]) > 1e-6  # log τ, the last parameter, moved
    assert _relative(cached["gradient"], plain["gradient"]) < 1e-10


def test_batch_norm_is_refused_with_one_line() -> None:
    from dist_contrast.config import load_config
    from dist_contrast.errors import UserError

    with pytest.raises(UserError, match="model.batch_norm=false"):
        load_config(CONFIGS / "synthetic.yaml",
                    ["trainer.grad_cache={chunk_size: 8}", "model.batch_norm=true"])


def _pools_both(overrides: list[str]) -> list[dict[str, Any]]:
    """:func:`_pools_after` without GradCache and with chunks of 5, in this process."""
    return [_pools_after(overrides, chunk) for chunk in (None, 5)]


def _pools_after(overrides: list[str], chunk: int | None) -> dict[str, Any]:
    """Four steps in one process (float32); the pools' state, the momentum encoder and the
    weights afterwards. One dropout layer: a chunk then draws the masks the whole batch draws
    (with several, the whole batch draws layer by layer and the chunks chunk by chunk, so the
    masks differ, equally random, and the gradient is exact for the masks drawn)."""
    from dist_contrast import dist
    from dist_contrast.config import load_config
    from dist_contrast.data import build_data, make_loader
    from dist_contrast.models import build_model
    from dist_contrast.train.worker import build_engine, build_step

    os.environ["DS_ACCELERATOR"] = "cpu"
    os.environ["LOCAL_RANK"] = str(dist.rank())
    cache = [f"trainer.grad_cache={{chunk_size: {chunk}}}"] if chunk else []
    cfg = load_config(CONFIGS / "synthetic.yaml", [
        "data.num_samples=200", "model.hidden_dim=24", "model.embedding_dim=8",
        "model.num_layers=1", "model.dropout=0.2", "trainer.num_workers=1",
        "trainer.batch_size=16",
        "trainer.max_steps=6", "optimizer.warmup_steps=1", *cache, *overrides,
    ])
    torch.manual_seed(0)
    data = build_data(cfg.data, seed=0)
    encoder = build_model(cfg.model, data.input_shape)
    engine = build_engine(cfg, encoder)
    step = build_step(cfg, engine, data, encoder)
    loader = make_loader(data.train, batch_size=16, rank=0, world_size=1, seed=0, epoch=0,
                         drop_last=True)
    for index, batch in zip(range(4), loader, strict=False):
        step(batch, index)
    assert step.pool is not None
    tensors = {f"pool/{name}/{key}": value.float().numpy().copy()
               for name, state in step.pool.state_dict().items()
               for key, value in state.items() if isinstance(value, torch.Tensor)}
    if step.momentum_encoder is not None:
        tensors["momentum"] = torch.cat([p.detach().flatten() for p in
                                         step.momentum_encoder.parameters()]).float().numpy()
    tensors["weights"] = torch.cat([p.detach().flatten()
                                    for p in engine.module.parameters()]).float().numpy()
    return tensors


@pytest.mark.parametrize("overrides", [
    ["negatives.sources=[batch,queue]", "negatives.momentum_encoder=true",
     "negatives.queue.size=48"],
    ["negatives.sources=[batch,bank]"],
    ["negatives.sources=[batch,queue]", "negatives.momentum_encoder=true",
     "negatives.queue.size=48", "deepspeed.zero_stage=1", "deepspeed.precision=bf16"],
], ids=["momentum-queue", "bank", "zero1-bf16"])
def test_the_pools_and_the_momentum_encoder_see_what_they_see_without_it(
    overrides: list[str],
) -> None:
    ((plain, cached),) = run_distributed(_pools_both, overrides, world_size=1)
    assert plain.keys() == cached.keys() and len(plain) > 2
    # float32 through four Adam steps, the rows summed in chunks (measured: at most 2.4e-7);
    # bf16 rounds each chunk's embeddings and gradients to 8 bits of mantissa (measured: the
    # weights within 4.9e-4, one bf16 step at their size; the queue's keys equal).
    tolerance = 3e-3 if "deepspeed.precision=bf16" in overrides else 1e-4
    for name, value in plain.items():
        assert np.abs(value).max() > 0, name
        np.testing.assert_allclose(cached[name], value, rtol=tolerance, atol=tolerance,
                                   err_msg=name)
