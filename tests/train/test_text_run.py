"""A text retrieval run without Ray (the driver's plan and MLflow run, the real worker loop in
two gloo processes, ZeRO 1): the shipped code-search config on a small file of pairs with hard
negatives, logging MRR/Recall/nDCG beside BM25 and the hybrid and learning; then its checkpoint
embeds texts through the real CLI with either tower. The Ray path of such a run is the CLI's
(tests/test_end_to_end.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dist_contrast.serving.text import load_text_encoder
from tests.conftest import Cli, metric_history, store_runs
from tests.data.helpers import write_text_pairs
from tests.inprocess import train_in_process

ROOT = Path(__file__).resolve().parents[2]
# One pytest-xdist process for the module: its run is trained once (make check: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("text_run")
METRICS = ("mrr_at_10", "recall_at_1", "recall_at_10", "recall_at_100", "ndcg_at_10")


@pytest.fixture(scope="session")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run's folder: mlflow.db, results/text/checkpoint_00000040, test.jsonl."""
    tmp = tmp_path_factory.mktemp("text")
    train = write_text_pairs(tmp / "train.jsonl", 1200, negatives=2)
    test = write_text_pairs(tmp / "test.jsonl", 200, seed=1)
    train_in_process(
        ROOT / "configs/codesearch.yaml", f"data.path={train}", f"data.eval_path={test}",
        "data.params={hard_negatives: 1}", "model.hidden_dim=32", "model.embedding_dim=32",
        "model.vocab_size=512", "model.hash_buckets=4096", "trainer.batch_size=64",
        "trainer.max_steps=40", "trainer.log_every=10", "eval.every_steps=20",
        "checkpoint.every_steps=40", "optimizer.warmup_steps=5", "optimizer.lr=0.01",
        "deepspeed.zero_stage=1", "experiment.run_name=text", folder=tmp)
    return tmp


def test_a_code_search_run_logs_retrieval_metrics_beside_bm25(run: Path) -> None:
    store = run / "mlflow.db"
    (found,) = store_runs(store, "codesearch")
    assert found.info.status == "FINISHED"
    metrics = found.data.metrics
    for name in METRICS:
        for prefix in ("", "bm25_", "hybrid_", "rrf_"):
            assert 0.0 <= metrics[f"eval/{prefix}{name}"] <= 1.0, (prefix, name)
    assert metrics["eval/retrieval_queries"] == 200
    mrr = metric_history(store, found.info.run_id, "eval/mrr_at_10")
    assert [step for step, _ in mrr] == [20, 40]
    # By chance, MRR@10 among 200 documents is about 0.015 (0.53 seen after 40 steps).
    assert mrr[-1][1] > 0.3, mrr


