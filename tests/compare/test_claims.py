"""``compare --claims``: claims tested over seeds (verdicts, claims.md, the report, the CLI's
output), the claims file's and the selectors' one-line errors, runs.csv and the trajectory
figures."""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from dist_contrast.compare import Comparison, compare
from dist_contrast.compare.figures import seed_band
from dist_contrast.compare.record import config_file, steps_trained
from dist_contrast.compare.runs import RunRecord
from dist_contrast.errors import UserError
from tests.compare.conftest import EVAL_STEPS, SWEEP_KNN, Store
from tests.forks import run_cli

# The session's stores (conftest.py) are built once, in one pytest-xdist process.
pytestmark = pytest.mark.xdist_group("compare_stores")

TRAJECTORIES = ("trajectory_eval_knn_acc", "trajectory_eval_uniformity",
                "trajectory_eval_tolerance")


def _claim(name: str, higher: dict[str, object], lower: dict[str, object],
           metric: str = "eval/knn_acc") -> dict[str, object]:
    return {"name": name, "says": f"{name}, in one sentence.", "metric": metric,
            "higher": higher, "lower": lower}


def _write(path: Path, content: object) -> Path:
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    return run_cli(["compare", *args], cwd=os.getcwd(), env=env, timeout=300)


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dist-contrast: error: "), done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


HCL_01 = {"loss.name": "hcl", "loss.temperature": 0.1}
HCL_05 = {"loss.name": "hcl", "loss.temperature": 0.5}
INFONCE_01 = {"loss.name": "infonce", "loss.temperature": 0.1}


def test_cli_prints_and_writes_the_verdicts(store: Store, tmp_path: Path) -> None:
    claims = _write(tmp_path / "claims.yaml", {"claims": [
        _claim("small-tau-helps-hcl", HCL_01, HCL_05),  # 0.870 against 0.630
        _claim("hcl-at-0.5-beats-infonce", HCL_05, INFONCE_01),  # 0.630 against 0.820
        _claim("hcl-beats-infonce", HCL_01, INFONCE_01),  # 0.870 against 0.820: t 2.6, df 3.7
        _claim("hcl-at-0.3", {"loss.name": "hcl", "loss.temperature": 0.3}, HCL_05),  # not run
    ]})
    out = tmp_path / "c"
    done = _cli(store.experiment, "--tracking-uri", store.uri, "--out", str(out),
                "--claims", str(claims), "--partial")
    assert done.returncode == 0, done.stderr
    written = (out / "claims.md").read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in written.splitlines()
            if line.startswith("| ") and "---" not in line}
    assert rows["small-tau-helps-hcl"].endswith("| holds |")
    assert rows["hcl-at-0.5-beats-infonce"].endswith("| reversed |")
    assert rows["hcl-beats-infonce"].endswith(
        "| not resolved at n = 3; ≈4 seeds per point would resolve it |")
    # --partial: a point without finished runs (a study still running) is a row, not an error.
    assert rows["hcl-at-0.3"].endswith(
        "| — | — | — | not tested: no finished runs of 'higher' {loss.name: hcl, "
        "loss.temperature: 0.3} yet (the finished points have loss.name: hcl, infonce, simple; "
        "loss.temperature: 0.1, 0.5, 1.0) |")
    # hcl τ 0.1 against infonce τ 0.1: d = 0.05, SE = sqrt((0.0007 + 0.0004) / 3) = 0.0191,
    # t = 2.61 on 3.7 df, p = 0.0638 (scipy's ttest_ind gives the same).
    assert ("| hcl τ=0.1: 0.8700 ± 0.0265 (n=3) | infonce τ=0.1: 0.8200 ± 0.0200 (n=3) "
            "| +0.0500 ± 0.0191 | 2.61 (3.7) | 0.0638 |") in rows["hcl-beats-infonce"]
    for row in rows.values():
        assert row in done.stdout  # the CLI prints the claims table too
    assert "claims.md" in done.stdout and "runs.csv" in done.stdout
    report = (out / "report.html").read_text()
    assert report.index("<h2>claims</h2>") < report.index("<img")
    assert report.count("<td>holds</td>") == 1 and "<td>reversed</td>" in report
    # One value per run (no eval history): no trajectory figure.
    assert not list(out.glob("trajectory_*.png"))


