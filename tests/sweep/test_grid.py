"""The sweep's trials, expanded and validated before anything starts (pure, fast)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dist_contrast.errors import UserError
from dist_contrast.sweep.grid import digest, expand, file_grid, parse_grid, split_values

ROOT = Path(__file__).resolve().parents[2]
SYNTHETIC = str(ROOT / "configs" / "synthetic.yaml")


def test_values_split_at_top_level_commas_and_read_as_yaml() -> None:
    assert split_values("0.1,[batch,bank], 0.5") == ["0.1", "[batch,bank]", "0.5"]
    grid = parse_grid(["loss.temperature=0.1,0.5", "negatives.sources=[batch],[batch,queue]",
                       "model.batch_norm=true,false"])
    assert grid == {"loss.temperature": [0.1, 0.5],
                    "negatives.sources": [["batch"], ["batch", "queue"]],
                    "model.batch_norm": [True, False]}


@pytest.mark.parametrize("bad", ["loss.temperature", "loss.temperature=", "=0.1,0.2",
                                 "loss.temperature=0.1,,0.2"])
def test_a_malformed_grid_is_one_line(bad: str) -> None:
    with pytest.raises(UserError, match="--grid .* is not of the form"):
        parse_grid([bad])


def test_product_times_seeds_with_stable_names() -> None:
    grid = parse_grid(["loss.temperature=0.1,0.5", "optimizer.lr=0.001,0.002"])
    trials = expand([SYNTHETIC], grid, seeds=2, overrides=["experiment.seed=7"], name="s")
    assert len(trials) == 8
    points = {(dict(t.point)["loss.temperature"], dict(t.point)["optimizer.lr"], t.seed)
              for t in trials}
    assert points == {(tau, lr, seed) for tau in (0.1, 0.5) for lr in (0.001, 0.002)
                      for seed in (7, 8)}
    for trial in trials:
        assert trial.config.loss.temperature == dict(trial.point)["loss.temperature"]
        assert trial.config.experiment.seed == trial.seed
        assert trial.config.experiment.run_name == trial.run_name
        assert trial.tags()["dist_contrast.grid.loss.temperature"] == str(
            trial.config.loss.temperature)
    assert "s_synthetic_temperature=0.1_lr=0.001_seed=7" in {t.run_name for t in trials}
    again = expand([SYNTHETIC], grid, seeds=2, overrides=["experiment.seed=7"], name="s")
    assert digest(again) == digest(trials)
    reordered = expand([SYNTHETIC], parse_grid(["loss.temperature=0.5,0.1",
                                                "optimizer.lr=0.002,0.001"]),
                       seeds=2, overrides=["experiment.seed=7"], name="s")
    assert [t.run_name for t in reordered] != [t.run_name for t in trials]
    assert digest(reordered) == digest(trials)  # the same sweep, its trials in another order
    fewer = expand([SYNTHETIC], grid, seeds=1, overrides=["experiment.seed=7"], name="s")
    assert digest(fewer) != digest(trials)


def test_a_loss_without_temperature_runs_once_per_seed() -> None:
    grid = parse_grid(["loss.name=info_nce,simple", "loss.temperature=0.1,0.5"])
    trials = expand([SYNTHETIC], grid, seeds=3, overrides=[], name="s")
    by_loss = {name: [t for t in trials if t.config.loss.name == name]
               for name in ("info_nce", "simple")}
    assert len(by_loss["info_nce"]) == 6 and len(by_loss["simple"]) == 3
    assert all("loss.temperature" not in dict(t.point) for t in by_loss["simple"])


def test_one_bad_point_names_itself_before_anything_starts() -> None:
    grid = parse_grid(["loss.temperature=0.1,-1"])
    with pytest.raises(UserError, match=r"grid point loss.temperature=-1.*nothing was started"):
        expand([SYNTHETIC], grid, seeds=1, overrides=[], name="s")
    with pytest.raises(UserError, match="unknown key 'loss.temprature'"):
        expand([SYNTHETIC], parse_grid(["loss.temprature=0.1"]), seeds=1, overrides=[],
               name="s")
    with pytest.raises(UserError, match="--seeds N and --name"):
        expand([SYNTHETIC], parse_grid(["experiment.seed=1,2"]), seeds=1, overrides=[],
               name="s")


def test_a_config_file_carries_its_own_grid(tmp_path: Path) -> None:
    config = tmp_path / "study.yaml"
    config.write_text(Path(SYNTHETIC).read_text()
                      + "sweep:\n  grid:\n    loss.temperature: [0.07, 0.2]\n")
    trials = expand([str(config)], {}, seeds=1, overrides=[], name="s")
    assert sorted(t.config.loss.temperature for t in trials) == [0.07, 0.2]
    # --grid replaces the file's values of a key it names.
    trials = expand([str(config)], parse_grid(["loss.temperature=1.0"]), seeds=1,
                    overrides=[], name="s")
    assert [t.config.loss.temperature for t in trials] == [1.0]
    with pytest.raises(UserError, match="the sweep block must be"):
        file_grid({"sweep": {"grid": {"loss.temperature": 0.1}}}, "x.yaml")


def test_train_ignores_the_sweep_block(tmp_path: Path) -> None:
    from dist_contrast.config import load_config

    config = tmp_path / "study.yaml"
    config.write_text(Path(SYNTHETIC).read_text() + "sweep:\n  grid:\n    loss.temperature: [1]\n")
    assert load_config(config).loss.temperature == 0.2
