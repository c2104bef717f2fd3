"""Export a trained text encoder as a sentence-transformers model folder.

``SentenceTransformer(folder)`` is what retrieval tools (and most people) load a text encoder
with, so a run's transformer tower is written in that form: the Hugging Face model with its
tokenizer, the pooling, one Dense module per Linear of the projection head, and the
normalisation. The modules are built with sentence-transformers' own classes and saved by it,
so the folder's layout is whatever the installed version writes and reads.

The folder gives the same embeddings as the project's pipeline
``F.normalize(head(body(tokenizer.encode(texts, max_length, special_tokens=True))))``: the
tokenizer is the same ``tokenizers`` JSON, the pooling mask is the tokenizer's attention mask
(the non-pad tokens), and the weights are written in float32.

Nothing here imports the rest of the package: the models import the tokenizer, so the export
takes the body by what it offers (``ExportableBody``, which ``TransformerBody`` has) rather
than by its class.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

if TYPE_CHECKING:
    from dist_contrast.text.tokenizer import TextTokenizer


class ExportableBody(Protocol):
    """What the export needs of a text body: ``dist_contrast.models.transformer.TransformerBody``.

    Shape: its forward [B, L] int64 -> [B, out_dim].
    """

    @property
    def out_dim(self) -> int: ...

    @property
    def pooling(self) -> str: ...  # "mean" or "cls"

    @property
    def max_length(self) -> int | None: ...

    def parameters(self) -> Iterable[nn.Parameter]: ...

    def to(self, *args: Any, **kwargs: Any) -> Any: ...

    def save_pretrained(self, folder: str | Path) -> Path: ...


def _layers(head: nn.Module | Sequence[nn.Module]) -> list[nn.Module]:
    """The head's modules in order, nested Sequentials flattened; a module whose ``net`` is a
    Sequential (the project's ProjectionHead) is that Sequential."""
    net = getattr(head, "net", None)
    if isinstance(head, nn.Module) and isinstance(net, nn.Sequential):
        return _layers(net)
    if isinstance(head, nn.Module) and not isinstance(head, nn.Sequential):
        return [head]
    items: Iterable[nn.Module] = head
    return [layer for item in items for layer in _layers(item)]


def _dense_specs(head: nn.Module | Sequence[nn.Module]) -> list[tuple[nn.Linear, bool]]:
    """Each Linear of the head and whether a ReLU follows it. Dropout is skipped (identity at
    inference); anything else cannot be written as a Dense module."""
    specs: list[tuple[nn.Linear, bool]] = []
    for layer in _layers(head):
        if isinstance(layer, nn.Linear):
            specs.append((layer, False))
        elif isinstance(layer, nn.ReLU):
            if not specs or specs[-1][1]:
                raise ValueError(
                    "the projection head has a ReLU that follows no Linear: only Linear layers "
                    "each followed by at most one ReLU can be exported"
                )
            specs[-1] = (specs[-1][0], True)
        elif not isinstance(layer, nn.Dropout | nn.Identity):
            raise ValueError(
                f"the projection head has a {type(layer).__name__} layer: only Linear and ReLU "
                f"layers (and Dropout) can be exported to sentence-transformers Dense modules"
            )
    return specs


def export_sentence_transformers(
    body: ExportableBody,
    head: nn.Module | Sequence[nn.Module],
    tokenizer: TextTokenizer,
    max_length: int,
    folder: str | Path,
    normalize: bool = True,
) -> Path:
    """Write ``body`` + ``head`` + ``tokenizer`` as a sentence-transformers model in ``folder``
    (a new or empty folder); returns it.

    ``head`` is the projection head: an ``nn.Sequential`` (nested ones are fine), a list of
    modules, or a ``ProjectionHead``, made of Linear layers each optionally followed by a ReLU
    (an empty head exports the pooled vector as it is). Texts longer than ``max_length``
    tokens (special tokens included) are cut, as ``tokenizer.encode`` cuts them.
    """
    # Imported here: sentence-transformers takes seconds to import, and only the export needs it.
    try:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.modules import (
            Dense,
            Normalize,
            Pooling,
            Transformer,
        )
    except ImportError:  # older releases have only sentence_transformers.models
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.models import (  # type: ignore[no-redef]
            Dense,
            Normalize,
            Pooling,
            Transformer,
        )

    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ValueError(
            f"{folder} already exists and is not an empty folder: export into a new folder"
        )
    specs = _dense_specs(head)
    width = body.out_dim
    for linear, _ in specs:
        if linear.in_features != width:
            raise ValueError(
                f"the projection head's Linear takes {linear.in_features} features where "
                f"{width} come in: pass the head trained with this body"
            )
        width = linear.out_features
    if body.max_length is not None and max_length > body.max_length:
        raise ValueError(
            f"max_length {max_length} is more than the model's {body.max_length} positions: "
            f"export with max_length at most {body.max_length}"
        )

    if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in body.parameters()):
        body = copy.deepcopy(body).to("cpu", torch.float32)  # a bf16 or GPU body stays as it is
    with tempfile.TemporaryDirectory(prefix="st-export-") as staging:
        # sentence-transformers builds its Transformer module from a folder: stage one.
        body.save_pretrained(staging)
        tokenizer.as_hf_tokenizer(max_length).save_pretrained(staging)
        modules: list[nn.Module] = [
            Transformer(staging, max_seq_length=max_length),
            Pooling(body.out_dim, pooling_mode=body.pooling),
        ]
        for linear, relu in specs:
            weight = linear.weight.detach().to("cpu", torch.float32).clone()
            bias = linear.bias
            dense = Dense(
                linear.in_features,
                linear.out_features,
                bias=bias is not None,
                activation_function=nn.ReLU() if relu else nn.Identity(),
                init_weight=weight,
                init_bias=None if bias is None else bias.detach().to("cpu", torch.float32).clone(),
            )
            modules.append(dense)
        if normalize:
            modules.append(Normalize())
        SentenceTransformer(modules=modules, device="cpu").save(str(folder))
    return folder
