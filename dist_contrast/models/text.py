"""Text encoders: a query tower and a document tower (one shared, or two), each a body over token
or feature ids and a projection head, with the featurizer inside the module.

The module takes raw strings: ``forward(texts, side)`` turns them into ids with its featurizer
(cut to that side's length) and embeds them with that side's tower. Keeping the featurizer in
the module, as its extra state, means a checkpoint, the momentum encoder's copy and the logged
model all carry the vocabulary they were trained with; nothing outside needs to know how a text
becomes ids. Ids can be given instead of strings (a ``Tensor``), e.g. by a test.

Bodies:

* ``bow`` (:class:`BowBody`): the mean of the embeddings of a text's word, word n-gram and
  character n-gram ids (:mod:`dist_contrast.text.bow`), each counted as often as it occurs or
  sublinearly (``1 + ln c``): fast on a CPU, and the baseline every retrieval paper starts from.
* ``transformer``: a Hugging Face model with mean or CLS pooling
  (:mod:`dist_contrast.models.transformer`).

A side may instead take numeric feature rows (``model.query_features`` or
``model.document_features``: their width), as CLIP pairs text with images: that side's tower
is an MLP over the row, of the text body's width, and its inputs are rows of numbers (a float
tensor, an array, lists of numbers, or each row's float32 bytes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

Side = Literal["query", "document"]
SIDES: tuple[Side, ...] = ("query", "document")


def feature_matrix(rows: Any, width: int, what: str) -> Tensor:
    """Rows of numbers as a float32 matrix: a tensor, an array, lists of numbers, or each row's
    float32 bytes (the pairs data's ``FeatureRow``). Shape: [n] rows -> [n, width].

    Raises ``ValueError`` (one line) for text, ragged rows or another width."""
    if isinstance(rows, Tensor):
        matrix = rows.float()
    else:
        items = list(rows)
        if any(isinstance(item, str) for item in items):
            raise ValueError(f"{what} takes rows of {width} numbers, not text")
        try:
            matrix = torch.from_numpy(np.stack(
                [np.frombuffer(item, dtype=np.float32) if isinstance(item, bytes) else
                 np.asarray(item, dtype=np.float32) for item in items])
                if items else np.zeros((0, width), dtype=np.float32))
        except (ValueError, TypeError):
            raise ValueError(f"{what} takes rows of {width} numbers each; the rows given are "
                             "not all lists of numbers of one length") from None
    if matrix.dim() != 2 or matrix.shape[1] != width:
        raise ValueError(f"{what} takes rows of {width} numbers, got shape "
                         f"{tuple(matrix.shape)}")
    return matrix


class Featurizer(Protocol):
    """What a text encoder needs to turn strings into ids."""

    @property
    def num_ids(self) -> int: ...

    def encode(self, texts: Sequence[str], max_length: int) -> Tensor:
        """Shape: [n] texts -> [n, max_length] int64, 0-padded... (the featurizer's pad id)."""
        ...

    def to_dict(self) -> dict[str, Any]: ...


class BowBody(nn.Module):
    """An embedding bag: the mean embedding of a row's non-padding ids (a row of padding only
    gives zeros). Shape: [B, L] int64 -> [B, dim].

    ``term_frequency``: how an id met ``c`` times in a row counts in the mean. ``"raw"``: ``c``
    times (a plain mean over the row's ids). ``"log"``: ``1 + ln c`` times, the sublinear term
    frequency of SMART and Lucene, so that an identifier repeated all over a function does not
    drown the words it shares with a query.
    """

    def __init__(self, num_ids: int, dim: int, pad_id: int = 0,
                 term_frequency: Literal["raw", "log"] = "raw") -> None:
        super().__init__()
        if term_frequency not in ("raw", "log"):
            raise ValueError(f"term_frequency must be 'raw' or 'log', got {term_frequency!r}")
        self.term_frequency = term_frequency
        mode = "mean" if term_frequency == "raw" else "sum"
        self.bag = nn.EmbeddingBag(num_ids, dim, mode=mode, padding_idx=pad_id)
        nn.init.normal_(self.bag.weight, std=dim**-0.5)
        with torch.no_grad():
            self.bag.weight[pad_id].zero_()
        self.pad_id = pad_id
        self.num_ids = num_ids
        self.out_dim = dim

    def forward(self, ids: Tensor) -> Tensor:
        if self.term_frequency == "raw":
            return self.bag(ids)
        wide = torch.float64 if self.bag.weight.dtype == torch.float64 else torch.float32
        weights = sublinear_weights(ids, self.num_ids, self.pad_id, dtype=wide)
        total = weights.sum(dim=1, keepdim=True).clamp_min(1e-12)
        weights = weights.to(self.bag.weight.dtype)
        return self.bag(ids, per_sample_weights=weights) / total.to(self.bag.weight.dtype)


def sublinear_weights(ids: Tensor, num_ids: int, pad_id: int = 0,
                      dtype: torch.dtype = torch.float32) -> Tensor:
    """Each position's share of ``1 + ln c``, ``c`` being how often its id occurs in its row:
    ``(1 + ln c) / c``, so that an id's positions together weigh ``1 + ln c``; 0 at padding.
    Shape: [B, L] int64 -> [B, L] of ``dtype``."""
    rows = torch.arange(ids.shape[0], device=ids.device).unsqueeze(1)
    _, inverse, counts = torch.unique(rows * num_ids + ids, return_inverse=True,
                                      return_counts=True)
    c = counts[inverse].to(dtype)
    return ((1 + c.log()) / c).masked_fill(ids == pad_id, 0.0)


class TextTower(nn.Module):
    """One side's network: body, then projection head (not normalised here).

    Shape: encode [B, L] -> [B, body.out_dim]; forward [B, L] -> [B, embedding_dim].
    """

    def __init__(self, body: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(self.body(ids))


class TextEncoder(nn.Module):
    """Query and document towers over raw strings (see the module docstring).

    ``towers``: ``{"shared": tower}`` (one network for both sides) or ``{"query": ...,
    "document": ...}``. ``max_lengths``: the ids kept per side. ``feature_widths``: the sides
    that take numeric feature rows, and their width. ``featurizer`` may be set
    later (:meth:`set_featurizer`, e.g. after fitting it on the training text); it is saved
    in the state dict.

    Shape: forward(texts [n], side) -> [n, embedding_dim] unit-norm rows;
    encode(texts [n], side) -> [n, feature_dim].
    """

    def __init__(
        self,
        towers: dict[str, TextTower],
        *,
        max_lengths: dict[str, int],
        feature_dim: int,
        embedding_dim: int,
        featurizer: Featurizer | None = None,
        featurizer_kind: str = "bow",
        feature_widths: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        if set(towers) not in ({"shared"}, set(SIDES)):
            raise ValueError(f"towers must be 'shared' or 'query' and 'document', got "
                             f"{sorted(towers)}")
        self.feature_widths = dict(feature_widths or {})
        if self.feature_widths and "shared" in towers:
            raise ValueError("a side of feature rows needs towers of its own, not a shared one")
        self.towers = nn.ModuleDict(towers)
        self.max_lengths = dict(max_lengths)
        self.feature_dim = feature_dim
        self.embedding_dim = embedding_dim
        self.featurizer = featurizer
        self.featurizer_kind = featurizer_kind

    @property
    def shared(self) -> bool:
        return "shared" in self.towers

    def tower(self, side: Side) -> TextTower:
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        return cast(TextTower, self.towers["shared" if self.shared else side])

    def set_featurizer(self, featurizer: Featurizer) -> None:
        self.featurizer = featurizer

    def takes_text(self, side: Side) -> bool:
        """False for a side of numeric feature rows."""
        return side not in self.feature_widths

    def ids(self, texts: Sequence[Any] | Tensor, side: Side) -> Tensor:
        """The ids of ``texts`` for ``side`` on the module's device (ids are passed through);
        for a side of feature rows, the rows as a float32 matrix.

        Shape: [n] -> [n, max_lengths[side]] int64, or [n, feature_widths[side]] float32.
        """
        if not self.takes_text(side):
            weight = next(self.tower(side).parameters())  # its device and dtype (bf16 too)
            width = self.feature_widths[side]
            return feature_matrix(texts, width, f"the {side} tower").to(weight.device,
                                                                        weight.dtype)
        if isinstance(texts, Tensor):
            return texts
        if self.featurizer is None:
            raise RuntimeError("the text encoder has no featurizer yet (set_featurizer)")
        if isinstance(texts, str):
            raise TypeError("pass a list of texts, not one string")
        if not all(isinstance(text, str) for text in texts):
            raise ValueError(f"the {side} tower takes texts, not rows of numbers")
        device = next(self.parameters()).device
        return self.featurizer.encode(list(texts), self.max_lengths[side]).to(device)

    def encode(self, texts: Sequence[Any] | Tensor, side: Side = "query") -> Tensor:
        """Body features before the head (not normalised)."""
        return self.tower(side).body(self.ids(texts, side))

    def forward(self, texts: Sequence[Any] | Tensor, side: Side = "query") -> Tensor:
        projected = self.tower(side)(self.ids(texts, side))
        # Normalised in float32, as ContrastiveEncoder does (bf16 loses digits in the sum).
        return F.normalize(projected.float(), dim=-1).to(projected.dtype)

    # The featurizer travels in the state dict (checkpoints, copies, the logged model).
    def get_extra_state(self) -> Any:
        if self.featurizer is None:
            return {}
        return {"kind": self.featurizer_kind, "record": self.featurizer.to_dict()}

    def set_extra_state(self, state: Any) -> None:
        if not state:
            return
        self.featurizer = load_featurizer(state["kind"], state["record"])
        self.featurizer_kind = state["kind"]


class TokenizerFeaturizer:
    """A subword tokenizer as a transformer's featurizer: ``[CLS] tokens [SEP]``, padded."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer  # a dist_contrast.text.tokenizer.TextTokenizer

    @property
    def num_ids(self) -> int:
        return int(self.tokenizer.vocab_size)

    def encode(self, texts: Sequence[str], max_length: int) -> Tensor:
        ids: Tensor = self.tokenizer.encode(texts, max_length, special_tokens=True)
        return ids

    def to_dict(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer.to_json()}


def load_featurizer(kind: str, record: dict[str, Any]) -> Featurizer:
    """A featurizer from its ``to_dict`` record."""
    if kind == "bow":
        from dist_contrast.text.bow import BowFeaturizer

        return BowFeaturizer.from_dict(record)
    if kind == "tokenizer":
        from dist_contrast.text.tokenizer import TextTokenizer

        return TokenizerFeaturizer(TextTokenizer.from_json(record["tokenizer"]))
    raise ValueError(f"unknown featurizer kind {kind!r}")
