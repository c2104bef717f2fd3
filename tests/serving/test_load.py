"""``load_encoder`` on checkpoint folders: the float32 encoder is the run's fp32 master weights
(ZeRO 0 and 2, fp32 and bf16), with the preprocessing its data got; unusable sources are one
``UserError`` line naming the source and the fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dist_contrast.errors import UserError
from dist_contrast.serving import load_encoder
from dist_contrast.train.state import DEEPSPEED_TAG, MODEL_STATES
from tests.serving.checkpoints import RUNS
from tests.serving.conftest import Checkpoints

# The session's trained checkpoints (or run) are made once per pytest-xdist process: one process
# for the module (make check runs --dist loadgroup).
pytestmark = pytest.mark.xdist_group("serving_checkpoints")


def _refusal(source: str, *fragments: str, **kwargs: str) -> str:
    with pytest.raises(UserError) as caught:
        load_encoder(source, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_an_fp32_checkpoint_embeds_raw_rows_as_the_trainer_did(checkpoints: Checkpoints) -> None:
    run = checkpoints.runs["fp32"]
    loaded = load_encoder(checkpoints.path("fp32"))
    assert loaded.config is not None and loaded.config.experiment.run_name == "fp32"
    assert (loaded.output, loaded.output_dim, loaded.input_shape) == ("embedding", 8, (12,))
    assert loaded.preprocessing.kind == "standardize" and not loaded.module.training
    raw = checkpoints.features[run["test_ids"].numpy()]  # the held-out rows, raw
    # The module standardises raw rows with the training statistics, then encodes them.
    assert torch.equal(loaded(raw), run["engine_out"])
    assert torch.equal(loaded.module(torch.from_numpy(raw)), run["engine_out"])
    for name, value in loaded.encoder.state_dict().items():
        if name in run["masters"]:
            assert torch.equal(value, run["masters"][name]), name


@pytest.mark.parametrize("name", ["zero2_bf16", "zero0_bf16"])
def test_a_bf16_checkpoint_gives_the_fp32_master_weights(
    checkpoints: Checkpoints, name: str
) -> None:
    run = checkpoints.runs[name]
    loaded = load_encoder(checkpoints.path(name))
    state = loaded.encoder.state_dict()
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    for key, master in run["masters"].items():
        assert torch.equal(state[key], master), key
    # Not the bf16 copy the module computed with: the masters carry more digits.
    differs = [not torch.equal(state[k], run["module_weights"][k]) for k in run["masters"]]
    assert any(differs)
    # It embeds in float32 with those weights.
    raw = checkpoints.features[:20]
    reference = torch.nn.functional.normalize(
        loaded.encoder.head(loaded.encoder.backbone(loaded.preprocessing.apply(raw))), dim=-1)
    out = loaded(raw)
    assert out.dtype == torch.float32 and torch.equal(out, reference)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_the_encoder_handed_to_the_reporter_is_the_masters(
    checkpoints: Checkpoints, name: str
) -> None:
    run = checkpoints.runs[name]
    loaded = load_encoder(checkpoints.path(name))
    assert run["trained"] is not None
    for key, value in loaded.encoder.state_dict().items():
        assert torch.equal(run["trained"][key], value), key


def test_meta_json_holds_the_config_and_the_preprocessing(checkpoints: Checkpoints) -> None:
    meta = json.loads((Path(checkpoints.path("fp32")) / "meta.json").read_text())
    assert meta["config"]["experiment"]["run_name"] == "fp32"
    assert meta["preprocessing"]["kind"] == "standardize"
    assert len(meta["preprocessing"]["mean"]) == 12


def test_the_representation_is_the_backbone_output(checkpoints: Checkpoints) -> None:
    loaded = load_encoder(checkpoints.path("fp32")).with_output("representation")
    raw = checkpoints.features[:10]
    assert loaded.output_dim == 32
    assert torch.equal(loaded(raw), loaded.encoder.encode(loaded.preprocessing.apply(raw)))


# ----------------------------------------------------------------------------- refusals


def _copy(checkpoints: Checkpoints, tmp_path: Path, name: str = "fp32") -> Path:
    target = tmp_path / "run" / Path(checkpoints.path(name)).name
    shutil.copytree(checkpoints.path(name), target)
    return target


def test_missing_folders_files_and_run_folders(checkpoints: Checkpoints, tmp_path: Path) -> None:
    _refusal(str(tmp_path / "nope"), "does not exist", "checkpoint_<step> folder")
    (tmp_path / "file.txt").write_text("x")
    _refusal(str(tmp_path / "file.txt"), "is a file")
    copy = _copy(checkpoints, tmp_path)
    _refusal(str(copy.parent), "is a run folder", str(copy))
    (copy / "meta.json").unlink()
    _refusal(str(copy), "has no meta.json", "interrupted")
    _refusal(str(tmp_path), "is not a checkpoint folder")
    _refusal("s3://bucket/run/checkpoint_00000002", "copy the checkpoint folder")


def test_corrupt_or_old_meta_json(checkpoints: Checkpoints, tmp_path: Path) -> None:
    copy = _copy(checkpoints, tmp_path)
    meta = json.loads((copy / "meta.json").read_text())
    (copy / "meta.json").write_text("{not json")
    _refusal(str(copy), "corrupt meta.json")
    old = {k: meta[k] for k in ("step", "max_steps", "world_size")} | {"mlflow_run_id": "abc"}
    (copy / "meta.json").write_text(json.dumps(old))
    _refusal(str(copy), "written before", "load the run's MLflow model (abc)")


def test_corrupt_or_missing_deepspeed_files(checkpoints: Checkpoints, tmp_path: Path) -> None:
    copy = _copy(checkpoints, tmp_path)
    states = copy / DEEPSPEED_TAG / MODEL_STATES
    states.write_bytes(states.read_bytes()[:1000])
    _refusal(str(copy), MODEL_STATES, "truncated or corrupted")
    states.unlink()
    _refusal(str(copy), "has no DeepSpeed state")
    zero = _copy(checkpoints, tmp_path / "zero", "zero2_bf16")
    next((zero / DEEPSPEED_TAG).glob("*rank_1*optim_states.pt")).unlink()
    _refusal(str(zero), "incomplete or unreadable ZeRO state")


def test_unknown_runs_models_and_stores(checkpoints: Checkpoints, tmp_path: Path) -> None:
    from dist_contrast.tracking import ensure_experiment

    _refusal("0" * 32, "no MLflow store at", tracking_uri=f"sqlite:///{tmp_path / 'none.db'}")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ensure_experiment(uri, "empty", tmp_path / "artifacts")
    _refusal("0" * 32, f"no MLflow run '{'0' * 32}'", "MLFLOW_TRACKING_URI", tracking_uri=uri)
    _refusal("models:/nope/1", "cannot load the model 'models:/nope/1'", "Model Registry",
             tracking_uri=uri)
