"""Paired text files: each accepted layout, streaming shards, and one line for each bad input
(naming the file, the row and the fix)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dist_contrast.cli import main
from dist_contrast.data.errors import DataError
from dist_contrast.data.pairs import FeatureRow, PairBatch, PairsFile, open_pairs


def _jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _parquet(path: Path, columns: dict[str, Any], row_group_size: int | None = None) -> Path:
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def _all(pairs: PairsFile, batch_rows: int = 2, rank: int = 0, world_size: int = 1) -> PairBatch:
    """Every batch of a shard, joined into one."""
    joined = PairBatch(id=[] if pairs.layout.id else None,
                       label=[] if pairs.layout.label else None)
    for batch in pairs.batches(batch_rows, rank=rank, world_size=world_size):
        assert len(batch) <= batch_rows
        joined.query += batch.query
        joined.positive += batch.positive
        joined.negatives += batch.negatives
        joined.row += batch.row
        if batch.id is not None and joined.id is not None:
            joined.id += batch.id
        if batch.label is not None and joined.label is not None:
            joined.label += batch.label
    return joined


# --- accepted layouts -------------------------------------------------------------------------


def test_sentence_transformers_jsonl(tmp_path: Path) -> None:
    rows = [{"anchor": f"q{i}", "positive": f"p{i}", "negative_1": f"n{i}a",
             "negative_2": f"n{i}b", "negative": f"n{i}", "id": i, "label": 1.0}
            for i in range(5)]
    pairs = open_pairs(_jsonl(tmp_path / "st.jsonl", rows))
    assert pairs.format == "jsonl" and pairs.num_rows is None and pairs.count_rows() == 5
    assert pairs.layout.query.name == "anchor" and pairs.layout.negatives_per_row == 3
    got = _all(pairs)
    assert got.query == [f"q{i}" for i in range(5)]
    assert got.negatives[2] == ["n2", "n2a", "n2b"]  # negative, then negative_1, negative_2
    assert got.id == ["0", "1", "2", "3", "4"] and got.label == [1.0] * 5
    assert got.row == [0, 1, 2, 3, 4]


def test_tevatron_passages_jsonl(tmp_path: Path) -> None:
    rows = [{"query_id": "a", "query": "what is x",
             "positive_passages": [{"docid": "7", "title": "X", "text": "x is y"},
                                   {"text": "second positive, ignored"}],
             "negative_passages": [{"title": "", "text": "z"}, {"text": "w", "title": "W"}]}]
    got = _all(open_pairs(_jsonl(tmp_path / "tev.jsonl", rows)))
    assert got.query == ["what is x"] and got.positive == ["X x is y"]
    assert got.negatives == [["z", "W w"]] and got.id == ["a"] and got.label is None


def test_dpr_positive_and_negatives_list_jsonl_with_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "dpr.jsonl"
    path.write_text('{"query": "q1", "positive": "p1", "negatives": ["a", "b"]}\n\n'
                    '{"query": "q2", "positive": "p2", "negatives": []}\n', encoding="utf-8")
    pairs = open_pairs(path)
    assert pairs.layout.negatives_per_row is None
    got = _all(pairs)
    assert got.negatives == [["a", "b"], []] and got.row == [0, 1]


def test_csv_with_quoted_newlines_and_a_bom(tmp_path: Path) -> None:
    path = _csv(tmp_path / "p.csv", ["query", "positive", "negative"],
                [["q, one", "def f():\n    return 1", "n1"], ["q2", "p2", "n2"]])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    got = _all(open_pairs(path))
    assert got.query == ["q, one", "q2"] and got.positive[0] == "def f():\n    return 1"
    assert got.negatives == [["n1"], ["n2"]]


def test_csv_keeps_long_fields(tmp_path: Path) -> None:
    long = "x" * 300_000  # beyond csv's default field limit
    got = _all(open_pairs(_csv(tmp_path / "p.csv", ["anchor", "positive"], [["q", long]])))
    assert got.positive == [long]


def test_parquet_lists_and_structs(tmp_path: Path) -> None:
    path = _parquet(tmp_path / "p.parquet", {
        "query": ["q1", "q2"],
        "positive_passages": [[{"title": "T", "text": "p1"}], [{"title": None, "text": "p2"}]],
        "negatives": [["n1"], ["n2", "n3"]],
        "label": [0, 1],
    })
    pairs = open_pairs(path)
    assert pairs.num_rows == 2
    got = _all(pairs)
    assert got.positive == ["T p1", "p2"] and got.negatives == [["n1"], ["n2", "n3"]]
    assert got.label == [0, 1]


def test_other_column_names_can_be_given(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}])
    got = _all(open_pairs(path, query_column="question", positive_column="answer"))
    assert got.query == ["q"] and got.positive == ["a"]


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_shards_cover_every_row_once(tmp_path: Path, kind: str, world_size: int) -> None:
    n = 11
    queries, positives = [f"q{i}" for i in range(n)], [f"p{i}" for i in range(n)]
    if kind == "jsonl":
        path = _jsonl(tmp_path / "p.jsonl", [{"query": q, "positive": p}
                                             for q, p in zip(queries, positives, strict=True)])
    elif kind == "csv":
        path = _csv(tmp_path / "p.csv", ["query", "positive"],
                    [[q, p] for q, p in zip(queries, positives, strict=True)])
    else:
        path = _parquet(tmp_path / "p.parquet", {"query": queries, "positive": positives},
                        row_group_size=3)
    pairs = open_pairs(path)
    shards = [_all(pairs, batch_rows=2, rank=r, world_size=world_size)
              for r in range(world_size)]
    rows = sorted(row for shard in shards for row in shard.row)
    assert rows == list(range(n))
    assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1
    for shard in shards:
        assert shard.query == [queries[i] for i in shard.row]
        assert shard.positive == [positives[i] for i in shard.row]


def test_a_parquet_shard_reads_only_its_row_groups(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = _parquet(tmp_path / "p.parquet", {"query": [f"q{i}" for i in range(12)],
                                             "positive": [f"p{i}" for i in range(12)]},
                    row_group_size=3)
    read: list[int] = []
    original = pq.ParquetFile.iter_batches

    def spy(self: pq.ParquetFile, *args: Any, **kwargs: Any) -> Any:
        read.extend(kwargs["row_groups"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    assert _all(open_pairs(path), rank=1, world_size=2).row == [6, 7, 8, 9, 10, 11]
    assert read == [2, 3]


# --- bad input: one line naming the file, the row and the fix -----------------------------------


def _refused(path: Path, *fragments: str) -> str:
    with pytest.raises(DataError) as caught:
        open_pairs(path).validate()
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and "; " in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_query_column_lists_found_and_accepted(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "p.jsonl", [{"question": "q", "positive": "p"}])
    _refused(path, "no query column", "'question', 'positive'", "'query' or 'anchor'")


def test_missing_positive_column(tmp_path: Path) -> None:
    path = _csv(tmp_path / "p.csv", ["query", "document"], [["q", "d"]])
    _refused(path, "no positive column", "'document'", "'positive' or 'positive_passages'")


def test_ambiguous_query_column(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "p.jsonl", [{"query": "q", "anchor": "a", "positive": "p"}])
    _refused(path, "both 'query' and 'anchor'", "keep one")


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_empty_text(tmp_path: Path, kind: str) -> None:
    queries, positives = ["q1", "q2", "q3"], ["p1", "  ", "p3"]
    if kind == "jsonl":
        path = _jsonl(tmp_path / "p.jsonl", [{"query": q, "positive": p}
                                             for q, p in zip(queries, positives, strict=True)])
        where = "line 2"
    elif kind == "csv":
        path = _csv(tmp_path / "p.csv", ["query", "positive"],
                    [[q, p] for q, p in zip(queries, positives, strict=True)])
        where = "line 3"  # the header is line 1
    else:
        path = _parquet(tmp_path / "p.parquet", {"query": queries, "positive": positives})
        where = "row 2"
    _refused(path, f"{where}: 'positive' is an empty text", "give every text some content")


def test_null_text_in_parquet(tmp_path: Path) -> None:
    path = _parquet(tmp_path / "p.parquet", {"query": ["q1", None], "positive": ["p1", "p2"]})
    _refused(path, "row 2: 'query' is null", "give every text")


def test_mixed_types_in_a_text_column(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "p.jsonl", [{"query": "q1", "positive": "p1"},
                                         {"query": 42, "positive": "p2"}])
    _refused(path, "line 2: 'query' is a number, not text (mixed types", "as a string")


def test_mixed_types_in_a_label_column(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "p.jsonl", [{"query": "q1", "positive": "p1", "label": 1},
                                         {"query": "q2", "positive": "p2", "label": "one"}])
    _refused(path, "line 2: mixed types in 'label' (string here, number", "the same type")


def test_a_non_text_parquet_column(tmp_path: Path) -> None:
    path = _parquet(tmp_path / "p.parquet", {"query": [1, 2], "positive": ["p1", "p2"]})
    _refused(path, "column 'query' has type int64, not texts", "store 'query' as texts")


def test_a_parquet_list_of_numbers(tmp_path: Path) -> None:
    path = _parquet(tmp_path / "p.parquet", {"query": ["q"], "positive": ["p"],
                                             "negatives": [[1, 2]]})
    _refused(path, "column 'negatives' has type list<", "int64>, not lists of texts")


def test_a_negative_equal_to_its_positive(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "p.jsonl", [
        {"query": "q1", "positive": "p1", "negatives": ["n1"]},
        {"query": "q2", "positive": "p2", "negatives": ["n2", "p2 "]}])
    _refused(path, "line 2: a negative equals the row's own positive", "remove it")


def test_a_passage_without_text(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "p.jsonl", [{"query": "q", "positive_passages": [{"title": "t"}]}])
    _refused(path, "line 1: an entry of 'positive_passages' has no 'text'", '{"text"')


def test_a_row_without_a_column(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "p.jsonl", [{"query": "q1", "positive": "p1"}, {"query": "q2"}])
    _refused(path, "line 2 has no 'positive'", "give every row")


def test_invalid_json_on_a_line(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"query": "q1", "positive": "p1"}\n{"query": "q2", "positive": }\n')
    _refused(path, "line 2 is not valid JSON", "one JSON object per line")


def test_a_json_array_file(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text('[{"query": "q1", "positive": "p1"}]\n')
    _refused(path, "line 1 is a list, not a JSON object (a JSON array file?")


def test_wrong_encoding(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_bytes("query,positive\nq1,p1\ncafé,p2\n".encode("latin-1"))
    _refused(path, "line 3 is not UTF-8 (byte 0xe9 at column 4)", "iconv")


def test_utf16(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_bytes('{"query": "q", "positive": "p"}\n'.encode("utf-16"))
    _refused(path, "UTF-16 encoded, not UTF-8", "iconv -f utf-16")


def test_unreadable_files(tmp_path: Path) -> None:
    _refused(tmp_path / "absent.jsonl", "file not found")
    (tmp_path / "folder.jsonl").mkdir()
    _refused(tmp_path / "folder.jsonl", "is a folder")
    (tmp_path / "empty.csv").write_bytes(b"")
    _refused(tmp_path / "empty.csv", "empty (0 bytes)")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    _refused(tmp_path / "bad.parquet", "not a readable parquet file")
    _csv(tmp_path / "header.csv", ["query", "positive"], [])
    _refused(tmp_path / "header.csv", "holds no rows")
    (tmp_path / "p.txt").write_text("x")
    _refused(tmp_path / "p.txt", "unsupported extension '.txt'", ".jsonl")


def test_a_file_without_read_permission(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import dist_contrast.data.pairs as pairs_module

    path = _jsonl(tmp_path / "p.jsonl", [{"query": "q", "positive": "p"}])

    def denied(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    # chmod 0 does not stop root (the test may run as root): the refusal itself is simulated
    monkeypatch.setattr(pairs_module, "open", denied, raising=False)
    _refused(path, "cannot be read (Permission denied)", "permissions")


def test_a_csv_row_with_extra_fields(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("query,positive\nq1,p1\nq2,p2,extra\n")
    _refused(path, "line 3 has 3 fields and the header 2", "quote fields")


def test_lists_in_csv_are_refused(tmp_path: Path) -> None:
    path = _csv(tmp_path / "p.csv", ["query", "positive", "negatives"], [["q", "p", "n"]])
    _refused(path, "'negatives' holds lists", "negative_1")


def test_cli_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _jsonl(tmp_path / "good.jsonl", [{"anchor": "q", "positive": "p", "negative": "n"}])
    assert main(["data", "check", str(good)]) == 0
    assert "1 rows of jsonl; query 'anchor', positive 'positive', negatives: negative" in \
        capsys.readouterr().out
    bad = _jsonl(tmp_path / "bad.jsonl", [{"anchor": "q", "positive": ""}])
    assert main(["data", "check", str(bad)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("dist-contrast: error:") and "\n" not in error
    assert str(bad) in error and "line 1" in error


# --- numeric feature rows on one side ----------------------------------------------------------


def test_feature_rows_in_jsonl_and_parquet(tmp_path: Path) -> None:
    rows = [{"anchor": "a red cat", "positive": [0.5, 1, -2], "negatives": [[1, 2, 3]]},
            {"anchor": "a dog", "positive": [0.25, 0, 4], "negatives": [[0, 0, 1], [1, 1, 1]]}]
    parquet = _parquet(tmp_path / "p.parquet", {
        "anchor": [r["anchor"] for r in rows],
        "positive": pa.array([r["positive"] for r in rows], pa.list_(pa.float32())),
        "negatives": [r["negatives"] for r in rows]})
    for path in (_jsonl(tmp_path / "p.jsonl", rows), parquet):
        pairs = open_pairs(path)
        assert pairs.validate() == 2 and pairs.feature_widths() == {"document": 3}
        batch = _all(pairs)
        assert batch.query == ["a red cat", "a dog"]
        assert all(isinstance(item, FeatureRow) for item in batch.positive)
        assert batch.positive[0].vector.tolist() == [0.5, 1.0, -2.0]
        assert [[n.vector.tolist() for n in row] for row in batch.negatives] == [
            [[1, 2, 3]], [[0, 0, 1], [1, 1, 1]]]


def test_cli_check_names_a_side_of_feature_rows(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = _jsonl(tmp_path / "p.jsonl", [{"anchor": "a cat", "positive": [1, 2, 3]}])
    assert main(["data", "check", str(path)]) == 0
    assert ("the document side holds feature rows of 3 numbers (set "
            "model.document_features=3)") in capsys.readouterr().out


def test_feature_rows_on_the_query_side(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "p.jsonl", [{"query": [1, 2], "positive": "a text"}])
    assert open_pairs(path).feature_widths() == {"query": 2}


def test_a_side_of_text_then_a_feature_row(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "p.jsonl", [{"query": "q1", "positive": [1.0, 2.0]},
                                         {"query": "q2", "positive": "p2"}])
    _refused(path, "line 2: 'positive' is text and the rows before hold a feature row of 2 "
             "numbers on the document side", "the same kind")


def test_feature_rows_of_another_width(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "p.jsonl", [{"query": "q1", "positive": [1.0, 2.0],
                                          "negative": [2.0, 2.0]},
                                         {"query": "q2", "positive": [1.0, 2.0],
                                          "negative": [1.0, 2.0, 3.0]}])
    _refused(path, "line 2: 'negative' is a feature row of 3 numbers and the rows before hold "
             "a feature row of 2 numbers", "feature rows of one width")


def test_a_non_finite_feature_row(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"query": "q1", "positive": [1.0, NaN]}\n')
    _refused(path, "line 1: 'positive' holds NaN, infinity or a number beyond float32",
             "finite numbers")
    _refused(_jsonl(tmp_path / "big.jsonl", [{"query": "q", "positive": [1e39]}]),
             "beyond float32", "finite numbers")


def test_a_feature_row_negative_equal_to_its_positive(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "p.jsonl", [{"query": "q", "positive": [1, 2], "negative": [1.0, 2]}])
    _refused(path, "line 1: a negative equals the row's own positive", "a different row")
