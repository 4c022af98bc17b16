"""Consolidation in the planner, on hand-built live data (reconciler.plan.consolidate): the flows of a replaced
reference are moved onto the kept one (switched off and on again when on), the replaced reference is deleted
once nothing uses it, a managed environment only reports, and every refusal has its code."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Mapping
from typing import TypeVar

import pytest
from builders import PLANNING, SVC, desired

from reconciler.domain import flowdef
from reconciler.domain.model import (
    FLOW_OFF,
    FLOW_ON,
    Config,
    FlowSettings,
    LiveDependent,
    LiveEnvironment,
    LiveFlow,
    LiveSolution,
    LiveUser,
    frozen_map,
)
from reconciler.plan.ops import (
    ActivateFlow,
    DeleteReference,
    EnvironmentPlan,
    RepointFlow,
    RetireReference,
    operation_from_dict,
)
from reconciler.plan.planner import PlanProblems, dependency_candidates, plan_environment

T = TypeVar("T")
SOLUTION = "ContosoConnections"
KEPT, OLD = "contoso_SharePoint", "contoso_sharedsharepointonline_8f4b0"
SP = "shared_sharepointonline"
C_SVC = PLANNING.conn("c-svc", "SharePoint svc")
MAKER = LiveUser("u-maker", "oid-maker", "maker@contoso.com", "Maker")
C_MAKER = PLANNING.conn("c-maker", "SharePoint maker", owner=MAKER)


def definition(*logical_names: str, trigger: str = "automated") -> str:
    entries = {(SP if i == 0 else f"{SP}-{i}"): {"runtimeSource": "embedded",
                                                 "connection": {"connectionReferenceLogicalName": n},
                                                 "api": {"name": SP}} for i, n in enumerate(logical_names)}
    actions = {f"A{i}": {"type": "OpenApiConnection", "inputs": {"host": {"connectionName": k}}}
               for i, k in enumerate(entries)}
    triggers = ({"manual": {"type": "Request", "kind": "Button"}} if trigger == "manual" else
                {"When": {"type": "OpenApiConnectionNotification", "inputs": {"host": {"connectionName": SP}}}})
    return json.dumps({"properties": {"connectionReferences": entries,
                                      "definition": {"triggers": triggers, "actions": actions}}})


def flow(name: str, *refs: str, state: int = FLOW_ON, managed: bool = False, trigger: str = "automated") -> LiveFlow:
    cd = definition(*refs, trigger=trigger)
    return LiveFlow(f"wf-{name.lower()}", name, state, MAKER.systemuserid, flowdef.logical_names(cd), (SOLUTION,),
                    trigger="manual" if trigger == "manual" else "automated", managed=managed, etag=f'W/"{name}"',
                    connections=flowdef.connections(cd), clientdata=cd)


def config(*, replaces: tuple[str, ...] = (OLD,), connector: str = SP) -> Config:
    kept = dataclasses.replace(desired(KEPT, "SharePoint"), replaces=replaces)
    cfg = PLANNING.config([kept], {KEPT: "c-svc"})
    env = dataclasses.replace(cfg.environments["dev"], flows=FlowSettings())
    return dataclasses.replace(cfg, environments=frozen_map({"dev": env}))


def live(*flows: LiveFlow, solution: LiveSolution | None = None, old_connector: str = SP,
         dependents: Mapping[str, tuple[LiveDependent, ...]] | None = None) -> LiveEnvironment:
    refs = [PLANNING.ref(KEPT, "SharePoint", connection="c-svc", owner=SVC),
            PLANNING.ref(OLD, "SharePoint-8f4b0", connection="c-maker", owner=MAKER, connector=old_connector)]
    env = PLANNING.live(refs, [C_SVC, C_MAKER], flows=flows, caller=SVC,
                        solution=solution or LiveSolution("sol-1", SOLUTION))
    return dataclasses.replace(env, users=(*env.users, MAKER), dependents=frozen_map(dependents))


def planned(env: LiveEnvironment, cfg: Config | None = None, *, prune: bool = False,
            managed: Collection[str] = (), restore: Collection[str] = ()) -> EnvironmentPlan:
    cfg = cfg or config()
    return plan_environment(cfg, cfg.environments["dev"], env, prune=prune, managed=managed, restore=restore)


def of(plan: EnvironmentPlan, kind: type[T]) -> list[T]:
    return [op for op in plan.ops if isinstance(op, kind)]


def test_flows_on_a_replaced_reference_move_and_it_is_deleted_after_them() -> None:
    approval, request = flow("Approval", OLD, KEPT), flow("Request", OLD, trigger="manual")
    untouched = flow("Intake", KEPT)
    plan = planned(live(approval, request, untouched))
    moves = of(plan, RepointFlow)
    assert [m.logical_name for m in moves] == ["Approval", "Request"]
    a = moves[0]
    assert (a.flow_id, a.etag, a.switch_off) == ("wf-approval", 'W/"Approval"', True)
    assert a.moves == ((OLD, KEPT),)
    assert flowdef.logical_names(a.clientdata) == (KEPT,)  # one entry per reference: the two merged
    assert a.before["references"] == [OLD, KEPT] and a.after["references"] == [KEPT]
    (retire,) = of(plan, RetireReference)
    assert (retire.logical_name, retire.replaced_by, retire.reference_id) == (OLD, KEPT, f"id-{OLD.lower()}")
    assert [f.name for f in retire.flows] == ["Approval", "Request"]
    # Both were on: the plan's flow activation switches them on again, after the moves, judged with their new
    # definitions.
    again = of(plan, ActivateFlow)
    assert sorted(x.logical_name for x in again) == ["Approval", "Request"]
    assert all(x.references == (KEPT,) and "switched off to move it" in x.reason for x in again)
    # Order: references, then moves, then switching on, then the deletion.
    kinds = [op.kind for op in plan.ops]
    assert kinds.index("repoint_flow") < kinds.index("activate_flow") < kinds.index("retire")
    assert kinds.index("retire") == len(kinds) - 1 and kinds.index("repoint_flow") < kinds.index("retire")
    assert plan.counts.change >= 2 and plan.counts.destroy == 1


def test_a_flow_that_is_off_is_edited_and_left_off() -> None:
    cfg = dataclasses.replace(config(), environments=frozen_map({"dev": dataclasses.replace(
        config().environments["dev"], flows=FlowSettings(activate=False))}))
    plan = planned(live(flow("Draft", OLD, state=FLOW_OFF)), cfg)
    (move,) = of(plan, RepointFlow)
    assert move.switch_off is False and "it is off" in move.reason
    assert not of(plan, ActivateFlow)


def test_a_flow_an_earlier_apply_left_off_is_switched_on_with_or_without_its_move() -> None:
    env = live(flow("Half", OLD, state=FLOW_OFF), flow("Done", KEPT, state=FLOW_OFF))
    cfg = dataclasses.replace(config(), environments=frozen_map({"dev": dataclasses.replace(
        config().environments["dev"], flows=FlowSettings(activate=False))}))
    plan = planned(env, cfg, restore=["wf-half", "WF-DONE"])
    (move,) = of(plan, RepointFlow)
    assert (move.logical_name, move.switch_off) == ("Half", False)
    # Both switched on again, even with flows.activate off: connref switched them off.
    on = of(plan, ActivateFlow)
    assert [a.logical_name for a in on] == ["Done", "Half"] and all("earlier apply" in a.reason for a in on)
    assert on[1].references == (KEPT,)  # judged with its new definition


def test_a_running_flow_is_switched_on_again_even_where_the_config_keeps_flows_off() -> None:
    # flows.keep_off names it and flows.activate is off: connref switches off only to edit, so it ends on.
    cfg = dataclasses.replace(config(), environments=frozen_map({"dev": dataclasses.replace(
        config().environments["dev"], flows=FlowSettings(activate=False, keep_off=("Approval",)))}))
    plan = planned(live(flow("Approval", OLD), flow("Idle", KEPT, state=FLOW_OFF)), cfg)
    (move,) = of(plan, RepointFlow)
    (on,) = of(plan, ActivateFlow)
    assert (move.logical_name, move.switch_off, on.logical_name, on.flow_id) == ("Approval", True, "Approval",
                                                                                 "wf-approval")
    assert [n.name for n in plan.flow_notes] == ["Idle"]  # the config still keeps the others off


def test_nothing_to_move_and_nothing_left_plans_only_the_deletion_or_nothing() -> None:
    (retire,) = of(planned(live()), RetireReference)
    assert retire.flows == () and "nothing uses it" in retire.reason
    gone = dataclasses.replace(live(), references=live().references[:1])
    assert not of(planned(gone), RetireReference) and not of(planned(gone), RepointFlow)


def test_another_connector_is_refused() -> None:
    with pytest.raises(PlanProblems) as e:
        planned(live(flow("A", OLD), old_connector="shared_office365"))
    assert [p.code for p in e.value.diagnostics] == ["CR314"]


def test_a_flow_that_could_not_be_switched_on_again_is_refused() -> None:
    # The flow also uses a reference the config leaves alone, bound to the maker's connection, which the
    # service account (the writer) may not use: once switched off, it could not be switched on again.
    other = PLANNING.ref("contoso_Other", "Other", connection="c-maker", owner=MAKER)
    env = live(flow("A", OLD, "contoso_Other"))
    env = dataclasses.replace(env, references=(*env.references, other))
    with pytest.raises(PlanProblems) as e:
        planned(env)
    (said,) = e.value.diagnostics
    assert (said.code, said.subject) == ("CR315", "A")
    assert "could not switch it on again" in said.message and "contoso_Other" in said.message
    # Off, it is simply edited: nothing has to be switched on.
    off = dataclasses.replace(env, flows=(dataclasses.replace(env.flows[0], state=FLOW_OFF),))
    assert of(planned(off), RepointFlow)


def test_a_managed_flow_is_not_edited_and_keeps_the_reference() -> None:
    plan = planned(live(flow("Managed", OLD, managed=True)))
    assert not of(plan, RepointFlow) and not of(plan, RetireReference)
    assert any("CR323" in w or "managed solution" in w for w in plan.warnings)


def test_apps_and_agents_keep_the_reference() -> None:
    deps = frozen_map({f"id-{OLD.lower()}": (LiveDependent("canvas_app", "app-1", "Invoice tracker", 300),)})
    plan = planned(live(flow("A", OLD), dependents=deps))
    assert of(plan, RepointFlow) and not of(plan, RetireReference)
    (warning,) = [w for w in plan.warnings if OLD in w]
    assert 'canvas app "Invoice tracker"' in warning


def test_a_managed_environment_only_reports() -> None:
    env = live(flow("A", OLD), solution=LiveSolution("sol-1", SOLUTION, managed=True))
    env = dataclasses.replace(env, references=tuple(dataclasses.replace(r, managed=True) for r in env.references))
    plan = planned(env)
    assert not of(plan, RepointFlow) and not of(plan, RetireReference)
    (warning,) = [w for w in plan.warnings if OLD in w]
    assert "consolidation arrives with the solution" in warning and '"A"' in warning


def test_prune_leaves_a_replaced_reference_to_the_consolidation() -> None:
    plan = planned(live(flow("A", OLD)), prune=True, managed=[KEPT, OLD])
    deletes = [op for op in plan.ops if isinstance(op, DeleteReference)]
    assert [type(d) for d in deletes] == [RetireReference]


def test_the_dependents_of_a_replaced_reference_are_read_before_the_plan() -> None:
    cfg = config()
    assert dependency_candidates(cfg, {"dev": live(flow("A", OLD))}) == {"dev": [f"id-{OLD.lower()}"]}


def test_operations_round_trip() -> None:
    plan = planned(live(flow("A", OLD, KEPT)))
    for op in plan.ops:
        assert operation_from_dict(json.loads(json.dumps(op.to_dict()))) == op
