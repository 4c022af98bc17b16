"""The emulator's connections API: the Power Platform API connectivity routes and the classic Power Apps
admin-scope list.

Sources (docs/dataverse.md §4.2-§4.5):
- routes, ``api-version=1``, share/unshare body ``{"put": [...], "delete": [{"id": ...}]}``:
  [MS-CODE] microsoft/terraform-provider-power-platform ``internal/services/connection/api_connection.go``;
- connection object shape: same provider's ``dto.go`` and test fixture ``get_connections.json``
  (docs/dataverse.md §4.4);
- ``ConnectionNotFound`` body ``Could not find connection '<name>' for API '<api>'.``: terraform GetConnection
  and Capgemini packagedeployer issue #55;
- roles ``CanView`` / ``CanViewWithShare`` / ``CanEdit`` / ``Owner`` (Owner cannot be removed):
  Microsoft.PowerApps.Administration.PowerShell ``Set-AdminPowerAppConnectionRoleAssignment``;
- admin scope ``/providers/Microsoft.PowerApps/scopes/admin/environments/{env}/connections`` and the 403 for
  a service principal that is not a registered management app (``New-PowerAppManagementApp``); top-level
  ``nextLink`` paging of the classic API.

The caller is the ``oid`` of a bearer token for https://api.powerplatform.com or
https://service.powerapps.com (401 otherwise). The user-scope routes show only the connections the caller
created or holds a permission on. Which role may re-share, and up to which role, is not documented: the
emulator lets an Owner grant CanView/CanViewWithShare/CanEdit, a CanEdit holder grant up to CanEdit and a
CanViewWithShare holder grant up to CanViewWithShare (UNCONFIRMED; see docs/emulator.md).
"""

from __future__ import annotations

import base64
import copy
import json
import re
from typing import Any
from urllib.parse import quote, urlencode

from . import jwt
from .web import HttpError, Principal, Request, Response

AUDIENCES = ["https://api.powerplatform.com", "https://service.powerapps.com"]
API_PREFIX = "/providers/Microsoft.PowerApps/apis/"
ROLES = ("CanView", "CanViewWithShare", "CanEdit", "Owner")
_RANK = {"CanView": 1, "CanViewWithShare": 2, "CanEdit": 3, "Owner": 4}
# The most a holder of a role may grant to someone else (UNCONFIRMED, see the module docstring).
_MAY_GRANT = {"Owner": 3, "CanEdit": 3, "CanViewWithShare": 2, "CanView": 0}
DEFAULT_PAGE_SIZE = 250  # the real page size is not documented (docs/dataverse.md §4.2); a setting overrides it

_LIST = re.compile(r"^/connectivity/connections/?$")
_ONE = re.compile(r"^/connectivity/connectors/(?P<api>[^/]+)/connections/(?P<name>[^/]+)"
                  r"(?P<rest>/permissions|/modifyPermissions)?/?$")
_ADMIN = re.compile(r"^/providers/Microsoft\.PowerApps/scopes/admin/environments/(?P<env>[^/]+)"
                    r"/connections/?$", re.IGNORECASE)


def handle(app: Any, request: Request) -> Response | None:
    """Serve the connections routes; None when the path is not one of them."""
    path = request.path
    if _LIST.match(path):
        route = "list"
        m = None
    elif (m := _ONE.match(path)) is not None:
        route = {None: "get", "/permissions": "permissions", "/modifyPermissions": "modify"}[m.group("rest")]
    elif (m := _ADMIN.match(path)) is not None:
        route = "admin"
    else:
        return None
    expected = "POST" if route == "modify" else "GET"
    if request.method != expected:
        raise HttpError(405, "MethodNotAllowed", f"The requested resource does not support http method "
                        f"'{request.method}'.")
    if not request.query.get("api-version"):
        raise HttpError(400, "MissingApiVersionParameter",
                        "The api-version query parameter (?api-version=) is required for all requests.")
    caller = jwt.verify_bearer(app.store.data["signing_key_pem"], request.headers.get("Authorization"),
                               AUDIENCES)
    request.state["caller_object_id"] = caller.object_id
    with app.store.lock:
        if route == "list":
            visible = [c for c in _connections(app) if _role_of(c, caller.object_id)]
            return _page(app, request, visible)
        if route == "admin":
            assert m is not None
            return _admin_list(app, request, caller, m.group("env"))
        assert m is not None
        conn = _find(app, m.group("api"), m.group("name"))
        role = _role_of(conn, caller.object_id)
        if route == "modify":
            return _modify(app, request, conn, caller, role)
        if not role:
            raise _no_permission(caller, conn)
        if route == "permissions":
            return Response.json(200, {"value": copy.deepcopy(_permissions(conn))})
        return Response.json(200, copy.deepcopy(conn))


# --------------------------------------------------------------------------- lookups


def _connections(app: Any) -> list[dict[str, Any]]:
    conns: list[dict[str, Any]] = app.store.data.get("connections") or []
    return conns


