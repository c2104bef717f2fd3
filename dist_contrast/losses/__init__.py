"""Contrastive losses as pure functions of tensors (no distribution, no state, no config)."""

from dist_contrast.losses._common import PoolTerms
from dist_contrast.losses.hard import (
    hard_info_nce,
    hard_simple_loss,
    negative_boundary,
    relative_penalty_seen,
)
from dist_contrast.losses.info_nce import info_nce
from dist_contrast.losses.metric import (
    batch_hard_triplet_loss,
    circle_loss,
    margin_contrastive_loss,
    n_pair_loss,
    triplet_loss,
)
from dist_contrast.losses.nce import (
    NormalizerEstimator,
    focal_weights,
    ghm_weights,
    monte_carlo_normalizer,
    nce_logits,
    nce_loss,
    proximal_regularizer,
)
from dist_contrast.losses.partials import (
    PoolPartials,
    combine_partials,
    partials_lse,
    pool_partials,
)
from dist_contrast.losses.simple import simple_loss
from dist_contrast.losses.supcon import supcon_loss

__all__ = [
    "NormalizerEstimator",
    "PoolPartials",
    "PoolTerms",
    "batch_hard_triplet_loss",
    "circle_loss",
    "combine_partials",
    "focal_weights",
    "ghm_weights",
    "hard_info_nce",
    "hard_simple_loss",
    "info_nce",
    "margin_contrastive_loss",
    "monte_carlo_normalizer",
    "n_pair_loss",
    "nce_logits",
    "nce_loss",
    "negative_boundary",
    "partials_lse",
    "pool_partials",
    "proximal_regularizer",
    "relative_penalty_seen",
    "simple_loss",
    "supcon_loss",
    "triplet_loss",
]
