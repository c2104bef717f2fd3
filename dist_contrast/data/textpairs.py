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
  ``data.path``'s folder on first use, when the files are missing;
* ``stream: true``: each of W workers reads and holds only its shard of ``data.path`` (a
  parquet file's row groups, every W-th line of JSONL or CSV) and shuffles within it; the
  featurizer is fitted on the training texts streamed from the file (the same on every
  worker), and only worker 0 reads the held-out rows. No process holds the whole file (the
  driver checks it row by row). Without it every worker holds every row and the epoch's
  order is one shuffle of them all.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dist_contrast.data.config import DataConfig
from dist_contrast.data.dataset import ContrastiveDataset
from dist_contrast.data.errors import DataError
from dist_contrast.data.pairs import Item, PairsFile, open_pairs
from dist_contrast.data.preprocess import Preprocessing
from dist_contrast.data.registry import Dataset, DataShape, Provenance, register_dataset
from dist_contrast.data.seeding import mix_seed

_NEGATIVE_STREAM, _SPLIT_STREAM = 0x4E454753, 0x50535054  # "NEGS", "PSPT"
# A text row counts as this many float32 features in the driver's memory estimate (~2 KiB).
NOMINAL_ROW_SHAPE = (512,)
OPTIONS = frozenset({"hard_negatives", "query_column", "positive_column", "build", "stream"})
MIN_ROWS = 4


@dataclass(frozen=True)
class PairRows:
    """Rows of a pairs file in memory. Shape: every list one entry per row."""

    query: list[Item]
    positive: list[Item]
    negatives: list[list[Item]]
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

    queries: list[Item]
    corpus: list[Item]
    relevant: list[frozenset[int]]

    @property
    def is_text(self) -> bool:
        """Both sides are text (BM25 needs words on both)."""
        return all(isinstance(side[0], str) for side in (self.queries, self.corpus) if side)


def retrieval_split(rows: PairRows, max_queries: int | None, seed: int) -> RetrievalSplit:
    """The retrieval task of held-out ``rows`` (at most ``max_queries`` queries, a seeded
    subset; every document stays in the corpus)."""
    position: dict[Item, int] = {}
    corpus: list[Item] = []

    def place(text: Item) -> int:
        if text not in position:
            position[text] = len(corpus)
            corpus.append(text)
        return position[text]

    relevant_by_query: dict[Item, set[int]] = {}
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
        """Every training text (queries, positives, negatives; not a side's feature rows):
        what a featurizer is fit on."""
        return [text for text in (*self.rows.query, *self.rows.positive,
                                  *(item for negatives in self.rows.negatives
                                    for item in negatives)) if isinstance(text, str)]

    def views(self, indices: Sequence[int] | Tensor, epoch: int) -> tuple[Any, Any]:
        """Queries and their positives. Shape: [n] -> (n items, n items)."""
        ids = self._check(indices).tolist()
        return [self.rows.query[i] for i in ids], [self.rows.positive[i] for i in ids]

    def clean(self, indices: Sequence[int] | Tensor) -> Any:
        """The documents (positives) of ``indices``."""
        return [self.rows.positive[i] for i in self._check(indices).tolist()]

    def labels(self, indices: Sequence[int] | Tensor) -> Tensor:
        return torch.full((len(self._check(indices)),), -1, dtype=torch.int64)

    def negatives(self, index: int, epoch: int) -> list[Item]:
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


class OwnShardPairDataset(PairDataset):
    """One worker's shard of a streamed pairs file (``data.params.stream``): only its rows.

    Positions (what the loader fetches) are local, ``0 .. len(rows)``; an item's ``index``
    is its id among all the file's training rows (what a memory bank keys on), and
    ``len()`` counts all of those. ``own_shard`` = (rows held, rows each rank takes per
    epoch) tells the loader to draw from the held rows only. ``texts`` streams every
    training text of the file (the featurizer is the same on every worker).
    """

    def __init__(self, rows: PairRows, seed: int, hard_negatives: int, *, ids: list[int],
                 total: int, per_rank: int, texts: Callable[[], Iterator[str]]) -> None:
        super().__init__(rows, seed, hard_negatives)
        self.ids = ids
        self.total = total
        self.own_shard = (len(rows), per_rank)
        self._texts = texts

    def __len__(self) -> int:
        return self.total

    def _check(self, indices: Sequence[int] | Tensor) -> Tensor:
        ids = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(self.rows)):
            raise IndexError(f"positions must lie in [0, {len(self.rows)}) (the held shard)")
        return ids

    def texts(self) -> Iterator[str]:  # type: ignore[override]
        return self._texts()

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        items = super().__getitems__(indices)
        for item in items:
            item["index"] = self.ids[item["index"]]
        return items


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


