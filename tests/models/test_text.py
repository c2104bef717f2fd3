"""Text encoders: one shared tower or a query and a document tower, over raw strings, with the
featurizer fitted on the training text and carried in the state dict (checkpoints, the momentum
encoder's copy)."""

from __future__ import annotations

import copy

import pytest
import torch

from dist_contrast.models import ModelConfig
from dist_contrast.models.build import build_model, fit_featurizer
from dist_contrast.models.text import BowBody, TextEncoder, sublinear_weights

TEXTS = ["read a csv file", "def read_csv(path): return open(path)", "parse the json",
         "def parse_json(text): return loads(text)", "sort a list", "def sort(xs): ..."]


def _encoder(**fields: object) -> TextEncoder:
    base = {"name": "bow", "hidden_dim": 16, "embedding_dim": 8, "vocab_size": 32,
            "query_max_length": 6, "document_max_length": 10}
    if fields.get("name", "bow") == "bow":
        base["hash_buckets"] = 64
    cfg = ModelConfig(**{**base, **fields})
    torch.manual_seed(0)
    encoder = build_model(cfg, (1,))
    assert isinstance(encoder, TextEncoder)
    fit_featurizer(encoder, cfg, TEXTS)
    return encoder.eval()


def test_forward_gives_unit_rows_and_each_side_its_own_length() -> None:
    encoder = _encoder()
    out = encoder(TEXTS[:3], side="query")
    assert out.shape == (3, 8)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    assert encoder.ids(TEXTS[:2], "query").shape == (2, 6)
    assert encoder.ids(TEXTS[:2], "document").shape == (2, 10)
    assert encoder.encode(TEXTS[:2], "document").shape == (2, 16)


def test_a_shared_tower_is_one_network_and_separate_towers_are_two() -> None:
    shared = _encoder()
    short = ["csv"]  # 4 features, within both lengths: the same ids on both sides
    torch.testing.assert_close(shared(short, side="query"), shared(short, side="document"))
    separate = _encoder(towers="separate")
    assert set(separate.towers) == {"query", "document"}
    assert not torch.allclose(separate(short, side="query"), separate(short, side="document"))
    counts = [sum(p.numel() for p in e.parameters()) for e in (shared, separate)]
    assert counts[1] == 2 * counts[0]


def test_ids_pass_through_and_bad_input_is_refused() -> None:
    encoder = _encoder()
    ids = encoder.ids(TEXTS[:2], "query")
    torch.testing.assert_close(encoder(ids, side="query"), encoder(TEXTS[:2], side="query"))
    with pytest.raises(TypeError, match="list of texts"):
        encoder("one string", side="query")
    with pytest.raises(ValueError, match="side"):
        encoder(TEXTS[:2], side="passage")  # type: ignore[arg-type]


def test_the_featurizer_travels_in_the_state_dict_and_in_copies() -> None:
    encoder = _encoder()
    fresh = build_model(ModelConfig(name="bow", hidden_dim=16, embedding_dim=8, vocab_size=32,
                                    hash_buckets=64, query_max_length=6,
                                    document_max_length=10), (1,))
    assert isinstance(fresh, TextEncoder) and fresh.featurizer is None
    fresh.load_state_dict(encoder.state_dict())
    fresh.eval()
    torch.testing.assert_close(fresh(TEXTS, side="document"), encoder(TEXTS, side="document"))
    twin = copy.deepcopy(encoder)  # what the momentum encoder does
    torch.testing.assert_close(twin(TEXTS, side="query"), encoder(TEXTS, side="query"))


def test_a_transformer_encoder_trains_its_tokenizer_on_the_text() -> None:
    encoder = _encoder(name="transformer", hidden_dim=16, num_layers=1, num_heads=2,
                       vocab_size=64, projection_layers=1)
    ids = encoder.ids(TEXTS[:2], "document")
    assert ids.shape == (2, 10) and int(ids.max()) < 64
    out = encoder(TEXTS[:2], side="document")
    assert out.shape == (2, 8) and torch.isfinite(out).all()


