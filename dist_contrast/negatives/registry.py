"""The negative sources ``negatives.sources`` can name: each one's settings, checks and builder.

A source is one module that defines its pool, its settings section and a :class:`SourceSpec`,
and calls :func:`register_source` (see ``docs/architecture.md``, "Add a negative source"). Its
settings live at ``negatives.<key>`` in the config and are validated by its section class; its
checks relate them to the rest of the config; its memory terms feed the pre-start memory
check. Nothing outside the source's module and this registry names a source.

:func:`~dist_contrast.negatives.pool.build_negative_pool` builds the configured sources in
:func:`source_names` order, which is also the order they absorb the keys after a step (a miner
reads the bank it indexes, so the bank comes first).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from dist_contrast.section import Section

if TYPE_CHECKING:
    from dist_contrast.negatives.base import NegativeSource
    from dist_contrast.negatives.config import NegativesConfig

#: Where a pool's rows live: every worker holds them all, or worker r holds its 1/W share.
Layout = Literal["replicated", "sharded"]

#: The source that is the other keys of the trainer's gathered batch (no state, no settings).
IN_BATCH = "batch"
# The built-in sources, in build and update order; sources registered later follow them.
_BUILT_IN_ORDER = (IN_BATCH, "queue", "bank", "mined")


@dataclass(frozen=True)
class SourceContext:
    """What a source may need beyond its settings: sizes, placement, seeds, and the sources
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


@dataclass(frozen=True)
class LossNeeds:
    """What the configured objective reads from the sources (declared in ``objectives.py``,
    handed in by the config: the negatives sit below the objectives)."""

    name: str
    # NCE: noise entries drawn per query, and the normaliser Z.
    needs_noise: bool = False
    # It can join a pool sharded across workers through the pool's log-sum-exp.
    sharded_pool: bool = False
    # Its positive is each instance's own entry in a source that keeps one (``loss.positive``).
    positive_from_memory: bool = False


@dataclass(frozen=True)
class CheckContext:
    """What a source's checks see: the whole ``negatives:`` section, and the objective's
    needs once the full config is validated (None while the section is validated alone)."""

    negatives: NegativesConfig
    loss: LossNeeds | None = None

    def configured(self, name: str) -> bool:
        return name in self.negatives.sources


@dataclass(frozen=True)
class MemoryContext:
    """What a source's memory estimate may read: one worker's share of the run."""

    train_size: int
    dim: int
    workers: int
    batch_size: int
    loss: LossNeeds


@dataclass(frozen=True)
class MemoryTerm:
    """One part of a worker's memory: what it is, its bytes, how to shrink it."""

    what: str
    bytes: int
    fix: str
    # GPU-resident when the workers train on GPUs (then not counted against host memory).
    on_device: bool = False


@dataclass(frozen=True)
class ResumeContext:
    """What a check of a checkpoint's pool against the config may read."""

    dim: int
    workers: int
    train_size: int | None


SourceBuilder = Callable[[Any, SourceContext], "NegativeSource"]
# Each raises ValueError naming the keys when the settings cannot work with the rest.
SourceCheck = Callable[[Any, CheckContext], None]


@dataclass(frozen=True)
class DescribeContext:
    """What a source's description may mention: the training rows (None: unknown) and the
    keys of one global batch."""

    rows: int | None
    global_batch: int


