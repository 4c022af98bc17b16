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

- the admin permissions and modifyPermissions routes (``.../scopes/admin/environments/{env}/apis/{api}/
  connections/{name}/permissions``, api-version 2017-06-01), principal types User / Group / Tenant, a tenant
  share only as CanView: ``Get-`` / ``Set-AdminPowerAppConnectionRoleAssignment`` (docs/dataverse.md §4.8, §4.9).

The connectivity routes accept only a token for https://api.powerplatform.com, the admin routes only one for
https://service.powerapps.com (401 otherwise; docs/dataverse.md §6.6). The user-scope routes show only the
connections the caller holds a role on (as creator, directly, through a group or the tenant: ``sharing``);
lists carry only the Owner's permission, the permissions route every share (docs/dataverse.md §4.8). Which
role may re-share, and up to which role, is not documented: the emulator lets an Owner grant
CanView/CanViewWithShare/CanEdit, a CanEdit holder grant up to CanEdit and a CanViewWithShare holder grant up
to CanViewWithShare (UNCONFIRMED; see docs/emulator.md).
"""

from __future__ import annotations

import base64
import copy
import json
import re
from typing import Any
from urllib.parse import quote, urlencode

from . import jwt, sharing
from .web import HttpError, Principal, Request, Response

#: Each API accepts only its own token audience (docs/dataverse.md §6.1, §6.6): the Power Platform API its
#: connectivity routes, the classic Power Apps API its admin routes.
POWERPLATFORM_AUDIENCE = "https://api.powerplatform.com"
POWERAPPS_AUDIENCES = ["https://service.powerapps.com", "https://api.powerapps.com"]
AUDIENCES = [POWERPLATFORM_AUDIENCE, *POWERAPPS_AUDIENCES]
API_PREFIX = "/providers/Microsoft.PowerApps/apis/"
ROLES = sharing.ROLES
_RANK = sharing.RANK
# The most a holder of a role may grant to someone else (UNCONFIRMED, see the module docstring).
_MAY_GRANT = {"Owner": 3, "CanEdit": 3, "CanViewWithShare": 2, "CanView": 0}
DEFAULT_PAGE_SIZE = 250  # the real page size is not documented (docs/dataverse.md §4.2); a setting overrides it

_LIST = re.compile(r"^/connectivity/connections/?$")
_ONE = re.compile(r"^/connectivity/connectors/(?P<api>[^/]+)/connections/(?P<name>[^/]+)"
                  r"(?P<rest>/permissions|/modifyPermissions)?/?$")
_ADMIN = re.compile(r"^/providers/Microsoft\.PowerApps/scopes/admin/environments/(?P<env>[^/]+)"
                    r"/connections/?$", re.IGNORECASE)
_ADMIN_ONE = re.compile(r"^/providers/Microsoft\.PowerApps/scopes/admin/environments/(?P<env>[^/]+)"
                        r"/apis/(?P<api>[^/]+)/connections/(?P<name>[^/]+)"
                        r"(?P<rest>/permissions|/modifyPermissions)/?$", re.IGNORECASE)


def _route(path: str) -> tuple[str, re.Match[str] | None] | None:
    """Which route ``path`` is (list, get, permissions, modify, admin, admin_permissions, admin_modify)."""
    if _LIST.match(path):
        return "list", None
    if (m := _ONE.match(path)) is not None:
        return {None: "get", "/permissions": "permissions", "/modifyPermissions": "modify"}[m.group("rest")], m
    if (m := _ADMIN.match(path)) is not None:
        return "admin", m
    if (m := _ADMIN_ONE.match(path)) is not None:
        return ("admin_modify" if m.group("rest").lower() == "/modifypermissions" else "admin_permissions"), m
    return None


def _caller(app: Any, request: Request, route: str) -> Principal:
    """The caller of a token for the route's own API; any other audience is refused with 401 in the shape
    these APIs answer (``InvalidAuthenticationTokenAudience``; UNCONFIRMED wording: docs/dataverse.md §6.6)."""
    admin = route.startswith("admin")
    wanted = POWERAPPS_AUDIENCES if admin else [POWERPLATFORM_AUDIENCE]
    try:
        return jwt.verify_bearer(app.store.data["signing_key_pem"], request.headers.get("Authorization"), wanted)
    except HttpError as e:
        if "audience" not in e.message:
            raise HttpError(401, "InvalidAuthenticationToken", e.message.split(": ", 1)[-1], e.headers) from None
        raise HttpError(
            401, "InvalidAuthenticationTokenAudience",
            "The access token has been obtained for wrong audience or resource. It should exactly match with "
            f"one of the allowed audiences {', '.join(repr(a) for a in wanted)}.", e.headers,
        ) from None


def handle(app: Any, request: Request) -> Response | None:
    """Serve the connections routes; None when the path is not one of them."""
    found = _route(request.path)
    if found is None:
        return None
    route, m = found
    expected = "POST" if route.endswith("modify") else "GET"
    if request.method != expected:
        raise HttpError(405, "MethodNotAllowed", f"The requested resource does not support http method "
                        f"'{request.method}'.")
    if not request.query.get("api-version"):
        raise HttpError(400, "MissingApiVersionParameter",
                        "The api-version query parameter (?api-version=) is required for all requests.")
    caller = _caller(app, request, route)
    request.state["caller_object_id"] = caller.object_id
    with app.store.lock:
        if route == "list":
            data = app.store.data
            visible = [_listed(app, c) for c in _connections(app) if sharing.role_of(data, c, caller.object_id)]
            return _page(app, request, visible)
        assert m is not None
        if route.startswith("admin"):
            return _admin(app, request, caller, route, m)
        conn = _find(app, m.group("api"), m.group("name"))
        role = sharing.role_of(app.store.data, conn, caller.object_id)
        if route == "modify":
            return _modify(app, request, conn, caller, role)
        if not role:
            raise _no_permission(caller, conn)
        if route == "permissions":
            return Response.json(200, {"value": _shares(app, conn)})
        return Response.json(200, _listed(app, conn))


def _listed(app: Any, conn: dict[str, Any]) -> dict[str, Any]:
    """A connection as the lists and the single GET carry it: the permissions it lists are only the Owner's
    (docs/dataverse.md §4.4, §4.8: the Terraform provider's ``get_connections.json``), unless the setting
    ``list_permissions`` is ``all`` (the other reading: every share inline)."""
    # Not a deep copy: the answer is serialised at once, under the store lock, and nothing changes it; only the
    # mappings whose keys change are copied (the connection and its properties), so the stored one is untouched.
    out = dict(conn)
    if str(app.settings.get("list_permissions", "owner")) != "all":
        props = out.setdefault("properties", {})
        perms = props.get("permissions") or []
        out["properties"] = {**props, "permissions": [
            p for p in perms if (p.get("properties") or {}).get("roleName") == "Owner"
        ]}
    return out


def _shares(app: Any, conn: dict[str, Any]) -> list[dict[str, Any]]:
    """The connection's permissions as the permissions route serves them: every share, each principal with
    its type and display name (docs/dataverse.md §4.8)."""
    out = copy.deepcopy(_permissions(conn))
    for p in out:
        principal = p.setdefault("properties", {}).setdefault("principal", {})
        if not principal.get("displayName"):
            principal["displayName"] = _display_name(app, str(principal.get("id", "")), str(principal.get("type")))
    return out


def _display_name(app: Any, pid: str, kind: str) -> str:
    data = app.store.data
    if kind == "Tenant":
        return "Everyone"
    g = sharing.group(data, pid) if pid else None
    if g is not None:
        return str(g.get("displayName") or pid)
    for u in data.get("systemusers") or []:
        if str(u.get("azureactivedirectoryobjectid") or "").lower() == pid.lower():
            return str(u.get("fullname") or u.get("domainname") or pid)
    return pid


# --------------------------------------------------------------------------- lookups


def _connections(app: Any) -> list[dict[str, Any]]:
    conns: list[dict[str, Any]] = app.store.data.get("connections") or []
    return conns


def _api_name(conn: dict[str, Any]) -> str:
    return str(conn.get("properties", {}).get("apiId", "")).rstrip("/").rsplit("/", 1)[-1]


def _permissions(conn: dict[str, Any]) -> list[dict[str, Any]]:
    return sharing.permissions(conn)


def _find(app: Any, api: str, name: str) -> dict[str, Any]:
    for c in _connections(app):
        if str(c.get("name", "")).lower() == name.lower() and _api_name(c).lower() == api.lower():
            return c
    raise HttpError(404, "ConnectionNotFound", f"Could not find connection '{name}' for API '{api}'.")


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
    body: dict[str, Any] = {"value": chunk}  # serialised right away: the rows need no copy
    if start + size < len(rows):
        nxt = dict(query)
        token = base64.urlsafe_b64encode(json.dumps({"o": start + size}).encode()).decode()
        nxt["$skiptoken"] = token.rstrip("=")
        body["nextLink"] = f"{request.origin}{quote(request.path)}?{urlencode(nxt)}"
    return Response.json(200, body)


# --------------------------------------------------------------------------- admin scope


def _is_admin(app: Any, caller: Principal) -> bool:
    """A registered management app (``New-PowerAppManagementApp``), or a user who is a Power Platform
    administrator (the data's ``power_platform_admins``: object ids)."""
    data = app.store.data
    if caller.app_id:
        application = next((a for a in data.get("applications") or []
                            if str(a.get("client_id", "")).lower() == str(caller.app_id).lower()), None)
        return bool(application and application.get("management_app"))
    return caller.object_id.lower() in {str(x).lower() for x in data.get("power_platform_admins") or []}


def _admin(app: Any, request: Request, caller: Principal, route: str, m: re.Match[str]) -> Response:
    """The admin-scope routes (docs/dataverse.md §4.3, §4.8): every connection of the environment, one
    connection's permissions, and sharing it, for a Power Platform admin or a registered management app only
    (else 403 "does not have permission to access the path")."""
    if not _is_admin(app, caller):
        who = (f"The service principal with id '{caller.object_id}' for application {caller.app_id}"
               if caller.app_id else f"The caller with object id '{caller.object_id}'")
        raise HttpError(403, "Forbidden", f"{who} does not have permission to access the path "
                        f"'{request.path}' in tenant {caller.tenant_id}.")
    env = m.group("env")
    env_id = str(app.store.data["environment"].get("environment_id") or "")
    if env.lower() != env_id.lower():
        raise HttpError(404, "EnvironmentNotFound", f"The environment '{env}' could not be found in the "
                        f"tenant '{caller.tenant_id}'.")
    if route == "admin":
        return _page(app, request, [_listed(app, c) for c in _connections(app)])
    conn = _find(app, m.group("api"), m.group("name"))
    if route == "admin_permissions":
        return Response.json(200, {"value": _shares(app, conn)})
    return _modify(app, request, conn, caller, "Owner", admin=True)


# --------------------------------------------------------------------------- sharing


def _modify(
    app: Any, request: Request, conn: dict[str, Any], caller: Principal, role: str | None, *, admin: bool = False
) -> Response:
    """``POST .../modifyPermissions`` with ``{"put": [...], "delete": [{"id": ...}]}``; all or nothing. On the
    admin route (``admin``) the caller acts as the owner would (``Set-AdminPowerAppConnectionRoleAssignment``)."""
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
    new = [_granted(app, entry, conn, role, base_id) for entry in puts]
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


def _granted(app: Any, entry: Any, conn: dict[str, Any], role: str, base_id: str) -> dict[str, Any]:
    """The permission one ``put`` entry grants, checked against what a caller holding ``role`` may grant and
    against whom a connection may be shared with (``_share_target``)."""
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
    if str((conn.get("properties") or {}).get("createdBy", {}).get("id", "")).lower() == pid.lower():
        raise HttpError(400, "CannotModifyOwner", f"The principal '{pid}' owns connection "
                        f"'{conn.get('name')}'; the Owner permission cannot be changed.")
    kind = _share_target(app, principal, pid, str(want), conn)
    return {
        "name": pid,
        "id": f"{base_id}/permissions/{pid}",
        "type": "Microsoft.PowerApps/apis/connections/permissions",
        "properties": {"roleName": want,
                       "principal": {"id": pid, "type": kind,
                                     "tenantId": principal.get("tenantId")},
                       "notifyShareTargetOption": props.get("NotifyShareTargetOption")
                       or props.get("notifyShareTargetOption") or "NotSpecified"},
    }


def _share_target(app: Any, principal: dict[str, Any], pid: str, role: str, conn: dict[str, Any]) -> str:
    """The principal type a share goes to, refused where the platform refuses it (docs/dataverse.md §4.9):
    the whole tenant (its id is the tenant id) only as CanView; a group; a user only when the setting
    ``explicit_share_targets`` allows it: ``service_principals`` (the default: "connections can only be
    explicitly shared with a user representing a service principal") or ``anyone`` (the other reading)."""
    data = app.store.data
    given = str(principal.get("type") or "")
    if given not in ("", *sharing.PRINCIPAL_TYPES):
        raise HttpError(400, "InvalidPrincipalType", f"The principal type '{given}' is not valid; use one of "
                        f"{', '.join(sharing.PRINCIPAL_TYPES)}.")
    if given == "Tenant" or (not given and pid.lower() == sharing.tenant_id(data)):
        if pid.lower() != sharing.tenant_id(data):
            raise HttpError(400, "InvalidTenantPrincipal", f"A tenant share names the tenant itself; '{pid}' "
                            "is not this tenant's id.")
        if role != "CanView":
            raise HttpError(400, "InvalidRoleName", "Sharing with the entire tenant is only supported for "
                            "CanView.")
        return "Tenant"
    if given == "Group" or sharing.group(data, pid) is not None:
        if sharing.group(data, pid) is None:
            raise HttpError(400, "PrincipalNotFound", f"The group '{pid}' was not found in the tenant.")
        return "Group"
    if sharing.is_service_principal(data, pid):
        return "ServicePrincipal" if given == "ServicePrincipal" else (given or "User")
    if str(app.settings.get("explicit_share_targets", "service_principals")) != "anyone":
        raise HttpError(400, "ConnectionSharingNotSupported",
                        f"Connection '{conn.get('name')}' can only be explicitly shared with a user representing "
                        f"a service principal; '{pid}' is not one. Share it with a security group the user "
                        "belongs to, or have the user create their own connection.")
    return given or "User"


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
