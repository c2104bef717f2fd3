"""Each τ study's claims file against the study's own configs: every claim's two selectors each
find exactly one grid point of the study (as its sweep expands it, one run per point), so
`compare --claims` on the finished study cannot fail for a claim that names a point the study
does not have."""

from __future__ import annotations

from pathlib import Path

import pytest

from dist_contrast.compare.claims import read_claims, select
from dist_contrast.compare.runs import CONFIG_TAG, RunRecord, group_runs
from dist_contrast.config import flatten
from dist_contrast.sweep.grid import expand

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("study", "points", "count"), [("digits", 33, 17), ("synthetic", 31, 16)])
def test_every_claim_selects_one_point_of_the_study_on_each_side(study: str, points: int,
                                                                  count: int) -> None:
    configs = sorted(str(p) for p in (ROOT / "configs" / "tau_study" / study).glob("*.yaml"))
    trials = expand(configs, {}, seeds=1, overrides=[], name="study")
    runs = [RunRecord(run_id=trial.run_name, name=trial.run_name, params=flatten(trial.config),
                      metrics={}, tags={CONFIG_TAG: trial.source}) for trial in trials]
    groups = group_runs(runs)
    assert len(groups) == len(trials) == points
    claims = read_claims(ROOT / "docs" / "tau_study" / f"claims_{study}.yaml")
    assert len(claims) == count
    for claim in claims:
        higher, lower = select(claim, "higher", groups), select(claim, "lower", groups)
        assert higher is not lower, claim.name
