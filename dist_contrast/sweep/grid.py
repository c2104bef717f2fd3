"""A sweep's trials: the product of the grid over each config, times the seeds, each validated.

Pure functions of the config files and the command line: nothing starts, nothing is logged.
A config file may carry its own grid in a top-level ``sweep:`` block (``train`` ignores it)::

    sweep:
      grid:
        loss.temperature: [0.07, 0.2, 0.5]

``--grid KEY=V1,V2`` on the command line adds keys to every config's grid (or replaces them).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dist_contrast.config import (
    Config,
    apply_overrides,
    parse_override,
    read_yaml,
    strip_sweep_block,
    validate,
)
from dist_contrast.errors import UserError
from dist_contrast.objectives import get_objective

TAU = "loss.temperature"
SEED = "experiment.seed"


@dataclass(frozen=True)
class Trial:
    """One child run: a config file at one grid point with one seed."""

    source: str  # the config file
    point: tuple[tuple[str, Any], ...]  # (key, value) in grid order, τ dropped for τ-free losses
    seed: int
    run_name: str
    config: Config

    @property
    def label(self) -> str:
        """How the terminal names the trial: its file, grid values and seed."""
        values = " ".join(f"{_short(k)}={_show(v)}" for k, v in self.point)
        return f"{Path(self.source).stem}{' ' + values if values else ''} seed={self.seed}"

    def tags(self) -> dict[str, str]:
        """The trial's grid values and seed, as MLflow tags of its child run."""
        tags = {f"dist_contrast.grid.{k}": _show(v) for k, v in self.point}
        tags["dist_contrast.grid.seed"] = str(self.seed)
        tags["dist_contrast.sweep.config"] = self.source
        return tags


def split_values(text: str) -> list[str]:
    """``'0.1,[a,b],0.5'`` -> ``['0.1', '[a,b]', '0.5']``: commas inside brackets stay."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p.strip() for p in parts]


def parse_grid(texts: Sequence[str]) -> dict[str, list[Any]]:
    """``['loss.temperature=0.1,0.2']`` -> ``{'loss.temperature': [0.1, 0.2]}`` (values as YAML,
    like an override's)."""
    grid: dict[str, list[Any]] = {}
    for text in texts:
        key, sep, raw = text.partition("=")
        values = split_values(raw) if sep else []
        if not key or not values or any(v == "" for v in values):
            raise UserError(f"--grid '{text}' is not of the form section.key=V1,V2,... "
                            "(e.g. --grid loss.temperature=0.1,0.2,0.5)")
        if key in grid:
            raise UserError(f"--grid names '{key}' twice; give all its values in one --grid")
        grid[key] = [parse_override(f"{key}={v}")[1] for v in values]
    return grid


def file_grid(raw: Mapping[str, Any], source: str) -> dict[str, list[Any]]:
    """The ``sweep.grid`` block of a config file (empty when there is none)."""
    block = raw.get("sweep") or {}
    grid = block.get("grid", {}) if isinstance(block, dict) else None
    unknown = set(block) - {"grid"} if isinstance(block, dict) else set()
    if grid is None or unknown or not isinstance(grid, dict) or not all(
        isinstance(v, list) and v for v in grid.values()
    ):
        raise UserError(f"{source}: the sweep block must be 'sweep: {{grid: {{KEY: [V1, V2, "
                        "...]}}}}' with a non-empty list per key")
    return {str(k): list(v) for k, v in grid.items()}


def expand(
    sources: Sequence[str],
    cli_grid: Mapping[str, list[Any]],
    *,
    seeds: int,
    overrides: Sequence[str],
    name: str,
) -> list[Trial]:
    """Every trial of the sweep, each config validated; one bad point raises a ``UserError``
    naming it (nothing has started). Points that differ only in τ for a loss without a
    temperature are one trial."""
    trials: dict[str, Trial] = {}
    for source in sources:
        raw = read_yaml(source)
        grid = {**file_grid(raw, source), **cli_grid}
        base = apply_overrides(strip_sweep_block(raw), list(overrides))
        keys = list(grid)
        for values in itertools.product(*(grid[k] for k in keys)):
            point = tuple(zip(keys, values, strict=True))
            config = _validate_point(base, point, source)
            if not get_objective(config.loss.name).uses_temperature:
                point = tuple((k, v) for k, v in point if k != TAU)
            for offset in range(seeds):
                seed = config.experiment.seed + offset
                run_name = trial_name(name, source, point, seed)
                if run_name in trials:
                    continue
                seeded = config.model_copy(update={"experiment": config.experiment.model_copy(
                    update={"seed": seed, "run_name": run_name})})
                trials[run_name] = Trial(source, point, seed, run_name, seeded)
    if not trials:
        raise UserError("the sweep has no trials; give a CONFIG and --grid values")
    experiments = {t.config.tracking.experiment for t in trials.values()}
    if len(experiments) > 1:
        raise UserError(f"the configs of one sweep log to different MLflow experiments "
                        f"({', '.join(sorted(experiments))}); give them one experiment.name")
    return list(trials.values())


def _validate_point(
    base: dict[str, Any], point: tuple[tuple[str, Any], ...], source: str
) -> Config:
    where = ", ".join(f"{k}={_show(v)}" for k, v in point) or "the base config"
    if any(k in (SEED, "experiment.run_name") for k, _ in point):
        raise UserError("the grid may not set experiment.seed or experiment.run_name; use "
                        "--seeds N and --name")
    try:
        raw = apply_overrides(base, [f"{k}={json.dumps(v)}" for k, v in point])
        return validate(raw, source=f"{source} at grid point {where}")
    except UserError as exc:
        raise UserError(f"{exc}; nothing was started (fix the grid or the config)") from None


def trial_name(name: str, source: str, point: tuple[tuple[str, Any], ...], seed: int) -> str:
    """A stable run name (a re-run of the sweep finds its children by it)."""
    values = "_".join(f"{_short(k)}={_show(v)}" for k, v in point)
    text = "_".join(p for p in (name, Path(source).stem, values, f"seed={seed}") if p)
    return re.sub(r"[^A-Za-z0-9._=+-]", "-", text)


def digest(trials: Sequence[Trial]) -> str:
    """Identifies a sweep's trials (names and configs), to tell a resume from a name clash.
    The order does not count: the same configs given in another order are the same sweep."""
    text = json.dumps(sorted((t.run_name, t.config.model_dump(mode="json")) for t in trials),
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def describe_grid(sources: Sequence[str], cli_grid: Mapping[str, list[Any]]) -> str:
    """The grid per config file, as one YAML-ish line for the parent run."""
    parts = []
    for source in sources:
        grid = {**file_grid(read_yaml(source), source), **cli_grid}
        parts.append(f"{source}: {yaml.safe_dump(grid, default_flow_style=True).strip()}")
    return "; ".join(parts)


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return str(value)
