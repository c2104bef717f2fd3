"""A Hugging Face transformer as a text backbone: token ids in, one pooled vector per text out.

Either a small BERT built from the run's settings (randomly initialised, for training from
scratch) or a pretrained model from a local folder. Nothing is ever downloaded: a cluster's
workers often have no network, and a run must not depend on what a hub serves today.

The attention mask is derived from the ids (``ids != pad_id``) rather than carried alongside
them, so a batch is one int64 tensor like every other input of the project. Right padding
changes nothing: the padded positions are masked out of attention and out of the mean.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn
from transformers import AutoModel, BertConfig, BertModel, PreTrainedModel

Pooling = Literal["mean", "cls"]
POOLINGS: tuple[Pooling, ...] = ("mean", "cls")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _check_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}: use one of {', '.join(POOLINGS)}")


def _load_without_pooler(folder: Path) -> PreTrainedModel:
    """``AutoModel`` of a local folder, without BERT's pooler layer where the model has one."""
    try:
        # BERT-like models take add_pooling_layer: then no pooler is built, none reported missing.
        model = AutoModel.from_pretrained(
            str(folder), local_files_only=True, add_pooling_layer=False
        )
    except TypeError:  # models without the argument (DistilBERT, ModernBERT, ...)
        model = AutoModel.from_pretrained(str(folder), local_files_only=True)
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model


class TransformerBody(nn.Module):
    """A transformers encoder (``AutoModel``) pooled to one vector per text.

    ``mean`` averages the last hidden states over the real (non-pad) tokens; ``cls`` takes the
    first token's, which is ``[CLS]`` when the ids were encoded with special tokens. Works with
    float32 or bfloat16 parameters (DeepSpeed bf16 casts them); the mean is summed in float32.

    Shape: [B, L] int64 -> [B, out_dim].
    """

    def __init__(self, model: PreTrainedModel, pad_id: int, pooling: Pooling) -> None:
        super().__init__()
        _check_pooling(pooling)
        self.model = model
        self.pad_id = pad_id
        self.pooling: Pooling = pooling
        self.out_dim: int = model.config.hidden_size
        # Positions the model has embeddings for (BERT's max_position_embeddings); None if
        # the config does not say.
        self.max_length: int | None = getattr(model.config, "max_position_embeddings", None)

    @classmethod
    def from_config(
        cls,
        vocab_size: int,
        hidden_dim: int,
        num_layers: int,
        num_heads: int,
        max_length: int,
        pad_id: int,
        pooling: Pooling,
    ) -> TransformerBody:
        """A randomly initialised BERT (no pooler layer) of these sizes; the feed-forward width
        is 4 × ``hidden_dim`` as in BERT, dropout BERT's 0.1."""
        _check_pooling(pooling)
        if hidden_dim % num_heads:
            raise ValueError(
                f"hidden_dim {hidden_dim} is not a multiple of num_heads {num_heads}: "
                f"choose sizes where each head gets hidden_dim / num_heads dimensions"
            )
        if not 0 <= pad_id < vocab_size:
            raise ValueError(f"pad_id {pad_id} is outside the vocabulary (size {vocab_size})")
        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_dim,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            intermediate_size=4 * hidden_dim,
            max_position_embeddings=max_length,
            pad_token_id=pad_id,
        )
        return cls(BertModel(config, add_pooling_layer=False), pad_id, pooling)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, pooling: Pooling, pad_id: int | None = None
    ) -> TransformerBody:
        """The model of a local Hugging Face folder (``config.json`` and weights, as
        ``save_pretrained`` writes them), in float32; never downloads.

        ``pad_id`` defaults to the config's ``pad_token_id``; pass the tokenizer's when the
        config has none. A pooler layer (BERT's) is dropped: the pooling here replaces it, and
        unused parameters would get no gradient.
        """
        _check_pooling(pooling)
        folder = Path(path)
        if not (folder / "config.json").is_file():
            what = "no folder" if not folder.is_dir() else "no config.json in the folder"
            raise ValueError(
                f"no Hugging Face model at {folder} ({what}): pass a local folder written by "
                f"save_pretrained (config.json and the weights); models are never downloaded"
            )
        try:
            model = _load_without_pooler(folder)
        except Exception as error:
            raise ValueError(
                f"cannot load the model in {folder} ({_one_line(error)}): pass a folder written "
                f"by save_pretrained of a transformers model"
            ) from None
        model = model.float()
        if pad_id is None:
            pad_id = getattr(model.config, "pad_token_id", None)
            if pad_id is None:
                raise ValueError(
                    f"the model in {folder} has no pad_token_id in its config.json: pass pad_id "
                    f"(the tokenizer's pad id)"
                )
        return cls(model, pad_id, pooling)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the Hugging Face model folder (config.json, model.safetensors); returns it."""
        folder = Path(folder)
        self.model.save_pretrained(str(folder))
        return folder

    def forward(self, ids: Tensor) -> Tensor:
        if self.max_length is not None and ids.shape[1] > self.max_length:
            raise ValueError(
                f"token ids of length {ids.shape[1]} but the model has {self.max_length} "
                f"positions: encode with max_length at most {self.max_length}"
            )
        mask = ids != self.pad_id
        # An int mask: transformers turns it into an additive one of the parameters' dtype.
        hidden = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        # where, not a product: a row of padding only (an empty text) gives zeros, even if
        # attention over no key at all gave NaN there.
        summed = torch.where(mask.unsqueeze(-1), hidden.float(), 0.0).sum(dim=1)
        count = mask.sum(dim=1, keepdim=True).clamp(min=1)
        return (summed / count).to(hidden.dtype)
