"""The ``negatives:`` section of the experiment config: which pools feed the loss, and how.

Nested by the top-level :class:`dist_contrast.config.Config`. The settings shared by every
source (the momentum encoder, shuffle-BN) are fields here; each registered source with
settings has its own section, ``negatives.<key>``, validated by the section class its
:class:`~dist_contrast.negatives.registry.SourceSpec` declares and checked by the source's own
checks. Every mistake is a ValueError whose one line names the key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict, Field, ValidationError, model_validator

from dist_contrast.negatives.registry import (
    IN_BATCH,
    CheckContext,
    DescribeContext,
    LossNeeds,
    settings_sections,
    source_names,
    source_spec,
)
from dist_contrast.section import Section


class NegativesConfig(Section):
    """Which negative pools feed the loss (any combination) and their settings.

    The sources' sections are not fields of this class: sources register themselves, so the
    sections are read from the registry when a config is validated, and kept (in registry
    order, after the fields) as the model's extra values. ``cfg.negatives.<key>`` reads one.
    """

    # Unknown keys are still refused (with the allowed ones named) by _sections.
    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    # Any registered source (negatives/registry.py): batch, queue, bank, mined by default.
    sources: list[str] = Field(default_factory=lambda: [IN_BATCH])
    # MoCo key encoder θ_k ← m·θ_k + (1 − m)·θ_q; required by the queue.
    momentum_encoder: bool = False
    momentum: float = Field(default=0.999, ge=0.0, lt=1.0)
    # Shuffle the batch across workers before the key encoder so BatchNorm cannot leak the
    # positive (MoCo); needs the momentum encoder.
    shuffle_bn: bool = False

    if TYPE_CHECKING:
        # A registered source's settings section, ``negatives.<key>``.
        def __getattr__(self, key: str) -> Any: ...

    @model_validator(mode="before")
    @classmethod
    def _sections(cls, data: Any) -> Any:
        """Every registered source's section, validated by its own class (defaults when
        absent); any other key is refused."""
        if not isinstance(data, dict):
            return data
        sections = settings_sections()
        allowed = set(cls.model_fields) | set(sections)
        unknown = [key for key in data if key not in allowed]
        if unknown:
            raise ValueError(
                f"unknown key 'negatives.{unknown[0]}' in section 'negatives'; allowed keys: "
                f"{', '.join(sorted(allowed))}"
            )
        validated = {key: value for key, value in data.items() if key in cls.model_fields}
        for key, (_, section) in sections.items():
            validated[key] = (
                _validate_section(section, key, data[key]) if key in data else section()
            )
        return validated

    @model_validator(mode="after")
    def _check(self) -> NegativesConfig:
        sources = self.sources
        if not sources:
            raise ValueError(
                f"negatives.sources is empty; list at least one of {', '.join(source_names())}"
            )
        if len(set(sources)) != len(sources):
            raise ValueError(f"negatives.sources={list(sources)} repeats a source; list each once")
        for name in sources:
            for needed in source_spec(name).requires:
                if needed not in sources:
                    raise ValueError(
                        f"negatives.sources has {name!r} but not {needed!r}, which it is built "
                        f"on; add '{needed}'"
                    )
        if self.shuffle_bn and not self.momentum_encoder:
            raise ValueError(
                "negatives.shuffle_bn=true shuffles the key encoder's batch; "
                "set negatives.momentum_encoder=true"
            )
        self._run_source_checks(CheckContext(self))
        pools = [spec.shared_pool(self.settings_of(name)) for name in source_names()
                 if name in sources and (spec := source_spec(name)).shared_pool is not None]
        givers = [giver for giver in pools if giver is not None]
        if len(givers) > 1:
            raise ValueError(f"{' and '.join(givers)} all give the shared pool; keep one"
                             if len(givers) > 2 else
                             f"{givers[0]} and {givers[1]} both give the shared pool; keep one")
        return self

    def check_objective(self, loss: LossNeeds) -> None:
        """The objective's needs against the configured sources (the full config calls this:
        the objectives sit above the negatives)."""
        if loss.needs_noise and not any(source_spec(n).draws_noise for n in self.sources):
            providers = [name for name in source_names() if source_spec(name).draws_noise]
            raise ValueError(
                f"loss.name={loss.name} draws its noise from "
                f"{' or '.join(source_spec(name).title for name in providers)}; add "
                f"{' or '.join(repr(name) for name in providers)} to negatives.sources"
            )
        if loss.positive_from_memory:
            keepers = [name for name in source_names() if source_spec(name).keeps_instances]
            if not any(name in self.sources for name in keepers):
                raise ValueError(
                    f"loss.positive=memory reads each instance's own entry in "
                    f"{' or '.join(source_spec(name).title for name in keepers)}; add "
                    f"{' or '.join(repr(name) for name in keepers)} to negatives.sources"
                )
        self._run_source_checks(CheckContext(self, loss))

    def _run_source_checks(self, context: CheckContext) -> None:
        for name in source_names():
            spec = source_spec(name)
            for check in spec.checks:
                check(self.settings_of(name), context)

    def check_config(self, config: Any) -> None:
        """Each configured source's checks against the whole run ``config`` (the full config
        calls this: it sits above the negatives)."""
        for name in self.sources:
            spec = source_spec(name)
            if spec.config_check is not None:
                spec.config_check(self.settings_of(name), config)

    def task_cpus(self) -> float:
        """The CPUs the configured sources' Ray tasks hold beside the training workers."""
        return sum(spec.task_cpus(self.settings_of(name)) for name in self.sources
                   if (spec := source_spec(name)).task_cpus is not None)

    def data_problem(self, train_size: int) -> str | None:
        """What is wrong with a configured source's settings for ``train_size`` training rows
        (one line naming the setting and the fix), or None."""
        for name in self.sources:
            spec = source_spec(name)
            if spec.data_check is not None:
                problem = spec.data_check(self.settings_of(name), train_size)
                if problem is not None:
                    return problem
        return None

    def settings_of(self, name: str) -> Any:
        """The settings section of source ``name`` (None when it has none)."""
        spec = source_spec(name)
        return getattr(self, spec.key) if spec.settings is not None else None

    def describe(self, rows: int | None, global_batch: int) -> str:
        """The configured sources in a run's description: "global batch (512 keys) + queue
        (65,536 keys, replicated)"."""
        context = DescribeContext(rows, global_batch)
        parts = []
        for name in self.sources:
            spec = source_spec(name)
            parts.append(spec.describe(self.settings_of(name), context) if spec.describe
                         else spec.title or name)
        return " + ".join(parts) or "none"

    @property
    def in_batch(self) -> bool:
        """Whether the other keys of the global batch are negatives."""
        return IN_BATCH in self.sources

    @property
    def stateful(self) -> list[str]:
        """The configured sources that keep state (a pool to build), in build order."""
        return [name for name in source_names()
                if name in self.sources and source_spec(name).build is not None]


