"""The seam the trainer selects a loss through: one name from config, one inputs record.

The trainer fills :class:`ObjectiveInputs` with whatever this step has (gathered keys, a queue,
mined negatives, bank noise) and calls :func:`compute_objective` with the configured name and
parameters. Each name maps to a pure loss in :mod:`dist_contrast.losses` with sensible defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dist_contrast import losses


@dataclass
class ObjectiveInputs:
    """Everything a loss may need in one step.

    Shape:
        query: [B, D] local queries (with gradient). key: [K, D] keys of the (gathered) global
        batch. positive_index: [B] each query's positive row in key. labels: [B]. key_labels:
        [K]. negatives: [N, D] shared pool (no gradient). negative_mask: [B, N] bool.
        query_negatives: [B, M, D]. query_negative_mask: [B, M] bool. negative_lse: [B].
        noise: [B, m, D] bank samples for NCE.
    """

    query: Tensor
    key: Tensor
    positive_index: Tensor
    labels: Tensor | None = None
    key_labels: Tensor | None = None
    negatives: Tensor | None = None
    negative_mask: Tensor | None = None
    query_negatives: Tensor | None = None
    query_negative_mask: Tensor | None = None
    negative_lse: Tensor | None = None
    noise: Tensor | None = None
    normalizer: float | None = None
    dataset_size: int | None = None


def _class_ids(inputs: ObjectiveInputs) -> tuple[Tensor, Tensor]:
    """Query and key labels; without labels each instance is its own class."""
    if inputs.labels is not None and inputs.key_labels is not None:
        return inputs.labels, inputs.key_labels
    keys = torch.arange(inputs.key.shape[0], device=inputs.key.device)
    return inputs.positive_index, keys


def _same_label_mask(inputs: ObjectiveInputs) -> Tensor | None:
    """Keys sharing a query's label (other than its positive) are false negatives: masked."""
    if inputs.labels is None or inputs.key_labels is None:
        return None
    return inputs.labels[:, None] == inputs.key_labels[None, :]


def _pool_kwargs(inputs: ObjectiveInputs) -> dict[str, Any]:
    return {
        "negatives": inputs.negatives,
        "negative_mask": inputs.negative_mask,
        "query_negatives": inputs.query_negatives,
        "query_negative_mask": inputs.query_negative_mask,
        "positive_index": inputs.positive_index,
        "key_mask": _same_label_mask(inputs),
    }


def _info_nce(inputs: ObjectiveInputs, tau: Tensor | float, **p: Any) -> Tensor:
    return losses.info_nce(inputs.query, inputs.key, temperature=tau,
                           negative_lse=inputs.negative_lse, **_pool_kwargs(inputs), **p)


def _simple(inputs: ObjectiveInputs, tau: Tensor | float, **p: Any) -> Tensor:
    _no_sharded_lse("simple", inputs)
    return losses.simple_loss(inputs.query, inputs.key, **_pool_kwargs(inputs), **p)


def _hard_info_nce(inputs: ObjectiveInputs, tau: Tensor | float, **p: Any) -> Tensor:
    _no_sharded_lse("hard_info_nce", inputs)
    p = {"top_k": 4095, **p} if "quantile" not in p else p
    return losses.hard_info_nce(inputs.query, inputs.key, temperature=tau,
                                **_pool_kwargs(inputs), **p)


def _hard_simple(inputs: ObjectiveInputs, tau: Tensor | float, **p: Any) -> Tensor:
    _no_sharded_lse("hard_simple", inputs)
    p = {"top_k": 4095, **p} if "quantile" not in p else p
    return losses.hard_simple_loss(inputs.query, inputs.key, **_pool_kwargs(inputs), **p)


def _no_sharded_lse(name: str, inputs: ObjectiveInputs) -> None:
    if inputs.negative_lse is not None:
        raise ValueError(f"loss {name!r} cannot use a sharded pool's negative_lse; "
                         "pass the pool as negatives or use 'info_nce'")


def _nce(weighting: str) -> Callable[..., Tensor]:
    def run(inputs: ObjectiveInputs, tau: Tensor | float, **p: Any) -> Tensor:
        missing = [n for n in ("noise", "normalizer", "dataset_size")
                   if getattr(inputs, n) is None]
        if missing:
            raise ValueError(f"NCE losses need {', '.join(missing)} in ObjectiveInputs "
                             "(bank noise samples, the normaliser Z and the dataset size)")
        assert inputs.noise is not None and inputs.normalizer is not None
        assert inputs.dataset_size is not None
        return losses.nce_loss(
            inputs.query, inputs.key[inputs.positive_index], inputs.noise, temperature=tau,
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


_OBJECTIVES: dict[str, tuple[Callable[..., Tensor], frozenset[str]]] = {
    "info_nce": (_info_nce, frozenset({"tile_size", "in_batch"})),
    "simple": (_simple, frozenset({"lam", "tile_size", "in_batch"})),
    "hard_info_nce": (_hard_info_nce, frozenset({"top_k", "quantile", "tile_size", "in_batch"})),
    "hard_simple": (_hard_simple, frozenset({"lam", "top_k", "quantile", "tile_size",
                                             "in_batch"})),
    "nce": (_nce("none"), frozenset()),
    "nce_focal": (_nce("focal"), frozenset({"focal_gamma", "focal_alpha"})),
    "nce_ghm": (_nce("ghm"), frozenset({"ghm_bins"})),
    "margin": (_margin, frozenset({"margin"})),
    "triplet": (_triplet, frozenset({"margin", "squared"})),
    "n_pair": (_n_pair, frozenset()),
    "circle": (_circle, frozenset({"gamma", "margin"})),
    "supcon": (_supcon, frozenset()),
}

LOSS_NAMES: tuple[str, ...] = tuple(_OBJECTIVES)


def loss_options(name: str) -> frozenset[str]:
    """The keyword options ``compute_objective(name, ...)`` accepts (for config validation)."""
    if name not in _OBJECTIVES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")
    return _OBJECTIVES[name][1]


def compute_objective(
    name: str, inputs: ObjectiveInputs, temperature: Tensor | float, **params: Any
) -> Tensor:
    """The loss called ``name`` on ``inputs``; ``params`` are that loss's keyword options.

    Raises ``ValueError`` (one sentence) for an unknown name, an option the loss does not take,
    or an input it needs and did not get.

    Shape:
        Returns a 0-dim loss.
    """
    if name not in _OBJECTIVES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")
    function, allowed = _OBJECTIVES[name]
    unknown = sorted(set(params) - allowed)
    if unknown:
        options = ", ".join(sorted(allowed)) or "none"
        raise ValueError(f"loss {name!r} does not take {', '.join(unknown)} (its options: "
                         f"{options})")
    return function(inputs, temperature, **params)
