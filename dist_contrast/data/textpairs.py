"""The ``pairs`` dataset: (query, document) texts from a pairs file, for the text encoders.

An item's two "views" are its query and its positive document (raw strings: the encoder's
towers featurize them), plus ``hard_negatives`` documents from the row's own negatives (DPR's
hard negatives; they are encoded by the document tower inside the step and get their
gradient). The held-out rows are a retrieval task: their queries against the corpus of their
documents (:class:`RetrievalSplit`), which the trainer scores by MRR, Recall and nDCG beside
BM25 and a hybrid of the two.

Settings: ``data.path`` (the training pairs), ``data.eval_path`` (held-out pairs; without it
``data.num_test``/``data.test_fraction`` rows of ``data.path`` are held out), and under
``data.params``:

* ``hard_negatives``: negatives per row and step (default 1 when the file has negatives, else
  0). A row with fewer draws the rest from other rows' documents;
* ``query_column``/``positive_column``: the sides' columns when the file names them otherwise;
* ``build: pysource``: write the code-search pairs (``dist-contrast data pysource``) into
  ``data.path``'s folder on first use, when the files are missing.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dist_contrast.data.config import DataConfig
from dist_contrast.data.dataset import ContrastiveDataset
from dist_contrast.data.errors import DataError
from dist_contrast.data.pairs import PairsFile, open_pairs
from dist_contrast.data.preprocess import Preprocessing
from dist_contrast.data.registry import Dataset, DataShape, Provenance, register_dataset
from dist_contrast.data.seeding import mix_seed

_NEGATIVE_STREAM, _SPLIT_STREAM = 0x4E454753, 0x50535054  # "NEGS", "PSPT"
# A text row counts as this many float32 features in the driver's memory estimate (~2 KiB).
NOMINAL_ROW_SHAPE = (512,)
OPTIONS = frozenset({"hard_negatives", "query_column", "positive_column", "build"})
MIN_ROWS = 4


@dataclass(frozen=True)
class PairRows:
    """Rows of a pairs file in memory. Shape: every list one entry per row."""

    query: list[str]
    positive: list[str]
    negatives: list[list[str]]
    ids: list[str] | None

    def __len__(self) -> int:
        return len(self.query)

    def take(self, rows: Sequence[int]) -> PairRows:
        return PairRows([self.query[r] for r in rows], [self.positive[r] for r in rows],
                        [self.negatives[r] for r in rows],
                        None if self.ids is None else [self.ids[r] for r in rows])


@dataclass(frozen=True)
class RetrievalSplit:
    """Held-out queries against the corpus of their documents.

    ``relevant[i]``: the corpus positions of query i's positive (one, or several when the
    same query text has several positives). The corpus holds each distinct held-out document
    (positives and file negatives) once.
    """

    queries: list[str]
    corpus: list[str]
    relevant: list[frozenset[int]]


def retrieval_split(rows: PairRows, max_queries: int | None, seed: int) -> RetrievalSplit:
    """The retrieval task of held-out ``rows`` (at most ``max_queries`` queries, a seeded
    subset; every document stays in the corpus)."""
    position: dict[str, int] = {}
    corpus: list[str] = []

    def place(text: str) -> int:
        if text not in position:
            position[text] = len(corpus)
            corpus.append(text)
        return position[text]

    relevant_by_query: dict[str, set[int]] = {}
    for query, positive, negatives in zip(rows.query, rows.positive, rows.negatives,
                                          strict=True):
        relevant_by_query.setdefault(query, set()).add(place(positive))
        for negative in negatives:
            place(negative)
    queries = list(relevant_by_query)
    if max_queries is not None and len(queries) > max_queries:
        chosen = sorted(random.Random(seed).sample(range(len(queries)), max_queries))
        queries = [queries[i] for i in chosen]
    return RetrievalSplit(queries, corpus,
                          [frozenset(relevant_by_query[q]) for q in queries])


class PairDataset(ContrastiveDataset):
    """Items ``{"view1": query, "view2": positive, "negatives": [texts], "index", "label"}``.

    The query and positive are fixed; what changes by (seed, epoch, index) is which of the
    row's negatives are drawn (and, for a row with too few, which other rows' documents fill
    in), never by the batch or the rank. ``collate`` makes a batch: lists of texts, the
    negatives flattened row by row ([B·hard_negatives] texts).
    """

    def __init__(self, rows: PairRows, seed: int, hard_negatives: int) -> None:
        super().__init__(source=None, seed=seed)  # type: ignore[arg-type]
        self.rows = rows
        self.hard_negatives = hard_negatives

    @property
    def input_shape(self) -> tuple[int, ...]:
        return NOMINAL_ROW_SHAPE

    def __len__(self) -> int:
        return len(self.rows)

    def texts(self) -> list[str]:
        """Every training text (queries, positives, negatives): what a featurizer is fit on."""
        return [*self.rows.query, *self.rows.positive,
                *(text for negatives in self.rows.negatives for text in negatives)]

    def views(self, indices: Sequence[int] | Tensor, epoch: int) -> tuple[Any, Any]:
        """Queries and their positives. Shape: [n] -> (n texts, n texts)."""
        ids = self._check(indices).tolist()
        return [self.rows.query[i] for i in ids], [self.rows.positive[i] for i in ids]

    def clean(self, indices: Sequence[int] | Tensor) -> Any:
        """The documents (positives) of ``indices``."""
        return [self.rows.positive[i] for i in self._check(indices).tolist()]

    def labels(self, indices: Sequence[int] | Tensor) -> Tensor:
        return torch.full((len(self._check(indices)),), -1, dtype=torch.int64)

    def negatives(self, index: int, epoch: int) -> list[str]:
        """Row ``index``'s ``hard_negatives`` negatives at ``epoch``."""
        if self.hard_negatives == 0:
            return []
        rng = random.Random(mix_seed(self.seed, _NEGATIVE_STREAM, epoch, index))
        own = self.rows.negatives[index]
        chosen = rng.sample(own, min(len(own), self.hard_negatives))
        while len(chosen) < self.hard_negatives:
            other = rng.randrange(len(self.rows))
            if other != index and self.rows.positive[other] != self.rows.positive[index]:
                chosen.append(self.rows.positive[other])
        return chosen

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        ids = self._check(indices).tolist()
        return [{"view1": self.rows.query[i], "view2": self.rows.positive[i],
                 "negatives": self.negatives(i, self.epoch), "index": i, "label": -1}
                for i in ids]

    @staticmethod
    def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "view1": [item["view1"] for item in items],
            "view2": [item["view2"] for item in items],
            "negatives": [text for item in items for text in item["negatives"]],
            "index": torch.tensor([item["index"] for item in items], dtype=torch.int64),
            "label": torch.tensor([item["label"] for item in items], dtype=torch.int64),
        }


