"""Contract tests of the emulated connections API (Power Platform API connectivity routes and the
classic admin-scope list), over loopback HTTP with httpx: caller scoping, paging, the ConnectionNotFound
shape, sharing rules and the admin-scope 403."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from reconciler.emulator.factory import Sample as S

# These tests call as the service account, the maker and the application with tokens minted by the
# emulator for the connections API's audiences; a real run holds one token, the application's for
# Dataverse, and the connections API lives on another host there.
pytestmark = pytest.mark.emulator_only(reason="calls the connections API as several identities with minted tokens")

PP = "https://api.powerplatform.com"
V1 = {"api-version": "1"}


_SHARED: dict[str, httpx.Client] = {}


@pytest.fixture(scope="module", autouse=True)
def _close_pool() -> Iterator[None]:
    yield
    pool = _SHARED.pop("pool", None)
    if pool is not None:
        pool.close()


def _client(emulator: Any, object_id: str, app_id: str | None = None, audience: str = PP) -> _As:
    """A client calling as ``object_id``. One pooled connection set serves every test (creating an
    httpx.Client is slow); the token travels per request."""
    token = emulator.token(object_id, app_id, audience)
    pool = _SHARED.setdefault("pool", httpx.Client(timeout=10))
    return _As(pool, emulator.url, token)


class _As:
    """A thin view over the shared pool with a base URL and a bearer token; leaving it keeps the pool."""

    def __init__(self, pool: httpx.Client, base: str, token: str) -> None:
        self._pool, self._base, self._auth = pool, base, {"Authorization": f"Bearer {token}"}

    def __enter__(self) -> _As:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def _url(self, url: str) -> str:
        return url if url.startswith("http") else self._base + url

    def get(self, url: Any, **kw: Any) -> httpx.Response:
        return self._pool.get(self._url(str(url)), headers=self._auth, **kw)

    def post(self, url: Any, **kw: Any) -> httpx.Response:
        return self._pool.post(self._url(str(url)), headers=self._auth, **kw)


def _conn_path(api: str, name: str, rest: str = "") -> str:
    return f"/connectivity/connectors/{api}/connections/{name}{rest}"


def _names(client: _As) -> list[str]:
    """Every connection name the caller can list, following ``nextLink``."""
    names: list[str] = []
    r = client.get("/connectivity/connections", params=V1)
    while True:
        assert r.status_code == 200, r.text
        body = r.json()
        names += [c["name"] for c in body["value"]]
        if not body.get("nextLink"):
            return names
        r = client.get(body["nextLink"])


def _share(
    client: _As, api: str, name: str, principal: str, role: str, delete: list[str] | None = None
) -> httpx.Response:
    put = (
        [
            {
                "properties": {
                    "roleName": role,
                    "capabilities": [],
                    "principal": {"id": principal, "type": "User", "tenantId": None},
                    "NotifyShareTargetOption": "Notify",
                }
            }
        ]
        if role
        else []
    )
    body = {"put": put, "delete": [{"id": d} for d in (delete or [])]}
    return client.post(_conn_path(api, name, "/modifyPermissions"), params=V1, json=body)


# --------------------------------------------------------------------------- auth and scoping


def test_list_is_scoped_to_the_caller(emulator: Any) -> None:
    with _client(emulator, S.SVC_OBJECT_ID) as svc:
        assert sorted(_names(svc)) == sorted([S.CONN_SP_SVC, S.CONN_OUTLOOK_SVC, S.CONN_DV_SVC])
    with _client(emulator, S.APP_OBJECT_ID, S.APP_CLIENT_ID) as app:
        assert _names(app) == [S.CONN_DV_SVC]  # shared with it (CanView), nothing else
    with _client(emulator, S.MAKER_OBJECT_ID) as maker:
        assert _names(maker) == [S.CONN_SP_MAKER]


def test_each_api_accepts_only_its_own_audience(emulator: Any) -> None:
    with _client(emulator, S.SVC_OBJECT_ID) as c:
        assert c.get("/connectivity/connections", params=V1).status_code == 200
    # A Power Apps (admin API) token on the Power Platform API, and a Dataverse token: refused.
    for audience in ("https://service.powerapps.com", S.URL):
        with _client(emulator, S.SVC_OBJECT_ID, audience=audience) as c:
            r = c.get("/connectivity/connections", params=V1)
            assert r.status_code == 401
            assert r.json()["error"]["code"] == "InvalidAuthenticationTokenAudience"
    # A Power Platform API token on the admin route: refused the same way.
    with _client(emulator, S.SVC_OBJECT_ID) as c:
        r = c.get(_admin_path(), params={"api-version": "2016-11-01"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "InvalidAuthenticationTokenAudience"
    with httpx.Client(base_url=emulator.url) as anonymous:
        assert anonymous.get("/connectivity/connections", params=V1).status_code == 401
    expired = emulator.token(S.SVC_OBJECT_ID, None, PP, lifetime=-120)
    r = httpx.get(
        emulator.url + "/connectivity/connections", params=V1, headers={"Authorization": f"Bearer {expired}"}
    )
    assert r.status_code == 401


def test_api_version_is_required(emulator: Any) -> None:
    with _client(emulator, S.SVC_OBJECT_ID) as c:
        r = c.get("/connectivity/connections")
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "MissingApiVersionParameter"


def test_connection_object_shape(emulator: Any) -> None:
    with _client(emulator, S.SVC_OBJECT_ID) as c:
        r = c.get(_conn_path(S.SP, S.CONN_SP_SVC), params=V1)
    assert r.status_code == 200
    conn = r.json()
    api = f"/providers/Microsoft.PowerApps/apis/{S.SP}"
    assert conn["name"] == S.CONN_SP_SVC
    assert conn["id"] == f"{api}/connections/{S.CONN_SP_SVC}"
    assert conn["type"] == "Microsoft.PowerApps/apis/connections"
    props = conn["properties"]
    assert props["apiId"] == api
    assert props["statuses"] == [{"status": "Connected"}]
    assert props["createdBy"]["id"] == S.SVC_OBJECT_ID
    assert props["environment"]["name"] == S.ENVIRONMENT_ID
    owner = [p for p in props["permissions"] if p["properties"]["roleName"] == "Owner"]
    assert [p["properties"]["principal"]["id"] for p in owner] == [S.SVC_OBJECT_ID]


def test_missing_connection_has_the_documented_404(emulator: Any) -> None:
    with _client(emulator, S.SVC_OBJECT_ID) as c:
        r = c.get(_conn_path(S.SP, "ffffffffffffffffffffffffffffffff"), params=V1)
        assert r.status_code == 404
        assert r.json() == {
            "error": {
                "code": "ConnectionNotFound",
                "message": f"Could not find connection 'ffffffffffffffffffffffffffffffff' for API '{S.SP}'.",
            }
        }
        # An existing name under another connector is not found either.
        r = c.get(_conn_path(S.OUTLOOK, S.CONN_SP_SVC), params=V1)
        assert r.status_code == 404 and r.json()["error"]["code"] == "ConnectionNotFound"


def test_someone_elses_connection_is_forbidden(emulator: Any) -> None:
    with _client(emulator, S.MAKER_OBJECT_ID) as maker:
        r = maker.get(_conn_path(S.SP, S.CONN_SP_SVC), params=V1)
        assert r.status_code == 403
        assert S.MAKER_OBJECT_ID in r.json()["error"]["message"]
        assert maker.get(_conn_path(S.SP, S.CONN_SP_SVC, "/permissions"), params=V1).status_code == 403


# --------------------------------------------------------------------------- paging


@pytest.mark.emulator_only
def test_list_pages_with_a_top_level_next_link(emulator: Any) -> None:
    emulator.app.settings["connections_page_size"] = 2
    with _client(emulator, S.SVC_OBJECT_ID) as svc:
        first = svc.get("/connectivity/connections", params=V1).json()
        assert len(first["value"]) == 2
        assert "nextLink" in first and "@odata.nextLink" not in first
        assert first["nextLink"].startswith(emulator.url + "/connectivity/connections?")
        names = _names(svc)
    assert sorted(names) == sorted(
        [S.CONN_SP_SVC, S.CONN_OUTLOOK_SVC, S.CONN_DV_SVC]
    )  # no repeats, none lost


# --------------------------------------------------------------------------- sharing


def test_owner_shares_and_unshares(emulator: Any) -> None:
    with (
        _client(emulator, S.SVC_OBJECT_ID) as svc,
        _client(emulator, S.APP_OBJECT_ID, S.APP_CLIENT_ID) as app,
    ):
        assert S.CONN_SP_SVC not in _names(app)
        r = _share(svc, S.SP, S.CONN_SP_SVC, S.APP_OBJECT_ID, "CanView")
        assert r.status_code == 200, r.text
        assert S.CONN_SP_SVC in _names(app)
        perms = svc.get(_conn_path(S.SP, S.CONN_SP_SVC, "/permissions"), params=V1).json()["value"]
        mine = [p for p in perms if p["properties"]["principal"]["id"] == S.APP_OBJECT_ID]
        assert [p["properties"]["roleName"] for p in mine] == ["CanView"]
        r = _share(svc, S.SP, S.CONN_SP_SVC, "", "", delete=[mine[0]["id"]])
        assert r.status_code == 200
        assert S.CONN_SP_SVC not in _names(app)


def test_only_owner_or_resharers_may_share(emulator: Any) -> None:
    # The application holds CanView on the Dataverse connection: it may use it, not share it.
    with _client(emulator, S.APP_OBJECT_ID, S.APP_CLIENT_ID) as app:
        r = _share(app, S.DATAVERSE, S.CONN_DV_SVC, S.MAKER_OBJECT_ID, "CanView")
        assert r.status_code == 403
    with _client(emulator, S.MAKER_OBJECT_ID) as maker:
        assert S.CONN_DV_SVC not in _names(maker)
        # Not shared with the maker at all: forbidden too.
        assert _share(maker, S.OUTLOOK, S.CONN_OUTLOOK_SVC, S.MAKER_OBJECT_ID, "CanEdit").status_code == 403


@pytest.mark.emulator_only
def test_can_view_with_share_may_reshare_up_to_its_own_role(emulator: Any) -> None:
    emulator.app.settings["explicit_share_targets"] = "anyone"  # the maker is a person
    with _client(emulator, S.SVC_OBJECT_ID) as svc:
        assert (
            _share(svc, S.OUTLOOK, S.CONN_OUTLOOK_SVC, S.MAKER_OBJECT_ID, "CanViewWithShare").status_code
            == 200
        )
    with _client(emulator, S.MAKER_OBJECT_ID) as maker:
        assert _share(maker, S.OUTLOOK, S.CONN_OUTLOOK_SVC, S.APP_OBJECT_ID, "CanView").status_code == 200
        assert _share(maker, S.OUTLOOK, S.CONN_OUTLOOK_SVC, S.APP_OBJECT_ID, "CanEdit").status_code == 403
    with _client(emulator, S.APP_OBJECT_ID, S.APP_CLIENT_ID) as app:
        assert S.CONN_OUTLOOK_SVC in _names(app)


def test_owner_cannot_be_removed_or_granted(emulator: Any) -> None:
    conn_id = f"/providers/Microsoft.PowerApps/apis/{S.SP}/connections/{S.CONN_SP_SVC}"
    owner_perm = f"{conn_id}/permissions/{S.SVC_OBJECT_ID}"
    with _client(emulator, S.SVC_OBJECT_ID) as svc:
        r = _share(svc, S.SP, S.CONN_SP_SVC, "", "", delete=[owner_perm])
        assert r.status_code == 400 and r.json()["error"]["code"] == "CannotRemoveOwner"
        r = _share(svc, S.SP, S.CONN_SP_SVC, S.MAKER_OBJECT_ID, "Owner")
        assert r.status_code == 400
        r = _share(svc, S.SP, S.CONN_SP_SVC, S.MAKER_OBJECT_ID, "CanDance")
        assert r.status_code == 400 and r.json()["error"]["code"] == "InvalidRoleName"
        # All or nothing: a valid share together with a bad delete changes nothing.
        r = _share(svc, S.SP, S.CONN_SP_SVC, S.MAKER_OBJECT_ID, "CanView", delete=[owner_perm])
        assert r.status_code == 400
        perms = svc.get(_conn_path(S.SP, S.CONN_SP_SVC, "/permissions"), params=V1).json()["value"]
    assert [(p["properties"]["principal"]["id"], p["properties"]["roleName"]) for p in perms] == [
        (S.SVC_OBJECT_ID, "Owner")
    ]


# --------------------------------------------------------------------------- admin scope


def _admin_path(env: str = S.ENVIRONMENT_ID) -> str:
    return f"/providers/Microsoft.PowerApps/scopes/admin/environments/{env}/connections"


def test_admin_scope_needs_a_management_app(emulator: Any) -> None:
    with _client(emulator, S.APP_OBJECT_ID, S.APP_CLIENT_ID, audience="https://service.powerapps.com") as app:
        r = app.get(_admin_path(), params={"api-version": "2016-11-01"})
    assert r.status_code == 403
    assert "does not have permission to access the path" in r.json()["error"]["message"]
    with _client(emulator, S.SVC_OBJECT_ID, audience="https://service.powerapps.com") as user:
        assert user.get(_admin_path(), params={"api-version": "2016-11-01"}).status_code == 403


@pytest.mark.emulator_only
def test_admin_scope_lists_every_connection_for_a_management_app(emulator: Any) -> None:
    app_row = next(a for a in emulator.store.data["applications"] if a["client_id"] == S.APP_CLIENT_ID)
    app_row["management_app"] = True
    with _client(emulator, S.APP_OBJECT_ID, S.APP_CLIENT_ID, audience="https://service.powerapps.com") as app:
        r = app.get(_admin_path(), params={"api-version": "2016-11-01"})
        assert r.status_code == 200
        assert sorted(c["name"] for c in r.json()["value"]) == sorted(
            [S.CONN_SP_SVC, S.CONN_OUTLOOK_SVC, S.CONN_DV_SVC, S.CONN_SP_MAKER]
        )
        other = app.get(
            _admin_path("00000000-0000-4000-8000-000000000000"), params={"api-version": "2016-11-01"}
        )
        assert other.status_code == 404


# --------------------------------------------------------------------------- shares as the platform serves them

PA = "https://service.powerapps.com"
ADMIN_V = {"api-version": "2017-06-01"}


def _admin_conn(api: str, name: str, rest: str) -> str:
    return (f"/providers/Microsoft.PowerApps/scopes/admin/environments/{S.ENVIRONMENT_ID}/apis/{api}"
            f"/connections/{name}{rest}")


def _put(principal: str, role: str, kind: str | None = None, tenant: str | None = None) -> dict[str, Any]:
    p: dict[str, Any] = {"id": principal}
    if kind:
        p["type"] = kind
    if tenant:
        p["tenantId"] = tenant
    return {"put": [{"properties": {"roleName": role, "principal": p}}], "delete": []}


@pytest.mark.emulator_only
def test_lists_carry_only_the_owner_and_the_permissions_route_every_share(emulator: Any) -> None:
    with _client(emulator, S.SVC_OBJECT_ID) as svc:
        listed = {c["name"]: c for c in svc.get("/connectivity/connections", params=V1).json()["value"]}
        roles = [p["properties"]["roleName"] for p in listed[S.CONN_DV_SVC]["properties"]["permissions"]]
        assert roles == ["Owner"]  # the CanView share with the application is not in the list
        shares = svc.get(_conn_path(S.DATAVERSE, S.CONN_DV_SVC, "/permissions"), params=V1).json()["value"]
    by_id = {p["properties"]["principal"]["id"]: p["properties"] for p in shares}
    assert by_id[S.APP_OBJECT_ID]["roleName"] == "CanView"
    assert by_id[S.APP_OBJECT_ID]["principal"]["displayName"]
    emulator.app.settings["list_permissions"] = "all"  # the other reading
    with _client(emulator, S.SVC_OBJECT_ID) as svc:
        listed = {c["name"]: c for c in svc.get("/connectivity/connections", params=V1).json()["value"]}
    assert len(listed[S.CONN_DV_SVC]["properties"]["permissions"]) == 2


@pytest.mark.emulator_only
def test_sharing_rules_users_groups_and_the_tenant(emulator: Any) -> None:
    from reconciler.emulator.factory import add_group

    group = add_group(emulator.store.data, "Flow makers", [S.MAKER_OBJECT_ID])
    with _client(emulator, S.SVC_OBJECT_ID) as svc:
        path = _conn_path(S.SP, S.CONN_SP_SVC, "/modifyPermissions")
        # A person, by default: refused (only a user representing a service principal).
        r = svc.post(path, params=V1, json=_put(S.MAKER_OBJECT_ID, "CanView", "User"))
        assert r.status_code == 400 and r.json()["error"]["code"] == "ConnectionSharingNotSupported"
        # The tenant: CanView only, and its id must be the tenant's.
        r = svc.post(path, params=V1, json=_put(S.TENANT_ID, "CanEdit", "Tenant", S.TENANT_ID))
        assert r.status_code == 400 and "only supported for CanView" in r.json()["error"]["message"]
        r = svc.post(path, params=V1, json=_put(S.MAKER_OBJECT_ID, "CanView", "Tenant"))
        assert r.status_code == 400
        # A group: its members hold the role.
        assert svc.post(path, params=V1, json=_put(group["id"], "CanView")).status_code == 200
        shares = svc.get(_conn_path(S.SP, S.CONN_SP_SVC, "/permissions"), params=V1).json()["value"]
        assert {p["properties"]["principal"]["type"] for p in shares} == {"User", "Group"}
    with _client(emulator, S.MAKER_OBJECT_ID) as maker:
        assert S.CONN_SP_SVC in _names(maker)
    with _client(emulator, S.SVC_OBJECT_ID) as svc:
        path = _conn_path(S.OUTLOOK, S.CONN_OUTLOOK_SVC, "/modifyPermissions")
        assert svc.post(path, params=V1, json=_put(S.TENANT_ID, "CanView", None, S.TENANT_ID)).status_code == 200
    with _client(emulator, S.MAKER_OBJECT_ID) as maker:
        assert S.CONN_OUTLOOK_SVC in _names(maker)  # everyone in the tenant
    emulator.app.settings["explicit_share_targets"] = "anyone"  # the other reading
    with _client(emulator, S.SVC_OBJECT_ID) as svc:
        r = svc.post(_conn_path(S.DATAVERSE, S.CONN_DV_SVC, "/modifyPermissions"), params=V1,
                     json=_put(S.MAKER_OBJECT_ID, "CanView", "User"))
        assert r.status_code == 200


@pytest.mark.emulator_only
def test_admin_permissions_routes_need_an_admin_and_their_own_audience(emulator: Any) -> None:
    with _client(emulator, S.APP_OBJECT_ID, S.APP_CLIENT_ID, audience=PA) as app:
        r = app.get(_admin_conn(S.SP, S.CONN_SP_SVC, "/permissions"), params=ADMIN_V)
        assert r.status_code == 403
    app_row = next(a for a in emulator.store.data["applications"] if a["client_id"] == S.APP_CLIENT_ID)
    app_row["management_app"] = True
    with _client(emulator, S.APP_OBJECT_ID, S.APP_CLIENT_ID) as pp:  # the Power Platform API's audience
        assert pp.get(_admin_conn(S.SP, S.CONN_SP_SVC, "/permissions"), params=ADMIN_V).status_code == 401
    with _client(emulator, S.APP_OBJECT_ID, S.APP_CLIENT_ID, audience=PA) as app:
        before = app.get(_admin_conn(S.SP, S.CONN_SP_SVC, "/permissions"), params=ADMIN_V).json()["value"]
        assert [p["properties"]["roleName"] for p in before] == ["Owner"]
        # The admin shares someone else's connection with a service principal's user (itself here).
        r = app.post(_admin_conn(S.SP, S.CONN_SP_SVC, "/modifyPermissions"), params=ADMIN_V,
                     json=_put(S.APP_OBJECT_ID, "CanView"))
        assert r.status_code == 200, r.text
        after = app.get(_admin_conn(S.SP, S.CONN_SP_SVC, "/permissions"), params=ADMIN_V).json()["value"]
    assert {(p["properties"]["principal"]["id"], p["properties"]["roleName"]) for p in after} == {
        (S.SVC_OBJECT_ID, "Owner"), (S.APP_OBJECT_ID, "CanView")}


# --------------------------------------------------------------------------- Graph membership

GRAPH = "https://graph.microsoft.com"


@pytest.mark.emulator_only
def test_graph_check_member_groups(emulator: Any) -> None:
    from reconciler.emulator.factory import add_group

    inner = add_group(emulator.store.data, "Inner", [S.SVC_OBJECT_ID])
    outer = add_group(emulator.store.data, "Outer", [inner["id"]])
    other = add_group(emulator.store.data, "Other", [S.MAKER_OBJECT_ID])
    path = f"/v1.0/directoryObjects/{S.SVC_OBJECT_ID}/checkMemberGroups"
    body = {"groupIds": [outer["id"], other["id"]]}
    with _client(emulator, S.APP_OBJECT_ID, S.APP_CLIENT_ID, audience=GRAPH) as app:
        r = app.post(path, json=body)
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "Authorization_RequestDenied"
        assert "innerError" in r.json()["error"]
    app_row = next(a for a in emulator.store.data["applications"] if a["client_id"] == S.APP_CLIENT_ID)
    app_row["graph_permissions"] = ["GroupMember.Read.All"]
    with _client(emulator, S.APP_OBJECT_ID, S.APP_CLIENT_ID, audience=GRAPH) as app:
        r = app.post(path, json=body)
        assert r.status_code == 200 and r.json()["value"] == [outer["id"]]  # transitive
        r = app.post(path, json={"groupIds": [outer["id"]] * 21})
        assert r.status_code == 400
    with _client(emulator, S.APP_OBJECT_ID, S.APP_CLIENT_ID) as wrong:  # a Power Platform API token
        r = wrong.post(path, json=body)
        assert r.status_code == 401
        assert r.json()["error"] == {**r.json()["error"], "code": "InvalidAuthenticationToken",
                                     "message": "Access token validation failure. Invalid audience."}
