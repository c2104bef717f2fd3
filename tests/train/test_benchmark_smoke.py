"""benchmarks/determinism.py --quick, benchmarks/grad_cache.py and benchmarks/fast_scan.py run
end to end and print their tables (smoke tests, not timings)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_determinism_benchmark_quick_run() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "determinism.py"), "--quick"],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
        env={**os.environ, "DS_ACCELERATOR": "cpu"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| synthetic.yaml")]
    assert len(rows) == 1 and rows[0].rstrip().endswith("× |")


def test_grad_cache_benchmark_runs_end_to_end_and_writes_its_table(tmp_path: Path) -> None:
    """A small run: the plain step at 32 rows (within the budget), GradCache at 32 and 256; the
    table, both ratios, the JSON and the figure."""
    import json

    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "grad_cache.py"), "--budget-mib", "80",
         "--max-batch", "32", "--multiples", "8", "--chunk", "16", "--steps", "1",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, check=False, cwd=ROOT,
        env={**os.environ, "DS_ACCELERATOR": "cpu"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "GradCache's step memory at 8×" in done.stdout and "(target ≤ 1.30)" in done.stdout
    summary = json.loads((tmp_path / "grad_cache.json").read_text())
    cached = sorted(p["batch"] for p in summary["points"] if p["chunk"])
    assert cached == [32, 256] and summary["largest_plain"] == 32
    assert (tmp_path / "grad_cache.png").read_bytes()[:4] == b"\x89PNG"


def test_fast_scan_sweep_runs_end_to_end_and_marks_the_best_setting(tmp_path: Path) -> None:
    """A small sweep: recall against exact search is measured for every setting, and at a
    generous bound (0.5) a best setting is chosen and written."""
    import json

    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fast_scan.py"), "--keys", "4000",
         "--queries", "128", "--pq-m", "32", "--nprobe", "8,16", "--k-factor", "1,16",
         "--rounds", "1", "--target-recall", "0.5", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, check=False, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "fast_scan_4000.json").read_text())
    assert len(result["rows"]) == 4 and all(0 <= r["recall"] <= 1 for r in result["rows"])
    assert result["best"] is not None and result["best"]["recall"] >= 0.5
    assert "**best**" in (tmp_path / "fast_scan_4000.md").read_text()
    # The exact re-ranking of a longer short list recovers what the 4-bit codes miss.
    by = {(r["nprobe"], r["k_factor"]): r["recall"] for r in result["rows"]}
    assert by[(16, 16.0)] > by[(16, 1.0)]
