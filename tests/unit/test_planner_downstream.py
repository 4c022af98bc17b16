"""The planner in managed (downstream) environments and for flows, on hand-built live data: the mode from the
solution, bind and owner only, what is reported instead of written, which flows are switched on in which
pass and why the others stay off (docs/dataverse.md §2.6, §2.7, §5.6, §5.8; rules in reconciler.domain.rules)."""

from __future__ import annotations

import dataclasses

import pytest
from builders import PLANNING, SA, SVC, TEAMS, desired

from reconciler.domain import rules
from reconciler.domain.model import (
    FLOW_OFF,
    FLOW_ON,
    FLOW_SUSPENDED,
    Config,
    EnvironmentConfig,
    FlowSettings,
    LiveDependent,
    LiveEnvironment,
    LiveFlow,
    LiveSolution,
    frozen_map,
)
from reconciler.errors import PlanError
from reconciler.plan.ops import ActivateFlow, EnvironmentPlan, UpdateReference
from reconciler.plan.planner import PlanProblems, dependency_candidates, plan_environment

SOLUTION = "ContosoConnections"
MANAGED = LiveSolution("sol-1", SOLUTION, managed=True)
C_SP = PLANNING.conn("c-sp", "SharePoint svc")
C_TEAMS = PLANNING.conn("c-teams", "Teams svc", connector=TEAMS)
C_MAKER = PLANNING.conn("c-maker", "SharePoint maker", owner=dataclasses.replace(SVC, systemuserid="u-m",
                                                                                   object_id="oid-m", upn="m@x"))


def off(name: str, *refs: str, children: tuple[str, ...] = (), state: int = FLOW_OFF,
        solutions: tuple[str, ...] = (SOLUTION,)) -> LiveFlow:
    return LiveFlow(f"wf-{name.lower()}", name, state, SVC.systemuserid, refs, solutions, children=children,
                    etag='W/"7"')


def config(*, flows: FlowSettings | None = None, bindings: dict[str, str] | None = None,
           extra: tuple[str, ...] = ()) -> Config:
    refs = [desired("contoso_SP", "SharePoint"), desired("contoso_Teams", "Teams", connector=TEAMS)]
    refs += [desired(n, n) for n in extra]
    default = {"contoso_SP": "c-sp", "contoso_Teams": "c-teams"}
    cfg = PLANNING.config(refs, bindings if bindings is not None else default)
    env = dataclasses.replace(cfg.environments["dev"], flows=flows or FlowSettings())
    return dataclasses.replace(cfg, environments=frozen_map({"dev": env}))


def managed_live(flows: tuple[LiveFlow, ...] = (), **kw: object) -> LiveEnvironment:
    refs = [dataclasses.replace(PLANNING.ref("contoso_SP", "SharePoint", owner=SVC), managed=True),
            dataclasses.replace(PLANNING.ref("contoso_Teams", "Teams", connector=TEAMS, owner=SVC), managed=True)]
    live = PLANNING.live(refs, [C_SP, C_TEAMS, C_MAKER], flows=flows, caller=SVC, solution=MANAGED)
    return dataclasses.replace(live, **kw)  # type: ignore[arg-type]


def plan_dev(cfg: Config, live: LiveEnvironment, **kw: object) -> EnvironmentPlan:
    env: EnvironmentConfig = cfg.environments["dev"]
    return plan_environment(cfg, env, live, **kw)  # type: ignore[arg-type]


def test_mode_follows_the_solution() -> None:
    assert rules.environment_mode(MANAGED) == rules.MANAGED
    assert rules.environment_mode(dataclasses.replace(MANAGED, managed=False)) == rules.UNMANAGED
    assert rules.environment_mode(None) == rules.UNMANAGED
    assert plan_dev(config(), managed_live()).mode == "managed"


def test_managed_plans_bind_and_owner_only_and_reports_names() -> None:
    live = managed_live()
    live = dataclasses.replace(live, references=tuple(
        dataclasses.replace(r, display_name="Old name", connection=None, owner_id="u-maker1") for r in live.references))
    ep = plan_dev(config(), live)
    fields = {op.logical_name: {c.field for c in op.changes} for op in ep.ops if isinstance(op, UpdateReference)}
    assert fields == {"contoso_SP": {"connection", "owner"}, "contoso_Teams": {"connection", "owner"}}
    assert len([w for w in ep.warnings if "the display name is \"Old name\" here" in w
                and "change it in development" in w]) == 2


def test_a_missing_reference_in_a_managed_environment_is_refused() -> None:
    with pytest.raises(PlanError) as info:
        plan_dev(config(extra=("contoso_Sql",)), managed_live())
    assert isinstance(info.value, PlanProblems)
    (p,) = info.value.diagnostics
    assert p.code == "CR313" and p.subject == "contoso_Sql" and "ship it in the solution" in p.fix


