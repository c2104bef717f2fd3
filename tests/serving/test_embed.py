"""``dist-contrast embed``: files of raw rows, streamed in batches, embed exactly as the encoder
does in memory; every refusal is one line, exit status 2, and leaves no output behind."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dist_contrast.serving import load_encoder
from dist_contrast.serving.embed import embed_file, open_rows
from dist_contrast.tracking import ensure_experiment
from dist_contrast.train.state import DEEPSPEED_TAG, MODEL_STATES
from tests.conftest import Cli
from tests.serving.checkpoints import ROWS, WIDTH
from tests.serving.conftest import Checkpoints

# The session's trained checkpoints (or run) are made once per pytest-xdist process: one process
# for the module (make check runs --dist loadgroup).
pytestmark = pytest.mark.xdist_group("serving_checkpoints")

# Batches of a different size may sum in another order inside BLAS: equal to float32 rounding.
CLOSE = {"rtol": 0.0, "atol": 1e-6}


def _parquet(path: Path, rows: np.ndarray, *, ids: bool = True, group: int = 64) -> None:
    """One column per feature (``f0`` ...) and string ids, in row groups of ``group`` rows."""
    columns = {f"f{j}": rows[:, j] for j in range(rows.shape[1])}
    if ids:
        columns = {"id": [f"row-{i}" for i in range(len(rows))], **columns}
    pq.write_table(pa.table(columns), path, row_group_size=group)


def test_npy_in_several_batches_equals_the_encoder_in_memory(
    checkpoints: Checkpoints, tmp_path: Path
) -> None:
    loaded = load_encoder(checkpoints.path("fp32"))
    rows = checkpoints.features
    expected = loaded(rows).numpy()
    np.save(tmp_path / "in.npy", rows.astype(np.float64).reshape(ROWS, 3, 4))  # any layout
    assert open_rows(tmp_path / "in.npy", loaded).source.row_shape == (3, 4)  # header only
    assert embed_file(loaded, tmp_path / "in.npy", tmp_path / "out.npy", batch_size=17) == ROWS
    out = np.load(tmp_path / "out.npy")
    assert out.dtype == np.float32 and out.shape == (ROWS, 8)
    np.testing.assert_allclose(out, expected, **CLOSE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy", "out.npy"]


def test_parquet_with_ids_in_several_batches(checkpoints: Checkpoints, tmp_path: Path) -> None:
    loaded = load_encoder(checkpoints.path("fp32"))
    rows = checkpoints.features
    _parquet(tmp_path / "in.parquet", rows)
    embed_file(loaded, tmp_path / "in.parquet", tmp_path / "out.parquet", batch_size=50,
               ids_column="id")
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column_names == ["id", *[f"embedding_{i}" for i in range(8)]]
    assert table.column("id").to_pylist() == [f"row-{i}" for i in range(ROWS)]
    out = np.stack([table.column(f"embedding_{i}").to_numpy() for i in range(8)], axis=1)
    np.testing.assert_allclose(out, loaded(rows).numpy(), **CLOSE)
    # Parquet to .npy: the same rows in the same order (the id column is not a feature).
    embed_file(loaded, tmp_path / "in.parquet", tmp_path / "out.npy", batch_size=1000,
               ids_column="id")
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), out, **CLOSE)


def test_a_list_column(checkpoints: Checkpoints, tmp_path: Path) -> None:
    loaded = load_encoder(checkpoints.path("fp32")).with_output("representation")
    rows = checkpoints.features
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), WIDTH)
    pq.write_table(pa.table({"x": vectors}), tmp_path / "list.parquet", row_group_size=100)
    embed_file(loaded, tmp_path / "list.parquet", tmp_path / "out.npy", batch_size=33)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), loaded(rows).numpy(), **CLOSE)


def test_the_training_runs_feature_columns_in_their_order(
    checkpoints: Checkpoints, tmp_path: Path
) -> None:
    loaded = load_encoder(checkpoints.path("fp32"))
    assert loaded.config is not None
    # As if the run had trained on a parquet file naming its features and its label column.
    names = tuple(f"f{j}" for j in range(WIDTH))
    data = loaded.config.data.model_copy(update={
        "path": "train.parquet", "labels_path": None, "feature_columns": names,
        "label_column": "label"})
    loaded = replace(loaded, config=loaded.config.model_copy(update={"data": data}))
    rows = checkpoints.features
    columns = {name: rows[:, j] for j, name in enumerate(names)}
    shuffled = {name: columns[name] for name in reversed(names)}  # another column order
    table = pa.table({"note": np.ones(ROWS), **shuffled, "label": np.arange(ROWS)})
    pq.write_table(table, tmp_path / "in.parquet")
    embed_file(loaded, tmp_path / "in.parquet", tmp_path / "out.npy", batch_size=100)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), loaded(rows).numpy(), **CLOSE)


def test_the_real_cli_embeds_with_the_chosen_output(
    checkpoints: Checkpoints, tmp_path: Path
) -> None:
    rows = checkpoints.features
    _parquet(tmp_path / "in.parquet", rows, group=40)
    proc = _cli([checkpoints.path("fp32"), "in.parquet", "-o", "out.parquet", "--ids-column",
                 "id", "--batch-size", "25", "--output", "representation"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"embedded {ROWS} rows into out.parquet: the representation (32 values" in proc.stdout
    table = pq.read_table(tmp_path / "out.parquet")
    out = np.stack([table.column(f"embedding_{i}").to_numpy() for i in range(32)], axis=1)
    expected = load_encoder(checkpoints.path("fp32")).with_output("representation")(rows)
    np.testing.assert_allclose(out, expected.numpy(), **CLOSE)


def test_a_zero2_bf16_checkpoint_embeds_in_float32(
    checkpoints: Checkpoints, tmp_path: Path
) -> None:
    loaded = load_encoder(checkpoints.path("zero2_bf16"))
    np.save(tmp_path / "in.npy", checkpoints.features)
    embed_file(loaded, tmp_path / "in.npy", tmp_path / "out.npy", batch_size=64)
    masters = checkpoints.runs["zero2_bf16"]["masters"]
    assert all(torch.equal(loaded.encoder.state_dict()[k], v) for k, v in masters.items())
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"),
                               loaded(checkpoints.features).numpy(), **CLOSE)


# ----------------------------------------------------------------------------- refusals


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return Cli().run("embed", *args, cwd=cwd, store=None, env={"MLFLOW_TRACKING_URI": ""},
                     timeout=300)


Setup = Callable[[Path, Checkpoints], list[str]]


def _npy(rows: np.ndarray, name: str = "in.npy") -> Setup:
    def setup(tmp: Path, checkpoints: Checkpoints) -> list[str]:
        np.save(tmp / name, rows)
        return [checkpoints.path("fp32"), name, "-o", "out.npy"]
    return setup


def _table(columns: dict[str, object], *extra: str) -> Setup:
    def setup(tmp: Path, checkpoints: Checkpoints) -> list[str]:
        pq.write_table(pa.table(columns), tmp / "in.parquet")
        return [checkpoints.path("fp32"), "in.parquet", "-o", "out.parquet", *extra]
    return setup


def _broken_checkpoint(damage: Callable[[Path], None]) -> Setup:
    def setup(tmp: Path, checkpoints: Checkpoints) -> list[str]:
        copy = tmp / "run" / Path(checkpoints.path("fp32")).name
        shutil.copytree(checkpoints.path("fp32"), copy)
        damage(copy)
        np.save(tmp / "in.npy", checkpoints.features)
        return [str(copy), "in.npy", "-o", "out.npy"]
    return setup


def _truncate(copy: Path) -> None:
    states = copy / DEEPSPEED_TAG / MODEL_STATES
    states.write_bytes(states.read_bytes()[:2000])


def _empty_store(tmp: Path, checkpoints: Checkpoints) -> list[str]:
    ensure_experiment(f"sqlite:///{tmp / 'mlflow.db'}", "empty", tmp / "artifacts")
    np.save(tmp / "in.npy", checkpoints.features)
    return ["0" * 32, "in.npy", "-o", "out.npy"]


def _existing_output(tmp: Path, checkpoints: Checkpoints) -> list[str]:
    np.save(tmp / "in.npy", checkpoints.features)
    (tmp / "out.npy").write_text("keep me")
    return [checkpoints.path("fp32"), "in.npy", "-o", "out.npy"]


def _with(rows: np.ndarray, *extra: str) -> Setup:
    def setup(tmp: Path, checkpoints: Checkpoints) -> list[str]:
        return [*_npy(rows)(tmp, checkpoints), *extra]
    return setup


_GOOD = np.zeros((ROWS, WIDTH), dtype=np.float32)
_NAN = _GOOD.copy()
_NAN[200, 3] = np.nan
_NUMBERS = {f"f{j}": np.zeros(20) for j in range(WIDTH - 1)}

CASES: dict[str, tuple[Setup, str]] = {
    "missing input": (lambda t, c: [c.path("fp32"), "nope.npy", "-o", "out.npy"],
                      "INPUT 'nope.npy' not found"),
    "input extension": (_npy(_GOOD, "in.csv"), "INPUT 'in.csv' must be a .npy or .parquet"),
    "output extension": (lambda t, c: [*_npy(_GOOD)(t, c)[:3], "out.txt"],
                         "OUTPUT 'out.txt' must be a .npy or .parquet"),
    "output exists": (_existing_output, "exists; pass --overwrite"),
    "width": (_npy(np.zeros((5, WIDTH + 1), dtype=np.float32)),
              f"the encoder takes rows of {WIDTH} values"),
    "dtype": (_npy(np.full((5, WIDTH), "a")), "non-numeric dtype"),
    "not an array": (_npy(np.zeros(5, dtype=np.float32)), "not 2-D [rows, features]"),
    "parquet text column": (_table({**_NUMBERS, "name": ["x"] * 20}),
                            "'name' has non-numeric type string"),
    "parquet width": (_table({"f0": np.zeros(20)}), f"1 feature columns (f0), the encoder takes "
                      f"{WIDTH}"),
    "unknown ids column": (_table({**_NUMBERS, "g": np.zeros(20)}, "--ids-column", "id"),
                           "no column 'id'"),
    "ids with npy": (_with(_GOOD, "--ids-column", "id"), "needs a .parquet INPUT"),
    "batch size": (_with(_GOOD, "--batch-size", "0"), "--batch-size must be at least 1"),
    "nan midway": (_with(_NAN, "--batch-size", "16"), "INPUT row 200 has NaN/inf values"),
    "missing checkpoint": (lambda t, c: ["nope", *_npy(_GOOD)(t, c)[1:]], "'nope' does not exist"),
    "no meta.json": (_broken_checkpoint(lambda copy: (copy / "meta.json").unlink()),
                     "has no meta.json"),
    "corrupt checkpoint file": (_broken_checkpoint(_truncate), "truncated or corrupted"),
    "no mlflow store": (lambda t, c: ["0" * 32, *_npy(_GOOD)(t, c)[1:]], "no MLflow store at"),
    "unknown run": (_empty_store, f"no MLflow run '{'0' * 32}'"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_refusal_is_one_line_and_leaves_no_output(
    checkpoints: Checkpoints, tmp_path: Path, case: str
) -> None:
    setup, needle = CASES[case]
    args = setup(tmp_path, checkpoints)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    proc = _cli(args, tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("dist-contrast: error:") and needle in lines[0], lines[0]
    assert proc.stdout == ""
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before  # nothing written, nothing half-written, nothing replaced
