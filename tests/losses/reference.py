"""Independent re-statements of the loss formulas (plain loops over NumPy float64 arrays).

Deliberately naive: one query at a time, the denominator spelled out as a Python list.
"""

from __future__ import annotations

import math

import numpy as np


def info_nce_loop(
    query: np.ndarray,
    key: np.ndarray,
    tau: float,
    *,
    positive_index: np.ndarray | None = None,
    in_batch: bool = True,
    key_mask: np.ndarray | None = None,
    negatives: np.ndarray | None = None,
    negative_mask: np.ndarray | None = None,
    query_negatives: np.ndarray | None = None,
    query_negative_mask: np.ndarray | None = None,
    negative_lse: np.ndarray | None = None,
    keep: dict[str, np.ndarray] | None = None,
) -> float:
    """Mean over queries of −log(exp(s_pos/τ) / (exp(s_pos/τ) + Σ_neg exp(s_neg/τ))).

    ``keep`` (optional) holds bool arrays 'key', 'pool', 'query' of entries that count.
    """
    batch = query.shape[0]
    positive_index = np.arange(batch) if positive_index is None else positive_index
    total = 0.0
    for i in range(batch):
        q = query[i]
        positive = float(q @ key[positive_index[i]]) / tau
        terms = [positive]
        if in_batch:
            for j in range(key.shape[0]):
                excluded = j == positive_index[i] or (key_mask is not None and key_mask[i, j])
                if keep is not None and not keep["key"][i, j]:
                    excluded = True
                if not excluded:
                    terms.append(float(q @ key[j]) / tau)
        if negatives is not None:
            for n in range(negatives.shape[0]):
                excluded = negative_mask is not None and negative_mask[i, n]
                if keep is not None and not keep["pool"][i, n]:
                    excluded = True
                if not excluded:
                    terms.append(float(q @ negatives[n]) / tau)
        if query_negatives is not None:
            for m in range(query_negatives.shape[1]):
                excluded = query_negative_mask is not None and query_negative_mask[i, m]
                if keep is not None and not keep["query"][i, m]:
                    excluded = True
                if not excluded:
                    terms.append(float(q @ query_negatives[i, m]) / tau)
        if negative_lse is not None:
            terms.append(float(negative_lse[i]))
        top = max(terms)
        lse = top + math.log(sum(math.exp(t - top) for t in terms))
        total += lse - positive
    return total / batch


def simple_loop(
    query: np.ndarray,
    key: np.ndarray,
    lam: float,
    *,
    negatives: np.ndarray | None = None,
    negative_mask: np.ndarray | None = None,
    keep: dict[str, np.ndarray] | None = None,
) -> float:
    """Mean over queries of −s_ii + λ Σ_{j≠i} s_ij (in-batch keys plus an optional pool)."""
    batch = query.shape[0]
    total = 0.0
    for i in range(batch):
        loss = -float(query[i] @ key[i])
        for j in range(key.shape[0]):
            if j != i and (keep is None or keep["key"][i, j]):
                loss += lam * float(query[i] @ key[j])
        if negatives is not None:
            for n in range(negatives.shape[0]):
                if negative_mask is not None and negative_mask[i, n]:
                    continue
                if keep is not None and not keep["pool"][i, n]:
                    continue
                loss += lam * float(query[i] @ negatives[n])
        total += loss
    return total / batch


def assert_relative(actual, expected, tol: float = 1e-5) -> None:  # type: ignore[no-untyped-def]
    """‖actual − expected‖ ≤ tol·‖expected‖ (float32 cancellation makes single tiny entries of a
    gradient unfit for an element-wise relative test; the norm is what 1e-5 relative means)."""
    import torch

    diff = torch.linalg.vector_norm((actual - expected).double())
    scale = torch.linalg.vector_norm(expected.double())
    assert diff <= tol * scale, f"relative error {float(diff / scale):.3g} > {tol}"