def test_its_checkpoint_embeds_texts_with_either_tower(run: Path, cli: Cli,
                                                       tmp_path: Path) -> None:
    checkpoint = run / "results" / "text" / "checkpoint_00000040"
    rows = [json.loads(line) for line in (run / "test.jsonl").read_text().splitlines()][:50]
    encoder, config = load_text_encoder(str(checkpoint))
    assert config.model.name == "bow" and encoder.featurizer is not None
    (tmp_path / "queries.txt").write_text("".join(r["anchor"] + "\n" for r in rows))
    done = cli.run("embed", checkpoint, "queries.txt", "--side", "query", "-o", "q.npy",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "embedded 50 texts" in done.stdout
    with torch.no_grad():
        expected = encoder([r["anchor"] for r in rows], side="query").numpy()
    np.testing.assert_allclose(np.load(tmp_path / "q.npy"), expected, rtol=1e-5, atol=1e-6)
    done = cli.run("embed", checkpoint, run / "test.jsonl", "--side", "document", "--column",
                   "positive", "-o", "d.npy", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    documents = np.load(tmp_path / "d.npy")
    assert documents.shape == (200, 32) and documents.dtype == np.float32
    # The trained towers find most documents from their queries.
    top = (np.load(tmp_path / "q.npy") @ documents.T).argmax(axis=1)
    assert (top == np.arange(50)).mean() > 0.3


@pytest.mark.parametrize(("args", "fragment"), [
    (["queries.txt", "-o", "q.npy"], "say which tower embeds INPUT with --side"),
    (["test.jsonl", "--side", "query", "-o", "q.npy"], "line 1 has no column 'text'"),
    (["queries.txt", "--side", "query", "-o", "q.parquet"], "must be a .npy file"),
    (["rows.npy", "--side", "query", "-o", "q.npy"], "must be a .txt file"),
])
def test_embed_refusals_are_one_line_and_write_nothing(run: Path, cli: Cli, tmp_path: Path,
                                                       args: list[str], fragment: str) -> None:
    (tmp_path / "queries.txt").write_text("read a file\n")
    (tmp_path / "test.jsonl").write_text((run / "test.jsonl").read_text())
    np.save(tmp_path / "rows.npy", np.zeros((2, 4), dtype=np.float32))
    checkpoint = run / "results" / "text" / "checkpoint_00000040"
    done = cli.run("embed", checkpoint, *args, cwd=tmp_path)
    assert done.returncode == 2 and fragment in done.stderr, done.stderr[-2000:]
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "q.npy").exists() and not (tmp_path / "q.parquet").exists()


def test_search_finds_documents_from_their_queries_and_reuses_the_corpus(
        run: Path, cli: Cli, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (run / "test.jsonl").read_text().splitlines()]
    queries = [row["anchor"] for row in rows[:8]]
    corpus = run / "test.jsonl"
    first = cli.run("search", run / "results" / "text", *queries, "--corpus", corpus, "-k", "10",
                    cwd=tmp_path)  # the run folder: its newest checkpoint
    assert first.returncode == 0, first.stderr[-2000:]
    assert "200 documents of" in first.stdout and "(positive) embedded" in first.stdout
    blocks = first.stdout.split("\n\n")[1:]
    assert len(blocks) == 8
    found = sum(row["positive"].splitlines()[0][:100] in block
                for row, block in zip(rows, blocks, strict=False))
    assert found >= 5, first.stdout  # most queries find their own document in their top 10
    cache = list((run / "results" / "text" / "checkpoint_00000040" / "search").glob("*.npy"))
    assert len(cache) == 1
    again = cli.run("search", run / "results" / "text" / "checkpoint_00000040", queries[0],
                    "--corpus", corpus, "-k", "3", cwd=tmp_path)
    assert again.returncode == 0 and "(positive) reused" in again.stdout
    assert again.stdout.count("  1. ") == 1 and "  4. " not in again.stdout
    missing = cli.run("search", run / "results" / "text", "x", "--corpus", "nope.jsonl",
                      cwd=tmp_path)
    assert missing.returncode == 2 and "--corpus 'nope.jsonl' not found" in missing.stderr


def test_the_mlflow_model_takes_raw_strings_with_the_tokenizer_inside(
        run: Path, cli: Cli, tmp_path: Path) -> None:
    import mlflow
    import pandas as pd

    store = run / "mlflow.db"
    (found,) = store_runs(store, "codesearch")
    run_id = found.info.run_id
    texts = ["w001x w002x w003x", "an unseen text entirely", "w010x"]
    checkpoint, _ = load_text_encoder(str(run / "results" / "text" / "checkpoint_00000040"))
    with torch.no_grad():
        expected = {side: checkpoint(texts, side=side).numpy() for side in ("query", "document")}
    mlflow.set_tracking_uri(f"sqlite:///{store}")
    try:
        model = mlflow.pyfunc.load_model(f"runs:/{run_id}/encoder")
        frame = pd.DataFrame({"text": texts})
        np.testing.assert_allclose(model.predict(frame), expected["query"], atol=1e-6)
        np.testing.assert_allclose(model.predict(frame, params={"side": "document"}),
                                   expected["document"], atol=1e-6)
    finally:
        mlflow.set_tracking_uri(None)
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n")
    done = cli.run("embed", run_id, "t.txt", "--side", "document", "-o", "t.npy",
                   "--tracking-uri", f"sqlite:///{store}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "t.npy"), expected["document"], atol=1e-6)
    rows = cli.run("embed", run_id, "t.txt", "-o", "r.npy", "--tracking-uri",
                   f"sqlite:///{store}", cwd=tmp_path)
    assert rows.returncode == 2 and "must be a .npy or .parquet" in rows.stderr
    np.save(tmp_path / "rows.npy", np.zeros((2, 3), dtype=np.float32))
    rows = cli.run("embed", run_id, "rows.npy", "-o", "r.npy", "--tracking-uri",
                   f"sqlite:///{store}", cwd=tmp_path)
    assert rows.returncode == 2 and "is a text encoder" in rows.stderr, rows.stderr


def test_a_transformer_run_writes_sentence_transformer_folders_that_embed_as_its_towers(
        tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    train = write_text_pairs(tmp_path / "train.jsonl", 300)
    test = write_text_pairs(tmp_path / "test.jsonl", 40, seed=1)
    train_in_process(
        ROOT / "configs/codesearch_transformer.yaml", f"data.path={train}",
        f"data.eval_path={test}", "data.params={}", "model.vocab_size=300",
        "model.hidden_dim=16", "model.num_heads=2", "model.num_layers=1",
        "model.embedding_dim=8", "model.query_max_length=16", "model.document_max_length=24",
        "model.towers=separate", "trainer.batch_size=32", "trainer.max_steps=6",
        "eval.every_steps=6", "checkpoint.every_steps=6", "optimizer.warmup_steps=1",
        "experiment.run_name=tf", folder=tmp_path)
    run = tmp_path / "results" / "tf"
    encoder, _ = load_text_encoder(str(run / "checkpoint_00000006"))
    texts = ["w001x w002x w003x", "w004x w005x and a longer text " * 3]
    for side in ("query", "document"):
        model = SentenceTransformer(str(run / f"sentence_transformer_{side}"), device="cpu")
        with torch.no_grad():
            expected = encoder(texts, side=side).numpy()
        np.testing.assert_allclose(model.encode(texts), expected, atol=1e-5)
    (found,) = store_runs(tmp_path / "mlflow.db", "codesearch")
    assert found.data.tags["dist_contrast.sentence_transformer_query"] == str(
        run / "sentence_transformer_query")


def test_evaluate_measures_the_checkpoint_on_other_pairs_as_a_new_run(
        run: Path, cli: Cli, tmp_path: Path) -> None:
    other = write_text_pairs(tmp_path / "other.jsonl", 120, seed=7)
    checkpoint = run / "results" / "text" / "checkpoint_00000040"
    store = tmp_path / "eval.db"
    done = cli.run("evaluate", checkpoint, f"data.eval_path={other}", "--tracking-uri",
                   f"sqlite:///{store}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    (found,) = store_runs(store, "codesearch")
    metrics = found.data.metrics
    assert metrics["eval/retrieval_queries"] == 120 and metrics["eval/bm25_mrr_at_10"] > 0.9
    assert metrics["eval/mrr_at_10"] > 0.3
    assert found.data.tags["dist_contrast.evaluates_source"] == str(checkpoint)
    assert found.data.params["data.eval_path"] == str(other)
    refused = cli.run("evaluate", checkpoint, "data.name=synthetic", "--tracking-uri",
                      f"sqlite:///{store}", cwd=tmp_path)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
