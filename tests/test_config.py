"""Config: YAML + overrides -> frozen typed object; every mistake is one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from dist_contrast.config import Config, apply_overrides, flatten, load_config, to_yaml
from dist_contrast.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
ALL_CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml")) + sorted(CONFIG_DIR.rglob("*.yml"))


def test_configs_folder_is_not_empty() -> None:
    # Guards the glob below: a silently empty list would make the next test pass vacuously.
    assert len(ALL_CONFIGS) >= 6


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_shipped_config_validates(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.experiment.name
    # The workers validate the driver's full dump again (every default spelled out).
    assert Config.model_validate(cfg.model_dump(mode="json")) == cfg


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_overrides_are_typed_and_nested(tmp_path: Path) -> None:
    path = _write(tmp_path, "loss:\n  temperature: 0.1\n")
    cfg = load_config(
        path, ["loss.temperature=0.2", "trainer.num_workers=4", "eval.linear_probe=false"]
    )
    assert cfg.loss.temperature == pytest.approx(0.2)
    assert cfg.trainer.num_workers == 4
    assert cfg.eval.linear_probe is False


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, "{}\n"))
    with pytest.raises(ValidationError):
        cfg.loss.temperature = 3.0  # type: ignore[misc]


def test_apply_overrides_does_not_mutate_input() -> None:
    raw = {"loss": {"temperature": 0.1}}
    out = apply_overrides(raw, ["loss.temperature=0.5"])
    assert raw["loss"]["temperature"] == 0.1 and out["loss"]["temperature"] == 0.5


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["loss.temperature=0"], "loss.temperature"),
        (["loss.temperature=-1"], "greater than 0"),
        (["loss.temprature=0.2"], "unknown key 'loss.temprature'"),
        (["bogus.key=1"], "unknown key 'bogus'"),
        (["trainer.num_workers=two"], "trainer.num_workers"),
        (["trainer.batch_size=-3"], "trainer.batch_size"),
        (["loss.name=nope"], "choose one of"),
        (["loss.name=nce"], "bank"),
        (["model.name=cnn"], "model.name=cnn needs image data"),
        (["deepspeed.zero_stage=3"], "deepspeed.zero_stage"),
        (["trainer.use_gpu=maybe"], "trainer.use_gpu"),
        (["loss.temperature_mode=cosine"], "temperature_final"),
        (["negatives.sources=[queue]"], "momentum_encoder"),
        (["noequals"], "section.key=value"),
        (["loss.temperature.x=1"], "not a section"),
        (["loss.params={top_k: 5}"], "loss.params.top_k is not an option of loss.name=info_nce"),
        (["loss.name=hard_info_nce", "loss.params={bogus: 1}"], "its options: quantile, top_k"),
        (["loss.params={tile_size: 64}"], "set loss.tile_size"),
        (["loss.name=triplet", "loss.tile_size=64"], "does not apply"),
    ],
)
def test_bad_values_are_one_clear_line(tmp_path: Path, overrides: list[str], needle: str) -> None:
    with pytest.raises(UserError) as info:
        load_config(_write(tmp_path, "loss:\n  temperature: 0.1\n"), overrides)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


def test_unknown_key_lists_allowed_keys(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        load_config(_write(tmp_path, "trainer:\n  num_wrkers: 2\n"))
    assert "num_workers" in str(info.value)  # the allowed keys are named


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(_write(tmp_path, "loss: [unclosed\n"))
    with pytest.raises(UserError, match="mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))


def test_flatten_and_yaml_round_trip(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, "loss:\n  temperature: 0.3\n"))
    params = flatten(cfg)
    assert params["loss.temperature"] == "0.3"
    assert params["trainer.num_workers"] == "2"
    again = load_config(_write(tmp_path, to_yaml(cfg)))
    assert again == cfg


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", "true"), ("false", "false"), ("'true'", "true"), ("yes", "true"), ("auto", "auto")],
)
def test_use_gpu_accepts_yaml_booleans(tmp_path: Path, text: str, expected: str) -> None:
    # Unquoted true/false are YAML booleans; the setting is the string either way.
    cfg = load_config(_write(tmp_path, f"trainer:\n  use_gpu: {text}\n"))
    assert cfg.trainer.use_gpu == expected
    assert load_config(_write(tmp_path, "{}\n"), [f"trainer.use_gpu={text}"]).trainer.use_gpu == (
        expected
    )
    assert Config.model_validate(cfg.model_dump(mode="json")) == cfg


def test_a_warm_up_longer_than_the_run_is_accepted(tmp_path: Path) -> None:
    # The trainer caps it (train.deepspeed_config.warmup_steps) and the driver prints a note.
    cfg = load_config(
        _write(tmp_path, "{}\n"), ["optimizer.warmup_steps=1000", "trainer.max_steps=10"]
    )
    assert cfg.optimizer.warmup_steps == 1000
