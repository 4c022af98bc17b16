"""Who a flow runs as, and why (reconciler.domain.runas; docs/dataverse.md §5.4): per entry of the definition,
for manual, automated and scheduled flows, with the CR211 flag for a personal account."""

from __future__ import annotations

import dataclasses

import pytest
from builders import ADOPTION, ALICE, SVC

from reconciler.domain import runas
from reconciler.domain.model import FlowConnection, LiveEnvironment, LiveFlow, LiveUser

SP = "shared_sharepointonline"
APP = LiveUser("u-app", "oid-app", "app@contoso.onmicrosoft.com", "# pipeline", application_id="app-client-id")
C_SVC = ADOPTION.conn("c-svc", "SharePoint svc", owner=SVC)
C_ALICE = ADOPTION.conn("c-alice", "SharePoint alice", owner=ALICE)
C_APP = ADOPTION.conn("c-app", "SharePoint app", owner=APP)
C_BROKEN = ADOPTION.conn("c-broken", "SharePoint broken", owner=SVC, status="Error")


def env() -> LiveEnvironment:
    live = ADOPTION.live(
        [ADOPTION.ref("contoso_Svc", connection="c-svc"), ADOPTION.ref("contoso_Alice", connection="c-alice"),
         ADOPTION.ref("contoso_App", connection="c-app"), ADOPTION.ref("contoso_Unbound"),
         ADOPTION.ref("contoso_Gone", connection="c-nowhere")],
        [C_SVC, C_ALICE, C_APP, C_BROKEN],
    )
    return dataclasses.replace(live, users=(*live.users, APP))


def flow(trigger: str | None, *entries: FlowConnection, name: str = "F") -> LiveFlow:
    return LiveFlow("wf-1", name, 1, ALICE.systemuserid, tuple(e.logical_name or "" for e in entries),
                    trigger=trigger, connections=entries, trigger_name="T")


def on(ref: str, source: str = "embedded", key: str = SP) -> FlowConnection:
    return FlowConnection(key, ref, SP, source)


@pytest.mark.parametrize(("trigger", "expected"), [("manual", "manual"), ("recurrence", "scheduled"),
                                                   ("automated", "automated"), (None, "unknown")])
def test_trigger_kinds(trigger: str | None, expected: str) -> None:
    assert runas.explain_flow(flow(trigger), env()).trigger == expected


def test_an_instant_flow_with_run_only_users_runs_as_whoever_runs_it() -> None:
    e = runas.explain_flow(flow("manual", on("contoso_Alice", "invoker")), env(), service_account=SVC.upn)
    (i,) = e.identities
    assert i.kind == runas.INVOKER and i.principal is None and "whoever runs it" in i.why
    assert e.principals == ("the person who runs it",) and e.problems == ()


def test_an_instant_flow_with_an_embedded_connection_runs_as_its_owner_and_is_not_flagged() -> None:
    e = runas.explain_flow(flow("manual", on("contoso_Alice")), env(), service_account=SVC.upn)
    (i,) = e.identities
    assert (i.kind, i.principal, i.personal) == (runas.OWNER, ALICE.upn, True)
    assert e.problems == ()  # only automated and scheduled flows are flagged


@pytest.mark.parametrize("trigger", ["automated", "recurrence"])
def test_automated_and_scheduled_flows_run_as_the_connection_owner_and_a_person_is_flagged(trigger: str) -> None:
    e = runas.explain_flow(flow(trigger, on("contoso_Alice"), on("contoso_Svc", key="shared_sharepointonline-1")),
                           env(), service_account=SVC.upn, environment="dev")
    alice, svc = e.identities
    assert (alice.principal, alice.personal, svc.principal, svc.personal) == (ALICE.upn, True, SVC.upn, False)
    assert e.principals == (ALICE.upn, SVC.upn)
    (p,) = e.problems
    assert (p.code, p.severity, p.environment, p.subject) == ("CR211", "warning", "dev", "F")
    assert str(ALICE.upn) in p.message and "contoso_Alice" in p.message and "contoso_Alice" in p.fix


def test_invoker_is_ignored_outside_instant_flows() -> None:
    (i,) = runas.explain_flow(flow("automated", on("contoso_Alice", "invoker")), env()).identities
    assert i.kind == runas.OWNER and i.principal == ALICE.upn and "only instant flows honour" in i.why


def test_without_a_service_account_an_application_is_not_personal_and_a_person_is() -> None:
    e = runas.explain_flow(flow("automated", on("contoso_App"), on("contoso_Alice", key="k2")), env())
    app, alice = e.identities
    assert (app.personal, alice.personal) == (False, True)
    assert [p.code for p in e.problems] == ["CR211"]


def test_nobody_for_unbound_missing_references_and_connections() -> None:
    e = runas.explain_flow(flow("automated", on("contoso_Unbound"), on("contoso_Nowhere", key="k2"),
                                on("contoso_Gone", key="k3")), env(), service_account=SVC.upn)
    unbound, no_ref, no_conn = e.identities
    assert (unbound.kind, no_ref.kind, no_conn.kind) == (runas.UNBOUND, runas.MISSING, runas.MISSING)
    assert "not bound" in unbound.why and "not in this environment" in no_ref.why and "does not exist" in no_conn.why
    assert e.principals == () and e.problems == ()


def test_an_older_flow_binding_a_connection_directly_runs_as_its_owner() -> None:
    legacy = FlowConnection(SP, None, SP, "embedded", "c-alice")
    (i,) = runas.explain_flow(flow("automated", legacy), env(), service_account=SVC.upn).identities
    assert (i.kind, i.reference, i.principal) == (runas.OWNER, None, ALICE.upn)
