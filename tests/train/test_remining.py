"""Re-mining hard negatives from a corpus during training (``negatives.corpus``, ANCE).

The re-miner alone on one process: what a refresh keeps (never a positive, by id or by text,
best first, within the window), the swap (a step before it sees the old table, the step at it
waits for the whole new one), and its checkpoint state. Then the real worker loop on two gloo
processes: the schedule logged step by step, and a resume from a checkpoint taken while a
refresh was under way logging the uninterrupted run's losses. The Ray-task encoding is
tests/test_end_to_end.py's.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dist_contrast.config import Config, load_config
from dist_contrast.errors import UserError
from dist_contrast.models import build_model
from dist_contrast.models.build import fit_featurizer
from dist_contrast.retrieval.mining import text_key
from dist_contrast.train.remining import CorpusMiner, Refresh
from tests.conftest import Cli, metric_history, store_runs
from tests.data.helpers import write_text_pairs
from tests.inprocess import train_in_process

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "codesearch.yaml"
SMALL = ["model.hidden_dim=32", "model.embedding_dim=32", "model.vocab_size=512",
         "model.hash_buckets=4096"]
pytestmark = pytest.mark.xdist_group("remining")


def _rows(path: Path) -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [row["anchor"] for row in rows], [row["positive"] for row in rows]


def _config(*overrides: str) -> Config:
    return load_config(CONFIG, [*SMALL, "negatives.sources=[batch, corpus]", *overrides])


def _state(cfg: Config, texts: list[str]) -> dict[str, Any]:
    torch.manual_seed(0)
    encoder = build_model(cfg.model, (1,))
    fit_featurizer(encoder, cfg.model, texts)
    return encoder.state_dict()


@pytest.fixture(scope="session")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], list[str]]:
    """300 rows, and a corpus file of every positive plus each re-cased under another id (a
    near-duplicate only the text key catches) and 100 other documents."""
    folder = tmp_path_factory.mktemp("remining")
    queries, positives = _rows(write_text_pairs(folder / "train.jsonl", 300))
    _, others = _rows(write_text_pairs(folder / "other.jsonl", 100, seed=7))
    corpus = folder / "corpus.jsonl"
    documents = [*positives, *(text.upper() for text in positives), *others]
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": text}) + "\n"
                              for i, text in enumerate(documents)))
    return corpus, queries, positives


def _miner(pairs: tuple[Path, list[str], list[str]], *settings: str) -> tuple[CorpusMiner,
                                                                               Config]:
    corpus, queries, positives = pairs
    cfg = _config(f"negatives.corpus={{file: {corpus}, {', '.join(settings)}}}")
    return CorpusMiner(cfg.negatives.corpus, cfg, queries, positives, seed=0), cfg


def test_a_refresh_keeps_no_positive_by_id_or_text_best_first(
        pairs: tuple[Path, list[str], list[str]]) -> None:
    miner, cfg = _miner(pairs, "num_candidates: 6", "range_min: 2", "range_max: 30")
    state = _state(cfg, [*pairs[1], *pairs[2]])
    refresh = miner._refresh((cfg.model_dump(mode="json"), state),
                             miner_encoder(cfg, state), step=0)
    assert refresh.table.shape == (300, 6)
    encoder = miner_encoder(cfg, state)
    with torch.inference_mode():
        queries = encoder(pairs[1], side="query").numpy()
        documents = encoder(miner.corpus.texts, side="document").numpy()
    for row in range(300):
        own = text_key(pairs[2][row])
        chosen = [int(c) for c in refresh.table[row] if c >= 0]
        assert chosen and all(miner.corpus.keys[c] != own for c in chosen)
        scores = documents[chosen] @ queries[row]
        assert np.all(np.diff(scores) <= 1e-5)  # best first
        # The window skips the 2 best documents that are not the positive (nor its copy).
        ranked = np.argsort(-(documents[: miner.corpus.size] @ queries[row]), kind="stable")
        others = [int(d) for d in ranked if miner.corpus.keys[d] != own]
        assert scores[0] <= documents[others[1]] @ queries[row] + 1e-5
    assert 0 < refresh.stats["corpus/removed_as_positive"] <= 2.0  # the positive and its copy


def miner_encoder(cfg: Config, state: dict[str, Any]) -> Any:
    from dist_contrast.train.text_model import build_text_encoder

    return build_text_encoder(cfg, state)


class _Gated(CorpusMiner):
    """A re-miner whose refreshes wait for :attr:`gate` before they finish."""

    gate = threading.Event()

    def _refresh(self, snapshot: Any, encoder: Any, step: int) -> Refresh:
        refresh = super()._refresh(snapshot, encoder, step)
        assert self.gate.wait(60)
        return refresh


def test_a_refresh_swaps_in_whole_at_its_step_and_never_before(
        pairs: tuple[Path, list[str], list[str]]) -> None:
    corpus, queries, positives = pairs
    cfg = _config(f"negatives.corpus={{file: {corpus}, every_steps: 2, num_candidates: 4}}")
    miner = _Gated(cfg.negatives.corpus, cfg, queries, positives, seed=0)
    state = _state(cfg, [*queries, *positives])
    rows = torch.arange(300)
    for step in (0, 1):
        miner.before_step(step, lambda: state)
    assert miner.pending is None and miner.table.shape == (300, 0)
    before = miner.negatives(rows, 2)  # other rows' positives, as without the source
    assert all(text in set(positives) for text in before)
    miner.before_step(2, lambda: state)  # the refresh starts, gated
    assert miner.pending is not None and miner.swap_at == 4
    miner.before_step(3, lambda: state)
    assert miner.table.shape == (300, 0)  # still the old table
    finished = threading.Event()
    swapper = threading.Thread(target=lambda: (miner.before_step(4, lambda: state),
                                               finished.set()))
    swapper.start()
    time.sleep(1.0)
    assert not finished.is_set() and miner.table.shape == (300, 0)  # the swap waits for it
    _Gated.gate.set()
    swapper.join(60)
    assert finished.is_set()
    expected = CorpusMiner._refresh(miner, (cfg.model_dump(mode="json"), state),
                                    miner_encoder(cfg, state), 2)
    np.testing.assert_array_equal(miner.table, expected.table)  # the whole refresh
    assert miner.table_step == 2 and miner.metrics(4)["corpus/index_age"] == 2.0
    assert miner.pending is not None and miner.swap_at == 6  # the next one started at 4
    assert miner.pending.result().step == 4
    after = miner.negatives(rows, 4)
    mined = {miner.corpus.texts[int(c)] for row in miner.table for c in row if c >= 0}
    assert set(after) <= mined


def test_its_state_holds_the_table_and_the_refresh_under_way(
        pairs: tuple[Path, list[str], list[str]]) -> None:
    miner, cfg = _miner(pairs, "every_steps: 3", "swap_after: 2", "first: bm25",
                        "num_candidates: 4", "sampling: random")
    state = _state(cfg, [*pairs[1], *pairs[2]])
    miner.before_step(0, lambda: state)  # BM25's candidates, at once
    assert miner.table_step == 0 and (miner.table >= 0).all()
    miner.before_step(3, lambda: state)  # a refresh under way, to swap in at 5
    saved = miner.state_dict()
    other, _ = _miner(pairs, "every_steps: 3", "swap_after: 2", "first: bm25",
                      "num_candidates: 4", "sampling: random")
    other.load_state_dict(saved)
    rows = torch.arange(0, 300, 7)
    assert other.negatives(rows, 4) == miner.negatives(rows, 4)
    for resumed in (miner, other):
        resumed.before_step(4, lambda: state)
        resumed.before_step(5, lambda: state)
    np.testing.assert_array_equal(other.table, miner.table)
    assert other.table_step == miner.table_step == 3
    assert other.negatives(rows, 5) == miner.negatives(rows, 5)
    smaller, _ = _miner(pairs, "every_steps: 3")
    saved["rows"] = 299
    with pytest.raises(UserError, match="resume with the same data and corpus"):
        smaller.load_state_dict(saved)


@pytest.mark.parametrize(("override", "says"), [
    ("negatives.corpus={margin: -1}", "negatives.corpus.margin must be a finite number"),
    ("negatives.corpus={range_min: 10, range_max: 12}", "negatives.corpus.range_max"),
    ("negatives.corpus={every_steps: 4, swap_after: 5}", "before the next one starts"),
    ("negatives.corpus={per_query: 20}", "keep more candidates"),
    ("data.params={stream: true}", "drop data.params.stream"),
    ("data.params={hard_negatives: 2}", "drop data.params.hard_negatives"),
])
def test_settings_that_cannot_work_are_one_line(override: str, says: str) -> None:
    with pytest.raises(UserError, match=says):
        _config(override)
    with pytest.raises(UserError, match="use data.name=pairs with a text encoder"):
        load_config(ROOT / "configs" / "synthetic.yaml", ["negatives.sources=[batch, corpus]"])


def test_the_cpus_of_its_ray_tasks_are_counted_with_the_workers() -> None:
    cfg = _config("negatives.corpus={workers: 2, cpus_per_task: 0.5}")
    assert cfg.cpus_needed == cfg.trainer.num_workers * cfg.trainer.cpus_per_worker + 1.0


# ----------------------------------------------------------------------------- real runs

STEPS = 16
RUN = [*SMALL, "trainer.batch_size=64", f"trainer.max_steps={STEPS}", "trainer.log_every=1",
       "eval.every_steps=1000", "checkpoint.every_steps=10", "optimizer.warmup_steps=5",
       "optimizer.lr=0.01", "deepspeed.zero_stage=1", "negatives.sources=[batch, corpus]",
       # Refreshes start at 4, 8 and 12 and swap in 3 steps later: the checkpoint at 10 is
       # taken while the one started at 8 is under way.
       "negatives.corpus={every_steps: 4, swap_after: 3, first: model, num_candidates: 4, "
       "range_max: 20}"]


def _train(folder: Path, *overrides: str) -> tuple[Path, str]:
    folder.mkdir(parents=True)
    train = write_text_pairs(folder / "train.jsonl", 1200)
    test = write_text_pairs(folder / "test.jsonl", 200, seed=1)
    run = train_in_process(CONFIG, f"data.path={train}", f"data.eval_path={test}", *RUN,
                           *overrides, folder=folder)
    return folder / "mlflow.db", run.run_id


def test_a_run_re_mines_on_schedule_and_resumes_bitwise_mid_refresh(tmp_path: Path) -> None:
    store, run_id = _train(tmp_path / "whole", "experiment.run_name=ance")
    losses = metric_history(store, run_id)
    assert [step for step, _ in losses] == list(range(1, STEPS + 1))
    age = dict(metric_history(store, run_id, "corpus/index_age"))
    # The initial model's table until step 7, then the refreshes of steps 4, 8 and 12.
    assert [age[s] for s in range(1, STEPS + 1)] == [0, 1, 2, 3, 4, 5, 6, 3, 4, 5, 6, 3, 4, 5,
                                                     6, 3]
    similarity = dict(metric_history(store, run_id, "corpus/negative_similarity"))
    assert all(-1.0 <= value <= 1.0 for value in similarity.values())
    assert losses[-1][1] < losses[0][1]  # it learns
    source = tmp_path / "whole" / "results" / "ance" / "checkpoint_00000010"
    resumed = tmp_path / "resumed"
    store_again, again = _train(resumed, "experiment.run_name=again",
                                f"trainer.resume_from={source}")
    assert metric_history(store_again, again) == losses[10:]
    assert (dict(metric_history(store_again, again, "corpus/index_age"))
            == {s: age[s] for s in range(11, STEPS + 1)})
    (run,) = store_runs(store_again, "codesearch")
    assert run.info.status == "FINISHED"


def test_a_missing_or_bad_corpus_file_is_refused_in_one_line(tmp_path: Path, cli: Cli) -> None:
    train = write_text_pairs(tmp_path / "train.jsonl", 200)
    test = write_text_pairs(tmp_path / "test.jsonl", 50, seed=1)
    for corpus, says in ((tmp_path / "missing.jsonl", "not found"),
                         (tmp_path / "corpus.txt", "must be a .jsonl or .parquet")):
        proc = cli.run("train", CONFIG, f"data.path={train}", f"data.eval_path={test}", *SMALL,
                       "trainer.batch_size=32",
                       "negatives.sources=[batch, corpus]", f"negatives.corpus={{file: {corpus}}}",
                       cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr[-2000:]
        (line,) = proc.stderr.strip().splitlines()
        assert f"negatives.corpus.file={corpus}" in line and says in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test.jsonl", "train.jsonl"]
