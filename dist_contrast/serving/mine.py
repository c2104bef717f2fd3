"""``dist-contrast mine``: hard negatives for a pairs file, mined from a corpus by BM25 or a
trained text encoder, with the false-negative filter of :mod:`dist_contrast.retrieval.mining`.

The work, in the order it is done:

1. the queries file is read (rows of query and positive; their own negatives are dropped) and
   the corpus: a file of ``id`` and ``text`` (.jsonl or .parquet), or a pairs file, whose
   distinct positives are then the corpus. A query's positives (every row with its text) are
   found in the corpus by id and by text; positives the corpus lacks are scored beside it;
2. with a model, the distinct queries (query tower) and documents (document tower) are
   encoded in shards of ``shard_size`` texts, each shard one Ray task (``workers`` at a time,
   the model's weights sent once through Ray's object store), each finished shard saved;
3. the rows are mined ``shard_size`` at a time (FAISS exact inner-product search, or BM25),
   each finished block saved;
4. OUTPUT is written whole (a hidden partial file renamed into place) and the saved work
   removed.

The saved work lives beside OUTPUT in ``.OUTPUT.mine/``, under a fingerprint of the source,
both files' bytes and the settings: an interrupted ``mine`` run again with the same command
does only what is left, and gives the file an uninterrupted run gives. Docs: docs/mining.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dist_contrast.data import DataError
from dist_contrast.data.corpus import CORPUS_SUFFIXES, corpus_columns, read_corpus_file
from dist_contrast.data.pairs import FeatureRow, open_pairs
from dist_contrast.errors import UserError
from dist_contrast.retrieval.mining import MiningCounts, MiningRule, candidates_needed
from dist_contrast.retrieval.scoring import (
    BM25Scorer,
    Corpus,
    DenseScorer,
    MiningQueries,
    Scorer,
    mine_block,
    positives_of,
)
from dist_contrast.serving.embed import _create_partial, _progress_bar, check_output

BM25 = "bm25"
OUTPUT_SUFFIXES = (".jsonl", ".parquet")
DEFAULT_SHARD_SIZE = 4096
_FORMAT = 1  # of the saved work; a change starts the work over


@dataclass(frozen=True)
class QueryRows:
    """The queries file's rows. ``query_of[i]``: row i's position in ``queries`` (distinct
    query texts); ``dropped``: the file's own negative columns, which OUTPUT does not keep."""

    queries: list[str]
    query_of: list[int]
    positive: list[str]
    ids: list[str] | None
    labels: list[Any] | None
    dropped: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.positive)

    @property
    def mining(self) -> MiningQueries:
        return MiningQueries(self.queries, self.query_of, self.positive)


@dataclass(frozen=True)
class MineSummary:
    rows: int
    documents: int
    counts: MiningCounts
    seconds: float
    resumed: int  # saved pieces of work found and reused


# ----------------------------------------------------------------------------- reading


def read_queries(path: str | Path) -> QueryRows:
    """The rows of a pairs file (any format the retrieval data reads); ``UserError`` (one
    line) for a bad one, or for a side of numeric feature rows."""
    try:
        pairs = open_pairs(path)
        queries: dict[str, int] = {}
        query_of: list[int] = []
        positive: list[str] = []
        ids: list[str] | None = [] if pairs.layout.id else None
        labels: list[Any] | None = [] if pairs.layout.label else None
        for batch in pairs.batches(4096):
            for item in (*batch.query[:1], *batch.positive[:1]):
                if isinstance(item, FeatureRow):
                    raise UserError(f"--queries '{path}' holds numeric feature rows; mine works "
                                    "on texts (both sides)")
            for query in batch.query:
                query_of.append(queries.setdefault(str(query), len(queries)))
            positive.extend(str(text) for text in batch.positive)
            if ids is not None and batch.id is not None:
                ids.extend(batch.id)
            if labels is not None and batch.label is not None:
                labels.extend(batch.label)
    except DataError as exc:
        raise UserError(f"--queries: {exc}") from None
    if not positive:
        raise UserError(f"--queries '{path}' holds no rows; give a pairs file with query and "
                        "positive")
    dropped = tuple(column.name for column in pairs.layout.negatives)
    return QueryRows(list(queries), query_of, positive, ids, labels, dropped)


