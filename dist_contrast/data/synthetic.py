"""A synthetic dataset where raw nearest neighbours are near chance but the classes are learnable.

Every item i has a latent class c_i and an instance offset δ_i in a small signal subspace, and
nuisance factors z in a large orthogonal subspace:

    x = A (μ_{c_i} + δ_i) + σ_nuisance · B z + σ_noise · ε,      [A B] orthogonal (D × D)

Each view draws fresh z and ε, so the only thing two views share is A(μ_c + δ_i): an encoder
invariant to the augmentation must project onto the signal subspace, where the classes
separate. In raw input space the nuisance term dominates every distance (its fluctuation is
far larger than the gap between class means), so raw k-nearest-neighbours is near chance.

Nothing of size N × D is stored: every row is a pure function of (seed, id) through counter-based
hashing, so millions of rows cost only what is asked for.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from dist_contrast.data.seeding import (
    generator,
    hash_normal,
    hash_uniform,
    mix_seed,
    row_normal,
)

# Stream tags: one independent random stream per latent quantity.
_BASIS, _MEANS, _LABEL, _OFFSET, _NUISANCE, _NOISE = range(1, 7)
# Rows generated at once by `clean`; bounds the float64 scratch memory (~chunk × D × 16 bytes).
_CHUNK = 65_536


class SyntheticSource:
    """Lazily generated rows with ids in ``[first_id, first_id + size)`` of one generator.

    The train and test splits are two id ranges of the same generator (same classes, same
    subspaces, different instances).

    Shape: clean [n, dim], view [dim], float32.
    """

    def __init__(
        self,
        *,
        seed: int,
        size: int,
        first_id: int,
        num_classes: int,
        dim: int,
        signal_dim: int,
        within_class_scale: float,
        nuisance_scale: float,
        noise_scale: float,
    ) -> None:
        self.seed = seed
        self.size = size
        self.first_id = first_id
        self.num_classes = num_classes
        self.dim = dim
        self.signal_dim = signal_dim
        self.within_class_scale = within_class_scale
        self.nuisance_scale = nuisance_scale
        self.noise_scale = noise_scale
        basis, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator(seed, _BASIS)))
        # signal_basis A [D, s], nuisance_basis B [D, D - s]: orthonormal columns, A ⟂ B.
        self.signal_basis = basis[:, :signal_dim].contiguous()
        self.nuisance_basis = basis[:, signal_dim:].contiguous()
        # Class means are unit-variance per signal coordinate, so classes sit ~sqrt(2s) apart.
        self.class_means = torch.randn(num_classes, signal_dim, generator=generator(seed, _MEANS))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.dim,)

    def __len__(self) -> int:
        return self.size

    def _ids(self, indices: Tensor | np.ndarray) -> np.ndarray:
        ids = np.asarray(indices, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.size):
            raise IndexError(f"indices must lie in [0, {self.size})")
        return ids + self.first_id

    def labels(self, indices: Tensor | np.ndarray) -> Tensor:
        """Latent classes (for evaluation only). Shape: [n] -> [n] int64."""
        uniform = hash_uniform(mix_seed(self.seed, _LABEL), self._ids(indices), 1)[:, 0]
        return torch.from_numpy((uniform * self.num_classes).astype(np.int64))

    def _signal(self, indices: Tensor | np.ndarray) -> Tensor:
        """Class mean + instance offset, in signal coordinates. Shape: [n] -> [n, s]."""
        ids = self._ids(indices)
        offsets = hash_normal(mix_seed(self.seed, _OFFSET), ids, self.signal_dim)
        latent = self.class_means[self.labels(indices)]
        return latent + self.within_class_scale * torch.from_numpy(offsets).float()

    def clean(self, indices: Tensor) -> Tensor:
        """The canonical (un-augmented) rows: one fixed draw of the nuisance and noise.

        Shape: [n] -> [n, dim] float32.
        """
        indices = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        parts = [self._clean_chunk(indices[i : i + _CHUNK]) for i in range(0, len(indices), _CHUNK)]
        return torch.cat(parts) if parts else torch.empty(0, self.dim)

    def _clean_chunk(self, indices: Tensor) -> Tensor:
        ids = self._ids(indices)
        nuisance = hash_normal(mix_seed(self.seed, _NUISANCE), ids, self.dim - self.signal_dim)
        noise = hash_normal(mix_seed(self.seed, _NOISE), ids, self.dim)
        return self._compose(
            self._signal(indices),
            torch.from_numpy(nuisance).float(),
            torch.from_numpy(noise).float(),
        )

    def _compose(self, signal: Tensor, nuisance: Tensor, noise: Tensor) -> Tensor:
        # float64 then round: BLAS may sum in a batch-size-dependent order, and in float64 that
        # can change a row's float32 result only in the rarest ties, so a row is (in practice)
        # bit-identical whichever batch it is generated in.
        rows = (
            signal.double() @ self.signal_basis.double().T  # [n, s] @ [s, D]
            + self.nuisance_scale * nuisance.double() @ self.nuisance_basis.double().T
            + self.noise_scale * noise.double()
        )
        return rows.float()

    def views(self, indices: Tensor, key: int) -> Tensor:
        """Same classes and instance offsets, freshly drawn nuisance and noise.

        Shape: [n] -> [n, dim] float32.
        """
        ids = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        nuisance = row_normal(key, _NUISANCE, ids, self.dim - self.signal_dim)
        noise = row_normal(key, _NOISE, ids, self.dim)
        return self._compose(self._signal(ids), nuisance, noise)
