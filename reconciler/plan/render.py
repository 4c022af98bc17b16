"""Renderers: the same plan as text for a terminal, JSON for machines, markdown for pull-request comments.

They only read a ``Plan``; they never decide anything, so what is shown is what apply does. The text
follows Terraform's plan output (``+`` create, ``~`` update with ``old -> new`` per field, ``-`` destroy,
``Plan: X to add, Y to change, Z to destroy.``); the JSON follows the spirit of ``terraform show -json``
(versioned ``format_version``, per change ``actions`` as a list, ``before``/``after``, ``applyable``,
``errored``), see reconciler-semantics-and-style.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from reconciler.domain.model import connector_name
from reconciler.errors import PlanError
from reconciler.plan.ops import (
    FORMAT_VERSION,
    AddToSolution,
    Counts,
    CreateReference,
    DeleteReference,
    EnvironmentPlan,
    Op,
    Plan,
    UpdateReference,
)

NO_CHANGES = "No changes. The connection references match the configuration."

_SYMBOL = {"create": "+", "update": "~", "add_to_solution": "~", "delete": "-"}
_COLOR = {"+": "32", "~": "33", "-": "31"}  # ANSI green, yellow, red
_HEADLINE = {
    "create": "will be created",
    "update": "will be updated in place",
    "add_to_solution": "will be added to solution {solution}",
    "delete": "will be destroyed",
}


def summary_line(counts: Counts) -> str:
    return f"Plan: {counts.add} to add, {counts.change} to change, {counts.destroy} to destroy."


def _value(v: Any) -> str:
    """A text value as Terraform shows it: quoted, ``null`` when absent."""
    return "null" if v is None else json.dumps(v, ensure_ascii=False)


def _field_lines(op: Op) -> list[tuple[str, str | None, str]]:
    """(field, before, after) as a person reads them; ``before`` is None when there is no "old"."""
    if isinstance(op, CreateReference):
        lines: list[tuple[str, str | None, str]] = [
            ("connector", None, connector_name(op.connector)),
            ("display_name", None, _value(op.display_name)),
        ]
        if op.description:
            lines.append(("description", None, _value(op.description)))
        lines.append(("connection", None, op.connection.describe() if op.connection else "(unbound)"))
        if op.owner:
            lines.append(("owner", None, op.owner.describe()))
        return lines
    if isinstance(op, UpdateReference):
        lines = []
        for c in op.changes:
            if c.field == "connection":
                old = op.old_connection.describe() if op.old_connection else (c.before or "(unbound)")
                new = op.new_connection.describe() if op.new_connection else (c.after or "(unbound)")
            elif c.field == "owner":
                old, new = c.before or "(none)", c.after or "(none)"
            else:
                old, new = _value(c.before), _value(c.after)
            lines.append((c.field, old, new))
        return lines
    if isinstance(op, AddToSolution):
        return [("solution", "(none)", op.solution)]
    if isinstance(op, DeleteReference):
        lines = [("display_name", None, _value(op.before.get("display_name")))]
        lines.append(("connection", None, op.before.get("connection") or "(unbound)"))
        if op.flows:
            lines.append(("used by flows", None, ", ".join(_value(f.name) for f in op.flows)))
        return lines
    raise TypeError(f"not an operation: {op!r}")


def _headline(op: Op) -> str:
    solution = op.solution if isinstance(op, AddToSolution | CreateReference) else ""
    return f"{op.logical_name} " + _HEADLINE[op.kind].format(solution=solution)


# --------------------------------------------------------------------------- text


def render_text(plan: Plan, *, color: bool) -> str:
    """The plan for a terminal. ANSI colour only when ``color`` is true (the CLI decides, from isatty and
    ``NO_COLOR``: https://no-color.org)."""

    def paint(code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if color else text

    out: list[str] = []
    for env in plan.environments:
        out.append(paint("1", f"Environment {env.environment} (solution {plan.solution}):"))
        if not env.ops:
            out.append("  No changes.")
        for op in env.ops:
            symbol = _SYMBOL[op.kind]
            out.append("")
            out.append(f"  # {_headline(op)}")
            out.append(f"  {paint(_COLOR[symbol], symbol)} {op.logical_name}")
            for name, old, new in _field_lines(op):
                if old is None:
                    out.append(f"      {name}: {new}")
                else:
                    out.append(f"      {paint(_COLOR['~'], '~')} {name}: {old} -> {new}")
            out.append(f"      reason: {op.reason}")
        for w in env.warnings:
            out.append("")
            out.append(f"  {paint('1;33', 'Warning:')} {w}")
        out.append("")
    if plan.has_changes:
        out.append(paint("1", summary_line(plan.counts)))
    else:
        out.append(paint("1;32", NO_CHANGES))
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- JSON


def _change_json(op: Op) -> dict[str, Any]:
    d = op.to_dict()
    change: dict[str, Any] = {
        "address": op.address,
        "environment": op.environment,
        "logical_name": op.logical_name,
        "kind": op.kind,
        "actions": list(op.actions),
        # Terraform's convention: nothing before a create, nothing after a delete.
        "before": None if isinstance(op, CreateReference) else dict(op.before),
        "after": None if isinstance(op, DeleteReference) else dict(op.after),
        "reason": op.reason,
        "reference_id": op.reference_id,
        "etag": op.etag,
    }
    for key in ("changes", "old_connection", "new_connection", "connection", "flows"):
        if key in d:
            change[key] = d[key]
    return change


def _env_json(env: EnvironmentPlan) -> dict[str, Any]:
    return {
        "name": env.environment,
        "fingerprint": env.fingerprint,
        "summary": env.counts.to_dict(),
        "warnings": list(env.warnings),
    }


def render_json(plan: Plan) -> dict[str, Any]:
    """A versioned document (``format_version``: a minor bump only adds fields, a major bump breaks)."""
    return {
        "format_version": plan.format_version,
        "solution": plan.solution,
        "created_at": plan.created_at,
        "config_digest": plan.config_digest,
        "applyable": plan.has_changes,
        "errored": False,
        "summary": plan.counts.to_dict(),
        "environments": [_env_json(e) for e in plan.environments],
        "changes": [_change_json(op) for op in plan.ops],
        "warnings": [w for e in plan.environments for w in e.warnings],
        "errors": [],
    }


def render_json_error(error: PlanError) -> dict[str, Any]:
    """The JSON document for a plan that could not be made: same shape, ``errored`` true."""
    problems: Sequence[str] = getattr(error, "problems", None) or [str(error)]
    return {
        "format_version": FORMAT_VERSION,
        "applyable": False,
        "errored": True,
        "summary": Counts().to_dict(),
        "environments": [],
        "changes": [],
        "warnings": [],
        "errors": list(problems),
    }


# --------------------------------------------------------------------------- markdown


def _md(text: str) -> str:
    """Escape what would break a table cell or be read as HTML."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def render_markdown(plan: Plan) -> str:
    """The plan for a pull-request comment or a job summary (GitHub-flavoured markdown)."""
    counts = plan.counts
    title = summary_line(counts) if plan.has_changes else NO_CHANGES
    out = ["### connref plan", "", f"**{title}**", ""]
    for env in plan.environments:
        out.append(f"#### Environment `{env.environment}` (solution `{plan.solution}`)")
        out.append("")
        if not env.ops:
            out.append("No changes.")
            out.append("")
        else:
            out.append("| | Reference | Changes | Reason |")
            out.append("|---|---|---|---|")
            for op in env.ops:
                cells = []
                for name, old, new in _field_lines(op):
                    cells.append(f"{name}: {_md(new)}" if old is None else f"{name}: {_md(old)} → {_md(new)}")
                action = f"`{_SYMBOL[op.kind]}` {op.kind.replace('_', ' ')}"
                out.append(f"| {action} | `{op.logical_name}` | {'<br>'.join(cells)} | {_md(op.reason)} |")
            out.append("")
        for w in env.warnings:
            out.append(f"> **Warning:** {_md(w)}")
            out.append("")
    return "\n".join(out)
