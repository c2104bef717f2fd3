"""The τ study's claims file against the study's own configs: every claim's two selectors each
find exactly one grid point of the digits study (as its sweep expands it, one run per point),
so `compare --claims` on the finished study cannot fail for a claim that names a point the
study does not have."""

from __future__ import annotations

from pathlib import Path

from dist_contrast.compare.claims import read_claims, select
from dist_contrast.compare.runs import CONFIG_TAG, RunRecord, group_runs
from dist_contrast.config import flatten
from dist_contrast.sweep.grid import expand

ROOT = Path(__file__).resolve().parents[2]
STUDY = sorted(str(p) for p in (ROOT / "configs" / "tau_study" / "digits").glob("*.yaml"))
CLAIMS = ROOT / "docs" / "tau_study" / "claims_digits.yaml"


def test_every_claim_selects_one_point_of_the_digits_study_on_each_side() -> None:
    trials = expand(STUDY, {}, seeds=1, overrides=[], name="study")
    runs = [RunRecord(run_id=trial.run_name, name=trial.run_name, params=flatten(trial.config),
                      metrics={}, tags={CONFIG_TAG: trial.source}) for trial in trials]
    groups = group_runs(runs)
    assert len(groups) == len(trials) == 33
    claims = read_claims(CLAIMS)
    assert len(claims) == 17
    for claim in claims:
        higher, lower = select(claim, "higher", groups), select(claim, "lower", groups)
        assert higher is not lower, claim.name
