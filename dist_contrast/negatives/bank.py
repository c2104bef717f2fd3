"""InstDisc's memory bank: one normalised key per dataset instance, indexed by dataset id; the
``bank`` source, with its settings (``negatives.bank``), checks and memory."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from dist_contrast.losses.nce import proximal_regularizer
from dist_contrast.negatives.base import Negatives
from dist_contrast.negatives.registry import (
    CheckContext,
    MemoryContext,
    MemoryTerm,
    ResumeContext,
    SourceContext,
    SourceSpec,
    register_source,
    source_names,
)
from dist_contrast.section import Section

NAME = "bank"


class BankConfig(Section):
    """InstDisc's memory bank: one normalised key per dataset instance."""

    # 0 replaces an entry with the newest key; m > 0 keeps m·old + (1-m)·new, re-normalised.
    momentum: float = Field(default=0.0, ge=0.0, lt=1.0)
    # m noise entries drawn uniformly per datum for the NCE loss.
    noise_samples: int = Field(default=4096, ge=1)
    # λ of the proximal regulariser λ‖f_i − v_i‖² (0 = off); the trainer adds the term.
    proximal: float = Field(default=0.0, ge=0.0)
    # NCE's normaliser Z: 0 estimates it once, at the first step, and keeps it (InstDisc);
    # k > 0 estimates it again every k steps (e.g. once an epoch), for runs where the bank's
    # features change a lot: Z frozen against the random initial bank ends up orders of
    # magnitude too small.
    normalizer_every: int = Field(default=0, ge=0)
    # Use the whole bank as the shared pool of an InfoNCE loss (non-parametric softmax with an
    # exact denominator). Only sensible for small datasets: the pool is [n, D] per step.
    as_pool: bool = False
    # K > 0: each query also gets K bank entries drawn uniformly at random (distinct, never its
    # own) as negatives of its own: the random-K control of the hard losses' K nearest.
    random_k: int = Field(default=0, ge=0)


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
        proximal: float = 0.0,
        normalizer_every: int = 0,
        random_k: int = 0,
        seed: int = 0,
        noise_seed: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"bank momentum must be in [0, 1), got {momentum}")
        if (problem := _random_k_check(random_k, size)) is not None:
            raise ValueError(problem)
        self.random_k = random_k
        self.size = size
        self.dim = dim
        self.momentum = momentum
        self.noise_samples = noise_samples
        self.as_pool = as_pool
        # What the trainer reads of the bank beyond its negatives (see InstanceMemory).
        self.proximal = proximal
        self.normalizer_every = normalizer_every
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

    def random_entries(self, ids: Tensor, count: int) -> Tensor:
        """``count`` distinct entries per query, uniform over the bank without the query's own.

        Each row ranks the entries by a uniform random score with the own entry last, and
        keeps the ``count`` first: a uniformly random subset. Rows go in chunks of at most
        ~4M scores, so memory stays bounded on a large bank.

        Shape: ids [B] -> entry ids [B, count] int64.
        """
        rows = ids.detach().cpu().long()
        chunk = max(1, (1 << 22) // self.size)
        picked = []
        for start in range(0, len(rows), chunk):
            own = rows[start : start + chunk]
            scores = torch.rand(len(own), self.size, generator=self.noise_generator)
            scores[torch.arange(len(own)), own] = 2.0  # above every draw: never chosen
            picked.append(scores.topk(count, dim=1, largest=False).indices)
        return torch.cat(picked).to(self.vectors.device)

    def negatives(self, query: Tensor, ids: Tensor, labels: Tensor | None) -> Negatives:
        """NCE noise for the local queries; with ``as_pool`` also the whole bank as the pool.

        Shape: query [B, D], ids [B] -> noise [B, m, D]; pool [n, D], pool_mask [B, n].
        """
        # noise_samples=0: no NCE loss reads noise, so none is drawn (it is B·m·D floats).
        noise = self.noise(query.shape[0])[0] if self.noise_samples > 0 else None
        written = self.write_step >= 0
        metrics = {"bank/written_fraction": float(written.float().mean())}
        if self.random_k > 0:
            drawn = self.vectors[self.random_entries(ids, self.random_k)]
            return Negatives(query_negatives=drawn, noise=noise, metrics=metrics)
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

    def penalty(self, features: Tensor, ids: Tensor) -> Tensor | None:
        """The configured proximal term (None when ``proximal`` is 0), for the trainer to add
        to the loss before the update.

        Shape: features [B, D], ids [B] -> scalar.
        """
        return self.proximal_penalty(features, ids, self.proximal) if self.proximal > 0 else None

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


# ----------------------------------------------------------------------------- the source


def _build(settings: BankConfig, context: SourceContext) -> MemoryBank:
    return MemoryBank(
        context.dataset_size,
        context.dim,
        momentum=settings.momentum,
        noise_samples=settings.noise_samples if context.nce_noise else 0,
        as_pool=settings.as_pool,
        proximal=settings.proximal,
        normalizer_every=settings.normalizer_every,
        random_k=settings.random_k,
        seed=context.seed,
        noise_seed=context.seed + 1 + context.rank,
        device=context.device,
    )


def _random_k_check(random_k: int, train_size: int) -> str | None:
    if random_k < train_size:
        return None
    return (f"negatives.bank.random_k={random_k} needs fewer than the {train_size:,} training "
            f"rows (a query's own entry is never drawn); set it below {train_size:,}")


def _as_pool_needs_the_bank(settings: BankConfig, context: CheckContext) -> None:
    for key, on in (("as_pool=true", settings.as_pool),
                    (f"random_k={settings.random_k}", settings.random_k > 0)):
        if on and not context.configured(NAME):
            raise ValueError(f"negatives.bank.{key} needs 'bank' in negatives.sources")
    if settings.as_pool and settings.random_k > 0:
        raise ValueError("negatives.bank.as_pool=true gives every entry and random_k="
                         f"{settings.random_k} a random few; keep one")


def _alone_feeds_only_noise(settings: BankConfig, context: CheckContext) -> None:
    loss = context.loss
    if loss is None or loss.needs_noise or settings.as_pool or settings.random_k > 0:
        return
    if list(context.negatives.sources) == [NAME]:
        others = "/".join(name for name in source_names() if name != NAME)
        raise ValueError(
            f"negatives.sources=[bank] gives {loss.name} no negatives (the bank feeds "
            f"NCE noise); set negatives.bank.as_pool=true or negatives.bank.random_k, or add "
            f"{others}"
        )


def _memory(settings: BankConfig, context: MemoryContext) -> list[MemoryTerm]:
    """The bank and the copy a checkpoint makes of it: float32 key, int64 label and step."""
    rows, dim = context.train_size, context.dim
    what = f"the memory bank ({rows:,} training rows × {dim} dims)"
    fix = "use fewer training rows or a smaller model.embedding_dim"
    return [MemoryTerm(what, rows * (4 * dim + 16), fix, on_device=True),
            MemoryTerm(f"the checkpoint copy of {what}", rows * (4 * dim + 16), fix,
                       on_device=True)]


def _per_query(settings: BankConfig, context: MemoryContext) -> tuple[int, str] | None:
    """NCE noise, drawn only when the loss reads it, and the random-K negatives."""
    if context.loss.needs_noise:
        return settings.noise_samples + settings.random_k, "negatives.bank.noise_samples"
    if settings.random_k > 0:
        return settings.random_k, "negatives.bank.random_k"
    return None


def _resume_check(
    settings: BankConfig, state: dict[str, Any], context: ResumeContext
) -> str | None:
    rows, dim = (int(size) for size in state["vectors"].shape)
    if dim != context.dim:
        return (f"has a memory bank of {dim} dims, this config has "
                f"model.embedding_dim={context.dim}; set model.embedding_dim={dim}")
    if context.train_size is not None and rows != context.train_size:
        return (f"has a memory bank of {rows:,} entries (one per training row), this config's "
                f"data has {context.train_size:,} training rows; resume with the same data and "
                "data.test_fraction / data.num_test")
    return None


register_source(NAME, SourceSpec(
    key=NAME, build=_build, settings=BankConfig, title="the memory bank",
    checks=(_as_pool_needs_the_bank, _alone_feeds_only_noise), draws_noise=True,
    keeps_instances=True,
    shared_pool=lambda settings: "negatives.bank.as_pool=true" if settings.as_pool else None,
    memory=_memory, per_query=_per_query, resume_check=_resume_check,
    data_check=lambda settings, train_size: _random_k_check(settings.random_k, train_size),
    describe=lambda settings, context: "memory bank ("
    + (f"{context.rows:,} keys)" if context.rows else "one key per row)"),
))
