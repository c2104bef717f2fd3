"""The real CLI, 2 Ray workers each driving DeepSpeed, then the MLflow store is opened and checked.

A Ray runtime and two DeepSpeed engines start: marked ``ray`` (``make test`` runs it, ``make check``
does not).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from dist_contrast.serving import load_encoder
from tests.benchmark_scripts import load_benchmark
from tests.conftest import Cli

ROOT = Path(__file__).resolve().parents[1]


def _train(
    tmp_path: Path, config: str, *overrides: str, run_name: str = "e2e"
) -> subprocess.CompletedProcess[str]:
    return Cli().run("train", ROOT / config, f"experiment.output_dir={tmp_path / 'results'}",
                     f"experiment.run_name={run_name}", *overrides, cwd=tmp_path)


def _run(tmp_path: Path) -> mlflow.entities.Run:
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("dist-contrast")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return runs[0]


@pytest.mark.ray
def test_cli_trains_with_two_ray_workers_and_logs_to_mlflow(tmp_path: Path) -> None:
    proc = _train(
        tmp_path,
        "configs/synthetic.yaml",
        "trainer.max_steps=12",
        "trainer.batch_size=64",
        "trainer.log_every=4",
        "eval.every_steps=6",
        "checkpoint.every_steps=6",
        "optimizer.warmup_steps=2",
        "data.num_samples=2000",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "kNN accuracy, learned embedding" in proc.stdout
    assert "kNN accuracy, raw input" in proc.stdout
    assert "mlflow ui --backend-store-uri" in proc.stdout

    run = _run(tmp_path)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["trainer.num_workers"] == "2"
    assert params["loss.name"] == "info_nce"
    assert params["trainer.max_steps"] == "12"
    metrics = run.data.metrics
    for key in (
        "train/loss",
        "train/temperature",
        "train/lr",
        "train/samples_per_s",
        "train/negatives_per_query",
        "eval/knn_acc",
        "eval/raw_knn_acc",
        "eval/alignment",
        "eval/uniformity",
    ):
        assert key in metrics, key
    # The global batch: each query sees the other W·B − 1 keys.
    assert metrics["train/negatives_per_query"] == 2 * 64 - 1
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == list(range(1, 13))  # every step
    rates = client.get_metric_history(run.info.run_id, "train/samples_per_s")
    assert [m.step for m in rates] == [4, 8, 12]  # every trainer.log_every steps
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "config.yaml" in artifacts

    # The run page tells its story: source, user, description with the outcome, the data.
    tags = run.data.tags
    assert tags["mlflow.source.name"].startswith("dist-contrast train ")
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.user"]
    assert "**Outcome**: finished at step 12: kNN accuracy" in tags["mlflow.note.content"]
    (data_input,) = run.inputs.dataset_inputs
    assert {(t.key, t.value) for t in data_input.tags} == {("mlflow.data.context", "training")}
    assert data_input.dataset.name == "synthetic" and data_input.dataset.digest
    assert client.get_experiment(run.info.experiment_id).tags[
        "mlflow.experimentKind"] == "custom_model_development"
    # The encoder is an MLflow model that embeds raw rows as the checkpoint does.
    rows = np.random.default_rng(0).normal(size=(5, 64)).astype(np.float32)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path}/mlflow.db"
    try:
        model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/encoder")
        from_model = np.asarray(model.predict(rows))
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI")

    checkpoints = sorted(
        p for p in (tmp_path / "results" / "e2e").glob("checkpoint_*") if p.is_dir()
    )
    assert checkpoints, "no checkpoint reported"
    files = {p.name for p in checkpoints[-1].iterdir()}
    assert {"trainer_state_rank0.pt", "trainer_state_rank1.pt", "ds"} <= files
    from_checkpoint = load_encoder(str(checkpoints[-1]))(rows).numpy()
    np.testing.assert_allclose(from_model, from_checkpoint, rtol=1e-5, atol=1e-6)

    # Resume from the step-12 checkpoint for 6 more steps: continues, does not restart.
    resumed = _train(
        tmp_path,
        "configs/synthetic.yaml",
        "trainer.max_steps=18",
        "trainer.batch_size=64",
        "trainer.log_every=6",
        "eval.every_steps=6",
        "checkpoint.every_steps=6",
        "optimizer.warmup_steps=2",
        "data.num_samples=2000",
        f"trainer.resume_from={checkpoints[-1]}",
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "finished at step 18" in resumed.stdout


@pytest.mark.ray
def test_cli_moco_queue_and_mined_negatives_zero2_bf16(tmp_path: Path) -> None:
    """Queue + FAISS-mined negatives, momentum encoder with shuffle-BN, ZeRO-2, bf16."""
    proc = _train(
        tmp_path,
        "configs/moco_mined.yaml",
        "trainer.max_steps=12",
        "trainer.batch_size=64",
        "trainer.log_every=6",
        "eval.every_steps=6",
        "checkpoint.every_steps=6",
        "optimizer.warmup_steps=2",
        "data.num_samples=4000",
        "negatives.queue.size=1000",
        "negatives.miner.nlist=16",
        "negatives.miner.nprobe=4",
        "deepspeed.zero_stage=2",
        "deepspeed.precision=bf16",
        run_name="moco-mined",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = _run(tmp_path).data.metrics
    # The queue filled to its size (12 steps x 128 keys > 1000) and the miner delivered.
    assert metrics["queue/filled"] == 1000
    assert metrics["negatives/mined"] == 64
    assert metrics["negatives/batch"] == 2 * 64 - 1
    assert metrics["train/negatives_per_query"] == 127 + 1000 + 64 - metrics.get(
        "queue/masked_per_query", 0.0
    )
    for key in (
        "miner/search_seconds",
        "miner/index_age_mean",
        "miner/time_share",
        "miner/same_label_fraction",
        "diag/penalty_entropy",
        "diag/top10_penalty_share",
    ):
        assert key in metrics, key
    checkpoint = max(
        (p for p in (tmp_path / "results" / "moco-mined").glob("checkpoint_*") if p.is_dir()),
        key=lambda p: p.name,
    )
    state = torch.load(checkpoint / "trainer_state_rank1.pt", weights_only=False)
    assert state["progress"]["step"] == 12
    assert state["momentum_encoder"] is not None
    queue = state["negatives"]["queue"]
    assert queue["keys"].shape == (1000, 64)
    assert queue["total"] == 12 * 2 * 64  # every global batch was enqueued
    assert state["negatives"]["bank"]["vectors"].shape[1] == 64
    assert state["negatives"]["miner"]["step"] == 12
    # benchmarks/miner_share.py reads this run's store: the miner's share of wall time.
    share_benchmark = load_benchmark("miner_share")
    history = share_benchmark.read_run(tmp_path / "mlflow.db")
    assert sorted(history["miner/time_share"]) == [6, 12]
    assert 0.0 < share_benchmark.share(history, 2 * 64, 0, 12) < 1.0


@pytest.mark.ray
def test_cli_code_search_on_two_ray_workers_logs_retrieval_beside_bm25(tmp_path: Path) -> None:
    """A text run through the CLI: pairs with hard negatives, streamed (each worker holds
    only its shard), a document queue filled by the momentum copy of the tower, the FAISS
    miner over the documents' bank, ZeRO-2 and bf16, and GradCache (each worker's 64 queries
    and 128 documents re-encoded in chunks of 48)."""
    from tests.data.helpers import write_text_pairs

    train = write_text_pairs(tmp_path / "train.jsonl", 1536, negatives=2)  # 12 full batches
    test = write_text_pairs(tmp_path / "test.jsonl", 150, seed=1)
    proc = _train(
        tmp_path, "configs/codesearch_mined.yaml", f"data.path={train}",
        f"data.eval_path={test}", "data.params={hard_negatives: 1, stream: true}",
        "tracking.experiment=dist-contrast",
        "model.hidden_dim=32", "model.embedding_dim=32", "model.vocab_size=512",
        "model.hash_buckets=4096", "trainer.batch_size=64", "trainer.max_steps=12",
        "trainer.log_every=6", "eval.every_steps=6", "checkpoint.every_steps=12",
        "optimizer.warmup_steps=2", "negatives.sources=[batch,queue,bank,mined]",
        "negatives.momentum_encoder=true", "negatives.queue.size=512",
        "negatives.miner.num_negatives=16", "deepspeed.zero_stage=2",
        "deepspeed.precision=bf16", "trainer.grad_cache={chunk_size: 48}",
        run_name="codesearch",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "held-out queries against" in proc.stdout and "BM25" in proc.stdout
    metrics = _run(tmp_path).data.metrics
    for name in ("mrr_at_10", "recall_at_1", "recall_at_10", "recall_at_100", "ndcg_at_10"):
        for prefix in ("", "bm25_", "hybrid_", "rrf_"):
            assert 0.0 <= metrics[f"eval/{prefix}{name}"] <= 1.0
    # Each query: the other 2·64·2 - 1 documents of the global batch (positives and the
    # file's negatives), the queue's 512 and 16 mined.
    assert metrics["queue/filled"] == 512
    assert metrics["negatives/mined"] == 16 and metrics["negatives/batch"] == 255
    assert metrics["train/negatives_per_query"] == 255 + 512 + 16 - metrics.get(
        "queue/masked_per_query", 0.0)
    assert metrics["eval/mrr_at_10"] > 0.1  # learned (chance is about 0.03)
    assert _run(tmp_path).data.params["trainer.grad_cache.chunk_size"] == "48"


@pytest.mark.ray
def test_cli_re_mines_hard_negatives_from_a_corpus_with_ray_tasks(tmp_path: Path) -> None:
    """negatives.corpus on two Ray workers: each refresh's corpus and queries are encoded by
    Ray tasks (room for them beside the workers: the local runtime makes it) while training
    goes on, and swapped in on both workers at once."""
    from tests.data.helpers import write_text_pairs

    train = write_text_pairs(tmp_path / "train.jsonl", 1024)
    test = write_text_pairs(tmp_path / "test.jsonl", 150, seed=1)
    proc = _train(
        tmp_path, "configs/codesearch.yaml", f"data.path={train}", f"data.eval_path={test}",
        "tracking.experiment=dist-contrast", "model.hidden_dim=32", "model.embedding_dim=32",
        "model.vocab_size=512", "model.hash_buckets=4096", "trainer.batch_size=64",
        "trainer.max_steps=8", "trainer.log_every=4", "eval.every_steps=8",
        "checkpoint.every_steps=8", "optimizer.warmup_steps=2",
        "negatives.sources=[batch, corpus]",
        "negatives.corpus={every_steps: 4, swap_after: 2, num_candidates: 4, workers: 2, "
        "cpus_per_task: 0.5, shard_size: 512}", run_name="ance",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = _run(tmp_path).data.metrics
    # The refresh started at step 4 swapped in before step 7: 2 query + 2 document shards.
    assert metrics["corpus/index_age"] == 3.0 and metrics["corpus/ray_tasks"] == 4.0
    assert -1.0 <= metrics["corpus/negative_similarity"] <= 1.0
    assert metrics["train/negatives_per_query"] == 2 * 64 * 2 - 1  # positives and mined ones
