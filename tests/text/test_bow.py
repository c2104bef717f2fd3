"""The bag-of-n-grams featurizer: deterministic vocabulary, ids by hand, n-grams shared between
related words, padding and cut-off, and a record that reads back to the same ids."""

from __future__ import annotations

import json
import zlib

import pytest
import torch

from dist_contrast.text.bow import BowFeaturizer

TEXTS = ["Read a CSV file", "read_csv_file(path)", "parse the parser", "ParseError raised",
         "open file path", "write csv rows"]


def _fit(**options: int) -> BowFeaturizer:
    settings = {"vocab_size": 8, "buckets": 101, "word_ngrams": 2, "char_ngrams": 3,
                "min_count": 2, **options}
    return BowFeaturizer.fit(TEXTS, **settings)


def test_the_vocabulary_is_the_most_frequent_words_ties_broken_by_the_word() -> None:
    bow = _fit()
    # read ×2, csv ×3, file ×3, path ×2, parse ×3 ("ParseError" splits), "parser" once.
    assert bow.vocabulary == {"csv": 1, "file": 2, "parse": 3, "path": 4, "read": 5}
    assert _fit().vocabulary == bow.vocabulary  # the same every time
    assert _fit(vocab_size=3).vocabulary == {"csv": 1, "file": 2}


def test_features_by_hand() -> None:
    bow = _fit(char_ngrams=0)

    def bucket(text: str) -> int:
        return 8 + zlib.crc32(text.encode()) % 101

    # "read csv": read, csv, then the bigram ending at csv.
    assert bow.features("read csv", 99) == [5, 1, bucket("wread csv")]
    # A word outside the vocabulary has no id of its own; its bigram is still there.
    assert bow.features("csv zebra", 99) == [1, bucket("wcsv zebra")]
    with_chars = _fit(word_ngrams=1)
    assert with_chars.features("csv", 99) == [1, *(bucket("c" + g) for g in ("<cs", "csv", "sv>"))]


def test_related_words_share_character_ngrams() -> None:
    bow = _fit(word_ngrams=1)
    parse, parser = set(bow.features("parse", 99)), set(bow.features("parser", 99))
    shared = {bow.vocab_size + zlib.crc32(("c" + g).encode()) % 101
              for g in ("<pa", "par", "ars", "rse")}
    assert shared <= parse & parser  # not "se>" against "ser", "er>"
    assert all(i >= bow.vocab_size for i in parser)  # "parser" is outside the vocabulary


def test_encode_pads_with_zero_and_keeps_the_beginning() -> None:
    bow = _fit()
    ids = bow.encode(["read csv file", "", "csv"], max_length=4)
    assert ids.shape == (3, 4) and ids.dtype == torch.int64
    assert ids[0].tolist() == bow.features("read csv file", 99)[:4]
    assert ids[1].tolist() == [0, 0, 0, 0]
    assert ids[2, len(bow.features("csv", 99)):].eq(0).all()
    assert int(ids.max()) < bow.num_ids == 8 + 101
    with pytest.raises(ValueError, match="max_length"):
        bow.encode(["x"], max_length=0)


def test_the_record_reads_back_to_the_same_ids() -> None:
    bow = _fit()
    record = json.loads(json.dumps(bow.to_dict()))
    again = BowFeaturizer.from_dict(record)
    assert torch.equal(again.encode(TEXTS, 16), bow.encode(TEXTS, 16))
    with pytest.raises(ValueError, match="not a bag-of-n-grams"):
        BowFeaturizer.from_dict({**record, "format": "other"})
