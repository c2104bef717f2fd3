"""One training step, in the one order the trainer allows:

    query forward -> key forward (no grad; momentum encoder with shuffle-BN when configured)
    -> gather keys -> negatives -> loss -> engine.backward / engine.step
    -> momentum update -> pool update

With ``trainer.grad_cache`` the forwards run in chunks without a graph and backward re-encodes
each chunk (:mod:`dist_contrast.train.grad_cache`); everything between sees the same tensors.
The step reads what the configured objective needs from its registry entry
(:class:`~dist_contrast.objectives.Objective`), never from its name. DeepSpeed appears here only
as the ``engine`` (forward, backward, step, LR).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from dist_contrast import dist
from dist_contrast.analysis import negative_similarities, penalty_summary, training_diagnostics
from dist_contrast.config import Config
from dist_contrast.losses import NormalizerEstimator
from dist_contrast.negatives import MomentumEncoder, NegativePool, Negatives
from dist_contrast.negatives.collective import (
    batch_shuffle,
    batch_unshuffle,
    collect_negatives,
    sharded_pool_lse,
)
from dist_contrast.objectives import ObjectiveInputs, compute_objective, get_objective
from dist_contrast.train.evidence import PenaltySnapshots
from dist_contrast.train.grad_cache import GradCache

# Tensors, or lists of texts for text pairs ("view1", "view2", "negatives").
Batch = dict[str, Any]


@dataclass
class TrainStep:
    """What one rank needs to take a step: the engine, the pools, NCE's Z estimate."""

    cfg: Config
    engine: Any
    momentum_encoder: MomentumEncoder | None
    pool: NegativePool | None
    dataset_size: int
    has_labels: bool
    normalizer: NormalizerEstimator = field(default_factory=NormalizerEstimator)
    # Steps skipped for a non-finite loss or gradient: in total, and in a row up to now.
    skipped_steps: int = 0
    bad_in_a_row: int = 0
    # Whether any rank asked to stop after the last step (see ``__call__``'s ``stop``).
    stop_agreed: bool = False
    # negatives.corpus's re-miner (train/remining.py): the batch's negatives come from it.
    corpus: Any = None

    def __post_init__(self) -> None:
        self.objective = get_objective(self.cfg.loss.name)
        self.loss_params = self._loss_params()
        # (s_ij, r_ij) samples of diagnosed batches for the end-of-run figure (rank 0).
        self.penalty_snapshots = PenaltySnapshots(self.cfg.trainer.max_steps)
        self._grad_cache: GradCache | None = None
        self._step = 0
        self._tau = torch.tensor(0.0)

    @property
    def device(self) -> torch.device:
        return torch.device(self.engine.device)

    def __call__(
        self, batch: Batch, step: int, diagnose: bool = False, stop: bool = False
    ) -> dict[str, float]:
        """Take optimiser step ``step + 1`` on ``batch``; returns its metrics. ``diagnose``
        adds the τ diagnostics of this batch (``diag/*``; rank 0 on eval steps). ``stop`` is
        this rank asking the run to stop after this step: whether any rank asked is
        :attr:`stop_agreed` afterwards, decided by the step's one agreement all-reduce."""
        ids = batch["index"].to(self.device)
        self._step = step
        chunking = self.cfg.trainer.grad_cache
        self._grad_cache = GradCache(self.engine, chunking.chunk_size) if chunking else None
        # Labels exist for evaluation; the pools see them only for their label-aware options.
        labels = batch["label"].to(self.device) if self.has_labels else None
        query = self._encode(self._on_device(batch["view1"]), "query")  # [B, D], unit norm
        # The documents: positives, then the batch's hard negatives from the file (texts).
        documents, extra = self._documents(batch)
        keys = self._global_keys(documents, step)  # [W·B·(1 + m), D]
        self._positive_rows = self._positive_rows_of(len(ids), extra)
        # Gathered here only when the loss needs them; the pools get theirs with the ids.
        key_labels = (dist.all_gather_no_grad(labels)
                      if labels is not None and self.objective.needs_labels else None)
        tau = self.engine.module.temperature(step)
        self._tau = tau
        negatives = self._negatives(query, ids, labels, tau)
        if extra and "negatives/batch" in negatives.metrics:
            self._count_file_negatives(negatives, keys)
        inputs = self._inputs(query, keys, ids, labels, key_labels, negatives, tau, step)
        loss = self._loss(inputs, tau, ids)
        if self.cfg.loss.symmetric:
            loss = (loss + self._reverse_loss(query, keys, tau)) / 2
        diagnostics = self._diagnostics(inputs, keys, tau, labels, step + 1) if diagnose else {}

        applied = self._backward_and_step(loss, stop)
        if applied:
            # The pools take the positives' keys only (a file's negatives have no dataset id).
            positives = keys if extra == 0 else keys[self._positive_rows]
            self._update_pools(positives, ids, labels, key_labels, step + 1)
        return {
            "train/loss": float(loss.detach()),
            "train/temperature": float(tau.detach()),
            "train/lr": float(self.engine.get_lr()[0]),
            "train/negatives_per_query": self._negatives_per_query(keys, negatives),
            "train/skipped_steps": float(self.skipped_steps),
            **negatives.metrics,
            **diagnostics,
        }

    def _backward_and_step(self, loss: torch.Tensor, stop: bool = False) -> bool:
        """Backward and optimiser step, unless the loss or a gradient is non-finite on any
        rank: then nothing is applied (no update, no pool or momentum update) and the step is
        counted as skipped. Returns whether the step was applied.

        The ranks agree on that, and on ``stop``, in one all-reduce. Without ZeRO it follows
        backward (whose collectives every rank runs anyway), so it sees the gradients too;
        ZeRO keeps them inside its optimiser, so there it precedes backward and the loss has
        to do."""
        loss_bad = not bool(torch.isfinite(loss.detach()))
        backward_done = not self.engine.zero_optimization()
        if backward_done:
            self._backward(loss)
            bad, self.stop_agreed = dist.any_ranks([loss_bad or not self._gradients_finite(),
                                                    stop])
        else:
            bad, self.stop_agreed = dist.any_ranks([loss_bad, stop])
            if not bad:
                self._backward(loss)
        if not bad:
            self.engine.step()
            self.bad_in_a_row = 0
            return True
        if backward_done:
            self._discard_gradients()
        # The LR schedule still advances, so the LR stays a function of the step.
        if self.engine.lr_scheduler is not None:
            self.engine.lr_scheduler.step()
        self.skipped_steps += 1
        self.bad_in_a_row += 1
        return False

    def _backward(self, loss: torch.Tensor) -> None:
        """The engine's backward, or GradCache's chunked one (τ's own gradient included)."""
        if self._grad_cache is None:
            self.engine.backward(loss)
            return
        self._grad_cache.backward(
            loss, direct=[self._tau],
            recompute=lambda: [self.engine.module.temperature(self._step)])

    def _gradients_finite(self) -> bool:
        """Whether this rank's gradients (in ``.grad``, without ZeRO) are finite."""
        return gradients_finite(self.engine.module.parameters())

    def _discard_gradients(self) -> None:
        # What DeepSpeed's own step does after applying them, without applying them.
        if self.engine.bfloat16_enabled() and hasattr(self.engine.optimizer, "zero_grad"):
            self.engine.optimizer.zero_grad()
        else:
            self.engine.zero_grad()

    # ------------------------------------------------------------------ forward pieces

    def _encode(self, inputs: Any, side: str) -> torch.Tensor:
        """The trained encoder's embeddings of ``inputs`` on ``side``: with their graph, or
        GradCache's leaves (encoded in chunks without one)."""
        if self._grad_cache is None:
            return self.engine(inputs, side=side)
        return self._grad_cache.encode(inputs, side)

    def _on_device(self, inputs: Any) -> Any:
        """Tensors go to the engine's device; texts stay as they are (the encoder featurizes)."""
        return inputs.to(self.device) if isinstance(inputs, torch.Tensor) else inputs

    def _documents(self, batch: Batch) -> tuple[Any, int]:
        """The key side's inputs and how many hard negatives follow the B positives. A
        file's negatives are encoded with the positives by the document tower, so they get
        their gradient through the keys (DPR); the loss sees them as keys of the batch."""
        positives = self._on_device(batch["view2"])
        negatives = batch.get("negatives")
        if not negatives:
            return positives, 0
        return list(positives) + list(negatives), len(negatives)

    def _positive_rows_of(self, batch_size: int, extra: int) -> torch.Tensor:
        """Rows of the gathered keys that are the ranks' positives (each rank's block is its
        B positives, then its ``extra`` negatives). Shape: -> [W·B] int64."""
        block = batch_size + extra
        starts = torch.arange(dist.world_size(), device=self.device) * block
        return (starts[:, None] + torch.arange(batch_size, device=self.device)).flatten()

    def _local_positive_rows(self, batch_size: int) -> torch.Tensor:
        """This rank's queries' positives among the gathered keys. Shape: -> [B] int64."""
        rank = dist.rank()
        return self._positive_rows[rank * batch_size : (rank + 1) * batch_size]

    def _reverse_loss(
        self, query: torch.Tensor, keys: torch.Tensor, tau: torch.Tensor
    ) -> torch.Tensor:
        """The document -> query direction of the symmetric loss (CLIP): each local positive
        against the global batch's queries (the file's negatives are not queries: they have
        no row here; the pools hold documents, so they are left out too)."""
        local = self._local_positive_rows(len(query))
        queries = dist.all_gather_with_grad(query)
        positive_index = dist.rank() * len(query) + torch.arange(len(query), device=self.device)
        inputs = ObjectiveInputs(query=keys[local], key=queries, positive_index=positive_index,
                                 dataset_size=self.dataset_size)
        return compute_objective(self.cfg.loss.name, inputs, tau, **self.loss_params)

    def _global_keys(self, view2: Any, step: int) -> torch.Tensor:
        """Keys of the global batch: the local rows keep their graph; other ranks' rows send
        their gradient home in backward (see ``dist.all_gather_with_grad``)."""
        keys_local = self._key_forward(view2, step)
        if keys_local.requires_grad:
            return dist.all_gather_with_grad(keys_local)
        return dist.all_gather_no_grad(keys_local)

    def _key_forward(self, view2: Any, step: int) -> torch.Tensor:
        if self.momentum_encoder is None:
            return self._encode(view2, "document")
        with torch.no_grad():
            if not isinstance(view2, torch.Tensor):  # texts: no BatchNorm to shuffle for
                return self.momentum_encoder(view2, side="document")
            if self.cfg.negatives.shuffle_bn:
                # Seeded by the step so a resumed run shuffles exactly as the original would.
                generator = torch.Generator().manual_seed(
                    self.cfg.experiment.seed * 1_000_003 + step
                )
                shuffled, unshuffle_index = batch_shuffle(view2, generator)
                return batch_unshuffle(self.momentum_encoder(shuffled), unshuffle_index)
            return self.momentum_encoder(view2)

    def _negatives(
        self, query: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor | None,
        tau: torch.Tensor,
    ) -> Negatives:
        """Every source's negatives; a sharded pool becomes its joint log-sum-exp here, since
        that term carries the query's gradient."""
        if self.pool is None:
            return Negatives()
        negatives = collect_negatives(self.pool, query.detach(), ids, labels)
        if negatives.pool_is_sharded:
            # The pool masks the query's own instance through its pool_ids (None: no mask).
            negatives.pool_lse = sharded_pool_lse(
                query, negatives, ids, temperature=tau, tile_size=self.cfg.loss.tile_size,
            )
        return negatives

    def _inputs(
        self, query: torch.Tensor, keys: torch.Tensor, ids: torch.Tensor,
        labels: torch.Tensor | None, key_labels: torch.Tensor | None, negatives: Negatives,
        tau: torch.Tensor, step: int,
    ) -> ObjectiveInputs:
        objective = self.objective
        if self.cfg.loss.positive_source == "memory":
            # InstDisc's datum is (f_i, v_i): the query against its own bank entry, a constant
            # written on earlier visits (before this step's update). A positive that is a
            # current feature with gradient lets both views collapse onto one point that
            # outruns the stale noise entries; the other view's key only refreshes the bank.
            memory = self.pool.instance_memory if self.pool is not None else None
            assert memory is not None  # the config guarantees it (loss.positive=memory)
            positives = memory.entries(ids).to(query.dtype)
            positive_index = torch.arange(len(ids), device=self.device)
        else:
            positives = keys
            positive_index = self._local_positive_rows(len(ids))
        normalizer = None
        if objective.needs_noise and negatives.noise is not None:
            normalizer = self._normalizer(query, negatives.noise, tau, step)
        with_labels = objective.needs_labels  # supervised: same-label samples are positives
        return ObjectiveInputs(
            query=query, key=positives, positive_index=positive_index,
            labels=labels if with_labels else None,
            key_labels=key_labels if with_labels else None,
            negatives=negatives, normalizer=normalizer, dataset_size=self.dataset_size,
        )

    def _normalizer(
        self, query: torch.Tensor, noise: torch.Tensor, tau: torch.Tensor, step: int
    ) -> float:
        """InstDisc's Z: a Monte-Carlo estimate averaged over ranks, kept constant until the
        next one (never, by default; see the bank's ``normalizer_every``)."""
        return self.normalizer.update(
            query.detach(), noise, temperature=tau.detach(), dataset_size=self.dataset_size,
            step=step, reduce=_mean_over_ranks,
        )

    def _loss(
        self, inputs: ObjectiveInputs, tau: torch.Tensor, ids: torch.Tensor
    ) -> torch.Tensor:
        loss = compute_objective(self.cfg.loss.name, inputs, tau, **self.loss_params)
        penalty = self.pool.penalty(inputs.query, ids) if self.pool is not None else None
        if penalty is not None:
            # InstDisc's proximal term, against the bank entries before this step's update.
            loss = loss + penalty
        return loss

    def _loss_params(self) -> dict[str, Any]:
        params: dict[str, Any] = dict(self.cfg.loss.params)
        if self.objective.tiled and self.cfg.loss.tile_size is not None:
            params["tile_size"] = self.cfg.loss.tile_size
        if self.objective.in_batch:
            # The other keys of the global batch are negatives only when configured so.
            params["in_batch"] = self.cfg.negatives.in_batch
        return params

    # ------------------------------------------------------------------ after the step

    @torch.no_grad()
    def _update_pools(
        self, keys: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor | None,
        key_labels: torch.Tensor | None, step: int,
    ) -> None:
        """After the optimiser step: momentum encoder first, then the pools take the keys
        with the global batch's ids and labels (one gather for both when the labels are not
        gathered yet)."""
        if self.momentum_encoder is not None:
            self.momentum_encoder.update(self.engine.module.encoder)
        if self.pool is None:
            return
        if labels is None or key_labels is not None:
            gathered_ids = dist.all_gather_no_grad(ids)
        else:
            both = dist.all_gather_no_grad(torch.stack([ids, labels.to(ids.dtype)], dim=1))
            gathered_ids, key_labels = both[:, 0], both[:, 1]
        self.pool.update(keys.detach(), gathered_ids, key_labels, step)

    # ------------------------------------------------------------------ metrics

    def _diagnostics(
        self, inputs: ObjectiveInputs, keys: torch.Tensor, tau: torch.Tensor,
        labels: torch.Tensor | None, step: int,
    ) -> dict[str, float]:
        """How τ spreads the penalty over this batch's negatives (docs/science.md#diagnostics);
        a sample of it is kept for the end-of-run figure. Observes only: no grad, no global RNG.

        The penalty entropy and top-k share are over exactly the negatives the loss counts
        (its masks, a hard loss's truncated set; the simple losses weigh each alike) when the
        objective declares its penalty; otherwise over the other keys and the pool."""
        negatives = inputs.negatives
        pool = None if negatives.pool_is_sharded else negatives.pool
        positive_index = self._local_positive_rows(len(inputs.query))
        with torch.no_grad():
            values = training_diagnostics(
                inputs.query.detach(), keys.detach(), pool, tau.detach(), labels=labels,
                top_k=self.cfg.eval.penalty_top_k, positive_index=positive_index,
            )
            if self.objective.penalty is not None and not negatives.pool_is_sharded:
                penalty = self.objective.penalty(inputs, tau.detach(), **self.loss_params)
                values.update(penalty_summary(penalty, self.cfg.eval.penalty_top_k))
            _, negative_sims = negative_similarities(inputs.query, keys, pool,
                                                     positive_index=positive_index)
            self.penalty_snapshots.offer(step, negative_sims, tau)
        return {f"diag/{k}": v for k, v in values.items()}

    @staticmethod
    def _count_file_negatives(negatives: Negatives, keys: torch.Tensor) -> None:
        """The pools count W·B - 1 batch negatives; the file's hard negatives are keys too."""
        added = float(keys.shape[0] - 1) - negatives.metrics["negatives/batch"]
        for name in ("negatives/batch", "negatives/per_query"):
            if name in negatives.metrics:
                negatives.metrics[name] += added

    def _negatives_per_query(self, keys: torch.Tensor, negatives: Negatives) -> float:
        if "negatives/per_query" in negatives.metrics:
            return float(negatives.metrics["negatives/per_query"])
        return float(keys.shape[0] - 1) if self.cfg.negatives.in_batch else 0.0


def gradients_finite(parameters: Iterable[torch.Tensor]) -> bool:
    """Whether the gradients of ``parameters`` are finite, read from their total norm: one
    fused reduction and one read, where a check per parameter cost a millisecond a step on a
    small model. A NaN or an inf anywhere makes the norm non-finite, and so do values within a
    few orders of float32's largest, whose norm overflows: no optimiser step could use those
    either."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return True
    return bool(torch.isfinite(torch.nn.utils.get_total_norm(grads, foreach=True)))


def _mean_over_ranks(value: float) -> float:
    value_tensor = torch.tensor([value], dtype=torch.float64, device=dist.collective_device())
    return float(dist.all_reduce(value_tensor, "mean"))
