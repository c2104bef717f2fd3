"""Contrastive losses as pure functions of tensors (no distribution, no state, no config)."""

from dist_contrast.losses.info_nce import info_nce
from dist_contrast.losses.partials import (
    PoolPartials,
    combine_partials,
    partials_lse,
    pool_partials,
)

__all__ = [
    "PoolPartials",
    "combine_partials",
    "info_nce",
    "partials_lse",
    "pool_partials",
]
