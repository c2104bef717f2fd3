"""A text retrieval run without Ray (the driver's plan and MLflow run, the real worker loop in
two gloo processes): the shipped code-search config on a small file of pairs with hard
negatives, logging MRR/Recall/nDCG beside BM25 and the hybrid, and learning (the trained
encoder ranks better than the untrained one). The Ray path of such a run is the CLI's
(tests/test_end_to_end.py)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import metric_history, store_runs
from tests.data.helpers import write_text_pairs
from tests.inprocess import train_in_process

ROOT = Path(__file__).resolve().parents[2]
METRICS = ("mrr_at_10", "recall_at_1", "recall_at_10", "recall_at_100", "ndcg_at_10")


def test_a_code_search_run_logs_retrieval_metrics_beside_bm25(tmp_path: Path) -> None:
    train = write_text_pairs(tmp_path / "train.jsonl", 1200, negatives=2)
    test = write_text_pairs(tmp_path / "test.jsonl", 200, seed=1)
    train_in_process(
        ROOT / "configs/codesearch.yaml", f"data.path={train}", f"data.eval_path={test}",
        "data.params={hard_negatives: 1}", "model.hidden_dim=32", "model.embedding_dim=32",
        "model.vocab_size=512", "model.hash_buckets=4096", "trainer.batch_size=64",
        "trainer.max_steps=40", "trainer.log_every=10", "eval.every_steps=20",
        "checkpoint.every_steps=40", "optimizer.warmup_steps=5", "optimizer.lr=0.01",
        "experiment.run_name=text", folder=tmp_path)
    store = tmp_path / "mlflow.db"
    (run,) = store_runs(store, "codesearch")
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    for name in METRICS:
        for prefix in ("", "bm25_", "hybrid_"):
            assert 0.0 <= metrics[f"eval/{prefix}{name}"] <= 1.0, (prefix, name)
    assert metrics["eval/retrieval_queries"] == 200
    mrr = metric_history(store, run.info.run_id, "eval/mrr_at_10")
    assert [step for step, _ in mrr] == [20, 40]
    # By chance, MRR@10 among 200 documents is about 0.015 (0.53 seen after 40 steps).
    assert mrr[-1][1] > 0.3, mrr
    assert (tmp_path / "results" / "text" / "checkpoint_00000040").is_dir()
