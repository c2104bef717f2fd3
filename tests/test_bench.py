"""``benchmarks/bench.py``: docs/benchmarks.md's tables match the committed JSON, the report's
formatting, the start-up marks, and (with Ray) a ``--quick`` run of every suite writes well-formed
JSON, tables and figures. Timings are never checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dist_contrast import timing
from tests.benchmark_scripts import load_benchmark
from tests.conftest import cli_env

ROOT = Path(__file__).resolve().parents[1]


def test_readme_matches_the_committed_results() -> None:
    report = load_benchmark("report")
    readme = report.TARGET.read_text()  # docs/benchmarks.md, linked from the README
    assert report.BEGIN in readme and report.END in readme
    assert report.rewrite(readme, report.generated_section()) == readme, (
        "docs/benchmarks.md's tables differ from benchmarks/results/*.json; run "
        "python benchmarks/report.py --write")
    for data in load_benchmark("results").read_results(ROOT / "benchmarks" / "results"):
        for name in load_benchmark("figures").figure_names(data):
            slug = load_benchmark("results").machine_slug(data["machine"])
            assert (ROOT / "benchmarks" / "results" / "figures" / f"{name}-{slug}.png").is_file()


def test_a_stat_keeps_its_repeats_and_a_ratio_pairs_them() -> None:
    results = load_benchmark("results")
    stat = results.Stat.of([3.0, 1.0, 2.0], "ms")
    assert (stat.min, stat.median, stat.max) == (1.0, 2.0, 3.0)
    assert stat.to_json()["values"] == [3.0, 1.0, 2.0] and stat.spread == pytest.approx(1.0)
    pairs = results.ratio([2.0, 3.0], [1.0, 2.0])
    assert pairs.values == (2.0, 1.5) and pairs.unit == "×"
    with pytest.raises(ValueError):
        results.ratio([1.0], [1.0, 2.0])


def test_the_report_writes_median_and_range_and_keeps_the_rest_of_the_readme() -> None:
    report = load_benchmark("report")
    stat = load_benchmark("results").Stat.of([1.2, 1.0, 1.1], "×").to_json()
    assert report.cell(stat) == "1.10× (1.00–1.20)"
    assert report.cell(None) == "—" and report.cell(262144) == "262,144"
    table = {"title": "t", "columns": ["a", "b"], "rows": [{"a": "x|y", "b": stat}]}
    assert report.table_markdown(table).splitlines()[-1] == "| x\\|y | 1.10× (1.00–1.20) |"
    text = f"before\n{report.BEGIN}\nold\n{report.END}\nafter\n"
    assert report.rewrite(text, "NEW") == "before\nNEW\nafter\n"


def test_timing_marks_are_written_only_when_asked(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "marks.jsonl"
    monkeypatch.delenv(timing.ENV, raising=False)
    timing.mark("nothing")
    assert not path.exists()
    monkeypatch.setenv(timing.ENV, str(path))
    monkeypatch.setenv("RANK", "1")
    timing.mark("data")
    mark = json.loads(path.read_text())
    assert mark["phase"] == "data" and mark["rank"] == 1 and mark["pid"] == os.getpid()


def test_bench_refuses_an_unwritable_out_in_one_line() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--suite",
                           "loss", "--out", "/proc/no-such-dir/bench"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1 and "--out" in err and "Traceback" not in err


def _stats(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, dict):
        if {"median", "min", "max", "values"} <= value.keys():
            return [value]
        return [s for v in value.values() for s in _stats(v)]
    if isinstance(value, list):
        return [s for v in value for s in _stats(v)]
    return []


@pytest.mark.ray
@pytest.mark.timeout(1800)
def test_quick_bench_writes_well_formed_results(tmp_path: Path) -> None:
    import matplotlib.image

    env = cli_env(PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--quick",
                           "--out", str(tmp_path)], env=env, cwd=tmp_path, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report, figures = load_benchmark("report"), load_benchmark("figures")
    found = load_benchmark("results").read_results(tmp_path)
    assert sorted(d["suite"] for d in found) == ["loss", "mining", "train"]
    for data in found:
        machine = data["machine"]
        assert machine["cpu"] and machine["logical_cores"] >= 1 and machine["memory_bytes"] > 0
        assert {"torch", "deepspeed", "ray", "mlflow"} <= machine["versions"].keys()
        assert data["quick"] is True and len(data["load"]["start"]) == 3
        assert data["tables"], data["suite"]
        for table in data["tables"].values():
            assert table["rows"] and all(set(row) <= set(table["columns"])
                                         for row in table["rows"])
        stats = _stats(data["tables"]) + _stats(data["series"])
        assert stats
        for stat in stats:
            assert stat["n"] == len(stat["values"]) >= 1
            assert stat["min"] <= stat["median"] <= stat["max"]
        markdown = (tmp_path / data["_file"]).with_suffix(".md").read_text()
        header_lines = [line for line in markdown.splitlines() if line.startswith("|---")]
        assert len(header_lines) == len(data["tables"])
        for name in figures.figure_names(data):
            slug = load_benchmark("results").machine_slug(machine)
            path = tmp_path / report.FIGURES / f"{name}-{slug}.png"
            image = matplotlib.image.imread(path)
            assert image.shape[0] > 100 and image.shape[1] > 100 and path.stat().st_size < 200_000
        assert figures.figure_names(data)
    train = next(d for d in found if d["suite"] == "train")
    startup = {row["phase"]: row["seconds"] for row in train["tables"]["startup"]["rows"]}
    # Every phase of the real dist-contrast train was marked, in order.
    assert all(startup[label] is not None for label in startup if not label.startswith("after"))
    overhead = {row["loop"]: row for row in train["tables"]["overhead"]["rows"]}
    assert any("Ray" in loop and row["vs plain DDP"] for loop, row in overhead.items())
