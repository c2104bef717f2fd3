"""The relative-penalty snapshots kept during training and the end-of-run figure."""

from __future__ import annotations

from pathlib import Path

import torch

from dist_contrast.config import Config
from dist_contrast.plots import plot_relative_penalty, plot_similarities
from dist_contrast.tracking import NullTracker
from dist_contrast.train.evidence import PenaltySnapshots
from dist_contrast.train.reporting import Reporter


def _sims(seed: int, rows: int = 32, negatives: int = 63) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(rows, negatives, generator=gen) * 2 - 1


def test_snapshots_keep_the_start_the_middle_and_the_end() -> None:
    kept = PenaltySnapshots(max_steps=100, max_points=200)
    for step in (10, 20, 40, 60, 80, 100):
        kept.offer(step, _sims(step), torch.tensor(0.1))
    assert kept.start is not None and kept.middle is not None and kept.end is not None
    assert (kept.start.step, kept.middle.step, kept.end.step) == (10, 40, 100)
    labelled = kept.labelled()
    assert [label.split(",")[0] for label, _, _ in labelled] == ["step 10", "step 40", "step 100"]
    for _, s, r in labelled:
        assert s.numel() <= 200 and s.shape == r.shape == (3, 63)
        torch.testing.assert_close(r.sum(dim=1), torch.ones(3))  # whole rows


def test_one_eval_step_is_one_snapshot() -> None:
    kept = PenaltySnapshots(max_steps=5)
    kept.offer(5, _sims(0), torch.tensor(0.2))
    assert len(kept.labelled()) == 1


class _ArtifactSizes(NullTracker):
    def __init__(self) -> None:
        self.sizes: dict[str, int] = {}

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.sizes[f"{artifact_path}/{Path(path).name}"] = Path(path).stat().st_size


def test_the_figures_are_non_empty_pngs(tmp_path: Path) -> None:
    kept = PenaltySnapshots(max_steps=4)
    for step in (2, 4):
        kept.offer(step, _sims(step), torch.tensor(0.1 * step))
    for name, figure in (("penalty.png", plot_relative_penalty(kept.labelled())),
                         ("sims.png", plot_similarities(torch.rand(50), torch.rand(500) - 0.5))):
        figure.savefig(tmp_path / name)
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    tracker = _ArtifactSizes()
    reporter = Reporter(cfg=Config(), tracker=tracker, active=True)
    reporter.finish(penalty=kept)
    assert tracker.sizes["plots/relative_penalty.png"] > 1000


def test_diagnosing_only_observes_the_losses_are_unchanged() -> None:
    from tests.train.test_worker_nce import _batches, _worker

    losses: dict[bool, list[float]] = {}
    for diagnose in (False, True):
        worker = _worker()
        batches = _batches(worker)
        losses[diagnose] = [worker.step(next(batches), step, diagnose=diagnose)["train/loss"]
                            for step in range(4)]
        kept = worker.step.penalty_snapshots
        assert (kept.end is not None) == diagnose
    assert losses[True] == losses[False]


def test_the_code_search_split_statistics_are_logged_with_the_run(tmp_path: Path) -> None:
    from tests.data.helpers import write_text_pairs

    folder = tmp_path / "pysource"
    folder.mkdir()
    write_text_pairs(folder / "train.jsonl", 10)
    (folder / "stats.json").write_text('{"pairs": {"train": 10}}')
    data = {"name": "pairs", "path": str(folder / "train.jsonl"), "params": {"build": "pysource"}}
    tracker = _ArtifactSizes()
    Reporter(cfg=Config(data=data, model={"name": "bow"}), tracker=tracker, active=True).start()
    assert tracker.sizes == {"data/stats.json": len('{"pairs": {"train": 10}}')}
    tracker = _ArtifactSizes()
    Reporter(cfg=Config(data={**data, "params": {}}, model={"name": "bow"}), tracker=tracker,
             active=True).start()
    assert tracker.sizes == {}  # a file of the user's own: no statistics to log
