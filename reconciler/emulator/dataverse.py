"""The Dataverse Web API routes under ``/api/data/v9.2/``: authentication, the effective caller
(impersonation), and dispatch to the tables, functions and actions the emulator serves.

Sources: bearer tokens per environment audience (docs/dataverse.md §6.1); application users are
``systemusers`` rows with ``applicationid`` (docs/dataverse.md §6.4); impersonation with ``CallerObjectId``
(Entra object id) or ``MSCRMCallerID`` (systemuserid), which needs ``prvActOnBehalfOfAnotherUser``
(``webapi/impersonate-another-user-web-api.md``, docs/dataverse.md §3.10; refusal =
CannotActOnBehalfOfAnotherUser ``0x8004A110``, ``reference/web-service-error-codes.md``); ``WhoAmI``
(docs/dataverse.md §3.9); ``AddSolutionComponent`` (docs/dataverse.md §2.2); ``RetrieveDependentComponents``
(docs/dataverse.md §2.4); ``$batch`` (docs/dataverse.md §3.7, in ``batch.py``).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import connrefs, jwt, tables, workflows
from .dvcommon import (
    API_ROOT,
    CANNOT_ACT_ON_BEHALF,
    NOT_MEMBER_OF_ORG,
    PAYLOAD_ERROR,
    PRIV_IMPERSONATE,
    QUERY_ERROR,
    SEGMENT_NOT_FOUND,
    USER_DISABLED,
    Ctx,
    bad_request,
    is_guid,
    not_found,
    read_json_body,
)
from .web import Headers, HttpError, Principal, Request, Response

if TYPE_CHECKING:
    from .app import EmulatorApp
    from .store import EnvironmentStore

_SEGMENT_RE = re.compile(r"^/([A-Za-z_$][A-Za-z0-9_.]*)(?:\((.*)\))?/?$")


# --------------------------------------------------------------------------- who is calling


def audiences(app: EmulatorApp, request: Request) -> list[str]:
    """A Dataverse token is for the environment URL; over loopback the request's own origin also counts."""
    return [str(app.store.environment["url"]), request.origin]


def resolve_caller(store: EnvironmentStore, principal: Principal) -> dict[str, Any]:
    """The systemusers row of the token's identity: by Entra object id, or for an application by
    ``applicationid`` = the token's ``appid``. None -> 403 (a new org answers 403 until the application
    user exists, docs/dataverse.md §6.4; code UNCONFIRMED)."""
    user = store.user_by_object_id(principal.object_id)
    if user is None and principal.app_id:
        user = store.user_by_app_id(principal.app_id)
    if user is None:
        raise HttpError(403, NOT_MEMBER_OF_ORG, "The user is not a member of the organization.")
    if user.get("isdisabled"):
        raise HttpError(
            403,
            USER_DISABLED,
            f"The user with SystemUserId={user['systemuserid']} is disabled. Disabled users cannot access the system.",
        )
    return user


def resolve_effective(store: EnvironmentStore, caller: dict[str, Any], headers: Headers) -> dict[str, Any]:
    """Apply ``CallerObjectId`` / ``MSCRMCallerID``: the caller needs prvActOnBehalfOfAnotherUser, the
    target must exist and be enabled."""
    oid = headers.get("CallerObjectId")
    legacy = headers.get("MSCRMCallerID")
    if not oid and not legacy:
        return caller
    if PRIV_IMPERSONATE not in (caller.get("privileges") or []):
        raise HttpError(
            403,
            CANNOT_ACT_ON_BEHALF,
            f"User does not have the privilege to act on behalf another user. Principal user "
            f"(Id={caller['systemuserid']}) is missing {PRIV_IMPERSONATE} privilege.",
        )
    if oid:
        target = store.user_by_object_id(oid.strip())
        what = f"Azure AD object id {oid.strip()}"
    else:
        target = store.user(str(legacy).strip())
        what = f"SystemUserId {str(legacy).strip()}"
    if target is None:
        raise HttpError(403, NOT_MEMBER_OF_ORG, f"The user with {what} is not a member of the organization.")
    if target.get("isdisabled"):
        raise HttpError(
            403,
            USER_DISABLED,
            f"The user with SystemUserId={target['systemuserid']} is disabled and cannot be impersonated.",
        )
    return target


def authenticate(app: EmulatorApp, request: Request) -> Ctx:
    principal = jwt.verify_bearer(
        app.store.data["signing_key_pem"], request.headers.get("Authorization"), audiences(app, request)
    )
    request.state["caller_object_id"] = principal.object_id
    with app.store.lock:
        caller = resolve_caller(app.store, principal)
        user = resolve_effective(app.store, caller, request.headers)
    request.state["effective_user_id"] = user["systemuserid"]
    return Ctx(app, request, principal, caller, user)


