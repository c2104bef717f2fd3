"""Two modalities without Ray (the driver's plan and MLflow run, the real worker loop in two gloo
processes): text queries against documents that are numeric feature rows, as CLIP pairs
captions with images. The document tower is an MLP; the run is measured by retrieval alone
(BM25 needs words on both sides); its checkpoint, its MLflow model, ``embed`` and ``search``
take feature rows on the document side and texts on the query side."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dist_contrast.config import load_config
from dist_contrast.driver.plan import summarize_data
from dist_contrast.errors import UserError
from dist_contrast.serving.text import load_text_encoder
from tests.conftest import Cli, metric_history, store_runs
from tests.data.helpers import write_feature_pairs
from tests.inprocess import train_in_process

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.xdist_group("feature_run")
WIDTH = 16
MODEL = ["model.towers=separate", f"model.document_features={WIDTH}", "model.hidden_dim=32",
         "model.embedding_dim=32", "model.vocab_size=512", "model.hash_buckets=4096"]


@pytest.fixture(scope="session")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run's folder: mlflow.db, results/feat/checkpoint_00000060, test.jsonl."""
    tmp = tmp_path_factory.mktemp("features")
    train = write_feature_pairs(tmp / "train.parquet", 1200, width=WIDTH, negatives=1)
    test = write_feature_pairs(tmp / "test.jsonl", 200, width=WIDTH, seed=1)
    train_in_process(
        ROOT / "configs/codesearch.yaml", f"data.path={train}", f"data.eval_path={test}",
        "data.params={hard_negatives: 1}", *MODEL, "trainer.batch_size=64",
        "trainer.max_steps=60", "trainer.log_every=10", "eval.every_steps=20",
        "checkpoint.every_steps=60", "optimizer.warmup_steps=5", "optimizer.lr=0.01",
        "experiment.run_name=feat", folder=tmp)
    return tmp


def _checkpoint(run: Path) -> Path:
    return run / "results" / "feat" / "checkpoint_00000060"


def _rows(run: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (run / "test.jsonl").read_text().splitlines()]


def test_the_run_learns_text_to_feature_retrieval_without_bm25(run: Path) -> None:
    store = run / "mlflow.db"
    (found,) = store_runs(store, "codesearch")
    assert found.info.status == "FINISHED"
    metrics = found.data.metrics
    assert 0.0 <= metrics["eval/recall_at_10"] <= 1.0
    assert metrics["eval/retrieval_queries"] == 200 and metrics["eval/retrieval_corpus"] == 200
    assert not any(key.startswith(("eval/bm25_", "eval/hybrid_", "eval/rrf_"))
                   for key in metrics)
    mrr = [value for _, value in metric_history(store, found.info.run_id, "eval/mrr_at_10")]
    # By chance MRR@10 among 200 documents is about 0.015 (0.09, 0.36, 0.44 seen at steps
    # 20, 40 and 60).
    assert len(mrr) == 3 and mrr[-1] > 0.25 and mrr[-1] > mrr[0], mrr


def test_embed_and_the_mlflow_model_take_feature_rows_on_the_document_side(
        run: Path, cli: Cli, tmp_path: Path) -> None:
    import mlflow
    import pandas as pd

    rows = _rows(run)[:20]
    encoder, _ = load_text_encoder(str(_checkpoint(run)))
    with torch.no_grad():
        documents = encoder([row["positive"] for row in rows], side="document").numpy()
        queries = encoder([row["anchor"] for row in rows], side="query").numpy()
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    done = cli.run("embed", _checkpoint(run), "docs.jsonl", "--column", "positive", "--side",
                   "document", "-o", "d.npy", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "d.npy"), documents, rtol=1e-5, atol=1e-6)
    # Texts where the document tower takes rows: one line, nothing written.
    wrong = cli.run("embed", _checkpoint(run), "docs.jsonl", "--column", "anchor", "--side",
                    "document", "-o", "w.npy", cwd=tmp_path)
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1
    assert "the document tower takes rows of 16 numbers, not text" in wrong.stderr
    assert not (tmp_path / "w.npy").exists()

    (found,) = store_runs(run / "mlflow.db", "codesearch")
    mlflow.set_tracking_uri(f"sqlite:///{run / 'mlflow.db'}")
    try:
        model = mlflow.pyfunc.load_model(f"runs:/{found.info.run_id}/encoder")
        frame = pd.DataFrame({"features": [row["positive"] for row in rows]})
        np.testing.assert_allclose(model.predict(frame, params={"side": "document"}),
                                   documents, atol=1e-6)
        texts = pd.DataFrame({"text": [row["anchor"] for row in rows]})
        np.testing.assert_allclose(model.predict(texts), queries, atol=1e-6)
    finally:
        mlflow.set_tracking_uri(None)


