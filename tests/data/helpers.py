"""Shared test helpers: small configs, a brute-force kNN classifier and a file of text pairs."""

from __future__ import annotations

from pathlib import Path

import torch

from dist_contrast.data import DataConfig

SMALL_SYNTHETIC = DataConfig(num_samples=600, dim=16, signal_dim=4)


def knn_accuracy(
    memory: torch.Tensor,
    memory_labels: torch.Tensor,
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    k: int = 10,
) -> float:
    """Majority vote of the k Euclidean nearest memory rows."""
    nearest = torch.cdist(queries, memory).topk(k, largest=False).indices
    votes = torch.mode(memory_labels[nearest], dim=1).values
    return (votes == query_labels).float().mean().item()


def write_text_pairs(path: Path, rows: int, *, seed: int = 0, negatives: int = 0) -> Path:
    """A JSONL file of ``rows`` learnable (query, document) pairs in the sentence-transformers
    layout (``anchor``, ``positive``, and ``negatives`` when asked): each query is four words
    of a 400-word made-up vocabulary and its document holds them among eight others, so the
    document is found by its words (BM25 does well, and a trained encoder can).
    """
    import json
    import random

    rng = random.Random(seed)
    words = [f"w{i:03d}x" for i in range(400)]

    def document(query: list[str]) -> str:
        text = query + rng.sample(words, 8)
        rng.shuffle(text)
        return " ".join(text)

    with path.open("w") as out:
        for _ in range(rows):
            query = rng.sample(words, 4)
            row: dict[str, object] = {"anchor": " ".join(query), "positive": document(query)}
            if negatives:
                row["negatives"] = [document(rng.sample(words, 4)) for _ in range(negatives)]
            out.write(json.dumps(row) + "\n")
    return path


def write_feature_pairs(path: Path, rows: int, *, width: int = 16, seed: int = 0,
                        negatives: int = 0) -> Path:
    """A JSONL or parquet file (by ``path``'s suffix) of ``rows`` learnable (text, feature row)
    pairs, as CLIP pairs captions with images: each query is four words of a 400-word made-up
    vocabulary, and its document is a row of ``width`` numbers, the sum of its words' fixed
    random vectors plus a little noise (the vectors are the same in every file). With
    ``negatives``, each row's ``negatives`` holds the rows of other words."""
    import json

    import numpy as np

    vectors = np.random.default_rng(12345).normal(size=(400, width))
    rng = np.random.default_rng(seed)

    def document(words: np.ndarray) -> list[float]:
        row = vectors[words].sum(axis=0) + rng.normal(scale=0.1, size=width)
        return [round(float(v), 5) for v in row]

    records: list[dict[str, object]] = []
    for _ in range(rows):
        words = rng.choice(400, size=4, replace=False)
        row: dict[str, object] = {"anchor": " ".join(f"w{i:03d}x" for i in words),
                                  "positive": document(words)}
        if negatives:
            row["negatives"] = [document(rng.choice(400, size=4, replace=False))
                                for _ in range(negatives)]
        records.append(row)
    if path.suffix == ".parquet":
        import pandas as pd

        pd.DataFrame(records).to_parquet(path)
    else:
        path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path
