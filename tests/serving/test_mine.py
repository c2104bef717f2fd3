"""``dist-contrast mine`` (serving/mine.py): BM25 and a trained text encoder's negatives on
small files, never a positive by id or by text, an interrupted mine resumed to the same file,
OUTPUT readable as training pairs, bad input refused in one line, and a real mine on two Ray
workers giving what one process gives.

The encoder is a real text run's checkpoint (the shipped code-search config, 10 steps, in two
gloo processes without Ray)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dist_contrast.data.pairs import open_pairs
from dist_contrast.errors import UserError
from dist_contrast.retrieval import BM25Index
from dist_contrast.retrieval.mining import MiningRule, text_key
from dist_contrast.serving.mine import mine
from dist_contrast.serving.text import load_text_encoder
from tests.data.helpers import write_text_pairs
from tests.forks import run_cli
from tests.inprocess import train_in_process

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.xdist_group("mine")


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("mine_run")
    train = write_text_pairs(tmp / "train.jsonl", 300)
    test = write_text_pairs(tmp / "test.jsonl", 60, seed=1)
    train_in_process(
        ROOT / "configs/codesearch.yaml", f"data.path={train}", f"data.eval_path={test}",
        "model.hidden_dim=16", "model.embedding_dim=16", "model.vocab_size=512",
        "model.hash_buckets=1024", "trainer.batch_size=32", "trainer.max_steps=10",
        "trainer.log_every=10", "eval.every_steps=10", "checkpoint.every_steps=10",
        "optimizer.warmup_steps=1", "optimizer.lr=0.01", "experiment.run_name=mine",
        folder=tmp)
    return tmp / "results" / "mine" / "checkpoint_00000010"


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _quiet(line: str) -> None:
    pass


def _pairs_with_shared_queries(path: Path, rows: int = 80) -> Path:
    """Pairs where some queries have two positives (two rows), and a positive's text also
    appears, re-cased and re-spaced, as another row's negative-looking document."""
    base = write_text_pairs(path.with_suffix(".base.jsonl"), rows, seed=3)
    records = _read(base)
    for i in range(0, rows, 10):  # a second positive for every tenth query
        records.append({"anchor": records[i]["anchor"], "positive": records[i + 1]["positive"]
                        + " extra"})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _corpus_file(pairs: Path, path: Path) -> Path:
    """A corpus of every positive, each positive also once re-cased under another id."""
    lines = []
    for i, row in enumerate(_read(pairs)):
        lines.append({"id": f"d{i}", "text": row["positive"]})
        if i % 3 == 0:
            lines.append({"id": f"copy{i}", "text": "  " + row["positive"].upper()})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _assert_no_positive(pairs: Path, mined: Path, wanted: int) -> None:
    positives: dict[str, set[str]] = {}
    for row in _read(pairs):
        positives.setdefault(row["anchor"], set()).add(text_key(row["positive"]))
    out = _read(mined)
    assert len(out) == len(_read(pairs))
    for row in out:
        keys = [text_key(n) for n in row["negatives"]]
        assert not set(keys) & positives[row["query"]]
        assert len(set(keys)) == len(keys) == wanted


def test_bm25_takes_the_best_scored_documents_that_are_not_positives(tmp_path: Path) -> None:
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"query": "parse csv file", "positive": "parse a csv file"})
                       + "\n")
    texts = {"pos": "parse a csv file", "copy": "PARSE  a CSV file", "a": "parse the csv",
             "b": "write a csv file", "c": "parse json", "d": "unrelated words",
             "e": "csv csv"}
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in texts.items()))
    out = tmp_path / "out.jsonl"
    summary = mine("bm25", queries, corpus, out, MiningRule(num_negatives=3, range_max=10),
                   say=_quiet)
    index = BM25Index(list(texts.values()))
    scores = index.scores("parse csv file")
    ranked = [list(texts.values())[i] for i in np.argsort(-scores, kind="stable")
              if scores[i] > 0 and list(texts)[i] not in ("pos", "copy")]
    assert _read(out)[0]["negatives"] == ranked[:3]
    counts = summary.counts
    assert (counts.positive_id, counts.positive_text, counts.kept) == (1, 1, 3)
    # A margin under the positive's score removes the ones scored close to it.
    tight = mine("bm25", queries, corpus, tmp_path / "tight.jsonl",
                 MiningRule(num_negatives=1, range_max=10, relative_margin=0.5), say=_quiet)
    ceiling = 0.5 * scores[0]
    kept = _read(tmp_path / "tight.jsonl")[0]["negatives"]
    assert all(scores[list(texts.values()).index(n)] <= ceiling for n in kept)
    assert tight.counts.margin >= 1


