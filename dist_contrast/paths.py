"""Config values that name files: marked by their type, resolved once on the driver.

A setting typed :data:`ConfigPath` names a file or folder. The driver resolves every such
setting against the caller's working directory once, before anything starts
(:func:`resolve_paths`), so the workers, which run in Ray's working directory, get absolute
paths. Remote URIs (``s3://``, ``gs://``, ``hdfs://``) are left as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel


class _PathSetting:
    """The marker in a :data:`ConfigPath`'s metadata."""

    def __repr__(self) -> str:
        return "ConfigPath"


PATH_SETTING = _PathSetting()

#: A config value that names a local path or a remote URI.
ConfigPath = Annotated[str, PATH_SETTING]
#: The same, optional (``None`` when unset). Written as one ``Annotated`` so that pydantic
#: keeps the marker on the field.
OptionalConfigPath = Annotated[str | None, PATH_SETTING]

Model = TypeVar("Model", bound=BaseModel)


def is_uri(path: str) -> bool:
    """Whether ``path`` is a remote URI (``scheme://…``) rather than a local path."""
    return "://" in path


def local_or_uri(path: str, base: str | Path | None = None) -> str:
    """A local path made absolute against ``base`` (default: the working directory); a URI
    unchanged. ``~`` is expanded."""
    if is_uri(path):
        return path
    expanded = Path(path).expanduser()
    if not expanded.is_absolute():
        expanded = Path(base if base is not None else Path.cwd()) / expanded
    return str(expanded.resolve())


def path_settings(model: BaseModel, prefix: str = "") -> dict[str, str]:
    """Every :data:`ConfigPath` setting of ``model`` and its sections that is set, by its dotted
    key (``data.path``)."""
    found: dict[str, str] = {}
    for name, value, is_path in _settings(model):
        key = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            found.update(path_settings(value, f"{key}."))
        elif isinstance(value, str) and is_path:
            found[key] = value
    return found


def _settings(model: BaseModel) -> list[tuple[str, Any, bool]]:
    """``(name, value, is a path setting)`` of every field, and of every extra value (a
    registered negative source keeps its section there)."""
    fields = [(name, getattr(model, name), PATH_SETTING in field.metadata)
              for name, field in type(model).model_fields.items()]
    extras = [(name, value, False) for name, value in (model.model_extra or {}).items()]
    return fields + extras


def resolve_paths(model: Model, base: str | Path | None = None) -> Model:
    """A copy of ``model`` whose :data:`ConfigPath` settings, in every section, are absolute
    (resolved against ``base``, default the working directory); URIs are kept."""
    update: dict[str, Any] = {}
    for name, value, is_path in _settings(model):
        if isinstance(value, BaseModel):
            resolved = resolve_paths(value, base)
            if resolved is not value:
                update[name] = resolved
        elif isinstance(value, str) and is_path:
            absolute = local_or_uri(value, base)
            if absolute != value:
                update[name] = absolute
    return model.model_copy(update=update) if update else model
