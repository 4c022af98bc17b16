"""Bearer tokens, the effective caller, impersonation and WhoAmI / systemusers. Unmarked tests take ids
from the ``target`` fixture and also run against a real environment (remote mode)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from reconciler.emulator.factory import Sample as S

SQL = "/providers/Microsoft.PowerApps/apis/shared_sql"


def body(name: str) -> dict[str, Any]:
    return {"connectionreferencelogicalname": name, "connectionreferencedisplayname": name, "connectorid": SQL}


def test_missing_or_bad_token_is_401(emulator: Any) -> None:
    assert httpx.get(emulator.api + "WhoAmI").status_code == 401
    r = httpx.get(emulator.api + "WhoAmI", headers={"Authorization": "Bearer not.a.token"})
    assert r.status_code == 401
    assert "not.a.token" not in r.text


@pytest.mark.emulator_only(reason="mints a token for another identity, audience or lifetime with the emulator's key")
def test_wrong_audience_is_401(emulator: Any) -> None:
    token = emulator.token(audience="https://service.powerapps.com")
    r = httpx.get(emulator.api + "WhoAmI", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401


@pytest.mark.emulator_only(reason="mints a token for another identity, audience or lifetime with the emulator's key")
def test_expired_token_is_401(emulator: Any) -> None:
    token = emulator.token(lifetime=-120)
    r = httpx.get(emulator.api + "WhoAmI", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401


@pytest.mark.emulator_only(reason="the loopback origin as an audience exists only on the emulator")
def test_loopback_origin_is_an_accepted_audience(emulator: Any) -> None:
    token = emulator.token(audience=emulator.url + "/.default")
    r = httpx.get(emulator.api + "WhoAmI", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200


def test_whoami_for_application_and_user(emulator: Any, dv: httpx.Client, target: Any) -> None:
    for path in ("WhoAmI", "WhoAmI()"):
        r = dv.get(path)
        assert r.status_code == 200
        assert set(r.json()) == {"@odata.context", "BusinessUnitId", "UserId", "OrganizationId"}
        assert r.json()["UserId"] == target.APP_USER_ID
    if not emulator.remote:  # remote mode holds no token of the maker's
        with emulator.client(S.MAKER_OBJECT_ID, upn=S.MAKER_UPN) as maker:
            assert maker.get("WhoAmI").json()["UserId"] == S.MAKER_USER_ID


@pytest.mark.emulator_only(reason="mints a token for another identity, audience or lifetime with the emulator's key")
def test_application_user_found_by_app_id(emulator: Any) -> None:
    # A token whose oid is unknown but whose appid is an application user's client id.
    with emulator.client("99999999-0000-4000-8000-000000000000", S.APP_CLIENT_ID) as c:
        assert c.get("WhoAmI").json()["UserId"] == S.APP_USER_ID


@pytest.mark.emulator_only(reason="mints a token for another identity, audience or lifetime with the emulator's key")
def test_caller_without_systemuser_is_403(emulator: Any) -> None:
    with emulator.client("99999999-0000-4000-8000-000000000000", upn="stranger@contoso.com") as c:
        r = c.get("WhoAmI")
    assert r.status_code == 403
    assert set(r.json()["error"]) == {"code", "message"}


def test_systemuser_lookup_by_object_id(dv: httpx.Client, target: Any) -> None:
    r = dv.get(
        "systemusers",
        params={
            "$filter": f"azureactivedirectoryobjectid eq {target.APP_OBJECT_ID}",
            "$select": "systemuserid,applicationid,azureactivedirectoryobjectid",
        },
    )
    rows = r.json()["value"]
    assert [u["systemuserid"] for u in rows] == [target.APP_USER_ID]
    assert rows[0]["applicationid"] == target.APP_CLIENT_ID
    r = dv.get(f"systemusers({target.SVC_USER_ID})")
    assert r.json()["domainname"].lower() == target.SVC_UPN.lower()
    assert "privileges" not in r.json()


def test_impersonation_with_caller_object_id(dv: httpx.Client, target: Any) -> None:
    r = dv.post(
        "connectionreferences",
        json=body(f"contoso_imp{uuid.uuid4().hex[:8]}"),
        headers={"CallerObjectId": target.SVC_OBJECT_ID, "Prefer": "return=representation"},
    )
    assert r.status_code == 201, r.text
    row = r.json()
    assert row["_createdby_value"] == target.SVC_USER_ID
    assert row["_ownerid_value"] == target.SVC_USER_ID
    assert row["_createdonbehalfby_value"] == target.APP_USER_ID
    who = dv.get("WhoAmI", headers={"CallerObjectId": target.SVC_OBJECT_ID}).json()
    assert who["UserId"] == target.SVC_USER_ID


def test_impersonation_with_legacy_mscrmcallerid(dv: httpx.Client, target: Any) -> None:
    # The maker owns the row, so the write needs no more than a maker's own-record rights.
    mine = {**body(f"contoso_imp{uuid.uuid4().hex[:8]}"), "ownerid@odata.bind": f"systemusers({target.MAKER_USER_ID})"}
    created = dv.post("connectionreferences", json=mine, headers={"Prefer": "return=representation"})
    assert created.status_code == 201, created.text
    r = dv.patch(
        f"connectionreferences({created.json()['connectionreferenceid']})",
        json={"description": "x"},
        headers={"MSCRMCallerID": target.MAKER_USER_ID, "Prefer": "return=representation"},
    )
    assert r.status_code == 200
    assert r.json()["_modifiedby_value"] == target.MAKER_USER_ID
    assert r.json()["_modifiedonbehalfby_value"] == target.APP_USER_ID


@pytest.mark.emulator_only(reason="mints a token for another identity, audience or lifetime with the emulator's key")
def test_impersonation_needs_the_privilege(emulator: Any) -> None:
    with emulator.client(S.MAKER_OBJECT_ID, upn=S.MAKER_UPN) as maker:
        r = maker.get("WhoAmI", headers={"CallerObjectId": S.SVC_OBJECT_ID})
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "0x8004A110"
    assert "prvActOnBehalfOfAnotherUser" in r.json()["error"]["message"]


def test_disabled_user_cannot_be_impersonated(dv: httpx.Client, target: Any) -> None:
    if not target.DISABLED_OBJECT_ID:
        pytest.skip("the fixture file names no disabled_user")
    r = dv.get("WhoAmI", headers={"CallerObjectId": target.DISABLED_OBJECT_ID})
    assert r.status_code == 403


def test_impersonating_the_connection_owner_allows_binding(dv: httpx.Client, target: Any) -> None:
    # The pipeline app cannot use the maker's connection, but the maker can (on a row the maker owns).
    mine = {
        **body(f"contoso_imp{uuid.uuid4().hex[:8]}"),
        "connectorid": f"/providers/Microsoft.PowerApps/apis/{target.MAKER_CONNECTOR}",
        "ownerid@odata.bind": f"systemusers({target.MAKER_USER_ID})",
    }
    r = dv.post("connectionreferences", json=mine)
    assert r.status_code == 204, r.text
    url = r.headers["OData-EntityId"]
    assert dv.patch(url, json={"connectionid": target.MAKER_CONNECTION}).status_code == 403
    as_maker = {"CallerObjectId": target.MAKER_OBJECT_ID}
    r = dv.patch(url, json={"connectionid": target.MAKER_CONNECTION}, headers=as_maker)
    assert r.status_code == 204
    assert dv.get(url).json()["connectionid"] == target.MAKER_CONNECTION


@pytest.mark.emulator_only(reason="reads the emulator's request log")
def test_request_log_records_caller_and_effective_user(emulator: Any, dv: httpx.Client) -> None:
    emulator.app.log.clear()
    dv.get("WhoAmI", headers={"CallerObjectId": S.SVC_OBJECT_ID})
    (entry,) = emulator.app.log
    assert entry.caller_object_id == S.APP_OBJECT_ID
    assert entry.effective_user_id == S.SVC_USER_ID
