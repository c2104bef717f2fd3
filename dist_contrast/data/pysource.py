"""The code-search pairs: every documented Python function of some source trees, as a
(query, code) pair, split by top-level package (the CodeSearchNet task, Husain et al. 2019).

* **Query**: the first paragraph of the docstring, whitespace collapsed to single spaces.
* **Document** (the positive): the function's source (``ast.get_source_segment``: from ``def``,
  decorators left out) without its docstring's lines, dedented. The code is parsed with
  :mod:`ast`, never imported.
* **Kept**: functions and methods (in classes, nested classes and module-level ``if``/``try``
  blocks); functions nested inside functions stay part of their outer function's code.
* **Skipped**: ``test``/``tests``/``*_test(s)`` folders, ``test_*.py``, ``*_test.py`` and
  ``conftest.py`` (their docstrings describe tests, not an API); vendored copies (``_vendor``,
  ``vendored``: another package's code, which would put it on both sides of the split);
  ``__pycache__``, hidden, ``site-packages`` and ``dist-packages`` folders below a root (a root
  of their own); dunder methods (``__init__``, ``__repr__``: generic docstrings); queries of
  fewer than :data:`MIN_QUERY_WORDS` words; documents of fewer than :data:`MIN_DOCUMENT_LINES`
  non-blank lines; stubs (a body of ``pass``, ``...`` or ``raise NotImplementedError``).
  Unreadable files and files that do not parse are skipped and counted, never fatal.
* **De-duplicated**: a pair whose query and document equal an earlier pair's up to whitespace
  is dropped; files are visited in sorted path order (then root order), so the first kept is
  the one with the smallest path.
* **Split**: see :func:`held_out_packages`.

:func:`build_pysource` writes ``train.jsonl``, ``test.jsonl`` and ``stats.json`` to a folder,
atomically (``dist-contrast data pysource``).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
import sysconfig
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from dist_contrast.data.errors import DataError

MIN_QUERY_WORDS = 3
MIN_DOCUMENT_LINES = 3  # signature included, as CodeSearchNet's "at least three lines"
TEST_FRACTION = 0.075  # the held-out share aimed at; at most 4/3 of it (10%)
SPLIT_SALT = "dist-contrast pysource split v1"
FORMAT = "dist-contrast pysource v1"
FILES = ("train.jsonl", "test.jsonl", "stats.json")

_SKIPPED_FOLDERS = frozenset({"test", "tests", "__pycache__", "site-packages", "dist-packages",
                              "_vendor", "vendored", "node_modules"})
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class CodePair:
    """One documented function: its summary (``query``) and its code (``positive``).

    ``id``: ``<path under the root>:<qualified name>`` (``json/decoder.py:JSONDecoder.decode``),
    unique in one build (a repeated name gets ``#2``, ``#3``...).
    """

    query: str
    positive: str
    package: str
    id: str

    def row(self) -> dict[str, str]:
        return {"id": self.id, "query": self.query, "positive": self.positive,
                "package": self.package}


@dataclass
class ScanCounts:
    """What a walk saw and why it left things out (``stats.json``'s ``files`` and ``skipped``)."""

    files: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)


# --- one file ---------------------------------------------------------------------------------


def first_paragraph(docstring: str) -> str:
    """The docstring's first paragraph on one line (``inspect.cleandoc`` already applied)."""
    return " ".join(_PARAGRAPH_BREAK.split(docstring.strip(), maxsplit=1)[0].split())


def extract_pairs(
    source: str, *, relpath: str, package: str, counts: ScanCounts | None = None
) -> list[CodePair]:
    """The pairs of one module's source, in source order (see the module docstring's rules).

    Raises ``SyntaxError`` (or ``ValueError`` for null bytes) when ``source`` does not parse.
    """
    counts = counts if counts is not None else ScanCounts()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SyntaxWarning: invalid escapes in old code
        tree = ast.parse(source)
    # Split once: ast.get_source_segment splits the whole source again for every function,
    # which is quadratic in the large generated modules of some packages. ast counts \r\n,
    # \r and \n as line ends (and not form feeds, unlike str.splitlines).
    lines = source.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    pairs = []
    for qualname, node in _functions(tree, ""):
        pair = _pair(lines, node, qualname, relpath, package, counts.skipped)
        if pair is not None:
            pairs.append(pair)
    return pairs


_Function = ast.FunctionDef | ast.AsyncFunctionDef


def _functions(node: ast.AST, prefix: str) -> Iterator[tuple[str, _Function]]:
    """Functions and methods under ``node``, not descending into function bodies."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, _Function):
            yield f"{prefix}{child.name}", child
        elif isinstance(child, ast.ClassDef):
            yield from _functions(child, f"{prefix}{child.name}.")
        elif not isinstance(child, ast.expr):
            yield from _functions(child, prefix)  # if/try/with/for/match blocks at this level


def _pair(lines: list[str], node: _Function, qualname: str, relpath: str, package: str,
          skipped: Counter[str]) -> CodePair | None:
    docstring = ast.get_docstring(node, clean=True)
    if not docstring:
        return None
    if node.name.startswith("__") and node.name.endswith("__"):
        skipped["dunder"] += 1
        return None
    query = first_paragraph(docstring)
    if len(query.split()) < MIN_QUERY_WORDS:
        skipped["short_query"] += 1
        return None
    rest = node.body[1:]
    if all(_is_stub(statement) for statement in rest):
        skipped["stub"] += 1
        return None
    document = _code_without_docstring(lines, node)
    if document is None or sum(1 for line in document.splitlines() if line.strip()) < \
            MIN_DOCUMENT_LINES:
        skipped["short_body"] += 1
        return None
    return CodePair(query=query, positive=document, package=package, id=f"{relpath}:{qualname}")


def _is_stub(statement: ast.stmt) -> bool:
    if isinstance(statement, ast.Pass):
        return True
    if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
        return statement.value.value is Ellipsis
    if isinstance(statement, ast.Raise) and statement.exc is not None:
        exc = statement.exc.func if isinstance(statement.exc, ast.Call) else statement.exc
        return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"
    return False


def _code_without_docstring(lines: list[str], node: _Function) -> str | None:
    """The function's code from ``def`` to its end (``ast.get_source_segment(source, node,
    padded=True)``), its docstring's lines removed, dedented by the ``def``'s indentation;
    None when the docstring shares a line with other code.

    ``lines``: the module's lines, without their line ends.
    """
    doc = node.body[0]
    if node.end_lineno is None or node.end_col_offset is None or doc.end_lineno is None:
        return None
    first, last = doc.lineno - node.lineno, doc.end_lineno - node.lineno
    if first == 0 or (len(node.body) > 1 and node.body[1].lineno <= doc.end_lineno):
        return None  # def f(): "doc"  /  "doc"; x = 1
    segment = lines[node.lineno - 1 : node.end_lineno]
    # The last line ends at the function's end (offsets count UTF-8 bytes).
    segment[-1] = segment[-1].encode()[: node.end_col_offset].decode(errors="ignore")
    rest = segment[last + 1 :]
    while rest and not rest[0].strip():  # the blank line that set the docstring apart
        rest.pop(0)
    kept = segment[:first] + rest
    indent = node.col_offset  # the def's indentation: spaces or tabs, one byte each
    dedented = [line[indent:] if not line[:indent].strip() else line for line in kept]
    return "\n".join(dedented).rstrip()


# --- the walk ---------------------------------------------------------------------------------


def default_roots() -> list[Path]:
    """The running interpreter's standard library and installed packages (purelib, platlib)."""
    paths = sysconfig.get_paths()
    roots: list[Path] = []
    for key in ("stdlib", "purelib", "platlib"):
        folder = Path(paths[key]).resolve()
        if folder.is_dir() and folder not in roots:
            roots.append(folder)
    return roots


