"""``connref explain``: for each flow, its trigger kind, who its triggers and actions act as and why (per
reference: the invoker, or the owner of the bound connection), the references and connections it uses with
their owners, its own owner and state; automated and scheduled flows that act as a personal account are
flagged (CR211). The verdicts are the rules layer's (``reconciler.domain.runas``); this module picks the flows
and renders them, as text and as a versioned JSON document (``reconciler/schemas/explain-1.json``).

Pure: the command reads the environment and passes it in. ``plan --explain`` renders the same view for the
flows a plan changes, against the environment as the plan leaves it (``projected``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from reconciler.domain import rules, runas
from reconciler.domain.model import Config, LiveEnvironment, LiveFlow, LiveReference
from reconciler.domain.text import inert
from reconciler.errors import ConnrefError

FORMAT_VERSION = "1.0"


@dataclass(frozen=True)
class EnvironmentExplanation:
    environment: str
    flows: tuple[runas.FlowRunAs, ...]
    note: str | None = None


def solution_flows(config: Config, live: LiveEnvironment) -> list[LiveFlow]:
    """The flows explain shows by default: the solution's, and any flow using one of the solution's or the
    config's references."""
    sol = config.solution.lower()
    names = {r.logical_name.lower() for r in live.references if r.in_solution}
    names |= {n.lower() for n in config.references}
    names |= {n.lower() for ref in config.references.values() for n in ref.replaces}
    return [f for f in live.flows
            if any(s.lower() == sol for s in f.solutions) or any(r.lower() in names for r in f.references)]


def select_flows(config: Config, env_name: str, live: LiveEnvironment, wanted: Sequence[str]) -> list[LiveFlow]:
    """The flows named in ``wanted`` (a name or a ``workflowid``, without case), or by default the solution's;
    a name that matches no flow is an error naming the flows there are."""
    if not wanted:
        return sorted(solution_flows(config, live), key=lambda f: (f.name.lower(), f.id))
    out: list[LiveFlow] = []
    unknown: list[str] = []
    for w in wanted:
        key = w.strip().lower()
        found = [f for f in live.flows if f.id.lower() == key or f.name.lower() == key]
        if not found:
            unknown.append(w)
        out.extend(f for f in sorted(found, key=lambda f: (f.name.lower(), f.id)) if f not in out)
    if unknown:
        there = ", ".join(f'"{inert(f.name)}"' for f in sorted(live.flows, key=lambda f: f.name.lower())) or "none"
        raise ConnrefError(f"no flow named {', '.join(repr(u) for u in unknown)} in environment {env_name} "
                           f"(its cloud flows: {there}); give a flow's name or its workflowid")
    return out


def explain_environment(config: Config, env_name: str, live: LiveEnvironment,
                        flows: Iterable[LiveFlow]) -> EnvironmentExplanation:
    env = config.environments.get(env_name)
    sa = env.service_account if env is not None else None
    note = None if sa else (f"environment {env_name} has no service_account in the config: a connection owner "
                            "counts as a personal account unless it is an application user")
    return EnvironmentExplanation(
        env_name,
        tuple(runas.explain_flow(f, live, service_account=sa, environment=env_name) for f in flows),
        note,
    )


# --------------------------------------------------------------------------- the environment a plan leaves


def projected(live: LiveEnvironment, ops: Sequence[Any]) -> LiveEnvironment:
    """``live`` as a plan's operations leave it: references created, rebound or deleted, flows re-pointed
    (their new definition). Operations of other kinds change nothing here."""
    from reconciler.domain import flowdef
    from reconciler.plan import ops as plan_ops

    refs: dict[str, LiveReference] = {r.logical_name.lower(): r for r in live.references}
    flows = {f.id.lower(): f for f in live.flows}
    for op in ops:
        key = op.logical_name.lower()
        if isinstance(op, plan_ops.CreateReference):
            refs[key] = LiveReference("", op.logical_name, op.display_name, op.connector,
                                      op.connection.name if op.connection else None, op.description,
                                      op.owner.systemuserid if op.owner else None, "", True)
        elif isinstance(op, plan_ops.UpdateReference) and op.new_connection is not None and key in refs:
            refs[key] = replace(refs[key], connection=op.new_connection.name)
        elif isinstance(op, plan_ops.DeleteReference):
            refs.pop(key, None)
        elif getattr(op, "flow_id", None) and getattr(op, "clientdata", None):
            old = flows.get(str(op.flow_id).lower())
            if old is not None:
                new = str(op.clientdata)
                flows[old.id.lower()] = replace(old, clientdata=new, connections=flowdef.connections(new),
                                                references=flowdef.logical_names(new))
    return replace(live, references=tuple(refs.values()), flows=tuple(flows.values()))


