"""Consolidation: move the flows of the references the config replaces (``replaces:``) onto the kept one, then
delete the replaced references once nothing uses them. Pure: the planner calls ``plan_consolidation`` with what
it has read and planned, and adds the operations it returns.

In an **unmanaged** (development) environment, for each replaced reference found there:

- its connector must be the kept reference's (a flow cannot move between connectors: CR314, the plan is
  refused);
- each flow using it gets a ``RepointFlow``: its definition moved off every replaced reference it uses
  (``reconciler.domain.flowdef.repoint``, docs/dataverse.md §5.9, §5.10). A flow that is on is switched off
  and edited by it, and switched on again by the plan's flow activation (an ``ActivateFlow``, in its pass,
  whatever ``flows.activate`` and ``flows.keep_off`` say: ``again``); the identity that writes must be able
  to switch it on again with the connections it will then use (``rules.activation_verdict``), else the plan
  is refused (CR315) rather than leave a running flow off. A managed flow is not edited (its solution owns
  it): reported, and the replaced reference stays;
- the reference gets a ``RetireReference`` once nothing else uses it: flows that are not moved, canvas apps
  and Copilot Studio agents (``RetrieveDependenciesForDelete``, docs/dataverse.md §2.7) keep it (CR323), as
  does being managed itself.

Flows an earlier apply switched off to move them and did not switch on again (the state's flows to restore)
are switched on again the same way, whether their move is still to do or not.

In a **managed** (downstream) environment the consolidation arrives with the solution: a replaced reference
still there is reported (CR104), never written.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace

from reconciler.domain import consolidation, flowdef, rules
from reconciler.domain.model import (
    FLOW_OFF,
    Config,
    EnvironmentConfig,
    FlowSettings,
    LiveEnvironment,
    LiveFlow,
    LiveReference,
    LiveUser,
)
from reconciler.domain.rules import Problem, problem
from reconciler.plan.ops import FlowInfo, RepointFlow, RetireReference


@dataclass
class ConsolidationPlan:
    """What consolidation adds to an environment's plan."""

    repoints: list[RepointFlow] = field(default_factory=list)
    retires: list[RetireReference] = field(default_factory=list)
    # Ids (lower case) of the flows to switch on again whatever the config says: those the moves switch off,
    # and the state's flows to restore that are off.
    again: set[str] = field(default_factory=set)
    warnings: list[Problem] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    # Flow id (lower case) -> the flow with its new definition: what activation judges.
    projected: dict[str, LiveFlow] = field(default_factory=dict)


@dataclass(frozen=True)
class _Scope:
    config: Config
    env: EnvironmentConfig
    live: LiveEnvironment
    writer: LiveUser | None
    bound_after: Mapping[str, str | None]
    user_label: Callable[[str | None], str | None]
    granted: frozenset[str] = frozenset()

    def problem(self, code: str, subject: str | None, message: str, fix: str) -> Problem:
        return problem(code, message, fix, environment=self.env.name, subject=subject)

    @property
    def who(self) -> str:
        return self.writer.describe() if self.writer else "the identity that writes"


def replaced_references(config: Config, live: LiveEnvironment) -> dict[str, tuple[LiveReference, str]]:
    """Lower-cased logical name -> (the live reference the config replaces, the name of the one kept)."""
    out: dict[str, tuple[LiveReference, str]] = {}
    for ref in live.references:
        kept = config.replaced_by(ref.logical_name)
        if kept is not None:
            out[ref.logical_name.lower()] = (ref, kept.logical_name)
    return out


