"""What a dataset's raw rows go through before the encoder, recorded so that a trained encoder
can be applied to new rows exactly as the trainer applied it.

A *raw row* is a row as the user's file holds it (or as the dataset generates it). File data
is z-scored with the training split's mean and standard deviation (``data.standardize``);
digits are divided by 16 into [0, 1] and reshaped to a [1, 8, 8] image; synthetic rows go in
as they are. The record is JSON-able (:meth:`Preprocessing.to_dict`), so a checkpoint's
``meta.json`` and a logged MLflow model carry it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class Preprocessing:
    """Raw rows -> encoder inputs: ``(x - mean) / std`` when standardising, ``x / divisor``
    when scaling, then a reshape to ``input_shape``.

    ``mean`` and ``std`` hold one float32 value per raw value (stored as Python floats, which
    represent float32 values exactly, so a JSON round trip changes no bit).

    Shape: raw [n, *raw_shape] (any layout with ``raw_width`` values per row) -> [n, *input_shape].
    """

    raw_shape: tuple[int, ...]
    input_shape: tuple[int, ...]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    divisor: float | None = None

    def __post_init__(self) -> None:
        if math.prod(self.raw_shape) != math.prod(self.input_shape) or not self.raw_shape:
            raise ValueError(f"raw shape {self.raw_shape} does not fit input {self.input_shape}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std go together")
        if self.mean is not None and not len(self.mean) == len(self.std or ()) == self.raw_width:
            raise ValueError(f"mean/std need {self.raw_width} values each")
        if self.divisor is not None and not self.divisor > 0:
            raise ValueError(f"divisor must be positive, got {self.divisor}")

    @classmethod
    def identity(cls, shape: tuple[int, ...]) -> Preprocessing:
        """Rows go in as they are (synthetic data, or file data without standardising)."""
        return cls(raw_shape=tuple(shape), input_shape=tuple(shape))

    @classmethod
    def standardize(cls, mean: Tensor, std: Tensor) -> Preprocessing:
        """The z-score the trainer applies with the training split's statistics.

        Shape: mean, std [D] float32.
        """
        width = int(mean.numel())
        return cls(
            raw_shape=(width,),
            input_shape=(width,),
            mean=tuple(mean.float().reshape(-1).tolist()),
            std=tuple(std.float().reshape(-1).tolist()),
        )

    @classmethod
    def scale(
        cls, divisor: float, raw_shape: tuple[int, ...], input_shape: tuple[int, ...]
    ) -> Preprocessing:
        """Divide by ``divisor`` and reshape (digits: 0..16 -> [0, 1], 64 -> [1, 8, 8])."""
        return cls(raw_shape=tuple(raw_shape), input_shape=tuple(input_shape), divisor=divisor)

    @property
    def raw_width(self) -> int:
        """Values in one raw row."""
        return math.prod(self.raw_shape)

    @property
    def kind(self) -> str:
        if self.mean is not None:
            return "standardize"
        return "scale" if self.divisor is not None else "none"

    def apply(self, raw: np.ndarray | Tensor) -> Tensor:
        """Raw rows as the encoder takes them, computed as the trainer computes them.

        Any numeric dtype is first cast to float32, as the trainer's loader casts files.
        Raises ``ValueError`` for rows of another width.

        Shape: [n, *raw_shape] -> [n, *input_shape] float32 (on ``raw``'s device).
        """
        x = float32_rows(raw)
        if x.ndim < 1 or math.prod(x.shape[1:]) != self.raw_width:
            raise ValueError(
                f"rows of shape {tuple(x.shape[1:])} have {math.prod(x.shape[1:])} values, "
                f"the encoder takes {self.raw_width} {list(self.raw_shape)}"
            )
        x = x.reshape(x.shape[0], self.raw_width)
        if self.mean is not None and self.std is not None:
            mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device)
            std = torch.tensor(self.std, dtype=torch.float32, device=x.device)
            x = (x - mean) / std
        if self.divisor is not None:
            x = x / self.divisor
        return x.reshape(x.shape[0], *self.input_shape)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (``meta.json``, the MLflow model); :meth:`from_dict` reads it."""
        return {
            "kind": self.kind,
            "raw_shape": list(self.raw_shape),
            "input_shape": list(self.input_shape),
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
            "divisor": self.divisor,
        }

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Preprocessing:
        """Raises ``ValueError`` for a record :meth:`to_dict` did not write."""
        try:
            mean, std, divisor = record.get("mean"), record.get("std"), record.get("divisor")
            return cls(
                raw_shape=tuple(int(n) for n in record["raw_shape"]),
                input_shape=tuple(int(n) for n in record["input_shape"]),
                mean=None if mean is None else tuple(float(v) for v in mean),
                std=None if std is None else tuple(float(v) for v in std),
                divisor=None if divisor is None else float(divisor),
            )
        except (KeyError, TypeError, AttributeError) as error:
            reason = f"{type(error).__name__}: {error}"
            raise ValueError(f"not a preprocessing record ({reason})") from None


def float32_rows(raw: np.ndarray | Tensor) -> Tensor:
    """Rows of any real dtype as a float32 tensor (a numpy array's memory is shared when it is
    float32 already and writeable). Raises ``ValueError`` for non-numeric rows."""
    if isinstance(raw, Tensor):
        if raw.is_complex():
            raise ValueError(f"rows have non-real dtype {raw.dtype}")
        return raw.to(torch.float32)
    array = np.asarray(raw)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"rows have non-numeric dtype {array.dtype}")
    array = array.astype(np.float32, copy=False)
    if not array.flags.writeable:  # e.g. a read-only memory map: torch wants its own copy
        array = array.copy()
    return torch.from_numpy(array)
