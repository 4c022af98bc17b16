"""Downstream environments end to end through the real CLI: the quickstart's ``test`` environment is what a
pipeline leaves after importing the solution managed (docs/dataverse.md §2.6): references unbound, flows off.

Each rule of a managed environment and of flow activation, on the emulator (docs/emulator.md): the mode in
the plan header; bind and owner only (never a create, an add or a rename request: the request log says);
a missing reference refused with "ship it in the solution"; a display-name difference and an unmanaged
layer reported, not written; flows switched on after binding, the child before its parent, once the
asynchronous update reached them; a flow whose update fails reported with exit code 1; flows that cannot
be switched on, or are kept off, listed with why; rebinds naming the flows and apps they reach; prune
keeping a reference a canvas app uses, and never touching managed components.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from e2e.e2e_support import Served, Workspace
from reconciler.emulator.requestlog import BatchPart

pytestmark = pytest.mark.emulator_only

CHILD = "Post to finance channel"
PARENT = "Invoice approval"
INTAKE = "Invoice intake"


def edit(ws: Workspace, env: str, change: Any) -> None:
    path = ws.dir / f"{env}.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def flow_row(data: dict[str, Any], name: str) -> dict[str, Any]:
    rows: list[dict[str, Any]] = [w for w in data["workflows"] if w["name"] == name]
    assert len(rows) == 1
    return rows[0]


def states(ws: Workspace, env: str = "test") -> dict[str, int]:
    return {w["name"]: w["statecode"] for w in ws.data(env)["workflows"]}


def set_config(ws: Workspace | Served, old: str, new: str) -> None:
    text = ws.config.read_text()
    assert old in text, old
    ws.config.write_text(text.replace(old, new, 1))


def parts(served: Served, env: str) -> list[BatchPart]:
    return [p for e in served.apps[env].log for p in e.parts]


# --------------------------------------------------------------------------- managed mode


def test_plan_header_shows_each_environments_mode(quickstart: Workspace) -> None:
    r = quickstart.run("plan")
    assert r.code == 0, r.err
    assert "Environment dev (solution ContosoFlows, unmanaged):" in r.out
    assert "Environment test (solution ContosoFlows, managed):" in r.out
    doc = json.loads(quickstart.run("plan", "--json").out)
    assert {e["name"]: e["mode"] for e in doc["environments"]} == {"dev": "unmanaged", "test": "managed",
                                                                    "prod": "unmanaged"}


def test_managed_environment_gets_bindings_owners_and_flows_only(served: Served) -> None:
    """What a managed environment receives, from its request log: reference updates (connection, owner)
    and flow state changes; never a create, an AddSolutionComponent or a rename."""
    # A display name that differs from what the solution shipped must not be written downstream.
    set_config(served, "display_name: Office 365 Outlook ContosoFlows",
               "display_name: Outlook, renamed in the config")
    r = served.run("apply", "--auto-approve")
    assert r.code == 0, r.out + r.err

    test = served.apps["test"]
    sent = parts(served, "test")
    writes = [p for p in sent if p.method != "GET"]
    assert writes, "the managed environment was not written at all"
    assert not [p for p in writes if p.method == "POST"], "a create or an action was sent to a managed environment"
    assert not [p for p in sent if "AddSolutionComponent" in p.path]
    assert {p.method for p in writes} == {"PATCH"}
    assert {p.path.split("(")[0].rsplit("/", 1)[-1] for p in writes} == {"connectionreferences", "workflows"}
    rows = {r["connectionreferencelogicalname"]: r for r in test.store.data["connectionreferences"]}
    outlook = rows["contoso_sharedoffice365_d4c61"]
    assert outlook["connectionreferencedisplayname"] == "Office 365 Outlook ContosoFlows"  # not renamed
    assert "active_layer" not in outlook  # no unmanaged layer left behind
    svc = next(u for u in test.store.data["systemusers"] if u["domainname"] == "svc-flows@contoso.com")
    assert all(r["connectionid"] and r["_ownerid_value"] == svc["systemuserid"] for r in rows.values())
    # dev, unmanaged, did get the rename.
    dev_rows = {r["connectionreferencelogicalname"]: r for r in served.apps["dev"].store.data["connectionreferences"]}
    renamed = dev_rows["contoso_sharedoffice365_d4c61"]["connectionreferencedisplayname"]
    assert renamed == "Outlook, renamed in the config"
    # The difference is reported each time, with the fix, and is not a change.
    r = served.run("plan", "-e", "test", "--detailed-exitcode")
    assert r.code == 0, r.out + r.err
    assert "No changes." in r.out
    assert re.search(r"Warning: test: contoso_sharedoffice365_d4c61: the display name is \"Office 365 Outlook "
                     r"ContosoFlows\" here but \"Outlook, renamed in the config\" in the config.*change it in "
                     r"development", r.out), r.out


def test_a_reference_missing_downstream_must_ship_in_the_solution(served: Served) -> None:
    text = served.config.read_text()
    text = text.replace("references:\n", "references:\n  contoso_Sql:\n    connector: shared_sql\n"
                                         "    display_name: SQL ContosoFlows\n", 1)
    served.config.write_text(text)
    r = served.run("plan", "-e", "test")
    assert r.code == 1
    assert ("test: contoso_Sql: declared in the config but is not in environment test, whose solution "
            "ContosoFlows is managed") in r.err
    assert "ship it in the solution: add it to ContosoFlows in development" in r.err
    r = served.run("apply", "-e", "test", "--auto-approve")
    assert r.code == 1
    assert not [e for e in served.apps["test"].log if e.is_write], "a refused plan wrote something"


def test_an_unmanaged_layer_on_a_managed_reference_is_reported(quickstart: Workspace) -> None:
    def customize(data: dict[str, Any]) -> None:
        row = next(r for r in data["connectionreferences"]
                   if r["connectionreferencelogicalname"] == "contoso_sharedsharepointonline_8f4b0")
        row["connectionreferencedisplayname"] = "SP (edited in test)"
        row["active_layer"] = {"connectionreferencedisplayname": "SP (edited in test)"}

    edit(quickstart, "test", customize)
    r = quickstart.run("plan", "-e", "test")
    assert r.code == 0, r.err
    assert ("test: contoso_sharedsharepointonline_8f4b0: an unmanaged layer over the managed solution changes its "
            "display name in environment test") in r.out
    assert "Remove active customizations" in r.out
    doc = json.loads(quickstart.run("plan", "-e", "test", "--json").out)  # reported, never planned
    assert not [c for c in doc["changes"] for f in c.get("changes", []) if f["field"] != "connection"
                and f["field"] != "owner"]


def test_drift_in_a_managed_environment_reports_a_layer_not_what_the_solution_ships(quickstart: Workspace) -> None:
    set_config(quickstart, "display_name: Office 365 Outlook ContosoFlows",
               "display_name: Outlook, renamed in the config")
    r = quickstart.run("apply", "-e", "test", "--auto-approve")
    assert r.code == 0, r.out + r.err
    r = quickstart.run("drift", "-e", "test")
    assert r.code == 0, r.out + r.err  # the name the solution ships differs from the config: a note only
    assert "contoso_sharedoffice365_d4c61: the display name is" in r.out

    def customize(data: dict[str, Any]) -> None:
        row = next(r for r in data["connectionreferences"]
                   if r["connectionreferencelogicalname"] == "contoso_sharedsharepointonline_8f4b0")
        row["description"] = "edited in test"
        row["active_layer"] = {"description": "edited in test"}

    edit(quickstart, "test", customize)
    r = quickstart.run("drift", "-e", "test", "--json")
    assert r.code == 2, r.out + r.err
    (env,) = json.loads(r.out)["environments"]
    assert [(x["logical_name"], x["kinds"]) for x in env["references"]] == [
        ("contoso_sharedsharepointonline_8f4b0", ["customized"])]
    assert env["references"][0]["items"][0]["code"] == "CR321"


# --------------------------------------------------------------------------- flows


def test_flows_are_switched_on_after_binding_child_before_parent(served: Served) -> None:
    r = served.run("plan", "-e", "test")
    assert r.code == 0, r.err
    assert f'~ flow "{CHILD}"' in r.out and f'~ flow "{PARENT}"' in r.out
    assert "pass: 2 (after its child flows)" in r.out
    # Every rebind names what it reaches, with state and owner.
    assert 'used by: canvas app "Invoice tracker"' in r.out
    assert f'used by: flow "{PARENT}" (Off, owner ' in r.out

    r = served.run("apply", "-e", "test", "--auto-approve")
    assert r.code == 0, r.out + r.err
    for name in (INTAKE, CHILD, PARENT):
        assert f'✓ flow "{name}" (took the new connection)' in r.out
        assert f'✓ flow "{name}" (switched on)' in r.out
    assert "waiting for the flows to take the new connections" in r.err
    app = served.apps["test"]
    ids = {w["name"]: w["workflowid"] for w in app.store.data["workflows"]}
    order = [p.path for p in parts(served, "test") if p.method == "PATCH" and "workflows(" in p.path]
    position = {name: next(i for i, path in enumerate(order) if fid in path) for name, fid in ids.items()}
    assert position[CHILD] < position[PARENT]
    assert all(w["statecode"] == 1 for w in app.store.data["workflows"])
    # The flows were switched on as the service account (impersonated), who owns the connections.
    svc = next(u for u in app.store.data["systemusers"] if u["domainname"] == "svc-flows@contoso.com")
    assert all(w["_modifiedby_value"] == svc["systemuserid"] for w in app.store.data["workflows"])

    r = served.run("plan", "-e", "test", "--detailed-exitcode")
    assert r.code == 0, r.out + r.err
    assert "No changes." in r.out


def test_a_flow_whose_update_fails_is_reported_and_fails_the_apply(quickstart: Workspace) -> None:
    edit(quickstart, "test", lambda d: flow_row(d, INTAKE).update(update_failure="The flow could not be updated."))
    r = quickstart.run("apply", "-e", "test", "--auto-approve")
    assert r.code == 1, r.out + r.err
    assert (f'✗ flow "{INTAKE}" (update failed): the platform\'s update of the flow after the rebind failed: '
            "The flow could not be updated.") in r.out
    assert f'· flow "{INTAKE}" (not switched on): not attempted: its update after the rebind failed' in r.out
    assert f'✓ flow "{PARENT}" (switched on)' in r.out
    assert "flows are left failing" in r.err and f'"{INTAKE}"' in r.err
    assert states(quickstart) == {INTAKE: 0, CHILD: 1, PARENT: 1}
    # The references were written and recorded; the flow is still planned to be switched on.
    r = quickstart.run("plan", "-e", "test")
    assert f'~ flow "{INTAKE}"' in r.out and "Plan: 0 to add, 1 to change" in r.out


def test_flows_that_cannot_be_switched_on_are_listed_with_why(quickstart: Workspace) -> None:
    # No binding for contoso_Teams in test: it stays unbound, so the child flow cannot be switched on,
    # nor its parent.
    set_config(quickstart, "      contoso_Teams: {owner: svc-flows@contoso.com}\n    flows:", "    flows:")
    r = quickstart.run("plan", "-e", "test")
    assert r.code == 0, r.err
    assert f'Note: flow "{CHILD}" stays off: reference contoso_Teams has no connection: bind it in the config' in r.out
    assert f'Note: flow "{PARENT}" stays off: runs child flow "{CHILD}", which stays off' in r.out
    assert f'~ flow "{INTAKE}"' in r.out and f'~ flow "{PARENT}"' not in r.out
    doc = json.loads(quickstart.run("plan", "-e", "test", "--json").out)
    (env,) = doc["environments"]
    assert {(n["name"], n["kind"]) for n in env["flow_notes"]} == {(CHILD, "held"), (PARENT, "held")}
    r = quickstart.run("apply", "-e", "test", "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert states(quickstart) == {INTAKE: 1, CHILD: 0, PARENT: 0}


def test_activation_can_be_turned_off_or_a_flow_kept_off(quickstart: Workspace) -> None:
    set_config(quickstart, "      activate: true ", f"      keep_off: [{INTAKE.lower()}]\n      activate: true ")
    r = quickstart.run("plan", "-e", "test")
    assert f'Note: flow "{INTAKE}" stays off: the config keeps it off (flows.keep_off)' in r.out
    assert f'~ flow "{INTAKE}"' not in r.out and f'~ flow "{PARENT}"' in r.out
    set_config(quickstart, "      activate: true ", "      activate: false ")
    r = quickstart.run("apply", "-e", "test", "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert "flow activation is off for this environment (flows.activate)" in r.out
    assert states(quickstart) == {INTAKE: 0, CHILD: 0, PARENT: 0}
    assert all(r["connectionid"] for r in quickstart.data("test")["connectionreferences"])  # bound all the same


def test_not_waiting_for_the_update_is_said_and_does_not_fail(quickstart: Workspace) -> None:
    set_config(quickstart, "      wait_seconds: 120", "      wait_seconds: 0")
    edit(quickstart, "test", lambda d: d["settings"].update(rebind_propagation_seconds=3600))
    r = quickstart.run("apply", "-e", "test", "--auto-approve")
    # Not waited for: each flow says so; switching them on then meets the platform's own refusal (their
    # connections have not reached them yet), which is reported and fails the apply.
    assert f'· flow "{INTAKE}" (update not checked): not waited for: flows.wait_seconds is 0' in r.out
    assert r.code == 1 and f'✗ flow "{INTAKE}" (not switched on)' in r.out and "is not bound" in r.out


# --------------------------------------------------------------------------- dependents and prune


def test_a_reference_a_canvas_app_uses_is_not_pruned(served: Served) -> None:
    assert served.run("apply", "--auto-approve").code == 0
    dev = served.apps["dev"]
    owner = next(u for u in dev.store.data["systemusers"] if u["domainname"] == "maker2@contoso.com")
    dev.store.data["canvasapps"].append({
        "canvasappid": "a7000000-0000-4000-8000-0000000000d1", "name": "contoso_teamsboard",
        "displayname": "Teams board", "ismanaged": False, "_ownerid_value": owner["systemuserid"],
        "versionnumber": 9000, "connection_references": ["contoso_Teams"],
    })
    text = served.config.read_text()
    text, n = re.subn(r"^  contoso_Teams:\n(?:    .*\n)+", "", text, flags=re.M)
    assert n == 1
    text = re.sub(r"^      contoso_Teams: .*\n", "", text, flags=re.M)
    served.config.write_text(text)
    for app in served.apps.values():
        app.log.clear()

    r = served.run("plan", "--prune")
    assert r.code == 0, r.out + r.err
    assert ("Warning: dev: contoso_Teams: no longer declared but not deleted: canvas app \"Teams board\" (owner "
            "maker2@contoso.com) uses it") in r.out
    assert re.findall(r"^  - (\S+)$", r.out, flags=re.M) == ["contoso_Teams"]  # prod only
    # test: part of the managed solution, never pruned.
    assert "test: contoso_Teams: no longer declared, but it is part of the managed solution" in r.out
    # Checked at plan time with RetrieveDependenciesForDelete, in one batched read per environment.
    assert [p for p in parts(served, "dev") if "RetrieveDependenciesForDelete" in p.path]
    r = served.run("apply", "--prune", "--auto-approve")
    assert r.code == 0, r.out + r.err
    names = {x["connectionreferencelogicalname"] for x in dev.store.data["connectionreferences"]}
    assert "contoso_Teams" in names
    assert "contoso_Teams" not in {x["connectionreferencelogicalname"]
                                   for x in served.apps["prod"].store.data["connectionreferences"]}


def test_emulator_refuses_what_connref_never_sends(served: Served, tmp_path: Path) -> None:
    """The other side of the request-log checks: the managed environment does refuse a create and a delete,
    so a plan that sent them would fail (the emulator is not more permissive than the platform)."""
    import httpx

    from reconciler.emulator import jwt

    app = served.apps["test"]
    env = app.store.data["environment"]
    svc = next(u for u in app.store.data["systemusers"] if u["domainname"] == "svc-flows@contoso.com")
    token = jwt.mint(app.store.data["signing_key_pem"], tenant_id=env["tenant_id"],
                     object_id=svc["azureactivedirectoryobjectid"], audience=served.servers["test"].base_url)
    with httpx.Client(base_url=served.servers["test"].base_url + "/api/data/v9.2/",
                      headers={"Authorization": f"Bearer {token}"}) as c:
        ref = app.store.data["connectionreferences"][0]
        assert c.delete(f"connectionreferences({ref['connectionreferenceid']})").status_code == 400
        body = {"connectionreferencelogicalname": "contoso_X", "connectionreferencedisplayname": "X",
                "connectorid": "/providers/Microsoft.PowerApps/apis/shared_sql"}
        assert c.post("connectionreferences", json=body,
                      headers={"MSCRM.SolutionUniqueName": "ContosoFlows"}).status_code == 400