@dataclass(frozen=True)
class SourceFile:
    """One ``.py`` file to read: where it is and which top-level package it belongs to.

    ``relpath``: its path under its root, POSIX style; under the root's parent when the root
    is itself a package (holds ``__init__.py``), so that the package is the root's name.
    """

    path: Path
    relpath: str
    root_index: int

    @property
    def package(self) -> str:
        return package_of(self.relpath)


def package_of(relpath: str) -> str:
    """The top-level package of a path under a root: its first component (``.py`` removed)."""
    head = relpath.split("/", 1)[0]
    return head.removesuffix(".py")


def source_files(roots: Sequence[Path]) -> list[SourceFile]:
    """Every ``.py`` file under ``roots`` that the rules keep, sorted by path under its root,
    then by root order. A folder that is another root is left to that root's walk."""
    resolved = [Path(root).resolve() for root in roots]
    found = []
    for index, root in enumerate(resolved):
        base = root.parent if (root / "__init__.py").is_file() else root
        others = {other for other in resolved if other != root}
        for folder, dirnames, filenames in os.walk(root):
            here = Path(folder)
            dirnames[:] = sorted(name for name in dirnames
                                 if _walk_into(name) and here / name not in others)
            for name in sorted(filenames):
                if name.endswith(".py") and _read_file(name):
                    path = here / name
                    found.append(SourceFile(path, path.relative_to(base).as_posix(), index))
    found.sort(key=lambda file: (file.relpath.split("/"), file.root_index))
    return found


def _walk_into(name: str) -> bool:
    lower = name.lower()
    return not (lower in _SKIPPED_FOLDERS or name.startswith(".") or lower.endswith("_test")
                or lower.endswith("_tests"))


