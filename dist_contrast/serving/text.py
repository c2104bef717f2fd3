"""A trained text encoder from its checkpoint, and ``dist-contrast embed`` of texts.

A text run's checkpoint holds both towers and the featurizer it was trained with (the bag's
vocabulary or the tokenizer, in the module's state), so a checkpoint folder is all that is
needed to embed new queries or a new corpus. INPUT is a ``.txt`` file (one text per line) or a
``.jsonl`` file (one object per line, the text in ``--column``, default ``text``; for a side of
numeric feature rows, the column holds a list of numbers); OUTPUT is a ``.npy`` array [N, D]
float32, row i for text i, written whole or not at all.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dist_contrast.config import Config
from dist_contrast.data.pairs import is_feature_row
from dist_contrast.errors import UserError
from dist_contrast.models import build_model
from dist_contrast.models.text import SIDES, Side, TextEncoder
from dist_contrast.serving.embed import _create_partial, _progress_bar, check_output
from dist_contrast.serving.load import (
    CHECKPOINT_FIX,
    _parse_record,
    _read_meta,
    is_mlflow_source,
    read_mlflow_model,
)
from dist_contrast.train import storage
from dist_contrast.train.export import checkpoint_state_dict
from dist_contrast.train.state import check_safe_to_load
from dist_contrast.train.text_model import TEXT_RECORD_FORMAT, build_text_encoder

INPUT_SUFFIXES = (".txt", ".jsonl")


def text_checkpoint_config(source: str) -> Config | None:
    """The config of a text run's checkpoint folder; None for anything else (another
    encoder, a run id, a folder that is not a checkpoint: their own loader says why)."""
    marker = Path(source) / storage.MARKER
    try:
        record = json.loads(marker.read_text())
        config = Config.model_validate(record["config"])
    except Exception:  # not a readable checkpoint of ours: not for this loader to judge
        return None
    return config if config.model.is_text else None


def load_text_encoder(source: str, tracking_uri: str | None = None
                      ) -> tuple[TextEncoder, Config]:
    """The float32 text encoder of a checkpoint folder or of a text run's MLflow model (a run
    id, ``runs:/RUN_ID/encoder``, ``models:/NAME/VERSION``; ``tracking_uri`` is its store), in
    eval mode on the CPU, with its featurizer. Raises ``UserError`` (one line) for anything
    unusable. The MLflow model's state is read with ``weights_only=True``, not unpickled."""
    if is_mlflow_source(source):
        return _from_mlflow(source, tracking_uri)
    directory = Path(source)
    meta = _read_meta(source, directory)
    config, _ = _parse_record(source, meta, what="meta.json")
    if not config.model.is_text:
        raise UserError(f"'{source}' holds an encoder of rows of numbers "
                        f"(model.name={config.model.name}); embed a .npy or .parquet file")
    check_safe_to_load(directory, fix=CHECKPOINT_FIX)
    state = checkpoint_state_dict(directory)
    with torch.random.fork_rng(devices=[]):
        encoder = build_model(config.model, (1,))
    assert isinstance(encoder, TextEncoder)
    try:
        encoder.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise UserError(f"the weights in '{source}' do not fit the text encoder its config "
                        f"describes ({first}); it was written by another version of "
                        "dist_contrast") from None
    if encoder.featurizer is None:
        raise UserError(f"checkpoint '{source}' holds no vocabulary or tokenizer for its text "
                        "encoder; use a checkpoint written by this version of dist_contrast")
    return encoder.float().eval(), config


