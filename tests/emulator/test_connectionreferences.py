"""Contract tests for /connectionreferences: queries, paging, create/update/upsert/delete, ETags and
validation. Tests without the emulator_only mark assert documented Dataverse behaviour and also run
against a real environment (remote mode): they take ids from the ``target`` fixture and work on
references they create (``dv`` deletes them afterwards), never on the sample's own rows."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from reconciler.emulator.factory import Sample as S

SP = "/providers/Microsoft.PowerApps/apis/shared_sharepointonline"
SQL = "/providers/Microsoft.PowerApps/apis/shared_sql"


def new_ref(**extra: Any) -> dict[str, Any]:
    body = {
        "connectionreferencelogicalname": f"contoso_t{uuid.uuid4().hex[:6]}",
        "connectionreferencedisplayname": "Test reference",
        "connectorid": SQL,
    }
    body.update(extra)
    return body


def unique_prefix() -> str:
    """A logical-name prefix no other row has, so queries can be scoped to what a test created."""
    return f"contoso_t{uuid.uuid4().hex[:8]}_"


def connector(name: str) -> str:
    return "/providers/Microsoft.PowerApps/apis/" + name


def create(dv: httpx.Client, **extra: Any) -> dict[str, Any]:
    r = dv.post("connectionreferences", json=new_ref(**extra), headers={"Prefer": "return=representation"})
    assert r.status_code == 201, r.text
    row: dict[str, Any] = r.json()
    return row


# --------------------------------------------------------------------------- reads


def test_collection_shape_and_etags(dv: httpx.Client, target: Any) -> None:
    mine = create(dv)["connectionreferenceid"]
    r = dv.get("connectionreferences")
    assert r.status_code == 200
    body = r.json()
    assert body["@odata.context"].endswith("/$metadata#connectionreferences")
    rows = body["value"]
    if target.is_sample:
        assert len(rows) == 5  # the sample's four and this test's
    for row in rows:
        assert row["@odata.etag"] == f'W/"{row["versionnumber"]}"'
    (row,) = [x for x in rows if x["connectionreferenceid"] == mine]
    assert row["statecode"] == 0 and row["statuscode"] == 1 and row["ismanaged"] is False


def test_select_filter_orderby(dv: httpx.Client, target: Any) -> None:
    p = unique_prefix()
    for suffix, bound in (("a", True), ("b", False), ("c", True)):
        extra: dict[str, Any] = {"connectorid": connector(target.APP_CONNECTOR)}
        if bound:
            extra["connectionid"] = target.APP_CONNECTION
        create(dv, connectionreferencelogicalname=p + suffix, **extra)
    r = dv.get(
        "connectionreferences",
        params={
            "$select": "connectionreferencelogicalname,connectionid",
            "$filter": f"connectionid ne null and startswith(connectionreferencelogicalname,'{p.upper()}')",
            "$orderby": "connectionreferencelogicalname desc",
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["@odata.context"].endswith("#connectionreferences(connectionreferencelogicalname,connectionid)")
    names = [x["connectionreferencelogicalname"] for x in body["value"]]
    assert names == [p + "c", p + "a"]
    assert set(body["value"][0]) == {
        "@odata.etag",
        "connectionreferencelogicalname",
        "connectionid",
        "connectionreferenceid",
    }


def test_filter_by_logical_name_is_case_insensitive(dv: httpx.Client) -> None:
    row = create(dv)
    flt = f"connectionreferencelogicalname eq '{row['connectionreferencelogicalname'].upper()}'"
    r = dv.get("connectionreferences", params={"$filter": flt})
    assert [x["connectionreferenceid"] for x in r.json()["value"]] == [row["connectionreferenceid"]]


def test_filter_value_with_quote_escaped_by_doubling(dv: httpx.Client) -> None:
    tag = uuid.uuid4().hex[:8]
    create(dv, connectionreferencedisplayname=f"O'Brien's SQL {tag}")
    flt = f"connectionreferencedisplayname eq 'O''Brien''s SQL {tag}'"
    r = dv.get("connectionreferences", params={"$filter": flt})
    assert r.status_code == 200
    assert [x["connectionreferencedisplayname"] for x in r.json()["value"]] == [f"O'Brien's SQL {tag}"]


def test_filter_by_owner_guid_and_top_and_count(dv: httpx.Client, target: Any) -> None:
    p = unique_prefix()
    for i in range(3):
        owner = {"ownerid@odata.bind": f"systemusers({target.SVC_USER_ID})"}
        create(dv, connectionreferencelogicalname=f"{p}{i}", **owner)
    create(dv, connectionreferencelogicalname=f"{p}mine")  # same prefix, another owner
    flt = f"_ownerid_value eq {target.SVC_USER_ID} and startswith(connectionreferencelogicalname,'{p}')"
    r = dv.get("connectionreferences", params={"$filter": flt, "$top": "2", "$count": "true"})
    body = r.json()
    assert len(body["value"]) == 2
    assert body["@odata.count"] == 3
    assert "@odata.nextLink" not in body


def test_get_by_id_and_404(dv: httpx.Client) -> None:
    mine = create(dv)
    rid = mine["connectionreferenceid"]
    r = dv.get(f"connectionreferences({rid})", params={"$select": "connectionreferencelogicalname"})
    assert r.status_code == 200
    assert r.json()["connectionreferencelogicalname"] == mine["connectionreferencelogicalname"]
    assert r.json()["@odata.context"].endswith("#connectionreferences(connectionreferencelogicalname)/$entity")
    missing = str(uuid.uuid4())
    r = dv.get(f"connectionreferences({missing})")
    assert r.status_code == 404
    assert r.json()["error"]["message"] == f"connectionreference With Id = {missing} Does Not Exist"


def test_conditional_get_returns_304_when_unchanged(dv: httpx.Client) -> None:
    rid = create(dv)["connectionreferenceid"]
    etag = dv.get(f"connectionreferences({rid})").json()["@odata.etag"]
    r = dv.get(f"connectionreferences({rid})", headers={"If-None-Match": etag})
    assert r.status_code == 304
    dv.patch(f"connectionreferences({rid})", json={"description": "moved"})
    r = dv.get(f"connectionreferences({rid})", headers={"If-None-Match": etag})
    assert r.status_code == 200


@pytest.mark.parametrize("params", [{"$skip": "1"}, {"$search": "x"}])
def test_skip_and_unknown_options_are_400(dv: httpx.Client, params: dict[str, str]) -> None:
    r = dv.get("connectionreferences", params=params)
    assert r.status_code == 400
    assert set(r.json()["error"]) == {"code", "message"}


def test_unknown_property_in_filter_is_400(dv: httpx.Client) -> None:
    r = dv.get("connectionreferences", params={"$filter": "nosuchcolumn eq 1"})
    assert r.status_code == 400
    assert "nosuchcolumn" in r.json()["error"]["message"]


def test_bad_filter_syntax_is_400(dv: httpx.Client) -> None:
    r = dv.get("connectionreferences", params={"$filter": "connectionid eq 'unterminated"})
    assert r.status_code == 400


# --------------------------------------------------------------------------- paging


def test_paging_with_maxpagesize_and_next_link(dv: httpx.Client) -> None:
    p = unique_prefix()
    mine = {create(dv, connectionreferencelogicalname=f"{p}{i}")["connectionreferenceid"] for i in range(7)}
    prefer = {"Prefer": "odata.maxpagesize=3"}
    params = {
        "$select": "connectionreferencelogicalname",
        "$filter": f"startswith(connectionreferencelogicalname,'{p}')",
    }
    r = dv.get("connectionreferences", params=params, headers=prefer)
    assert r.headers["Preference-Applied"] == "odata.maxpagesize=3"
    seen: list[str] = [x["connectionreferenceid"] for x in r.json()["value"]]
    assert len(seen) == 3
    link = r.json()["@odata.nextLink"]
    assert "$skiptoken" in parse_qs(urlsplit(link).query)
    pages = 1
    while link:
        r = dv.get(link, headers=prefer)
        assert r.status_code == 200
        pages += 1
        seen += [x["connectionreferenceid"] for x in r.json()["value"]]
        link = r.json().get("@odata.nextLink")
    assert pages == 3
    assert len(seen) == len(set(seen)) == 7
    assert set(seen) == mine


def test_maxpagesize_over_5000_is_capped(dv: httpx.Client, target: Any) -> None:
    r = dv.get("connectionreferences", headers={"Prefer": "odata.maxpagesize=9000"})
    assert r.headers["Preference-Applied"] == "odata.maxpagesize=5000"
    assert len(r.json()["value"]) == 4 if target.is_sample else len(r.json()["value"]) <= 5000


def test_tampered_skiptoken_is_400(dv: httpx.Client) -> None:
    r = dv.get("connectionreferences", params={"$skiptoken": "3"})
    assert r.status_code == 400


# --------------------------------------------------------------------------- create


def test_post_returns_204_with_entity_id(dv: httpx.Client, target: Any) -> None:
    r = dv.post("connectionreferences", json=new_ref())
    assert r.status_code == 204
    entity = r.headers["OData-EntityId"]
    assert "/api/data/v9.2/connectionreferences(" in entity
    rid = entity.rsplit("(", 1)[1].rstrip(")")
    row = dv.get(f"connectionreferences({rid})").json()
    assert row["_ownerid_value"] == target.APP_USER_ID
    assert row["_createdby_value"] == target.APP_USER_ID
    assert row["_createdonbehalfby_value"] is None
    assert row["connectionid"] is None


def test_post_with_representation_returns_201_and_row(dv: httpx.Client) -> None:
    row = create(dv, description="d")
    assert row["description"] == "d"
    assert row["@odata.etag"] == f'W/"{row["versionnumber"]}"'
    assert row["statecode"] == 0 and row["statuscode"] == 1


def test_post_with_client_supplied_id(dv: httpx.Client) -> None:
    rid = str(uuid.uuid4())
    r = dv.post("connectionreferences", json=new_ref(connectionreferenceid=rid))
    assert r.status_code == 204
    assert r.headers["OData-EntityId"].endswith(f"({rid})")
    r = dv.post("connectionreferences", json=new_ref(connectionreferenceid=rid))
    assert r.status_code == 412


def test_post_bound_to_a_connection_the_caller_can_use(dv: httpx.Client, target: Any) -> None:
    # On the sample: the service account's Dataverse connection, shared with the pipeline application.
    row = create(dv, connectorid=connector(target.APP_CONNECTOR), connectionid=target.APP_CONNECTION)
    assert row["connectionid"] == target.APP_CONNECTION


@pytest.mark.emulator_only(reason="Dataverse requires only SystemRequired columns; these checks are the emulator's own")
@pytest.mark.parametrize("missing", ["connectionreferencelogicalname", "connectionreferencedisplayname", "connectorid"])
def test_required_columns_on_create(dv: httpx.Client, missing: str) -> None:
    body = new_ref()
    del body[missing]
    r = dv.post("connectionreferences", json=body)
    assert r.status_code == 400
    assert missing in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("column", "limit"),
    [
        ("connectionreferencelogicalname", 200),
        ("connectionreferencedisplayname", 200),
        ("connectorid", 1000),
        ("connectionid", 1000),
        ("description", 2000),
    ],
)
def test_max_lengths(dv: httpx.Client, column: str, limit: int) -> None:
    value = "x" * (limit + 1)
    if column == "connectorid":
        value = "/providers/Microsoft.PowerApps/apis/" + "x" * limit
    r = dv.post("connectionreferences", json=new_ref(**{column: value}))
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "0x80044331"
    assert f"'{column}'" in err["message"] and f"'{limit}'" in err["message"]


@pytest.mark.emulator_only(reason="the connectorid format check is the emulator's own (UNCONFIRMED)")
def test_connectorid_format(dv: httpx.Client) -> None:
    r = dv.post("connectionreferences", json=new_ref(connectorid="shared_sql"))
    assert r.status_code == 400


@pytest.mark.emulator_only(reason="switches the enforce_duplicate_logical_name setting")
def test_duplicate_logical_name_is_412_case_insensitive(emulator: Any, dv: httpx.Client) -> None:
    r = dv.post("connectionreferences", json=new_ref(connectionreferencelogicalname=S.REF_SP_NAME.upper()))
    assert r.status_code == 412
    assert r.json()["error"]["code"] == "0x80040237"
    emulator.app.settings["enforce_duplicate_logical_name"] = False
    r = dv.post("connectionreferences", json=new_ref(connectionreferencelogicalname=S.REF_SP_NAME.upper()))
    assert r.status_code == 204


def test_unknown_property_on_create_is_400(dv: httpx.Client) -> None:
    r = dv.post("connectionreferences", json=new_ref(nosuchcolumn="x"))
    assert r.status_code == 400
    assert "nosuchcolumn" in r.json()["error"]["message"]


def test_solution_unique_name_header_adds_component(dv: httpx.Client, target: Any) -> None:
    r = dv.post("connectionreferences", json=new_ref(), headers={"MSCRM.SolutionUniqueName": target.SOLUTION})
    assert r.status_code == 204
    rid = r.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")
    comps = dv.get("solutioncomponents", params={"$filter": f"objectid eq {rid}"}).json()["value"]
    assert len(comps) == 1
    assert comps[0]["componenttype"] == target.COMPONENT_TYPE


@pytest.mark.emulator_only(reason="the status codes are UNCONFIRMED and the fixture file names no managed solution")
@pytest.mark.parametrize(("solution", "status"), [("NoSuchSolution", 404), (S.MANAGED_SOLUTION, 400)])
def test_solution_unique_name_must_be_an_unmanaged_solution(dv: httpx.Client, solution: str, status: int) -> None:
    body = new_ref()
    r = dv.post("connectionreferences", json=body, headers={"MSCRM.SolutionUniqueName": solution})
    assert r.status_code == status
    flt = f"connectionreferencelogicalname eq '{body['connectionreferencelogicalname']}'"
    assert dv.get("connectionreferences", params={"$filter": flt}).json()["value"] == []


def test_owner_bind_on_create_and_patch(dv: httpx.Client, target: Any) -> None:
    row = create(dv, **{"ownerid@odata.bind": f"/systemusers({target.SVC_USER_ID})"})
    assert row["_ownerid_value"] == target.SVC_USER_ID
    rid = row["connectionreferenceid"]
    r = dv.patch(f"connectionreferences({rid})", json={"ownerid@odata.bind": f"systemusers({target.MAKER_USER_ID})"})
    assert r.status_code == 204
    assert dv.get(f"connectionreferences({rid})").json()["_ownerid_value"] == target.MAKER_USER_ID


def test_owner_bind_to_unknown_user_is_400(dv: httpx.Client) -> None:
    r = dv.post("connectionreferences", json=new_ref(**{"ownerid@odata.bind": f"systemusers({uuid.uuid4()})"}))
    assert r.status_code == 400


# --------------------------------------------------------------------------- update / upsert / ETags


def test_patch_bumps_version_and_modified(dv: httpx.Client) -> None:
    rid = create(dv)["connectionreferenceid"]
    before = dv.get(f"connectionreferences({rid})").json()
    r = dv.patch(
        f"connectionreferences({rid})",
        json={"connectionreferencedisplayname": "Renamed"},
        headers={"Prefer": "return=representation"},
    )
    assert r.status_code == 200
    after = r.json()
    assert after["connectionreferencedisplayname"] == "Renamed"
    assert after["versionnumber"] > before["versionnumber"]
    assert after["@odata.etag"] != before["@odata.etag"]
    assert after["modifiedon"] >= before["modifiedon"]


def test_if_match_etag(dv: httpx.Client) -> None:
    rid = create(dv)["connectionreferenceid"]
    etag = dv.get(f"connectionreferences({rid})").json()["@odata.etag"]
    r = dv.patch(f"connectionreferences({rid})", json={"description": "a"}, headers={"If-Match": etag})
    assert r.status_code == 204
    r = dv.patch(f"connectionreferences({rid})", json={"description": "b"}, headers={"If-Match": etag})
    assert r.status_code == 412
    assert dv.get(f"connectionreferences({rid})").json()["description"] == "a"


def test_if_match_star_on_missing_is_404_and_creates_nothing(dv: httpx.Client) -> None:
    rid = str(uuid.uuid4())
    r = dv.patch(f"connectionreferences({rid})", json=new_ref(), headers={"If-Match": "*"})
    assert r.status_code == 404
    assert dv.get(f"connectionreferences({rid})").status_code == 404


def test_patch_without_if_match_on_missing_id_upserts(dv: httpx.Client, created: Any) -> None:
    rid = str(uuid.uuid4())
    created.add(rid)  # an upsert creates it: delete it afterwards in remote mode
    r = dv.patch(f"connectionreferences({rid})", json=new_ref())
    assert r.status_code == 204
    assert dv.get(f"connectionreferences({rid})").status_code == 200


def test_if_none_match_star_on_existing_is_412(dv: httpx.Client) -> None:
    rid = create(dv)["connectionreferenceid"]
    r = dv.patch(f"connectionreferences({rid})", json={"description": "x"}, headers={"If-None-Match": "*"})
    assert r.status_code == 412
    assert r.json()["error"]["message"] == "A record with matching key values already exists."


@pytest.mark.emulator_only(reason="switches the logical_name_immutable setting")
def test_logical_name_immutable_setting(emulator: Any, dv: httpx.Client) -> None:
    r = dv.patch(f"connectionreferences({S.REF_DV})", json={"connectionreferencelogicalname": "contoso_Other"})
    assert r.status_code == 400
    emulator.app.settings["logical_name_immutable"] = False
    r = dv.patch(f"connectionreferences({S.REF_DV})", json={"connectionreferencelogicalname": "contoso_Other"})
    assert r.status_code == 204


def test_bind_connection_owned_by_someone_else_is_refused(dv: httpx.Client, target: Any) -> None:
    # The maker's personal connection is neither owned by nor shared with the pipeline app.
    rid = create(dv, connectorid=connector(target.MAKER_CONNECTOR))["connectionreferenceid"]
    r = dv.patch(f"connectionreferences({rid})", json={"connectionid": target.MAKER_CONNECTION})
    assert r.status_code == 403
    assert dv.get(f"connectionreferences({rid})").json()["connectionid"] is None


@pytest.mark.emulator_only(reason="switches the enforce_connection_access setting")
def test_connection_access_check_can_be_switched_off(emulator: Any, dv: httpx.Client) -> None:
    emulator.app.settings["enforce_connection_access"] = False
    r = dv.patch(f"connectionreferences({S.REF_SP})", json={"connectionid": S.CONN_SP_MAKER})
    assert r.status_code == 204


@pytest.mark.emulator_only(reason="uses the sample's references; the connector-match rule is UNCONFIRMED")
def test_connection_must_exist_and_match_connector(dv: httpx.Client) -> None:
    r = dv.patch(f"connectionreferences({S.REF_SP})", json={"connectionid": "f" * 32})
    assert r.status_code == 400
    r = dv.patch(f"connectionreferences({S.REF_DV})", json={"connectionid": S.CONN_SP_SVC})
    assert r.status_code == 400
    assert "shared_sharepointonline" in r.json()["error"]["message"]


def test_unbind_with_null(dv: httpx.Client, target: Any) -> None:
    row = create(dv, connectorid=connector(target.APP_CONNECTOR), connectionid=target.APP_CONNECTION)
    rid = row["connectionreferenceid"]
    assert row["connectionid"] == target.APP_CONNECTION
    r = dv.patch(f"connectionreferences({rid})", json={"connectionid": None})
    assert r.status_code == 204
    assert dv.get(f"connectionreferences({rid})").json()["connectionid"] is None


# --------------------------------------------------------------------------- delete


def test_delete_unused_reference(dv: httpx.Client, target: Any) -> None:
    r = dv.post("connectionreferences", json=new_ref(), headers={"MSCRM.SolutionUniqueName": target.SOLUTION})
    rid = r.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")
    assert dv.get("solutioncomponents", params={"$filter": f"objectid eq {rid}"}).json()["value"] != []
    r = dv.delete(f"connectionreferences({rid})")
    assert r.status_code == 204
    assert dv.get(f"connectionreferences({rid})").status_code == 404
    comps = dv.get("solutioncomponents", params={"$filter": f"objectid eq {rid}"}).json()["value"]
    assert comps == []


def test_delete_missing_is_404(dv: httpx.Client) -> None:
    assert dv.delete(f"connectionreferences({uuid.uuid4()})").status_code == 404


def test_delete_with_stale_etag_is_412(dv: httpx.Client) -> None:
    rid = create(dv)["connectionreferenceid"]
    r = dv.delete(f"connectionreferences({rid})", headers={"If-Match": 'W/"1"'})
    assert r.status_code == 412
    assert dv.get(f"connectionreferences({rid})").status_code == 200


@pytest.mark.emulator_only(reason="needs a flow using the reference; the fixture file names no flows")
def test_delete_reference_used_by_a_flow_is_refused(dv: httpx.Client) -> None:
    r = dv.delete(f"connectionreferences({S.REF_SP})")
    assert r.status_code >= 400
    err = r.json()["error"]
    assert err["code"] == "0x8004F01F"
    assert err["message"].startswith(
        f"The connectionreference({S.REF_SP}) component cannot be deleted because it "
        "is referenced by 1 other components."
    )


@pytest.mark.emulator_only(reason="switches the delete_in_use_status setting")
def test_delete_in_use_status_setting(emulator: Any, dv: httpx.Client) -> None:
    assert dv.delete(f"connectionreferences({S.REF_SP})").status_code == 400
    emulator.app.settings["delete_in_use_status"] = 405
    assert dv.delete(f"connectionreferences({S.REF_SP})").status_code == 405


# --------------------------------------------------------------------------- annotations


def test_error_annotations_on_request(dv: httpx.Client) -> None:
    missing = str(uuid.uuid4())
    plain = dv.get(f"connectionreferences({missing})").json()["error"]
    assert set(plain) == {"code", "message"}
    r = dv.get(f"connectionreferences({missing})", headers={"Prefer": 'odata.include-annotations="*"'})
    err = r.json()["error"]
    for key in (
        "@Microsoft.PowerApps.CDS.ErrorDetails.OperationStatus",
        "@Microsoft.PowerApps.CDS.HelpLink",
        "@Microsoft.PowerApps.CDS.TraceText",
        "@Microsoft.PowerApps.CDS.InnerError.Message",
    ):
        assert key in err
