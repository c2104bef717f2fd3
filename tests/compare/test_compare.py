"""``dist-contrast compare`` on a synthetic sqlite store: grouping, statistics, files,
artifacts on the parent, and one-line errors from the real CLI."""

from __future__ import annotations

import os
import statistics
import subprocess
from pathlib import Path

import pytest

from dist_contrast.compare import compare
from dist_contrast.compare.runs import RunRecord, Stat, group_runs, summarise, varying_params
from tests.compare.conftest import KNN, Store
from tests.forks import run_cli

# The session's stores (conftest.py) are built once, in one pytest-xdist process.
pytestmark = pytest.mark.xdist_group("compare_stores")

FIGURES = ("accuracy_vs_tau", "uniformity_tolerance", "penalty_entropy_vs_tau", "train_loss")


def test_summarise_is_mean_and_sample_std() -> None:
    stat = summarise([1.0, 2.0, 4.0])
    assert stat is not None and stat.n == 3
    assert stat.mean == pytest.approx(7 / 3)
    by_hand = ((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2  # n − 1
    assert stat.std == pytest.approx(by_hand ** 0.5)
    assert str(Stat(0.5, None, 1)) == "0.5000 ± — (n=1)"
    assert summarise([]) is None


def test_grouping_ignores_seed_names_and_paths_only() -> None:
    def run(i: int, seed: str, **extra: str) -> RunRecord:
        params = {"loss.name": "infonce", "loss.temperature": "0.1", "experiment.seed": seed,
                  "experiment.run_name": f"r{i}", "tracking.uri": f"u{i}", **extra}
        return RunRecord(f"id{i}", f"r{i}", params, {})

    groups = group_runs([run(0, "0"), run(1, "1"), run(2, "0", **{"optimizer.lr": "0.1"}),
                         run(3, "1", **{"optimizer.lr": "0.1"})])
    assert [len(g.runs) for g in groups] == [2, 2]
    assert varying_params(groups) == ["optimizer.lr"]


def test_compare_by_parent_run(store: Store, tmp_path: Path) -> None:
    import mlflow

    out = tmp_path / "out"
    done = compare(store.parent_id, store.uri, out=out)
    # Children only: the stand-alone `simple` runs and the FAILED child are left out.
    assert [(g.loss, g.tau, len(g.runs)) for g in done.groups] == [
        ("hcl", 0.1, 3), ("hcl", 0.5, 3), ("infonce", 0.1, 3), ("infonce", 0.5, 3)]
    for group in done.groups:
        values = KNN[(group.loss, group.params["loss.temperature"])]
        stat = group.stat("eval/knn_acc")
        assert stat is not None and stat.n == 3
        assert stat.mean == pytest.approx(sum(values) / 3)
        assert stat.std == pytest.approx(statistics.stdev(values))
    assert [g.collapsed for g in done.groups] == [False, True, False, False]
    table = (out / "comparison.md").read_text()
    # hcl, τ 0.1: mean 0.87, sample std sqrt(((−.02)²+(−.01)²+.03²)/2) = sqrt(0.0007) = 0.0265
    assert "| 0.1 | hcl | 3 | 0.8700 ± 0.0265 (n=3) |" in table
    assert table.count("\n| ") == 1 + 4  # header + 4 grid points (the separator starts "|-")
    assert "| yes |" in table
    _check_files(out)
    logged = {a.path for a in mlflow.MlflowClient(store.uri).list_artifacts(store.parent_id,
                                                                             "compare")}
    assert logged == {f"compare/{p.name}" for p in done.files}


def test_compare_by_experiment_pools_seeds(store: Store, tmp_path: Path) -> None:
    done = compare(store.experiment, store.uri, out=tmp_path / "exp",
                   metric="eval/linear_probe_acc")
    # Children and stand-alone runs; the sweep parent and the FAILED run are left out.
    assert [(g.loss, len(g.runs)) for g in done.groups] == [
        ("hcl", 3), ("hcl", 3), ("infonce", 3), ("infonce", 3), ("simple", 2)]
    simple = done.groups[-1].stat("eval/knn_acc")
    assert simple is not None and simple.mean == pytest.approx(0.525)
    assert simple.std == pytest.approx(statistics.stdev([0.50, 0.55]))
    assert done.parent_id is None
    _check_files(tmp_path / "exp")


def _check_files(out: Path) -> None:
    for name in FIGURES:
        path = out / f"{name}.png"
        assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.html").read_text()
    assert report.count('<img alt="') == len(FIGURES)
    assert report.count('src="data:image/png;base64,') == len(FIGURES)
    assert "<table>" in report and "eval/knn_acc" in report


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    return run_cli(["compare", *args], cwd=os.getcwd(), env=env, timeout=300)


def test_cli_prints_the_table(store: Store, tmp_path: Path) -> None:
    done = _cli(store.experiment, "--tracking-uri", store.uri, "--out", str(tmp_path / "c"))
    assert done.returncode == 0, done.stderr
    assert "| τ | loss |" in done.stdout and "5 grid points" in done.stdout


@pytest.mark.parametrize("case", ["unknown", "unknown_run", "no_store", "no_finished",
                                  "unreachable"])
def test_cli_errors_are_one_line(store: Store, tmp_path: Path, case: str) -> None:
    import mlflow

    uri = store.uri
    target = "no-such-experiment"
    if case == "no_finished":
        uri = f"sqlite:///{tmp_path / 'empty.db'}"
        mlflow.MlflowClient(uri).create_experiment("empty")
        target = "empty"
    elif case == "unknown_run":
        target = "0123456789abcdef0123456789abcdef"
    elif case == "no_store":
        uri = f"sqlite:///{tmp_path / 'missing.db'}"
    elif case == "unreachable":
        uri = "http://127.0.0.1:9"  # discard port: nothing listens
    done = _cli(target, "--tracking-uri", uri, "--out", str(tmp_path / "c"))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dist-contrast: error: "), done.stderr
    assert not (tmp_path / "c").exists()
    assert not (tmp_path / "missing.db").exists()


@pytest.mark.parametrize("layout", ["file", "under_a_file"])
def test_an_unusable_out_is_refused_before_mlflow_is_read(store: Store, tmp_path: Path,
                                                          layout: str) -> None:
    from dist_contrast.errors import UserError

    taken = tmp_path / "taken"
    taken.write_text("notes\n")
    out = taken if layout == "file" else taken / "c"
    # The target does not exist: the --out check comes first, before the store is read.
    with pytest.raises(UserError, match=f"--out {out}.* is a file, not a folder"):
        compare("no-such-experiment", store.uri, out=out)
    assert taken.read_text() == "notes\n"


def test_cli_out_onto_a_file_is_one_line(store: Store, tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("notes\n")
    done = _cli(store.experiment, "--tracking-uri", store.uri, "--out", str(tmp_path / "taken"))
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"dist-contrast: error: --out {tmp_path / 'taken'} is a file, not a folder; give a folder "
        "for the comparison's files (it is made if missing), or move the file away"]
    assert (tmp_path / "taken").read_text() == "notes\n"


def test_text_runs_are_compared_by_their_retrieval_metrics(tmp_path: Path) -> None:
    import mlflow
    from mlflow.entities import Metric, Param

    from dist_contrast.compare.runs import default_metric

    uri = f"sqlite:///{tmp_path / 'text.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("text", artifact_location=str(tmp_path / "art"))
    mrr = {("0.05", 0): 0.40, ("0.05", 1): 0.42, ("0.1", 0): 0.35, ("0.1", 1): 0.33}
    for (tau, seed), value in mrr.items():
        run = client.create_run(experiment, run_name=f"{tau}-{seed}").info.run_id
        params = {"loss.name": "info_nce", "loss.temperature": tau, "experiment.seed": str(seed)}
        metrics = {"eval/mrr_at_10": value, "eval/recall_at_1": value - 0.1,
                   "eval/bm25_mrr_at_10": 0.5, "eval/hybrid_mrr_at_10": 0.52, "train/loss": 1.0}
        client.log_batch(run, params=[Param(k, v) for k, v in params.items()],
                         metrics=[Metric(k, v, 0, 1) for k, v in metrics.items()])
        client.set_terminated(run)
    done = compare("text", uri, out=tmp_path / "out")
    assert default_metric(done.groups) == "eval/mrr_at_10"
    header = done.table.splitlines()[0]
    assert "eval/mrr_at_10" in header and "eval/bm25_mrr_at_10" in header
    assert "eval/recall_at_10" not in header  # no run has it: no empty column
    assert "| 0.05 | info_nce | 2 |" in done.table and "0.4100 ± 0.0141 (n=2)" in done.table
    assert (tmp_path / "out" / "accuracy_vs_tau.png").stat().st_size > 1000
    # No uniformity or penalty entropy in text runs: those figures are not drawn empty.
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [
        "accuracy_vs_tau.png", "train_loss.png"]
