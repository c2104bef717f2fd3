"""Ranking a corpus for mining: the corpus with its text keys, each query's positives in it,
the two scorers (BM25, and a dense model's embeddings searched exactly with FAISS) and the
mining of a block of rows with :func:`~dist_contrast.retrieval.mining.select_negatives`.

Shared by ``dist-contrast mine`` (``serving/mine.py``) and the re-mining during training
(``train/remining.py``); no model here, only texts, scores and embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from dist_contrast.retrieval.mining import MiningCounts, MiningRule, select_negatives, text_key


@dataclass(frozen=True)
class Corpus:
    """The documents searched (``size`` of them) followed by the positives the corpus lacks
    (scored, never returned). ``keys``: each document's text key; ``repeated``: how many of
    the ``size`` documents repeat a key seen before them."""

    texts: list[str]
    size: int
    from_pairs: bool
    keys: list[str] = field(init=False)
    position: dict[str, int] = field(init=False, repr=False)  # a text's first document
    repeated: int = field(init=False)

    def __post_init__(self) -> None:
        keys = [text_key(text) for text in self.texts]
        object.__setattr__(self, "keys", keys)
        first: dict[str, int] = {}
        for i, text in enumerate(self.texts):
            first.setdefault(text, i)
        object.__setattr__(self, "position", first)
        object.__setattr__(self, "repeated", self.size - len(set(keys[: self.size])))

    @classmethod
    def with_positives(cls, documents: list[str], positives: Sequence[str], *,
                       from_pairs: bool) -> Corpus:
        """``documents`` followed by the distinct ``positives`` they lack."""
        known = set(documents)
        extra = [text for text in dict.fromkeys(positives) if text not in known]
        return cls(documents + extra, len(documents), from_pairs)


@dataclass(frozen=True)
class MiningQueries:
    """The rows to mine for: ``queries`` (distinct texts), ``query_of[i]`` row i's query,
    ``positive[i]`` row i's positive text."""

    queries: list[str]
    query_of: list[int]
    positive: list[str]

    def __len__(self) -> int:
        return len(self.positive)

    @classmethod
    def of_rows(cls, queries: Sequence[str], positives: Sequence[str]) -> MiningQueries:
        distinct: dict[str, int] = {}
        query_of = [distinct.setdefault(str(query), len(distinct)) for query in queries]
        return cls(list(distinct), query_of, [str(text) for text in positives])


def positives_of(rows: MiningQueries, corpus: Corpus) -> tuple[list[frozenset[int]],
                                                               list[frozenset[str]]]:
    """Each row's positives (every row with its query text) by corpus position and by key."""
    position = corpus.position
    by_query: dict[int, set[str]] = {}
    for query, text in zip(rows.query_of, rows.positive, strict=True):
        by_query.setdefault(query, set()).add(text)
    ids = {q: frozenset(position[t] for t in texts) for q, texts in by_query.items()}
    keys = {q: frozenset(text_key(t) for t in texts) for q, texts in by_query.items()}
    return [ids[q] for q in rows.query_of], [keys[q] for q in rows.query_of]


class Scorer(Protocol):
    """What ranks the corpus for a query: :meth:`search` gives ``k`` candidates per row and
    the score of each row's own positive."""

    name: str

    def search(self, rows: Sequence[int], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Shape: rows [R] -> ids [R, k] (-1: none), scores [R, k], positive scores [R]."""
        ...


class BM25Scorer:
    """BM25 over the corpus (and the positives it lacks, so that each has a score)."""

    name = "BM25"

    def __init__(self, rows: MiningQueries, corpus: Corpus) -> None:
        from dist_contrast.retrieval.bm25 import BM25Index

        self.rows = rows
        self.positive_at = [corpus.position[text] for text in rows.positive]
        self.index = BM25Index(corpus.texts)

    def search(self, rows: Sequence[int], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from dist_contrast.retrieval.search import top_k

        parts = []
        step = max(1, 2**24 // self.index.size)  # about 64 MiB of scores at a time
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            scores = np.stack([self.index.scores(self.rows.queries[self.rows.query_of[r]])
                               for r in chunk])
            best = top_k(scores, k)
            parts.append((np.where(best.scores > 0, best.ids, -1), best.scores,
                          scores[np.arange(len(chunk)), [self.positive_at[r] for r in chunk]]))
        return tuple(np.concatenate(part) for part in zip(*parts, strict=True))  # type: ignore[return-value]


class DenseScorer:
    """Inner products of the query tower's embeddings (one per distinct query) and the
    document tower's (one per corpus text), FAISS exact search over the ``size`` documents."""

    name = "the model"

    def __init__(self, rows: MiningQueries, corpus: Corpus, queries: np.ndarray,
                 documents: np.ndarray) -> None:
        from dist_contrast.retrieval.search import faiss

        self.rows = rows
        self.positive_at = [corpus.position[text] for text in rows.positive]
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.documents = np.ascontiguousarray(documents, dtype=np.float32)
        self.size = corpus.size
        self.index: Any = None
        if faiss is not None:
            self.index = faiss.IndexFlatIP(self.documents.shape[1])
            self.index.add(self.documents[: corpus.size])

    def search(self, rows: Sequence[int], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from dist_contrast.retrieval.search import numpy_search

        query = self.queries[[self.rows.query_of[r] for r in rows]]
        positive = np.einsum("rd,rd->r", query, self.documents[[self.positive_at[r]
                                                                   for r in rows]])
        if self.index is None:
            found = numpy_search(query, self.documents[: self.size], k)
            return found.ids, found.scores, positive
        scores, ids = self.index.search(np.ascontiguousarray(query), k)
        return ids, scores, positive


@dataclass
class MinedBlock:
    """One block of rows mined: each row's negatives (corpus positions, best first) and their
    scores, each row's positive score, and what the filters removed."""

    negatives: list[list[int]]
    scores: list[list[float]]
    positive_scores: list[float]
    counts: MiningCounts


def mine_block(scorer: Scorer, block: Sequence[int], k: int, rule: MiningRule, *,
               positive_ids: Sequence[frozenset[int]], positive_keys: Sequence[frozenset[str]],
               keys: Sequence[str]) -> MinedBlock:
    """The negatives of ``block``'s rows under ``rule``, from the scorer's top ``k``
    (:func:`~dist_contrast.retrieval.mining.candidates_needed` makes them exact)."""
    ids, scores, positive = scorer.search(list(block), k)
    mined = MinedBlock([], [], [], MiningCounts())
    for at, row in enumerate(block):
        picked, counts = select_negatives(
            ids[at].tolist(), scores[at].tolist(), positive_score=float(positive[at]),
            positive_ids=positive_ids[row], positive_keys=positive_keys[row], keys=keys,
            rule=rule, row=row)
        score_of = dict(zip(ids[at].tolist(), scores[at].tolist(), strict=True))
        mined.negatives.append(picked)
        mined.scores.append([float(score_of[doc]) for doc in picked])
        mined.positive_scores.append(float(positive[at]))
        mined.counts.add(counts)
    return mined
