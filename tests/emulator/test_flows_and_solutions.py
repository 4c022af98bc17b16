"""Flows (activation check, delete), dependencies, solutions and solution components. Flow tests need the
sample's flows (emulator_only); the solution tests take ids from ``target`` and run in remote mode too."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from reconciler.emulator.factory import Sample as S

# The fixture file names no flows and a test cannot create one (nor can it on the emulator), so tests
# that need the sample's flows and the references they use stay on the emulator.
NEEDS_SAMPLE_FLOWS = pytest.mark.emulator_only(reason="needs the sample's flows and the references they use")


def new_ref() -> dict[str, str]:
    return {
        "connectionreferencelogicalname": f"contoso_t{uuid.uuid4().hex[:8]}",
        "connectionreferencedisplayname": "Solution test reference",
        "connectorid": "/providers/Microsoft.PowerApps/apis/shared_sql",
    }


def activate(client: httpx.Client, flow: str, **headers: str) -> httpx.Response:
    return client.patch(
        f"workflows({flow})", json={"statecode": 1, "statuscode": 2}, headers={"If-Match": "*", **headers}
    )


@NEEDS_SAMPLE_FLOWS
def test_workflows_are_readable_with_clientdata(dv: httpx.Client) -> None:
    r = dv.get("workflows", params={"$filter": "category eq 5", "$select": "workflowid,name,statecode,clientdata"})
    rows = {w["workflowid"]: w for w in r.json()["value"]}
    assert set(rows) == {S.FLOW_ACTIVE, S.FLOW_DRAFT}
    assert S.REF_SP_NAME in rows[S.FLOW_ACTIVE]["clientdata"]


@NEEDS_SAMPLE_FLOWS
def test_activation_needs_connections_the_caller_can_use(dv: httpx.Client) -> None:
    r = activate(dv, S.FLOW_DRAFT)
    assert r.status_code == 403
    err = r.json()["error"]
    assert err["code"] == "ConnectionAuthorizationFailed"
    assert err["message"].startswith('Flow client error returned with status code "Forbidden"')
    assert S.CONN_SP_MAKER in err["message"]
    assert dv.get(f"workflows({S.FLOW_DRAFT})").json()["statecode"] == 0


@NEEDS_SAMPLE_FLOWS
def test_activation_as_the_connection_owner_succeeds(dv: httpx.Client) -> None:
    r = activate(dv, S.FLOW_DRAFT, CallerObjectId=S.MAKER_OBJECT_ID)
    assert r.status_code == 204
    row = dv.get(f"workflows({S.FLOW_DRAFT})").json()
    assert (row["statecode"], row["statuscode"]) == (1, 2)


@NEEDS_SAMPLE_FLOWS
def test_activation_with_an_unbound_reference_fails(dv: httpx.Client) -> None:
    assert (
        dv.patch(
            f"connectionreferences({S.REF_MAKER})",
            json={"connectionid": None},
            headers={"CallerObjectId": S.MAKER_OBJECT_ID},
        ).status_code
        == 204
    )
    r = activate(dv, S.FLOW_DRAFT, CallerObjectId=S.MAKER_OBJECT_ID)
    assert r.status_code == 403


@NEEDS_SAMPLE_FLOWS
def test_deactivate_then_delete_flow(dv: httpx.Client) -> None:
    r = dv.delete(f"workflows({S.FLOW_ACTIVE})")
    assert r.status_code == 400
    assert "Cannot delete an active workflow definition." in r.json()["error"]["message"]
    assert dv.patch(f"workflows({S.FLOW_ACTIVE})", json={"statecode": 0, "statuscode": 1}).status_code == 204
    assert dv.delete(f"workflows({S.FLOW_ACTIVE})").status_code == 204
    # Now nothing uses the SharePoint reference: it can be deleted.
    assert dv.delete(f"connectionreferences({S.REF_SP})").status_code == 204


@NEEDS_SAMPLE_FLOWS
def test_invalid_state_status_pair_is_400(dv: httpx.Client) -> None:
    r = dv.patch(f"workflows({S.FLOW_ACTIVE})", json={"statecode": 0, "statuscode": 2})
    assert r.status_code == 400


@NEEDS_SAMPLE_FLOWS
def test_retrieve_dependent_components(dv: httpx.Client) -> None:
    r = dv.get(f"RetrieveDependentComponents(ObjectId={S.REF_OUTLOOK},ComponentType={S.COMPONENT_TYPE})")
    assert r.status_code == 200
    (dep,) = r.json()["value"]
    assert dep["dependentcomponentobjectid"] == S.FLOW_ACTIVE
    assert dep["dependentcomponenttype"] == 29
    assert dep["requiredcomponentobjectid"] == S.REF_OUTLOOK
    r = dv.get(f"RetrieveDependentComponents(ObjectId={S.REF_DV},ComponentType={S.COMPONENT_TYPE})")
    assert r.json()["value"] == []


@NEEDS_SAMPLE_FLOWS
def test_retrieve_dependent_components_with_parameter_aliases(dv: httpx.Client) -> None:
    r = dv.get(
        "RetrieveDependentComponents(ObjectId=@o,ComponentType=@t)",
        params={"@o": S.REF_SP, "@t": str(S.COMPONENT_TYPE)},
    )
    assert [d["dependentcomponentobjectid"] for d in r.json()["value"]] == [S.FLOW_ACTIVE]


def test_component_type_comes_from_solutioncomponentdefinitions(dv: httpx.Client, target: Any) -> None:
    r = dv.get(
        "solutioncomponentdefinitions",
        params={
            "$filter": "primaryentityname eq 'connectionreference'",
            "$select": "solutioncomponenttype,name,primaryentityname",
        },
    )
    (row,) = r.json()["value"]
    assert row["solutioncomponenttype"] == target.COMPONENT_TYPE


def test_solution_membership_via_solutioncomponents(dv: httpx.Client, target: Any) -> None:
    r = dv.post("connectionreferences", json=new_ref(), headers={"MSCRM.SolutionUniqueName": target.SOLUTION})
    assert r.status_code == 204, r.text
    mine = r.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")
    sol = dv.get(
        "solutions",
        params={"$filter": f"uniquename eq '{target.SOLUTION}'", "$select": "solutionid,uniquename,ismanaged"},
    ).json()["value"][0]
    assert sol["ismanaged"] is False
    comps = dv.get(
        "solutioncomponents",
        params={
            "$filter": f"_solutionid_value eq {sol['solutionid']} and componenttype eq {target.COMPONENT_TYPE}",
            "$select": "objectid",
        },
    ).json()["value"]
    members = {c["objectid"] for c in comps}
    assert mine in members
    if target.is_sample:
        assert members == {S.REF_SP, S.REF_OUTLOOK, S.REF_DV, mine}


def test_solution_publisher_prefix_via_expand(dv: httpx.Client, target: Any) -> None:
    r = dv.get(
        "solutions",
        params={
            "$filter": f"uniquename eq '{target.SOLUTION}'",
            "$expand": "publisherid($select=customizationprefix)",
        },
    )
    assert r.json()["value"][0]["publisherid"]["customizationprefix"] == target.PUBLISHER_PREFIX


def test_add_solution_component_action(dv: httpx.Client, target: Any) -> None:
    r = dv.post("connectionreferences", json=new_ref())  # in no solution yet
    assert r.status_code == 204, r.text
    rid = r.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")
    payload = {
        "ComponentId": rid,
        "ComponentType": target.COMPONENT_TYPE,
        "SolutionUniqueName": target.SOLUTION,
        "AddRequiredComponents": False,
        "DoNotIncludeSubcomponents": True,
    }
    r = dv.post("AddSolutionComponent", json=payload)
    assert r.status_code == 200
    scid = r.json()["id"]
    row = dv.get(f"solutioncomponents({scid})").json()
    assert row["objectid"] == rid
    # Adding it again is idempotent.
    assert dv.post("AddSolutionComponent", json=payload).json()["id"] == scid


def test_add_solution_component_needs_an_existing_component(dv: httpx.Client, target: Any) -> None:
    r = dv.post(
        "AddSolutionComponent",
        json={
            "ComponentId": str(uuid.uuid4()),
            "ComponentType": target.COMPONENT_TYPE,
            "SolutionUniqueName": target.SOLUTION,
            "AddRequiredComponents": False,
        },
    )
    assert r.status_code == 404


def test_unknown_entity_set_is_404(dv: httpx.Client) -> None:
    assert dv.get("nosuchthings").status_code == 404


@pytest.mark.emulator_only(
    reason="solutions are writable in real Dataverse (POST creates one); the emulator serves them read-only"
)
def test_read_only_tables_refuse_writes(dv: httpx.Client) -> None:
    assert dv.post("solutions", json={"uniquename": "x"}).status_code == 405


@NEEDS_SAMPLE_FLOWS
def test_workflow_write_records_impersonation(emulator: Any, dv: httpx.Client) -> None:
    r = dv.patch(
        f"workflows({S.FLOW_ACTIVE})",
        json={"statecode": 0, "statuscode": 1},
        headers={"CallerObjectId": S.SVC_OBJECT_ID, "Prefer": "return=representation"},
    )
    assert r.json()["_modifiedby_value"] == S.SVC_USER_ID
    assert r.json()["_modifiedonbehalfby_value"] == S.APP_USER_ID
