"""Config: YAML + overrides -> frozen typed object; every mistake is one line naming the key."""

from __future__ import annotations

import math
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from dist_contrast.config import (
    Config,
    apply_overrides,
    flatten,
    load_config,
    to_yaml,
    validate,
)
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
        # A source's own section, validated by its own class, named in full.
        (["negatives.queue.size=0"],
         "negatives.queue.size: Input should be greater than or equal to 1 (got 0)"),
        (["negatives.miner.index=lsh"], "negatives.miner.index: Input should be"),
        (["negatives.bank.sise=3"], "unknown key 'negatives.bank.sise' in section "
         "'negatives.bank'; allowed keys: as_pool, momentum, noise_samples, normalizer_every"),
        (["negatives.queu.size=3"], "unknown key 'negatives.queu' in section 'negatives'; "
         "allowed keys: bank, corpus, miner, momentum, momentum_encoder, queue, shuffle_bn, "
         "sources"),
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


def _float_keys(section: BaseModel, prefix: str = "") -> list[str]:
    """The dotted key of every float setting of ``section`` and its sub-sections, found by
    type (sub-sections by their values: a section's type may be made at run time)."""
    keys = []
    for name, field in type(section).model_fields.items():
        value, annotation = getattr(section, name), field.annotation
        if isinstance(value, BaseModel):
            keys += _float_keys(value, f"{prefix}{name}.")
        elif annotation is float or (typing.get_origin(annotation) is not tuple
                                     and float in typing.get_args(annotation)):
            keys.append(f"{prefix}{name}")
    for name, value in (section.model_extra or {}).items():  # sections kept as extra values
        if isinstance(value, BaseModel):
            keys += _float_keys(value, f"{prefix}{name}.")
    return keys


FLOAT_KEYS = _float_keys(Config())


def test_the_float_settings_are_found() -> None:
    assert {"optimizer.lr", "loss.temperature", "data.noise_scale", "negatives.bank.proximal",
            "model.dropout", "trainer.cpus_per_worker"} <= set(FLOAT_KEYS)


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_no_float_setting_takes_a_non_finite_number(tmp_path: Path, key: str, value: str) -> None:
    with pytest.raises(UserError) as info:
        load_config(_write(tmp_path, "{}\n"), [f"{key}={value}"])
    shown = {".inf": "inf", "-.inf": "-inf", ".nan": "nan"}[value]
    message = str(info.value)
    assert key in message and "finite number" in message and shown in message, message
    assert "\n" not in message


@pytest.mark.parametrize(("override", "key"), [
    ("optimizer.betas=[0.9, .inf]", "optimizer.betas.1"),
    ("loss.params={margin: .nan}", "loss.params.margin"),
])
def test_non_finite_numbers_inside_lists_and_options_name_their_place(
    tmp_path: Path, override: str, key: str
) -> None:
    with pytest.raises(UserError, match=f"{key} must be a finite number"):
        load_config(_write(tmp_path, "loss:\n  name: margin\n"), [override])


def test_large_finite_numbers_are_still_numbers(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, "{}\n"), ["loss.temperature=1.0e+300"])
    assert math.isfinite(cfg.loss.temperature)


@pytest.mark.parametrize("name", ["../escaped", "a/b", "a\\b", "..", ".", "", "a\0b"])
@pytest.mark.parametrize("key", ["experiment.run_name", "experiment.name"])
def test_a_run_folder_name_is_a_single_path_component(key: str, name: str) -> None:
    section, field = key.split(".")
    with pytest.raises(UserError, match=key) as info:
        validate({section: {field: name}})
    if name:  # an empty experiment.name is refused first by its length
        assert "must be a single folder name" in str(info.value)


def test_names_with_dots_and_dashes_are_fine(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, "{}\n"), ["experiment.run_name=v1.2-..-final",
                                                 "experiment.name=my.exp"])
    assert cfg.experiment.run_name == "v1.2-..-final"


@pytest.mark.parametrize("text", ["", "\n", "# a comment\n", "---\n"])
def test_an_empty_file_is_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(UserError, match="exp.yaml' is empty; give it at least experiment: and "
                                        "trainer: settings, or start from a copy of "
                                        "configs/synthetic.yaml"):
        load_config(_write(tmp_path, text))
    assert load_config(_write(tmp_path, "{}\n")) == Config()  # an explicit empty mapping


def test_a_folder_is_named_a_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is a directory; name a YAML file, e.g. configs/"):
        load_config(tmp_path)
    _write(tmp_path, "{}\n")
    with pytest.raises(UserError, match=f"is a directory; name a YAML file in it, e.g. "
                                        f"{tmp_path / 'exp.yaml'}"):
        load_config(tmp_path)