def _api_name(conn: dict[str, Any]) -> str:
    return str(conn.get("properties", {}).get("apiId", "")).rstrip("/").rsplit("/", 1)[-1]


def _permissions(conn: dict[str, Any]) -> list[dict[str, Any]]:
    perms: list[dict[str, Any]] = conn.setdefault("properties", {}).setdefault("permissions", [])
    return perms


def _find(app: Any, api: str, name: str) -> dict[str, Any]:
    for c in _connections(app):
        if str(c.get("name", "")).lower() == name.lower() and _api_name(c).lower() == api.lower():
            return c
    raise HttpError(404, "ConnectionNotFound", f"Could not find connection '{name}' for API '{api}'.")


def _role_of(conn: dict[str, Any], object_id: str) -> str | None:
    """The strongest role ``object_id`` holds on ``conn`` (the creator is the Owner)."""
    if not object_id:
        return None
    oid = object_id.lower()
    best: str | None = None
    if str(conn.get("properties", {}).get("createdBy", {}).get("id", "")).lower() == oid:
        best = "Owner"
    for p in _permissions(conn):
        props = p.get("properties", {})
        if str(props.get("principal", {}).get("id", "")).lower() == oid:
            role = str(props.get("roleName", ""))
            if role in _RANK and (best is None or _RANK[role] > _RANK[best]):
                best = role
    return best


def _no_permission(caller: Principal, conn: dict[str, Any]) -> HttpError:
    # The wording of the classic "caller does not have permission for connection" error (docs/dataverse.md §5.3).
    return HttpError(403, "Forbidden", f"The caller with object id '{caller.object_id}' does not have "
                     f"permission for connection '{conn.get('name')}' under Api '{_api_name(conn)}'.")


# --------------------------------------------------------------------------- paging


def _page(app: Any, request: Request, rows: list[dict[str, Any]]) -> Response:
    """One page and a top-level ``nextLink`` carrying an opaque skip token (docs/dataverse.md §4.2)."""
    settings = dict(getattr(app, "settings", None) or {})
    size = int(settings.get("connections_page_size") or app.store.data.get("settings", {}).get(
        "connections_page_size") or DEFAULT_PAGE_SIZE)
    query = request.query
    if query.get("$top", "").isdigit():
        size = max(1, min(size, int(query["$top"])))
    start = 0
    token = query.get("$skiptoken")
    if token:
        try:
            start = int(json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))["o"])
        except (ValueError, KeyError, TypeError):
            raise HttpError(400, "InvalidSkipToken", "The skip token is not valid.") from None
    chunk = rows[start:start + size]
    body: dict[str, Any] = {"value": copy.deepcopy(chunk)}
    if start + size < len(rows):
        nxt = dict(query)
        token = base64.urlsafe_b64encode(json.dumps({"o": start + size}).encode()).decode()
        nxt["$skiptoken"] = token.rstrip("=")
        body["nextLink"] = f"{request.origin}{quote(request.path)}?{urlencode(nxt)}"
    return Response.json(200, body)


# --------------------------------------------------------------------------- admin scope


def _admin_list(app: Any, request: Request, caller: Principal, env: str) -> Response:
    """All connections of the environment, for a registered management app only (docs/dataverse.md §4.3:
    without ``New-PowerAppManagementApp`` the service answers 403 "does not have permission to access
    the path")."""
    application = None
    if caller.app_id:
        application = next((a for a in app.store.data.get("applications") or []
                            if str(a.get("client_id", "")).lower() == str(caller.app_id).lower()), None)
    if application is None or not application.get("management_app"):
        who = (f"The service principal with id '{caller.object_id}' for application {caller.app_id}"
               if caller.app_id else f"The caller with object id '{caller.object_id}'")
        raise HttpError(403, "Forbidden", f"{who} does not have permission to access the path "
                        f"'{request.path}' in tenant {caller.tenant_id}.")
    env_id = str(app.store.data["environment"].get("environment_id") or "")
    if env.lower() != env_id.lower():
        raise HttpError(404, "EnvironmentNotFound", f"The environment '{env}' could not be found in the "
                        f"tenant '{caller.tenant_id}'.")
    return _page(app, request, list(_connections(app)))


# --------------------------------------------------------------------------- sharing


