"""The ``model:`` section of an experiment config."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator

from dist_contrast.paths import OptionalConfigPath
from dist_contrast.section import Section

ModelName = Literal["mlp", "cnn", "bow", "transformer"]
#: The encoders of text (query and document towers over raw strings; data.name=pairs).
TEXT_MODELS: frozenset[str] = frozenset({"bow", "transformer"})
# Fields only the text encoders read, and those only the transformer reads.
_TEXT_FIELDS = ("towers", "query_max_length", "document_max_length", "vocab_size",
                "query_features", "document_features")
_BOW_FIELDS = ("hash_buckets", "word_ngrams", "char_ngrams", "term_frequency")
_TRANSFORMER_FIELDS = ("pretrained", "pooling", "num_heads", "tokenizer", "tokenizer_path")


class ModelConfig(Section):
    """Encoder architecture: a backbone (MLP or CNN; for text, bag-of-n-grams or transformer
    towers) and a projection head.

    ``forward`` returns L2-normalised ``embedding_dim`` vectors (what the losses compare);
    ``encode`` returns the ``hidden_dim`` backbone features (what evaluation probes).
    A CNN needs image inputs [C, H, W] (data.name="digits"); ``build_model`` checks the shape.
    """

    name: ModelName = "mlp"
    hidden_dim: int = Field(default=256, gt=0, description="backbone width and feature size")
    num_layers: int = Field(
        default=3, gt=0, le=16, description="MLP: linear layers; CNN: conv blocks"
    )
    cnn_channels: int = Field(default=32, gt=0, description="CNN: channels of the first block")
    embedding_dim: int = Field(default=128, gt=0, description="output (projection) dimension")
    projection_layers: int = Field(
        default=2, gt=0, le=8, description="linear layers in the head; 1 = a linear map"
    )
    projection_hidden_dim: int | None = Field(
        default=None, gt=0, description="head width; None = hidden_dim"
    )
    batch_norm: bool = Field(
        default=False, description="BatchNorm after hidden layers (makes MoCo's shuffle-BN matter)"
    )
    dropout: float = Field(default=0.0, ge=0, lt=1, description="dropout after hidden layers")

    # text (bow, transformer): the towers and what each side's text is cut to
    towers: Literal["shared", "separate"] = Field(
        default="shared", description="text: one network for queries and documents, or two")
    query_max_length: int = Field(default=96, gt=0, description="text: ids kept of a query")
    document_max_length: int = Field(default=512, gt=0,
                                     description="text: ids kept of a document")
    query_features: int | None = Field(
        default=None, gt=0, description="text: the width of the queries' numeric feature rows "
        "(a side of feature rows has an MLP tower); None: the queries are text")
    document_features: int | None = Field(
        default=None, gt=0, description="text: the width of the documents' numeric feature "
        "rows; None: the documents are text")
    vocab_size: int = Field(default=50_000, ge=16,
                            description="text: words (bow) or subword tokens (transformer)")
    # bow
    hash_buckets: int = Field(default=2**17, gt=0, description="bow: ids of the hashed n-grams")
    word_ngrams: int = Field(default=2, ge=1, le=4, description="bow: word n-grams up to n")
    char_ngrams: int = Field(default=3, ge=0, le=6,
                             description="bow: character n-grams of each word (0: none)")
    term_frequency: Literal["raw", "log"] = Field(
        default="raw", description="bow: a feature met c times in a text counts c times in its "
        "mean (raw) or 1 + ln c times (log)")
    # transformer
    pretrained: OptionalConfigPath = Field(
        default=None, description="transformer: a local Hugging Face model folder to start from")
    pooling: Literal["mean", "cls"] = Field(default="mean", description="transformer: pooling")
    num_heads: int = Field(default=4, gt=0, description="transformer: attention heads")
    tokenizer: Literal["wordpiece", "bpe"] = Field(
        default="wordpiece", description="transformer: the subword tokenizer trained on the "
        "training text (a pretrained folder brings its own)")
    tokenizer_path: OptionalConfigPath = Field(
        default=None, description="transformer: a local Hugging Face tokenizer folder instead")

    @property
    def is_text(self) -> bool:
        """True for the text encoders (they take raw strings, by side)."""
        return self.name in TEXT_MODELS

    @model_validator(mode="after")
    def _check_combinations(self) -> Self:
        # Only a non-default value is a mistake: a resolved config spells out every field.
        default_channels = type(self).model_fields["cnn_channels"].default
        if self.cnn_channels != default_channels and self.name != "cnn":
            raise ValueError("model.cnn_channels applies only to model.name='cnn'")
        for fields, owners in ((_TEXT_FIELDS, TEXT_MODELS), (_BOW_FIELDS, {"bow"}),
                               (_TRANSFORMER_FIELDS, {"transformer"})):
            for field in fields:
                if self.name not in owners and getattr(self, field) != (
                        type(self).model_fields[field].default):
                    raise ValueError(f"model.{field} applies only to model.name="
                                     f"{' or '.join(repr(o) for o in sorted(owners))}")
        featured = [side for side in ("query", "document")
                    if getattr(self, f"{side}_features") is not None]
        if len(featured) == 2:
            raise ValueError("model.query_features and model.document_features are both set: "
                             "at least one side must be text")
        if featured and self.towers == "shared":
            raise ValueError(f"model.{featured[0]}_features needs model.towers=separate (a "
                             "side of feature rows has a tower of its own, an MLP)")
        if self.name == "transformer" and self.hidden_dim % self.num_heads:
            raise ValueError(f"model.hidden_dim={self.hidden_dim} must be a multiple of "
                             f"model.num_heads={self.num_heads}")
        if self.pretrained is not None and self.tokenizer_path is not None:
            raise ValueError("model.pretrained brings its own tokenizer: drop "
                             "model.tokenizer_path")
        if self.projection_hidden_dim is not None and self.projection_layers == 1:
            raise ValueError(
                "model.projection_hidden_dim needs model.projection_layers >= 2 "
                "(a 1-layer head has no hidden layer)"
            )
        return self
