"""Config values that name files are found by their type and resolved against a folder once;
URIs are kept."""

from __future__ import annotations

from pathlib import Path

from dist_contrast.config import validate
from dist_contrast.paths import local_or_uri, path_settings, resolve_paths


def test_every_path_setting_of_the_config_is_found() -> None:
    cfg = validate({"data": {"name": "file", "path": "x.npy", "labels_path": "y.npy"},
                    "trainer": {"resume_from": "old/checkpoint_00000010"}}, source="test")
    assert path_settings(cfg) == {
        "experiment.output_dir": "results",
        "data.path": "x.npy",
        "data.labels_path": "y.npy",
        "trainer.resume_from": "old/checkpoint_00000010",
    }


def test_relative_paths_become_absolute_against_the_folder_given(tmp_path: Path) -> None:
    cfg = validate({"data": {"name": "file", "path": "x.npy", "labels_path": "../y.npy"},
                    "experiment": {"output_dir": "~/runs"},
                    "trainer": {"resume_from": "s3://bucket/run/checkpoint_00000010"}},
                   source="test")
    resolved = resolve_paths(cfg, tmp_path / "work")
    assert resolved.data.path == str(tmp_path / "work" / "x.npy")
    assert resolved.data.labels_path == str(tmp_path / "y.npy")
    assert resolved.experiment.output_dir == str(Path.home() / "runs")
    assert resolved.trainer.resume_from == "s3://bucket/run/checkpoint_00000010"  # a URI: kept
    assert resolve_paths(resolved, "/elsewhere") == resolved  # absolute paths stay


def test_local_or_uri(tmp_path: Path) -> None:
    assert local_or_uri("gs://b/x") == "gs://b/x"
    assert local_or_uri("a/b", tmp_path) == str(tmp_path / "a" / "b")
    assert local_or_uri(str(tmp_path / "a"), "/other") == str(tmp_path / "a")


def test_a_section_kept_as_an_extra_value_is_walked_too(tmp_path: Path) -> None:
    # A registered negative source keeps its settings section as an extra value of the
    # negatives section; a path setting there is resolved like any other.
    from pydantic import BaseModel, ConfigDict

    from dist_contrast.paths import ConfigPath

    class Source(BaseModel):
        index_file: ConfigPath = "index.faiss"

    class Sources(BaseModel):
        model_config = ConfigDict(extra="allow")

    sources = Sources(mine=Source())
    assert path_settings(sources) == {"mine.index_file": "index.faiss"}
    assert resolve_paths(sources, tmp_path).mine.index_file == str(tmp_path / "index.faiss")