# --------------------------------------------------------------------------- the dataset


def _file(cfg: DataConfig, path: str) -> PairsFile:
    params = cfg.params
    return open_pairs(path, query_column=params.get("query_column"),
                      positive_column=params.get("positive_column"))


def _read(cfg: DataConfig, path: str) -> PairRows:
    """Every row of ``path``, checked (one ``DataError`` line at the first mistake)."""
    pairs = _file(cfg, path)
    rows = PairRows([], [], [], [] if pairs.layout.id is not None else None)
    for batch in pairs.batches(8192):
        rows.query.extend(batch.query)
        rows.positive.extend(batch.positive)
        rows.negatives.extend(batch.negatives)
        if rows.ids is not None and batch.id is not None:
            rows.ids.extend(batch.id)
    if len(rows) < MIN_ROWS:
        raise DataError(path, f"only {len(rows)} rows, need at least {MIN_ROWS}",
                        "add pairs (some are held out for evaluation)")
    return rows


def _ensure_files(cfg: DataConfig) -> None:
    """With ``data.params.build: pysource``, write the code-search pairs where ``data.path``
    and ``data.eval_path`` expect them, unless they are there."""
    if cfg.params.get("build") != "pysource":
        return
    assert cfg.path is not None
    folder = Path(cfg.path).parent
    wanted = [Path(cfg.path), *([Path(cfg.eval_path)] if cfg.eval_path else [])]
    if all(path.exists() for path in wanted):
        return
    names = {path.name for path in wanted}
    if not names <= {"train.jsonl", "test.jsonl"} or any(p.parent != folder for p in wanted):
        raise DataError(cfg.path, "data.params.build=pysource writes train.jsonl and "
                        "test.jsonl into one folder", "point data.path and data.eval_path at "
                        "FOLDER/train.jsonl and FOLDER/test.jsonl")
    from dist_contrast.data.pysource import build_pysource

    print(f"building the code-search pairs into {folder} (first use; about a minute)",
          flush=True)
    build_pysource(folder, overwrite=True)