def plan_consolidation(
    config: Config,
    env: EnvironmentConfig,
    live: LiveEnvironment,
    *,
    writer: LiveUser | None,
    bound_after: Mapping[str, str | None],
    restore: Collection[str] = (),
    managed_env: bool = False,
    user_label: Callable[[str | None], str | None] = lambda u: u,
    granted: Collection[str] = (),
) -> ConsolidationPlan:
    """The consolidation of one environment (module docstring). ``bound_after``: lower-case logical name ->
    the connection each reference will have once the plan's reference operations are written; ``restore``:
    the ids of the flows an earlier apply switched off to move them (the state's flows to restore);
    ``granted``: the connections (lower-case names) the plan shares with the writer first."""
    scope = _Scope(config, env, live, writer, bound_after, user_label, frozenset(granted))
    out = ConsolidationPlan()
    replaced = replaced_references(config, live)
    restore_ids = {r.lower() for r in restore}
    if managed_env:
        out.warnings += [_leftover(scope, ref, kept) for ref, kept in replaced.values()]
        return out
    usable = _check_connectors(scope, replaced, out)
    moves = {name: kept for name, (_, kept) in usable.items()}
    moved: set[str] = set()
    out.again = {f.id.lower() for f in live.flows if f.id.lower() in restore_ids and f.state == FLOW_OFF}
    for flow in sorted(live.flows, key=lambda f: (f.name.lower(), f.id)):
        if not any(r.lower() in moves for r in flow.references):
            continue
        op = _repoint(scope, flow, moves, out)
        if op is not None:
            out.repoints.append(op)
            moved.add(flow.id.lower())
    _check_switch_on(scope, out)
    for key in sorted(usable):
        ref, kept = usable[key]
        retire = _retire(scope, ref, kept, moved, out)
        if retire is not None:
            out.retires.append(retire)
    return out


def _leftover(scope: _Scope, ref: LiveReference, kept: str) -> Problem:
    flows = consolidation.flows_using(scope.live, ref.logical_name)
    users = ", ".join(f'"{f.name}"' for f in flows) or "no flow"
    return scope.problem(
        "CR104", ref.logical_name,
        f"replaced by {kept} in the config, but still in environment {scope.env.name}, whose solution "
        f"{scope.config.solution} is managed: the consolidation arrives with the solution (used by: {users})",
        f"move the flows onto {kept} and remove {ref.logical_name} from {scope.config.solution} in development; "
        "the next managed import removes it here",
    )


def _check_connectors(scope: _Scope, replaced: Mapping[str, tuple[LiveReference, str]],
                      out: ConsolidationPlan) -> dict[str, tuple[LiveReference, str]]:
    """The replaced references whose flows can move: the others are refused (CR314)."""
    usable: dict[str, tuple[LiveReference, str]] = {}
    for name, (ref, kept) in replaced.items():
        desired = scope.config.reference(kept)
        assert desired is not None  # replaced_by returned it
        if not rules.same_connector(ref.connector, desired.connector):
            out.problems.append(scope.problem(
                "CR314", ref.logical_name,
                f"replaced by {kept}, but it is a reference for connector {consolidation.connector_label(ref)} "
                f"and {kept} for {consolidation.connector_label(desired)}: a flow cannot move between connectors",
                f"list it under the replaces: of a reference for {consolidation.connector_label(ref)}",
            ))
            continue
        usable[name] = (ref, kept)
    return usable


def _repoint(scope: _Scope, flow: LiveFlow, moves: Mapping[str, str], out: ConsolidationPlan) -> RepointFlow | None:
    if flow.managed:
        out.warnings.append(scope.problem(
            "CR323", flow.name,
            f"flow \"{flow.name}\" uses {_names(flow, moves)}, which the config replaces, but it is part of a "
            "managed solution: connref does not edit it, so the reference stays",
            "move it where its solution is developed and import the new version"))
        return None
    new = flowdef.repoint(flow.clientdata, moves)
    if new is None:
        out.problems.append(scope.problem(
            "CR316", flow.name,
            f"flow \"{flow.name}\" uses {_names(flow, moves)}, which the config replaces, but its definition "
            "could not be read to move it",
            "move it onto the kept reference in the flow designer, then plan again"))
        return None
    after = flowdef.logical_names(new)
    switch_off = flow.is_on
    out.projected[flow.id.lower()] = replace(flow, clientdata=new, connections=flowdef.connections(new),
                                             references=after, state=FLOW_OFF if switch_off else flow.state)
    used = [r for r in flow.references if r.lower() in moves]
    kept = sorted({moves[r.lower()] for r in used}, key=str.lower)
    if switch_off:
        out.again.add(flow.id.lower())
    how = ("it is on: switched off to be edited, then switched on again" if switch_off else
           "an earlier apply switched it off to move it: edited, then switched on again"
           if flow.id.lower() in out.again else
           "it is off: edited; whether it is then switched on is the flow activation's (below)")
    return RepointFlow(
        environment=scope.env.name,
        logical_name=flow.name,
        etag=flow.etag or None,
        reason=f"it uses {', '.join(used)}, which the config replaces by {', '.join(kept)}; {how}",
        before={"references": list(flow.references), "state": flow.state_name},
        after={"references": list(after), "state": "Off" if switch_off else flow.state_name},
        flow_id=flow.id,
        clientdata=new,
        moves=tuple((r, moves[r.lower()]) for r in used),
        switch_off=switch_off,
        owner=scope.user_label(flow.owner_id),
    )


