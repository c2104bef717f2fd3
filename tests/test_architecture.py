"""The import rules of docs/architecture.md, checked on the source: each layer imports only the
layers below it, and each outside dependency stays in its lane."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dist_contrast"

# What each part of the package may import from the package (besides itself). Keep in step with
# the table in docs/architecture.md.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "section": set(),
    # Config values that name files, and their resolution against the working directory.
    "paths": set(),
    "dist": set(),
    "losses": set(),
    "analysis": {"losses"},
    # Retrieval evaluation: ranking metrics, dense search, BM25, fusion (pure, no training).
    "retrieval": set(),
    # Text features: the tokenizer (trained or loaded), the hashed bag of n-grams, the
    # sentence-transformers export. Words are split as the BM25 baseline splits them.
    "text": {"retrieval"},
    "data": {"section", "paths", "errors"},
    "models": {"section", "paths", "text"},
    "negatives": {"losses", "dist", "section", "paths", "retrieval"},
    "objectives": {"losses", "negatives"},
    "temperature": set(),
    "config": {"data", "models", "negatives", "objectives", "section", "errors", "paths"},
    "tracking": {"errors"},
    "plots": set(),
    "progress": set(),
    # Wall-clock marks of a run's phases for dist-contrast bench (off unless asked).
    "timing": set(),
    "train": {"dist", "config", "data", "models", "losses", "negatives", "objectives",
              "analysis", "temperature", "tracking", "errors", "plots", "timing", "retrieval",
              "text"},
    "preflight": {"config", "data", "errors", "models", "negatives", "objectives", "train"},
    # Loading an encoder from a checkpoint or MLflow, embedding files, evaluating an encoder.
    "serving": {"config", "data", "models", "errors", "tracking", "train", "retrieval"},
    # The driver: the run's plan, Ray started or joined, the MLflow run, signals, failures.
    "driver": {"config", "data", "errors", "objectives", "paths", "preflight", "progress",
               "tracking", "train", "timing"},
    # Reading finished runs back from MLflow: the comparison of a sweep's grid points.
    "compare": {"errors", "objectives", "tracking"},
    # A grid of trainings: the trials (pure), then each one run through the driver on Ray.
    "sweep": {"config", "driver", "errors", "objectives", "progress", "tracking", "train"},
    # Ray jobs from outside the cluster: `dist-contrast submit` and `dist-contrast jobs`.
    "jobs": {"config", "driver", "errors", "tracking"},
    "cli": {"config", "driver", "errors", "objectives", "serving", "compare", "sweep",
            "tracking", "jobs", "data"},
}

# Outside dependencies and the parts allowed to import them.
LANES: dict[str, set[str]] = {
    "torch.distributed": {"dist"},
    "ray": {"driver", "train", "jobs"},
    "deepspeed": {"train"},
    # train: train/model.py logs the trained encoder as an MLflow model (pt2) at the end of a run.
    "mlflow": {"tracking", "train", "serving", "compare"},
    "faiss": {"negatives", "analysis", "retrieval"},
    "bm25s": {"retrieval"},
    "tokenizers": {"text"},
    "transformers": {"text", "models"},
    "sentence_transformers": {"text"},
}


def _part(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py") if relative.parts[0] != "__init__.py" else ""


def _target(name: str) -> str:
    """The part an import of ``dist_contrast.<name>`` reaches."""
    return name.split(".", 2)[1]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if _part(p))
PARTS = {_part(p) for p in SOURCES}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_layers(path: Path) -> None:
    part = _part(path)
    assert part in ALLOWED, f"{part} is not in the layer table; add it (and to the docs)"
    for name in _imports(path):
        if name.startswith("dist_contrast."):
            target = _target(name)
            if target not in PARTS:  # an attribute of the package root (__version__)
                continue
            assert target == part or target in ALLOWED[part], f"{part} imports {name}"
        for lane, owners in LANES.items():
            if name == lane or name.startswith(lane + "."):
                assert part in owners, f"{part} imports {name} (only {sorted(owners)} may)"


def _loss_name_branches(tree: ast.AST, names: set[str]) -> list[int]:
    """Lines that compare with a loss name or test a loss-name prefix."""
    lines = []
    for node in ast.walk(tree):
        constants: list[ast.expr] = []
        if isinstance(node, ast.Compare):
            constants = [node.left, *node.comparators]
            constants += [e for c in node.comparators if isinstance(c, ast.Tuple | ast.Set |
                          ast.List) for e in c.elts]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "startswith"):
            constants = list(node.args)
            if any(isinstance(c, ast.Constant) and isinstance(c.value, str)
                   and any(n.startswith(c.value) for n in names) for c in constants):
                lines.append(node.lineno)
            continue
        if any(isinstance(c, ast.Constant) and c.value in names for c in constants):
            lines.append(node.lineno)
    return lines


def test_no_code_outside_losses_and_objectives_branches_on_a_loss_name() -> None:
    from dist_contrast.objectives import LOSS_NAMES

    for path in SOURCES:
        if _part(path) in {"losses", "objectives"}:
            continue
        branches = _loss_name_branches(ast.parse(path.read_text()), set(LOSS_NAMES))
        assert not branches, f"{path.relative_to(PACKAGE)} lines {branches} branch on a loss name"


def test_the_branch_finder_finds_a_branch() -> None:
    tree = ast.parse('if cfg.loss.name == "supcon" or name.startswith("nce"):\n    pass\n')
    assert _loss_name_branches(tree, {"supcon", "nce_focal"}) == [1, 1]