def read_corpus(path: str | Path, rows: QueryRows, queries_path: str | Path) -> tuple[
        Corpus, list[str] | None]:
    """The corpus (the positives appended where it lacks them) and its ids (None for a pairs
    file's positives, whose ids are their positions)."""
    source = Path(path)
    if source.suffix.lower() not in CORPUS_SUFFIXES and not _is_same(source, queries_path):
        raise UserError(f"--corpus '{source}' must be a .jsonl or .parquet file of id and text "
                        "(or the pairs file, whose positives are then the corpus)")
    if not source.is_file():
        raise UserError(f"--corpus '{source}' not found (or not a file); check the path")
    columns = _columns(source)
    if _is_same(source, queries_path) or ("text" not in columns and
                                          ("query" in columns or "anchor" in columns)):
        documents, ids = list(dict.fromkeys(read_queries(source).positive)), None
    else:
        if "text" not in columns:
            raise UserError(f"--corpus '{source}' has no 'text' column (it has "
                            f"{sorted(columns)[:8]}); give one text per document")
        if "id" not in columns:
            raise UserError(f"--corpus '{source}' has no 'id' column; give every document an id "
                            "(or pass the pairs file as --corpus to mine among its positives)")
        documents, ids = _corpus_rows(source)
    return Corpus.with_positives(documents, rows.positive, from_pairs=ids is None), ids


def _is_same(path: Path, other: str | Path) -> bool:
    return path.exists() and Path(other).exists() and path.resolve() == Path(other).resolve()


def _columns(path: Path) -> set[str]:
    if path.suffix.lower() == ".csv":
        return set(open_pairs(path).columns)
    try:
        return corpus_columns(path)
    except DataError as exc:
        raise UserError(f"--corpus: {exc}") from None


def _corpus_rows(path: Path) -> tuple[list[str], list[str]]:
    """The texts and ids of a corpus file; every id present and distinct, every text a text."""
    try:
        return read_corpus_file(path)
    except DataError as exc:
        raise UserError(f"--corpus: {exc}") from None


# ----------------------------------------------------------------------------- saved work


class WorkFolder:
    """The saved pieces of one ``mine`` (``name.npy`` arrays, ``name.json`` values), each
    written whole or not at all, under the fingerprint of what they were computed from."""

    def __init__(self, output: Path, fingerprint: str) -> None:
        self.path = output.with_name(f".{output.name}.mine")
        stamp = self.path / "fingerprint"
        if self.path.is_dir() and (not stamp.is_file() or stamp.read_text() != fingerprint):
            shutil.rmtree(self.path)  # another command's work: of no use to this one
        self.path.mkdir(exist_ok=True)
        if not stamp.is_file():
            _write_whole(stamp, fingerprint.encode())
        self.reused = 0

    def array(self, name: str) -> np.ndarray | None:
        return self._count(np.load(self.path / f"{name}.npy")
                           if (self.path / f"{name}.npy").is_file() else None)

    def value(self, name: str) -> Any:
        file = self.path / f"{name}.json"
        return self._count(json.loads(file.read_text()) if file.is_file() else None)

    def save_array(self, name: str, array: np.ndarray) -> None:
        import io

        buffer = io.BytesIO()
        np.save(buffer, array)
        _write_whole(self.path / f"{name}.npy", buffer.getvalue())

    def save_value(self, name: str, value: Any) -> None:
        _write_whole(self.path / f"{name}.json", json.dumps(value).encode())

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def _count(self, found: Any) -> Any:
        self.reused += found is not None
        return found


def _write_whole(target: Path, data: bytes) -> None:
    partial = _create_partial(target)
    try:
        partial.write_bytes(data)
        os.replace(partial, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)


def _model_digest(model: tuple[dict[str, Any], dict[str, Any]]) -> str:
    """A digest of a text encoder's config and every value of its state."""
    import torch

    digest = hashlib.sha256(_digest(model[0]).encode())
    for name in sorted(model[1]):
        value = model[1][name]
        digest.update(name.encode() + b"\0")
        digest.update(value.cpu().numpy().tobytes() if isinstance(value, torch.Tensor)
                      else repr(value).encode())
    return digest.hexdigest()


def _digest(*parts: Any) -> str:
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            with part.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\0")
    return digest.hexdigest()


# ----------------------------------------------------------------------------- encoding


def _shards(count: int, size: int) -> list[range]:
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


class Pool(Protocol):
    """Runs ``function(shared, *job)`` for each job, handing each result back as it finishes
    (:class:`InProcess` here; ``driver.tasks.RayPool`` on Ray's workers)."""

    def map(self, function: Callable[..., Any], shared: Any, jobs: Sequence[tuple[Any, ...]],
            on_result: Callable[[int, Any], None], *, names: Sequence[str] | None = None
            ) -> None: ...


