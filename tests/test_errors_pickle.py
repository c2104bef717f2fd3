"""Every exception type the package defines survives pickling with its message and attributes:
Ray pickles an error raised in a worker to carry it to the driver, and one that cannot be
unpickled reaches the user as Ray's own error instead of its one line."""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil
import typing
from pathlib import Path
from typing import Any

import pytest

import dist_contrast


def _exception_types() -> list[type[BaseException]]:
    """Every exception class defined in a module of the package (walked, so that a new one is
    tested without being listed here)."""
    found: dict[str, type[BaseException]] = {}
    for module_info in pkgutil.walk_packages(dist_contrast.__path__, "dist_contrast."):
        if module_info.name.endswith("__main__"):
            continue
        module = importlib.import_module(module_info.name)
        for value in vars(module).values():
            if (inspect.isclass(value) and issubclass(value, BaseException)
                    and value.__module__ == module.__name__):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return [found[name] for name in sorted(found)]


EXCEPTION_TYPES = _exception_types()


def _sample(name: str, annotation: Any) -> Any:
    """A value of the parameter's type (ints for counts and signals, else text)."""
    if annotation is int or annotation == "int":
        return 15
    if name == "path":
        return "/data/shard-3.npy"
    return f"the {name} given"


def _instance(cls: type[BaseException]) -> BaseException:
    signature = inspect.signature(cls.__init__)
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # a hint that does not resolve: fall back on the names
        hints = {}
    args = [_sample(name, hints.get(name, parameter.annotation))
            for name, parameter in list(signature.parameters.items())[1:]
            if parameter.default is inspect.Parameter.empty
            and parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)]
    return cls(*args)


def test_the_walk_finds_the_user_error_types() -> None:
    names = {cls.__name__ for cls in EXCEPTION_TYPES}
    assert {"UserError", "RunFailed", "DataError", "Interrupted"} <= names, names


@pytest.mark.parametrize("cls", EXCEPTION_TYPES, ids=lambda cls: cls.__qualname__)
def test_each_exception_type_survives_pickling(cls: type[BaseException]) -> None:
    error = _instance(cls)
    for dumps, loads in ((pickle.dumps, pickle.loads), _cloudpickle()):
        copy = loads(dumps(error))
        assert type(copy) is cls
        assert str(copy) == str(error) and copy.args == error.args
        assert vars(copy) == vars(error)
        assert getattr(copy, "exit_code", None) == getattr(error, "exit_code", None)


def _cloudpickle() -> tuple[Any, Any]:
    """Ray's serializer for exceptions (when installed), else pickle again."""
    try:
        import cloudpickle
    except ImportError:
        return pickle.dumps, pickle.loads
    return cloudpickle.dumps, pickle.loads


def test_a_data_error_keeps_its_parts_and_is_a_user_error(tmp_path: Path) -> None:
    from dist_contrast.data import DataError
    from dist_contrast.errors import UserError

    error = DataError(tmp_path / "x.npy", "holds 7 columns", "give 8")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is DataError
    assert isinstance(copy, UserError) and isinstance(copy, ValueError)
    assert (copy.path, copy.problem, copy.fix) == (str(tmp_path / "x.npy"), "holds 7 columns",
                                                  "give 8")
    assert str(copy) == f"{tmp_path / 'x.npy'}: holds 7 columns; give 8"
    assert copy.exit_code == 2


def test_an_exit_status_set_on_an_instance_survives() -> None:
    from dist_contrast.errors import UserError

    error = UserError("stopped  by\nthe user; run it again")
    error.exit_code = 130
    copy = pickle.loads(pickle.dumps(error))
    assert copy.exit_code == 130 and str(copy) == "stopped by the user; run it again"
