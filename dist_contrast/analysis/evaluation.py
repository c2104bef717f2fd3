"""Frozen-embedding evaluation: FAISS weighted kNN (InstDisc) and a linear probe."""

from __future__ import annotations

import faiss
import numpy as np
from torch import Tensor


def _as_unit_float32(x: Tensor | np.ndarray) -> np.ndarray:
    array = x.detach().float().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    array = np.ascontiguousarray(array, dtype=np.float32)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.maximum(norms, 1e-12)


def _as_labels(y: Tensor | np.ndarray) -> np.ndarray:
    return (y.detach().cpu().numpy() if isinstance(y, Tensor) else np.asarray(y)).astype(np.int64)


def knn_predict(
    train_features: Tensor | np.ndarray,
    train_labels: Tensor | np.ndarray,
    test_features: Tensor | np.ndarray,
    *,
    k: int = 200,
    temperature: float = 0.07,
    num_threads: int | None = None,
) -> np.ndarray:
    """InstDisc's weighted kNN: each of the k nearest (cosine) neighbours votes for its label
    with weight ``exp(s/τ)``; the label with the largest total wins.

    Exact search (``IndexFlatIP`` on L2-normalised vectors: inner product = cosine).
    ``num_threads`` sets ``faiss.omp_set_num_threads`` for the search.

    Shape:
        train_features: [n, D]. train_labels: [n]. test_features: [m, D]. Returns [m] int64.
    """
    train = _as_unit_float32(train_features)
    test = _as_unit_float32(test_features)
    labels = _as_labels(train_labels)
    if num_threads is not None:
        faiss.omp_set_num_threads(num_threads)
    index = faiss.IndexFlatIP(train.shape[1])
    index.add(train)
    k = min(k, train.shape[0])
    sims, neighbours = index.search(test, k)
    num_classes = int(labels.max()) + 1
    votes = np.zeros((test.shape[0], num_classes), dtype=np.float64)
    # Shift by each row's best similarity before exp: same argmax, no overflow at small τ.
    weights = np.exp((sims - sims[:, :1]) / temperature)
    np.add.at(votes, (np.arange(test.shape[0])[:, None], labels[neighbours]), weights)
    return votes.argmax(axis=1)


def knn_accuracy(
    train_features: Tensor | np.ndarray,
    train_labels: Tensor | np.ndarray,
    test_features: Tensor | np.ndarray,
    test_labels: Tensor | np.ndarray,
    *,
    k: int = 200,
    temperature: float = 0.07,
    num_threads: int | None = None,
) -> float:
    """Top-1 accuracy of :func:`knn_predict` on the test set.

    Shape:
        train_features: [n, D]. train_labels: [n]. test_features: [m, D]. test_labels: [m].
    """
    predicted = knn_predict(train_features, train_labels, test_features, k=k,
                            temperature=temperature, num_threads=num_threads)
    return float((predicted == _as_labels(test_labels)).mean())


def linear_probe_accuracy(
    train_features: Tensor | np.ndarray,
    train_labels: Tensor | np.ndarray,
    test_features: Tensor | np.ndarray,
    test_labels: Tensor | np.ndarray,
    *,
    regularization: float = 1.0,
    max_iter: int = 1000,
) -> float:
    """Test accuracy of a logistic-regression probe trained on frozen features.

    Shape:
        train_features: [n, D]. train_labels: [n]. test_features: [m, D]. test_labels: [m].
    """
    def features(x: Tensor | np.ndarray) -> np.ndarray:
        return x.detach().float().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)

    # Imported here: scikit-learn takes a second to import, and only the probe needs it.
    from sklearn.linear_model import LogisticRegression

    probe = LogisticRegression(C=regularization, max_iter=max_iter)
    probe.fit(features(train_features), _as_labels(train_labels))
    return float(probe.score(features(test_features), _as_labels(test_labels)))