def test_search_finds_feature_rows_from_text_queries(run: Path, cli: Cli,
                                                     tmp_path: Path) -> None:
    rows = _rows(run)
    queries = [str(row["anchor"]) for row in rows[:5]]
    done = cli.run("search", _checkpoint(run), *queries, "--corpus", run / "test.jsonl", "-k",
                   "10", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "200 documents of" in done.stdout and "[16 numbers]" in done.stdout
    blocks = done.stdout.split("\n\n")[1:]
    assert len(blocks) == 5
    found = sum(f"row {i}  [16 numbers]" in block for i, block in enumerate(blocks))
    assert found >= 2, done.stdout


@pytest.mark.parametrize(("overrides", "message"), [
    ([], "the document side of data.path holds feature rows of 16 numbers; set "
         "model.document_features=16 and model.towers=separate"),
    (["model.towers=separate", "model.document_features=8"],
     "holds feature rows of 16 numbers, not model.document_features=8; set "
     "model.document_features=16"),
    (["model.towers=separate", "model.query_features=16", "model.document_features=null"],
     "model.query_features=16, but the query side of data.path is text; drop"),
])
def test_the_plan_holds_the_model_to_the_data_s_sides(tmp_path: Path, overrides: list[str],
                                                      message: str) -> None:
    train = write_feature_pairs(tmp_path / "train.jsonl", 20, width=WIDTH)
    cfg = load_config(ROOT / "configs/codesearch.yaml", [
        f"data.path={train}", "data.eval_path=null", "data.params={}", *overrides])
    with pytest.raises(UserError) as caught:
        summarize_data(cfg)
    assert message in str(caught.value)


def test_a_transformer_beside_feature_rows_exports_its_text_tower_alone(tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    train = write_feature_pairs(tmp_path / "train.jsonl", 200, width=WIDTH)
    test = write_feature_pairs(tmp_path / "test.jsonl", 30, width=WIDTH, seed=1)
    train_in_process(
        ROOT / "configs/codesearch_transformer.yaml", f"data.path={train}",
        f"data.eval_path={test}", "data.params={}", "model.vocab_size=300",
        "model.hidden_dim=16", "model.num_heads=2", "model.num_layers=1",
        "model.embedding_dim=8", "model.query_max_length=16", "model.towers=separate",
        f"model.document_features={WIDTH}", "trainer.batch_size=32", "trainer.max_steps=4",
        "eval.every_steps=4", "checkpoint.every_steps=4", "optimizer.warmup_steps=1",
        "experiment.run_name=tf", folder=tmp_path)
    run = tmp_path / "results" / "tf"
    assert sorted(p.name for p in run.glob("sentence_transformer*")) == [
        "sentence_transformer_query"]
    encoder, _ = load_text_encoder(str(run / "checkpoint_00000004"))
    texts = ["w001x w002x w003x", "w004x w005x"]
    with torch.no_grad():
        expected = encoder(texts, side="query").numpy()
    model = SentenceTransformer(str(run / "sentence_transformer_query"), device="cpu")
    np.testing.assert_allclose(model.encode(texts), expected, atol=1e-5)
