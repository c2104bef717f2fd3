"""The comparison as text: the markdown table and the self-contained HTML report (the table,
the claims, the figures)."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

from dist_contrast.compare.claims import RULE, ClaimResult, Pending, claim_rows
from dist_contrast.compare.runs import LOSS, RETRIEVAL_METRICS, TABLE_METRICS, TAU, Group, labels


def table_metrics(groups: Sequence[Group]) -> list[str]:
    """The table's metric columns: :data:`TABLE_METRICS`, then the retrieval metrics some run
    has."""
    retrieval = [m for m in RETRIEVAL_METRICS if any(g.stat(m) is not None for g in groups)]
    return [*TABLE_METRICS, *retrieval]


def table_rows(groups: Sequence[Group]) -> tuple[list[str], list[list[str]]]:
    """The header and one row per grid point: τ ("—" for a loss without one), loss, the
    setting (the sweep config and what varies within it) when that says more than the loss,
    each metric's mean ± std (n) (a text run's retrieval metrics too), and whether any seed
    collapsed."""
    named = labels(groups)
    setting = any(named[id(g)] != g.loss for g in groups)
    metrics = table_metrics(groups)
    header = ["τ", "loss", *(["setting"] if setting else []), "runs", *metrics,
              "eval/collapsed"]
    rows = []
    for group in groups:
        stats = [group.stat(m) for m in metrics]
        rows.append([
            group.params.get(TAU, "—") if group.tau is not None else "—",
            group.params.get(LOSS, "—"), *([named[id(group)]] if setting else []),
            str(len(group.runs)),
            *(str(s) if s is not None else "—" for s in stats),
            "yes" if group.collapsed else "no",
        ])
    return header, rows


def markdown_table(groups: Sequence[Group]) -> str:
    """The table in markdown (also what the CLI prints)."""
    header, rows = table_rows(groups)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _html_table(groups: Sequence[Group]) -> str:
    return _html_rows(*table_rows(groups))


def _html_rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>{body}</tbody>\n</table>"


STYLE = """body{font-family:sans-serif;margin:2em;max-width:80em}
table{border-collapse:collapse;font-size:0.85em}td,th{border:1px solid #ccc;padding:3px 6px}
th{background:#f3f3f3}img{max-width:100%;margin:1em 0;display:block}"""


def _html_claims(claims: Sequence[ClaimResult] | None, pending: Sequence[Pending]) -> str:
    if not claims and not pending:
        return ""
    rule = html.escape(RULE).replace("**", "")
    return (f"<h2>claims</h2>\n<p>{rule}</p>\n"
            f"{_html_rows(*claim_rows(claims or [], pending))}\n")


def html_report(
    title: str, groups: Sequence[Group], figures: Sequence[Path],
    claims: Sequence[ClaimResult] | None = None, pending: Sequence[Pending] = (),
) -> str:
    """One HTML page that opens from a file with no server: the table, the claims (if any),
    then every figure embedded as a base64 ``data:`` URI."""
    images = "\n".join(
        f"<h2>{html.escape(path.stem)}</h2>\n<img alt=\"{html.escape(path.stem)}\" "
        f"src=\"data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}\">"
        for path in figures
    )
    runs = sum(len(g.runs) for g in groups)
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
        f"</title><style>{STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>\n"
        f"<p>{len(groups)} grid points, {runs} runs; mean ± sample std over seeds (n).</p>\n"
        f"{_html_table(groups)}\n{_html_claims(claims, pending)}{images}\n</body></html>\n"
    )
