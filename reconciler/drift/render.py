"""Renderers of drift reports: text for people, versioned JSON for machines, markdown for pull-request
comments and CI job summaries (GitHub ``$GITHUB_STEP_SUMMARY``, Azure DevOps ``##vso[task.uploadsummary]``).

Each takes the reports of every environment checked and returns a string; the CLI prints or writes it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from reconciler.domain.text import inert, md, md_code
from reconciler.drift.detect import FORMAT_VERSION, KIND_ORDER, UNMANAGED, DriftReport, ReferenceDrift
from reconciler.errors import problem_lines

# Names, display names, who and when come from live data: text goes through ``inert``, markdown through
# ``md``/``md_code``, and JSON escapes everything outside ASCII (reconciler.domain.text).

_TITLE = {
    "deleted": "deleted",
    "removed_from_solution": "removed from solution",
    "rebound": "rebound",
    "renamed": "renamed",
    "description_changed": "description changed",
    "connector_changed": "connector changed",
    "owner_changed": "owner changed",
    "customized": "customized (unmanaged layer)",
    "connection_broken": "connection broken",
    "unmanaged": "unmanaged",
}


def _summary(reports: Sequence[DriftReport]) -> str:
    drifted = [r for r in reports if r.has_drift]
    if not drifted:
        n = len(reports)
        return f"No drift in {n} environment{'s' if n != 1 else ''}."
    refs = sum(len(r.references) for r in drifted)
    names = ", ".join(r.environment for r in drifted)
    return (
        f"Drift: {refs} reference{'s' if refs != 1 else ''} changed outside connref in "
        f"{len(drifted)} environment{'s' if len(drifted) != 1 else ''} ({names})."
    )


def _symbol(ref: ReferenceDrift) -> str:
    kinds = set(ref.kinds)
    if "deleted" in kinds:
        return "-"
    if UNMANAGED in kinds:
        return "+"
    if kinds == {"connection_broken"}:
        return "!"
    return "~"


def _who(ref: ReferenceDrift) -> str:
    parts = []
    if ref.changed_by:
        parts.append(f"by {ref.changed_by}")
    if ref.changed_on:
        parts.append(f"on {ref.changed_on}")
    return " ".join(parts)


def render_text(reports: Sequence[DriftReport]) -> str:
    """Terraform-like text: per environment, one block per drifted reference, one line per change."""
    out: list[str] = []
    for rep in reports:
        about = []
        if rep.state_serial is not None:
            about.append(f"state serial {rep.state_serial}")
        if rep.last_apply:
            about.append(f"last apply {rep.last_apply}")
        head = f"Environment {inert(rep.environment)}" + (f" ({inert(', '.join(about))})" if about else " (no state)")
        if not rep.has_drift:
            out.append(f"{head}: no drift in {rep.checked} references.")
        else:
            out.append(f"{head}: {len(rep.references)} of {rep.checked} references changed outside connref:")
            for ref in rep.references:
                who = _who(ref)
                base = "" if ref.baseline == "none" else f" [compared with the {ref.baseline}]"
                out.append(
                    f"  {_symbol(ref)} {inert(ref.logical_name)}{base}"
                    + (f" (last modified {inert(who)})" if who else "")
                )
                for item in ref.items:
                    out.append(f"      {_TITLE[item.kind]}: {inert(item.message)}")
        for note in rep.notes:
            out.append(f"  note: {inert(note)}")
        out.append("")
    out.append(inert(_summary(reports)))
    return "\n".join(out) + "\n"


def render_json(reports: Sequence[DriftReport]) -> str:
    """``{"format_version", "has_drift", "environments": [...]}``; a new minor only adds fields."""
    doc = {
        "format_version": FORMAT_VERSION,
        "has_drift": any(r.has_drift for r in reports),
        "summary": _summary(reports),
        "environments": [r.to_dict() for r in reports],
    }
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def render_json_error(error: BaseException) -> str:
    """The JSON document for a drift check that could not be made: same shape, ``errored`` true and
    ``errors`` one line per problem, so a pipeline reading stdout always gets one document."""
    problems = problem_lines(error)
    doc = {
        "format_version": FORMAT_VERSION,
        "has_drift": False,
        "summary": "Drift could not be checked.",
        "environments": [],
        "errored": True,
        "errors": problems,
    }
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def _md(text: str | None) -> str:
    """A value as literal text in a markdown table cell (empty when there is none)."""
    return md(text) if text else ""


#: The hidden first line of the drift report: a scheduled pipeline finds its one open issue by it and
#: updates that issue instead of opening a new one each day.
DRIFT_MARKER = "<!-- connref:drift -->"
#: GitHub refuses an issue or comment body over 65,536 characters; stay well under it.
MARKDOWN_LIMIT = 60_000


def render_markdown(reports: Sequence[DriftReport], *, limit: int = MARKDOWN_LIMIT) -> str:
    """A markdown document for an issue, a PR comment or a job summary: the marker, a heading with the
    verdict, then a table per drifted environment (reference, change, expected, live, by, when). Rows that
    would take it past ``limit`` characters are counted instead of shown."""
    drift = any(r.has_drift for r in reports)
    out = [DRIFT_MARKER, f"## connref drift: {'drift found' if drift else 'no drift'}", "", _md(_summary(reports)), ""]
    budget = limit - sum(len(x) + 1 for x in out) - 400 * (len(reports) + 1)
    for rep in reports:
        if not rep.has_drift:
            out.append(f"### {_md(rep.environment)}: no drift ({rep.checked} references checked)")
            out.append("")
            continue
        counts = ", ".join(f"{n} {_TITLE[k]}" for k, n in rep.counts.items() if k in KIND_ORDER)
        out.append(f"### {_md(rep.environment)}: {len(rep.references)} changed ({counts})")
        out.append("")
        out.append(
            "Expected: what connref last applied, or the config for a reference it has no record of. "
            "By / When: the last modification of the row."
        )
        out.append("")
        out.append("| Reference | Change | Expected | Live | By | When |")
        out.append("|---|---|---|---|---|---|")
        rows = [
            f"| {md_code(ref.logical_name, table=True)} | {_TITLE[item.kind]} | "
            f"{_md(item.before_label or item.before)} | {_md(item.after_label or item.after)} | "
            f"{_md(ref.changed_by)} | {_md(ref.changed_on)} |"
            for ref in rep.references
            for item in ref.items
        ]
        for i, row in enumerate(rows):
            if budget - len(row) - 1 < 0:
                out.append("")
                out.append(f"… and {len(rows) - i} more changes in {_md(rep.environment)} not shown here: "
                           "`connref drift --json` lists them all.")
                break
            out.append(row)
            budget -= len(row) + 1
        out.append("")
        for n in rep.notes:
            note = f"- {_md(n)}"
            if budget - len(note) - 1 < 0:
                break
            out.append(note)
            budget -= len(note) + 1
        if rep.notes:
            out.append("")
    return "\n".join(out)


def render_markdown_error(error: BaseException) -> str:
    """The drift report for a check that could not be made: the marker, the verdict and every problem."""
    out = [DRIFT_MARKER, "## connref drift: check failed", "", "Drift could not be checked:", ""]
    out.extend(f"- {_md(line)[:2000]}" for line in problem_lines(error)[:50])
    out.append("")
    return "\n".join(out)
