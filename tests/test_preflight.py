"""Driver-side checks: resources, checkpoints and config notes refuse in one line, in seconds."""

from __future__ import annotations

import math
import os
import shutil
import struct
import subprocess
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from dist_contrast import preflight
from dist_contrast.config import Config, load_config
from dist_contrast.data import training_shape
from dist_contrast.errors import UserError
from dist_contrast.models import build_model
from dist_contrast.negatives.config import MinerConfig
from dist_contrast.train import storage
from dist_contrast.train.state import DEEPSPEED_TAG, MODEL_STATES, state_file
from tests.data.helpers import write_text_pairs
from tests.gloo import run_distributed

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
GiB = 1 << 30
# A 2-core, 24 GiB machine, with what the kernel reports available on it.
LAPTOP: dict[str, Any] = {"cpus": 2.0, "gpus": 0.0, "memory_bytes": 22 * GiB, "local": True}


def _resources(cfg: Config, **machine: Any) -> list[str]:
    """``check_resources`` with the data's size as the plan gives it (from the config)."""
    rows, shape = training_shape(cfg.data)
    return preflight.check_resources(cfg, **machine, train_size=rows, input_shape=shape)


def _config(name: str = "moco_mined.yaml", *overrides: str) -> Config:
    return load_config(CONFIGS / name, list(overrides))


