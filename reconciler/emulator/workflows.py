"""Cloud flows (``workflows``, category 5): turning them on and off with the activation check, deleting
them, and the dependencies between flows and connection references derived from ``clientdata``.

Sources (docs/dataverse.md §5.1-§5.3, §2.4): power-automate-docs ``articles/manage-flows-with-code.md`` (statecode 0
Draft/Off, 1 Activated, 2 Suspended; activate = statecode 1 / statuscode 2; "Cannot delete an active
workflow definition."); ``powerapps-docs maker/data-platform/create-connection-reference.md`` ("When a
flow is enabled, the enabling user needs to own all the connections" or have them shared); the
``ConnectionAuthorizationFailed`` wording from [3P] coe-starter-kit issues #4990/#2911;
``RetrieveDependentComponents`` (Learn reference; dependents of a connection reference are workflows,
componenttype 29).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from . import tables
from .dvcommon import INVALID_ARGUMENT, Ctx, bad_request, dumps, not_found, read_json_body, stable_guid
from .store import utc_now
from .web import HttpError, Response

if TYPE_CHECKING:
    from .store import EnvironmentStore

TABLE = tables.TABLES["workflows"]
WORKFLOW_COMPONENT_TYPE = 29
STATE_STATUS = {0: 1, 1: 2, 2: 3}  # statecode -> default statuscode (Draft/Activated/Suspended)
VALID_STATUS = {0: {1}, 1: {2}, 2: {3}}
PATCHABLE = {"statecode", "statuscode", "name", "description"}


def references_of(clientdata: str | None) -> list[str]:
    """The connection reference logical names a flow's clientdata uses
    (``properties.connectionReferences.*.connection.connectionReferenceLogicalName``, docs/dataverse.md §5.2)."""
    if not clientdata:
        return []
    try:
        doc = json.loads(clientdata)
    except ValueError:
        return []
    refs = doc.get("properties", {}).get("connectionReferences", {}) if isinstance(doc, dict) else {}
    out: list[str] = []
    if isinstance(refs, dict):
        for entry in refs.values():
            if not isinstance(entry, dict):
                continue
            conn = entry.get("connection")
            ln = conn.get("connectionReferenceLogicalName") if isinstance(conn, dict) else None
            if isinstance(ln, str) and ln and ln.lower() not in {x.lower() for x in out}:
                out.append(ln)
    return out


def flows_using(store: EnvironmentStore, logical_name: str) -> list[dict[str, Any]]:
    key = logical_name.lower()
    return [
        wf for wf in store.rows("workflows") if any(ln.lower() == key for ln in references_of(wf.get("clientdata")))
    ]


def _activation_error(ctx: Ctx, connection_id: str, api: str) -> HttpError:
    oid = ctx.user.get("azureactivedirectoryobjectid")
    detail = (
        f"The caller object id is '{oid}'. Connection '{connection_id}' to '{api}' cannot be used to "
        "activate this "
        "flow, either because this is not a valid connection or because it is not a connection you "
        "have access "
        "permission for. Either replace the connection with a valid connection you can access or have the "
        "connection owner activate the flow, so the connection is shared with you in the context of "
        "this flow."
    )
    inner = dumps({"error": {"code": "ConnectionAuthorizationFailed", "message": detail}})
    return HttpError(
        403,
        "ConnectionAuthorizationFailed",
        f'Flow client error returned with status code "Forbidden" and details "{inner}".',
    )


def activation_check(ctx: Ctx, wf: dict[str, Any]) -> None:
    """Every reference the flow uses must be bound to an existing, healthy connection that the
    effective caller owns or has shared (create-connection-reference.md; docs/dataverse.md §5.3)."""
    from .connrefs import connection_usable_by

    oid = ctx.user.get("azureactivedirectoryobjectid")
    for ln in references_of(wf.get("clientdata")):
        ref = ctx.store.reference_by_logical_name(ln)
        if ref is None:
            raise _activation_error(ctx, f"(connection reference '{ln}' not found)", "unknown")
        api = str(ref.get("connectorid", "")).rstrip("/").rsplit("/", 1)[-1]
        cid = ref.get("connectionid")
        if not cid:
            raise _activation_error(ctx, f"(connection reference '{ln}' is not bound to a connection)", api)
        conn = ctx.store.connection(cid)
        full_id = f"{ref.get('connectorid')}/connections/{cid}"
        if conn is None or not connection_usable_by(conn, oid):
            raise _activation_error(ctx, full_id, api)
        statuses = conn.get("properties", {}).get("statuses") or []
        if statuses and statuses[0].get("status") != "Connected":
            raise _activation_error(ctx, full_id, api)


def patch(ctx: Ctx, key: str) -> Response:
    from .connrefs import check_if_match

    body = read_json_body(ctx.request, "workflows")
    with ctx.store.lock:
        wf = tables.find_row(ctx, TABLE, key)
        if wf is None:
            raise not_found("workflow", key)
        check_if_match(ctx, wf, key)
        unknown = set(body) - PATCHABLE
        if unknown:
            raise bad_request(
                f"The emulator only updates {', '.join(sorted(PATCHABLE))} on workflows, not "
                f"{', '.join(sorted(unknown))}.",
                INVALID_ARGUMENT,
            )
        state = body.get("statecode", wf.get("statecode"))
        if state not in STATE_STATUS:
            raise bad_request(f"{state} is not a valid statecode for workflow (0 Draft, 1 Activated, 2 Suspended).")
        status = body.get("statuscode", STATE_STATUS[state] if "statecode" in body else wf.get("statuscode"))
        if status not in VALID_STATUS[state]:
            raise bad_request(f"{status} is not a valid status code for state code {state} on workflow.")
        if state == 1 and wf.get("statecode") != 1:
            activation_check(ctx, wf)
        wf.update({k: v for k, v in body.items() if k in ("name", "description")})
        wf["statecode"] = state
        wf["statuscode"] = status
        wf["_modifiedby_value"] = ctx.user["systemuserid"]
        wf["_modifiedonbehalfby_value"] = ctx.on_behalf_of
        wf["modifiedon"] = utc_now()
        wf["versionnumber"] = ctx.store.next_version()
        headers = {"OData-EntityId": f"{ctx.base}/workflows({wf['workflowid']})"}
        if ctx.prefer.get("return") == "representation":
            body_out = {"@odata.context": tables.context_url(ctx, TABLE, None, entity=True)}
            body_out.update(tables.present(ctx, TABLE, wf))
            return Response.json(200, body_out, headers)
        return Response.empty(204, headers)


def delete(ctx: Ctx, key: str) -> Response:
    from .connrefs import check_if_match

    with ctx.store.lock:
        wf = tables.find_row(ctx, TABLE, key)
        if wf is None:
            raise not_found("workflow", key)
        check_if_match(ctx, wf, key)
        if wf.get("statecode") == 1:
            # docs/dataverse.md §5.1; the error code is UNCONFIRMED.
            raise bad_request("Cannot delete an active workflow definition.")
        ctx.store.rows("workflows").remove(wf)
        wid = str(wf["workflowid"]).lower()
        comps = ctx.store.rows("solutioncomponents")
        comps[:] = [c for c in comps if str(c.get("objectid", "")).lower() != wid]
    return Response.empty(204)


def dependent_components(ctx: Ctx, object_id: str, component_type: int) -> Response:
    """``RetrieveDependentComponents(ObjectId=...,ComponentType=...)``: for a connection reference, one
    dependency row per flow whose clientdata uses it (dependentcomponenttype 29)."""
    rows: list[dict[str, Any]] = []
    with ctx.store.lock:
        if component_type == ctx.store.componenttype:
            ref = ctx.store.reference(object_id)
            if ref is None:
                raise not_found("connectionreference", object_id)
            for wf in flows_using(ctx.store, ref["connectionreferencelogicalname"]):
                rows.append(
                    {
                        "@odata.type": "#Microsoft.Dynamics.CRM.dependency",
                        "dependencyid": stable_guid("dependency", str(wf["workflowid"]), object_id.lower()),
                        "dependencytype": 2,  # Published
                        "dependentcomponentobjectid": wf["workflowid"],
                        "dependentcomponenttype": WORKFLOW_COMPONENT_TYPE,
                        "requiredcomponentobjectid": ref["connectionreferenceid"],
                        "requiredcomponenttype": component_type,
                    }
                )
    return Response.json(
        200,
        {
            "@odata.context": f"{ctx.base}/$metadata#Collection(Microsoft.Dynamics.CRM.dependency)",
            "value": rows,
        },
    )