# --------------------------------------------------------------------------- dispatch


def handle(app: EmulatorApp, request: Request) -> Response:
    """Entry point from the app for every path under ``/api/data/v9.2``."""
    rel = request.path[len(API_ROOT) :]
    ctx = authenticate(app, request)
    if rel in ("/$batch", "/$batch/"):
        if request.method != "POST":
            raise _method_not_allowed(request.method)
        from .batch import handle as handle_batch

        return handle_batch(ctx)
    return route(ctx, rel)


def _method_not_allowed(method: str) -> HttpError:
    return HttpError(405, QUERY_ERROR, f"The requested resource does not support http method '{method}'.")


_USER_PRIVILEGE_RE = re.compile(
    r"^/systemusers\(([^)]*)\)/(?:Microsoft\.Dynamics\.CRM\.)?RetrieveUserPrivilegeByPrivilegeName\((.*)\)/?$"
)


def route(ctx: Ctx, rel: str) -> Response:
    """Dispatch one (possibly inner ``$batch``) request whose path is relative to the service root."""
    pm = _USER_PRIVILEGE_RE.match(rel)
    if pm:
        if ctx.request.method.upper() != "GET":
            raise _method_not_allowed(ctx.request.method.upper())
        return user_privilege(ctx, pm.group(1), pm.group(2))
    m = _SEGMENT_RE.match(rel)
    if not m:
        raise HttpError(404, SEGMENT_NOT_FOUND, f"Resource not found for the segment '{rel.strip('/')}'.")
    name, key = m.group(1), m.group(2)
    method = ctx.request.method.upper()
    operation = _OPERATIONS.get(name)
    if operation is not None:
        return operation(ctx, method, key)
    table = tables.TABLES.get(name)
    if table is None:
        raise HttpError(404, SEGMENT_NOT_FOUND, f"Resource not found for the segment '{name}'.")
    if key is None:
        if method == "GET":
            return tables.query(ctx, table)
        write = _COLLECTION_WRITES.get((name, method))
        if write is None:
            raise _method_not_allowed(method)
        return write(ctx)
    key = _row_key(table, name, key)
    if method == "GET":
        return tables.get_one(ctx, table, key)
    row_write = _ROW_WRITES.get((name, method))
    if row_write is None:
        raise _method_not_allowed(method)
    return row_write(ctx, key)


def _row_key(table: tables.Table, name: str, key: str) -> str:
    """The row id in ``table(key)`` or ``table(keyname=key)``; 400 for anything but a GUID."""
    key = key.strip()
    if key.startswith(f"{table.key}="):
        key = key.split("=", 1)[1]
    if not is_guid(key):
        raise bad_request(
            f"Bad Request - Error in query syntax: '{key}' is not a valid key for {name} "
            "(alternate keys are not "
            "defined for this table).",
            QUERY_ERROR,
        )
    return key


def _call_who_am_i(ctx: Ctx, method: str, key: str | None) -> Response:
    if method != "GET" or key not in (None, ""):
        raise _method_not_allowed(method)
    return who_am_i(ctx)


def _call_dependencies(ctx: Ctx, method: str, key: str | None) -> Response:
    if method != "GET":
        raise _method_not_allowed(method)
    params = _function_params(ctx, key or "")
    return workflows.dependent_components(ctx, params["ObjectId"], params["ComponentType"])


def _call_add_solution_component(ctx: Ctx, method: str, key: str | None) -> Response:
    if method != "POST" or key is not None:
        raise _method_not_allowed(method)
    return add_solution_component(ctx)


# Functions and actions, by name: each checks its own method and parameters.
_OPERATIONS: dict[str, Callable[[Ctx, str, str | None], Response]] = {
    "WhoAmI": _call_who_am_i,
    "RetrieveDependentComponents": _call_dependencies,
    "RetrieveDependenciesForDelete": _call_dependencies,
    "AddSolutionComponent": _call_add_solution_component,
}
# The writes each table takes (any other method: 405), on the collection and on one row.
_COLLECTION_WRITES: dict[tuple[str, str], Callable[[Ctx], Response]] = {
    ("connectionreferences", "POST"): connrefs.post,
}
_ROW_WRITES: dict[tuple[str, str], Callable[[Ctx, str], Response]] = {
    ("connectionreferences", "PATCH"): connrefs.patch,
    ("connectionreferences", "DELETE"): connrefs.delete,
    ("workflows", "PATCH"): workflows.patch,
    ("workflows", "DELETE"): workflows.delete,
}


