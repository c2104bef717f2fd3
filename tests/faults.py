"""Non-finite losses on purpose, through the objective registry (no hook in the trainer).

:func:`nan_at_steps` re-registers an objective so that its loss is NaN at chosen steps: the
trainer sees exactly what a diverging loss gives it. In a process the test controls (a gloo
rank), call it directly; for processes it does not (the CLI's Ray workers),
:func:`nan_plugin` writes a ``sitecustomize`` that does it at interpreter start in every process
whose ``PYTHONPATH`` names its folder.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def nan_at_steps(name: str, steps: Collection[int]) -> None:
    """Make objective ``name`` return NaN at optimiser steps ``steps`` (1-based) in this process.

    The trainer computes the objective once per step, so the calls are counted from the first
    step this process takes (a process that resumes mid-run counts from its first step)."""
    from dist_contrast.objectives import get_objective, register_objective

    base = get_objective(name)
    calls = itertools.count(1)
    chosen = frozenset(steps)

    def compute(inputs: Any, temperature: Any, **options: Any) -> Any:
        loss = base.compute(inputs, temperature, **options)
        return loss * float("nan") if next(calls) in chosen else loss

    register_objective(name, dataclasses.replace(base, compute=compute), replace=True)


def nan_plugin(folder: Path, steps: Mapping[str, Collection[int]]) -> dict[str, str]:
    """A ``sitecustomize`` in ``folder`` that applies :func:`nan_at_steps` to each objective of
    ``steps`` (name -> steps); returns the environment that loads it (``PYTHONPATH``)."""
    folder.mkdir(parents=True, exist_ok=True)
    calls = "\n".join(f"nan_at_steps({name!r}, {sorted(chosen)!r})"
                      for name, chosen in steps.items())
    (folder / "sitecustomize.py").write_text(
        f"from tests.faults import nan_at_steps\n\n{calls}\n"
    )
    return {"PYTHONPATH": f"{folder}:{ROOT}"}
