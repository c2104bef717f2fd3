"""The seam the trainer selects a loss through: one registry entry per objective.

Each entry (:class:`Objective`) holds the function that computes the loss from one
:class:`ObjectiveInputs` record, the keyword options it takes, and what it *needs* from the rest
of the system: labels, the memory bank's noise and the normaliser Z, a positive read from the
bank, in-batch negatives, a sharded pool's log-sum-exp. The config checks, the negative pools and
the trainer read these declarations; nothing outside :mod:`dist_contrast.losses` and this module
branches on a loss's name. Adding a loss is one function in ``losses/`` and one
:func:`register_objective` call (see ``docs/architecture.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from dist_contrast import losses
from dist_contrast.negatives.base import Negatives


@dataclass
class ObjectiveInputs:
    """Everything a loss may read in one step.

    Shape:
        query: [B, D] local queries (with gradient). key: [K, D] candidate positives (the
        gathered global batch's keys, or the bank entries of the local instances for objectives
        with ``positive_from_memory``). positive_index: [B] each query's positive row in key.
        labels: [B] and key_labels: [K], given to objectives with ``needs_labels``.
        negatives: the step's negatives record (pools, mined, noise; see
        :class:`~dist_contrast.negatives.base.Negatives`). normalizer: NCE's Z.
    """

    query: Tensor
    key: Tensor
    positive_index: Tensor
    labels: Tensor | None = None
    key_labels: Tensor | None = None
    negatives: Negatives = field(default_factory=Negatives)
    normalizer: float | None = None
    dataset_size: int | None = None


ObjectiveFunction = Callable[..., Tensor]


@dataclass(frozen=True)
class Objective:
    """One selectable loss and what it needs.

    ``compute(inputs, tau, **options)`` returns a 0-dim loss. The flags tell the rest of the
    system what to prepare:

    - ``needs_labels``: same-label samples are positives (supervised); the trainer passes labels.
    - ``needs_noise``: InstDisc's NCE; the bank draws noise per query, the trainer keeps Z.
    - ``positives``: where the positive can come from, the default first: ``key`` (the other
      view's key, from the query encoder or the momentum encoder) or ``memory`` (the instance's
      own bank entry, before the update: InstDisc's v_i). ``loss.positive`` picks one.
    - ``penalty``: the relative penalty over exactly the negatives the loss counts (its masks,
      and a hard loss's truncation), ``penalty(inputs, tau, **options) -> r [B, N]``, rows
      summing to 1 over the entries the loss sees and 0 elsewhere; None: not defined.
    - ``in_batch``: the other keys of the global batch can be negatives (``batch`` source).
    - ``sharded_pool``: accepts a sharded pool's log-sum-exp instead of the pool itself.
    - ``tiled``: takes ``loss.tile_size``.
    - ``uses_temperature``: ``loss.temperature`` enters the loss (the simple losses, the margin
      losses and N-pair have none, so a sweep over τ runs them once).
    """

    compute: ObjectiveFunction
    options: frozenset[str] = frozenset()
    needs_labels: bool = False
    needs_noise: bool = False
    positives: tuple[str, ...] = ("key",)
    in_batch: bool = False
    sharded_pool: bool = False
    tiled: bool = False
    uses_temperature: bool = True
    penalty: ObjectiveFunction | None = None

    @property
    def positive_from_memory(self) -> bool:
        """The positive is always the bank entry (NCE): no other is possible."""
        return self.positives == ("memory",)


_REGISTRY: dict[str, Objective] = {}


def register_objective(name: str, objective: Objective, *, replace: bool = False) -> None:
    """Make ``objective`` selectable as ``loss.name=name`` (in every process that registers it)."""
    if name in _REGISTRY and not replace:
        raise ValueError(f"an objective named {name!r} is already registered")
    _REGISTRY[name] = objective


def loss_names() -> tuple[str, ...]:
    """Every registered objective's name, in registration order."""
    return tuple(_REGISTRY)


def get_objective(name: str) -> Objective:
    """The registry entry for ``name``; a one-line ``ValueError`` naming the choices otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def loss_options(name: str) -> frozenset[str]:
    """The keyword options ``compute_objective(name, ...)`` accepts (for config validation)."""
    objective = get_objective(name)
    # tile_size and in_batch are set by the trainer from loss.tile_size and the sources.
    implicit = {"tile_size"} if objective.tiled else set()
    if objective.in_batch:
        implicit.add("in_batch")
    return objective.options | implicit


def compute_objective(
    name: str, inputs: ObjectiveInputs, temperature: Tensor | float, **params: Any
) -> Tensor:
    """The loss called ``name`` on ``inputs``; ``params`` are that loss's keyword options.

    Raises ``ValueError`` (one sentence) for an unknown name, an option the loss does not take,
    or an input it needs and did not get.

    Shape:
        Returns a 0-dim loss.
    """
    objective = get_objective(name)
    allowed = loss_options(name)
    unknown = sorted(set(params) - allowed)
    if unknown:
        options = ", ".join(sorted(allowed)) or "none"
        raise ValueError(f"loss {name!r} does not take {', '.join(unknown)} (its options: "
                         f"{options})")
    if inputs.negatives.pool_is_sharded and not objective.sharded_pool:
        raise ValueError(f"loss {name!r} cannot use a sharded pool's log-sum-exp; "
                         "use a replicated pool or 'info_nce'")
    return objective.compute(inputs, temperature, **params)


# ---------------------------------------------------------------------------- the built-ins


def _class_ids(inputs: ObjectiveInputs) -> tuple[Tensor, Tensor]:
    """Query and key labels; without labels each instance is its own class."""
    if inputs.labels is not None and inputs.key_labels is not None:
        return inputs.labels, inputs.key_labels
    keys = torch.arange(inputs.key.shape[0], device=inputs.key.device)
    return inputs.positive_index, keys


def _pool_kwargs(inputs: ObjectiveInputs) -> dict[str, Any]:
    """The plain-tensor keywords of the pool losses, read once from the negatives record."""
    negatives = inputs.negatives
    sharded = negatives.pool_is_sharded
    key_mask = None
    if inputs.labels is not None and inputs.key_labels is not None:
        # Keys sharing a query's label (other than its positive) are false negatives: masked.
        key_mask = inputs.labels[:, None] == inputs.key_labels[None, :]
    return {
        "negatives": None if sharded else negatives.pool,
        "negative_mask": None if sharded else negatives.pool_mask,
        "query_negatives": negatives.query_negatives,
        "query_negative_mask": negatives.query_negative_mask,
        "positive_index": inputs.positive_index,
        "key_mask": key_mask,
    }


def _hard_defaults(params: dict[str, Any]) -> dict[str, Any]:
    # Wang & Liu's explicit hard sampling takes each anchor's 4,096 most similar samples as its
    # negatives (the source article on the paper).
    return {"top_k": 4096, **params} if "quantile" not in params else params


def _info_nce(inputs: ObjectiveInputs, tau: Tensor | float, **p: Any) -> Tensor:
    return losses.info_nce(inputs.query, inputs.key, temperature=tau,
                           negative_lse=inputs.negatives.pool_lse, **_pool_kwargs(inputs), **p)


def _simple(inputs: ObjectiveInputs, tau: Tensor | float, **p: Any) -> Tensor:
    return losses.simple_loss(inputs.query, inputs.key, **_pool_kwargs(inputs), **p)


def _hard_info_nce(inputs: ObjectiveInputs, tau: Tensor | float, **p: Any) -> Tensor:
    return losses.hard_info_nce(inputs.query, inputs.key, temperature=tau,
                                **_pool_kwargs(inputs), **_hard_defaults(p))


def _hard_simple(inputs: ObjectiveInputs, tau: Tensor | float, **p: Any) -> Tensor:
    return losses.hard_simple_loss(inputs.query, inputs.key, **_pool_kwargs(inputs),
                                   **_hard_defaults(p))


def _nce(weighting: str) -> ObjectiveFunction:
    def run(inputs: ObjectiveInputs, tau: Tensor | float, **p: Any) -> Tensor:
        noise = inputs.negatives.noise
        missing = [name for name, value in (("noise", noise), ("normalizer", inputs.normalizer),
                                            ("dataset_size", inputs.dataset_size))
                   if value is None]
        if missing:
            raise ValueError(f"NCE losses need {', '.join(missing)} in ObjectiveInputs "
                             "(bank noise samples, the normaliser Z and the dataset size)")
        assert noise is not None and inputs.normalizer is not None
        assert inputs.dataset_size is not None
        return losses.nce_loss(
            inputs.query, inputs.key[inputs.positive_index], noise, temperature=tau,
            normalizer=inputs.normalizer, dataset_size=inputs.dataset_size,
            weighting=weighting, **p,  # type: ignore[arg-type]
        )
    return run


def _margin(inputs: ObjectiveInputs, tau: Tensor | float, **p: Any) -> Tensor:
    # (q_i, k_positive) are matching pairs, every other (q_i, k_j) a non-matching one; keys
    # with the query's label (other than its positive) are left out rather than pushed away.
    query_ids, key_ids = _class_ids(inputs)
    columns = torch.arange(inputs.key.shape[0], device=inputs.key.device)
    match = columns[None, :] == inputs.positive_index[:, None]
    same = query_ids[:, None] == key_ids[None, :]
    return losses.margin_contrastive_loss(inputs.query, inputs.key, match,
                                          pair_mask=same & ~match, **p)


def _triplet(inputs: ObjectiveInputs, tau: Tensor | float, **p: Any) -> Tensor:
    query_ids, key_ids = _class_ids(inputs)
    return losses.batch_hard_triplet_loss(inputs.query, query_ids, inputs.key, key_ids, **p)


def _n_pair(inputs: ObjectiveInputs, tau: Tensor | float, **p: Any) -> Tensor:
    return losses.n_pair_loss(inputs.query, inputs.key, inputs.positive_index, **p)


def _circle(inputs: ObjectiveInputs, tau: Tensor | float, **p: Any) -> Tensor:
    query_ids, key_ids = _class_ids(inputs)
    same = query_ids[:, None] == key_ids[None, :]
    sims = inputs.query.float() @ inputs.key.float().T
    return losses.circle_loss(sims, same, ~same, **p)


def _supcon(inputs: ObjectiveInputs, tau: Tensor | float, **p: Any) -> Tensor:
    query_ids, key_ids = _class_ids(inputs)
    return losses.supcon_loss(inputs.query, inputs.key, query_ids, key_ids, temperature=tau, **p)


def _penalty(*, softmax: bool, hard: bool) -> ObjectiveFunction:
    """The relative penalty of a pool loss over the negatives it counts: InfoNCE's softmax
    at τ, or the simple losses' equal weight λ on each; a hard loss keeps its truncated set."""
    def run(inputs: ObjectiveInputs, tau: Tensor | float, **p: Any) -> Tensor:
        kwargs = _pool_kwargs(inputs)
        boundary = _hard_defaults({k: p[k] for k in ("top_k", "quantile") if k in p})
        return losses.relative_penalty_seen(
            inputs.query, inputs.key, kwargs.pop("negatives"), temperature=tau,
            softmax=softmax, in_batch=p.get("in_batch", True),
            **(boundary if hard else {}), **kwargs,
        )
    return run


def _pool_objective(
    compute: ObjectiveFunction, *options: str, sharded: bool = False, tau: bool = True,
    hard: bool = False,
) -> Objective:
    """A loss over the pools: in-batch keys, shared pool, mined negatives; tiled. Its
    positive is the other view's key or, with ``loss.positive=memory``, the bank entry."""
    return Objective(compute, frozenset(options), in_batch=True, tiled=True, sharded_pool=sharded,
                     uses_temperature=tau, positives=("key", "memory"),
                     penalty=_penalty(softmax=tau, hard=hard))


def _nce_objective(weighting: str, *options: str) -> Objective:
    """InstDisc's NCE: bank noise, the normaliser Z, the bank entry as the positive."""
    return Objective(_nce(weighting), frozenset(options), needs_noise=True,
                     positives=("memory",))


for _name, _objective in {
    "info_nce": _pool_objective(_info_nce, sharded=True),
    "simple": _pool_objective(_simple, "lam", tau=False),
    "hard_info_nce": _pool_objective(_hard_info_nce, "top_k", "quantile", hard=True),
    "hard_simple": _pool_objective(_hard_simple, "lam", "top_k", "quantile", tau=False,
                                   hard=True),
    "nce": _nce_objective("none"),
    "nce_focal": _nce_objective("focal", "focal_gamma", "focal_alpha"),
    "nce_ghm": _nce_objective("ghm", "ghm_bins"),
    "margin": Objective(_margin, frozenset({"margin"}), uses_temperature=False),
    "triplet": Objective(_triplet, frozenset({"margin", "squared"}), uses_temperature=False),
    "n_pair": Objective(_n_pair, uses_temperature=False),
    "circle": Objective(_circle, frozenset({"gamma", "margin"}), uses_temperature=False),
    "supcon": Objective(_supcon, needs_labels=True),
}.items():
    register_objective(_name, _objective)

#: The built-in objectives' names (:func:`loss_names` also lists registered ones).
LOSS_NAMES: tuple[str, ...] = loss_names()