@pytest.mark.parametrize("source", ["bm25", "model"])
def test_no_positive_is_returned_by_id_or_by_text(source: str, checkpoint: Path,
                                                  tmp_path: Path) -> None:
    pairs = _pairs_with_shared_queries(tmp_path / "pairs.jsonl")
    chosen = "bm25" if source == "bm25" else str(checkpoint)
    rule = MiningRule(num_negatives=4, range_max=30)
    for corpus in (None, _corpus_file(pairs, tmp_path / "corpus.jsonl")):
        out = tmp_path / f"out-{corpus is None}.jsonl"
        summary = mine(chosen, pairs, corpus, out, rule, say=_quiet)
        _assert_no_positive(pairs, out, 4)
        if corpus is not None:
            assert summary.counts.positive_text > 0  # the re-cased copies were found


def test_an_interrupted_mine_resumes_to_the_same_file(checkpoint: Path, tmp_path: Path) -> None:
    pairs = write_text_pairs(tmp_path / "pairs.jsonl", 90, seed=5)
    rule = MiningRule(num_negatives=3, range_max=20, sampling="random", seed=1, margin=0.0)
    whole = tmp_path / "whole.jsonl"
    mine(str(checkpoint), pairs, None, whole, rule, shard_size=16, say=_quiet)
    assert not (tmp_path / ".whole.jsonl.mine").exists()  # the saved work is removed

    out = tmp_path / "out.jsonl"

    def stop_after(count: int) -> Any:
        pieces: list[str] = []

        def after(name: str) -> None:
            pieces.append(name)
            if len(pieces) == count:
                raise KeyboardInterrupt
        return after

    # 6 query and 6 document shards of 16 texts, then 6 blocks of 16 rows. Stopped after the
    # 3rd shard; then, resumed, after the 9 shards left and 2 blocks; then finished.
    for count in (3, 9 + 2):
        with pytest.raises(KeyboardInterrupt):
            mine(str(checkpoint), pairs, None, out, rule, shard_size=16,
                 say=_quiet, after_piece=stop_after(count))
        assert not out.exists()
    saved = sorted(p.name for p in (tmp_path / ".out.jsonl.mine").iterdir())
    assert sum(name.startswith("mined-") for name in saved) == 2
    assert sum(name.endswith(".npy") for name in saved) == 12
    lines: list[str] = []
    summary = mine(str(checkpoint), pairs, None, out, rule, shard_size=16,
                   say=lines.append)
    assert out.read_bytes() == whole.read_bytes()
    assert summary.resumed > 0 and any(line.startswith("resuming") for line in lines)