def _names(flow: LiveFlow, moves: Mapping[str, str]) -> str:
    return ", ".join(r for r in flow.references if r.lower() in moves)


def _check_switch_on(scope: _Scope, out: ConsolidationPlan) -> None:
    """Every flow the consolidation switches off must be able to come on again with the connections it will
    use (``rules.activation_verdict``, as the plan's flow activation judges it): else the plan is refused for
    it (CR315). The moves are ordered children first."""
    switched = {op.flow_id.lower() for op in out.repoints if op.switch_off}
    if not switched:
        return
    flows = {f.id.lower(): f for f in scope.live.flows}
    flows.update(out.projected)
    verdict = rules.activation_verdict(
        [flows[f] for f in sorted(switched)], flows, bound_after=scope.bound_after,
        connection=scope.live.connection, describe=lambda c: rules.describe_connection(c, scope.live),
        writer=scope.writer, writer_label=scope.who, settings=FlowSettings(), live=scope.live,
        granted=scope.granted, restore=switched)
    passes = {a.flow.id.lower(): a.pass_number for a in verdict.activations}
    for held in verdict.held:
        out.problems.append(scope.problem(
            "CR315", held.flow.name,
            f"flow \"{held.flow.name}\" is on: moving it onto the kept reference means switching it off and on "
            f"again, and {scope.who} could not switch it on again: " + "; ".join(held.reasons),
            "fix what stops it from being switched on, then plan again (connref does not leave a running flow off)"))
    out.repoints.sort(key=lambda op: (passes.get(op.flow_id.lower(), 0), op.logical_name.lower(), op.flow_id))


def _retire(scope: _Scope, ref: LiveReference, kept: str, moved: Collection[str],
            out: ConsolidationPlan) -> RetireReference | None:
    """Delete the replaced reference, unless something other than the flows moved now uses it."""
    if ref.managed:
        out.warnings.append(scope.problem(
            "CR323", ref.logical_name,
            f"replaced by {kept}, but it is part of a managed solution: connref does not delete it",
            "remove it from its solution where that solution is developed"))
        return None
    flows = consolidation.flows_using(scope.live, ref.logical_name)
    blocking = consolidation.still_used(scope.live, ref, moved)
    if blocking:
        out.warnings.append(scope.problem(
            "CR323", ref.logical_name,
            f"replaced by {kept}, but not deleted: " + "; ".join(blocking) + (" uses" if len(blocking) == 1
                                                                              else " use") + " it",
            f"move them onto {kept} (apps and agents in the maker portal), then apply again"))
        return None
    before = {
        "logical_name": ref.logical_name, "connector": ref.connector, "display_name": ref.display_name,
        "description": ref.description, "connection": ref.connection,
        "owner": scope.user_label(ref.owner_id), "in_solution": ref.in_solution,
    }
    moved_flows = tuple(FlowInfo(f.id, f.name, "flow", f.state_name, scope.user_label(f.owner_id)) for f in flows)
    return RetireReference(
        environment=scope.env.name,
        logical_name=ref.logical_name,
        reference_id=ref.id,
        etag=ref.etag,
        reason=f"replaced by {kept} in the config; deleted once its flows are moved"
               if moved_flows else f"replaced by {kept} in the config, and nothing uses it",
        before=before,
        flows=moved_flows,
        replaced_by=kept,
    )
