"""The BM25 baseline: ``bm25s`` (Lucene's scoring) over text tokenised for code.

Code names words by joining them (``getHTTPResponse``, ``read_csv_file``), so a plain
whitespace tokenizer would never match the query "read a CSV file" to that function. The
tokenizer here splits identifiers into their words first.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence

import bm25s
import numpy as np
from bm25s.stopwords import STOPWORDS_EN

from dist_contrast.retrieval.search import Ranking, top_k

# Lucene's (and Elasticsearch's) English stop words, as bm25s ships them: 33 words.
STOP_WORDS: frozenset[str] = frozenset(STOPWORDS_EN)

# Runs of letters and digits: underscores, punctuation and spaces separate words.
_WORD = re.compile(r"[^\W_]+")
# Inside a run: lower→Upper (getHttp), the last capital of an acronym before a word (HTTPResponse),
# and letter↔digit (code2, 2d). Case boundaries are ASCII ones.
_BOUNDARY = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])|(?<=\D)(?=\d)|(?<=\d)(?=\D)")


def split_identifier(word: str) -> list[str]:
    """The words of one identifier, case kept: ``getHTTPResponse_code2`` →
    ``get HTTP Response code 2``; snake_case, camelCase, PascalCase, acronyms and digits."""
    return [part for run in _WORD.findall(word) for part in _BOUNDARY.split(run) if part]


def tokenize(text: str, stop_words: Collection[str] = STOP_WORDS) -> list[str]:
    """Lower-cased words of ``text`` with every identifier split, without ``stop_words``."""
    words = (part.lower() for part in split_identifier(text))
    return [word for word in words if word not in stop_words]


class BM25Index:
    """BM25 (Lucene's variant, as bm25s computes it) over a corpus of texts.

    Only documents sharing at least one word with the query are returned: the rest score 0 and
    their order would be arbitrary, so a query's ranking is padded with id -1 (score -inf)
    where fewer than k documents match.
    """

    def __init__(
        self,
        corpus: Sequence[str],
        k1: float = 1.5,
        b: float = 0.75,
        tokenizer: Callable[[str], list[str]] = tokenize,
    ) -> None:
        if len(corpus) == 0:
            raise ValueError("the BM25 corpus is empty: nothing to index")
        self.tokenizer = tokenizer
        self.size = len(corpus)
        self.retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
        self.retriever.index([tokenizer(text) for text in corpus], show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        """The BM25 score of every document for ``query`` (0 where no word is shared).

        Shape: -> [N] float32.
        """
        known = self.retriever.get_tokens_ids(self.tokenizer(query))
        if not known:
            return np.zeros(self.size, dtype=np.float32)
        return np.asarray(self.retriever.get_scores_from_ids(known), dtype=np.float32)

    def search(self, queries: Sequence[str], k: int) -> Ranking:
        """Each query's k best documents, best first (equal scores by lower id).

        Shape: -> Ranking ids and scores [Q, min(k, N)], ids are corpus positions.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        block = max(1, 2**24 // self.size)  # about 64 MiB of scores at a time
        width = min(k, self.size)
        ids = np.empty((len(queries), width), dtype=np.int64)
        scores = np.empty((len(queries), width), dtype=np.float32)
        for start in range(0, len(queries), block):
            chunk = queries[start : start + block]
            best = top_k(np.stack([self.scores(query) for query in chunk]), k)
            ids[start : start + len(chunk)] = np.where(best.scores > 0, best.ids, -1)
            scores[start : start + len(chunk)] = np.where(best.scores > 0, best.scores, -np.inf)
        return Ranking(ids, scores)