@pytest.mark.parametrize(("content", "says"), [
    (None, "no such file; give the YAML file that lists the claims"),
    ("claims: [\n", "is not valid YAML"),
    ([_claim("a", HCL_01, HCL_05)], "must be a mapping whose key 'claims:' holds a list"),
    ({"claims": [_claim("a", HCL_01, HCL_05)], "alpha": 0.01},
     "unknown top-level key 'alpha'; the file holds only 'claims:'"),
    ({"claims": []}, "'claims:' must be a non-empty list"),
    ({"claims": [{k: v for k, v in _claim("a", HCL_01, HCL_05).items() if k != "lower"}]},
     "claim 'a' has no 'lower'; give each claim name, says, metric, higher, lower"),
    ({"claims": [{**_claim("a", HCL_01, HCL_05), "higer": HCL_01}]},
     "claim 'a' has an unknown key 'higer'; a claim has only name, says, metric, higher, lower"),
    ({"claims": [_claim("a", {"loss.name": "hcl", "experiment.seed": 0}, HCL_05)]},
     "claim 'a''s 'higher' selects on 'experiment.seed', which is no part of a grid point"),
    ({"claims": [_claim("a", "hcl", HCL_05)]}, "claim 'a''s 'higher' must select one grid"),
    ({"claims": [_claim("a", HCL_01, {"temperature": 0.5})]},
     "claim 'a''s 'lower' selects on 'temperature', which is neither a param"),
    ({"claims": [_claim("a", HCL_01, HCL_05), _claim("a", HCL_05, HCL_01)]},
     "two claims are named 'a'"),
])
def test_a_bad_claims_file_is_one_line_before_mlflow_is_read(
    tmp_path: Path, content: object, says: str
) -> None:
    path = tmp_path / "claims.yaml"
    if content is not None:
        _write(path, content)
    # No store there: the file's error comes first, and nothing is written.
    done = _cli("tau-grid", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}",
                "--out", str(tmp_path / "c"), "--claims", str(path))
    line = _one_line(done)
    assert f"--claims {path}" in line and says in line, line
    assert not (tmp_path / "c").exists() and not (tmp_path / "none.db").exists()


@pytest.mark.parametrize(("claim", "says"), [
    (_claim("a", {"loss.name": "hcl", "loss.temperature": 0.3}, HCL_05),
     "claim 'a': 'higher' {loss.name: hcl, loss.temperature: 0.3} matches no grid point; the "
     "points have loss.name: hcl, infonce, simple; loss.temperature: 0.1, 0.5, 1.0"),
    (_claim("b", HCL_01, {"loss.name": "hcl"}),
     "claim 'b': 'lower' {loss.name: hcl} matches 2 grid points (hcl τ=0.1, hcl τ=0.5); add "
     "loss.temperature to tell them apart"),
    (_claim("c", {"loss.temprature": 0.1}, HCL_05),
     "claim 'c': 'higher' selects on 'loss.temprature', which no grid point has; select by "
     "loss.name, loss.temperature, setting, config"),
    (_claim("d", HCL_01, HCL_05, metric="eval/knn_accuracy"),
     "claim 'd': no run of hcl τ=0.1 ('higher') logged eval/knn_accuracy; give a metric the "
     "runs have (eval/collapsed, eval/knn_acc,"),
    (_claim("e", HCL_01, {"loss.temperature": "0.10", "loss.name": "hcl"}),
     "claim 'e': higher and lower both select hcl τ=0.1; select two different grid points"),
])
def test_a_selector_that_fits_no_single_point_is_one_line(
    store: Store, tmp_path: Path, claim: dict[str, object], says: str
) -> None:
    path = _write(tmp_path / "claims.yaml", {"claims": [claim]})
    done = _cli(store.experiment, "--tracking-uri", store.uri, "--out", str(tmp_path / "c"),
                "--claims", str(path))
    line = _one_line(done)
    assert says in line, line
    assert not (tmp_path / "c").exists()  # nothing written for a claim that cannot be tested


