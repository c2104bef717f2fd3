"""Two augmented views per item, deterministic in (seed, epoch, index)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.data import Dataset

from dist_contrast.data.seeding import mix_seed

# Stream tag keeping the view keys apart from any other use of the seed.
_VIEW_STREAM = 0x5649_4557  # "VIEW"


class ViewSource(Protocol):
    """What a dataset needs from a data source: clean inputs, labels, and random views.

    One small protocol per seam: sources differ (an in-memory tensor, a lazy generator of
    millions of rows), ``ContrastiveDataset`` is the same for all of them. Views are made a
    batch at a time (vectorised), but row r's randomness may depend only on
    ``(key, indices[r])``, never on the batch it came in: that is what makes views
    reproducible whatever the shuffling, sharding or number of workers.
    """

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    def __len__(self) -> int: ...

    def clean(self, indices: Tensor) -> Tensor:
        """Un-augmented inputs. Shape: indices [n] -> [n, *input_shape] float32."""
        ...

    def labels(self, indices: Tensor) -> Tensor:
        """Classes, -1 where the source has no labels. Shape: [n] -> [n] int64."""
        ...

    def views(self, indices: Tensor, key: int) -> Tensor:
        """One random view per index. Shape: indices [n] -> [n, *input_shape] float32."""
        ...


class Augment(Protocol):
    """A batched stochastic augmentation whose row r depends on (key, ids[r]) only."""

    def __call__(self, inputs: Tensor, ids: Tensor, key: int) -> Tensor: ...


class TensorSource:
    """An in-memory source: a feature tensor, optional labels, and an augmentation.

    Shape: features [N, *input_shape] float32, labels [N] int64 or None.
    """

    def __init__(self, features: Tensor, labels: Tensor | None, augment: Augment) -> None:
        if labels is not None and labels.shape[0] != features.shape[0]:
            raise ValueError(f"{features.shape[0]} rows but {labels.shape[0]} labels")
        self.features = features
        self.label_tensor = labels
        self.augment = augment

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.features.shape[1:])

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def clean(self, indices: Tensor) -> Tensor:
        return self.features[indices]

    def labels(self, indices: Tensor) -> Tensor:
        if self.label_tensor is None:
            return torch.full((len(indices),), -1, dtype=torch.int64)
        return self.label_tensor[indices]

    def views(self, indices: Tensor, key: int) -> Tensor:
        return self.augment(self.features[indices], indices, key)


class ContrastiveDataset(Dataset[dict[str, Any]]):
    """Items are ``{"view1", "view2", "index", "label"}``; views depend on (seed, epoch, index).

    Determinism in (seed, epoch, index), not in the order items are fetched, is what lets a
    resumed run, any number of loader workers and any number of ranks see the same views.
    ``index`` is the item's id in this dataset (stable across epochs: memory banks key on it);
    ``label`` is -1 when there are no labels (labels are for evaluation only). A
    ``DataLoader`` fetches whole batches through ``__getitems__``, so views are vectorised.

    Shape: view1, view2 [*input_shape] float32; a loader batches them to [B, *input_shape].
    """

    def __init__(self, source: ViewSource, seed: int) -> None:
        self.source = source
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentations ``__getitem__`` returns."""
        self.epoch = epoch

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.source.input_shape

    def __len__(self) -> int:
        return len(self.source)

    def _check(self, indices: Sequence[int] | Tensor) -> Tensor:
        ids = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(self)):
            raise IndexError(f"indices must lie in [0, {len(self)})")
        return ids

    def views(self, indices: Sequence[int] | Tensor, epoch: int) -> tuple[Tensor, Tensor]:
        """Both views of ``indices`` at ``epoch`` (whatever ``self.epoch`` is).

        Shape: [n] -> ([n, *input_shape], [n, *input_shape]).
        """
        ids = self._check(indices)
        first = self.source.views(ids, mix_seed(self.seed, _VIEW_STREAM, epoch, 1))
        second = self.source.views(ids, mix_seed(self.seed, _VIEW_STREAM, epoch, 2))
        return first, second

    def clean(self, indices: Sequence[int] | Tensor) -> Tensor:
        """Un-augmented inputs by dataset id, e.g. to (re)build an index of embeddings.

        Shape: indices [n] -> [n, *input_shape] float32.
        """
        return self.source.clean(self._check(indices))

    def labels(self, indices: Sequence[int] | Tensor) -> Tensor:
        """Labels by dataset id (-1 when none). Shape: [n] -> [n] int64."""
        return self.source.labels(self._check(indices))

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        ids = self._check(indices)
        first, second = self.views(ids, self.epoch)
        labels = self.source.labels(ids).tolist()
        return [
            {"view1": first[r], "view2": second[r], "index": int(ids[r]), "label": labels[r]}
            for r in range(len(ids))
        ]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([int(index)])[0]