def _read_file(name: str) -> bool:
    return not (name.startswith("test_") or name.endswith("_test.py") or name == "conftest.py")


def scan(
    roots: Sequence[Path], *, progress: Callable[[str], None] | None = None,
    every_s: float = 5.0,
) -> tuple[list[CodePair], ScanCounts]:
    """The de-duplicated pairs of every kept file under ``roots``, in walk order."""
    counts = ScanCounts()
    seen: set[bytes] = set()
    ids: Counter[str] = Counter()
    pairs: list[CodePair] = []
    files = source_files(roots)
    last = time.monotonic()
    for done, file in enumerate(files, start=1):
        counts.files["scanned"] += 1
        for pair in _file_pairs(file, counts):
            key = hashlib.sha256(
                f"{' '.join(pair.query.split())}\0{' '.join(pair.positive.split())}".encode()
            ).digest()
            if key in seen:
                counts.skipped["duplicate"] += 1
                continue
            seen.add(key)
            ids[pair.id] += 1
            if ids[pair.id] > 1:
                pair = CodePair(pair.query, pair.positive, pair.package,
                                f"{pair.id}#{ids[pair.id]}")
            pairs.append(pair)
        if progress is not None and time.monotonic() - last >= every_s:
            last = time.monotonic()
            progress(f"{done:,}/{len(files):,} files scanned, {len(pairs):,} pairs "
                     f"(now in {file.package})")
    return pairs, counts


def _file_pairs(file: SourceFile, counts: ScanCounts) -> list[CodePair]:
    try:
        data = file.path.read_bytes()
    except OSError:
        counts.files["unreadable"] += 1
        return []
    try:
        source = importlib.util.decode_source(data)
        pairs = extract_pairs(source, relpath=file.relpath, package=file.package, counts=counts)
    except (SyntaxError, ValueError, UnicodeDecodeError, RecursionError, LookupError):
        counts.files["not_parsed"] += 1  # Python 2, templates, bad encodings, null bytes
        return []
    counts.files["parsed"] += 1
    return pairs


# --- the split --------------------------------------------------------------------------------


def split_order(package: str) -> str:
    """A package's place in the held-out walk: a SHA-256 of its name (no randomness)."""
    return hashlib.sha256(f"{SPLIT_SALT}\0{package}".encode()).hexdigest()


def held_out_packages(
    pairs_per_package: Mapping[str, int], test_fraction: float = TEST_FRACTION
) -> frozenset[str]:
    """The packages whose pairs are the test side.

    Packages are taken in :func:`split_order`; each is held out unless that would take the
    held-out share of all pairs above ``4/3 × test_fraction`` (10% for the default 7.5%), and
    the walk stops as soon as the share reaches ``test_fraction``. When that holds out nothing
    (every package too large) and there are two packages or more, the package with the fewest
    pairs (ties: the first in split order) is held out alone. One package: nothing is held out.
    """
    if not 0.0 < test_fraction < 0.5:
        raise ValueError(f"test_fraction must be in (0, 0.5), got {test_fraction}")
    total = sum(pairs_per_package.values())
    order = sorted(pairs_per_package, key=split_order)
    held: list[str] = []
    held_pairs = 0
    for package in order:
        if held_pairs >= test_fraction * total:
            break
        size = pairs_per_package[package]
        if 3 * (held_pairs + size) <= 4 * test_fraction * total + 1e-9:
            held.append(package)
            held_pairs += size
    if not held and len(order) >= 2:
        held.append(min(order, key=lambda package: pairs_per_package[package]))
    return frozenset(held)


# --- the files --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PysourceResult:
    """What :func:`build_pysource` wrote: the folder and its ``stats.json`` content."""

    out: Path
    stats: dict[str, Any]