def _function_params(ctx: Ctx, text: str) -> dict[str, Any]:
    """``ObjectId=<guid>,ComponentType=10150`` (values may be ``@p`` aliases given in the query string)."""
    out: dict[str, Any] = {}
    q = ctx.request.query
    for part in filter(None, (p.strip() for p in text.split(","))):
        k, _, v = part.partition("=")
        v = v.strip()
        if v.startswith("@"):
            v = q.get(v, "")
        out[k.strip()] = v.strip("'")
    if not is_guid(out.get("ObjectId")):
        raise bad_request("ObjectId must be a Guid.", QUERY_ERROR)
    try:
        out["ComponentType"] = int(out.get("ComponentType", ""))
    except ValueError:
        raise bad_request("ComponentType must be an integer.", QUERY_ERROR) from None
    out["ObjectId"] = out["ObjectId"].lower()
    return out


def user_privilege(ctx: Ctx, user_id: str, args: str) -> Response:
    """``systemusers(<id>)/Microsoft.Dynamics.CRM.RetrieveUserPrivilegeByPrivilegeName(PrivilegeName=...)``:
    the RetrieveUserPrivilegeByPrivilegeNameResponse complex type, ``{"RolePrivileges": [RolePrivilege]}``,
    empty when the user lacks the privilege (webapi/reference/retrieveuserprivilegebyprivilegenameresponse).
    Privileges come from the user's ``privileges`` list in the data file; depth is reported as Global."""
    user_id = user_id.strip().lower()
    if not is_guid(user_id):
        raise bad_request(f"'{user_id}' is not a valid key for systemusers.", QUERY_ERROR)
    _, _, value = args.partition("=")
    value = value.strip()
    if value.startswith("@"):
        value = ctx.request.query.get(value, "")
    name = value.strip().strip("'").replace("''", "'")
    user = ctx.store.user(user_id)
    if user is None:
        raise HttpError(404, "0x80040217", f"systemuser With Id = {user_id} Does Not Exist")
    held = [p for p in user.get("privileges") or [] if str(p).lower() == name.lower()]
    env = ctx.store.environment
    return Response.json(200, {
        "@odata.context": f"{ctx.base}/$metadata#Microsoft.Dynamics.CRM.RetrieveUserPrivilegeByPrivilegeNameResponse",
        "RolePrivileges": [
            {"Depth": "Global", "PrivilegeName": p, "BusinessUnitId": env.get("business_unit_id"),
             "PrivilegeId": str(uuid.uuid5(uuid.NAMESPACE_URL, "privilege:" + p.lower()))}
            for p in held
        ],
    })


def who_am_i(ctx: Ctx) -> Response:
    env = ctx.store.environment
    return Response.json(
        200,
        {
            "@odata.context": f"{ctx.base}/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse",
            "BusinessUnitId": env.get("business_unit_id"),
            "UserId": ctx.user["systemuserid"],
            "OrganizationId": env.get("organization_id"),
        },
    )


def add_solution_component(ctx: Ctx) -> Response:
    """``AddSolutionComponent``: the component must exist; returns ``{"id": <solutioncomponentid>}``."""
    body = read_json_body(ctx.request, "AddSolutionComponent")
    allowed = {
        "ComponentId",
        "ComponentType",
        "SolutionUniqueName",
        "AddRequiredComponents",
        "DoNotIncludeSubcomponents",
        "IncludedComponentSettingsValues",
    }
    unknown = set(body) - allowed
    if unknown:
        raise bad_request(f"AddSolutionComponent has no parameter(s) {', '.join(sorted(unknown))}.", PAYLOAD_ERROR)
    for p in ("ComponentId", "ComponentType", "SolutionUniqueName", "AddRequiredComponents"):
        if p not in body:
            raise bad_request(f"AddSolutionComponent requires the parameter {p}.", PAYLOAD_ERROR)
    cid = body["ComponentId"]
    ctype = body["ComponentType"]
    if not is_guid(cid) or not isinstance(ctype, int):
        raise bad_request("ComponentId must be a Guid and ComponentType an integer.", PAYLOAD_ERROR)
    with ctx.store.lock:
        solution = connrefs._solution_for_write(ctx, str(body["SolutionUniqueName"]))
        if ctype == ctx.store.componenttype and ctx.store.reference(cid) is None:
            raise not_found("connectionreference", cid)
        if ctype == workflows.WORKFLOW_COMPONENT_TYPE and ctx.store.find("workflows", "workflowid", cid) is None:
            raise not_found("workflow", cid)
        row = connrefs.add_component(ctx, solution, cid.lower(), ctype)
    return Response.json(
        200,
        {
            "@odata.context": f"{ctx.base}/$metadata#Microsoft.Dynamics.CRM.AddSolutionComponentResponse",
            "id": row["solutioncomponentid"],
        },
    )