@dataclass(frozen=True)
class SourceSpec:
    """One negative source.

    ``key`` names it in the pool, in its checkpoint and as its settings section
    (``negatives.<key>``). ``settings`` is that section's class (a :class:`Section`; None: the
    source has no settings). ``build(settings, context)`` makes the pool (None: the source is
    not stateful, e.g. the batch's other keys). ``requires`` lists sources that must be
    configured with it. ``checks(settings, context)`` run for every registered source,
    configured or not (settings that need the source can say so), when the ``negatives:``
    section is validated and again with the objective's needs. The rest are optional
    declarations that the config and the pre-start check read:

    - ``title``: what the source is, in messages ("the memory bank").
    - ``draws_noise``: it draws the noise an NCE objective reads.
    - ``keeps_instances``: it keeps one entry per dataset instance (an
      :class:`~dist_contrast.negatives.base.InstanceMemory`), which an objective may take as
      the positive (``loss.positive=memory``).
    - ``shared_pool(settings)``: when it gives the step's shared pool, what says so
      ("'queue'", "negatives.bank.as_pool=true"); else None. At most one configured source may.
    - ``memory(settings, context)``: the memory it holds per worker, as :class:`MemoryTerm`.
    - ``per_query(settings, context)``: each query's negatives it adds to a step, and the
      setting that lowers them: ``(count, "negatives.<key>.<field>")``, or None.
    - ``sharding(settings, loss)``: the setting that would shard it and the settings with it,
      ``("negatives.<key>.layout=sharded", sharded_settings)``, or None.
    - ``resume_check(settings, state, context)``: what is wrong with a checkpoint's state of
      this source for this config (one clause, "has a queue of 10 keys, ..."), or None.
    - ``data_check(settings, train_size)``: what is wrong with the settings for a training
      set of ``train_size`` rows (one line naming the setting and the fix), or None.
    - ``describe(settings, context)``: the source in a run's description ("queue (65,536
      keys, replicated)"); default: its title.
    - ``task_cpus(settings)``: the CPUs its Ray tasks hold beside the training workers (the
      cluster must have them too; a local runtime makes room for them).
    - ``config_check(settings, config)``: when configured, a check against the whole run
      config (its data, model and trainer), raising ValueError naming the keys.
    """

    key: str
    build: SourceBuilder | None = None
    requires: tuple[str, ...] = ()
    settings: type[Section] | None = None
    checks: tuple[SourceCheck, ...] = ()
    title: str = ""
    draws_noise: bool = False
    keeps_instances: bool = False
    shared_pool: Callable[[Any], str | None] | None = None
    memory: Callable[[Any, MemoryContext], list[MemoryTerm]] | None = None
    per_query: Callable[[Any, MemoryContext], tuple[int, str] | None] | None = None
    sharding: Callable[[Any, LossNeeds], tuple[str, Section] | None] | None = None
    resume_check: Callable[[Any, dict[str, Any], ResumeContext], str | None] | None = None
    data_check: Callable[[Any, int], str | None] | None = None
    describe: Callable[[Any, DescribeContext], str] | None = None
    config_check: Callable[[Any, Any], None] | None = None
    task_cpus: Callable[[Any], float] | None = None


_SOURCES: dict[str, SourceSpec] = {}


def register_source(name: str, spec: SourceSpec, *, replace: bool = False) -> None:
    """Make ``spec`` selectable in ``negatives.sources`` as ``name``, its settings (if any) at
    ``negatives.<spec.key>``."""
    if name in _SOURCES and not replace:
        raise ValueError(f"a negative source named {name!r} is already registered")
    taken = {other.key: other_name for other_name, other in _SOURCES.items() if other_name != name}
    if spec.key in taken:
        raise ValueError(f"negative source {name!r} has key {spec.key!r}, already the key of "
                         f"{taken[spec.key]!r}; choose another")
    _SOURCES[name] = spec


def unregister_source(name: str) -> None:
    """Forget ``name`` (for tests that register a source of their own)."""
    _SOURCES.pop(name, None)


def source_names() -> tuple[str, ...]:
    """Every registered source, in build and update order: the built-ins, then the others in
    registration order."""
    def order(name: str) -> int:
        return _BUILT_IN_ORDER.index(name) if name in _BUILT_IN_ORDER else len(_BUILT_IN_ORDER)

    return tuple(sorted(_SOURCES, key=order))  # sorted is stable: registration order after


def source_spec(name: str) -> SourceSpec:
    if name not in _SOURCES:
        choices = ", ".join(source_names())
        raise ValueError(f"negatives.sources has unknown source {name!r}; choose from {choices}")
    return _SOURCES[name]


def settings_sections() -> dict[str, tuple[str, type[Section]]]:
    """``{key: (name, section class)}`` of every registered source with settings, in
    :func:`source_names` order: the sections ``negatives:`` holds."""
    sections = {}
    for name in source_names():
        spec = _SOURCES[name]
        if spec.settings is not None:
            sections[spec.key] = (name, spec.settings)
    return sections


register_source(IN_BATCH, SourceSpec(
    key=IN_BATCH, title="the global batch's other keys",
    describe=lambda settings, context: f"global batch ({context.global_batch:,} keys)",
))
