import pytest
from pydantic import ValidationError

from dist_contrast.config import Config
from dist_contrast.negatives import NegativesConfig


def test_defaults_are_in_batch_only():
    cfg = NegativesConfig()
    assert cfg.sources == ["batch"]
    assert cfg.queue.size == 65536 and cfg.momentum == 0.999


def test_bank_defaults_keep_instdisc_constant_normalizer():
    # normalizer_every=0: Z is estimated once and kept, as InstDisc prescribes.
    assert NegativesConfig().bank.normalizer_every == 0


def test_miner_defaults_do_not_use_labels():
    # Training is self-supervised: filtering mined negatives by label must be opted into.
    miner = NegativesConfig().miner
    assert miner.filter_same_label is False
    assert miner.quantizer == "flat" and miner.retrain_iterations >= 1


def test_full_combination_validates():
    cfg = NegativesConfig.model_validate(
        {
            "sources": ["batch", "queue", "bank", "mined"],
            "momentum_encoder": True,
            "shuffle_bn": True,
            "queue": {"size": 1000, "layout": "sharded"},
            "miner": {"index": "hnsw", "rank_window": [10, 200], "num_negatives": 64},
        }
    )
    assert cfg.miner.search_k == 200 + cfg.miner.extra


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"sources": ["queue"]}, "momentum_encoder"),
        ({"sources": ["batch", "mined"]}, "add 'bank'"),
        ({"sources": []}, "empty"),
        ({"sources": ["batch", "batch"]}, "repeats"),
        ({"sources": ["batch", "moco"]}, "sources"),
        ({"shuffle_bn": True}, "momentum_encoder"),
        ({"momentum": 1.0}, "momentum"),
        ({"queue": {"size": 0}}, "size"),
        ({"queue": {"layout": "striped"}}, "layout"),
        ({"miner": {"index": "lsh"}}, "index"),
        ({"miner": {"nlist": 16, "nprobe": 32}}, "nprobe"),
        ({"miner": {"rank_window": [50, 10]}}, "rank_window"),
        ({"miner": {"rank_window": [0, 10], "num_negatives": 64}}, "widen"),
        ({"miner": {"refresh_every": 10, "rebuild_every": 5}}, "rebuild_every"),
        ({"bank": {"momentum": -0.1}}, "momentum"),
        ({"bank": {"normalizer_every": -1}}, "normalizer_every"),
        ({"sources": ["bank"], "bank": {"as_pool": True}, "queue_size": 3}, "queue_size"),
        (
            {"sources": ["queue", "bank"], "momentum_encoder": True, "bank": {"as_pool": True}},
            "keep one",
        ),
        ({"bank": {"random_k": -1}}, "random_k"),
        ({"bank": {"random_k": 8}}, "needs 'bank' in negatives.sources"),
        ({"sources": ["bank"], "bank": {"random_k": 8, "as_pool": True}}, "keep one"),
    ],
)
def test_invalid_configs_name_the_key(raw, message):
    with pytest.raises(ValidationError, match=message):
        NegativesConfig.model_validate(raw)


def test_frozen():
    cfg = NegativesConfig()
    with pytest.raises(ValidationError):
        cfg.momentum = 0.5  # type: ignore[misc]


def _with_loss(loss: str, **negatives: object) -> Config:
    return Config.model_validate({"loss": {"name": loss}, "negatives": negatives})


def test_the_loss_declarations_are_checked_against_the_sources():
    _with_loss("nce", sources=["bank"])
    with pytest.raises(ValueError, match="add 'bank'"):
        _with_loss("nce")
    with pytest.raises(ValueError, match="as_pool"):
        _with_loss("info_nce", sources=["bank"])
    with pytest.raises(ValueError, match="layout=replicated or info_nce"):
        _with_loss("simple", sources=["batch", "queue"], momentum_encoder=True,
                   queue={"layout": "sharded"})


def _with_positive(loss: str, positive: str, **negatives: object) -> Config:
    return Config.model_validate({"loss": {"name": loss, "positive": positive},
                                  "negatives": negatives})


def test_the_positive_from_the_bank_is_checked_against_the_loss_and_the_sources():
    cfg = _with_positive("hard_info_nce", "memory", sources=["bank"], bank={"as_pool": True})
    assert cfg.loss.positive_source == "memory" and cfg.loss_needs().positive_from_memory
    assert _with_loss("nce", sources=["bank"]).loss.positive_source == "memory"
    assert _with_loss("info_nce").loss.positive_source == "key"
    _with_positive("simple", "memory", sources=["bank"], bank={"random_k": 8})
    with pytest.raises(ValueError, match="loss.positive=memory reads .* add 'bank'"):
        _with_positive("info_nce", "memory", sources=["batch", "queue"], momentum_encoder=True)
    with pytest.raises(ValueError, match="drop 'batch' from negatives.sources"):
        _with_positive("info_nce", "memory", sources=["batch", "bank"], bank={"as_pool": True})
    with pytest.raises(ValueError, match="loss.positive=key is not possible for loss.name=nce"):
        _with_positive("nce", "key", sources=["bank"])
    with pytest.raises(ValueError, match="positive=memory is not possible for loss.name=margin"):
        _with_positive("margin", "memory", sources=["bank"])
    with pytest.raises(ValueError, match="loss.symmetric"):
        Config.model_validate({"loss": {"name": "info_nce", "positive": "memory",
                                        "symmetric": True},
                               "negatives": {"sources": ["bank"], "bank": {"as_pool": True}}})


def test_random_k_alone_gives_the_pool_losses_negatives():
    _with_loss("info_nce", sources=["bank"], bank={"random_k": 16})
    with pytest.raises(ValueError, match="random_k"):
        _with_loss("info_nce", sources=["bank"])