def test_the_sublinear_bag_weighs_an_id_met_c_times_one_plus_ln_c() -> None:
    """Row [5, 5, 5, 7, pad]: (1 + ln 3) e5 + e7 over 2 + ln 3; raw: (3 e5 + e7) / 4; a row
    of padding only: zeros."""
    torch.manual_seed(0)
    ids = torch.tensor([[5, 5, 5, 7, 0], [0, 0, 0, 0, 0], [7, 3, 0, 0, 0]])
    log = BowBody(10, 4, term_frequency="log").double()
    raw = BowBody(10, 4).double()
    raw.load_state_dict(log.state_dict())
    e = log.bag.weight.detach()
    ln3 = torch.log(torch.tensor(3.0, dtype=torch.float64))
    expected = torch.stack([((1 + ln3) * e[5] + e[7]) / (2 + ln3), torch.zeros(4, dtype=e.dtype),
                            (e[7] + e[3]) / 2])
    torch.testing.assert_close(log(ids), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(raw(ids)[0], (3 * e[5] + e[7]) / 4, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(raw(ids)[2], log(ids)[2], rtol=1e-12, atol=1e-12)
    weights = sublinear_weights(ids, 10)
    torch.testing.assert_close(weights[0], torch.tensor([(1 + ln3.item()) / 3] * 3 + [1.0, 0.0]))


def test_the_sublinear_bag_gets_its_gradient_and_runs_in_bf16() -> None:
    torch.manual_seed(0)
    body = BowBody(10, 4, term_frequency="log").double()
    ids = torch.tensor([[5, 5, 5, 7, 0], [1, 2, 2, 0, 0]])
    assert torch.autograd.gradcheck(
        lambda w: torch.func.functional_call(body, {"bag.weight": w}, (ids,)),
        (body.bag.weight.detach().clone().requires_grad_(),))
    half = BowBody(10, 4, term_frequency="log").to(torch.bfloat16)
    assert half(ids).dtype == torch.bfloat16
    encoder = _encoder(term_frequency="log")
    assert encoder(TEXTS[:2], side="query").shape == (2, 8)


@pytest.mark.parametrize(("fields", "fragment"), [
    ({"name": "mlp", "hash_buckets": 10}, "model.hash_buckets applies only to model.name='bow'"),
    ({"name": "mlp", "towers": "separate"}, "model.towers applies only"),
    ({"name": "bow", "num_heads": 2}, "model.num_heads applies only to model.name='transformer'"),
    ({"name": "transformer", "term_frequency": "log"},
     "model.term_frequency applies only to model.name='bow'"),
    ({"name": "transformer", "hidden_dim": 30, "num_heads": 4}, "multiple of"),
])
def test_settings_of_another_encoder_are_refused(fields: dict[str, object],
                                                 fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        ModelConfig(**fields)


# --- a side of numeric feature rows ------------------------------------------------------------


@pytest.mark.parametrize("name", ["bow", "transformer"])
def test_a_side_of_feature_rows_has_an_mlp_tower_of_the_text_width(name: str) -> None:
    fields: dict[str, object] = {"towers": "separate", "document_features": 5}
    if name == "transformer":
        fields |= {"name": "transformer", "num_heads": 2, "num_layers": 1, "vocab_size": 64}
    encoder = _encoder(**fields)
    rows = torch.randn(4, 5)
    out = encoder(rows, side="document")
    assert out.shape == (4, 8)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4))
    assert encoder.encode(rows, "document").shape == encoder.encode(TEXTS[:4], "query").shape
    # Lists of numbers, arrays and float32 bytes are the same rows.
    as_bytes = [row.numpy().tobytes() for row in rows]
    torch.testing.assert_close(encoder(as_bytes, side="document"), out)
    torch.testing.assert_close(encoder(rows.tolist(), side="document"), out)
    assert not encoder.takes_text("document") and encoder.takes_text("query")
    # Gradients reach the MLP from the rows' embeddings.
    encoder(rows, side="document").sum().backward()
    assert encoder.tower("document").body.net[1].weight.grad is not None


def test_a_side_is_fed_its_own_kind_in_one_line() -> None:
    encoder = _encoder(towers="separate", query_features=3)
    with pytest.raises(ValueError, match="the query tower takes rows of 3 numbers, not text"):
        encoder(TEXTS[:2], side="query")
    with pytest.raises(ValueError, match=r"takes rows of 3 numbers, got shape \(2, 4\)"):
        encoder(torch.zeros(2, 4), side="query")
    with pytest.raises(ValueError, match="not all lists of numbers of one length"):
        encoder([[1, 2, 3], [1, 2]], side="query")
    with pytest.raises(ValueError, match="the document tower takes texts, not rows of numbers"):
        encoder([[1.0, 2.0, 3.0]], side="document")


def test_feature_rows_follow_the_towers_dtype() -> None:
    encoder = _encoder(towers="separate", document_features=3).to(torch.bfloat16)
    assert encoder([[1.0, 2.0, 3.0]], side="document").dtype == torch.bfloat16


@pytest.mark.parametrize(("fields", "message"), [
    ({"name": "bow", "document_features": 4},
     "model.document_features needs model.towers=separate"),
    ({"name": "bow", "towers": "separate", "query_features": 4, "document_features": 4},
     "at least one side must be text"),
    ({"name": "mlp", "document_features": 4}, "model.document_features applies only to"),
])
def test_feature_settings_are_checked(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig(**fields)
