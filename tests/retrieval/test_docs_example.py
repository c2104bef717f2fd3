"""The Python example of docs/retrieval.md runs as written and says what the page claims."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[2] / "docs" / "retrieval.md"


def test_the_python_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
    assert len(blocks) == 1
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], str(PAGE), "exec"), namespace)  # our own page's example
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["bm25", "dense", "rrf", "sum"]
    # BM25 finds both functions from their descriptions, first.
    assert "'mrr@10': 1.0" in lines[0] and "'recall@1': 1.0" in lines[0]
