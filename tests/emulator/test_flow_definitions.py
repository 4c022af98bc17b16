"""Editing a flow's definition through the Web API (docs/emulator.md, "Flows": editing the definition;
docs/dataverse.md §5.9, §5.10): a PATCH of ``clientdata``, refused while the flow is on (setting
``flow_edit_while_on``), refused when the definition names a reference that does not exist, with If-Match.

Emulator-only: the tests edit the sample's flows and switch the emulator's settings."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from reconciler.emulator import factory
from reconciler.emulator.factory import Sample as S

pytestmark = pytest.mark.emulator_only(reason="edits the sample's flows and switches the emulator's settings")


def read_flow(dv: httpx.Client, flow: str) -> dict[str, Any]:
    r = dv.get(f"workflows({flow})", params={"$select": "workflowid,statecode,clientdata"})
    assert r.status_code == 200, r.text
    row: dict[str, Any] = r.json()
    return row


def definition(dv: httpx.Client, flow: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(read_flow(dv, flow)["clientdata"])
    return doc


def repointed(doc: dict[str, Any], key: str, logical_name: str) -> str:
    new = json.loads(json.dumps(doc))
    new["properties"]["connectionReferences"][key]["connection"]["connectionReferenceLogicalName"] = logical_name
    return json.dumps(new)


def edit(dv: httpx.Client, flow: str, clientdata: str, etag: str = "*") -> httpx.Response:
    return dv.patch(f"workflows({flow})", json={"clientdata": clientdata}, headers={"If-Match": etag})


def flow_error(r: httpx.Response) -> str:
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "0x80060467"
    message: str = error["message"]
    assert message.startswith('Flow client error returned with status code "BadRequest"')
    return message


def test_an_off_flow_takes_a_new_definition(dv: httpx.Client) -> None:
    # The maker's draft uses the per-developer reference; point it at the kept one.
    doc = definition(dv, S.FLOW_DRAFT)
    r = edit(dv, S.FLOW_DRAFT, repointed(doc, S.SP, S.REF_SP_NAME))
    assert r.status_code == 204, r.text
    after = definition(dv, S.FLOW_DRAFT)
    entry = after["properties"]["connectionReferences"][S.SP]
    assert entry["connection"]["connectionReferenceLogicalName"] == S.REF_SP_NAME
    assert read_flow(dv, S.FLOW_DRAFT)["statecode"] == 0
    # The reference no flow names any more has no dependants left.
    deps = dv.get(f"RetrieveDependenciesForDelete(ObjectId={S.REF_MAKER},ComponentType={S.COMPONENT_TYPE})")
    assert deps.json()["value"] == []


def test_a_flow_that_is_on_is_refused_until_switched_off(dv: httpx.Client) -> None:
    doc = definition(dv, S.FLOW_ACTIVE)
    new = repointed(doc, S.SP, S.REF_MAKER_NAME)
    r = edit(dv, S.FLOW_ACTIVE, new)
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "Cannot update a published workflow definition."
    assert definition(dv, S.FLOW_ACTIVE) == doc
    # Off, edit, on (the maker's connection is not the caller's to activate with, so impersonate its owner).
    off = dv.patch(f"workflows({S.FLOW_ACTIVE})", json={"statecode": 0, "statuscode": 1}, headers={"If-Match": "*"})
    assert off.status_code == 204, off.text
    assert edit(dv, S.FLOW_ACTIVE, new).status_code == 204
    on = dv.patch(f"workflows({S.FLOW_ACTIVE})", json={"statecode": 1, "statuscode": 2},
                  headers={"If-Match": "*", "CallerObjectId": S.MAKER_OBJECT_ID})
    assert on.status_code == 403  # the maker may not use the service account's Outlook connection
    assert read_flow(dv, S.FLOW_ACTIVE)["statecode"] == 0


def test_editing_in_place_when_the_setting_allows_it(emulator: Any, dv: httpx.Client) -> None:
    emulator.app.settings["flow_edit_while_on"] = "allow"
    doc = definition(dv, S.FLOW_ACTIVE)
    r = edit(dv, S.FLOW_ACTIVE, repointed(doc, S.OUTLOOK, S.REF_OUTLOOK_NAME).replace('"Action_2"', '"Send"'))
    assert r.status_code == 204, r.text
    row = read_flow(dv, S.FLOW_ACTIVE)
    assert row["statecode"] == 1
    assert "Send" in json.loads(row["clientdata"])["properties"]["definition"]["actions"]


def test_a_definition_naming_a_missing_reference_is_refused(dv: httpx.Client) -> None:
    doc = definition(dv, S.FLOW_DRAFT)
    message = flow_error(edit(dv, S.FLOW_DRAFT, repointed(doc, S.SP, "contoso_Gone")))
    assert "WorkflowRunActionInputsInvalidProperty" in message
    assert "The API connection reference 'contoso_Gone' could not be found for the operation 'Action_1'." in message
    assert definition(dv, S.FLOW_DRAFT) == doc


def test_an_action_naming_a_key_the_map_lacks_is_refused(dv: httpx.Client) -> None:
    doc = definition(dv, S.FLOW_DRAFT)
    doc["properties"]["definition"]["actions"]["Action_1"]["inputs"]["host"]["connectionName"] = "shared_sql"
    message = flow_error(edit(dv, S.FLOW_DRAFT, json.dumps(doc)))
    assert "The API connection reference 'shared_sql' could not be found for the operation 'Action_1'." in message


def test_an_entry_for_another_connector_is_refused(dv: httpx.Client) -> None:
    doc = definition(dv, S.FLOW_DRAFT)
    message = flow_error(edit(dv, S.FLOW_DRAFT, repointed(doc, S.SP, S.REF_OUTLOOK_NAME)))
    assert S.REF_OUTLOOK_NAME in message and "shared_office365" in message


@pytest.mark.parametrize("clientdata", ["{not json", json.dumps({"properties": {}}), json.dumps([1])])
def test_a_definition_that_is_no_definition_is_refused(dv: httpx.Client, clientdata: str) -> None:
    flow_error(edit(dv, S.FLOW_DRAFT, clientdata))


def test_clientdata_must_be_a_string(dv: httpx.Client) -> None:
    r = dv.patch(f"workflows({S.FLOW_DRAFT})", json={"clientdata": {"properties": {}}}, headers={"If-Match": "*"})
    assert r.status_code == 400
    assert "string" in r.json()["error"]["message"]


def test_if_match_guards_the_edit(dv: httpx.Client) -> None:
    r = dv.get(f"workflows({S.FLOW_DRAFT})", params={"$select": "clientdata"})
    etag = r.json()["@odata.etag"]
    doc = json.loads(r.json()["clientdata"])
    # Someone renames the flow in between: its ETag moves and the edit is refused.
    renamed = dv.patch(f"workflows({S.FLOW_DRAFT})", json={"name": "Renamed"}, headers={"If-Match": "*"})
    assert renamed.status_code == 204
    r = edit(dv, S.FLOW_DRAFT, repointed(doc, S.SP, S.REF_SP_NAME), etag=etag)
    assert r.status_code == 412
    assert definition(dv, S.FLOW_DRAFT) == doc


def test_switching_on_with_a_new_definition_checks_the_new_references(dv: httpx.Client) -> None:
    doc = definition(dv, S.FLOW_DRAFT)
    new = repointed(doc, S.SP, S.REF_SP_NAME)
    r = dv.patch(f"workflows({S.FLOW_DRAFT})", json={"clientdata": new, "statecode": 1, "statuscode": 2},
                 headers={"If-Match": "*", "CallerObjectId": S.SVC_OBJECT_ID})
    assert r.status_code == 204, r.text  # the service account owns the kept reference's connection
    row = read_flow(dv, S.FLOW_DRAFT)
    assert row["statecode"] == 1 and json.loads(row["clientdata"]) == json.loads(new)


def test_editing_a_managed_flow_leaves_an_unmanaged_layer(emulator: Any, dv: httpx.Client) -> None:
    managed = "f0000000-0000-4000-8000-0000000000d1"
    sol = next(s for s in emulator.store.rows("solutions") if s["uniquename"] == S.MANAGED_SOLUTION)
    svc = next(u for u in emulator.store.rows("systemusers") if u["systemuserid"] == S.SVC_USER_ID)
    row = factory.add_flow({"workflows": emulator.store.rows("workflows"),
                            "solutioncomponents": emulator.store.rows("solutioncomponents"),
                            "next_versionnumber": 9000},
                           "Managed", [(S.REF_SP_NAME, S.SP)], owner=svc, active=False, solution=sol,
                           workflowid=managed)
    assert row["ismanaged"] is True
    doc = definition(dv, managed)
    assert edit(dv, managed, repointed(doc, S.SP, S.REF_MAKER_NAME)).status_code == 204
    layers = dv.get("msdyn_componentlayers", params={
        "$filter": f"msdyn_componentid eq '{managed}' and msdyn_solutioncomponentname eq 'workflow'"}).json()["value"]
    active = [layer for layer in layers if layer["msdyn_solutionname"] == "Active"]
    assert active and "clientdata" in active[0]["msdyn_changes"]
