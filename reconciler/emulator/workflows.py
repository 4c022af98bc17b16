"""Cloud flows (``workflows``, category 5): state and owner, the references and child flows a flow uses,
switching flows on (with the platform's checks), the asynchronous update a rebind sends to the flows,
deleting flows, and what depends on a connection reference (flows, canvas apps, bots).

Sources: docs/dataverse.md §5.1 (statecode 0 Draft/Off, 1 Activated, 2 Suspended; activate = statecode 1 /
statuscode 2; "Cannot delete an active workflow definition."); docs/dataverse.md §5.2 (``clientdata`` names
the references); docs/dataverse.md §5.3 (the enabling user must own or have shared every connection:
``ConnectionAuthorizationFailed``); docs/dataverse.md §5.5 (a child flow is an action of type ``Workflow``
naming the child's ``workflowid`` in ``inputs.host.workflowReferenceName``); docs/dataverse.md §5.6 (a parent
cannot be switched on before its children: ``ChildFlowNeverPublished``); docs/dataverse.md §5.7 (a rebind
reaches the flows asynchronously; the emulator shows each flow's update as an ``asyncoperations`` row
regarding the flow, UNCONFIRMED); docs/dataverse.md §2.5 and §2.7 (canvas apps and bots depend on references
too; ``RetrieveDependenciesForDelete``); docs/dataverse.md §2.6 (a managed flow cannot be deleted; a name
change leaves an unmanaged layer); docs/dataverse.md §5.9 (a definition is edited by a PATCH of
``clientdata``; whether a flow that is on must be switched off first is UNCONFIRMED: setting
``flow_edit_while_on``); docs/dataverse.md §5.10 (a definition naming a reference that does not exist is
refused with ``WorkflowRunActionInputsInvalidProperty``).

Emulator-only keys of a workflow row (never served): ``applied_connections`` (logical name -> the
connection the flow uses while a rebind is on its way; absent = the reference's current one),
``published_once`` (the flow was on at least once), ``update_failure`` (a message: the next
asynchronous update of this flow fails with it; fault injection).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from . import tables
from .dvcommon import (
    FLOW_CLIENT_ERROR,
    INVALID_ARGUMENT,
    Ctx,
    bad_request,
    dumps,
    not_found,
    read_json_body,
    stable_guid,
)
from .store import new_guid, utc_now
from .web import HttpError, Response

if TYPE_CHECKING:
    from .store import EnvironmentStore

TABLE = tables.TABLES["workflows"]
WORKFLOW_COMPONENT_TYPE = 29
CANVAS_APP_COMPONENT_TYPE = 300  # solutioncomponent componenttype "Canvas App" (docs/dataverse.md §2.5)
STATE_STATUS = {0: 1, 1: 2, 2: 3}  # statecode -> default statuscode (Draft/Activated/Suspended)
VALID_STATUS = {0: {1}, 1: {2}, 2: {3}}
PATCHABLE = {"statecode", "statuscode", "name", "description", "ownerid@odata.bind", "clientdata"}
# asyncoperation state and status (Learn: asyncoperation table; docs/dataverse.md §5.7).
JOB_READY, JOB_COMPLETED = 0, 3
JOB_WAITING, JOB_SUCCEEDED, JOB_FAILED = 0, 30, 31
JOB_NAME = "Update of the connection reference '{ln}' in this flow"  # the name is UNCONFIRMED


# --------------------------------------------------------------------------- what a flow uses


def _doc(clientdata: str | None) -> dict[str, Any]:
    if not clientdata:
        return {}
    try:
        doc = json.loads(clientdata)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def references_of(clientdata: str | None) -> list[str]:
    """The connection reference logical names a flow's clientdata uses
    (``properties.connectionReferences.*.connection.connectionReferenceLogicalName``, docs/dataverse.md §5.2)."""
    doc = _doc(clientdata)
    refs = doc.get("properties", {}).get("connectionReferences", {})
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


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def children_of(clientdata: str | None) -> list[str]:
    """The ``workflowid`` of every child flow the definition runs: actions of type ``Workflow`` (the "Run a
    Child Flow" action) name it in ``inputs.host.workflowReferenceName``, at any depth (scopes,
    conditions, loops; docs/dataverse.md §5.5)."""
    definition = _doc(clientdata).get("properties", {}).get("definition")
    out: list[str] = []
    for node in _walk(definition):
        if str(node.get("type", "")).lower() != "workflow":
            continue
        inputs = node.get("inputs")
        host = inputs.get("host") if isinstance(inputs, dict) else None
        ref = host.get("workflowReferenceName") if isinstance(host, dict) else None
        if isinstance(ref, str) and ref and ref.lower() not in out:
            out.append(ref.lower())
    return out


def flows_using(store: EnvironmentStore, logical_name: str) -> list[dict[str, Any]]:
    key = logical_name.lower()
    return [
        wf for wf in store.rows("workflows") if any(ln.lower() == key for ln in references_of(wf.get("clientdata")))
    ]


def _users_of(store: EnvironmentStore, table: str, logical_name: str) -> list[dict[str, Any]]:
    key = logical_name.lower()
    return [r for r in store.rows(table)
            if any(str(n).lower() == key for n in (r.get("connection_references") or []))]


def dependents_of(store: EnvironmentStore, logical_name: str) -> list[tuple[int, dict[str, Any]]]:
    """(component type, row) of everything that uses a reference: flows, canvas apps, bots (docs/dataverse.md
    §2.5)."""
    out: list[tuple[int, dict[str, Any]]] = [(WORKFLOW_COMPONENT_TYPE, wf) for wf in flows_using(store, logical_name)]
    out += [(CANVAS_APP_COMPONENT_TYPE, app) for app in _users_of(store, "canvasapps", logical_name)]
    out += [(store.bot_componenttype, bot) for bot in _users_of(store, "bots", logical_name)]
    return out


def applied_connection(store: EnvironmentStore, wf: dict[str, Any], logical_name: str) -> str | None:
    """The connection the flow uses for a reference now: the one an unfinished rebind left it with, else
    the reference's own."""
    applied = wf.get("applied_connections") or {}
    key = logical_name.lower()
    if key in applied:
        value = applied[key]
        return str(value) if value else None
    ref = store.reference_by_logical_name(logical_name)
    return str(ref["connectionid"]) if ref and ref.get("connectionid") else None


