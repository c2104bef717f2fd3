"""The sweep's live summary, from plain outcomes (no Ray, no MLflow)."""

from __future__ import annotations

from pathlib import Path

from dist_contrast.sweep.grid import expand, parse_grid
from dist_contrast.sweep.runner import Board, Outcome

SYNTHETIC = str(Path(__file__).resolve().parents[2] / "configs" / "synthetic.yaml")


def test_the_summary_counts_and_names_the_best_child() -> None:
    trials = expand([SYNTHETIC], parse_grid(["loss.temperature=0.1,0.5"]), seeds=2,
                    overrides=[], name="s")
    lines: list[str] = []
    board = Board("s", len(trials), slots=2, write=lines.append)
    for trial in trials[:3]:
        board.start(trial)
    board.finish(Outcome(trials[0], "FINISHED", "a", metrics={"eval/knn_acc": 0.5}))
    board.finish(Outcome(trials[1], "FAILED", "b", error="worker rank 0 failed: boom"))
    board.finish(Outcome(trials[2], "FINISHED", "c", metrics={"eval/knn_acc": 0.75}))
    line = board.line()
    assert line.startswith("[s] 2/4 finished | 0 running | 1 failed | 1 to go")
    assert f"best eval/knn_acc 0.7500 ({trials[2].label})" in line
    assert "ETA" in line
    assert any("worker rank 0 failed: boom" in text for text in lines)
    board.finish(Outcome(trials[3], "SKIPPED", "d", metrics={"eval/knn_acc": 0.9}))
    assert board.line().startswith("[s] 3/4 finished | 0 running | 1 failed | 0 to go")
    assert board.best() is not None and board.best().run_id == "d"  # type: ignore[union-attr]
