"""The ``corpus`` source: hard negatives re-mined from a corpus during training (ANCE).

Every ``every_steps`` steps a snapshot of the encoder's weights encodes the corpus (document
tower) and the training queries (query tower) while training goes on; FAISS ranks the corpus
for each training row and the false-negative filter of ``dist-contrast mine``
(:mod:`dist_contrast.retrieval.mining`) keeps ``num_candidates`` per row. ``swap_after`` steps
after it started, the new candidates replace the old ones at a step boundary, on every worker
at once. Each step, every query draws ``per_query`` of its row's candidates; their texts are
encoded by the document tower inside the step, with gradient, as a pairs file's own negatives
are (DPR, ANCE). The re-miner itself is :class:`~dist_contrast.train.remining.CorpusMiner`;
this module holds its settings (``negatives.corpus``) and checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from dist_contrast.negatives.registry import SourceSpec, register_source
from dist_contrast.paths import OptionalConfigPath, is_uri
from dist_contrast.retrieval.mining import MiningRule
from dist_contrast.section import Section

NAME = "corpus"
KEY = "corpus"
# MiningRule's words (the mine command's options) and this section's keys.
_OPTION_KEYS = (("--num-negatives", f"negatives.{KEY}.num_candidates"),
                ("--range-min", f"negatives.{KEY}.range_min"),
                ("--range-max", f"negatives.{KEY}.range_max"),
                ("--relative-margin", f"negatives.{KEY}.relative_margin"),
                ("--margin", f"negatives.{KEY}.margin"),
                ("--sampling", f"negatives.{KEY}.sampling"))


class CorpusConfig(Section):
    """Re-mining hard negatives from a corpus with the model being trained."""

    # The documents: a .jsonl or .parquet file of id and text; unset, the training pairs'
    # distinct positives. The training rows' positives are never a row's negatives.
    file: OptionalConfigPath = None
    # A refresh starts after every every_steps steps (the first after step every_steps).
    every_steps: int = Field(default=1000, ge=1)
    # Steps after a refresh starts that its negatives swap in; the run waits there if the
    # encoding is not done. 0: at once (training waits for every refresh). Default:
    # every_steps (each refresh encodes while the previous one's negatives are in use).
    swap_after: int | None = Field(default=None, ge=0)
    # The negatives before the first refresh: none (other rows' positives at random, as
    # without this source), model (mined with the initial weights before step 1), bm25.
    first: Literal["none", "model", "bm25"] = "none"
    # Mined negatives each query encodes per step (with gradient, by the document tower).
    per_query: int = Field(default=1, ge=1)
    # What a refresh keeps per row (the step draws per_query of them), and the filter:
    # dist-contrast mine's --num-negatives, --range-min/--range-max, --margin,
    # --relative-margin and --sampling.
    num_candidates: int = Field(default=16, ge=1)
    range_min: int = Field(default=0, ge=0)
    range_max: int = Field(default=50, ge=1)
    margin: float | None = None
    relative_margin: float | None = None
    sampling: Literal["top", "random"] = "top"
    # Ray tasks encoding a refresh's shards at a time, cpus_per_task CPUs each (the cluster
    # must have them beside the training workers); 0: a background thread in worker 0.
    workers: int = Field(default=0, ge=0)
    cpus_per_task: float = Field(default=1.0, gt=0.0)
    shard_size: int = Field(default=4096, ge=1)
    batch_size: int = Field(default=256, ge=1)

    @property
    def swap_delay(self) -> int:
        return self.every_steps if self.swap_after is None else self.swap_after

    def rule(self, seed: int = 0) -> MiningRule:
        return MiningRule(num_negatives=self.num_candidates, range_min=self.range_min,
                          range_max=self.range_max, margin=self.margin,
                          relative_margin=self.relative_margin, sampling=self.sampling,
                          seed=seed)

    @model_validator(mode="after")
    def _check(self) -> CorpusConfig:
        try:
            self.rule().check()
        except ValueError as exc:
            message = str(exc)
            for option, key in _OPTION_KEYS:
                message = message.replace(option, key)
            raise ValueError(message) from None
        if self.swap_delay > self.every_steps:
            raise ValueError(f"negatives.{KEY}.swap_after={self.swap_after} exceeds "
                             f"every_steps={self.every_steps}: a refresh must swap in before "
                             "the next one starts")
        if self.per_query > self.num_candidates:
            raise ValueError(f"negatives.{KEY}.per_query={self.per_query} exceeds "
                             f"num_candidates={self.num_candidates}; keep more candidates")
        return self


def _config_check(settings: CorpusConfig, cfg: Any) -> None:
    """The run's data must be text pairs held whole, without negatives of their own."""
    if not cfg.data.yields_text:
        raise ValueError(f"negatives.sources has '{NAME}', which mines texts; use "
                         "data.name=pairs with a text encoder")
    params = cfg.data.params
    if params.get("stream"):
        raise ValueError(f"negatives.sources has '{NAME}', which mines for every training row "
                         "and so holds them all; drop data.params.stream")
    if params.get("hard_negatives"):
        raise ValueError(f"negatives.sources has '{NAME}', which gives each query "
                         f"negatives.{KEY}.per_query negatives; drop "
                         "data.params.hard_negatives (the file's own negatives are not used)")


def _data_check(settings: CorpusConfig, train_size: int) -> str | None:
    if settings.file is None or is_uri(settings.file):
        return None
    path = Path(settings.file)
    if path.suffix.lower() not in (".jsonl", ".parquet"):
        return (f"negatives.{KEY}.file={settings.file} must be a .jsonl or .parquet file of id "
                "and text")
    if not path.is_file():
        return f"negatives.{KEY}.file={settings.file} not found (or not a file); check the path"
    return None


def _describe(settings: CorpusConfig, context: Any) -> str:
    where = Path(settings.file).name if settings.file else "the training positives"
    return (f"corpus ({settings.per_query} per query from {where}, re-mined every "
            f"{settings.every_steps:,} steps)")


register_source(NAME, SourceSpec(
    key=KEY, settings=CorpusConfig, title="hard negatives re-mined from a corpus",
    config_check=_config_check, data_check=_data_check, describe=_describe,
    task_cpus=lambda settings: settings.workers * settings.cpus_per_task,
    per_query=lambda settings, context: (settings.per_query, f"negatives.{KEY}.per_query"),
))
