"""Negative pools for contrastive losses: in-batch, MoCo queue, memory bank, mined (FAISS)."""

from dist_contrast.negatives.config import NegativesConfig

__all__ = ["NegativesConfig"]
