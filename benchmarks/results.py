"""What every benchmark suite writes: the machine, each figure with its repeats, the load.

A suite's results are one JSON file, ``benchmarks/results/<suite>-<machine>.json``::

    {"suite": "train", "machine": {...}, "quick": false, "started": "...", "seconds": 812.4,
     "load": {"start": [1.6, 1.7, 1.6], "end": [...]}, "notes": [...],
     "tables": {"<table>": {"title": ..., "columns": [...], "rows": [{...}, ...]}},
     "series": {"<figure data>": ...}}

A measured figure is a :class:`Stat`: every repeat, with min, median and max (and, for a ratio
of interleaved repeats, the ratio of each pair). Nothing here times anything.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SUITES = ("loss", "mining", "train")
VERSIONED = ("torch", "deepspeed", "ray", "faiss-cpu", "faiss-gpu", "mlflow",
             "pytorch-metric-learning")


@dataclass(frozen=True)
class Stat:
    """One measured quantity: its repeats and their min, median, max."""

    values: tuple[float, ...]
    unit: str = ""

    @classmethod
    def of(cls, values: Sequence[float], unit: str = "") -> Stat:
        if not values:
            raise ValueError("a Stat needs at least one value")
        return cls(tuple(float(v) for v in values), unit)

    @property
    def median(self) -> float:
        return float(statistics.median(self.values))

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    @property
    def spread(self) -> float:
        """(max − min) / median: the run's relative spread."""
        return (self.max - self.min) / self.median if self.median else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.min, "max": self.max, "n": len(self.values),
                "values": list(self.values), "unit": self.unit}


def ratio(numerators: Sequence[float], denominators: Sequence[float]) -> Stat:
    """Pairwise ratios of interleaved repeats (A₁/B₁, A₂/B₂, …): a busy moment on a shared
    machine hits both members of a pair."""
    if len(numerators) != len(denominators) or not numerators:
        raise ValueError("ratio needs two equally long, non-empty lists")
    return Stat.of([a / b for a, b in zip(numerators, denominators, strict=True)], "×")


def is_stat(value: Any) -> bool:
    return isinstance(value, dict) and {"median", "min", "max", "values"} <= value.keys()


# ----------------------------------------------------------------------------- the machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    from dist_contrast.preflight.resources import meminfo

    return meminfo("MemTotal")


def _gpu() -> dict[str, Any] | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
            "memory_bytes": int(props.total_memory)}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def describe_machine(lightly: str | None = None) -> dict[str, Any]:
    """CPU model, cores, memory, GPU (if any) and the versions that set the numbers;
    ``lightly`` is the lightly version in use, or why it is not."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    versions.update({name: _version(name) for name in VERSIONED})
    versions["lightly"] = lightly
    cores = os.cpu_count() or 1
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = cores
    return {
        "cpu": _cpu_model(), "logical_cores": cores, "usable_cores": usable,
        "memory_bytes": _memory_bytes(), "gpu": _gpu(), "platform": platform.platform(),
        "versions": {k: v for k, v in versions.items() if v is not None},
    }


def machine_slug(machine: dict[str, Any]) -> str:
    """The file-name part naming the machine: ``cpu-<model>-<cores>c`` or ``gpu-<name>``."""
    if machine.get("gpu"):
        name, count = machine["gpu"]["name"], machine["gpu"]["count"]
        return f"gpu-{_slug(name)}" + (f"-x{count}" if count > 1 else "")
    model = re.sub(r"\(r\)|\(tm\)|processor|cpu|@.*", "", machine["cpu"].lower())
    return f"cpu-{_slug(model)}-{machine['usable_cores']}c"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages: other work on a shared machine skews timings."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# ----------------------------------------------------------------------------- a suite's file


@dataclass
class SuiteResult:
    """What one suite measured, written as one JSON file."""

    suite: str
    quick: bool
    machine: dict[str, Any]
    started: float
    tables: dict[str, dict[str, Any]]
    series: dict[str, Any]
    notes: list[str]
    load: dict[str, list[float]]

    @classmethod
    def start(cls, suite: str, quick: bool, machine: dict[str, Any]) -> SuiteResult:
        return cls(suite, quick, machine, time.time(), {}, {}, [],
                   {"start": load_average()})

    def table(self, name: str, title: str, columns: list[str]) -> list[dict[str, Any]]:
        """A new table; returns its list of rows to append to (a row maps column → value:
        a number, a string, a Stat, or None for 'not measured')."""
        rows: list[dict[str, Any]] = []
        self.tables[name] = {"title": title, "columns": columns, "rows": rows}
        return rows

    def to_json(self) -> dict[str, Any]:
        self.load.setdefault("end", load_average())
        return {
            "suite": self.suite, "quick": self.quick, "machine": self.machine,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.started)),
            "seconds": round(time.time() - self.started, 1), "load": self.load,
            "notes": self.notes, "tables": _plain(self.tables), "series": _plain(self.series),
        }


def _plain(value: Any) -> Any:
    """Stats become their JSON form, recursively."""
    if isinstance(value, Stat):
        return value.to_json()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value != value:
        return None  # NaN is not JSON
    return value


def result_path(out: Path, suite: str, machine: dict[str, Any]) -> Path:
    return out / f"{suite}-{machine_slug(machine)}.json"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Whole or not at all: written beside the target, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=1, sort_keys=False, allow_nan=False) + "\n")
    partial.replace(path)


def read_results(folder: Path) -> list[dict[str, Any]]:
    """Every suite file in ``folder``, by suite then machine."""
    found = []
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and data.get("suite") in SUITES:
            data["_file"] = path.name
            found.append(data)
    return found


def run_python(python: str, args: list[str], env: dict[str, str] | None = None,
               timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """Run a benchmark helper with ``python`` (this interpreter or a tool venv's), with the
    repository on its path."""
    full_env = dict(os.environ if env is None else env)
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), full_env.get("PYTHONPATH", "")) if p)
    full_env.setdefault("DS_ACCELERATOR", "cpu")
    return subprocess.run([python, *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, check=False)


def this_python() -> str:
    return sys.executable
