"""``connref explain`` and ``plan --explain`` through the real CLI against the quickstart's dev environment
(in-process emulator), with a manual (instant) flow whose connections come from whoever runs it, an
automated flow on a maker's connections, and a scheduled flow on the service account's (docs/concepts.md,
"Who a flow runs as")."""

from __future__ import annotations

import json

import pytest
from schema_support import check

from e2e.e2e_support import Workspace, add_explain_flows

SP_30E7D = "contoso_sharedsharepointonline_30e7d"
DATAVERSE = "contoso_sharedcommondataserviceforapps_7b2e9"
OUTLOOK = "contoso_sharedoffice365_d4c61"
SVC = "svc-flows@contoso.com"


@pytest.fixture
def workspace(quickstart: Workspace) -> Workspace:
    """The quickstart, with an instant flow run with the caller's connections and a scheduled flow on the
    service account's Dataverse connection, both in the solution."""
    add_explain_flows(quickstart.dir)
    return quickstart


def block(text: str, flow: str) -> str:
    """The lines of one flow in explain's text output."""
    start = text.index(f'  flow "{flow}"')
    end = text.find('\n  flow "', start + 1)
    return text[start:] if end < 0 else text[start:end]


def test_explain_says_who_each_kind_of_flow_runs_as(workspace: Workspace) -> None:
    r = workspace.run("explain", "-e", "dev")
    assert r.code == 0, r.err
    assert r.out.startswith("Environment dev\n")

    manual = block(r.out, "Approve from Teams")
    assert "On, owner maker2@contoso.com, manual (instant), trigger manual" in manual
    assert manual.count("runs as the person who runs the flow") == 2
    assert "CR211" not in manual

    automated = block(r.out, "Invoice intake")
    assert "On, owner maker1@contoso.com, automated, trigger When_an_item_is_created" in automated
    assert f"reference {SP_30E7D}" in automated
    assert "runs as maker1@contoso.com, a personal account" in automated
    assert "the connection's status is Error, not Connected" in automated  # maker1's Outlook sign-in expired
    assert "! CR211 flow-runs-as-person" in automated

    scheduled = block(r.out, "Nightly summary")
    assert "scheduled, trigger Recurrence" in scheduled
    assert f"runs as {SVC}, through connection" in scheduled
    assert "a personal account" not in scheduled and "CR211" not in scheduled


def test_explain_named_flows_as_json(workspace: Workspace) -> None:
    r = workspace.run("explain", "-e", "dev", "nightly SUMMARY", "Approve from Teams", "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    check("explain", doc)
    (env,) = doc["environments"]
    flows = {f["name"]: f for f in env["flows"]}
    assert set(flows) == {"Nightly summary", "Approve from Teams"}
    nightly = flows["Nightly summary"]
    assert nightly["trigger"] == "scheduled" and nightly["runs_as"] == [SVC] and nightly["problems"] == []
    (conn,) = nightly["connections"]
    assert conn["reference"] == DATAVERSE and conn["runs_as"] == {"kind": "connection_owner", "principal": SVC,
                                                                  "personal": False}
    teams = flows["Approve from Teams"]
    assert teams["trigger"] == "manual" and teams["runs_as"] == ["the person who runs it"]
    assert {c["runs_as"]["kind"] for c in teams["connections"]} == {"invoker"}


def test_an_unknown_flow_is_an_error_naming_the_flows_there_are(workspace: Workspace) -> None:
    r = workspace.run("explain", "-e", "dev", "Invoice intke")
    assert r.code == 1
    assert "no flow named 'Invoice intke' in environment dev" in r.err and '"Invoice intake"' in r.err


def test_explain_takes_one_environment(workspace: Workspace) -> None:
    r = workspace.run("explain", "-e", "dev,prod")
    assert r.code == 1 and "one environment at a time" in r.err


def test_plan_explain_shows_the_flows_a_plan_changes_as_it_leaves_them(workspace: Workspace) -> None:
    r = workspace.run("plan", "-e", "dev", "--explain")
    assert r.code == 0, r.err
    plan_part, _, explained = r.out.partition("Who the flows this plan changes will run as:")
    assert "Plan:" in plan_part and explained
    # The config binds 30e7d to the service account's connection: after apply, the intake flow's SharePoint
    # steps run as the service account (its Outlook steps too: the Outlook reference is rebound as well).
    intake = block(explained, "Invoice intake")
    assert f"runs as {SVC}, through connection" in intake and "maker1@contoso.com, a personal" not in intake
    assert "CR211" not in intake

    doc = json.loads(workspace.run("plan", "-e", "dev", "--explain", "--json").out)
    check("plan", doc)
    check("explain", doc["explain"])
    names = {f["name"] for env in doc["explain"]["environments"] for f in env["flows"]}
    assert {"Invoice intake", "Invoice approval"} <= names
