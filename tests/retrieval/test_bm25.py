"""The BM25 baseline: identifier splitting on hand examples, Lucene's formula by hand, and our
ranking equal to bm25s called directly on the same tokens."""

from __future__ import annotations

import math

import bm25s
import numpy as np
import pytest

from dist_contrast.retrieval import BM25Index, split_identifier, tokenize


@pytest.mark.parametrize(
    ("identifier", "words"),
    [
        ("getHTTPResponse_code2", ["get", "HTTP", "Response", "code", "2"]),
        ("XMLHttpRequest", ["XML", "Http", "Request"]),
        ("read_csv_file", ["read", "csv", "file"]),
        ("__init__", ["init"]),
        ("PascalCase", ["Pascal", "Case"]),
        ("HTTP2Server", ["HTTP", "2", "Server"]),
        ("float64", ["float", "64"]),
        ("parseXML", ["parse", "XML"]),
        ("os.path.join(a, b)", ["os", "path", "join", "a", "b"]),
        ("ALL_CAPS", ["ALL", "CAPS"]),
    ],
)
def test_split_identifier(identifier: str, words: list[str]) -> None:
    assert split_identifier(identifier) == words


def test_tokenize_lowers_and_drops_stop_words() -> None:
    text = "Return the value of getHTTPResponse if it is set."
    assert tokenize(text) == ["return", "value", "get", "http", "response", "set"]
    assert tokenize("Is_it a") == []
    assert tokenize("the value", stop_words=()) == ["the", "value"]


def test_lucene_bm25_by_hand() -> None:
    # N = 3 documents of 3, 2 and 3 words: avgdl = 8/3; "json" is in 2 of them.
    # idf = ln(1 + (3 - 2 + 0.5) / (2 + 0.5)) = ln(1.6) = 0.470004
    # d0 (tf 1, 3 words): 1 / (1 + 1.5 (0.25 + 0.75 * 3 / (8/3))) = 1 / 2.640625 = 0.378698
    #   -> 0.470004 * 0.378698 = 0.177989
    # d2 (tf 2, 3 words): 2 / (2 + 1.640625) = 0.549356 -> 0.258200
    # d1 has no "json": not returned, so the third place is padding.
    index = BM25Index(["parse json file", "parse xml", "write json json"])
    ranking = index.search(["json"], 3)
    assert ranking.ids.tolist() == [[2, 0, -1]]
    idf = math.log(1.6)
    expected = [idf * 2 / (2 + 1.640625), idf / 2.640625, -math.inf]
    np.testing.assert_allclose(ranking.scores[0], expected, rtol=1e-6)


def _corpus(seed: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    words = ["parse", "Json", "xml", "File", "read", "write", "HTTP", "socket", "path", "Path",
             "join", "split", "url", "Request", "cache", "token", "stream", "buffer"]
    def text(length: int) -> str:
        parts = rng.choice(words, length)
        return "_".join(parts[:2]) + " " + "".join(p.capitalize() for p in parts[2:4]) + " " \
            + " ".join(parts[4:])
    corpus = [text(int(rng.integers(3, 12))) for _ in range(200)]
    queries = [text(int(rng.integers(1, 5))) for _ in range(40)] + ["zebra giraffe", "the of"]
    return corpus, queries


def test_ranking_equals_bm25s_called_directly() -> None:
    corpus, queries = _corpus(0)
    ours = BM25Index(corpus).search(queries, 50)
    direct = bm25s.BM25()  # Lucene, k1 1.5, b 0.75: bm25s's defaults, on our tokens
    direct.index([tokenize(text) for text in corpus], show_progress=False)
    ids, scores = direct.retrieve([tokenize(q) for q in queries], k=len(corpus),
                                  show_progress=False)
    for query in range(len(queries)):
        # bm25s returns every document; ours keeps those that match (score > 0), ties by id.
        matched = scores[query] > 0
        order = np.lexsort((ids[query][matched], -scores[query][matched]))[:50]
        expected_ids = ids[query][matched][order]
        width = len(expected_ids)
        np.testing.assert_array_equal(ours.ids[query, :width], expected_ids)
        np.testing.assert_allclose(ours.scores[query, :width], scores[query][matched][order])
        assert (ours.ids[query, width:] == -1).all()
    assert (ours.ids[-2:] == -1).all()  # unknown words, and stop words only: nothing matches
    assert (ours.ids[:40, 0] >= 0).all()  # every real query shares a word with the corpus


def test_k1_and_b_reach_bm25s() -> None:
    corpus, queries = _corpus(1)
    ours = BM25Index(corpus, k1=0.9, b=0.4)
    direct = bm25s.BM25(k1=0.9, b=0.4)
    direct.index([tokenize(text) for text in corpus], show_progress=False)
    for query in queries[:5]:
        np.testing.assert_allclose(ours.scores(query), direct.get_scores(tokenize(query)))


def test_a_function_is_found_from_its_description() -> None:
    corpus = [
        "def read_csv_file(path):\n    with open(path) as handle:\n        return list(handle)",
        "class HTTPServer:\n    def serve_forever(self): ...",
        "def getHTTPResponse(code2):\n    return Response(code2)",
        "def joinPath(*parts):\n    return '/'.join(parts)",
    ]
    ranking = BM25Index(corpus).search(["Read a CSV file.", "the HTTP response", "join paths"], 1)
    assert ranking.ids[:, 0].tolist() == [0, 2, 3]


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="the BM25 corpus is empty"):
        BM25Index([])
    with pytest.raises(ValueError, match="k must be at least 1"):
        BM25Index(["a text"]).search(["text"], 0)