def test_partial_lists_the_claims_that_wait_and_still_refuses_an_ambiguous_one(
    store: Store, tmp_path: Path
) -> None:
    claims = _write(tmp_path / "claims.yaml", {"claims": [
        _claim("ready", HCL_01, HCL_05),
        _claim("unrun-tau", HCL_01, {"loss.name": "infonce", "loss.temperature": 0.3}),
        _claim("unrun-key", {"negatives.momentum": 0.999}, HCL_05),
    ]})
    done = compare(store.experiment, store.uri, out=tmp_path / "c", claims=claims,
                   partial=True)
    assert [r.claim.name for r in done.results] == ["ready"]
    assert done.results[0].verdict == "holds"
    reasons = {p.claim.name: p.reason for p in done.pending}
    assert reasons["unrun-tau"].startswith("no finished runs of 'lower' {loss.name: infonce, "
                                           "loss.temperature: 0.3} yet")
    assert reasons["unrun-key"].startswith("no finished runs of 'higher' "
                                           "{negatives.momentum: 0.999} yet (the finished "
                                           "points have negatives.momentum: none)")
    written = (tmp_path / "c" / "claims.md").read_text()
    assert written.count("not tested: ") == 2 and "| holds |" in written
    assert (tmp_path / "c" / "report.html").read_text().count("not tested: ") == 2
    # Without --partial the same file is refused, and a selector of several points always is.
    with pytest.raises(UserError, match="'lower' .* matches no grid point"):
        compare(store.experiment, store.uri, out=tmp_path / "d", claims=claims)
    several = _write(tmp_path / "several.yaml",
                     {"claims": [_claim("b", HCL_01, {"loss.name": "hcl"})]})
    with pytest.raises(UserError, match="matches 2 grid points"):
        compare(store.experiment, store.uri, out=tmp_path / "e", claims=several, partial=True)
    assert not (tmp_path / "d").exists() and not (tmp_path / "e").exists()


# ----------------------------------------------------------------------------- a sweep's runs

MOCO_FAST = {"setting": "moco momentum=0.9"}
MOCO_SLOW = {"config": "moco", "negatives.momentum": 0.999}
CONTRASTIVE = {"config": "contrastive", "loss.temperature": 0.2}


@pytest.fixture(scope="session")
def sweep(sweep_store: Store, tmp_path_factory: pytest.TempPathFactory) -> tuple[Comparison, Path]:
    tmp = tmp_path_factory.mktemp("sweep-compare")
    claims = _write(tmp / "claims.yaml", {"claims": [
        _claim("slow-keys", MOCO_SLOW, MOCO_FAST),  # 0.960 against 0.913
        _claim("bank-beats-queue", CONTRASTIVE, MOCO_SLOW),  # 0.823 against 0.960
        _claim("small-tau", CONTRASTIVE, {"config": "contrastive", "loss.temperature": "0.5"}),
    ]})
    out = tmp / "out"
    return compare(sweep_store.parent_id, sweep_store.uri, out=out, claims=claims), out


def test_points_are_selected_by_setting_config_and_params(sweep: tuple[Comparison, Path]
                                                          ) -> None:
    done, _ = sweep
    found = {r.claim.name: (r.higher_label, r.lower_label, r.verdict) for r in done.results}
    assert found["slow-keys"] == ("moco momentum=0.999 τ=0.2", "moco momentum=0.9 τ=0.2",
                                  "holds")
    assert found["bank-beats-queue"][:2] == ("contrastive τ=0.2", "moco momentum=0.999 τ=0.2")
    assert found["bank-beats-queue"][2] == "reversed"
    assert found["small-tau"][2].startswith("not resolved at n = 3; ≈")
    assert done.claims is not None and done.claims.startswith("Welch's t test")


