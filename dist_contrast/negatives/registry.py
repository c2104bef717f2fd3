"""The negative sources ``negatives.sources`` can name, and how each is built.

A source is registered once, with the function that builds it from the ``negatives:`` config and
a :class:`SourceContext`. :func:`~dist_contrast.negatives.pool.build_negative_pool` builds the
configured ones in registration order, which is also the order they absorb the keys after a
step (a miner reads the bank it indexes, so the bank comes first). Adding a source is one module
that defines it and calls :func:`register_source` (see ``docs/architecture.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from dist_contrast.negatives.base import NegativeSource
    from dist_contrast.negatives.config import NegativesConfig


@dataclass(frozen=True)
class SourceContext:
    """What a source may need beyond its config: sizes, placement, seeds, and the sources
    built before it (by key)."""

    dataset_size: int
    dim: int
    rank: int = 0
    world_size: int = 1
    device: torch.device | str = "cpu"
    seed: int = 0
    # False when the loss reads no NCE noise: the bank then draws none (B·m·D unused floats).
    nce_noise: bool = True
    built: dict[str, Any] = field(default_factory=dict)


SourceBuilder = Callable[["NegativesConfig", SourceContext], "NegativeSource"]


@dataclass(frozen=True)
class SourceSpec:
    """How to build one source. ``build`` None: the source is not stateful (``batch``: the
    other keys of the trainer's gathered batch). ``key`` names it in the pool and its
    checkpoint; ``requires`` lists sources that must be configured with it."""

    key: str
    build: SourceBuilder | None = None
    requires: tuple[str, ...] = ()


_SOURCES: dict[str, SourceSpec] = {}


def register_source(name: str, spec: SourceSpec, *, replace: bool = False) -> None:
    """Make ``spec`` selectable in ``negatives.sources`` as ``name``."""
    if name in _SOURCES and not replace:
        raise ValueError(f"a negative source named {name!r} is already registered")
    _SOURCES[name] = spec


def source_names() -> tuple[str, ...]:
    """Every registered source, in build and update order."""
    return tuple(_SOURCES)


def source_spec(name: str) -> SourceSpec:
    if name not in _SOURCES:
        raise ValueError(
            f"negatives.sources has unknown source {name!r}; choose from {', '.join(_SOURCES)}"
        )
    return _SOURCES[name]


register_source("batch", SourceSpec(key="batch"))