# --------------------------------------------------------------------------- rebinds reach flows asynchronously


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def on_rebind(ctx: Ctx, ref: dict[str, Any], old_connection: str | None) -> None:
    """A reference's ``connectionid`` changed: every flow that uses it gets an asynchronous update (one
    ``asyncoperations`` row regarding the flow); until it is done the flow keeps the old connection.
    With ``rebind_propagation_seconds`` 0 the update is done before the PATCH answers."""
    ln = str(ref["connectionreferencelogicalname"])
    delay = float(ctx.setting("rebind_propagation_seconds"))
    now = time.time()
    for wf in flows_using(ctx.store, ln):
        applied = wf.setdefault("applied_connections", {})
        applied.setdefault(ln.lower(), old_connection)
        ctx.store.rows("asyncoperations").append({
            "asyncoperationid": new_guid(),
            "name": JOB_NAME.format(ln=ln),
            "operationtype": None,
            "statecode": JOB_READY,
            "statuscode": JOB_WAITING,
            "_regardingobjectid_value": wf["workflowid"],
            "message": None,
            "friendlymessage": None,
            "createdon": _iso(now),
            "startedon": None,
            "completedon": None,
            "due_epoch": now + delay,
            "workflowid": wf["workflowid"],
            "reference": ln,
            "connectionid": ref.get("connectionid"),
        })
    if delay <= 0:
        run_due_updates(ctx.store, now)


