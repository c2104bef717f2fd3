"""InstDisc's memory bank: one normalised key per dataset instance, indexed by dataset id."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dist_contrast.losses.nce import proximal_regularizer
from dist_contrast.negatives.base import Negatives


def last_occurrence(ids: Tensor) -> Tensor:
    """Positions of the last occurrence of each distinct id, so duplicate writes are ordered.

    ``index_copy_`` with repeated indices keeps an unspecified one; taking the last makes every
    rank write the same value (the newest key) and the bank identical across ranks.

    Shape: ids [B] -> positions [U].
    """
    unique, inverse = torch.unique(ids, return_inverse=True)
    positions = torch.arange(ids.shape[0], device=ids.device)
    last = torch.full((unique.shape[0],), -1, dtype=torch.long, device=ids.device)
    return last.scatter_reduce(0, inverse, positions, reduce="amax")


class MemoryBank:
    """``size`` normalised keys, one per dataset instance, plus labels and last-write steps.

    Initialised uniformly on the unit sphere from ``seed`` (the same seed on every rank gives
    the same bank). ``update`` receives the globally gathered keys, so every rank's bank stays
    current and identical.

    Shape: vectors [n, D], labels [n] (-1 = unknown), write_step [n] (-1 = never written).
    """

    def __init__(
        self,
        size: int,
        dim: int,
        *,
        momentum: float = 0.0,
        noise_samples: int = 4096,
        as_pool: bool = False,
        seed: int = 0,
        noise_seed: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"bank momentum must be in [0, 1), got {momentum}")
        self.size = size
        self.dim = dim
        self.momentum = momentum
        self.noise_samples = noise_samples
        self.as_pool = as_pool
        generator = torch.Generator().manual_seed(seed)
        # Generated on CPU so the values do not depend on the device's RNG.
        self.vectors = F.normalize(torch.randn(size, dim, generator=generator), dim=1).to(device)
        self.labels = torch.full((size,), -1, dtype=torch.long, device=device)
        self.write_step = torch.full((size,), -1, dtype=torch.long, device=device)
        # The bank must be identical on every rank, the noise should not be: a separate stream
        # (build_negative_pool passes seed + 1 + rank).
        self.noise_generator = torch.Generator().manual_seed(
            seed + 1 if noise_seed is None else noise_seed
        )

    def noise(self, batch: int, samples: int | None = None) -> tuple[Tensor, Tensor]:
        """m uniform noise entries per datum (P_n = 1/n), for NCE.

        Shape: -> vectors [B, m, D], ids [B, m].
        """
        samples = self.noise_samples if samples is None else samples
        ids = torch.randint(self.size, (batch, samples), generator=self.noise_generator)
        ids = ids.to(self.vectors.device)
        return self.vectors[ids], ids

    def negatives(self, query: Tensor, ids: Tensor, labels: Tensor | None) -> Negatives:
        """NCE noise for the local queries; with ``as_pool`` also the whole bank as the pool.

        Shape: query [B, D], ids [B] -> noise [B, m, D]; pool [n, D], pool_mask [B, n].
        """
        # noise_samples=0: no NCE loss reads noise, so none is drawn (it is B·m·D floats).
        noise = self.noise(query.shape[0])[0] if self.noise_samples > 0 else None
        written = self.write_step >= 0
        metrics = {"bank/written_fraction": float(written.float().mean())}
        if not self.as_pool:
            return Negatives(noise=noise, metrics=metrics)
        # The query's own entry is a (stale) positive, never a negative.
        mask = ids.to(self.vectors.device)[:, None] == torch.arange(
            self.size, device=self.vectors.device
        )
        pool_ids = torch.arange(self.size, device=self.vectors.device)
        return Negatives(
            pool=self.vectors, pool_mask=mask, pool_ids=pool_ids, noise=noise, metrics=metrics
        )

    def entries(self, ids: Tensor) -> Tensor:
        """The stored keys of ``ids``: InstDisc's v_i, the NCE positive of instance i.

        A copy without gradient (an entry is a constant from earlier visits).

        Shape: ids [B] -> [B, D].
        """
        return self.vectors[ids.to(self.vectors.device)]

    def proximal_penalty(self, features: Tensor, ids: Tensor, weight: float) -> Tensor:
        """InstDisc's proximal term λ·mean‖f_i − v_i‖² against the entries before this update.

        Differentiable in ``features``; call it before ``update`` overwrites the entries.

        Shape: features [B, D], ids [B] -> scalar.
        """
        return proximal_regularizer(features, self.entries(ids), weight=weight)

    @torch.no_grad()
    def update(self, keys: Tensor, ids: Tensor, labels: Tensor | None, step: int) -> None:
        """Write the newest keys (momentum-mixed and re-normalised when momentum > 0).

        Shape: keys [W·B, D] (already gathered), ids [W·B], labels [W·B] or None.
        """
        device = self.vectors.device
        keep = last_occurrence(ids.to(device))
        ids = ids.to(device)[keep]
        new = keys.to(device, self.vectors.dtype)[keep]
        if self.momentum > 0.0:
            new = F.normalize(self.momentum * self.vectors[ids] + (1 - self.momentum) * new, dim=1)
        self.vectors[ids] = new
        self.write_step[ids] = step
        if labels is not None:
            self.labels[ids] = labels.to(device)[keep]

    def state_dict(self) -> dict[str, Any]:
        return {
            "vectors": self.vectors.clone(),
            "labels": self.labels.clone(),
            "write_step": self.write_step.clone(),
            "noise_generator": self.noise_generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if tuple(state["vectors"].shape) != (self.size, self.dim):
            raise ValueError(
                f"checkpoint bank is {list(state['vectors'].shape)}, configured "
                f"[{self.size}, {self.dim}]; the dataset size or embedding dim changed"
            )
        self.vectors.copy_(state["vectors"])
        self.labels.copy_(state["labels"])
        self.write_step.copy_(state["write_step"])
        self.noise_generator.set_state(state["noise_generator"])