def test_an_unmanaged_layer_is_reported_unless_it_only_binds() -> None:
    live = managed_live(layers=frozen_map({"id-contoso_sp": ("connectionreferencedisplayname",),
                                           "id-contoso_teams": ("connectionid", "_ownerid_value")}))
    ep = plan_dev(config(), live)
    layered = [w for w in ep.warnings if "unmanaged layer" in w]
    assert len(layered) == 1 and "contoso_SP" in layered[0] and "display name" in layered[0]


def test_prune_never_touches_a_managed_reference() -> None:
    cfg = config()
    cfg = dataclasses.replace(cfg, references=frozen_map({"contoso_SP": cfg.references["contoso_SP"]}))
    ep = plan_dev(cfg, managed_live(), prune=True, managed=["contoso_Teams"])
    assert not [op for op in ep.ops if op.kind == "delete"]
    assert any("contoso_Teams" in w and "prune leaves it" in w for w in ep.warnings)


def test_a_delete_something_depends_on_is_kept_and_names_it() -> None:
    live = PLANNING.live([PLANNING.ref("contoso_Old")], caller=SVC)
    app = LiveDependent("canvas_app", "app-1", "Invoice tracker", 300, None, "u-svc")
    cfg = PLANNING.config([], {})
    assert dependency_candidates(cfg, {"dev": live}, prune=True, managed={"dev": ["contoso_Old"]}) == {
        "dev": ["id-contoso_old"]}
    kept = dataclasses.replace(live, dependents=frozen_map({"id-contoso_old": (app,)}))
    ep = plan_dev(cfg, kept, prune=True, managed=["contoso_Old"])
    assert ep.ops == ()
    assert ep.warnings == ('dev: contoso_Old: no longer declared but not deleted: canvas app "Invoice tracker" '
                           f"(owner {SA}) uses it; bind them to another reference, or remove them, before pruning it",)


# --------------------------------------------------------------------------- flows


def test_children_are_switched_on_in_an_earlier_pass_than_their_parents() -> None:
    child = off("Child", "contoso_Teams")
    grandchild = off("Grandchild", "contoso_SP")
    parent = off("Parent", "contoso_SP", children=(child.id, grandchild.id))
    top = off("Top", children=(parent.id,))
    already = off("Running", "contoso_SP", state=FLOW_ON)
    ep = plan_dev(config(), managed_live(flows=(top, parent, child, grandchild, already)))
    acts = {op.logical_name: op.pass_number for op in ep.activations}
    assert acts == {"Child": 1, "Grandchild": 1, "Parent": 2, "Top": 3}
    assert [op.logical_name for op in ep.ops if isinstance(op, ActivateFlow)] == ["Child", "Grandchild", "Parent",
                                                                                  "Top"]
    (first,) = [op for op in ep.activations if op.logical_name == "Parent"]
    assert first.flow_id == "wf-parent" and first.etag == 'W/"7"' and first.children == (child.id, grandchild.id)
    assert ep.counts.change == 6  # two references bound, and one change per flow switched on
    assert ep.flow_notes == ()


def test_flows_that_cannot_be_switched_on_say_why() -> None:
    unbound = off("Unbound", "contoso_Teams")
    parent = off("Parent", "contoso_SP", children=(unbound.id, "wf-missing"))
    suspended = off("Paused", "contoso_SP", state=FLOW_SUSPENDED)
    elsewhere = off("Other solution", "contoso_Teams", solutions=("Another",))
    cfg = config(bindings={"contoso_SP": "c-sp"})  # contoso_Teams stays unbound
    ep = plan_dev(cfg, managed_live(flows=(unbound, parent, suspended, elsewhere)))
    assert ep.activations == ()
    notes = {n.name: (n.kind, n.reasons) for n in ep.flow_notes}
    assert notes["Unbound"] == ("held", ("reference contoso_Teams has no connection: bind it in the config",))
    assert notes["Parent"][0] == "held" and set(notes["Parent"][1]) == {
        'runs child flow "Unbound", which stays off', "runs child flow wf-missing, which is not in the environment"}
    assert notes["Paused"][0] == "suspended"
    assert "Other solution" not in notes  # only the solution's flows


def test_a_connection_the_writer_may_not_use_keeps_the_flow_off() -> None:
    live = managed_live(flows=(off("Maker's", "contoso_SP"),))
    live = dataclasses.replace(live, references=tuple(
        dataclasses.replace(r, connection="c-maker") if r.logical_name == "contoso_SP" else r
        for r in live.references))
    ep = plan_dev(config(bindings={"contoso_Teams": "c-teams"}), live)  # contoso_SP left as it is
    (note,) = ep.flow_notes
    assert note.kind == "held" and f"neither owned by nor shared with {SA}, which switches flows on" in note.reasons[0]