def _validate_section(section: type[Section], key: str, value: Any) -> Section:
    """``value`` validated as ``negatives.<key>``; a mistake is one line naming the key, worded
    as the config's own messages are."""
    if isinstance(value, section):
        return value
    try:
        return section.model_validate(value)
    except ValidationError as exc:
        raise ValueError(_describe(exc, f"negatives.{key}", section)) from None


def _describe(exc: ValidationError, prefix: str, section: type[Section]) -> str:
    err = exc.errors()[0]
    key = ".".join([prefix, *(str(part) for part in err["loc"])])
    if err["type"] == "extra_forbidden":
        allowed = ", ".join(sorted(section.model_fields))
        return f"unknown key '{key}' in section '{prefix}'; allowed keys: {allowed}"
    if err["type"] == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{key}: {err['msg']}{shown}"


# The built-in sources' sections, where they were defined before each source became one module
# (``from dist_contrast.negatives.config import MinerConfig`` keeps working).
from dist_contrast.negatives.bank import BankConfig  # noqa: E402
from dist_contrast.negatives.corpus import CorpusConfig  # noqa: E402
from dist_contrast.negatives.mined import MinerConfig  # noqa: E402
from dist_contrast.negatives.queue import QueueConfig  # noqa: E402

__all__ = ["BankConfig", "CorpusConfig", "MinerConfig", "NegativesConfig", "QueueConfig"]