def test_the_files_are_logged_to_the_parent(sweep_store: Store,
                                            sweep: tuple[Comparison, Path]) -> None:
    import mlflow

    done, _ = sweep
    logged = {a.path for a in mlflow.MlflowClient(sweep_store.uri).list_artifacts(
        sweep_store.parent_id, "compare")}
    assert logged == {f"compare/{p.name}" for p in done.files}
    assert {"compare/claims.md", "compare/runs.csv",
            "compare/trajectory_eval_knn_acc.png"} <= logged


def test_runs_csv_has_one_row_per_run(sweep: tuple[Comparison, Path]) -> None:
    _, out = sweep
    with (out / "runs.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == sum(len(v) for v in SWEEP_KNN.values())
    assert list(rows[0])[:8] == ["run_id", "run_name", "point", "loss", "tau", "seed", "steps",
                                 "config"]
    assert {"eval/knn_acc", "eval/uniformity", "eval/collapsed"} <= set(rows[0])
    by_name = {row["run_name"]: row for row in rows}
    row = by_name["moco-0.2-0.9-1"]
    assert (row["point"], row["loss"], row["tau"], row["seed"], row["steps"], row["config"]) == (
        "moco momentum=0.9 τ=0.2", "info_nce", "0.2", "1", "100", "configs/study/moco.yaml")
    assert float(row["eval/knn_acc"]) == SWEEP_KNN[("configs/study/moco.yaml", "0.2", "0.9")][1]
    assert row["eval/linear_probe_acc"] == ""  # not logged: an empty cell, not 0


def test_trajectories_are_drawn_for_metrics_logged_at_several_steps(
    sweep: tuple[Comparison, Path]
) -> None:
    done, out = sweep
    for name in TRAJECTORIES:
        path = out / f"{name}.png"
        assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"
        assert path in done.files
    report = (out / "report.html").read_text()
    # accuracy_vs_tau, uniformity_tolerance and train_loss (no penalty entropy logged), then
    # the trajectories.
    assert report.count('<img alt="') == 3 + len(TRAJECTORIES)
    assert f'<img alt="{TRAJECTORIES[0]}"' in report


def test_seed_band_is_mean_and_sample_std_per_step() -> None:
    histories = {"a": [(0, 1.0), (50, 2.0)], "b": [(0, 3.0), (50, 4.0), (100, 5.0)]}
    band = seed_band(["a", "b"], histories)
    assert [step for step, _, _ in band] == [0, 50, 100]
    assert band[0][1:] == pytest.approx((2.0, 2 ** 0.5))
    assert band[2][1:] == (5.0, 0.0)  # one seed reached step 100: no spread to show
    assert seed_band(["c"], histories) == []
    assert EVAL_STEPS[0] == 0  # the fixture's evals start at step 0, as the study's do


def test_config_file_and_steps_come_from_the_run() -> None:
    def run(tags: dict[str, str], params: dict[str, str] | None = None) -> RunRecord:
        return RunRecord("id", "name", params or {}, {}, tags)

    assert config_file(run({"dist_contrast.sweep.config": "configs/a.yaml",
                            "mlflow.source.name": "dist-contrast sweep configs/a.yaml"})
                       ) == "configs/a.yaml"
    assert config_file(run({"mlflow.source.name": "dist-contrast train configs/b.yaml x=1"})
                       ) == "configs/b.yaml"
    assert config_file(run({"mlflow.source.name": "python train.py"})) == ""
    assert config_file(run({})) == ""
    assert steps_trained(run({}, {"trainer.max_steps": "300"}), [(1, 2.0), (299, 1.0)]) == "299"
    assert steps_trained(run({}, {"trainer.max_steps": "300"}), []) == "300"
    assert steps_trained(run({}), []) == ""