def test_a_connection_apply_shares_first_lets_the_flow_be_switched_on() -> None:
    """With grant_access, apply shares the connection with the writer before binding it (docs/dataverse.md
    §4.8): the flow that uses it is switched on, not held."""
    live = managed_live(flows=(off("Maker's", "contoso_SP"),))
    cfg = config(bindings={"contoso_SP": "c-maker", "contoso_Teams": "c-teams"})
    with pytest.raises(PlanProblems):  # the writer may not bind it as it is
        plan_dev(cfg, live)
    env = dataclasses.replace(cfg.environments["dev"], grant_access=True)
    ep = plan_dev(dataclasses.replace(cfg, environments=frozen_map({"dev": env})), live)
    assert [op.kind for op in ep.ops if op.kind == "share"] == ["share"]
    assert [op.logical_name for op in ep.activations] == ["Maker's"] and ep.flow_notes == ()


def test_activation_off_or_a_flow_kept_off() -> None:
    flows = (off("Nightly", "contoso_SP"), off("Intake", "contoso_SP"))
    ep = plan_dev(config(flows=FlowSettings(keep_off=("NIGHTLY",))), managed_live(flows=flows))
    assert [op.logical_name for op in ep.activations] == ["Intake"]
    assert [(n.name, n.kind) for n in ep.flow_notes] == [("Nightly", "kept_off")]
    ep = plan_dev(config(flows=FlowSettings(activate=False)), managed_live(flows=flows))
    assert ep.activations == () and {n.kind for n in ep.flow_notes} == {"kept_off"}



def test_a_keep_off_entry_that_names_no_flow_is_refused_not_ignored() -> None:
    flows = (off("Nightly", "contoso_SP"), off("Intake", "contoso_SP"))
    with pytest.raises(PlanProblems) as info:
        plan_dev(config(flows=FlowSettings(keep_off=("Nigthly",))), managed_live(flows=flows))
    (found,) = [p for p in info.value.diagnostics if p.code == "CR317"]
    assert 'names "Nigthly", which is no flow of environment dev' in found.message
    assert '"Intake", "Nightly"' in found.message  # the flows it could have meant
    # By workflow id, in any case, it keeps the flow off.
    ep = plan_dev(config(flows=FlowSettings(keep_off=(flows[0].id.upper(),))), managed_live(flows=flows))
    assert [op.logical_name for op in ep.activations] == ["Intake"]


def test_a_rebind_names_what_it_reaches() -> None:
    live = managed_live(flows=(off("Intake", "contoso_SP"),))
    live = dataclasses.replace(live, references=tuple(
        dataclasses.replace(r, connection=None) for r in live.references))
    (sp,) = [op for op in plan_dev(config(), live).ops
             if isinstance(op, UpdateReference) and op.logical_name == "contoso_SP"]
    assert [(d.kind, d.name, d.state, d.owner) for d in sp.dependents] == [("flow", "Intake", "Off", SA)]
    read = dataclasses.replace(live, dependents=frozen_map({"id-contoso_sp": (
        LiveDependent("flow", "wf-intake", "Intake", 29), LiveDependent("bot", "b-1", "Agent", 10191, "Active"))}))
    (sp,) = [op for op in plan_dev(config(), read).ops
             if isinstance(op, UpdateReference) and op.logical_name == "contoso_SP"]
    assert [d.describe() for d in sp.dependents] == [f'flow "Intake" (Off, owner {SA})', 'agent "Agent" (Active)']


def test_a_flow_held_by_a_replaced_reference_is_not_told_to_bind_it() -> None:
    old = dataclasses.replace(PLANNING.ref("contoso_SP_8f4b0", "SharePoint-8f4b0", owner=SVC), managed=True,
                              connection=None)
    live = managed_live(flows=(off("Approvals", "contoso_SP_8f4b0"),))
    live = dataclasses.replace(live, references=(*live.references, old))
    cfg = config()
    kept = dataclasses.replace(cfg.references["contoso_SP"], replaces=("contoso_SP_8f4b0",))
    cfg = dataclasses.replace(cfg, references=frozen_map({**cfg.references, "contoso_SP": kept}))
    (note,) = [n for n in plan_dev(cfg, live).flow_notes if n.name == "Approvals"]
    said = " ".join(note.reasons)
    assert "the config replaces it by contoso_SP" in said and "bind it in the config" not in said


def test_a_flow_whose_definition_cannot_be_read_is_held_not_switched_on() -> None:
    unreadable = dataclasses.replace(off("Null definition"), definition_readable=False)
    ep = plan_dev(config(), managed_live(flows=(unreadable, off("Intake", "contoso_SP"))))
    assert [op.logical_name for op in ep.activations] == ["Intake"]
    (note,) = [n for n in ep.flow_notes if n.name == "Null definition"]
    assert note.kind == "held" and "definition could not be read" in " ".join(note.reasons)


@pytest.mark.parametrize(("clientdata", "readable"), [
    (None, False), ("not json", False), ('{"properties": null}', False),
    ('{"properties": {"definition": {}, "connectionReferences": []}}', False),
    ('{"properties": {"definition": {"triggers": {}}}}', True),  # a flow without any connection
    ('{"properties": {"definition": {}, "connectionReferences": {}}}', True),
])
def test_what_makes_a_definition_readable(clientdata: str | None, readable: bool) -> None:
    from reconciler.domain import flowdef

    assert flowdef.readable(clientdata) is readable