def test_the_work_of_another_command_is_not_reused(tmp_path: Path) -> None:
    pairs = write_text_pairs(tmp_path / "pairs.jsonl", 60, seed=6)
    loose, tight = MiningRule(num_negatives=2), MiningRule(num_negatives=2, relative_margin=0.5)

    def stop(name: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        mine("bm25", pairs, None, tmp_path / "out.jsonl", loose, shard_size=8, say=_quiet,
             after_piece=stop)
    mine("bm25", pairs, None, tmp_path / "out.jsonl", tight, shard_size=8, say=_quiet)
    mine("bm25", pairs, None, tmp_path / "fresh.jsonl", tight, shard_size=8, say=_quiet)
    assert (tmp_path / "out.jsonl").read_bytes() == (tmp_path / "fresh.jsonl").read_bytes()


def test_a_parquet_output_is_read_back_as_pairs_with_negatives(tmp_path: Path) -> None:
    pairs = write_text_pairs(tmp_path / "pairs.jsonl", 40, seed=7)
    out = tmp_path / "mined.parquet"
    mine("bm25", pairs, None, out, MiningRule(num_negatives=2), say=_quiet)
    read = open_pairs(out)
    batch = next(read.batches(100))
    assert len(batch) == 40 and all(len(n) == 2 for n in batch.negatives)
    assert batch.query[0] == _read(pairs)[0]["anchor"]


def test_the_model_scores_with_its_two_towers(checkpoint: Path, tmp_path: Path) -> None:
    """The chosen negatives are the corpus documents the towers rank highest (checked
    against the encoder's own embeddings and NumPy's sort)."""
    pairs = write_text_pairs(tmp_path / "pairs.jsonl", 50, seed=8)
    out = tmp_path / "out.jsonl"
    mine(str(checkpoint), pairs, None, out, MiningRule(num_negatives=2, range_max=10),
         say=_quiet)
    encoder, _ = load_text_encoder(str(checkpoint))
    rows = _read(pairs)
    docs = [r["positive"] for r in rows]
    q = encoder([r["anchor"] for r in rows], side="query").detach().numpy()
    d = encoder(docs, side="document").detach().numpy()
    for i, row in enumerate(_read(out)):
        order = [j for j in np.argsort(-(q[i] @ d.T), kind="stable") if j != i]
        assert row["negatives"] == [docs[j] for j in order[:2]]


# ----------------------------------------------------------------------------- bad input


def _cli(cwd: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    env.pop("RAY_ADDRESS", None)
    return run_cli(["mine", *args], cwd=cwd, timeout=300, env=env)


def _refused(cwd: Path, *args: str | Path) -> str:
    proc = _cli(cwd, *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dist-contrast: error:"), proc.stderr
    assert proc.stdout == ""
    assert sorted(p.name for p in cwd.iterdir() if p.name.startswith(("out", ".out"))) == []
    return lines[0]


def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    pairs = write_text_pairs(tmp_path / "pairs.jsonl", 20)
    no_positive = tmp_path / "nopos.jsonl"
    no_positive.write_text(json.dumps({"query": "a", "positive": "b"}) + "\n"
                           + json.dumps({"query": "c"}) + "\n")
    no_ids = tmp_path / "noids.jsonl"
    no_ids.write_text(json.dumps({"text": "a document"}) + "\n")
    some_ids = tmp_path / "someids.jsonl"
    some_ids.write_text(json.dumps({"id": 1, "text": "x"}) + "\n" + json.dumps({"text": "y"})
                        + "\n")
    twice = tmp_path / "twice.jsonl"
    twice.write_text(json.dumps({"id": 1, "text": "x"}) + "\n"
                     + json.dumps({"id": 1, "text": "y"}) + "\n")
    out = ["-o", "out.jsonl"]
    says = {
        ("--queries", no_positive): "line 2 has no 'positive'",
        ("--queries", pairs, "--corpus", no_ids): "has no 'id' column",
        ("--queries", pairs, "--corpus", some_ids): "line 2 has no id",
        ("--queries", pairs, "--corpus", twice): "repeats the id '1' of line 1",
        ("--queries", pairs, "--margin", "-1"): "--margin must be a finite number of 0 or more",
        ("--queries", pairs, "--relative-margin", "1.5"): "--relative-margin must be in [0, 1)",
        ("--queries", pairs, "--range-min", "9", "--range-max", "4"): "must be above",
        ("--queries", tmp_path / "missing.jsonl"): "not found",
        ("--queries", pairs, "--corpus", tmp_path / "c.txt"): "must be a .jsonl or .parquet",
    }
    for args, said in says.items():
        line = _refused(tmp_path, "bm25", *args, *out)
        assert said in line, line
    assert "CSV cell" in _refused(tmp_path, "bm25", "--queries", pairs, "-o", "out.csv")
    (tmp_path / "out.jsonl").write_text("kept\n")
    proc = _cli(tmp_path, "bm25", "--queries", pairs, *out)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    assert (tmp_path / "out.jsonl").read_text() == "kept\n"


@pytest.mark.ray
def test_a_real_mine_on_two_ray_workers_gives_what_one_process_gives(
        checkpoint: Path, tmp_path: Path) -> None:
    pairs = write_text_pairs(tmp_path / "pairs.jsonl", 120, seed=9)
    corpus = _corpus_file(pairs, tmp_path / "corpus.jsonl")
    common = ("--queries", pairs, "--corpus", corpus, "--num-negatives", "3",
              "--sampling", "random", "--shard-size", "32")
    ray = _cli(tmp_path, checkpoint.parent, *common, "--workers", "2", "-o", "ray.jsonl")
    assert ray.returncode == 0, ray.stdout[-2000:] + ray.stderr[-3000:]
    assert "encoded 9/9 shards" in ray.stdout  # 4 query shards + 5 of 130+ documents
    assert "mined " in ray.stdout and "removed as the query's positives" in ray.stdout
    local = _cli(tmp_path, checkpoint, *common, "--workers", "0", "-o", "local.jsonl")
    assert local.returncode == 0, local.stderr[-3000:]
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()
    _assert_no_positive(pairs, tmp_path / "ray.jsonl", 3)


def test_a_source_that_is_no_model_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found|no .*checkpoint|meta.json"):
        mine(str(tmp_path / "nothing"), write_text_pairs(tmp_path / "p.jsonl", 10), None,
             tmp_path / "out.jsonl", MiningRule(), say=_quiet)
    assert not (tmp_path / "out.jsonl").exists()