def run_due_updates(store: EnvironmentStore, now: float | None = None) -> bool:
    """Finish every asynchronous flow update whose time has come; True when any changed. A flow with an
    ``update_failure`` keeps its old connection and its job fails with that message."""
    now = time.time() if now is None else now
    changed = False
    with store.lock:
        for job in store.rows("asyncoperations"):
            if job.get("statecode") == JOB_COMPLETED or float(job.get("due_epoch") or 0) > now:
                continue
            changed = True
            wf = store.workflow(str(job.get("workflowid") or ""))
            job["startedon"] = job["completedon"] = _iso(now)
            job["statecode"] = JOB_COMPLETED
            failure = wf.get("update_failure") if wf else "the flow no longer exists"
            if failure:
                job["statuscode"] = JOB_FAILED
                job["message"] = job["friendlymessage"] = str(failure)
                continue
            job["statuscode"] = JOB_SUCCEEDED
            assert wf is not None
            applied = wf.get("applied_connections") or {}
            key = str(job.get("reference", "")).lower()
            ref = store.reference_by_logical_name(key)
            pending = any(
                j is not job and j.get("statecode") != JOB_COMPLETED and str(j.get("reference", "")).lower() == key
                and str(j.get("workflowid", "")).lower() == str(wf["workflowid"]).lower()
                for j in store.rows("asyncoperations")
            )
            if ref is not None and not pending:
                applied.pop(key, None)  # in step with the reference again
            else:
                applied[key] = job.get("connectionid")
            if applied:
                wf["applied_connections"] = applied
            else:
                wf.pop("applied_connections", None)
    return changed


# --------------------------------------------------------------------------- switching a flow on


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
    """Every reference the flow uses must be bound (as far as the flow knows: an unfinished rebind leaves
    it the old connection) to an existing, Connected connection that the effective caller owns or has
    shared (docs/dataverse.md §5.3); every child flow it runs must be on (docs/dataverse.md §5.6)."""
    from .connrefs import connection_usable_by

    oid = ctx.user.get("azureactivedirectoryobjectid")
    for ln in references_of(wf.get("clientdata")):
        ref = ctx.store.reference_by_logical_name(ln)
        if ref is None:
            raise _activation_error(ctx, f"(connection reference '{ln}' not found)", "unknown")
        api = str(ref.get("connectorid", "")).rstrip("/").rsplit("/", 1)[-1]
        cid = applied_connection(ctx.store, wf, ln)
        if not cid:
            raise _activation_error(ctx, f"(connection reference '{ln}' is not bound to a connection)", api)
        conn = ctx.store.connection(cid)
        full_id = f"{ref.get('connectorid')}/connections/{cid}"
        if conn is None or not connection_usable_by(ctx.store.data, conn, oid):
            raise _activation_error(ctx, full_id, api)
        statuses = conn.get("properties", {}).get("statuses") or []
        if statuses and statuses[0].get("status") != "Connected":
            raise _activation_error(ctx, full_id, api)
    _children_check(ctx, wf)


def _children_check(ctx: Ctx, wf: dict[str, Any]) -> None:
    rule = str(ctx.setting("child_flow_activation"))
    details = []
    for child_id in children_of(wf.get("clientdata")):
        child = ctx.store.workflow(child_id)
        ready = child is not None and (
            child.get("statecode") == 1 if rule == "on" else bool(child.get("published_once") or
                                                                    child.get("statecode") == 1)
        )
        if not ready:
            details.append({
                "code": "ChildFlowNeverPublished",
                "message": f"The workflow with id '{child_id}' cannot be used as a child workflow because it has "
                           "never been published. Child workflows need to be published at least once before "
                           "they can be included in a published parent workflow.",
            })
    if not details:
        return
    inner: dict[str, Any]
    if len(details) == 1:
        inner = {"error": details[0]}
    else:
        codes = ",".join("BadRequest" for _ in details)
        inner = {"error": {"code": "MultipleErrorsOccurred",
                           "message": f"Multiple errors occurred: '{codes}'. Please see details.",
                           "details": details}}
    raise HttpError(400, FLOW_CLIENT_ERROR,
                    f'Flow client error returned with status code "BadRequest" and details "{dumps(inner)}".')


# --------------------------------------------------------------------------- editing the definition


def _flow_error(code: str, message: str) -> HttpError:
    """A refusal of the flow service, wrapped as Dataverse wraps them (docs/dataverse.md §5.6, §5.10)."""
    inner = dumps({"error": {"code": "InvalidOpenApiFlow",
                             "message": f"Flow save failed with code '{code}' and message '{message}'."}})
    return HttpError(400, FLOW_CLIENT_ERROR,
                     f'Flow client error returned with status code "BadRequest" and details "{inner}".')


