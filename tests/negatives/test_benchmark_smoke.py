import pytest

from dist_contrast.config import load_config
from tests.benchmark_scripts import load_benchmark


def test_mining_benchmark_quick_runs(capsys):
    module = load_benchmark("mining")
    assert module.main(["--quick", "--skip-memory", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "recall@k" in out and "of training time" in out
    # The step is the trainer's own (DeepSpeed), and the miner's share is read inside it.
    assert "real training step without the miner" in out and "miner/time_share" in out


def test_miner_share_weights_windows_by_their_wall_time():
    module = load_benchmark("miner_share")
    # Batch 10: the 50-step window at 100 samples/s took 5 s, the next at 200 samples/s 2.5 s.
    history = {
        "miner/time_share": {50: 0.2, 100: 0.1},
        "train/samples_per_s": {50: 100.0, 100: 200.0},
    }
    assert module.share(history, 10, 0, 100) == pytest.approx((0.2 * 5 + 0.1 * 2.5) / 7.5)
    assert module.share(history, 10, 51, 100) == pytest.approx(0.1)


def test_miner_share_overrides_are_a_valid_config():
    module = load_benchmark("miner_share")
    cfg = load_config(module.CONFIG, module.overrides(1_000_000, 1100, 50))
    assert cfg.negatives.miner.layout == "sharded" and cfg.model.embedding_dim == 128
    assert cfg.data.num_samples - (cfg.data.num_test or 0) == 1_000_000
