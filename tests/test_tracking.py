"""MLflow tracker on a temporary sqlite store; the null tracker writes nothing; what a run's
page shows (source, description, dataset, experiment kind, system metrics)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.data.schema import TensorDatasetSchema

from dist_contrast.errors import UserError
from dist_contrast.tracking import (
    DATA_CONTEXT,
    EXPERIMENT_KIND,
    GIT_BRANCH,
    GIT_COMMIT,
    NOTE,
    OUTCOME,
    RAY_JOB_TAG,
    SOURCE_NAME,
    SOURCE_TYPE,
    USER,
    MlflowTracker,
    NullTracker,
    TrainingData,
    command_line,
    default_run_name,
    default_tracking_uri,
    deleted_experiment,
    describe_outcome,
    describe_run,
    end_run,
    ensure_experiment,
    file_digest,
    git_tags,
    is_local_store,
    make_tracker,
    open_run,
    source_tags,
    sqlite_path,
)


def test_default_uri_is_sqlite_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example:5000")
    assert default_tracking_uri(tmp_path) == "http://example:5000"


def test_tracker_logs_params_metrics_and_text(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ensure_experiment(uri, "exp", tmp_path / "artifacts")
    tracker = MlflowTracker(uri, "exp", run_name="r1")
    tracker.log_params({f"p{i}": str(i) for i in range(150)})  # more than one MLflow batch
    tracker.log_metrics({"train/loss": 1.5}, step=3)
    tracker.log_metrics({"train/loss": 1.0}, step=6)
    tracker.log_text("a: 1\n", "config.yaml")
    tracker.close()
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(tracker.run_id or "")
    assert run.data.params["p149"] == "149"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [3, 6]
    assert run.info.status == "FINISHED"
    assert (tmp_path / "artifacts").exists()
    # Reopening by id continues the same run (what a resumed job does).
    again = MlflowTracker(uri, "exp", run_name="ignored", run_id=tracker.run_id)
    assert again.run_id == tracker.run_id


def test_only_rank_zero_tracks(tmp_path: Path) -> None:
    assert isinstance(make_tracker(False), NullTracker)
    null = NullTracker()
    null.log_metrics({"x": 1.0}, step=1)
    null.close()
    assert null.run_id is None


def test_unreachable_server_is_a_user_error() -> None:
    with pytest.raises(UserError, match="cannot reach the MLflow tracking store"):
        ensure_experiment("http://127.0.0.1:9", "exp", None)


def test_a_deleted_experiment_is_named_deleted_with_the_ways_out(tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    client = mlflow.MlflowClient(tracking_uri=uri)
    gone = client.create_experiment("gone")
    client.delete_experiment(gone)
    with pytest.raises(UserError) as caught:
        ensure_experiment(uri, "gone", None)
    line = str(caught.value)
    assert line.startswith(f"MLflow experiment 'gone' (id {gone}) in '{uri}' was deleted; ")
    assert f"MLFLOW_TRACKING_URI={uri} mlflow experiments restore --experiment-id {gone}" in line
    assert "choose another tracking.experiment" in line
    assert f"mlflow gc --experiment-ids {gone} --backend-store-uri {uri}" in line
    assert "\n" not in line and "cannot reach" not in line
    assert client.search_runs([gone]) == []
    # The way out it names works: restored, the experiment is found again.
    client.restore_experiment(gone)
    assert ensure_experiment(uri, "gone", None) == gone


def test_a_deleted_experiment_on_a_server_is_purged_there() -> None:
    line = str(deleted_experiment("http://mlflow:5000", "gone", "7"))
    assert "have it deleted for good on the server (`mlflow gc --experiment-ids 7` on its " \
           "backend store)" in line
    assert "--backend-store-uri" not in line


@pytest.mark.parametrize(("uri", "local"), [
    ("sqlite:///mlflow.db", True), ("sqlite:////abs/mlflow.db", True),
    ("file:///tmp/mlruns", True), ("mlruns", True), ("/abs/mlruns", True),
    ("http://mlflow:5000", False), ("https://mlflow.example", False),
    ("databricks://profile", False), ("postgresql://u@db/mlflow", False),
])
def test_a_store_is_local_when_it_is_a_file_here(uri: str, local: bool) -> None:
    assert is_local_store(uri) is local


def test_the_sqlite_file_of_a_store() -> None:
    assert sqlite_path("sqlite:///mlflow.db") == Path("mlflow.db")
    assert sqlite_path("sqlite:////abs/m.db?mode=ro") == Path("/abs/m.db")
    assert sqlite_path("http://mlflow:5000") is None and sqlite_path("mlruns") is None


def test_the_default_run_name_is_the_experiment_and_the_local_time() -> None:
    now = time.mktime((2026, 3, 4, 5, 6, 7, 0, 0, -1))
    assert default_run_name("tau-study", now) == "tau-study-20260304-050607"
    assert default_run_name("x").startswith("x-20")


# ------------------------------------------------------------------ the run's page


def _uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/mlflow.db"


PARAMS = {
    "loss.name": "info_nce", "loss.temperature": "0.2", "loss.temperature_mode": "fixed",
    "negatives.sources": "['batch', 'queue']", "negatives.queue.size": "65536",
    "negatives.queue.layout": "sharded", "model.name": "mlp", "model.embedding_dim": "64",
    "trainer.num_workers": "2", "trainer.batch_size": "256", "trainer.max_steps": "2000",
    "data.name": "synthetic",
}
SYNTHETIC = TrainingData.generated(
    "synthetic", {"generator": "synthetic", "seed": 3, "num_samples": 2000},
    rows=1600, feature_shape=(64,),
)


def _open(uri: str, data: TrainingData | None = SYNTHETIC, continue_existing: bool = False,
          argv: list[str] | None = None) -> str:
    run_id, _ = open_run(
        uri, "exp", "r1", continue_existing=continue_existing, params=PARAMS, config_yaml="a: 1\n",
        tags={"dist_contrast.world_size": "2"}, data=data,
        argv=argv or ["/venv/bin/dist-contrast", "train", "configs/x.yaml", "loss.temperature=0.2"],
        negatives="global batch (512 keys) + queue (65,536 keys, sharded)",
    )
    return run_id


def test_experiment_is_shown_in_the_model_training_view(tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    client = mlflow.MlflowClient(tracking_uri=uri)
    new = ensure_experiment(uri, "new", None)
    assert client.get_experiment(new).tags[EXPERIMENT_KIND] == "custom_model_development"
    # An experiment made elsewhere gets the tag when found; a kind the user chose stays.
    untagged = client.create_experiment("untagged")
    chosen = client.create_experiment("chosen", tags={EXPERIMENT_KIND: "genai_development"})
    ensure_experiment(uri, "untagged", None)
    ensure_experiment(uri, "chosen", None)
    assert client.get_experiment(untagged).tags[EXPERIMENT_KIND] == "custom_model_development"
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND] == "genai_development"


def test_command_line_names_the_program_as_typed() -> None:
    args = ["train", "configs/x.yaml", "data.path=my file.npy"]
    expected = "dist-contrast train configs/x.yaml 'data.path=my file.npy'"
    assert command_line(["/venv/bin/dist-contrast", *args]) == expected
    assert command_line(["/repo/dist_contrast/cli.py", *args]) == expected  # python -m
    assert command_line(["/usr/bin/my_script.py", "x"]) == "my_script.py x"


def test_source_is_local_or_a_ray_job(tmp_path: Path) -> None:
    local = source_tags(["dist-contrast", "train", "c.yaml"], cwd=tmp_path, environ={})
    assert local[SOURCE_NAME] == "dist-contrast train c.yaml"
    assert local[SOURCE_TYPE] == "LOCAL"
    assert local[USER]
    assert GIT_COMMIT not in local  # tmp_path is in no git checkout
    job_env = {"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(
        {"runtime_env": {}, "metadata": {"job_submission_id": "raysubmit_abc"}})}
    job = source_tags(["dist-contrast"], cwd=tmp_path, environ=job_env)
    assert (job[SOURCE_TYPE], job[RAY_JOB_TAG]) == ("JOB", "raysubmit_abc")
    in_ray = source_tags(["x"], cwd=tmp_path, environ={"RAY_JOB_ID": "02000000"})
    assert in_ray[SOURCE_TYPE] == "JOB"
    named = source_tags(["x"], cwd=tmp_path, environ={"MLFLOW_TRACKING_USERNAME": "ada"})
    assert named[USER] == "ada"


def test_git_commit_of_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "first"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()
    (tmp_path / "sub").mkdir()
    assert git_tags(tmp_path / "sub") == {GIT_COMMIT: head, GIT_BRANCH: "main"}
    # No git at all: no tags and no error.
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert git_tags(tmp_path) == {}


def test_new_run_has_source_description_and_dataset(tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    ensure_experiment(uri, "exp", tmp_path / "artifacts")
    run = mlflow.MlflowClient(tracking_uri=uri).get_run(_open(uri))
    tags = run.data.tags
    assert tags[SOURCE_NAME] == "dist-contrast train configs/x.yaml loss.temperature=0.2"
    assert tags[SOURCE_TYPE] == "LOCAL"
    assert tags["dist_contrast.world_size"] == "2"
    note = tags[NOTE]
    for text in ("`info_nce`, τ = 0.2 (fixed)", "global batch (512 keys)",
                 "queue (65,536 keys, sharded)", "synthetic: 1,600 training rows × 64 (float32)",
                 "mlp, 64-d embedding", "2 × 256 = 512 per step", "**Steps**: 2,000"):
        assert text in note
    assert OUTCOME not in note
    [logged] = run.inputs.dataset_inputs
    assert {(t.key, t.value) for t in logged.tags} == {(DATA_CONTEXT, "training")}
    dataset = logged.dataset
    assert (dataset.name, dataset.source_type) == ("synthetic", "code")
    assert json.loads(dataset.source)["tags"] == {
        "generator": "synthetic", "seed": "3", "num_samples": "2000"}
    assert dataset.digest == SYNTHETIC.digest and len(dataset.digest) == 16
    schema = TensorDatasetSchema.from_dict(json.loads(dataset.schema))
    [features] = schema.features.inputs
    assert (features.type.name, features.shape) == ("float32", (-1, 64))
    assert schema.targets is not None and schema.targets.input_names() == ["label"]
    assert json.loads(dataset.profile) == {"num_rows": 1600, "num_features": 64}


def test_generated_digest_follows_the_parameters() -> None:
    def digest(seed: int) -> str:
        return TrainingData.generated("synthetic", {"seed": seed}, rows=1,
                                      feature_shape=(2,)).digest

    assert digest(0) == digest(0) != digest(1)


def test_file_dataset_digests_the_bytes(tmp_path: Path) -> None:
    features, labels = tmp_path / "feats.npy", tmp_path / "labels.npy"
    np.save(features, np.arange(24, dtype=np.float32).reshape(6, 4))
    np.save(labels, np.arange(6))
    data = TrainingData.from_file(features, rows=5, feature_shape=(4,), labels_path=labels)
    both = hashlib.sha256(features.read_bytes() + labels.read_bytes()).hexdigest()[:16]
    assert data.digest == both == file_digest(features, labels, chunk=7)  # chunked = whole
    assert (data.name, data.source_type, data.label) == ("feats.npy", "local", "label")
    assert data.source == {"uri": str(features.resolve()), "labels_uri": str(labels.resolve())}
    parquet = TrainingData.from_file(features, rows=5, feature_shape=(4,), label_column="y")
    assert parquet.label == "y" and "labels_uri" not in parquet.source
    unlabeled = TrainingData.from_file(features, rows=5, feature_shape=(4,))
    assert json.loads(unlabeled.schema_json())["mlflow_tensorspec"]["targets"] is None


def _note(uri: str, run_id: str) -> str:
    return str(mlflow.MlflowClient(tracking_uri=uri).get_run(run_id).data.tags[NOTE])


def test_description_ends_with_the_outcome(tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    ensure_experiment(uri, "exp", None)
    run_id = _open(uri)
    tracker = MlflowTracker(uri, "exp", "r1", run_id=run_id)
    tracker.log_metrics({"eval/raw_knn_acc": 0.164}, step=0)
    tracker.log_metrics({"train/loss": 1.0, "eval/knn_acc": 0.9451}, step=2000)
    tracker.log_metrics({"eval/linear_probe_acc": 0.912}, step=2000)
    tracker.close("FINISHED")  # rank 0 ends the run before the driver's end_run
    end_run(uri, run_id, "FINISHED")
    note = _note(uri, run_id)
    assert note.startswith("Contrastive training: `info_nce`")
    assert note.endswith(f"{OUTCOME}finished at step 2,000: kNN accuracy **0.945** "
                         "(raw input 0.164), linear probe **0.912**")
    # Continued (same run name): a fresh description, then this attempt's outcome only.
    run_again = _open(uri, continue_existing=True)
    assert run_again == run_id and OUTCOME not in _note(uri, run_id)
    end_run(uri, run_id, "KILLED")
    assert _note(uri, run_id).endswith(f"{OUTCOME}stopped at step 2,000")
    assert _note(uri, run_id).count(OUTCOME) == 1


def test_failed_run_says_why_in_one_line(tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    ensure_experiment(uri, "exp", None)
    run_id = _open(uri, data=None)
    end_run(uri, run_id, "FAILED", reason="worker rank 1 failed: ValueError: boom\ntraceback…")
    run = mlflow.MlflowClient(tracking_uri=uri).get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags[NOTE].endswith(f"{OUTCOME}failed: worker rank 1 failed: ValueError: boom")
    assert "**Data**: synthetic" in run.data.tags[NOTE]  # data.name when no facts were given
    assert not run.inputs.dataset_inputs
    assert describe_outcome("KILLED", {}) == "stopped before the first step"
    assert describe_outcome("FAILED", {"step": 7.0}) == (
        "failed: no reason given (last step logged: 7)")


def test_describe_run_temperature_modes() -> None:
    cosine = {**PARAMS, "loss.temperature_mode": "cosine", "loss.temperature_final": "0.05"}
    assert "τ = 0.2 → 0.05 (cosine)" in describe_run(cosine)
    learnable = {**PARAMS, "loss.temperature_mode": "learnable", "loss.temperature_min": "0.01",
                 "loss.temperature_max": "1.0"}
    assert "τ = 0.2 (learnable in [0.01, 1.0])" in describe_run(learnable)
    assert "**Negatives**: ['batch', 'queue']" in describe_run(
        {**PARAMS, "negatives.sources": "['batch', 'queue']"})  # as configured, when not given
    text = describe_run(PARAMS, SYNTHETIC, negatives="global batch (512 keys) + queue")
    assert "**Negatives**: global batch (512 keys) + queue" in text


def test_each_source_describes_itself_for_the_run_page() -> None:
    from dist_contrast.config import validate

    cfg = validate({"negatives": {"sources": ["batch", "bank", "mined"],
                                  "miner": {"num_negatives": 64, "index": "hnsw"}}},
                   source="test")
    assert cfg.negatives.describe(rows=1600, global_batch=512) == (
        "global batch (512 keys) + memory bank (1,600 keys) + mined (64 hard negatives per "
        "query, hnsw)")
    queue = validate({"negatives": {"sources": ["queue"], "momentum_encoder": True,
                                    "queue": {"size": 65536}}}, source="test")
    assert queue.negatives.describe(rows=None, global_batch=512) == (
        "queue (65,536 keys, replicated)")


def test_system_metrics_are_logged_while_sampling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")
    uri = _uri(tmp_path)
    ensure_experiment(uri, "exp", None)
    tracker = MlflowTracker(uri, "exp", run_name="r1")
    client = mlflow.MlflowClient(tracking_uri=uri)

    def steps() -> list[int]:
        return [m.step for m in client.get_metric_history(tracker.run_id or "",
                                                          "system/cpu_utilization_percentage")]

    tracker.start_system_metrics()
    # Until two samples are logged (1.5 s on a quiet machine; a loaded one samples later).
    deadline = time.monotonic() + 60
    while len(steps()) < 2 and time.monotonic() < deadline:
        time.sleep(0.25)
    tracker.stop_system_metrics()
    tracker.stop_system_metrics()  # idempotent
    metrics = client.get_run(tracker.run_id or "").data.metrics
    for key in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"):
        assert key in metrics
    logged = steps()
    assert logged == list(range(len(logged))) and len(logged) >= 2
    NullTracker().start_system_metrics()  # other ranks: nothing


def test_a_text_runs_outcome_and_summary_give_retrieval_beside_bm25(
        capsys: pytest.CaptureFixture[str]) -> None:
    from dist_contrast.cli import _print_summary
    from dist_contrast.driver.run import TrainingSummary

    metrics = {"step": 200.0, "eval/mrr_at_10": 0.41234, "eval/bm25_mrr_at_10": 0.38,
               "eval/recall_at_1": 0.3, "eval/bm25_recall_at_1": 0.29,
               "eval/hybrid_mrr_at_10": 0.47, "eval/retrieval_queries": 5913.0,
               "eval/retrieval_corpus": 5913.0, "train/loss": 1.5}
    assert describe_outcome("FINISHED", metrics) == (
        "finished at step 200: MRR@10 **0.412** (BM25 0.380)")
    _print_summary(TrainingSummary("text", "a" * 32, "sqlite:///m.db", "/ck/checkpoint_1",
                                   metrics))
    out = capsys.readouterr().out
    assert "5,913 held-out queries against 5,913 documents" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()
            if line.strip().split()[:1] in (["dense"], ["BM25"], ["hybrid"])}
    assert rows["dense"][:2] == ["0.4123", "0.3000"] and rows["BM25"][:2] == ["0.3800", "0.2900"]
    assert rows["hybrid"][:2] == ["0.4700", "-"]
    assert "ROWS.npy" not in out  # no rows of numbers: texts, with a tower
    assert "dist-contrast search /ck/checkpoint_1" in out and "--side query" in out
