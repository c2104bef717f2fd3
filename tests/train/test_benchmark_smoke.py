"""benchmarks/determinism.py --quick, benchmarks/grad_cache.py and benchmarks/fast_scan.py run
end to end and print their tables (smoke tests, not timings)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

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
    """A small run: the plain step at 32 rows (about 170 MiB of tensors, within the budget),
    GradCache at 32 and 256; the table, both ratios, the JSON and the figure."""
    import json

    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "grad_cache.py"), "--budget-mib", "400",
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
    for point in summary["points"]:
        assert point["step_mib"] > 0 and point["rss_mib"] == point["rss_mib"]


def test_the_grad_cache_benchmarks_memory_measure_is_the_peak_of_live_tensor_bytes() -> None:
    """Two 4 MB tensors alive at once, then one freed before a third: the peak is 8 MB, not
    the 12 MB allocated in all (within the few bytes of the scalar operands); a tensor made
    before the measure does not count."""
    import torch

    from tests.benchmark_scripts import load_benchmark

    measure = load_benchmark("grad_cache").peak_tensor_bytes
    before = torch.ones(1000, 1000)

    def run() -> None:
        first = torch.ones(1000, 1000)
        second = first * 2
        del first
        third = second + 1
        del second, third

    assert 8_000_000 <= measure(run) < 8_000_000 + 1_000
    assert measure(lambda: before.sum()) < 1_000


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


@pytest.mark.tools  # datasets, for sentence-transformers' mining: .venv-st/ (`make test` makes it)
def test_the_sentence_transformers_side_of_the_comparison_trains_embeds_and_mines(
        tmp_path: Path) -> None:
    """benchmarks/st_compare.py's sentence-transformers side on 96 pairs against the real
    library: the exported untrained transformer trains 3 steps with its
    MultipleNegativesRankingLoss (with a mined negative too), embeds, and mines with its
    mine_hard_negatives into the pairs layout our side reads."""
    import json

    from tests.benchmark_scripts import load_benchmark
    from tests.data.helpers import write_text_pairs

    compare = load_benchmark("st_compare")
    python = str(ROOT / ".venv-st" / "bin" / "python")
    pairs = compare._subset(write_text_pairs(tmp_path / "raw.jsonl", 96), tmp_path / "p.jsonl",
                            96)
    initial = compare._initial_model(pairs, tmp_path / "initial")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def side(*args: str) -> dict[str, float]:
        done = subprocess.run([python, str(ROOT / "benchmarks" / "st_compare.py"), *args],
                              capture_output=True, text=True, timeout=600, env=env,
                              check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}

    common = ["--steps", "3", "--batch", "16", "--lr", "0.001", "--warmup", "1", "--skip", "1"]
    trained = side("st-train", "--model", str(initial), "--pairs", str(pairs), "--trained",
                   str(tmp_path / "trained"), *common)
    assert trained["pairs_per_s"] > 0
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps({"queries": ["a query"], "corpus": ["one doc", "another"]}))
    side("st-embed", "--model", str(tmp_path / "trained"), "--texts", str(texts), "--out",
         str(tmp_path))
    assert np.load(tmp_path / "corpus.npy").shape == (2, 128)
    mined = side("st-mine", "--model", str(tmp_path / "trained"), "--pairs", str(pairs),
                 "--output", str(tmp_path / "mined.jsonl"))
    assert mined["rows"] == 96 and mined["rows_per_s"] > 0
    rows = [json.loads(line) for line in (tmp_path / "mined.jsonl").read_text().splitlines()]
    assert len(rows) == mined["kept"]
    assert all(len(row["negatives"]) == 3 and row["positive"] not in row["negatives"]
               for row in rows)
    with_negatives = tmp_path / "with.jsonl"
    with_negatives.write_text("".join(
        json.dumps({**row, "negatives": ["some other text", "and another"]}) + "\n"
        for row in map(json.loads, pairs.read_text().splitlines())))
    side("st-train", "--model", str(initial), "--pairs", str(with_negatives), "--trained",
         str(tmp_path / "again"), *common, "--negatives")