def _host_uses(definition: Any) -> Iterator[tuple[str, str]]:
    """(operation name, ``inputs.host.connectionName``) of every trigger and action at any depth that calls
    a connector through the definition's connection references (docs/dataverse.md §5.2)."""
    for node in _walk(definition):
        for section in ("triggers", "actions"):
            ops = node.get(section)
            if not isinstance(ops, dict):
                continue
            for op_name, op in ops.items():
                inputs = op.get("inputs") if isinstance(op, dict) else None
                host = inputs.get("host") if isinstance(inputs, dict) else None
                key = host.get("connectionName") if isinstance(host, dict) else None
                if isinstance(key, str) and key:
                    yield str(op_name), key


def _invalid_property(name: str, operation: str) -> HttpError:
    return _flow_error("WorkflowRunActionInputsInvalidProperty",
                       f"The API connection reference '{name}' could not be found for the operation '{operation}'.")


def check_definition(ctx: Ctx, clientdata: Any) -> None:
    """A new ``clientdata`` as the flow service checks it when a definition is saved (docs/dataverse.md
    §5.10): a JSON object with a definition; every operation's ``host.connectionName`` names an entry of
    ``connectionReferences``; every entry names a connection reference that exists, of the entry's connector.
    The wording of the refusals other than the missing reference is UNCONFIRMED."""
    if not isinstance(clientdata, str):
        raise bad_request("clientdata must be a string holding the flow's definition as JSON.")
    try:
        doc = json.loads(clientdata)
    except ValueError as exc:
        raise _flow_error("InvalidTemplate", f"The flow definition is not valid JSON: {exc}.") from exc
    props = doc.get("properties") if isinstance(doc, dict) else None
    definition = props.get("definition") if isinstance(props, dict) else None
    entries = props.get("connectionReferences", {}) if isinstance(props, dict) else None
    if not isinstance(definition, dict) or not isinstance(entries, dict):
        raise _flow_error("InvalidTemplate", "The flow definition must be an object with properties.definition "
                                             "and properties.connectionReferences.")
    uses = list(_host_uses(definition))
    for operation, key in uses:
        if key not in entries:
            raise _invalid_property(key, operation)
    for key, entry in entries.items():
        conn = entry.get("connection") if isinstance(entry, dict) else None
        ln = conn.get("connectionReferenceLogicalName") if isinstance(conn, dict) else None
        if not isinstance(ln, str) or not ln:
            continue  # a connection bound directly (the older shape): nothing to look up
        operation = next((op for op, k in uses if k == key), key)
        ref = ctx.store.reference_by_logical_name(ln)
        if ref is None:
            raise _invalid_property(ln, operation)
        api = entry.get("api", {}).get("name") if isinstance(entry.get("api"), dict) else None
        ref_api = str(ref.get("connectorid", "")).rstrip("/").rsplit("/", 1)[-1]
        if isinstance(api, str) and api and api.lower() != ref_api.lower():
            raise _flow_error("WorkflowRunActionInputsInvalidProperty",
                              f"The API connection reference '{ln}' is for the API '{ref_api}', not '{api}' "
                              f"as the operation '{operation}' expects.")


def edit_check(ctx: Ctx, wf: dict[str, Any], clientdata: Any) -> None:
    """Whether this PATCH may replace the flow's definition: with ``flow_edit_while_on`` ``refuse`` (the
    default) a flow that is on must be switched off first, as a published classic workflow must
    (docs/dataverse.md §5.9, UNCONFIRMED for cloud flows; ``allow``: it is edited in place); then the
    definition is checked (``check_definition``)."""
    if wf.get("statecode") == 1 and str(ctx.setting("flow_edit_while_on")) != "allow":
        raise bad_request("Cannot update a published workflow definition.")
    check_definition(ctx, clientdata)


def after_edit(wf: dict[str, Any]) -> None:
    """A new definition: the connections an unfinished rebind left the flow are kept only for references it
    still uses."""
    applied = wf.get("applied_connections")
    if not applied:
        return
    still = {ln.lower() for ln in references_of(wf.get("clientdata"))}
    kept = {k: v for k, v in applied.items() if k in still}
    if kept:
        wf["applied_connections"] = kept
    else:
        wf.pop("applied_connections", None)


