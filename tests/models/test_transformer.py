"""The transformer body: pooled shapes, padding that changes nothing, loading a saved model back
with the same outputs, one clear error for a folder that holds no model, and bf16 parameters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dist_contrast.models.transformer import TransformerBody

PAD = 0
# Two texts of 5 and 3 tokens ([CLS] ... [SEP] as ids 2 ... 3), right-padded to 8.
IDS = torch.tensor([[2, 7, 8, 9, 3, 0, 0, 0], [2, 11, 3, 0, 0, 0, 0, 0]])


def _body(pooling: str = "mean", pad_id: int = PAD) -> TransformerBody:
    torch.manual_seed(0)
    body = TransformerBody.from_config(
        vocab_size=50, hidden_dim=32, num_layers=2, num_heads=2, max_length=16, pad_id=pad_id,
        pooling=pooling,  # type: ignore[arg-type]
    )
    return body.eval()


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_shapes_and_attributes(pooling: str) -> None:
    body = _body(pooling)
    out = body(IDS)
    assert out.shape == (2, 32) and out.dtype == torch.float32
    assert (body.out_dim, body.pad_id, body.pooling, body.max_length) == (32, PAD, pooling, 16)
    assert getattr(body.model, "pooler", None) is None  # no pooler layer: unused parameters
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_padding_does_not_change_the_output(pooling: str) -> None:
    body = _body(pooling)
    with torch.no_grad():
        short = body(IDS[:, :5])
        long = body(torch.cat([IDS, torch.full((2, 8), PAD)], dim=1))
        alone = body(IDS[1:, :3])  # the second text with no padding at all
    assert torch.allclose(short, long, atol=1e-5)
    assert torch.allclose(short[1:], alone, atol=1e-5)


def test_mean_pools_only_real_tokens_and_an_empty_text_is_zeros() -> None:
    body = _body("mean", pad_id=5)  # a pad id other than 0: the mask is ids != pad_id
    ids = torch.tensor([[2, 7, 3, 5], [5, 5, 5, 5]])
    with torch.no_grad():
        hidden = body.model(input_ids=ids[:1, :3]).last_hidden_state
        out = body(ids)
    assert torch.allclose(out[0], hidden[0].mean(dim=0), atol=1e-5)
    assert torch.equal(out[1], torch.zeros(32))


def test_gradients_reach_every_parameter() -> None:
    body = _body("mean").train()
    (body(IDS) @ torch.randn(32)).sum().backward()
    for name, param in body.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_from_pretrained_loads_a_saved_model(pooling: str, tmp_path: Path) -> None:
    body = _body(pooling)
    assert body.save_pretrained(tmp_path / "model") == tmp_path / "model"
    loaded = TransformerBody.from_pretrained(tmp_path / "model", pooling).eval()  # type: ignore[arg-type]
    assert (loaded.out_dim, loaded.pad_id, loaded.pooling) == (32, PAD, pooling)
    with torch.no_grad():
        assert torch.equal(loaded(IDS), body(IDS))
    override = TransformerBody.from_pretrained(tmp_path / "model", "mean", pad_id=7)
    assert override.pad_id == 7


def test_from_pretrained_bad_path_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no Hugging Face model at .*missing \\(no folder\\)"):
        TransformerBody.from_pretrained(tmp_path / "missing", "mean")
    with pytest.raises(ValueError, match="no config.json in the folder") as error:
        TransformerBody.from_pretrained(tmp_path, "mean")
    assert "\n" not in str(error.value) and "save_pretrained" in str(error.value)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="cannot load the model in") as error:
        TransformerBody.from_pretrained(tmp_path, "mean")
    assert "\n" not in str(error.value)


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="not a multiple of num_heads"):
        TransformerBody.from_config(50, 30, 1, 4, 16, 0, "mean")
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        TransformerBody.from_config(50, 32, 1, 2, 16, 0, "max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="encode with max_length at most 16"):
        _body()(torch.ones(1, 17, dtype=torch.int64))


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_bf16_parameters(pooling: str) -> None:
    body = _body(pooling)
    with torch.no_grad():
        reference = body(IDS)
        body = body.to(torch.bfloat16)
        out = body(IDS)
        longer = body(torch.cat([IDS, torch.full((2, 4), PAD)], dim=1))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert torch.allclose(out.float(), reference, atol=0.1, rtol=0.05)
    assert torch.allclose(out.float(), longer.float(), atol=0.02)
    body.train()
    body(IDS).float().sum().backward()
    assert all(p.grad is not None for p in body.parameters() if p.requires_grad)
