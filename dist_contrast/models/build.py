"""Build the encoder named by a ``ModelConfig`` for a given input shape."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import TYPE_CHECKING

from torch import nn

from dist_contrast.models.config import ModelConfig
from dist_contrast.models.encoders import (
    CNNBackbone,
    ContrastiveEncoder,
    MLPBackbone,
    ProjectionHead,
)
from dist_contrast.models.text import BowBody, TextEncoder, TextTower

if TYPE_CHECKING:
    from dist_contrast.models.transformer import TransformerBody

# Texts a subword tokenizer is trained on at most (its trainer holds them; a bag counts
# words as they stream and sees every text).
TOKENIZER_SAMPLE_TEXTS = 2_000_000


def build_model(
    cfg: ModelConfig, input_shape: tuple[int, ...]
) -> ContrastiveEncoder | TextEncoder:
    """An encoder whose ``forward`` maps inputs to unit-norm ``embedding_dim`` vectors.

    The MLP flattens any input shape; the CNN needs images ``(C, H, W)``. The text encoders
    (``bow``, ``transformer``) take raw strings and ignore ``input_shape``; their featurizer
    is fitted on the training text afterwards (:func:`fit_featurizer`).

    Shape: forward [B, *input_shape] -> [B, cfg.embedding_dim].
    """
    if cfg.is_text:
        return build_text_model(cfg)
    input_shape = tuple(int(size) for size in input_shape)
    if not input_shape or min(input_shape) < 1:
        raise ValueError(f"input_shape must be non-empty and positive, got {input_shape}")
    backbone: nn.Module
    if cfg.name == "cnn":
        if len(input_shape) != 3:
            raise ValueError(
                f"model.name='cnn' needs image inputs (C, H, W), got input_shape={input_shape}; "
                "use data.name='digits' or model.name='mlp'"
            )
        backbone = CNNBackbone(
            input_shape,
            cfg.cnn_channels,
            cfg.hidden_dim,
            cfg.num_layers,
            cfg.batch_norm,
            cfg.dropout,
        )
    else:
        backbone = MLPBackbone(
            input_shape, cfg.hidden_dim, cfg.num_layers, cfg.batch_norm, cfg.dropout
        )
    head = ProjectionHead(
        in_dim=cfg.hidden_dim,
        hidden_dim=cfg.projection_hidden_dim or cfg.hidden_dim,
        out_dim=cfg.embedding_dim,
        num_layers=cfg.projection_layers,
        batch_norm=cfg.batch_norm,
    )
    return ContrastiveEncoder(backbone, head, cfg.hidden_dim, cfg.embedding_dim)


def _head(cfg: ModelConfig, in_dim: int) -> ProjectionHead:
    return ProjectionHead(
        in_dim=in_dim,
        hidden_dim=cfg.projection_hidden_dim or cfg.hidden_dim,
        out_dim=cfg.embedding_dim,
        num_layers=cfg.projection_layers,
        batch_norm=cfg.batch_norm,
    )


def _text_body(cfg: ModelConfig) -> BowBody | TransformerBody:
    if cfg.name == "bow":
        return BowBody(cfg.vocab_size + cfg.hash_buckets, cfg.hidden_dim,
                       term_frequency=cfg.term_frequency)
    from dist_contrast.models.transformer import TransformerBody

    if cfg.pretrained is not None:
        return TransformerBody.from_pretrained(str(cfg.pretrained), pooling=cfg.pooling)
    return TransformerBody.from_config(
        vocab_size=cfg.vocab_size, hidden_dim=cfg.hidden_dim, num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        max_length=max(cfg.query_max_length, cfg.document_max_length), pad_id=0,
        pooling=cfg.pooling,
    )


def build_text_model(cfg: ModelConfig) -> TextEncoder:
    """Query and document towers (one shared network, or two) of ``cfg.name``, without a
    featurizer yet. Shape: forward(texts [n], side) -> [n, cfg.embedding_dim]."""
    sides = ("shared",) if cfg.towers == "shared" else ("query", "document")
    widths = {side: width for side in ("query", "document")
              if (width := getattr(cfg, f"{side}_features")) is not None}
    towers: dict[str, TextTower] = {}
    feature_dim = 0
    for side in sides:
        if side not in widths:
            body = _text_body(cfg)
            feature_dim = int(body.out_dim)
            towers[side] = TextTower(body, _head(cfg, feature_dim))
    for side, width in widths.items():  # numeric feature rows: an MLP of the text body's width
        mlp = MLPBackbone((width,), feature_dim, cfg.num_layers, cfg.batch_norm, cfg.dropout)
        towers[side] = TextTower(mlp, _head(cfg, feature_dim))
    return TextEncoder(
        {side: towers[side] for side in sides},
        max_lengths={"query": cfg.query_max_length, "document": cfg.document_max_length},
        feature_dim=feature_dim, embedding_dim=cfg.embedding_dim,
        featurizer_kind="bow" if cfg.name == "bow" else "tokenizer",
        feature_widths=widths,
    )


def fit_featurizer(encoder: nn.Module, cfg: ModelConfig, texts: Iterable[str]) -> None:
    """Give a text encoder the featurizer of ``cfg`` fitted on ``texts`` (the training
    queries and documents; deterministic, so every rank fits the same one). Nothing for
    other encoders."""
    if not isinstance(encoder, TextEncoder):
        return
    if cfg.name == "bow":
        from dist_contrast.text.bow import BowFeaturizer

        encoder.set_featurizer(BowFeaturizer.fit(
            texts, vocab_size=cfg.vocab_size, buckets=cfg.hash_buckets,
            word_ngrams=cfg.word_ngrams, char_ngrams=cfg.char_ngrams))
        return
    from dist_contrast.models.text import TokenizerFeaturizer
    from dist_contrast.text.tokenizer import TextTokenizer

    if cfg.pretrained is not None or cfg.tokenizer_path is not None:
        tokenizer = TextTokenizer.from_folder(str(cfg.pretrained or cfg.tokenizer_path))
    else:
        # The trainer holds its texts: a streamed file's are capped to its first ones.
        sample = itertools.islice(texts, TOKENIZER_SAMPLE_TEXTS)
        tokenizer = TextTokenizer.train(sample, kind=cfg.tokenizer, vocab_size=cfg.vocab_size)
    encoder.set_featurizer(TokenizerFeaturizer(tokenizer))