def check_output(out: str | Path, *, overwrite: bool) -> Path:
    """``out`` as a folder that may be (re)written: new, empty, or replaced by ``overwrite``."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise DataError(path, "-o names a file, not a folder",
                        "give a folder for train.jsonl, test.jsonl and stats.json")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise DataError(path, "the output folder is not empty",
                        "choose a new or empty folder with -o, or pass --overwrite to replace it")
    return path


def check_roots(roots: Sequence[str | Path]) -> list[Path]:
    """The roots as resolved folders; a ``DataError`` naming a missing one."""
    checked = []
    for root in roots:
        path = Path(root).expanduser()
        if not path.is_dir():
            raise DataError(path, "--root is not a folder",
                            "give a folder that holds Python packages or modules")
        checked.append(path.resolve())
    return checked


def build_pysource(
    out: str | Path,
    roots: Sequence[str | Path] | None = None,
    *,
    overwrite: bool = False,
    test_fraction: float = TEST_FRACTION,
    progress: Callable[[str], None] | None = None,
) -> PysourceResult:
    """Scan ``roots`` (default :func:`default_roots`), split, and write the pairs to ``out``.

    Everything is written to a temporary folder beside ``out`` and renamed into place at the
    end, so an interrupted build leaves ``out`` as it was. Two builds from the same files
    write byte-identical files.
    """
    target = check_output(out, overwrite=overwrite)
    root_paths = check_roots(roots) if roots else default_roots()
    if not 0.0 < test_fraction < 0.5:
        raise DataError(None, f"--test-fraction {test_fraction} is out of range",
                        "give a fraction between 0 and 0.5, e.g. 0.075")
    scratch = _scratch_folder(target)  # before the long walk: an unwritable -o fails now
    try:
        pairs, counts = scan(root_paths, progress=progress)
        per_package = Counter(pair.package for pair in pairs)
        test_packages = held_out_packages(per_package, test_fraction) if pairs else frozenset()
        digests = {
            name: _write_rows(scratch / name, (p for p in pairs
                                               if (p.package in test_packages) == held))
            for name, held in (("train.jsonl", False), ("test.jsonl", True))
        }
        stats = _stats(root_paths, pairs, per_package, test_packages, test_fraction, counts,
                       digests)
        (scratch / "stats.json").write_text(json.dumps(stats, indent=2) + "\n",
                                            encoding="utf-8")
        _replace(scratch, target)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return PysourceResult(target, stats)


def _scratch_folder(target: Path) -> Path:
    """An empty folder beside ``target`` (same file system, so the final rename is atomic)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    except OSError as error:
        raise DataError(target, f"cannot write there ({error.strerror or error})",
                        "choose a folder you can write to with -o") from error


def _write_rows(path: Path, pairs: Iterator[CodePair]) -> str:
    digest = hashlib.sha256()
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for pair in pairs:
            line = json.dumps(pair.row(), ensure_ascii=False) + "\n"
            handle.write(line)
            digest.update(line.encode("utf-8"))
    return digest.hexdigest()


def _replace(scratch: Path, target: Path) -> None:
    """Move the finished folder into place (an existing ``target`` was checked replaceable)."""
    if target.is_dir():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
        os.replace(scratch, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(scratch, target)
    with contextlib.suppress(OSError):
        target.chmod(0o755)  # mkdtemp made it private


def _stats(roots: Sequence[Path], pairs: Sequence[CodePair], per_package: Mapping[str, int],
           test_packages: frozenset[str], test_fraction: float, counts: ScanCounts,
           digests: Mapping[str, str]) -> dict[str, Any]:
    test_pairs = sum(per_package[name] for name in test_packages)
    combined = hashlib.sha256("".join(f"{name} {digests[name]}\n" for name in sorted(digests))
                              .encode()).hexdigest()
    return {
        "format": FORMAT,
        "python": ".".join(map(str, sys.version_info[:3])),
        "roots": [str(root) for root in roots],
        "pairs": {"train": len(pairs) - test_pairs, "test": test_pairs, "all": len(pairs)},
        "packages": {"train": len(per_package) - len(test_packages),
                     "test": len(test_packages), "all": len(per_package)},
        "test_packages": sorted(test_packages),
        "split": {"rule": "packages in order of sha256(salt, name); each held out unless the "
                          "held-out share would exceed 4/3 of test_fraction; stop when the "
                          "share reaches test_fraction",
                  "salt": SPLIT_SALT, "test_fraction": test_fraction},
        "rules": {"min_query_words": MIN_QUERY_WORDS, "min_document_lines": MIN_DOCUMENT_LINES},
        "files": {key: counts.files[key] for key in ("scanned", "parsed", "not_parsed",
                                                     "unreadable")},
        "skipped_functions": {key: counts.skipped[key] for key in
                              ("duplicate", "short_query", "short_body", "stub", "dunder")},
        "pairs_per_package": dict(sorted(per_package.items())),
        "sha256": dict(sorted(digests.items())),
        "digest": combined,
    }


def describe_result(result: PysourceResult, stream: TextIO) -> None:
    """The few lines ``dist-contrast data pysource`` prints at the end."""
    stats = result.stats
    pairs, packages = stats["pairs"], stats["packages"]
    print(f"wrote {pairs['all']:,} pairs from {packages['all']:,} packages to {result.out}",
          file=stream)
    print(f"  train.jsonl: {pairs['train']:,} pairs, {packages['train']:,} packages", file=stream)
    print(f"  test.jsonl : {pairs['test']:,} pairs, {packages['test']:,} held-out packages",
          file=stream)
    files = stats["files"]
    print(f"  {files['scanned']:,} files scanned, {files['not_parsed']:,} not parsed, "
          f"{files['unreadable']:,} unreadable; {stats['skipped_functions']['duplicate']:,} "
          "duplicate pairs dropped", file=stream)
    if packages["all"] < 2:
        print("  warning: fewer than two packages, so nothing is held out; add a --root",
              file=stream)