def affected_flows(live: LiveEnvironment, ops: Sequence[Any]) -> list[LiveFlow]:
    """The flows a plan's operations touch: those using a reference it creates, rebinds or deletes, and those
    it edits or switches."""
    names = {op.logical_name.lower() for op in ops if getattr(op, "kind", "") in ("create", "update", "delete")}
    ids = {str(op.flow_id).lower() for op in ops if getattr(op, "flow_id", None)}
    return sorted((f for f in live.flows if f.id.lower() in ids or any(r.lower() in names for r in f.references)),
                  key=lambda f: (f.name.lower(), f.id))


# --------------------------------------------------------------------------- text


def _flow_head(e: runas.FlowRunAs) -> str:
    f = e.flow
    facts = [f.state_name, f"owner {e.owner or 'unknown'}", runas.TRIGGER_WORDS[e.trigger]]
    if f.trigger_name:
        facts.append(f"trigger {f.trigger_name}")
    if f.managed:
        facts.append("managed")
    return f'  flow "{f.name}"  ' + ", ".join(facts)


def _identity_lines(i: runas.Identity) -> list[str]:
    where = f"reference {i.reference}" if i.reference else (
        f"connection {i.entry.connection_name} (bound directly)" if i.entry.connection_name else "no reference")
    connector = i.entry.connector or ""
    shown = f" ({connector})" if connector and not i.entry.key.lower().startswith(connector.lower()) else ""
    lines = [f"    {i.entry.key}{shown}: {where}"]
    if i.kind == runas.OWNER:
        personal = {True: ", a personal account", False: "", None: ""}[i.personal]
        lines.append(f"      runs as {i.principal or 'an unknown owner'}{personal}, through connection "
                     f"{i.connection_label}")
        if i.connection is not None and not rules.is_connected(i.connection):
            lines.append(f"      the connection's status is {i.connection.status}, not Connected: these steps fail")
    elif i.kind == runas.INVOKER:
        lines.append("      runs as the person who runs the flow")
    else:
        lines.append("      runs as nobody")
    lines.append(f"      why: {i.why}")
    return lines


def render_text(explanations: Sequence[EnvironmentExplanation], *, heading: str | None = None) -> str:
    out: list[str] = [heading] if heading else []
    for env in explanations:
        out.append(f"Environment {env.environment}")
        if not env.flows:
            out.append("  no flows")
        for e in env.flows:
            out.append(_flow_head(e))
            if not e.identities:
                out.append("    uses no connection")
            for i in e.identities:
                out += _identity_lines(i)
            for p in e.problems:
                out.append(f"    ! {p.code} {p.name}: {p.message}")
                out.append(f"      fix: {p.fix}")
        if env.note:
            out.append(f"  note: {env.note}")
        out.append("")
    # Names, owners and connections come from live data: shown inert.
    return "\n".join(inert(line) for line in out).rstrip("\n") + "\n"


# --------------------------------------------------------------------------- JSON


def _identity_doc(i: runas.Identity) -> dict[str, Any]:
    conn = i.connection
    return {
        "key": i.entry.key,
        "reference": i.reference,
        "connector": i.entry.connector,
        "runtime_source": i.entry.runtime_source,
        "runs_as": {"kind": i.kind, "principal": i.principal, "personal": i.personal},
        "connection": None if conn is None else {
            "name": conn.name, "display_name": conn.display_name, "owner": i.principal, "status": conn.status},
        "why": i.why,
    }


def flow_doc(e: runas.FlowRunAs) -> dict[str, Any]:
    f = e.flow
    return {
        "id": f.id,
        "name": f.name,
        "state": f.state_name,
        "owner": e.owner,
        "trigger": e.trigger,
        "trigger_name": f.trigger_name,
        "managed": f.managed,
        "solutions": list(f.solutions),
        "runs_as": list(e.principals),
        "connections": [_identity_doc(i) for i in e.identities],
        "problems": [p.to_dict() for p in e.problems],
    }


def render_json_doc(explanations: Sequence[EnvironmentExplanation]) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "environments": [
            {"environment": env.environment, "note": env.note, "flows": [flow_doc(e) for e in env.flows]}
            for env in explanations
        ],
    }


def render_json(explanations: Sequence[EnvironmentExplanation]) -> str:
    # ASCII: no control or bidi character from live data reaches a terminal.
    return json.dumps(render_json_doc(explanations), indent=2) + "\n"


def explain_for_plan(config: Config, lives: Mapping[str, LiveEnvironment],
                     ops_by_env: Mapping[str, Sequence[Any]]) -> list[EnvironmentExplanation]:
    """``plan --explain``: per environment with changes, the flows they touch, as the plan leaves them."""
    out: list[EnvironmentExplanation] = []
    for name, ops in ops_by_env.items():
        live = lives.get(name)
        if live is None or not ops:
            continue
        after = projected(live, ops)
        touched = {f.id.lower() for f in affected_flows(live, ops)}
        out.append(explain_environment(config, name, after,
                                       [f for f in sorted(after.flows, key=lambda f: (f.name.lower(), f.id))
                                        if f.id.lower() in touched]))
    return out