def _held_out(cfg: DataConfig, seed: int, num_rows: int) -> np.ndarray:
    """The rows of ``data.path`` (0-based, sorted) held out for evaluation: none with
    ``data.eval_path``, else a seeded choice of ``data.num_test``/``test_fraction`` rows."""
    if cfg.eval_path is not None:
        return np.zeros(0, dtype=np.int64)
    from dist_contrast.data.build import held_out_rows

    assert cfg.path is not None
    num_test = held_out_rows(cfg, num_rows, cfg.path)
    rng = np.random.default_rng(mix_seed(seed, _SPLIT_STREAM))
    return np.sort(rng.choice(num_rows, size=num_test, replace=False)).astype(np.int64)


def _split(cfg: DataConfig, seed: int) -> tuple[PairRows, PairRows]:
    assert cfg.path is not None
    rows = _read(cfg, cfg.path)
    if cfg.eval_path is not None:
        return rows, _read(cfg, cfg.eval_path)
    held = set(_held_out(cfg, seed, len(rows)).tolist())
    return (rows.take([r for r in range(len(rows)) if r not in held]),
            rows.take(sorted(held)))


def _bundle(train: PairDataset, test: PairRows | None, cfg: DataConfig, seed: int) -> Any:
    from dist_contrast.data.build import DataBundle

    empty = torch.zeros((0, *NOMINAL_ROW_SHAPE))
    return DataBundle(
        train=train,
        eval_train=(empty, None),
        eval_test=(empty, None),
        input_shape=NOMINAL_ROW_SHAPE,
        num_classes=None,
        preprocessing=Preprocessing.identity(NOMINAL_ROW_SHAPE),
        raw_example=empty,
        retrieval=None if test is None else retrieval_split(test, cfg.max_eval_test, seed),
    )


def _build(cfg: DataConfig, seed: int, _: Preprocessing | None = None) -> Any:
    _ensure_files(cfg)
    train, test = _split(cfg, seed)
    return _bundle(PairDataset(train, seed, _hard_negatives(cfg, train)), test, cfg, seed)


def _in_range(held: np.ndarray, rows: range) -> int:
    """How many of the sorted ``held`` rows lie in ``rows``."""
    inside = (held >= rows.start) & (held < rows.stop) & ((held - rows.start) % rows.step == 0)
    return int(np.count_nonzero(inside))


def _rows_where(pairs: PairsFile, keep: Callable[[np.ndarray], np.ndarray], rank: int = 0,
                world_size: int = 1) -> Iterator[tuple[PairRows, np.ndarray]]:
    """Batches of shard ``rank``'s rows for which ``keep(file rows)`` is true, with their
    file rows; one batch in memory at a time."""
    for batch in pairs.batches(8192, rank=rank, world_size=world_size):
        rows = np.asarray(batch.row, dtype=np.int64)
        kept = np.flatnonzero(keep(rows)).tolist()
        part = PairRows(batch.query, batch.positive, batch.negatives, batch.id).take(kept)
        yield part, rows[kept]


