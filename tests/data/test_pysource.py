"""The code-search pairs built from Python source trees: extraction, the walk, de-duplication,
the package split, the files and the ``dist-contrast data pysource`` command."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from dist_contrast.cli import main
from dist_contrast.data.errors import DataError
from dist_contrast.data.pysource import (
    CodePair,
    build_pysource,
    extract_pairs,
    first_paragraph,
    held_out_packages,
    scan,
    source_files,
)

MODULE = '''\
"""A module docstring is not a pair."""
import os


def parse_header(text, *, strict=False):
    """Parse one header line into a name and a value.

    The second paragraph is not part of the query.
    """

    name, _, value = text.partition(":")
    return name.strip(), value.strip()


class Reader:
    """A class docstring is not a pair."""

    @property
    def size(self):
        """Return the number of rows read so far."""
        total = self._rows
        return total

    def __repr__(self):
        """Return a readable representation of this reader."""
        name = type(self).__name__
        return name

    class Inner:
        def flush(self, force=False):
            """Write   every   pending
            row to the disk now."""
            if force:
                os.sync()
            return None


def short(x):
    """Too short."""
    y = x + 1
    return y


def tiny(x):
    """Return the argument plus one."""
    return x + 1


def stub(self, a, b,
         c, d):
    """Compute the thing that subclasses compute."""
    raise NotImplementedError


def undocumented(a, b):
    c = a + b
    return c


if os.name == "posix":
    def platform_path(name):
        """Join the name onto the platform's root folder."""
        root = "/"
        return root + name


def outer(values):
    """Sort the values by their absolute size."""
    def key(value):
        """Nested functions stay inside their outer function."""
        return abs(value)
    return sorted(values, key=key)