class InProcess:
    """Every job in this process, one after the other (``--workers 0``)."""

    def __enter__(self) -> InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def map(self, function: Callable[..., Any], shared: Any, jobs: Sequence[tuple[Any, ...]],
            on_result: Callable[[int, Any], None], *, names: Sequence[str] | None = None
            ) -> None:
        for number, job in enumerate(jobs):
            on_result(number, function(shared, *job))


#: Opens a pool when encoding starts (after every input has been checked).
PoolFactory = Callable[[], contextlib.AbstractContextManager[Pool]]


def encode_all(jobs: list[tuple[str, str, list[str]]], model: tuple[dict[str, Any],
               dict[str, Any]], work: WorkFolder, pool: PoolFactory, *, batch_size: int,
               say: Callable[[str], None],
               after_piece: Callable[[str], None] | None = None) -> dict[str, np.ndarray]:
    """Each job's (name, side, texts) embeddings: saved ones reused, the rest encoded by the
    pool's tasks and saved as each finishes."""
    done = {name: array for name, _, _ in jobs if (array := work.array(name)) is not None}
    todo = [job for job in jobs if job[0] not in done]
    total = sum(len(texts) for _, _, texts in jobs)
    finished = sum(len(texts) for name, _, texts in jobs if name in done)
    if done:
        say(f"resuming: {len(done)} of {len(jobs)} shards were encoded before")
    if not todo:
        return done
    start = time.perf_counter()

    def record(number: int, array: np.ndarray) -> None:
        nonlocal finished
        name, _, texts = todo[number]
        work.save_array(name, array)
        done[name] = array
        finished += len(texts)
        say(f"encoded {len(done)}/{len(jobs)} shards ({finished:,}/{total:,} texts, "
            f"{time.perf_counter() - start:.0f} s)")
        if after_piece is not None:
            after_piece(name)

    from dist_contrast.train.text_model import encode_shard

    key = _model_digest(model)  # the tasks' processes rebuild the encoder once for it
    with pool() as running:
        running.map(encode_shard, model, [(side, texts, batch_size, key)
                                          for _, side, texts in todo],
                    record, names=[f"encoding shard {name}" for name, _, _ in todo])
    return done


# ----------------------------------------------------------------------------- the command


def mine(
    source: str, queries_path: str | Path, corpus_path: str | Path | None,
    output_path: str | Path, rule: MiningRule, *, pool: PoolFactory = InProcess,
    shard_size: int = DEFAULT_SHARD_SIZE, batch_size: int = 256, overwrite: bool = False,
    tracking_uri: str | None = None, say: Callable[[str], None] = print,
    after_piece: Callable[[str], None] | None = None,
) -> MineSummary:
    """Mine ``rule.num_negatives`` negatives for every row of ``queries_path`` into
    ``output_path`` (see the module docstring). ``source``: ``bm25``, a text run's checkpoint
    or run folder, or its MLflow model. ``after_piece`` is called with each saved piece's name
    (a test interrupts there)."""
    start = time.perf_counter()
    try:
        rule.check()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if shard_size < 1 or batch_size < 1:
        raise UserError("--shard-size and --batch-size must be at least 1")
    output = Path(output_path)
    corpus_file = Path(corpus_path if corpus_path is not None else queries_path)
    _check_output(output, [Path(queries_path), corpus_file], overwrite)
    if not Path(queries_path).is_file():
        raise UserError(f"--queries '{queries_path}' not found (or not a file); check the path")
    rows = read_queries(queries_path)
    corpus, corpus_ids = read_corpus(corpus_file, rows, queries_path)
    positive_ids, positive_keys = positives_of(rows.mining, corpus)
    model = None if source.lower() == BM25 else _load_model(source, tracking_uri)
    if rows.dropped:
        say(f"the file's own negatives ({', '.join(rows.dropped)}) are not kept: OUTPUT holds "
            "the mined ones")
    say(f"{len(rows):,} rows ({len(rows.queries):,} distinct queries) against "
        f"{corpus.size:,} documents" + (" (the pairs file's positives)" if corpus.from_pairs
                                        else f" of {corpus_file}"))
    fingerprint = _digest(_FORMAT, source if model is None else _model_digest(model),
                          Path(queries_path), corpus_file, rule.__dict__, shard_size, batch_size)
    work = WorkFolder(output, fingerprint)
    scorer: Scorer
    if model is None:
        scorer = BM25Scorer(rows.mining, corpus)
    else:
        scorer = _dense_scorer(model, rows, corpus, work, pool=pool,
                               shard_size=shard_size, batch_size=batch_size, say=say,
                               after_piece=after_piece)
    most = max(len(i) + len(k) for i, k in zip(positive_ids, positive_keys, strict=True))
    k = min(corpus.size, candidates_needed(rule, most, corpus.repeated))
    negatives: list[list[int]] = []
    counts = MiningCounts()
    blocks = _shards(len(rows), shard_size)
    with _progress_bar(len(rows), None, label="mining") as advance:
        for number, block in enumerate(blocks):
            name = f"mined-{number:05d}"
            saved = work.value(name)
            if saved is None:
                mined = mine_block(scorer, block, k, rule, positive_ids=positive_ids,
                                   positive_keys=positive_keys, keys=corpus.keys)
                saved = {"negatives": mined.negatives, "counts": mined.counts.as_dict()}
                work.save_value(name, saved)
                if after_piece is not None:
                    after_piece(name)
            negatives.extend(saved["negatives"])
            counts.add(MiningCounts(**saved["counts"]))
            advance(len(block))
            say(f"mined {block.stop:,}/{len(rows):,} rows ({time.perf_counter() - start:.0f} s)")
    write_output(output, rows, [[corpus.texts[d] for d in row] for row in negatives])
    work.remove()
    return MineSummary(len(rows), corpus.size, counts, time.perf_counter() - start,
                       work.reused)