def _is_held(held: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    def test(rows: np.ndarray) -> np.ndarray:
        at = np.minimum(np.searchsorted(held, rows), max(len(held) - 1, 0))
        return (held[at] == rows) if len(held) else np.zeros(len(rows), dtype=bool)
    return test


def _streamed_texts(pairs: PairsFile, held: np.ndarray) -> Callable[[], Iterator[str]]:
    """Every training text of ``pairs`` (queries, positives, negatives), read as a stream."""
    is_held = _is_held(held)

    def texts() -> Iterator[str]:
        for part, _ in _rows_where(pairs, lambda rows: ~is_held(rows)):
            for query, positive, negatives in zip(part.query, part.positive, part.negatives,
                                                  strict=True):
                for item in (query, positive, *negatives):
                    if isinstance(item, str):  # a side of feature rows has no words
                        yield item
    return texts


def _build_shard(cfg: DataConfig, seed: int, rank: int, world_size: int) -> Any:
    """Worker ``rank``'s shard of a streamed pairs file (``data.params.stream``); the whole
    data, as :func:`_build` gives it, otherwise."""
    if not cfg.params.get("stream"):
        return _build(cfg, seed)
    assert cfg.path is not None
    _ensure_files(cfg)
    pairs = _file(cfg, cfg.path)
    num_rows = pairs.count_rows()
    held = _held_out(cfg, seed, num_rows)
    shards = [pairs.shard(r, world_size, num_rows) for r in range(world_size)]
    per_rank = min(len(shard) - _in_range(held, shard) for shard in shards)
    if per_rank < 1:
        raise DataError(cfg.path, f"{num_rows} rows leave no training row for one of "
                        f"{world_size} workers", "add pairs or use fewer workers")
    is_held = _is_held(held)
    rows = PairRows([], [], [], [] if pairs.layout.id is not None else None)
    ids: list[int] = []
    for part, file_rows in _rows_where(pairs, lambda r: ~is_held(r), rank, world_size):
        rows.query.extend(part.query)
        rows.positive.extend(part.positive)
        rows.negatives.extend(part.negatives)
        if rows.ids is not None and part.ids is not None:
            rows.ids.extend(part.ids)
        # The id among training rows: the file row less the held-out rows before it.
        ids.extend((file_rows - np.searchsorted(held, file_rows)).tolist())
    test: PairRows | None = None
    if rank == 0:  # the evaluator's: worker 0 alone reads the held-out rows
        if cfg.eval_path is not None:
            test = _read(cfg, cfg.eval_path)
        else:
            test = PairRows([], [], [], None)
            for part, _ in _rows_where(pairs, is_held):
                test.query.extend(part.query)
                test.positive.extend(part.positive)
                test.negatives.extend(part.negatives)
    train = OwnShardPairDataset(rows, seed, _hard_negatives(cfg, rows), ids=ids,
                                total=num_rows - len(held), per_rank=per_rank,
                                texts=_streamed_texts(pairs, held))
    return _bundle(train, test, cfg, seed)


def _validate(cfg: DataConfig, seed: int) -> DataShape:
    """Every row of the files checked as a stream (one line at the first mistake); the
    training rows. Nothing is held: the driver never reads a pairs file into memory."""
    assert cfg.path is not None
    _ensure_files(cfg)
    pairs = _file(cfg, cfg.path)
    rows = pairs.validate()
    if rows < MIN_ROWS:
        raise DataError(cfg.path, f"only {rows} rows, need at least {MIN_ROWS}",
                        "add pairs (some are held out for evaluation)")
    widths = pairs.feature_widths()
    if cfg.eval_path is not None:
        held = _file(cfg, cfg.eval_path)
        eval_rows = held.validate()
        if eval_rows < 1:
            raise DataError(cfg.eval_path, "the file holds no rows", "write the pairs into it")
        if held.feature_widths() != widths:
            raise DataError(cfg.eval_path, f"its sides hold {_sides_words(held)}, and "
                            f"data.path's hold {_sides_words(pairs)}",
                            "give both files the same kind on each side")
        return DataShape(rows, NOMINAL_ROW_SHAPE, widths)
    return DataShape(rows - len(_held_out(cfg, seed, rows)), NOMINAL_ROW_SHAPE, widths)


def _sides_words(pairs: PairsFile) -> str:
    widths = pairs.feature_widths()
    return ", ".join(f"{side}: " + (f"feature rows of {widths[side]} numbers" if side in widths
                                    else "text") for side in ("query", "document"))


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
    stream = cfg.params.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise ValueError(f"data.params.stream must be true or false, got {stream!r}")
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
    build_shard=_build_shard,
    validate=_validate,
))