def _hard_negatives(cfg: DataConfig, rows: PairRows) -> int:
    value = cfg.params.get("hard_negatives")
    if value is None:
        return 1 if any(rows.negatives) else 0
    return int(value)


def _split(cfg: DataConfig, seed: int) -> tuple[PairRows, PairRows]:
    assert cfg.path is not None
    rows = _read(cfg, cfg.path)
    if cfg.eval_path is not None:
        return rows, _read(cfg, cfg.eval_path)
    from dist_contrast.data.build import held_out_rows

    num_test = held_out_rows(cfg, len(rows), cfg.path)
    order = list(range(len(rows)))
    random.Random(mix_seed(seed, _SPLIT_STREAM)).shuffle(order)
    return rows.take(sorted(order[num_test:])), rows.take(sorted(order[:num_test]))


def _build(cfg: DataConfig, seed: int, _: Preprocessing | None = None) -> Any:
    from dist_contrast.data.build import DataBundle

    _ensure_files(cfg)
    train, test = _split(cfg, seed)
    empty = torch.zeros((0, *NOMINAL_ROW_SHAPE))
    return DataBundle(
        train=PairDataset(train, seed, _hard_negatives(cfg, train)),
        eval_train=(empty, None),
        eval_test=(empty, None),
        input_shape=NOMINAL_ROW_SHAPE,
        num_classes=None,
        preprocessing=Preprocessing.identity(NOMINAL_ROW_SHAPE),
        raw_example=empty,
        retrieval=retrieval_split(test, cfg.max_eval_test, seed),
    )


def _shape(cfg: DataConfig) -> DataShape:
    assert cfg.path is not None
    _ensure_files(cfg)
    rows = _file(cfg, cfg.path).count_rows()
    if cfg.eval_path is not None:
        rows += _file(cfg, cfg.eval_path).count_rows()
    return DataShape(rows, NOMINAL_ROW_SHAPE)


def _check(cfg: DataConfig) -> None:
    if cfg.path is None:
        raise ValueError("data.name='pairs' needs data.path (a .jsonl, .csv or .parquet file "
                         "of pairs)")
    build = cfg.params.get("build")
    if build not in (None, "pysource"):
        raise ValueError(f"data.params.build={build!r} is unknown; the one builder is "
                         "'pysource'")
    negatives = cfg.params.get("hard_negatives")
    if negatives is not None and (not isinstance(negatives, int) or negatives < 0):
        raise ValueError(f"data.params.hard_negatives must be a whole number >= 0, got "
                         f"{negatives!r}")


def _provenance(cfg: DataConfig, seed: int) -> Provenance:
    assert cfg.path is not None
    return Provenance(files=(str(Path(cfg.path)),))


register_dataset("pairs", Dataset(
    build=_build,
    shape=_shape,
    provenance=_provenance,
    fields=frozenset({"path", "eval_path"}),
    options=OPTIONS,
    check=_check,
    text=True,
))
