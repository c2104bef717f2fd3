"""The sentence-transformers export: the folder ``SentenceTransformer`` loads embeds texts as our
own pipeline does (tokenizer → body → head → normalise), for both poolings, truncation
included; heads that cannot be written as Dense modules are refused."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from torch import nn

from dist_contrast.models import ProjectionHead
from dist_contrast.models.transformer import TransformerBody
from dist_contrast.text import TextTokenizer, export_sentence_transformers

MAX_LENGTH = 16
_WORDS = ["read", "csv", "file", "path", "open", "return", "parse", "json", "value", "http",
          "response", "list", "dict", "key", "write", "the", "a", "from", "into", "each"]


def _sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 10))) for _ in range(n)]


CORPUS = _sentences(50, seed=0)
# Unseen texts, one longer than MAX_LENGTH tokens (cut the same way by both), one empty.
TEXTS = [*_sentences(6, seed=1), " ".join(_WORDS * 2), "", "Parse JSON_file(path)!"]


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer.train(CORPUS, vocab_size=200)


def _body(tokenizer: TextTokenizer, pooling: str) -> TransformerBody:
    torch.manual_seed(0)
    return TransformerBody.from_config(
        tokenizer.vocab_size, hidden_dim=32, num_layers=2, num_heads=2, max_length=MAX_LENGTH,
        pad_id=tokenizer.pad_id, pooling=pooling,  # type: ignore[arg-type]
    ).eval()


def _ours(body: TransformerBody, head: nn.Module, tokenizer: TextTokenizer) -> torch.Tensor:
    with torch.no_grad():
        ids = tokenizer.encode(TEXTS, MAX_LENGTH, special_tokens=True)
        return F.normalize(head(body(ids)), dim=-1)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_loaded_model_embeds_as_our_pipeline(
    pooling: str, tokenizer: TextTokenizer, tmp_path: Path
) -> None:
    body = _body(tokenizer, pooling)
    head = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 16)).eval()
    folder = export_sentence_transformers(body, head, tokenizer, MAX_LENGTH, tmp_path / "st")
    assert folder == tmp_path / "st" and (folder / "modules.json").is_file()
    model = SentenceTransformer(str(folder), device="cpu")
    assert model.max_seq_length == MAX_LENGTH
    got = model.encode(TEXTS, convert_to_tensor=True, batch_size=4)
    assert got.shape == (len(TEXTS), 16)
    assert torch.allclose(got.cpu(), _ours(body, head, tokenizer), atol=1e-5)


def test_projection_head_bf16_body_and_no_normalisation(
    tokenizer: TextTokenizer, tmp_path: Path
) -> None:
    body = _body(tokenizer, "mean")
    head = ProjectionHead(32, 24, 8, num_layers=3, batch_norm=False).eval()
    body.to(torch.bfloat16)  # as DeepSpeed bf16 leaves it: exported in float32 from a copy
    folder = export_sentence_transformers(
        body, head, tokenizer, MAX_LENGTH, tmp_path / "st", normalize=False
    )
    assert next(body.parameters()).dtype == torch.bfloat16  # the body itself is untouched
    got = SentenceTransformer(str(folder), device="cpu").encode(TEXTS, convert_to_tensor=True)
    with torch.no_grad():  # the bf16 weights, exactly, in float32
        want = head(body.float()(tokenizer.encode(TEXTS, MAX_LENGTH, special_tokens=True)))
    assert torch.allclose(got.cpu(), want, atol=1e-5)
    assert not torch.allclose(got.norm(dim=-1), torch.ones(len(TEXTS)))


def test_refusals(tokenizer: TextTokenizer, tmp_path: Path) -> None:
    body = _body(tokenizer, "mean")
    with pytest.raises(ValueError, match="BatchNorm1d layer: only Linear and ReLU"):
        export_sentence_transformers(
            body, ProjectionHead(32, 24, 8, 2, batch_norm=True), tokenizer, 8, tmp_path / "a"
        )
    with pytest.raises(ValueError, match="ReLU that follows no Linear"):
        export_sentence_transformers(body, [nn.ReLU(), nn.Linear(32, 8)], tokenizer, 8,
                                     tmp_path / "b")
    with pytest.raises(ValueError, match="takes 16 features where 32 come in"):
        export_sentence_transformers(body, [nn.Linear(16, 8)], tokenizer, 8, tmp_path / "c")
    with pytest.raises(ValueError, match="more than the model's 16 positions"):
        export_sentence_transformers(body, [], tokenizer, 17, tmp_path / "d")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "x").write_text("")
    with pytest.raises(ValueError, match="not an empty folder: export into a new folder"):
        export_sentence_transformers(body, [], tokenizer, 8, tmp_path / "e")