# --------------------------------------------------------------------------- writes


def patch(ctx: Ctx, key: str) -> Response:
    from .connrefs import _owner_from_bind, check_if_match
    from .layers import record_change

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
        owner = _owner_from_bind(ctx, body["ownerid@odata.bind"]) if "ownerid@odata.bind" in body else None
        if "clientdata" in body and body["clientdata"] != wf.get("clientdata"):
            edit_check(ctx, wf, body["clientdata"])
        if state == 1 and wf.get("statecode") != 1:
            activation_check(ctx, {**wf, "clientdata": body.get("clientdata", wf.get("clientdata"))})
        renamed = [k for k in ("name", "description", "clientdata") if k in body and body[k] != wf.get(k)]
        wf.update({k: v for k, v in body.items() if k in ("name", "description", "clientdata")})
        if "clientdata" in renamed:
            after_edit(wf)
        record_change(ctx, "workflows", wf, renamed)
        wf["statecode"] = state
        wf["statuscode"] = status
        if state == 1:
            wf["published_once"] = True
        if owner is not None:
            wf["_ownerid_value"] = owner["systemuserid"]
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


def managed_refusal(entity: str, row_id: str, solutions: list[dict[str, Any]]) -> HttpError:
    """Deleting a managed component is refused: only uninstalling (or upgrading) its managed solution
    removes it (docs/dataverse.md §2.6; code and wording UNCONFIRMED)."""
    names = ", ".join(str(s.get("uniquename")) for s in solutions) or "a managed solution"
    return bad_request(
        f"The {entity}({row_id}) component is managed (part of {names}) and cannot be deleted. Remove it "
        "from the solution in development and import the new version, or uninstall the managed solution."
    )


def delete(ctx: Ctx, key: str) -> Response:
    from .connrefs import check_if_match

    with ctx.store.lock:
        wf = tables.find_row(ctx, TABLE, key)
        if wf is None:
            raise not_found("workflow", key)
        check_if_match(ctx, wf, key)
        if wf.get("ismanaged"):
            managed = [s for s in ctx.store.solutions_of(str(wf["workflowid"])) if s.get("ismanaged")]
            raise managed_refusal("workflow", str(wf["workflowid"]), managed)
        if wf.get("statecode") == 1:
            # docs/dataverse.md §5.1; the error code is UNCONFIRMED.
            raise bad_request("Cannot delete an active workflow definition.")
        ctx.store.rows("workflows").remove(wf)
        wid = str(wf["workflowid"]).lower()
        comps = ctx.store.rows("solutioncomponents")
        comps[:] = [c for c in comps if str(c.get("objectid", "")).lower() != wid]
    return Response.empty(204)


# --------------------------------------------------------------------------- dependencies


def _row_id(ctype: int, row: dict[str, Any]) -> str:
    if ctype == WORKFLOW_COMPONENT_TYPE:
        return str(row["workflowid"])
    if ctype == CANVAS_APP_COMPONENT_TYPE:
        return str(row["canvasappid"])
    return str(row["botid"])


def dependent_components(ctx: Ctx, object_id: str, component_type: int) -> Response:
    """``RetrieveDependentComponents`` / ``RetrieveDependenciesForDelete(ObjectId=...,ComponentType=...)``: for a
    connection reference, one dependency row per flow (29), canvas app (300) and bot (the org's bot type)
    that uses it (docs/dataverse.md §2.4, §2.5, §2.7)."""
    rows: list[dict[str, Any]] = []
    with ctx.store.lock:
        if component_type == ctx.store.componenttype:
            ref = ctx.store.reference(object_id)
            if ref is None:
                raise not_found("connectionreference", object_id)
            for ctype, row in dependents_of(ctx.store, ref["connectionreferencelogicalname"]):
                rid = _row_id(ctype, row)
                rows.append(
                    {
                        "@odata.type": "#Microsoft.Dynamics.CRM.dependency",
                        "dependencyid": stable_guid("dependency", rid.lower(), object_id.lower()),
                        "dependencytype": 2,  # Published
                        "dependentcomponentobjectid": rid,
                        "dependentcomponenttype": ctype,
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
