"""Managed solutions and components, flows (child flows, activation, the asynchronous update after a rebind)
and the other components that use a reference (canvas apps, bots): the platform rules the emulator
models (docs/emulator.md, "Managed components", "Flows", "What depends on a reference").

All emulator-only: a test cannot install a managed solution, create flows, apps or bots, nor move the
emulator's clock on a real environment."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from reconciler.emulator import factory, workflows
from reconciler.emulator.factory import Sample as S

pytestmark = pytest.mark.emulator_only(
    reason="needs a managed solution, flows, apps and bots of its own, and the emulator's settings and clock"
)

MANAGED_REF = "e0000000-0000-4000-8000-0000000000a1"
MANAGED_REF_NAME = "contoso_ManagedSharePoint"
CHILD = "f0000000-0000-4000-8000-0000000000c1"
CHILD2 = "f0000000-0000-4000-8000-0000000000c2"
PARENT = "f0000000-0000-4000-8000-0000000000b1"
APP = "a7000000-0000-4000-8000-000000000001"
BOT = "b7000000-0000-4000-8000-000000000001"


@pytest.fixture
def emulator_data(signing_key_pem: str) -> dict[str, Any]:
    """The sample, plus what a managed import leaves: a managed reference (unbound) in ContosoManaged,
    a parent flow running two child flows, all off; a canvas app and a bot using the sample's Outlook
    reference."""
    data = factory.sample_environment(signing_key_pem)
    svc = next(u for u in data["systemusers"] if u["systemuserid"] == S.SVC_USER_ID)
    managed = next(s for s in data["solutions"] if s["uniquename"] == S.MANAGED_SOLUTION)
    factory.add_reference(data, MANAGED_REF_NAME, S.SP, owner=svc, display_name="SharePoint Managed",
                          solution=managed, connectionreferenceid=MANAGED_REF)
    for fid in (CHILD, CHILD2):
        factory.add_flow(data, f"Child {fid[-1]}", [(MANAGED_REF_NAME, S.SP)], owner=svc, active=False,
                         solution=managed, workflowid=fid)
    factory.add_flow(data, "Parent", [(MANAGED_REF_NAME, S.SP)], owner=svc, active=False, solution=managed,
                     workflowid=PARENT, children=[CHILD, CHILD2], trigger="recurrence")
    factory.add_canvas_app(data, "Invoice app", [S.REF_OUTLOOK_NAME], owner=svc, canvasappid=APP)
    factory.add_bot(data, "Invoice agent", [S.REF_OUTLOOK_NAME], owner=svc, botid=BOT)
    return data


def bind(dv: httpx.Client, ref: str, connection: str | None, **headers: str) -> httpx.Response:
    return dv.patch(f"connectionreferences({ref})", json={"connectionid": connection},
                    headers={"If-Match": "*", **headers})


def switch_on(dv: httpx.Client, flow: str, **headers: str) -> httpx.Response:
    return dv.patch(f"workflows({flow})", json={"statecode": 1, "statuscode": 2}, headers={"If-Match": "*", **headers})


def layers(dv: httpx.Client, component: str, name: str = "connectionreference") -> list[dict[str, Any]]:
    r = dv.get("msdyn_componentlayers", params={
        "$filter": f"msdyn_componentid eq '{component}' and msdyn_solutioncomponentname eq '{name}'",
        "$orderby": "msdyn_order"})
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()["value"]
    return rows


# --------------------------------------------------------------------------- managed components


def test_create_into_a_managed_solution_is_refused(dv: httpx.Client) -> None:
    body = {"connectionreferencelogicalname": "contoso_New", "connectionreferencedisplayname": "New",
            "connectorid": "/providers/Microsoft.PowerApps/apis/shared_sql"}
    r = dv.post("connectionreferences", json=body, headers={"MSCRM.SolutionUniqueName": S.MANAGED_SOLUTION})
    assert r.status_code == 400
    assert "managed solution" in r.json()["error"]["message"]
    assert dv.get("connectionreferences", params={"$filter": "connectionreferencelogicalname eq 'contoso_New'"}
                  ).json()["value"] == []


def test_add_solution_component_to_a_managed_solution_is_refused(dv: httpx.Client) -> None:
    r = dv.post("AddSolutionComponent", json={"ComponentId": S.REF_DV, "ComponentType": S.COMPONENT_TYPE,
                                              "SolutionUniqueName": S.MANAGED_SOLUTION,
                                              "AddRequiredComponents": False})
    assert r.status_code == 400
    assert "managed solution" in r.json()["error"]["message"]


def test_deleting_a_managed_reference_or_flow_is_refused(dv: httpx.Client) -> None:
    for path in (f"connectionreferences({MANAGED_REF})", f"workflows({CHILD})"):
        r = dv.delete(path)
        assert r.status_code == 400
        assert "is managed" in r.json()["error"]["message"] and S.MANAGED_SOLUTION in r.json()["error"]["message"]
    assert dv.get(f"connectionreferences({MANAGED_REF})").status_code == 200


def test_binding_and_owner_of_a_managed_reference_leave_no_layer(dv: httpx.Client) -> None:
    r = dv.patch(f"connectionreferences({MANAGED_REF})",
                 json={"connectionid": S.CONN_SP_SVC, "ownerid@odata.bind": f"systemusers({S.MAKER_USER_ID})"},
                 headers={"CallerObjectId": S.SVC_OBJECT_ID})
    assert r.status_code == 204
    row = dv.get(f"connectionreferences({MANAGED_REF})").json()
    assert (row["connectionid"], row["_ownerid_value"], row["ismanaged"]) == (S.CONN_SP_SVC, S.MAKER_USER_ID, True)
    assert [x["msdyn_solutionname"] for x in layers(dv, MANAGED_REF)] == [S.MANAGED_SOLUTION]


def test_binding_leaves_a_layer_under_the_other_reading(emulator: Any, dv: httpx.Client) -> None:
    emulator.app.settings["binding_leaves_layer"] = True
    assert bind(dv, MANAGED_REF, S.CONN_SP_SVC, CallerObjectId=S.SVC_OBJECT_ID).status_code == 204
    active = layers(dv, MANAGED_REF)[-1]
    assert active["msdyn_solutionname"] == "Active"
    assert {a["Key"] for a in json.loads(active["msdyn_changes"])["Attributes"]} == {"connectionid"}


def test_a_display_name_change_on_a_managed_reference_leaves_an_unmanaged_layer(dv: httpx.Client) -> None:
    r = dv.patch(f"connectionreferences({MANAGED_REF})", json={"connectionreferencedisplayname": "Renamed here"})
    assert r.status_code == 204
    rows = layers(dv, MANAGED_REF)
    assert [(x["msdyn_solutionname"], x["msdyn_order"]) for x in rows] == [(S.MANAGED_SOLUTION, 1), ("Active", 2)]
    changes = json.loads(rows[1]["msdyn_changes"])["Attributes"]
    assert changes == [{"Key": "connectionreferencedisplayname", "Value": "Renamed here"}]
    # An unmanaged component has its one Active layer and nothing else.
    assert [x["msdyn_solutionname"] for x in layers(dv, S.REF_SP)] == ["Active"]


def test_component_layers_need_a_query_naming_one_component(emulator: Any, dv: httpx.Client) -> None:
    assert dv.get("msdyn_componentlayers").status_code == 400
    r = dv.get("msdyn_componentlayers", params={"$filter": "msdyn_solutionname eq 'Active'"})
    assert r.status_code == 400
    emulator.app.settings["componentlayers_require_component"] = False
    r = dv.get("msdyn_componentlayers", params={"$filter": "msdyn_solutionname eq 'Active'"})
    assert r.status_code == 200 and len(r.json()["value"]) >= 4


# --------------------------------------------------------------------------- flows


def test_a_parent_cannot_be_switched_on_before_its_children(dv: httpx.Client) -> None:
    assert bind(dv, MANAGED_REF, S.CONN_SP_SVC, CallerObjectId=S.SVC_OBJECT_ID).status_code == 204
    r = switch_on(dv, PARENT, CallerObjectId=S.SVC_OBJECT_ID)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "0x80060467"
    assert "MultipleErrorsOccurred" in err["message"] and err["message"].count("ChildFlowNeverPublished") == 2
    assert switch_on(dv, CHILD, CallerObjectId=S.SVC_OBJECT_ID).status_code == 204
    r = switch_on(dv, PARENT, CallerObjectId=S.SVC_OBJECT_ID)
    assert r.status_code == 400 and CHILD2 in r.json()["error"]["message"]
    assert "MultipleErrorsOccurred" not in r.json()["error"]["message"]
    assert switch_on(dv, CHILD2, CallerObjectId=S.SVC_OBJECT_ID).status_code == 204
    assert switch_on(dv, PARENT, CallerObjectId=S.SVC_OBJECT_ID).status_code == 204


def test_child_rule_published_once_accepts_a_child_that_was_on(emulator: Any, dv: httpx.Client) -> None:
    assert bind(dv, MANAGED_REF, S.CONN_SP_SVC, CallerObjectId=S.SVC_OBJECT_ID).status_code == 204
    for child in (CHILD, CHILD2):
        assert switch_on(dv, child, CallerObjectId=S.SVC_OBJECT_ID).status_code == 204
        assert dv.patch(f"workflows({child})", json={"statecode": 0, "statuscode": 1}).status_code == 204
    assert switch_on(dv, PARENT, CallerObjectId=S.SVC_OBJECT_ID).status_code == 400  # "on" (the default)
    emulator.app.settings["child_flow_activation"] = "published_once"
    assert switch_on(dv, PARENT, CallerObjectId=S.SVC_OBJECT_ID).status_code == 204


def test_switching_on_needs_every_reference_bound_to_a_usable_connection(dv: httpx.Client) -> None:
    r = switch_on(dv, CHILD, CallerObjectId=S.SVC_OBJECT_ID)  # unbound, as the import left it
    assert r.status_code == 403 and "is not bound" in r.json()["error"]["message"]
    assert bind(dv, MANAGED_REF, S.CONN_SP_SVC, CallerObjectId=S.SVC_OBJECT_ID).status_code == 204
    # The application has no right on the service account's SharePoint connection.
    r = switch_on(dv, CHILD)
    assert r.status_code == 403 and r.json()["error"]["code"] == "ConnectionAuthorizationFailed"
    assert switch_on(dv, CHILD, CallerObjectId=S.SVC_OBJECT_ID).status_code == 204


def test_a_flow_owner_can_be_changed(dv: httpx.Client) -> None:
    r = dv.patch(f"workflows({CHILD})", json={"ownerid@odata.bind": f"systemusers({S.MAKER_USER_ID})"})
    assert r.status_code == 204
    assert dv.get(f"workflows({CHILD})").json()["_ownerid_value"] == S.MAKER_USER_ID


def jobs(dv: httpx.Client, flow: str) -> list[dict[str, Any]]:
    r = dv.get("asyncoperations", params={"$filter": f"_regardingobjectid_value eq {flow}",
                                          "$orderby": "createdon desc"})
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()["value"]
    return rows


def test_a_rebind_reaches_the_flows_after_the_delay(emulator: Any, dv: httpx.Client) -> None:
    emulator.app.settings["rebind_propagation_seconds"] = 3600
    assert bind(dv, MANAGED_REF, S.CONN_SP_SVC, CallerObjectId=S.SVC_OBJECT_ID).status_code == 204
    (job,) = jobs(dv, CHILD)
    assert (job["statecode"], job["statuscode"]) == (0, 0)
    # Until the update reaches it, the flow still has the old (no) connection.
    r = switch_on(dv, CHILD, CallerObjectId=S.SVC_OBJECT_ID)
    assert r.status_code == 403 and "is not bound" in r.json()["error"]["message"]
    assert workflows.run_due_updates(emulator.store, time.time() + 7200)
    (job,) = jobs(dv, CHILD)
    assert (job["statecode"], job["statuscode"]) == (3, 30) and job["completedon"]
    assert switch_on(dv, CHILD, CallerObjectId=S.SVC_OBJECT_ID).status_code == 204


def test_a_failing_flow_update_is_reported_on_its_job(emulator: Any, dv: httpx.Client) -> None:
    factory.fail_flow_update(emulator.store.data, CHILD2, "The flow definition could not be updated.")
    assert bind(dv, MANAGED_REF, S.CONN_SP_SVC, CallerObjectId=S.SVC_OBJECT_ID).status_code == 204
    (failed,) = jobs(dv, CHILD2)
    assert (failed["statecode"], failed["statuscode"]) == (3, 31)
    assert failed["message"] == "The flow definition could not be updated."
    assert [(j["statecode"], j["statuscode"]) for j in jobs(dv, CHILD)] == [(3, 30)]
    assert switch_on(dv, CHILD2, CallerObjectId=S.SVC_OBJECT_ID).status_code == 403  # still unbound for it
    assert switch_on(dv, CHILD, CallerObjectId=S.SVC_OBJECT_ID).status_code == 204


# --------------------------------------------------------------------------- dependents


def test_apps_and_bots_are_dependents_and_block_a_delete(emulator: Any, dv: httpx.Client) -> None:
    r = dv.get(f"RetrieveDependenciesForDelete(ObjectId={S.REF_OUTLOOK},ComponentType={S.COMPONENT_TYPE})")
    assert r.status_code == 200
    deps = {(d["dependentcomponenttype"], d["dependentcomponentobjectid"]) for d in r.json()["value"]}
    assert deps == {(29, S.FLOW_ACTIVE), (300, APP), (emulator.store.bot_componenttype, BOT)}
    bot_type = dv.get("solutioncomponentdefinitions",
                      params={"$filter": "primaryentityname eq 'bot'"}).json()["value"][0]["solutioncomponenttype"]
    assert bot_type == emulator.store.bot_componenttype
    # Without the flow, the app and the bot still block the delete.
    assert dv.patch(f"workflows({S.FLOW_ACTIVE})", json={"statecode": 0, "statuscode": 1}).status_code == 204
    assert dv.delete(f"workflows({S.FLOW_ACTIVE})").status_code == 204
    r = dv.delete(f"connectionreferences({S.REF_OUTLOOK})")
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "0x8004F01F" and "referenced by 2 other components" in err["message"]


def test_canvas_apps_and_bots_are_readable(dv: httpx.Client) -> None:
    app = dv.get(f"canvasapps({APP})").json()
    assert (app["displayname"], app["_ownerid_value"]) == ("Invoice app", S.SVC_USER_ID)
    assert "connection_references" not in app
    bot = dv.get("bots", params={"$select": "name,statecode"}).json()["value"][0]
    assert (bot["name"], bot["statecode"]) == ("Invoice agent", 0)