'''


def _pairs(source: str = MODULE) -> dict[str, CodePair]:
    return {pair.id.split(":", 1)[1]: pair
            for pair in extract_pairs(source, relpath="pkg/mod.py", package="pkg")}


def test_first_paragraph_is_one_line() -> None:
    assert first_paragraph("Do  this\nand that.\n\nMore.") == "Do this and that."


def test_query_and_document_of_a_function() -> None:
    pair = _pairs()["parse_header"]
    assert pair.query == "Parse one header line into a name and a value."
    assert pair.positive == textwrap.dedent('''\
        def parse_header(text, *, strict=False):
            name, _, value = text.partition(":")
            return name.strip(), value.strip()''')
    assert pair.package == "pkg" and pair.id == "pkg/mod.py:parse_header"


def test_methods_are_dedented_and_keep_their_signature() -> None:
    pairs = _pairs()
    assert pairs["Reader.size"].positive == (
        "def size(self):\n    total = self._rows\n    return total")
    flush = pairs["Reader.Inner.flush"]
    assert flush.query == "Write every pending row to the disk now."
    assert flush.positive.startswith("def flush(self, force=False):\n    if force:")
    assert '"""' not in flush.positive


def test_what_is_left_out() -> None:
    pairs = _pairs()
    # short query, tiny body, stub, no docstring, dunder, nested function
    for name in ("short", "tiny", "stub", "undocumented", "Reader.__repr__", "key", "outer.key"):
        assert name not in pairs
    assert set(pairs) == {"parse_header", "Reader.size", "Reader.Inner.flush", "platform_path",
                          "outer"}
    # the nested function's code (and docstring) stays in its outer function's document
    assert "Nested functions stay" in pairs["outer"].positive


def test_a_syntax_error_raises() -> None:
    with pytest.raises(SyntaxError):
        extract_pairs("print 'python 2'\n", relpath="old.py", package="old")


def _tree(root: Path) -> Path:
    """Five packages (one a single module), a test folder, a vendored copy, a duplicate, a
    file that does not parse and one that is not UTF-8."""
    def write(relpath: str, text: str) -> None:
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    for name in ("alpha", "beta", "gamma", "delta"):
        for k in range(4):
            write(f"{name}/sub/m{k}.py", _function(f"{name}_{k}", f"{name} number {k}"))
        write(f"{name}/__init__.py", "")
    write("epsilon.py", _function("eps", "epsilon one") + _function("eps2", "epsilon two"))
    write("alpha/tests/test_alpha.py", _function("test_it", "check that alpha works"))
    write("alpha/helpers_test.py", _function("helper", "a test helper"))
    write("beta/_vendor/copy.py", _function("vendored", "a vendored copy"))
    write("gamma/again.py", _function("gamma_0", "gamma number 0"))  # duplicate of m0
    write("delta/py2.py", "print 'python 2'\n")
    (root / "delta" / "latin.py").write_bytes(b"x = '\xe9'\n")
    return root


def _function(name: str, words: str) -> str:
    return (f'def {name}(values):\n    """Compute the {words} of the values."""\n'
            f"    total = sum(values)\n    return total\n\n\n")


def test_walk_skips_tests_and_vendored_copies(tmp_path: Path) -> None:
    files = [file.relpath for file in source_files([_tree(tmp_path / "src")])]
    assert files == sorted(files, key=lambda p: p.split("/"))
    assert not [p for p in files if "tests" in p or "_vendor" in p or p.endswith("_test.py")]
    assert {file.package for file in source_files([tmp_path / "src"])} == {
        "alpha", "beta", "gamma", "delta", "epsilon"}


def test_a_root_that_is_a_package_is_one_package(tmp_path: Path) -> None:
    root = _tree(tmp_path / "src") / "alpha"
    assert {file.package for file in source_files([root])} == {"alpha"}


def test_scan_dedups_and_counts_bad_files(tmp_path: Path) -> None:
    pairs, counts = scan([_tree(tmp_path / "src")])
    assert counts.skipped["duplicate"] == 1
    assert counts.files["not_parsed"] == 2  # Python 2 and latin-1 without a coding line
    ids = [pair.id for pair in pairs]
    assert len(ids) == len(set(ids)) == 4 * 4 + 2
    # the first by sorted path is kept: gamma/again.py sorts before gamma/sub/m0.py
    assert "gamma/again.py:gamma_0" in ids and "gamma/sub/m0.py:gamma_0" not in ids


def test_split_rule() -> None:
    sizes = {f"p{k}": 10 for k in range(40)}
    held = held_out_packages(sizes)
    share = sum(sizes[p] for p in held) / sum(sizes.values())
    assert 0.075 <= share <= 0.10 and held == held_out_packages(dict(reversed(sizes.items())))
    # a package larger than the cap is never held out; something small is
    assert "big" not in held_out_packages({"big": 1000, **sizes})
    assert held_out_packages({"a": 50, "b": 40, "c": 10}) == {"c"}
    assert held_out_packages({"only": 10}) == frozenset()


def test_build_writes_split_files_deterministically(tmp_path: Path) -> None:
    root = _tree(tmp_path / "src")
    first = build_pysource(tmp_path / "one", [root], test_fraction=0.2)
    second = build_pysource(tmp_path / "two", [root], test_fraction=0.2)
    for name in ("train.jsonl", "test.jsonl", "stats.json"):
        assert (first.out / name).read_bytes() == (second.out / name).read_bytes()
    rows = {split: [json.loads(line) for line in (first.out / f"{split}.jsonl").open()]
            for split in ("train", "test")}
    train_packages = {row["package"] for row in rows["train"]}
    test_packages = {row["package"] for row in rows["test"]}
    assert test_packages and train_packages and not train_packages & test_packages
    assert set(rows["train"][0]) == {"id", "query", "positive", "package"}
    stats = first.stats
    assert stats["test_packages"] == sorted(test_packages)
    assert stats["pairs"] == {"train": len(rows["train"]), "test": len(rows["test"]),
                              "all": 18}
    assert stats["packages"]["all"] == 5
    assert stats["files"]["not_parsed"] == 2 and stats["skipped_functions"]["duplicate"] == 1
    assert json.loads((first.out / "stats.json").read_text()) == stats
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "src", "two"]  # no leftovers


def test_existing_output_is_refused_unless_overwrite(tmp_path: Path) -> None:
    root = _tree(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty.*--overwrite"):
        build_pysource(out, [root])
    assert (out / "keep.txt").exists()
    build_pysource(out, [root], overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["stats.json", "test.jsonl", "train.jsonl"]


def test_an_interrupted_build_leaves_nothing(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import dist_contrast.data.pysource as pysource

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pysource, "_stats", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_pysource(tmp_path / "out", [_tree(tmp_path / "src")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_cli_writes_the_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _tree(tmp_path / "src")
    out = tmp_path / "pairs"
    assert main(["data", "pysource", "--root", str(root), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote 18 pairs from 5 packages" in printed
    assert sorted(p.name for p in out.iterdir()) == ["stats.json", "test.jsonl", "train.jsonl"]
    # again without --overwrite: one line, exit 2, the folder untouched
    before = (out / "train.jsonl").read_bytes()
    assert main(["data", "pysource", "--root", str(root), "-o", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith("dist-contrast: error:") and str(out) in error
    assert (out / "train.jsonl").read_bytes() == before


def test_cli_refuses_a_missing_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "pysource", "--root", str(tmp_path / "nope"), "-o",
                 str(tmp_path / "out")]) == 2
    assert "--root is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_document_matches_get_source_segment() -> None:
    """An independent reference: ast.get_source_segment, docstring lines dropped by hand, on
    CRLF line ends, tabs and non-ASCII text at the end of the function."""
    import ast

    source = ('class K:\r\n\tdef name(self, x):\r\n\t\t"""Return the name that x gives."""\r\n'
              '\t\ty = x * 2\r\n\t\treturn "é" + str(y)  # trailing comment\r\n')
    node = ast.parse(source).body[0].body[0]  # type: ignore[attr-defined]
    segment = ast.get_source_segment(source, node, padded=True)
    assert segment is not None
    lines = segment.splitlines()
    expected = "\n".join(line[1:] for line in [lines[0], *lines[2:]])
    pair = extract_pairs(source, relpath="k.py", package="k")[0]
    assert pair.positive == expected
    assert pair.positive.endswith('return "é" + str(y)')


def test_an_unwritable_output_fails_before_the_walk(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import dist_contrast.data.pysource as pysource

    def no_walk(*args: object, **kwargs: object) -> None:
        raise AssertionError("walked before checking -o")

    monkeypatch.setattr(pysource, "scan", no_walk)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="cannot write there"):
        build_pysource(tmp_path / "file.txt" / "out", [_tree(tmp_path / "src")])
