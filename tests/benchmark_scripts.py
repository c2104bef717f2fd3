"""Load the scripts of ``benchmarks/`` (not a package) in tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any


def load_benchmark(name: str) -> Any:
    """A script of ``benchmarks/`` as a module."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
