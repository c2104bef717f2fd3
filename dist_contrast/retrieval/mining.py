"""Choosing hard negatives from a ranked corpus: the rank window, the false-negative margins,
sampling, and the de-duplication against the positives. Pure functions, no model.

For one query (row) with its positive's score ``p`` and the corpus ranked by score:

1. every document that is one of the query's positives is dropped, by id (any positive of
   the same query text) and by text (after :func:`text_key`: case and spacing ignored); so are
   repeats of a text already seen higher in the ranking. What is left is numbered from 0;
2. the window keeps ranks ``range_min <= r < range_max`` (skip the top ``range_min``, look no
   further than ``range_max``);
3. the margins drop the likely false negatives, documents scored too close to the positive:
   the absolute margin keeps ``s <= p - margin``, the relative margin keeps
   ``s <= p * (1 - relative_margin)`` (both when both are given);
4. ``num_negatives`` of the survivors are taken: the best ones (``top``) or a uniform sample
   seeded by the row (``random``), kept in rank order.

A query with fewer survivors gets fewer negatives; :class:`MiningCounts` says why.
Definitions and usage: docs/mining.md.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass, fields
from typing import Literal

Sampling = Literal["top", "random"]
SAMPLINGS: tuple[Sampling, ...] = ("top", "random")


def text_key(text: str) -> str:
    """The form two texts are compared in: case folded, runs of white space made one space."""
    return " ".join(text.split()).casefold()


@dataclass(frozen=True)
class MiningRule:
    """How negatives are chosen from a query's ranking (the module docstring's steps)."""

    num_negatives: int = 3
    range_min: int = 0
    range_max: int = 50
    margin: float | None = None
    relative_margin: float | None = None
    sampling: Sampling = "top"
    seed: int = 0

    def check(self) -> None:
        """One ``ValueError`` line, in the command's words, for a setting out of range."""
        if self.num_negatives < 1:
            raise ValueError(f"--num-negatives must be at least 1, got {self.num_negatives}")
        if self.range_min < 0:
            raise ValueError(f"--range-min must be 0 or more, got {self.range_min}")
        if self.range_max <= self.range_min:
            raise ValueError(f"--range-max ({self.range_max}) must be above --range-min "
                            f"({self.range_min}): the window holds ranks range-min..range-max-1")
        if self.range_max - self.range_min < self.num_negatives:
            raise ValueError(f"the window of ranks {self.range_min}..{self.range_max - 1} holds "
                            f"fewer than --num-negatives {self.num_negatives} documents; widen "
                            "it with --range-max")
        if self.margin is not None and not 0 <= self.margin < float("inf"):
            raise ValueError(f"--margin must be a finite number of 0 or more (a negative scores "
                            f"at most the positive's score minus it), got {self.margin}")
        if self.relative_margin is not None and not 0 <= self.relative_margin < 1:
            raise ValueError("--relative-margin must be in [0, 1) (a negative scores at most "
                            f"(1 - it) times the positive's score), got {self.relative_margin}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"--sampling must be one of {', '.join(SAMPLINGS)}, "
                            f"got {self.sampling!r}")

    def ceiling(self, positive_score: float) -> float:
        """The highest score a negative may have under the margins (inf without them)."""
        ceiling = float("inf")
        if self.margin is not None:
            ceiling = min(ceiling, positive_score - self.margin)
        if self.relative_margin is not None:
            ceiling = min(ceiling, positive_score * (1 - self.relative_margin))
        return ceiling


@dataclass
class MiningCounts:
    """What the filters removed, summed over queries (documents, except ``queries`` and
    ``short``: the queries seen and those that got fewer than ``num_negatives``)."""

    queries: int = 0
    positive_id: int = 0
    positive_text: int = 0
    duplicate: int = 0
    margin: int = 0
    kept: int = 0
    short: int = 0

    def add(self, other: MiningCounts) -> None:
        for item in fields(self):
            setattr(self, item.name, getattr(self, item.name) + getattr(other, item.name))

    def as_dict(self) -> dict[str, int]:
        return {item.name: getattr(self, item.name) for item in fields(self)}


def select_negatives(
    ranked_ids: Sequence[int],
    ranked_scores: Sequence[float],
    *,
    positive_score: float,
    positive_ids: Collection[int],
    positive_keys: Collection[str],
    keys: Sequence[str],
    rule: MiningRule,
    row: int = 0,
) -> tuple[list[int], MiningCounts]:
    """The corpus ids of one query's negatives, best first, and what was removed.

    ``ranked_ids``/``ranked_scores``: the query's candidates, best first (ids < 0 are padding
    and ignored); ``keys[i]``: corpus document i's :func:`text_key`; ``positive_ids`` and
    ``positive_keys``: the query's positives by corpus id and by key; ``row`` seeds the
    ``random`` sampling (the same row draws the same negatives in every run).
    """
    counts = MiningCounts(queries=1)
    ceiling = rule.ceiling(positive_score)
    seen: set[str] = set()
    rank = 0
    window: list[int] = []
    for doc, score in zip(ranked_ids, ranked_scores, strict=True):
        if doc < 0:
            continue
        key = keys[doc]
        if doc in positive_ids:
            counts.positive_id += 1
            continue
        if key in positive_keys:
            counts.positive_text += 1
            continue
        if key in seen:
            counts.duplicate += 1
            continue
        seen.add(key)
        if rank >= rule.range_max:
            break
        if rank >= rule.range_min:
            if score <= ceiling:
                window.append(doc)
            else:
                counts.margin += 1
        rank += 1
    if rule.sampling == "random" and len(window) > rule.num_negatives:
        generator = random.Random(f"{rule.seed}:{row}")  # a str seed: the same in every run
        chosen = sorted(generator.sample(range(len(window)), rule.num_negatives))
        picked = [window[i] for i in chosen]
    else:
        picked = window[: rule.num_negatives]
    counts.kept = len(picked)
    counts.short = int(len(picked) < rule.num_negatives)
    return picked, counts


def candidates_needed(rule: MiningRule, most_positives: int, repeated_texts: int) -> int:
    """How many ranked documents a query needs so that its window is exact: ``range_max``
    documents left after dropping at most ``most_positives`` positives (by id or text) and at
    most ``repeated_texts`` repeats (the corpus documents whose key came earlier)."""
    return rule.range_max + most_positives + repeated_texts