def _refusal(call, *fragments: str) -> str:
    """Run ``call``, expect one UserError line holding every fragment; return the line."""
    with pytest.raises(UserError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


class _Terms:
    """The estimate's terms, looked up by how what they are begins (exactly one must)."""

    def __init__(self, cfg: Config, train_size: int, input_shape: tuple[int, ...] = (64,)):
        self.terms = preflight.estimate_memory(cfg, train_size=train_size,
                                               input_shape=input_shape)

    def __getitem__(self, start: str) -> int:
        found = [term.bytes for term in self.terms if term.what.startswith(start)]
        assert len(found) == 1, (start, [term.what for term in self.terms])
        return found[0]

    def __contains__(self, start: str) -> bool:
        return any(term.what.startswith(start) for term in self.terms)


# ----------------------------------------------------------------------------- resources


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_fits_a_two_core_laptop(path: Path, tmp_path: Path) -> None:
    cfg = load_config(path)
    if cfg.data.params.get("build"):
        # Pairs written on first use (a minute of parsing): a small file of pairs stands in;
        # a text row's memory is nominal, so the count does not decide the fit.
        pairs = str(write_text_pairs(tmp_path / "pairs.jsonl", 2000))
        cfg = load_config(path, [f"data.path={pairs}", f"data.eval_path={pairs}",
                                 "data.params={}"])
    start = time.perf_counter()
    assert _resources(cfg, **LAPTOP) == []
    assert time.perf_counter() - start < 30


def test_memory_terms_have_closed_forms() -> None:
    dim, n = 64, 160_000
    cfg = _config("moco_mined.yaml")  # queue 65,536, bank, ivf_fp16 miner, M = 64, B = 256
    terms = _Terms(cfg, n)
    params = sum(p.numel() for p in build_model(cfg.model, (64,)).parameters())
    assert terms["the worker process"] == preflight.WORKER_BASE_BYTES
    # fp32, ZeRO 0: weights 4 + grads 4 + Adam 8, and the momentum encoder's weights 4.
    assert terms["the model (231,488"] == params * 20
    assert terms["the MoCo queue"] == 65_536 * (4 * dim + 8)
    assert terms["the checkpoint copy of the MoCo queue"] == 65_536 * (4 * dim + 8)
    assert terms["the checkpoint copy of the memory bank"] == n * (4 * dim + 16)
    assert terms["the memory bank"] == n * (4 * dim + 16)
    per_key = 2 * dim + preflight.IVF_OVERHEAD + 4 * dim + 9
    assert terms["the miner's FAISS"] == n * per_key
    assert terms["each step's negatives"] == 256 * 64 * dim * 4


def test_sharded_layouts_and_zero_divide_by_the_workers() -> None:
    dim, n = 64, 160_001
    cfg = _config(
        "moco_mined.yaml", "trainer.num_workers=3", "negatives.queue.layout=sharded",
        "negatives.miner.layout=sharded", "deepspeed.zero_stage=2", "deepspeed.precision=bf16",
    )
    terms = _Terms(cfg, n)
    params = sum(p.numel() for p in build_model(cfg.model, (64,)).parameters())
    assert terms["the model (231,488"] == math.ceil(params * (4 + 4 / 3 + 8 / 3 + 2 + 4))
    assert terms["the MoCo queue"] == math.ceil(65_536 / 3) * (4 * dim + 8)
    assert terms["the miner's FAISS"] == math.ceil(n / 3) * (
        preflight.index_bytes_per_key(cfg.negatives.miner, dim) + 4 * dim + 9
    )


@pytest.mark.parametrize(
    ("index", "expected"),
    [
        ("exact", 4 * 64 + preflight.IDMAP_OVERHEAD),
        ("ivf_flat", 4 * 64 + preflight.IVF_OVERHEAD),
        ("ivf_fp16", 2 * 64 + preflight.IVF_OVERHEAD),
        ("ivf_sq8", 64 + preflight.IVF_OVERHEAD),
        ("ivf_pq", 16 + preflight.IVF_OVERHEAD),
        ("hnsw", 4 * 64 + 8 * 32 + preflight.HNSW_LEVELS + preflight.IDMAP_OVERHEAD),
    ],
)
def test_index_bytes_per_key(index: str, expected: int) -> None:
    miner = MinerConfig.model_validate({"index": index})
    assert preflight.index_bytes_per_key(miner, 64) == expected


def test_noise_and_file_data_Terms() -> None:
    nce = _config("instdisc.yaml")  # NCE noise m = 1024, B = 256, D = 64
    assert _Terms(nce, 16_000)["each step's negatives"] == 256 * 1024 * 64 * 4
    simclr = _config("simclr.yaml")
    assert "each step's negatives" not in _Terms(simclr, 40_000)
    file_cfg = Config.model_validate({"data": {"name": "file", "path": "x.npy"}})
    assert _Terms(file_cfg, 1000, (32,))["the data (1,000"] == 2 * 1000 * 32 * 4
    with pytest.raises(UserError, match="x.npy: file not found; check data.path"):
        _resources(file_cfg, **LAPTOP)  # the header is read: no such file


def test_too_many_workers_for_the_cores_is_refused() -> None:
    _refusal(
        lambda: _resources(_config("synthetic.yaml", "trainer.num_workers=64"),
                                          **LAPTOP),
        "trainer.num_workers=64", "64 CPUs", "2 cores", "lower trainer.num_workers",
    )
    cluster = {**LAPTOP, "cpus": 16.0, "local": False}
    _refusal(
        lambda: _resources(_config("synthetic.yaml", "trainer.num_workers=32"),
                                          **cluster),
        "the Ray cluster has 16", "add nodes",
    )


def test_time_sharing_the_cores_is_a_note() -> None:
    notes = _resources(_config("synthetic.yaml", "trainer.num_workers=4"), **LAPTOP)
    assert len(notes) == 1 and "time-share 2 cores" in notes[0]


def test_a_terabyte_queue_is_refused_naming_it() -> None:
    cfg = _config("moco.yaml", "negatives.queue.size=10000000000")
    start = time.perf_counter()
    message = _refusal(
        lambda: _resources(cfg, **LAPTOP),
        "the MoCo queue", "negatives.queue.size=10,000,000,000", "TiB", "22 GiB available",
        "lower negatives.queue.size",
    )
    assert time.perf_counter() - start < 30
    # 10^10 keys × (4·64 + 8) bytes = 2.4 TiB: even sharded over 2 workers it cannot fit.
    assert "2.4 TiB per worker" in message and "would fit" not in message


def test_sharding_the_queue_is_suggested_when_it_would_fit() -> None:
    # 25M keys × 264 B = 6.1 GiB, twice per worker (checkpoint copy): replicated 2 workers ×
    # 12.3 GiB > 22 GiB; sharded half of that per worker fits.
    cfg = _config("moco.yaml", "negatives.queue.size=25000000")
    _refusal(lambda: _resources(cfg, **LAPTOP),
             "the MoCo queue", "negatives.queue.layout=sharded would fit")


def test_sharding_the_miner_is_suggested_when_it_would_fit() -> None:
    # 11M training rows: an exact index of 577 B per key beside a bank of 2 × 272 B per row
    # needs 2 × 12.3 GB replicated; sharded, 2 × 9.2 GB fits in 22 GiB.
    cfg = _config("moco_mined.yaml", "data.num_samples=13750000", "negatives.miner.index=exact")
    _refusal(lambda: _resources(cfg, **LAPTOP),
             "the miner's FAISS index", "negatives.miner.layout=sharded would fit")


def test_gpus() -> None:
    cfg = _config("synthetic.yaml", "trainer.use_gpu=true")
    _refusal(lambda: _resources(cfg, **LAPTOP),
             "trainer.use_gpu=true", "one GPU per worker", "0 on this machine")
    notes = _resources(cfg, **{**LAPTOP, "gpus": 2.0})
    assert any("GPUs' memory is not checked" in note for note in notes)
    auto = _config("synthetic.yaml", "trainer.use_gpu=auto")
    notes = _resources(auto, **{**LAPTOP, "gpus": 1.0})
    assert any("train on the CPU" in note for note in notes)


def test_a_tight_fit_is_a_note() -> None:
    cfg = _config("synthetic.yaml")
    estimate = 2 * preflight.WORKER_BASE_BYTES + preflight.LOCAL_RAY_BYTES
    notes = _resources(cfg, **{**LAPTOP, "memory_bytes": int(estimate * 1.1)})
    assert len(notes) == 1 and "close to" in notes[0]


def test_local_resources_are_read() -> None:
    cpus, gpus, memory = preflight.local_resources()
    assert cpus >= 1 and gpus >= 0 and memory > 0


# ----------------------------------------------------------------------------- notes


def test_a_warm_up_longer_than_the_run_is_capped_with_a_note() -> None:
    cfg = _config("synthetic.yaml", "optimizer.warmup_steps=50", "trainer.max_steps=6")
    assert preflight.config_notes(cfg) == [
        "optimizer.warmup_steps=50 ≥ trainer.max_steps=6: warm-up capped at 5 steps"
    ]
    assert preflight.config_notes(_config("synthetic.yaml")) == []


# ----------------------------------------------------------------------------- checkpoints

CHECKPOINT_OVERRIDES = (
    "trainer.num_workers=2", "trainer.batch_size=16", "data.num_samples=500",
    "deepspeed.zero_stage=2", "negatives.queue.size=256", "negatives.miner.nlist=8",
    "negatives.miner.nprobe=4", "negatives.miner.num_negatives=8", "negatives.miner.num_threads=1",
)


def _write_checkpoint(directory: str, overrides: tuple[str, ...]) -> None:
    """One rank of a real run of ``moco_mined.yaml`` (queue, bank, miner, momentum encoder,
    ZeRO 2): the trainer's own builders, two steps, then the trainer's checkpoint files."""
    os.environ["DS_ACCELERATOR"] = "cpu"
    from dist_contrast import dist
    from dist_contrast.data import build_data, make_loader
    from dist_contrast.train.checkpoint import trainer_state
    from dist_contrast.train.state import TrainProgress, save_trainer_state
    from dist_contrast.train.worker import build_engine, build_step

    os.environ["LOCAL_RANK"] = str(dist.rank())  # what a launcher would set
    cfg = _config("moco_mined.yaml", *overrides)
    torch.manual_seed(0)
    data = build_data(cfg.data, seed=0)
    encoder = build_model(cfg.model, data.input_shape)
    step = build_step(cfg, build_engine(cfg, encoder), data, encoder)
    loader = make_loader(data.train, batch_size=16, rank=dist.rank(), world_size=2, seed=0,
                         epoch=0, drop_last=True)
    for index, batch in zip(range(2), loader, strict=False):
        step(batch, index)
    step.engine.save_checkpoint(directory, tag=DEEPSPEED_TAG)
    save_trainer_state(directory, dist.rank(), trainer_state(step, TrainProgress(2), None))


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("checkpoint")
    run_distributed(_write_checkpoint, str(directory), CHECKPOINT_OVERRIDES)
    storage.mark_complete(str(directory), {"step": 2, "world_size": 2})  # as rank 0 does, last
    return directory


def _check(directory: str | Path, *overrides: str) -> list[str]:
    cfg = _config("moco_mined.yaml", *CHECKPOINT_OVERRIDES, *overrides)
    return preflight.check_checkpoint(directory, cfg, (64,),
                                      train_size=training_shape(cfg.data)[0])


def _copy(checkpoint: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(checkpoint, target)
    return target


def test_a_matching_checkpoint_passes_in_seconds(checkpoint: Path) -> None:
    assert (checkpoint / DEEPSPEED_TAG / "zero_pp_rank_1_mp_rank_00_optim_states.pt").is_file()
    start = time.perf_counter()
    assert _check(checkpoint) == []
    preflight.check_safe_to_load(checkpoint)
    assert time.perf_counter() - start < 30
    notes = _check(checkpoint, "trainer.max_steps=2")
    assert notes == [f"checkpoint '{checkpoint}' is at step 2 ≥ trainer.max_steps=2: there is "
                     "nothing left to train"]


def test_uris_and_missing_folders(tmp_path: Path) -> None:
    notes = _check("s3://bucket/run/checkpoint_00000010")
    assert len(notes) == 1 and "not checked on the driver" in notes[0]
    _refusal(lambda: _check(tmp_path / "nope"), "is not a checkpoint folder")
    _refusal(lambda: _check(tmp_path), "is not a checkpoint folder (no meta.json")


def test_a_folder_without_its_marker_is_refused_until_marked(
    checkpoint: Path, tmp_path: Path
) -> None:
    """Its save may have been interrupted; the line says how to use it anyway, and that works."""
    copy = _copy(checkpoint, tmp_path)
    (copy / storage.MARKER).unlink()
    line = _refusal(lambda: _check(copy), f"checkpoint '{copy}' has no meta.json",
                    "resume from a complete checkpoint (one with meta.json)")
    command = line.split("mark it complete: ", 1)[1]
    assert command == f"echo '{{\"world_size\": 2}}' > {copy / storage.MARKER}"
    subprocess.run(command, shell=True, check=True)
    assert _check(copy) == []
    # A complete checkpoint beside it in the same run folder is named.
    run = tmp_path / "run"
    shutil.copytree(checkpoint, run / "checkpoint_00000002")
    shutil.copytree(copy, run / "checkpoint_00000004")
    (run / "checkpoint_00000004" / storage.MARKER).unlink()
    _refusal(lambda: _check(run / "checkpoint_00000004"),
             f"e.g. {run / 'checkpoint_00000002'}")
    _refusal(lambda: _check(run), "is a run folder, not a checkpoint",
             f"e.g. {run / 'checkpoint_00000002'}")
    (copy / storage.MARKER).write_text("{}")
    _refusal(lambda: _check(copy), "without a world_size", '{"world_size": 2}')
    (copy / storage.MARKER).write_text("{not json")
    _refusal(lambda: _check(copy), "corrupt meta.json")


def test_another_world_size_or_missing_rank(checkpoint: Path, tmp_path: Path) -> None:
    _refusal(lambda: _check(checkpoint, "trainer.num_workers=4"),
             "was written by 2 workers (meta.json)", "trainer.num_workers=2")
    copy = _copy(checkpoint, tmp_path)
    state_file(copy, 0).unlink()
    _refusal(lambda: _check(copy), "incomplete", "trainer_state_rank0.pt is missing (1 of the 2")
    # The last rank's file missing: the world size is meta.json's, not the files' count.
    copy = _copy(checkpoint, tmp_path / "last")
    state_file(copy, 1).unlink()
    for workers in ("trainer.num_workers=2", "trainer.num_workers=1"):
        line = _refusal(lambda w=workers: _check(copy, w), "trainer_state_rank1.pt is missing")
        assert "written by 1 worker" not in line and "num_workers=1" not in line
    copy = _copy(checkpoint, tmp_path / "b")
    (copy / DEEPSPEED_TAG / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    _refusal(lambda: _check(copy), "incomplete", "zero_pp_rank_1_mp_rank_00_optim_states.pt")


def test_truncated_or_corrupted_files_name_the_file(checkpoint: Path, tmp_path: Path) -> None:
    copy = _copy(checkpoint, tmp_path)
    model_states = copy / DEEPSPEED_TAG / MODEL_STATES
    data = model_states.read_bytes()
    model_states.write_bytes(data[: len(data) // 2])
    _refusal(lambda: _check(copy), MODEL_STATES, "truncated or corrupted")
    _refusal(lambda: preflight.check_safe_to_load(copy), MODEL_STATES, "truncated")
    model_states.write_bytes(data)
    _flip_a_data_byte(state_file(copy, 1))
    _refusal(lambda: _check(copy), "trainer_state_rank1.pt", "fails its CRC check")


def _flip_a_data_byte(path: Path) -> None:
    """Flip one byte in the middle of the largest tensor's data: only its CRC can tell."""
    with zipfile.ZipFile(path) as archive:
        member = max(archive.infolist(), key=lambda info: info.file_size)
    raw = bytearray(path.read_bytes())
    header = member.header_offset
    name_length, extra_length = struct.unpack("<HH", raw[header + 26 : header + 30])
    raw[header + 30 + name_length + extra_length + member.file_size // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_a_file_that_would_run_code_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    copy = _copy(checkpoint, tmp_path)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.makedirs, (str(marker),))

    state = torch.load(state_file(copy, 0), weights_only=True)
    state["mlflow_run_id"] = Payload()
    torch.save(state, state_file(copy, 0))
    _refusal(lambda: _check(copy), "trainer_state_rank0.pt", "os.makedirs", "could run code")
    _refusal(lambda: preflight.check_safe_to_load(copy, rank=0), "could run code")
    assert not marker.exists()
    preflight.check_safe_to_load(copy, rank=1)  # rank 1 reads only its own trainer state


def test_a_different_model_names_the_parameter_and_the_setting(checkpoint: Path) -> None:
    _refusal(lambda: _check(checkpoint, "model.embedding_dim=32"),
             "encoder.head.net.3.weight is [64, 256] there, [32, 256]",
             "model.embedding_dim=64 (here 32)")
    _refusal(lambda: _check(checkpoint, "model.hidden_dim=128"),
             "encoder.backbone.net.1.weight is [256, 64] there, [128, 64]",
             "model.hidden_dim=256 (here 128)")
    _refusal(lambda: _check(checkpoint, "model.num_layers=2"),
             "it has encoder.backbone.net.7.weight", "num_layers")
    _refusal(lambda: _check(checkpoint, "model.num_layers=4"), "it has no encoder.backbone")


def test_deepspeed_settings_must_match(checkpoint: Path) -> None:
    _refusal(lambda: _check(checkpoint, "deepspeed.zero_stage=0"),
             "deepspeed.zero_stage=2", "zero_stage=0")
    _refusal(lambda: _check(checkpoint, "deepspeed.precision=bf16"), "precision=fp32")
    assert _check(checkpoint, "deepspeed.zero_stage=1") == []  # both partition the optimiser


def test_pools_must_match_the_config(checkpoint: Path) -> None:
    _refusal(lambda: _check(checkpoint, "negatives.queue.size=512"),
             "queue of 256 keys", "negatives.queue.size=256")
    _refusal(lambda: _check(checkpoint, "negatives.queue.layout=sharded"),
             "replicated queue", "negatives.queue.layout=replicated")
    _refusal(lambda: _check(checkpoint, "data.num_samples=600"),
             "memory bank of 400 entries", "480 training rows")
    _refusal(lambda: _check(checkpoint, "negatives.sources=[batch,queue]"),
             "['bank', 'miner', 'queue']", "negatives.sources")
