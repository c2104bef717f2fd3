import pytest
import torch
from pydantic import ValidationError

from dist_contrast.models import ContrastiveEncoder, ModelConfig, build_model

CASES = [  # name, input shape, batch_norm
    ("mlp", (64,), False),
    ("mlp", (64,), True),
    ("mlp", (1, 8, 8), False),  # the MLP flattens images
    ("cnn", (1, 8, 8), False),
    ("cnn", (1, 8, 8), True),
    ("cnn", (3, 32, 32), True),
]


@pytest.mark.parametrize(("name", "shape", "batch_norm"), CASES)
def test_unit_norm_embeddings_of_the_right_shape(name, shape, batch_norm):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, batch_norm=batch_norm), shape)
    assert isinstance(model, ContrastiveEncoder)
    x = torch.rand(6, *shape)
    out = model(x)
    assert out.shape == (6, 128) and out.dtype == torch.float32
    assert torch.allclose(out.norm(dim=1), torch.ones(6), atol=1e-5)
    assert model.encode(x).shape == (6, model.feature_dim) == (6, 256)


@pytest.mark.parametrize(("name", "shape", "batch_norm"), CASES)
def test_gradients_reach_every_parameter(name, shape, batch_norm):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, batch_norm=batch_norm), shape)
    out = model(torch.rand(6, *shape))
    (out @ torch.randn(128)).sum().backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, param_name


@pytest.mark.parametrize(("name", "shape"), [("mlp", (64,)), ("cnn", (1, 8, 8))])
def test_parameter_count_is_sane(name, shape):
    model = build_model(ModelConfig(name=name), shape)
    count = sum(p.numel() for p in model.parameters())
    assert 50_000 < count < 2_000_000, count


def test_sizes_follow_the_config():
    cfg = ModelConfig(hidden_dim=32, num_layers=1, embedding_dim=16, projection_layers=1)
    model = build_model(cfg, (10,))
    # One hidden Linear 10->32 and a linear head 32->16.
    assert sum(p.numel() for p in model.parameters()) == (10 * 32 + 32) + (32 * 16 + 16)
    assert model(torch.rand(3, 10)).shape == (3, 16)


def test_bfloat16_model_takes_float32_inputs():
    model = build_model(ModelConfig(name="cnn", batch_norm=True), (1, 8, 8)).to(torch.bfloat16)
    out = model(torch.rand(4, 1, 8, 8))  # loaders yield float32
    assert out.dtype == torch.bfloat16 and out.shape == (4, 128)
    assert torch.allclose(out.float().norm(dim=1), torch.ones(4), atol=1e-2)


def test_bfloat16_autocast_forward_and_backward():
    model = build_model(ModelConfig(batch_norm=True), (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.rand(4, 64))
    assert torch.isfinite(out.float()).all()
    out.float().sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_dropout_is_active_only_in_training():
    model = build_model(ModelConfig(dropout=0.5), (20,))
    x = torch.rand(4, 20)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_cnn_needs_images():
    with pytest.raises(ValueError, match="needs image inputs"):
        build_model(ModelConfig(name="cnn"), (64,))


def test_config_defaults_and_impossible_combinations():
    assert ModelConfig.model_validate({}).embedding_dim == 128
    with pytest.raises(ValidationError, match="only to model.name='cnn'"):
        ModelConfig(cnn_channels=8)
    with pytest.raises(ValidationError, match="projection_layers >= 2"):
        ModelConfig(projection_layers=1, projection_hidden_dim=64)
    with pytest.raises(ValidationError, match="extra"):
        ModelConfig.model_validate({"width": 3})
    with pytest.raises(ValidationError):
        ModelConfig(dropout=1.0)
