"""The bag-of-n-grams featurizer: a text as the ids of its words, word n-grams and character
n-grams, the input of the ``bow`` encoder (an embedding bag; CodeSearchNet's neural
bag-of-words baseline, with fastText's hashed n-grams).

Words are those BM25 sees (:func:`dist_contrast.retrieval.bm25.tokenize`: identifiers split on
case and underscores, lower-cased, English stop words left out), so ``read_csv_file`` and
"read a CSV file" share their words. A text's features, in reading order, word by word:

* the word's id in the vocabulary (the ``vocab_size - 1`` most frequent training words; a
  word outside it has no id of its own but keeps its n-grams);
* the hashed id of the word n-grams that end at it (``word_ngrams``: 2 adds bigrams);
* the hashed ids of its character n-grams (``char_ngrams``: 3 adds the trigrams of
  ``<word>``), which relate ``parse``/``parser``/``parsing`` and words never seen in training.

Hashes (CRC-32, the same in every process and on every machine) fall into ``buckets`` ids after
the vocabulary. Id 0 is padding. Features past ``max_length`` are cut, so a long text keeps
its beginning with all its features.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dist_contrast.retrieval.bm25 import tokenize

PAD_ID = 0
FORMAT = "dist-contrast bow v1"


def _hash(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


class BowFeaturizer:
    """Texts to padded feature ids (see the module docstring). ``vocabulary``: word -> id in
    ``[1, vocab_size)``, made by :meth:`fit`.

    The ids lie in ``[0, num_ids)``: 0 padding, then the vocabulary, then the hash buckets.
    """

    def __init__(
        self,
        vocabulary: dict[str, int],
        *,
        vocab_size: int,
        buckets: int,
        word_ngrams: int = 2,
        char_ngrams: int = 3,
    ) -> None:
        if vocab_size < 2 or buckets < 1:
            raise ValueError(f"vocab_size must be >= 2 and buckets >= 1, got {vocab_size}, "
                             f"{buckets}")
        if word_ngrams < 1 or char_ngrams < 0:
            raise ValueError("word_ngrams must be >= 1 and char_ngrams >= 0")
        if vocabulary and max(vocabulary.values()) >= vocab_size:
            raise ValueError(f"a vocabulary id is not below vocab_size={vocab_size}")
        self.vocabulary = dict(vocabulary)
        self.vocab_size = vocab_size
        self.buckets = buckets
        self.word_ngrams = word_ngrams
        self.char_ngrams = char_ngrams
        self._word_features: dict[str, list[int]] = {}

    @classmethod
    def fit(
        cls, texts: Iterable[str], *, vocab_size: int, buckets: int, word_ngrams: int = 2,
        char_ngrams: int = 3, min_count: int = 2,
    ) -> BowFeaturizer:
        """The featurizer whose vocabulary is the ``vocab_size - 1`` most frequent words of
        ``texts`` seen at least ``min_count`` times (ties by the word: deterministic)."""
        counts = Counter(word for text in texts for word in tokenize(text))
        kept = sorted((item for item in counts.items() if item[1] >= min_count),
                      key=lambda item: (-item[1], item[0]))[: vocab_size - 1]
        vocabulary = {word: index + 1 for index, (word, _) in enumerate(kept)}
        return cls(vocabulary, vocab_size=vocab_size, buckets=buckets,
                   word_ngrams=word_ngrams, char_ngrams=char_ngrams)

    @property
    def num_ids(self) -> int:
        """The size of the id space (the embedding table's rows)."""
        return self.vocab_size + self.buckets

    def _bucket(self, text: str) -> int:
        return self.vocab_size + _hash(text) % self.buckets

    def _word(self, word: str) -> list[int]:
        """A word's own id (when in the vocabulary) and its character n-gram ids; cached for
        the vocabulary's words."""
        cached = self._word_features.get(word)
        if cached is not None:
            return cached
        features = [self.vocabulary[word]] if word in self.vocabulary else []
        if self.char_ngrams:
            marked = f"<{word}>"
            n = self.char_ngrams
            features += [self._bucket("c" + marked[i : i + n])
                         for i in range(max(1, len(marked) - n + 1))]
        if word in self.vocabulary:
            self._word_features[word] = features
        return features

    def features(self, text: str, max_length: int) -> list[int]:
        """The feature ids of one text, at most ``max_length`` of them (no padding)."""
        words = tokenize(text)
        out: list[int] = []
        for position, word in enumerate(words):
            out += self._word(word)
            for n in range(2, self.word_ngrams + 1):
                if position + 1 >= n:
                    out.append(self._bucket("w" + " ".join(words[position + 1 - n : position + 1])))
            if len(out) >= max_length:
                return out[:max_length]
        return out

    def encode(self, texts: Sequence[str], max_length: int) -> Tensor:
        """Feature ids, right-padded with 0. Shape: [n] texts -> [n, max_length] int64."""
        if max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}")
        out = np.zeros((len(texts), max_length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = self.features(text, max_length)
            out[row, : len(ids)] = ids
        return torch.from_numpy(out)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able record (the vocabulary in id order); :meth:`from_dict` reads it back."""
        words = sorted(self.vocabulary, key=self.vocabulary.__getitem__)
        return {"format": FORMAT, "words": words, "vocab_size": self.vocab_size,
                "buckets": self.buckets, "word_ngrams": self.word_ngrams,
                "char_ngrams": self.char_ngrams}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> BowFeaturizer:
        if record.get("format") != FORMAT:
            raise ValueError(f"not a bag-of-n-grams featurizer record (format "
                             f"{record.get('format')!r}, expected {FORMAT!r})")
        vocabulary = {word: index + 1 for index, word in enumerate(record["words"])}
        return cls(vocabulary, vocab_size=int(record["vocab_size"]),
                   buckets=int(record["buckets"]), word_ngrams=int(record["word_ngrams"]),
                   char_ngrams=int(record["char_ngrams"]))