def _from_mlflow(source: str, tracking_uri: str | None) -> tuple[TextEncoder, Config]:
    record, state, _ = read_mlflow_model(source, tracking_uri)
    if record.get("format") != TEXT_RECORD_FORMAT:
        raise UserError(f"'{source}' holds an encoder of rows of numbers, not texts; embed a "
                        ".npy or .parquet file with it (without --side)")
    try:
        config = Config.model_validate(record["config"])
        return build_text_encoder(config, state), config
    except (KeyError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise UserError(f"the model '{source}' does not rebuild ({first}); it was written by "
                        "another version of dist_contrast") from None


def check_text_paths(input_path: str | Path, output_path: str | Path, *,
                     overwrite: bool = False) -> None:
    """What can be refused before the encoder is loaded: formats, a missing INPUT, an
    existing OUTPUT (without ``overwrite``)."""
    source, target = Path(input_path), Path(output_path)
    if source.suffix.lower() not in INPUT_SUFFIXES:
        raise UserError(f"INPUT '{source}' must be a .txt file (one text per line) or a .jsonl "
                        "file (--column names the text) for a text encoder")
    if target.suffix.lower() != ".npy":
        raise UserError(f"OUTPUT '{target}' must be a .npy file for a text encoder")
    if not source.is_file():
        raise UserError(f"INPUT '{source}' not found (or not a file); check the path")
    check_output(target, "OUTPUT", "a .npy", overwrite=overwrite)


def read_texts(path: str | Path, column: str = "text") -> list[Any]:
    """The texts of a .txt file (each line, its newline dropped) or of a .jsonl file (each
    non-blank line's ``column``: a text, or a feature row as a list of numbers). Raises
    ``UserError`` naming the line for a bad one."""
    return read_texts_and_ids(path, column)[0]


def read_texts_and_ids(path: str | Path, column: str = "text"
                       ) -> tuple[list[Any], list[str | None]]:
    """:func:`read_texts` and each .jsonl row's ``id`` (None where it has none, and for every
    line of a .txt file), read in one pass."""
    source = Path(path)
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"INPUT '{source}' is not UTF-8 text; convert it first") from None
    except OSError as exc:
        raise UserError(f"cannot read INPUT '{source}' ({exc.strerror}); check the path") from None
    texts: list[Any] = []
    ids: list[str | None] = []
    if source.suffix.lower() == ".txt":
        texts, ids = list(lines), [None] * len(lines)
    else:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            text, row_id = _text_of(source, number, line, column)
            texts.append(text)
            ids.append(row_id)
    if not texts:
        raise UserError(f"INPUT '{source}' holds no texts; give a file with one text per line")
    return texts, ids


def _text_of(source: Path, number: int, line: str, column: str) -> tuple[Any, str | None]:
    try:
        row: Any = json.loads(line)
    except ValueError:
        raise UserError(f"INPUT '{source}' line {number} is not JSON; give one JSON object per "
                        "line") from None
    if not isinstance(row, dict) or column not in row:
        found = sorted(row) if isinstance(row, dict) else []
        raise UserError(f"INPUT '{source}' line {number} has no column '{column}' (it has "
                        f"{found}); name the text's column with --column")
    value = row[column]
    if not isinstance(value, str) and not is_feature_row(value):
        raise UserError(f"INPUT '{source}' line {number}: '{column}' is "
                        f"{type(value).__name__}, not text (or a feature row of numbers)")
    return value, str(row["id"]) if "id" in row else None


def embed_texts(
    encoder: TextEncoder, texts: list[Any], side: Side, output_path: str | Path, *,
    representation: bool = False, batch_size: int = 256, overwrite: bool = False,
    progress: bool | None = None,
) -> int:
    """Embed ``texts`` with ``side``'s tower (the unit-norm embedding, or the body's
    ``representation``) into the .npy ``output_path``; returns the count.

    Shape: [N] texts -> OUTPUT [N, embedding_dim or feature_dim] float32.
    """
    target = Path(output_path)
    if target.exists() and not overwrite:
        raise UserError(f"OUTPUT '{target}' exists; pass --overwrite to replace it")
    out = embedding_array(encoder, texts, side, representation=representation,
                          batch_size=batch_size, progress=progress)
    save_npy(out, target)
    return len(texts)


@torch.inference_mode()
def embedding_array(
    encoder: TextEncoder, texts: list[Any], side: Side, *, representation: bool = False,
    batch_size: int = 256, progress: bool | None = None,
) -> np.ndarray:
    """``side``'s embeddings (or body representations) of ``texts``, ``batch_size`` at a time.

    Shape: [N] texts -> [N, embedding_dim or feature_dim] float32.
    """
    if side not in SIDES:
        raise UserError(f"--side must be one of {', '.join(SIDES)}, got {side!r}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    apply = encoder.encode if representation else encoder
    try:  # the side's kind (text or feature rows of its width), checked on the first row
        encoder.ids(texts[:1], side)
    except ValueError as exc:
        column = ("a text per line, or --column naming a text" if encoder.takes_text(side)
                  else "--column naming a column of feature rows (lists of numbers)")
        raise UserError(f"INPUT cannot be embedded: {exc}; give {column}") from None
    parts = []
    with _progress_bar(len(texts), progress) as advance:
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            parts.append(apply(batch, side=side).float().cpu().numpy())
            advance(len(batch))
    return np.concatenate(parts).astype(np.float32, copy=False)


def save_npy(array: np.ndarray, target: Path) -> None:
    """``array`` as the .npy ``target``, complete or not at all (a hidden partial file beside
    it, renamed into place)."""
    partial = _create_partial(target)
    try:
        with partial.open("wb") as handle:
            np.save(handle, array)
        os.replace(partial, target)  # complete or absent: never half a file under OUTPUT
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)
