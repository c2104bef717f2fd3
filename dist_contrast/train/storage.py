"""Where a run's checkpoints live, which of them are complete, and which are kept.

A run writes its checkpoints to ``<experiment.output_dir>/<run_name>/checkpoint_<step>`` (a
local folder, a shared filesystem or an object store URI, the same storage Ray Train uses).
Every rank copies its own files into the same folder; once all of them are there, rank 0 writes
``meta.json`` into it, last. A folder without ``meta.json`` is a checkpoint that a crash
interrupted: it is never resumed from and is removed by the next run that finds it. A restart, a
re-run with the same run name and the driver all pick the newest *complete* checkpoint, and the
newest ``checkpoint.num_to_keep`` complete ones are all that stay on disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dist_contrast.config import Config

MARKER = "meta.json"
_NAME = re.compile(r"^checkpoint_(\d{8})$")


def checkpoint_name(step: int) -> str:
    return f"checkpoint_{step:08d}"


def step_of(path: str) -> int | None:
    """The step in a ``checkpoint_<step>`` folder's name (None for another name)."""
    match = _NAME.match(path.rstrip("/").rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for a local path or a URI."""
    if "://" in base:
        return "/".join([base.rstrip("/"), *parts])
    return os.path.join(base, *parts)


def run_directory(cfg: Config) -> str:
    """``<experiment.output_dir>/<run_name>`` of a resolved config."""
    return join(cfg.experiment.output_dir, str(cfg.experiment.run_name))


def _filesystem(path: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def exists(path: str) -> bool:
    import pyarrow.fs as pafs

    fs, root = _filesystem(path)
    try:
        return bool(fs.get_file_info(root).type != pafs.FileType.NotFound)
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class StoredCheckpoint:
    path: str
    step: int
    complete: bool


def list_checkpoints(run_dir: str) -> list[StoredCheckpoint]:
    """Every ``checkpoint_<step>`` folder of the run, oldest first (none if the run is new)."""
    import pyarrow.fs as pafs

    fs, root = _filesystem(run_dir)
    try:
        entries = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except (OSError, ValueError):
        return []
    found = []
    for entry in entries:
        match = _NAME.match(entry.base_name)
        if entry.type != pafs.FileType.Directory or match is None:
            continue
        marker = fs.get_file_info(f"{entry.path}/{MARKER}")
        found.append(StoredCheckpoint(
            path=join(run_dir, entry.base_name), step=int(match.group(1)),
            complete=marker.type == pafs.FileType.File,
        ))
    return sorted(found, key=lambda c: c.step)


def newest_complete(run_dir: str) -> StoredCheckpoint | None:
    complete = [c for c in list_checkpoints(run_dir) if c.complete]
    return complete[-1] if complete else None


def newest_complete_beside(checkpoint_dir: str) -> StoredCheckpoint | None:
    """The newest complete checkpoint in the run folder that holds ``checkpoint_dir``."""
    parent = checkpoint_dir.rstrip("/").rsplit("/", 1)[0] if "://" in checkpoint_dir \
        else os.path.dirname(os.path.abspath(checkpoint_dir))
    return newest_complete(parent)


def resume_source(run_dir: str, resume_from: str | None) -> str | None:
    """The checkpoint a run starts from: the run's newest complete one (written before a
    restart or by an earlier run of the same name), else ``trainer.resume_from``, else None."""
    newest = newest_complete(run_dir)
    return newest.path if newest is not None else resume_from


def read_meta(checkpoint_dir: str) -> dict[str, Any] | None:
    """The ``meta.json`` of a checkpoint (None for one written before markers existed)."""
    fs, root = _filesystem(checkpoint_dir)
    try:
        with fs.open_input_stream(f"{root}/{MARKER}") as stream:
            meta: dict[str, Any] = json.loads(stream.read().decode())
    except (OSError, FileNotFoundError, ValueError):
        return None
    return meta


def mark_complete(checkpoint_dir: str, meta: dict[str, Any]) -> None:
    """Write ``meta.json`` into a checkpoint every rank has finished writing (rank 0 only)."""
    fs, root = _filesystem(checkpoint_dir)
    payload = json.dumps(meta, indent=2, sort_keys=True).encode()
    if "://" in checkpoint_dir:  # an object store writes one object at once
        with fs.open_output_stream(f"{root}/{MARKER}") as stream:
            stream.write(payload)
        return
    temporary = os.path.join(root, MARKER + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, os.path.join(root, MARKER))  # atomic: complete or absent


def upload(local_dir: str, target: str) -> None:
    """Copy a local folder's files into ``target`` (created if needed; other ranks' files
    already there are kept). A local ``target`` gets the mode the user's umask gives, not the
    0700 of the temporary folder it is copied from, so teammates who share the results can
    read it."""
    if "://" not in target:
        os.makedirs(target, exist_ok=True)
        for entry in os.scandir(local_dir):  # the entries, not the folder (copytree's copystat)
            destination = os.path.join(target, entry.name)
            if entry.is_dir():
                shutil.copytree(entry.path, destination, dirs_exist_ok=True)
            else:
                shutil.copy2(entry.path, destination)
        return
    import pyarrow.fs as pafs

    fs, root = _filesystem(target)
    fs.create_dir(root, recursive=True)
    pafs.copy_files(local_dir, root, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)


def remove(checkpoint_dir: str) -> None:
    fs, root = _filesystem(checkpoint_dir)
    with contextlib.suppress(OSError):  # already gone: nothing to do
        fs.delete_dir(root)


def prune(run_dir: str, keep: int | None, *, newer_than: int | None = None) -> None:
    """Keep the newest ``keep`` complete checkpoints on disk; remove interrupted ones (older
    than the newest complete one, or newer than ``newer_than``: the one a restart resumes)."""
    stored = list_checkpoints(run_dir)
    complete = [c for c in stored if c.complete]
    newest = complete[-1].step if complete else -1
    for checkpoint in stored:
        interrupted = not checkpoint.complete and (
            checkpoint.step < newest or (newer_than is not None and checkpoint.step > newer_than)
        )
        if interrupted:
            remove(checkpoint.path)
    if keep is not None:
        for checkpoint in complete[:-keep]:
            remove(checkpoint.path)
