"""dist_contrast: distributed large-negative-pool contrastive training."""

__version__ = "0.1.0"