def _modify(
    app: Any, request: Request, conn: dict[str, Any], caller: Principal, role: str | None
) -> Response:
    """``POST .../modifyPermissions`` with ``{"put": [...], "delete": [{"id": ...}]}``; all or nothing."""
    if not role:
        raise _no_permission(caller, conn)
    if _MAY_GRANT[role] == 0:
        raise HttpError(403, "Forbidden", f"The caller with object id '{caller.object_id}' holds {role} on "
                        f"connection '{conn.get('name')}' and may not share it; CanViewWithShare, CanEdit or "
                        "Owner is needed.")
    puts, deletes = _modify_body(request)
    perms = _permissions(conn)
    base_id = str(conn.get("id") or f"{API_PREFIX}{_api_name(conn)}/connections/{conn.get('name')}")
    # Validate everything first so a bad entry changes nothing.
    new = [_granted(entry, conn, role, base_id) for entry in puts]
    drop = {_revoked(entry, conn, perms, role) for entry in deletes}
    kept = [p for i, p in enumerate(perms) if i not in drop]
    for n in new:  # a put for a principal that already has a permission replaces it
        kept = [p for p in kept if str(p.get("name", "")).lower() != n["name"].lower()
                or p.get("properties", {}).get("roleName") == "Owner"]
        kept.append(n)
    perms[:] = kept
    conn.setdefault("properties", {})["lastModifiedTime"] = _now()
    request.state["write"] = True
    return Response(200, b"", {"Content-Length": "0"})


def _modify_body(request: Request) -> tuple[list[Any], list[Any]]:
    """The ``put`` and ``delete`` lists of a modifyPermissions body (400 for any other shape)."""
    try:
        body = request.json() or {}
    except ValueError:
        raise HttpError(400, "InvalidRequestContent", "The request content is not valid JSON.") from None
    if not isinstance(body, dict):
        raise HttpError(400, "InvalidRequestContent",
                        "The request content must be an object with put and delete.")
    puts, deletes = body.get("put") or [], body.get("delete") or []
    if not isinstance(puts, list) or not isinstance(deletes, list):
        raise HttpError(400, "InvalidRequestContent", "'put' and 'delete' must be arrays.")
    return puts, deletes


def _granted(entry: Any, conn: dict[str, Any], role: str, base_id: str) -> dict[str, Any]:
    """The permission one ``put`` entry grants, checked against what a caller holding ``role`` may grant."""
    props = (entry or {}).get("properties") if isinstance(entry, dict) else None
    if not isinstance(props, dict):
        raise HttpError(400, "InvalidRequestContent", "Each 'put' entry needs 'properties'.")
    want = props.get("roleName")
    principal = props.get("principal") or {}
    pid = str(principal.get("id") or "") if isinstance(principal, dict) else ""
    if want not in ROLES:
        raise HttpError(400, "InvalidRoleName", f"The role name '{want}' is not valid; use one of "
                        "CanView, CanViewWithShare, CanEdit.")
    if not pid:
        raise HttpError(400, "InvalidRequestContent", "Each 'put' entry needs properties.principal.id.")
    if want == "Owner":
        raise HttpError(400, "InvalidRoleName", "The Owner role cannot be granted; the owner of a "
                        "connection is the account that created it.")
    if _RANK[want] > _MAY_GRANT[role]:
        raise HttpError(403, "Forbidden", f"The caller holds {role} on connection "
                        f"'{conn.get('name')}' and may not grant {want}.")
    if _role_of(conn, pid) == "Owner":
        raise HttpError(400, "CannotModifyOwner", f"The principal '{pid}' owns connection "
                        f"'{conn.get('name')}'; the Owner permission cannot be changed.")
    return {
        "name": pid,
        "id": f"{base_id}/permissions/{pid}",
        "type": "Microsoft.PowerApps/apis/connections/permissions",
        "properties": {"roleName": want,
                       "principal": {"id": pid, "type": principal.get("type") or "User",
                                     "tenantId": principal.get("tenantId")},
                       "notifyShareTargetOption": props.get("NotifyShareTargetOption")
                       or props.get("notifyShareTargetOption") or "NotSpecified"},
    }


def _revoked(entry: Any, conn: dict[str, Any], perms: list[dict[str, Any]], role: str) -> int:
    """The index in ``perms`` of the permission one ``delete`` entry removes, checked against what a
    caller holding ``role`` may remove."""
    pid_path = str((entry or {}).get("id") or "") if isinstance(entry, dict) else ""
    tail = pid_path.rsplit("/", 1)[-1].lower()
    idx = next((i for i, p in enumerate(perms)
                if pid_path and (str(p.get("id", "")).lower() == pid_path.lower()
                                 or str(p.get("name", "")).lower() == tail)),
               None)
    if idx is None:
        raise HttpError(404, "PermissionNotFound", f"The permission '{pid_path}' was not found on "
                        f"connection '{conn.get('name')}'.")
    if perms[idx].get("properties", {}).get("roleName") == "Owner":
        raise HttpError(400, "CannotRemoveOwner", "The Owner permission of connection "
                        f"'{conn.get('name')}' cannot be removed; delete the connection instead.")
    target_role = str(perms[idx].get("properties", {}).get("roleName", ""))
    if _RANK.get(target_role, 0) > _MAY_GRANT[role]:
        raise HttpError(403, "Forbidden", f"The caller holds {role} and may not remove a {target_role} "
                        "permission.")
    return idx


def _now() -> str:
    from .store import utc_now

    return utc_now()
