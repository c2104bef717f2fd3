"""The ``pairs`` dataset: a file of (query, document) texts as batches of strings, the file's
hard negatives drawn by (seed, epoch, row) alone, the held-out rows as a retrieval task, and the
code-search builder's refusal of paths it would not write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dist_contrast.data import DataConfig, build_data, make_loader
from dist_contrast.data.errors import DataError
from dist_contrast.data.textpairs import (
    OwnShardPairDataset,
    PairDataset,
    PairRows,
    retrieval_split,
)
from tests.data.helpers import write_text_pairs


def _config(path: Path, **fields: object) -> DataConfig:
    return DataConfig(name="pairs", path=str(path), **fields)  # type: ignore[arg-type]


def test_held_out_rows_become_queries_against_their_documents(tmp_path: Path) -> None:
    path = write_text_pairs(tmp_path / "pairs.jsonl", 100, negatives=2)
    data = build_data(_config(path, num_test=20), seed=3)
    assert isinstance(data.train, PairDataset) and len(data.train) == 80
    split = data.retrieval
    assert split is not None and len(split.queries) == 20
    assert len(split.corpus) == 20 * 3  # each held-out positive and both its negatives
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    by_query = {row["anchor"]: row["positive"] for row in rows}
    for query, relevant in zip(split.queries, split.relevant, strict=True):
        assert [split.corpus[i] for i in relevant] == [by_query[query]]
    assert not set(split.queries) & set(data.train.rows.query)  # held out means held out
    again = build_data(_config(path, num_test=20), seed=3)
    assert again.retrieval == split  # the split is the seed's


def test_an_eval_file_is_the_retrieval_task(tmp_path: Path) -> None:
    train = write_text_pairs(tmp_path / "train.jsonl", 40)
    test = write_text_pairs(tmp_path / "test.jsonl", 10, seed=1)
    data = build_data(_config(train, eval_path=str(test)))
    assert len(data.train) == 40 and data.retrieval is not None
    assert len(data.retrieval.queries) == 10 and len(data.retrieval.corpus) == 10


def test_a_query_with_two_positives_has_both_relevant() -> None:
    rows = PairRows(["q", "q", "r"], ["a", "b", "c"], [[], ["c"], []], None)
    split = retrieval_split(rows, max_queries=None, seed=0)
    assert split.queries == ["q", "r"] and split.corpus == ["a", "b", "c"]
    assert split.relevant == [frozenset({0, 1}), frozenset({2})]


def _dataset(negatives: list[list[str]], hard_negatives: int) -> PairDataset:
    n = len(negatives)
    rows = PairRows([f"q{i}" for i in range(n)], [f"d{i}" for i in range(n)], negatives, None)
    return PairDataset(rows, seed=7, hard_negatives=hard_negatives)


def test_negatives_are_drawn_by_seed_epoch_and_row_and_filled_from_other_rows() -> None:
    dataset = _dataset([[f"n{i}.{j}" for j in range(5)] for i in range(6)], hard_negatives=2)
    draws = {epoch: [dataset.negatives(i, epoch) for i in range(6)] for epoch in range(3)}
    assert draws[0] == [dataset.negatives(i, 0) for i in range(6)]  # the same every time
    assert draws[0] != draws[1] != draws[2]  # a new draw each epoch
    assert all(len(set(d)) == 2 and all(t.startswith(f"n{i}.") for t in d)
               for i, d in enumerate(draws[0]))
    short = _dataset([["own"], [], [], []], hard_negatives=3)
    first = short.negatives(0, 0)
    assert first[0] == "own" and all(t in {"d1", "d2", "d3"} for t in first[1:])
    assert all(t != "d2" for t in short.negatives(2, 0))  # never the row's own document
    assert _dataset([["x"]] * 4, hard_negatives=0).negatives(0, 0) == []


def test_batches_are_lists_of_texts_with_the_negatives_flattened(tmp_path: Path) -> None:
    path = write_text_pairs(tmp_path / "pairs.jsonl", 40, negatives=3)
    config = _config(path, num_test=8, params={"hard_negatives": 2})
    dataset = build_data(config).train
    loader = make_loader(dataset, batch_size=4, rank=1, world_size=2, seed=0, epoch=0,
                         drop_last=True)
    batch = next(iter(loader))
    assert len(batch["view1"]) == len(batch["view2"]) == 4
    assert all(isinstance(t, str) for t in batch["view1"] + batch["view2"])
    assert len(batch["negatives"]) == 8 and batch["index"].shape == (4,)
    rows = dataset.rows
    for k, i in enumerate(batch["index"].tolist()):
        assert (batch["view1"][k], batch["view2"][k]) == (rows.query[i], rows.positive[i])
        assert set(batch["negatives"][2 * k : 2 * k + 2]) <= set(rows.negatives[i])
    assert len(dataset.texts()) == 32 * 5  # what the featurizer is fitted on


def test_without_negatives_in_the_file_none_are_drawn(tmp_path: Path) -> None:
    dataset = build_data(_config(write_text_pairs(tmp_path / "p.jsonl", 20), num_test=4)).train
    assert isinstance(dataset, PairDataset) and dataset.hard_negatives == 0


def test_bad_settings_are_one_line(tmp_path: Path) -> None:
    path = write_text_pairs(tmp_path / "p.jsonl", 20)
    with pytest.raises(ValueError, match="needs data.path"):
        DataConfig(name="pairs")
    with pytest.raises(ValueError, match="hard_negatives must be a whole number"):
        _config(path, params={"hard_negatives": -1})
    with pytest.raises(ValueError, match="the one builder is 'pysource'"):
        _config(path, params={"build": "wiki"})
    with pytest.raises(DataError, match="writes train.jsonl and test.jsonl"):
        build_data(_config(tmp_path / "mine.jsonl", params={"build": "pysource"}))
    tiny = write_text_pairs(tmp_path / "tiny.jsonl", 3)
    with pytest.raises(DataError, match="only 3 rows"):
        build_data(_config(tiny))


def _as_parquet(jsonl: Path, row_group_size: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    path = jsonl.with_suffix(".parquet")
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_a_streamed_file_gives_each_worker_only_its_shard(tmp_path: Path, suffix: str) -> None:
    """``stream: true`` on 3 workers: each holds its shard's training rows alone, every
    training row is held by exactly one, the ids are those of the training rows, the
    held-out rows (worker 0's retrieval task) are those the whole-file build holds out, and
    every worker fits its featurizer on the same texts, those of the whole-file build."""
    path = write_text_pairs(tmp_path / "pairs.jsonl", 101, negatives=2)
    if suffix == ".parquet":
        path = _as_parquet(path, row_group_size=16)
    whole = build_data(_config(path, num_test=20), seed=3)
    config = _config(path, num_test=20, params={"stream": True})
    shards = [build_data(config, seed=3, rank=r, world_size=3) for r in range(3)]
    assert isinstance(whole.train, PairDataset)
    held = [(whole.train.rows.query[i], whole.train.rows.positive[i]) for i in range(81)]
    seen: dict[int, tuple[str, str]] = {}
    for bundle in shards:
        train = bundle.train
        assert isinstance(train, OwnShardPairDataset) and len(train) == 81
        assert len(train.rows) <= 34  # a third of the file's 101 rows, less held-out ones
        assert train.own_shard == (len(train.rows), min(len(s.train.rows) for s in shards))
        for position, row_id in enumerate(train.ids):
            assert row_id not in seen
            seen[row_id] = (train.rows.query[position], train.rows.positive[position])
    assert [seen[i] for i in range(81)] == held  # ids in order are the training rows
    assert shards[0].retrieval == whole.retrieval
    assert shards[1].retrieval is None and shards[2].retrieval is None
    for bundle in shards:
        assert sorted(bundle.train.texts()) == sorted(whole.train.texts())


def test_a_streamed_shard_loads_equal_batches_of_its_own_rows(tmp_path: Path) -> None:
    path = write_text_pairs(tmp_path / "pairs.jsonl", 90, negatives=1)
    config = _config(path, num_test=10, params={"stream": True})
    counts, indices = [], []
    for rank in range(2):
        train = build_data(config, seed=0, rank=rank, world_size=2).train
        assert isinstance(train, OwnShardPairDataset)
        loader = make_loader(train, batch_size=8, rank=rank, world_size=2, seed=0, epoch=1)
        batches = list(loader)
        counts.append(len(batches))
        for batch in batches:
            for k, row_id in enumerate(batch["index"].tolist()):
                position = train.ids.index(row_id)
                assert batch["view1"][k] == train.rows.query[position]
            indices.extend(batch["index"].tolist())
        resumed = make_loader(train, batch_size=8, rank=rank, world_size=2, seed=0, epoch=1,
                              skip_batches=2)
        assert [b["index"].tolist() for b in resumed] == [
            b["index"].tolist() for b in batches[2:]]
    assert counts[0] == counts[1]  # the all-gather needs the same steps on every worker
    assert len(indices) == len(set(indices)) and set(indices) <= set(range(80))


def test_the_driver_checks_a_pairs_file_without_holding_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The driver's summary streams the file (its mistakes are still one line there) and
    never builds the rows."""
    from dist_contrast.config import load_config
    from dist_contrast.data import textpairs
    from dist_contrast.driver.plan import summarize_data
    from dist_contrast.errors import UserError

    def never(*_: object) -> None:
        raise AssertionError("the driver built the rows")

    monkeypatch.setattr(textpairs, "_read", never)
    path = write_text_pairs(tmp_path / "pairs.jsonl", 50)
    cfg = load_config("configs/codesearch.yaml", [f"data.path={path}", "data.eval_path=null",
                                                  "data.num_test=10", "data.params={}"])
    summary = summarize_data(cfg)
    assert summary.train_size == 40 and summary.num_classes is None
    with path.open("a") as out:
        out.write('{"anchor": "q", "positive": ""}\n')
    with pytest.raises(UserError, match="line 51"):
        summarize_data(cfg)


@pytest.mark.parametrize("stream", [False, True])
def test_feature_rows_on_the_document_side(tmp_path: Path, stream: bool) -> None:
    """Documents that are rows of numbers: batches carry them as ``FeatureRow`` s, the
    featurizer sees only the texts, the held-out corpus de-duplicates rows, and the eval file
    must hold the same kinds."""
    from dist_contrast.data.pairs import FeatureRow
    from tests.data.helpers import write_feature_pairs

    path = write_feature_pairs(tmp_path / "pairs.jsonl", 60, width=4, negatives=1)
    bundle = build_data(_config(path, num_test=10, params={"stream": stream}), seed=0,
                        rank=0, world_size=2 if stream else 1)
    batch = bundle.train.collate(bundle.train.__getitems__([0, 1, 2]))
    assert all(isinstance(item, str) for item in batch["view1"])
    assert all(isinstance(item, FeatureRow) and item.width == 4
               for item in (*batch["view2"], *batch["negatives"]))
    texts = list(bundle.train.texts())
    assert texts and all(isinstance(text, str) and text.startswith("w") for text in texts)
    assert bundle.retrieval is not None and not bundle.retrieval.is_text
    # The corpus: each held-out positive and file negative once (10 + 10 distinct rows).
    assert len(bundle.retrieval.queries) == 10 and len(bundle.retrieval.corpus) == 20
    assert bundle.retrieval.relevant == [frozenset({2 * i}) for i in range(10)]
    text_file = write_text_pairs(tmp_path / "text.jsonl", 20)
    with pytest.raises(DataError, match="its sides hold query: text, document: text, and "
                       "data.path's hold query: text, document: feature rows of 4 numbers"):
        from dist_contrast.data import validate_data

        validate_data(_config(path, eval_path=str(text_file)), seed=0)
