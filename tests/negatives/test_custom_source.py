"""Recipe "add a negative source" (docs/architecture.md): a source defined and registered in the
caller's own code is built from ``negatives.sources``, merged into the step's negatives, read by
the loss, updated after the step and checkpointed, with no change to any module of the package;
a source with settings brings its own section (``negatives.<key>``), its checks and its memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from dist_contrast import losses, preflight
from dist_contrast.config import Config, load_config, to_yaml
from dist_contrast.errors import UserError
from dist_contrast.negatives import Negatives, NegativeSource, build_negative_pool
from dist_contrast.negatives.collective import collect_negatives
from dist_contrast.negatives.registry import (
    CheckContext,
    MemoryContext,
    MemoryTerm,
    SourceContext,
    SourceSpec,
    register_source,
    unregister_source,
)
from dist_contrast.objectives import ObjectiveInputs, compute_objective
from dist_contrast.section import Section


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


class RecentConfig(Section):
    """The settings of a toy source with settings: ``negatives.recent_window.size``."""

    # Keys kept: the newest ``size`` of the last global batch.
    size: int = Field(default=4, ge=1)
    # Re-normalise the kept keys (on by default).
    normalize: bool = True


class RecentWindow(RecentKeys):
    """A toy source with settings: the newest ``size`` keys of the last step."""

    def __init__(self, settings: RecentConfig, dim: int) -> None:
        super().__init__(dim)
        self.size, self.normalize = settings.size, settings.normalize

    def update(self, keys: Tensor, ids: Tensor, labels: Tensor | None, step: int) -> None:
        kept = keys[-self.size:]
        super().update(F.normalize(kept, dim=1) if self.normalize else kept, ids, labels, step)


def _window(settings: RecentConfig, context: SourceContext) -> RecentWindow:
    return RecentWindow(settings, context.dim)


def _window_needs_momentum_keys(settings: RecentConfig, context: CheckContext) -> None:
    if context.configured("recent_window") and not context.negatives.momentum_encoder:
        raise ValueError("negatives.sources has 'recent_window'; set negatives.momentum_encoder"
                         "=true (it keeps momentum-encoder keys)")


def _window_memory(settings: RecentConfig, context: MemoryContext) -> list[MemoryTerm]:
    return [MemoryTerm(f"the recent window (negatives.recent_window.size={settings.size})",
                       settings.size * context.dim * 4, "lower negatives.recent_window.size",
                       on_device=True)]


@pytest.fixture(autouse=True)
def _registered() -> Iterator[None]:
    """What the caller's module does once at import; undone so other tests see the built-ins."""
    register_source("recent", SourceSpec(key="recent", build=lambda cfg, ctx: RecentKeys(ctx.dim)))
    register_source("recent_window", SourceSpec(
        key="recent_window", build=_window, settings=RecentConfig,
        checks=(_window_needs_momentum_keys,), shared_pool=lambda settings: "'recent_window'",
        memory=_window_memory,
    ))
    yield
    unregister_source("recent")
    unregister_source("recent_window")


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


# ----------------------------------------------------------------------------- with settings


def _yaml(tmp_path: Path, negatives: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(f"negatives:\n{negatives}")
    return path


WINDOW = """  sources: [batch, recent_window]
  momentum_encoder: true
  recent_window:
    size: 3
"""


def test_a_source_with_settings_validates_and_builds_from_its_section(tmp_path: Path) -> None:
    cfg = load_config(_yaml(tmp_path, WINDOW), ["negatives.recent_window.normalize=false"])
    settings = cfg.negatives.recent_window
    assert isinstance(settings, RecentConfig)
    assert (settings.size, settings.normalize) == (3, False)
    # The section is part of the resolved config, after the built-ins' sections.
    dumped = cfg.model_dump(mode="json")["negatives"]
    assert list(dumped)[-1] == "recent_window"
    assert dumped["recent_window"] == {"size": 3, "normalize": False}
    assert "recent_window:\n    size: 3\n    normalize: false" in to_yaml(cfg)
    # Unconfigured, it still has its defaults (as the queue's settings do without a queue).
    assert Config().negatives.recent_window == RecentConfig()

    pool = build_negative_pool(cfg.negatives, dataset_size=100, dim=8, rank=0, world_size=1)
    window = pool.sources["recent_window"]
    assert isinstance(window, RecentWindow) and window.size == 3 and not window.normalize
    keys = _unit(6, 8) * 2
    pool.update(keys, torch.arange(6), None, step=1)
    negatives = collect_negatives(pool, _unit(6, 8), torch.arange(6), None)
    assert torch.equal(negatives.pool, keys[-3:])  # the newest 3, not re-normalised


@pytest.mark.parametrize(("override", "message"), [
    ("negatives.recent_window.size=0",
     "exp.yaml: negatives.recent_window.size: Input should be greater than or equal to 1 "
     "(got 0)"),
    ("negatives.recent_window.size=many",
     "exp.yaml: negatives.recent_window.size: Input should be a valid integer, unable to parse "
     "string as an integer (got 'many')"),
    ("negatives.recent_window.sise=5",
     "exp.yaml: unknown key 'negatives.recent_window.sise' in section "
     "'negatives.recent_window'; allowed keys: normalize, size"),
    ("negatives.momentum_encoder=false",
     "exp.yaml: negatives.sources has 'recent_window'; set negatives.momentum_encoder=true "
     "(it keeps momentum-encoder keys)"),
])
def test_a_bad_setting_is_one_line_naming_the_key(
    tmp_path: Path, override: str, message: str
) -> None:
    with pytest.raises(UserError) as raised:
        load_config(_yaml(tmp_path, WINDOW), [override])
    assert str(raised.value).replace(str(tmp_path) + "/", "") == message


def test_an_unknown_section_names_every_registered_one(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"unknown key 'negatives.recent_windw' in section "
                       r"'negatives'; allowed keys: bank, .*recent_window, shuffle_bn, sources"):
        load_config(_yaml(tmp_path, WINDOW), ["negatives.recent_windw.size=2"])


def test_two_shared_pools_are_refused_by_what_the_specs_declare() -> None:
    with pytest.raises(ValueError, match="'queue' and 'recent_window' both give the shared pool"):
        Config.model_validate({"negatives": {"sources": ["queue", "recent_window"],
                                             "momentum_encoder": True}})


def test_its_memory_counts_in_the_pre_start_estimate() -> None:
    cfg = Config.model_validate({
        "negatives": {"sources": ["batch", "recent_window"], "momentum_encoder": True,
                      "recent_window": {"size": 1000}},
        "model": {"embedding_dim": 32}, "trainer": {"num_workers": 1},
    })
    terms = {term.what: term for term in
             preflight.estimate_memory(cfg, train_size=500, input_shape=(16,))}
    term = terms["the recent window (negatives.recent_window.size=1000)"]
    assert term.bytes == 1000 * 32 * 4 and term.on_device
