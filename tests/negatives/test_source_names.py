"""A negative source is one module: no code outside ``dist_contrast/negatives/`` names a
registered source, neither by its name or key as a string (``"queue" in sources``, a dict keyed
by source) nor by reading its settings (``cfg.negatives.queue``) or its pool (``pool.bank``),
nor in a message about its settings (``f"negatives.miner.index={...}"``). Such code reads the
source's :class:`~dist_contrast.negatives.registry.SourceSpec` instead.

Checked on the source with ``ast``, in the style of tests/test_architecture.py.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from dist_contrast.negatives.registry import source_names, source_spec

PACKAGE = Path(__file__).resolve().parents[2] / "dist_contrast"
OUTSIDE = sorted(p for p in PACKAGE.rglob("*.py")
                 if p.relative_to(PACKAGE).parts[0] != "negatives")

# Files that still name sources, and why. Each entry must still be needed (checked below), so
# the list only shrinks; it is empty now (the run page's description comes from the sources'
# own ``describe``, handed to tracking by the driver).
KNOWN: dict[str, str] = {}


def _names() -> tuple[set[str], set[str]]:
    """Every registered source's name and key, and the keys of settings sections."""
    names = set(source_names())
    keys = {source_spec(name).key for name in names}
    sections = {source_spec(name).key for name in names if source_spec(name).settings}
    return names | keys, sections


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def source_mentions(source: str, names: set[str], sections: set[str]) -> list[str]:
    """``line: what`` for each place ``source`` names a source."""
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    setting = re.compile(rf"\bnegatives\.({'|'.join(map(re.escape, sorted(sections)))})\b")
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) in docstrings:
                continue
            if node.value in names or setting.search(node.value):
                found.append(f"{node.lineno}: string {node.value!r}")
        elif isinstance(node, ast.Attribute) and node.attr in names:
            owner = node.value
            owner_name = owner.attr if isinstance(owner, ast.Attribute) else getattr(
                owner, "id", "")
            if owner_name in {"negatives", "pool"}:
                found.append(f"{node.lineno}: attribute {owner_name}.{node.attr}")
    return found


@pytest.mark.parametrize("path", OUTSIDE, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_outside_the_negatives_names_a_source(path: Path) -> None:
    names, sections = _names()
    relative = str(path.relative_to(PACKAGE))
    found = source_mentions(path.read_text(), names, sections)
    if relative in KNOWN:
        assert found, f"{relative} no longer names a source: drop it from KNOWN"
        return
    assert not found, (f"{relative} names a negative source ({'; '.join(found)}); read its "
                       "SourceSpec (dist_contrast/negatives/registry.py) instead")


def test_the_finder_finds_each_kind_of_mention() -> None:
    code = '''
"""A docstring may say queue and negatives.queue.size."""
if "queue" in cfg.negatives.sources:
    size = cfg.negatives.queue.size
    keys = step.pool.bank.entries(ids)
    raise ValueError(f"lower negatives.miner.nlist={size}")
ok = {"batch_size": 1, "layout": "sharded"}
'''
    found = source_mentions(code, {"batch", "queue", "bank", "mined", "miner"},
                            {"queue", "bank", "miner"})
    assert [line.split(":")[0] for line in found] == ["3", "4", "5", "6"], found


def test_a_registered_source_is_looked_for_too() -> None:
    from dist_contrast.negatives.registry import SourceSpec, register_source, unregister_source

    register_source("recent_keys", SourceSpec(key="recent"))
    try:
        names, _ = _names()
        assert {"recent_keys", "recent"} <= names
    finally:
        unregister_source("recent_keys")
