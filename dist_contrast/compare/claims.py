"""``compare --claims FILE``: claims about two grid points, each tested over seeds.

The file (YAML) lists claims; each names a metric and selects two grid points, ``higher`` and
``lower``, by their params (as :class:`~dist_contrast.compare.runs.Group` holds them), by
``setting`` (the label the table and the figures show) or by ``config`` (the sweep config's
file stem)::

    claims:
      - name: moco-momentum
        says: A slow key encoder (m = 0.999) beats a fast one (m = 0.9).
        metric: eval/knn_acc
        higher: {config: moco, negatives.momentum: 0.999}
        lower: {config: moco, negatives.momentum: 0.9}

The file is checked before MLflow is read; the selectors once the grid points are known.
Each claim gets Welch's t test of higher − lower and a verdict: holds, reversed or not resolved.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dist_contrast.compare.runs import (
    IGNORED,
    IGNORED_PREFIXES,
    Group,
    labels,
    point_labels,
    varying_params,
)
from dist_contrast.compare.stats import ALPHA, Welch, seeds_to_resolve, welch
from dist_contrast.errors import UserError

KEYS = ("name", "says", "metric", "higher", "lower")
#: Selector keys that are no param: the table's setting label, and the sweep config's stem.
SETTING = "setting"
CONFIG = "config"
RULE = (f"Welch's t test of higher − lower over seeds: **holds** when p < {ALPHA:g} and the "
        f"difference > 0, **reversed** when p < {ALPHA:g} and it is < 0, otherwise **not "
        "resolved** at n (the smaller point's seeds).")


@dataclass(frozen=True)
class Claim:
    """One claim: ``higher`` beats ``lower`` on ``metric``; each side selects one grid point."""

    name: str
    says: str
    metric: str
    higher: Mapping[str, Any]
    lower: Mapping[str, Any]


@dataclass(frozen=True)
class ClaimResult:
    """A claim with the two points it selected, the test and the verdict."""

    claim: Claim
    higher: Group
    lower: Group
    higher_label: str
    lower_label: str
    test: Welch
    verdict: str


@dataclass(frozen=True)
class Pending:
    """A claim that cannot be tested yet (``compare --partial``): one of its sides selects
    no grid point among the finished runs; ``reason`` says which."""

    claim: Claim
    reason: str


# ----------------------------------------------------------------------------- the file


def read_claims(path: str | Path) -> list[Claim]:
    """The claims of a YAML file, checked for shape (not yet against any run): every problem
    is a one-line :class:`UserError` that names the claim and the fix."""
    import yaml

    where = f"--claims {path}"
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise UserError(f"{where}: no such file; give the YAML file that lists the claims"
                        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{where}: cannot read it ({exc}); give a readable YAML file") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise UserError(f"{where} is not valid YAML ({problem}{at}); fix the file") from None
    if not isinstance(raw, dict) or "claims" not in raw:
        raise UserError(f"{where} must be a mapping whose key 'claims:' holds a list of claims "
                        "(each with name, says, metric, higher and lower)")
    for key in raw:
        if key != "claims":
            raise UserError(f"{where}: unknown top-level key '{key}'; the file holds only "
                            "'claims:', a list of claims")
    items = raw["claims"]
    if not isinstance(items, list) or not items:
        raise UserError(f"{where}: 'claims:' must be a non-empty list of claims (each with "
                        "name, says, metric, higher and lower)")
    claims: list[Claim] = []
    for index, item in enumerate(items, 1):
        claim = _claim(item, index, where)
        if any(c.name == claim.name for c in claims):
            raise UserError(f"{where}: two claims are named '{claim.name}'; give each claim "
                            "its own name")
        claims.append(claim)
    return claims


def _claim(item: Any, index: int, where: str) -> Claim:
    if not isinstance(item, dict):
        raise UserError(f"{where}: claim {index} is not a mapping; give each claim name, "
                        "says, metric, higher and lower")
    name = item.get("name")
    who = f"claim '{name}'" if isinstance(name, str) and name.strip() else f"claim {index}"
    for key in item:
        if key not in KEYS:
            raise UserError(f"{where}: {who} has an unknown key '{key}'; a claim has only "
                            f"{', '.join(KEYS)}")
    for key in KEYS:
        if key not in item or item[key] is None:
            raise UserError(f"{where}: {who} has no '{key}'; give each claim "
                            f"{', '.join(KEYS)}")
    for key, example in (("name", "tau-reverse-u"), ("says", "one sentence"),
                         ("metric", "eval/knn_acc")):
        if not isinstance(item[key], str) or not item[key].strip():
            raise UserError(f"{where}: {who}'s '{key}' must be a non-empty string "
                            f"(e.g. {example})")
    return Claim(" ".join(item["name"].split()), " ".join(item["says"].split()),
                 item["metric"].strip(), _selector(item["higher"], "higher", who, where),
                 _selector(item["lower"], "lower", who, where))


def _selector(raw: Any, side: str, who: str, where: str) -> dict[str, Any]:
    example = "{loss.name: info_nce, loss.temperature: 0.2}"
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"{where}: {who}'s '{side}' must select one grid point by its params, "
                        f"e.g. {example}")
    for key, value in raw.items():
        if not isinstance(key, str) or (key not in (SETTING, CONFIG) and "." not in key):
            raise UserError(f"{where}: {who}'s '{side}' selects on '{key}', which is neither a "
                            f"param (section.key, e.g. loss.temperature) nor '{SETTING}' or "
                            f"'{CONFIG}'")
        if key in IGNORED or key.startswith(IGNORED_PREFIXES):
            raise UserError(f"{where}: {who}'s '{side}' selects on '{key}', which is no part "
                            "of a grid point (seeds are pooled, names and paths ignored); "
                            "select the point by its other params")
        if value is None or isinstance(value, dict):
            raise UserError(f"{where}: {who}'s '{side}' gives '{key}' no single value; give "
                            f"one, e.g. {example}")
    return dict(raw)


# ----------------------------------------------------------------------------- the points


def _text(value: Any) -> str:
    """A selector value as params spell it (YAML ``true`` → ``True``, a list as Python's)."""
    return str(value)


def _same(param: str | None, wanted: Any) -> bool:
    """Whether a param's text says ``wanted``: numbers by value (``1`` is ``1.0``), booleans
    in any case, anything else as text."""
    if param is None:
        return False
    text = _text(wanted)
    try:
        return float(param) == float(text)
    except ValueError:
        pass
    if {param.lower(), text.lower()} <= {"true", "false"}:
        return param.lower() == text.lower()
    return param == text


def _value(group: Group, key: str, named: Mapping[int, str]) -> str | None:
    if key == SETTING:
        return named[id(group)]
    if key == CONFIG:
        return group.arm
    return group.params.get(key)


def _shown(selector: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {_text(v)}" for k, v in selector.items()) + "}"


def _matching(selector: Mapping[str, Any], groups: Sequence[Group],
              named: Mapping[int, str]) -> list[Group]:
    """The grid points whose value of every key of ``selector`` is the one it gives."""
    return [g for g in groups
            if all(_same(_value(g, k, named), v) for k, v in selector.items())]


def _available(selector: Mapping[str, Any], groups: Sequence[Group],
               named: Mapping[int, str]) -> str:
    """The values the points have for each of the selector's keys."""
    return "; ".join(
        f"{key}: " + (", ".join(sorted({v for g in groups
                                        if (v := _value(g, key, named)) is not None}))
                      or "none")
        for key in selector)


def missing(claim: Claim, groups: Sequence[Group]) -> str | None:
    """Why ``claim`` cannot be tested on ``groups`` because a side selects no grid point
    (none has one of its keys or values), else None. A side that selects several points is
    no missing run: :func:`select` refuses it."""
    named = labels(groups)
    for side in ("higher", "lower"):
        selector: Mapping[str, Any] = getattr(claim, side)
        if not _matching(selector, groups, named):
            return (f"no finished runs of '{side}' {_shown(selector)} yet (the finished "
                    f"points have {_available(selector, groups, named)})")
    return None


def select(claim: Claim, side: str, groups: Sequence[Group]) -> Group:
    """The one grid point ``claim``'s ``side`` (higher or lower) selects; a UserError naming
    the claim and what is there when it selects none or several."""
    selector: Mapping[str, Any] = getattr(claim, side)
    named = labels(groups)
    who = f"claim '{claim.name}'"
    for key in selector:
        if key not in (SETTING, CONFIG) and all(key not in g.params for g in groups):
            varying = varying_params(groups)
            keys = sorted({*varying, *(k for k in ("loss.name", "loss.temperature")
                                       if any(k in g.params for g in groups))})
            raise UserError(f"{who}: '{side}' selects on '{key}', which no grid point has; "
                            f"select by {', '.join([*keys, SETTING, CONFIG])}")
    found = _matching(selector, groups, named)
    if len(found) == 1:
        return found[0]
    if not found:
        raise UserError(f"{who}: '{side}' {_shown(selector)} matches no grid point; the points "
                        f"have {_available(selector, groups, named)}")
    apart = [k for k in ("loss.name", "loss.temperature") if len({g.params.get(k)
                                                                  for g in found}) > 1]
    apart += varying_params(found)
    if len({g.arm for g in found}) > 1:
        apart.append(CONFIG)
    points = ", ".join(point_labels(groups)[id(g)] for g in found)
    hint = f"; add {' or '.join(apart)} to tell them apart" if apart else ""
    raise UserError(f"{who}: '{side}' {_shown(selector)} matches {len(found)} grid points "
                    f"({points}){hint}")


# ----------------------------------------------------------------------------- the test


def verdict(test: Welch, alpha: float = ALPHA) -> str:
    """holds / reversed / not resolved at n = N (with the seeds that would resolve it, when
    that is estimable and more than N)."""
    if test.p is not None and test.p < alpha and test.difference > 0:
        return "holds"
    if test.p is not None and test.p < alpha and test.difference < 0:
        return "reversed"
    text = f"not resolved at n = {test.n}"
    if test.undefined:
        return f"{text} ({test.undefined})"
    needed = seeds_to_resolve(test, alpha)
    if needed is not None and needed > test.n:
        text += f"; ≈{needed} seeds per point would resolve it"
    return text


def evaluate(claims: Sequence[Claim], groups: Sequence[Group]) -> list[ClaimResult]:
    """Every claim's two points, Welch's test of higher − lower over their seeds and the
    verdict. A point without the metric, or one point on both sides, is a UserError."""
    named = point_labels(groups)
    results = []
    for claim in claims:
        higher, lower = select(claim, "higher", groups), select(claim, "lower", groups)
        if higher is lower:
            raise UserError(f"claim '{claim.name}': higher and lower both select "
                            f"{named[id(higher)]}; select two different grid points")
        for side, group in (("higher", higher), ("lower", lower)):
            if not group.values(claim.metric):
                logged = sorted({m for r in group.runs for m in r.metrics
                                 if m.startswith("eval/")})
                raise UserError(
                    f"claim '{claim.name}': no run of {named[id(group)]} ('{side}') "
                    f"logged {claim.metric}; give a metric the runs have "
                    f"({', '.join(logged) or 'they logged no eval/ metric'})")
        test = welch(higher.values(claim.metric), lower.values(claim.metric))
        results.append(ClaimResult(claim, higher, lower, named[id(higher)],
                                   named[id(lower)], test, verdict(test)))
    return results


# ----------------------------------------------------------------------------- the table


def _p(p: float | None) -> str:
    if p is None:
        return "—"
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def split_pending(claims: Sequence[Claim], groups: Sequence[Group]
                  ) -> tuple[list[Claim], list[Pending]]:
    """The claims both of whose points have finished runs, and the others with the reason
    (``compare --partial``: a study still running)."""
    ready, pending = [], []
    for claim in claims:
        reason = missing(claim, groups)
        if reason is None:
            ready.append(claim)
        else:
            pending.append(Pending(claim, reason))
    return ready, pending


def claim_rows(results: Sequence[ClaimResult], pending: Sequence[Pending] = ()
               ) -> tuple[list[str], list[list[str]]]:
    """The header and one row per claim (plain text cells); a pending claim's row says what
    it waits for."""
    header = ["claim", "says", "metric", "higher mean ± std (n)", "lower mean ± std (n)",
              "difference ± SE", "Welch t (df)", "p", "verdict"]
    rows = []
    for result in results:
        test, metric = result.test, result.claim.metric
        se = "—" if test.se is None else f"{test.se:.4f}"
        t = "—" if test.t is None or test.df is None else f"{test.t:.2f} ({test.df:.1f})"
        rows.append([
            result.claim.name, result.claim.says, metric,
            f"{result.higher_label}: {result.higher.stat(metric)}",
            f"{result.lower_label}: {result.lower.stat(metric)}",
            f"{test.difference:+.4f} ± {se}", t, _p(test.p), result.verdict,
        ])
    for waiting in pending:
        claim = waiting.claim
        rows.append([claim.name, claim.says, claim.metric, _shown(claim.higher),
                     _shown(claim.lower), "—", "—", "—", f"not tested: {waiting.reason}"])
    return header, rows


def markdown_claims(results: Sequence[ClaimResult], pending: Sequence[Pending] = ()) -> str:
    """The claims table in markdown, after the rule that gives the verdicts."""
    header, rows = claim_rows(results, pending)

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    lines = [RULE, "", line(header), "|" + "---|" * len(header), *map(line, rows)]
    return "\n".join(lines) + "\n"
