"""Renderers: the same plan as text for a terminal, JSON for machines, markdown for pull-request comments.

They only read a ``Plan``; they never decide anything, so what is shown is what apply does. The text
follows Terraform's plan output (``+`` create, ``~`` update with ``old -> new`` per field, ``-`` destroy,
``Plan: X to add, Y to change, Z to destroy.``); the JSON follows the spirit of ``terraform show -json``
(versioned ``format_version``, per change ``actions`` as a list, ``before``/``after``, ``applyable``,
``errored``; https://developer.hashicorp.com/terraform/internals/json-format).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from reconciler.domain.model import connector_name
from reconciler.domain.rules import Problem
from reconciler.domain.text import html_text, inert, md, md_code, told_apart
from reconciler.errors import problem_lines
from reconciler.plan.ops import (
    FORMAT_VERSION,
    ActivateFlow,
    AddToSolution,
    Counts,
    CreateReference,
    DeleteReference,
    EnvironmentPlan,
    FlowNote,
    Op,
    Plan,
    RepointFlow,
    RetireReference,
    ShareConnection,
    UpdateReference,
)

NO_CHANGES = "No changes. The connection references match the configuration."
#: The header line of an environment whose connections were listed in the caller's scope only.
_CALLER_SCOPE = ("listed in the caller's scope only (the admin list was refused): other owners' connections "
                 "are hidden from this plan; see the warning below")

_SYMBOL = {"create": "+", "update": "~", "add_to_solution": "~", "delete": "-", "share": "+",
           "activate_flow": "~", "repoint_flow": "~", "retire": "-"}
_COLOR = {"+": "32", "~": "33", "-": "31"}  # ANSI green, yellow, red
_HEADLINE = {
    "create": "will be created",
    "update": "will be updated in place",
    "add_to_solution": "will be added to solution {solution}",
    "delete": "will be destroyed",
    "share": "needs its connection shared with the identity that writes",
    "activate_flow": "will be switched on",
    "repoint_flow": "will be moved onto the reference that replaces its per-developer ones",
    "retire": "will be destroyed: it is replaced, and nothing will use it",
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
        return _update_lines(op)
    if isinstance(op, ActivateFlow):
        return _activation_lines(op)
    if isinstance(op, RepointFlow):
        return _repoint_lines(op)
    if isinstance(op, AddToSolution):
        return [("solution", "(none)", op.solution)]
    if isinstance(op, ShareConnection):
        return [("principal", None, f"{op.principal} ({op.principal_type}, object id {op.principal_id})"),
                ("role", None, op.role)]
    if isinstance(op, DeleteReference):
        lines = [("display_name", None, _value(op.before.get("display_name")))]
        lines.append(("connection", None, op.before.get("connection") or "(unbound)"))
        if isinstance(op, RetireReference):
            lines.append(("replaced by", None, op.replaced_by))
            for d in op.flows:
                lines.append(("moved first", None, d.describe()))
            return lines
        for d in op.flows:
            lines.append(("used by", None, d.describe()))
        return lines
    raise TypeError(f"not an operation: {op!r}")


def _update_lines(op: UpdateReference) -> list[tuple[str, str | None, str]]:
    lines: list[tuple[str, str | None, str]] = []
    for c in op.changes:
        if c.field == "connection":
            old = op.old_connection.describe() if op.old_connection else (c.before or "(unbound)")
            new = op.new_connection.describe() if op.new_connection else (c.after or "(unbound)")
        elif c.field == "owner":
            old, new = c.before or "(none)", c.after or "(none)"
        else:
            old, new = told_apart(_value(c.before), _value(c.after))
        lines.append((c.field, old, new))
    # What a rebind reaches: the flows, apps and agents that use the reference.
    for d in op.dependents:
        lines.append(("used by", None, d.describe()))
    return lines


def _activation_lines(op: ActivateFlow) -> list[tuple[str, str | None, str]]:
    lines: list[tuple[str, str | None, str]] = [("state", op.before.get("state") or "Off", "On")]
    if op.owner:
        lines.append(("owner", None, op.owner))
    if op.references:
        lines.append(("uses", None, ", ".join(op.references)))
    if op.pass_number > 1:
        lines.append(("pass", None, f"{op.pass_number} (after its child flows)"))
    return lines


def _repoint_lines(op: RepointFlow) -> list[tuple[str, str | None, str]]:
    lines: list[tuple[str, str | None, str]] = [("reference", old, new) for old, new in op.moves]
    if op.switch_off:
        lines.append(("state", str(op.before.get("state") or "On"), "Off (to edit it; switched on again below)"))
    if op.owner:
        lines.append(("owner", None, op.owner))
    return lines


def _headline(op: Op) -> str:
    solution = op.solution if isinstance(op, AddToSolution | CreateReference) else ""
    return f"{_subject(op)} " + _HEADLINE[op.kind].format(solution=solution)


def _subject(op: Op) -> str:
    if isinstance(op, ShareConnection):
        return op.describe()
    return f'flow "{op.logical_name}"' if isinstance(op, ActivateFlow | RepointFlow) else op.logical_name


def env_header(env: EnvironmentPlan, solution: str) -> str:
    """``Environment test (solution ContosoFlows, managed)``: the mode follows the solution."""
    return f"Environment {inert(env.environment)} (solution {inert(solution)}, {env.mode})"


def note_line(note: FlowNote) -> str:
    """``flow "Nightly cleanup" stays off: the config keeps it off (flows.keep_off)``."""
    return f'flow "{note.name}" stays off: ' + "; ".join(note.reasons)


# Every value shown comes from the config or from live data (display names, connection and flow names,
# reasons that quote them): the text renderer passes each through ``inert`` and the markdown renderer
# through ``md``/``md_code`` (reconciler.domain.text), so none can drive a terminal or add markup.


# --------------------------------------------------------------------------- text


def render_text(plan: Plan, *, color: bool) -> str:
    """The plan for a terminal. ANSI colour only when ``color`` is true (the CLI decides, from isatty and
    ``NO_COLOR``: https://no-color.org)."""

    def paint(code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if color else text

    out: list[str] = []
    for env in plan.environments:
        out.append(paint("1", env_header(env, plan.solution) + ":"))
        if env.connections_scope == "user":
            out.append(f"  {paint('1;33', 'Connections:')} {_CALLER_SCOPE}")
        if not env.ops:
            out.append("  No changes.")
        for op in env.ops:
            symbol = _SYMBOL[op.kind]
            out.append("")
            out.append(f"  # {inert(_headline(op))}")
            out.append(f"  {paint(_COLOR[symbol], symbol)} {inert(_subject(op))}")
            for name, old, new in _field_lines(op):
                if old is None:
                    out.append(f"      {name}: {inert(new)}")
                else:
                    out.append(f"      {paint(_COLOR['~'], '~')} {name}: {inert(old)} -> {inert(new)}")
            out.append(f"      reason: {inert(op.reason)}")
        for n in env.flow_notes:
            out.append("")
            out.append(f"  {paint('1', 'Note:')} {inert(note_line(n))}")
        for w in env.warnings:
            out.append("")
            out.append(f"  {paint('1;33', 'Warning:')} {inert(w)}")
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
    for key in ("changes", "old_connection", "new_connection", "connection", "flows", "dependents",
                "flow_id", "pass_number", "owner", "references", "children", "principal_id",
                "principal_type", "principal", "role", "moves", "switch_off", "replaced_by"):
        if key in d and not (key == "owner" and not isinstance(op, ActivateFlow | RepointFlow)):
            change[key] = d[key]
    return change


def _env_json(env: EnvironmentPlan) -> dict[str, Any]:
    return {
        "name": env.environment,
        "fingerprint": env.fingerprint,
        "summary": env.counts.to_dict(),
        "warnings": list(env.warnings),
        "connections_scope": env.connections_scope,
        "mode": env.mode,
        "flow_notes": [n.to_dict() for n in env.flow_notes],
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


def render_json_error(error: BaseException) -> dict[str, Any]:
    """The JSON document for a plan that could not be made: same shape, ``errored`` true, ``errors`` one line
    per problem, ``diagnostics`` the plan's problems themselves (code, severity, message, fix, where)."""
    diagnostics: Sequence[Problem] = getattr(error, "diagnostics", ())
    return {
        "format_version": FORMAT_VERSION,
        "applyable": False,
        "errored": True,
        "summary": Counts().to_dict(),
        "environments": [],
        "changes": [],
        "warnings": [],
        "errors": problem_lines(error),
        "diagnostics": [p.to_dict() for p in diagnostics],
    }


# --------------------------------------------------------------------------- markdown


#: The hidden first line of every plan comment: a pipeline finds its own comment by it and edits it.
PLAN_MARKER = "<!-- connref:plan -->"
#: GitHub refuses a comment body over 65,536 characters; the markdown stays well under it, leaving room for
#: a pipeline's own header or footer.
GITHUB_COMMENT_LIMIT = 65_536
MARKDOWN_LIMIT = 60_000
_CELL_LIMIT = 400  # characters of one table cell once the plan is folded
_FOOTER_LIMIT = 300


def _row(op: Op, cell_limit: int | None = None) -> str:
    cells = []
    for name, old, new in _field_lines(op):
        cells.append(f"{name}: {md(new)}" if old is None else f"{name}: {md(old)} → {md(new)}")
    action = f"`{_SYMBOL[op.kind]}` {op.kind.replace('_', ' ')}"
    changes, reason = "<br>".join(cells), md(op.reason)
    if cell_limit is not None:
        changes, reason = _clip(changes, cell_limit), _clip(reason, cell_limit)
    return f"| {action} | {md_code(op.logical_name, table=True)} | {changes} | {reason} |"


def _note_md(note: FlowNote) -> str:
    return f"> **Note:** {md(note_line(note))}"


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit]
    # Never cut inside an entity or a <br>: drop the partial one; nor after an escaping backslash.
    for start in ("&", "<"):
        i = cut.rfind(start)
        if i != -1 and (";" if start == "&" else ">") not in cut[i:]:
            cut = cut[:i]
    if (len(cut) - len(cut.rstrip("\\"))) % 2:
        cut = cut[:-1]
    return cut + " …"


_TABLE_HEAD = ["| | Reference | Changes | Reason |", "|---|---|---|---|"]


def _env_title(env: EnvironmentPlan, solution: str) -> str:
    return f"#### Environment {md_code(env.environment)} (solution {md_code(solution)}, {env.mode})"


def _counts_text(counts: Counts) -> str:
    return f"{counts.add} to add, {counts.change} to change, {counts.destroy} to destroy"


def render_markdown(plan: Plan, *, limit: int = MARKDOWN_LIMIT, full_plan_hint: str | None = None) -> str:
    """The plan for a pull-request comment or a job summary (GitHub-flavoured markdown).

    The first line is ``PLAN_MARKER`` (an HTML comment, invisible once rendered) so a pipeline updates its
    own comment instead of adding one per push. When the whole plan would exceed ``limit`` characters, each
    environment is folded into a ``<details>`` block, long cells are clipped, and the rows that do not fit
    are counted instead of shown; ``full_plan_hint`` (e.g. "connref show plan.json") says where the rest is.
    Without it (no plan was saved) the markdown points to the output of the run that wrote it, and says how
    to save a plan to read in full later."""
    counts = plan.counts
    title = summary_line(counts) if plan.has_changes else NO_CHANGES
    head = [PLAN_MARKER, "### connref plan", "", f"**{title}**", ""]
    full = [*head]
    for env in plan.environments:
        full.extend(_env_section(env, plan.solution))
    text = "\n".join(full)
    if len(text) <= limit:
        return text
    return _folded(plan, head, limit, full_plan_hint)


def _env_section(env: EnvironmentPlan, solution: str) -> list[str]:
    out = [_env_title(env, solution), ""]
    if env.connections_scope == "user":
        out.extend([f"**Connections:** {md(_CALLER_SCOPE)}", ""])
    if not env.ops:
        out.extend(["No changes.", ""])
    else:
        out.extend([*_TABLE_HEAD, *(_row(op) for op in env.ops), ""])
    for n in env.flow_notes:
        out.extend([_note_md(n), ""])
    for w in env.warnings:
        out.extend([f"> **Warning:** {md(w)}", ""])
    return out


def _folded(plan: Plan, head: list[str], limit: int, hint: str | None) -> str:
    """The plan within ``limit`` characters: one folded block per environment, rows until the budget ends."""
    # Without a hint no plan was saved (``plan --markdown`` without ``--out``): the full plan exists only in
    # what that run printed, so say so, and how to keep one, instead of pointing to a file that is not there.
    where = (f" The full plan: {md_code(hint)}." if hint else
             " The full plan is in the output of the `connref plan` run that wrote this (e.g. the job log);"
             " `connref plan --out FILE` saves it for `connref show FILE`.")
    out = [*head, "| Environment | Changes |", "|---|---|"]
    out.extend(f"| {md_code(e.environment, table=True)} | {_counts_text(e.counts)} |" for e in plan.environments)
    out.extend(["", f"_This plan is long: details are folded and shortened.{where}_", ""])
    budget = limit - len("\n".join(out)) - _FOOTER_LIMIT * (len(plan.environments) + 1)
    for env in plan.environments:
        block = [f"<details><summary>{html_text(env.environment)}: {_counts_text(env.counts)}</summary>", ""]
        rows: list[str] = []
        shown = 0
        for op in env.ops:
            row = _row(op, _CELL_LIMIT)
            if budget - len(row) - 1 < 0:
                break
            rows.append(row)
            budget -= len(row) + 1
            shown += 1
        if rows:
            block.extend([*_TABLE_HEAD, *rows, ""])
        elif not env.ops:
            block.extend(["No changes.", ""])
        hidden = len(env.ops) - shown
        if hidden:
            block.extend([f"… and {hidden} more change{'s' if hidden != 1 else ''} in {md_code(env.environment)} "
                          f"not shown here.{where}", ""])
        warnings = [_clip(_note_md(n), _CELL_LIMIT) for n in env.flow_notes]
        warnings += [f"> **Warning:** {_clip(md(w), _CELL_LIMIT)}" for w in env.warnings]
        kept = []
        for w in warnings:
            if budget - len(w) - 2 < 0:
                break
            kept.append(w)
            budget -= len(w) + 2
        for w in kept:
            block.extend([w, ""])
        if len(kept) < len(warnings):
            block.extend([f"> … and {len(warnings) - len(kept)} more warnings.", ""])
        block.extend(["</details>", ""])
        out.extend(block)
    return "\n".join(out)


def render_markdown_error(error: BaseException) -> str:
    """The markdown for a plan that could not be made: the marker, the verdict and every problem, so the
    pull request says why instead of keeping a stale plan."""
    out = [PLAN_MARKER, "### connref plan", "", "**The plan could not be made.** Fix these and push again:", ""]
    lines = problem_lines(error)
    budget = MARKDOWN_LIMIT - 500
    for i, line in enumerate(lines):
        item = f"- {_clip(md(line.strip()), 2000)}"
        if budget - len(item) < 0:
            out.append(f"- … and {len(lines) - i} more.")
            break
        out.append(item)
        budget -= len(item) + 1
    out.append("")
    return "\n".join(out)
