"""Contrastive losses as pure functions of tensors (no distribution, no state, no config)."""

from dist_contrast.losses.hard import hard_info_nce, hard_simple_loss, negative_boundary
from dist_contrast.losses.info_nce import info_nce
from dist_contrast.losses.partials import (
    PoolPartials,
    combine_partials,
    partials_lse,
    pool_partials,
)
from dist_contrast.losses.simple import simple_loss

__all__ = [
    "PoolPartials",
    "combine_partials",
    "hard_info_nce",
    "hard_simple_loss",
    "info_nce",
    "negative_boundary",
    "partials_lse",
    "pool_partials",
    "simple_loss",
]
