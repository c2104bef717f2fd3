"""Recipe "add a negative source" (docs/architecture.md): a source defined and registered in the
caller's own code is built from ``negatives.sources``, merged into the step's negatives, read by
the loss, updated after the step and checkpointed, with no change to any module of the package.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from dist_contrast import losses
from dist_contrast.config import Config
from dist_contrast.negatives import Negatives, NegativeSource, build_negative_pool, registry
from dist_contrast.negatives.collective import collect_negatives
from dist_contrast.negatives.registry import SourceSpec, register_source
from dist_contrast.objectives import ObjectiveInputs, compute_objective


class RecentKeys:
    """A toy source: the keys of the last step only, as a shared pool."""

    def __init__(self, dim: int) -> None:
        self.keys = torch.empty(0, dim)
        self.updates = 0

    def negatives(self, query: Tensor, ids: Tensor, labels: Tensor | None) -> Negatives:
        return Negatives(pool=self.keys, metrics={"recent/size": float(len(self.keys))})

    def update(self, keys: Tensor, ids: Tensor, labels: Tensor | None, step: int) -> None:
        self.keys, self.updates = keys.clone(), self.updates + 1

    def state_dict(self) -> dict[str, Any]:
        return {"keys": self.keys, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.keys, self.updates = state["keys"], state["updates"]


@pytest.fixture(autouse=True)
def _registered() -> Iterator[None]:
    """What the caller's module does once at import; undone so other tests see the built-ins."""
    register_source("recent", SourceSpec(key="recent", build=lambda cfg, ctx: RecentKeys(ctx.dim)))
    yield
    registry._SOURCES.pop("recent")


def _unit(*shape: int) -> Tensor:
    return F.normalize(torch.randn(*shape), dim=-1)


def test_a_registered_source_feeds_the_loss_and_is_checkpointed() -> None:
    cfg = Config.model_validate({"negatives": {"sources": ["batch", "recent"]}})
    pool = build_negative_pool(cfg.negatives, dataset_size=100, dim=8, rank=0, world_size=1)
    source = pool.sources["recent"]
    assert isinstance(source, NegativeSource) and pool.in_batch

    torch.manual_seed(0)
    first_keys = _unit(6, 8)
    pool.update(first_keys, torch.arange(6), None, step=1)
    query, keys = _unit(6, 8).requires_grad_(), _unit(6, 8)
    negatives = collect_negatives(pool, query.detach(), torch.arange(6), None)
    assert torch.equal(negatives.pool, first_keys) and negatives.metrics["recent/size"] == 6

    inputs = ObjectiveInputs(query=query, key=keys, positive_index=torch.arange(6),
                             negatives=negatives)
    got = compute_objective("info_nce", inputs, 0.2)
    want = losses.info_nce(query, keys, first_keys, temperature=0.2)
    torch.testing.assert_close(got, want)

    restored = build_negative_pool(cfg.negatives, dataset_size=100, dim=8, rank=0, world_size=1)
    restored.load_state_dict(pool.state_dict())
    assert torch.equal(restored.sources["recent"].keys, first_keys)  # type: ignore[attr-defined]


def test_an_unregistered_source_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown source 'nope'; choose from batch, queue"):
        Config.model_validate({"negatives": {"sources": ["batch", "nope"]}})