def _check_output(output: Path, inputs: list[Path], overwrite: bool) -> None:
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UserError(f"-o '{output}' must be a .jsonl or .parquet file (a CSV cell cannot "
                        "hold the negatives' list)")
    if any(output.exists() and path.exists() and output.resolve() == path.resolve()
           for path in inputs):
        raise UserError(f"-o '{output}' is an input; write the mined pairs to another file")
    check_output(output, "-o", "a .jsonl or .parquet", overwrite=overwrite)


def _load_model(source: str, tracking_uri: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A text encoder's config (as a dict) and state, from a checkpoint or run folder or an
    MLflow model."""
    from dist_contrast.serving.search import checkpoint_of
    from dist_contrast.serving.text import load_text_encoder

    path = Path(source)
    if path.exists():
        source = str(path.resolve())
    try:
        encoder, config = load_text_encoder(checkpoint_of(source), tracking_uri)
    except UserError as exc:
        if "rows of numbers" not in str(exc):
            raise
        raise UserError(f"'{source}' is an encoder of rows of numbers, which cannot score "
                        "texts; mine with a text run's checkpoint or model, or with bm25"
                        ) from None
    for side in ("query", "document"):
        if not encoder.takes_text(side):  # type: ignore[arg-type]
            raise UserError(f"'{source}' encodes numeric feature rows on its {side} side; mine "
                            "needs a text encoder on both sides (or use bm25)")
    return config.model_dump(mode="json"), encoder.state_dict()


def _dense_scorer(model: tuple[dict[str, Any], dict[str, Any]], rows: QueryRows,
                  corpus: Corpus, work: WorkFolder, *,
                  pool: PoolFactory, shard_size: int, batch_size: int,
                  say: Callable[[str], None],
                  after_piece: Callable[[str], None] | None) -> DenseScorer:
    jobs = [(f"query-{i:05d}", "query", [rows.queries[j] for j in shard])
            for i, shard in enumerate(_shards(len(rows.queries), shard_size))]
    jobs += [(f"document-{i:05d}", "document", [corpus.texts[j] for j in shard])
             for i, shard in enumerate(_shards(len(corpus.texts), shard_size))]

    arrays = encode_all(jobs, model, work, pool, batch_size=batch_size, say=say,
                        after_piece=after_piece)
    queries = np.concatenate([arrays[name] for name, side, _ in jobs if side == "query"])
    documents = np.concatenate([arrays[name] for name, side, _ in jobs if side == "document"])
    return DenseScorer(rows.mining, corpus, queries.astype(np.float32),
                       documents.astype(np.float32))


def write_output(output: Path, rows: QueryRows, negatives: list[list[str]]) -> None:
    """The rows with their mined negatives as OUTPUT, whole or not at all."""
    records: dict[str, list[Any]] = {"query": [rows.queries[q] for q in rows.query_of],
                                     "positive": rows.positive, "negatives": negatives}
    if rows.ids is not None:
        records["id"] = rows.ids
    if rows.labels is not None:
        records["label"] = rows.labels
    if output.suffix.lower() == ".parquet":
        import io

        import pyarrow as pa
        import pyarrow.parquet as pq

        buffer = io.BytesIO()
        pq.write_table(pa.table(records), buffer)
        _write_whole(output, buffer.getvalue())
        return
    names = list(records)
    lines = (json.dumps(dict(zip(names, values, strict=True)), ensure_ascii=False)
             for values in zip(*records.values(), strict=True))
    _write_whole(output, ("\n".join(lines) + "\n").encode())
