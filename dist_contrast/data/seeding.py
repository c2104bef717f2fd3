"""Counter-based randomness: every random number is a pure function of (seed, stream, id).

A dataset of millions of rows cannot keep one generator per row, and a data-loader worker
must produce the same views as the main process. Hashing the row id instead of advancing a
shared generator gives both: any row, any epoch, any worker, the same numbers, in any order.
"""

from __future__ import annotations

import numpy as np
import torch

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _splitmix64(value: int) -> int:
    """SplitMix64 finaliser on a Python int (a bijection of 64-bit words)."""
    z = (value + _GOLDEN) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def mix_seed(*values: int) -> int:
    """Hash any number of integers into one seed in ``[0, 2**63)``.

    Nearby inputs (epoch 3 vs 4, index 10 vs 11) give unrelated seeds, unlike ``seed + epoch``.
    """
    state = 0
    for value in values:
        state = _splitmix64(state ^ (value & _MASK))
    return state >> 1


def generator(*values: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``mix_seed(*values)``."""
    return torch.Generator().manual_seed(mix_seed(*values))


def _splitmix64_array(words: np.ndarray) -> np.ndarray:
    # uint64 array arithmetic wraps modulo 2**64, which is what the hash needs.
    z = words + np.uint64(_GOLDEN)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def hash_uniform(key: int, ids: np.ndarray, width: int) -> np.ndarray:
    """Uniform numbers in (0, 1), a pure function of ``(key, id, column)``.

    Shape: ids [N] -> [N, width] float64.
    """
    ids = np.asarray(ids, dtype=np.int64).astype(np.uint64)
    counters = ids[:, None] * np.uint64(width) + np.arange(width, dtype=np.uint64)[None, :]
    words = _splitmix64_array(counters ^ np.uint64(_splitmix64(key & _MASK)))
    # The top 53 bits fill a double's mantissa; +0.5 keeps 0 and 1 out (log(0) in Box-Muller).
    return ((words >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def hash_normal(key: int, ids: np.ndarray, width: int) -> np.ndarray:
    """Standard normal numbers, a pure function of ``(key, id, column)`` (Box-Muller).

    Shape: ids [N] -> [N, width] float64.
    """
    uniforms = hash_uniform(key, ids, 2 * width)
    radius = np.sqrt(-2.0 * np.log(uniforms[:, :width]))
    return radius * np.cos(2.0 * np.pi * uniforms[:, width:])


def row_uniform(key: int, stream: int, ids: torch.Tensor, width: int) -> torch.Tensor:
    """Uniform (0, 1) numbers; row r depends only on ``(key, stream, ids[r])``.

    Shape: ids [n] -> [n, width] float32.
    """
    values = hash_uniform(mix_seed(key, stream), ids.numpy(), width)
    return torch.from_numpy(values).float()


def row_normal(key: int, stream: int, ids: torch.Tensor, width: int) -> torch.Tensor:
    """Standard normal numbers; row r depends only on ``(key, stream, ids[r])``.

    Shape: ids [n] -> [n, width] float32.
    """
    values = hash_normal(mix_seed(key, stream), ids.numpy(), width)
    return torch.from_numpy(values).float()
