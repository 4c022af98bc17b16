"""Writes to ``connectionreferences``: create, update, upsert and delete with the validation and ETag rules
the public docs give.

Sources: the table and its column limits, powerapps-docs
``developer/data-platform/reference/entities/connectionreference.md`` (docs/dataverse.md §1.2: logical name
200, display name 200, connectorid 1000, connectionid 1000, description 2000); create/update/upsert/delete
and ``If-Match``/``If-None-Match``, ``webapi/create-entity-web-api.md``,
``update-delete-entities-using-web-api.md``, ``perform-conditional-operations.md`` (docs/dataverse.md §3.3,
§3.4); ``MSCRM.SolutionUniqueName`` and impersonation, ``compose-http-requests-handle-errors.md`` and
``impersonate-another-user-web-api.md`` (docs/dataverse.md §2.2, §3.10).

UNCONFIRMED rules, each behind a setting (docs/emulator.md): duplicate logical names
(``enforce_duplicate_logical_name``), logical name immutability (``logical_name_immutable``), the status
of deleting a reference that flows use (``delete_in_use_status``) and who must be able to use the
connection written to ``connectionid`` (``enforce_connection_access``).
"""

from __future__ import annotations

import re
from typing import Any

from . import sharing, tables, workflows
from .dvcommon import (
    CONCURRENCY_MISMATCH,
    DUPLICATE_RECORD,
    IN_USE,
    INVALID_ARGUMENT,
    OBJECT_DOES_NOT_EXIST,
    PAYLOAD_ERROR,
    PRIVILEGE_DENIED,
    VALIDATION_LENGTH,
    Ctx,
    bad_request,
    etag_of,
    is_guid,
    not_found,
    read_json_body,
)
from .layers import record_change
from .store import new_guid, utc_now
from .web import HttpError, Response

TABLE = tables.TABLES["connectionreferences"]
ENTITY = "connectionreference"

MAX_LENGTHS = {
    "connectionreferencelogicalname": 200,
    "connectionreferencedisplayname": 200,
    "connectorid": 1000,
    "connectionid": 1000,
    "description": 2000,
}
STRING_COLUMNS = set(MAX_LENGTHS)
INT_COLUMNS = {"statecode", "statuscode", "promptingbehavior"}
WRITABLE = STRING_COLUMNS | INT_COLUMNS | {"connectionreferenceid", "ownerid@odata.bind"}
# Columns the service computes; a client sending them is ignored rather than refused.
READ_ONLY = set(tables.CONNECTIONREFERENCE_COLUMNS) - WRITABLE | {"@odata.etag", "@odata.context"}
REQUIRED_ON_CREATE = ("connectionreferencelogicalname", "connectionreferencedisplayname", "connectorid")
CONNECTOR_RE = re.compile(r"^/providers/Microsoft\.PowerApps/apis/[A-Za-z0-9_.\-]+$", re.IGNORECASE)
_BIND_RE = re.compile(r"^/?systemusers\(([^)]+)\)$")


def _check_body(body: dict[str, Any]) -> dict[str, Any]:
    """Drop read-only columns; refuse unknown ones and wrong types (the documented payload error)."""
    out: dict[str, Any] = {}
    for k, v in body.items():
        if k in READ_ONLY or k.endswith("@odata.type"):
            continue
        if k not in WRITABLE:
            raise HttpError(
                400,
                PAYLOAD_ERROR,
                f"Error identified in Payload provided by the user for Entity :'connectionreferences'. "
                f"The property '{k}' does not exist on type 'Microsoft.Dynamics.CRM.{ENTITY}'. Make "
                "sure to only "
                "use property names that are defined by the type or mark the type as open type.",
            )
        if k in STRING_COLUMNS and v is not None and not isinstance(v, str):
            raise HttpError(400, PAYLOAD_ERROR, f"Cannot convert the literal '{v}' to the expected type 'Edm.String'.")
        if k in INT_COLUMNS and v is not None and (not isinstance(v, int) or isinstance(v, bool)):
            raise HttpError(400, PAYLOAD_ERROR, f"Cannot convert the literal '{v}' to the expected type 'Edm.Int32'.")
        out[k] = v
    for col, limit in MAX_LENGTHS.items():
        v = out.get(col)
        if isinstance(v, str) and len(v) > limit:
            # Documented message shape (0x80044331; docs/dataverse.md §1.2).
            raise HttpError(
                400,
                VALIDATION_LENGTH,
                f"A validation error occurred.  The length of the '{col}' attribute of the '{ENTITY}' entity "
                f"exceeded the maximum allowed length of '{limit}'.",
            )
    if "connectorid" in out and out["connectorid"] is not None and not CONNECTOR_RE.match(out["connectorid"]):
        raise bad_request(
            f"The connectorid '{out['connectorid']}' is not valid: expected /providers/Microsoft.PowerApps/apis/<name>."
        )
    return out


def _owner_from_bind(ctx: Ctx, value: Any) -> dict[str, Any]:
    m = _BIND_RE.match(value) if isinstance(value, str) else None
    if not m or not is_guid(m.group(1)):
        raise bad_request(
            f"The value '{value}' of ownerid@odata.bind is not valid: use systemusers(<systemuserid>).",
            PAYLOAD_ERROR,
        )
    user = ctx.store.user(m.group(1))
    if user is None:
        raise HttpError(400, OBJECT_DOES_NOT_EXIST, f"systemuser With Id = {m.group(1)} Does Not Exist")
    return user


def _duplicate_check(ctx: Ctx, logical_name: str, exclude_id: str | None = None) -> None:
    if not ctx.setting("enforce_duplicate_logical_name"):
        return
    other = ctx.store.reference_by_logical_name(logical_name)
    if other is not None and str(other["connectionreferenceid"]).lower() != (exclude_id or "").lower():
        raise HttpError(412, DUPLICATE_RECORD, "A record with matching key values already exists.")


def connection_usable_by(data: dict[str, Any], conn: dict[str, Any], object_id: str | None) -> bool:
    """Any role on the connection: its creator, a share naming the principal, a share with a group it belongs
    to, or with its tenant (docs/dataverse.md §4.4, §4.5, §4.8; ``sharing.role_of``)."""
    return sharing.role_of(data, conn, object_id) is not None


def _check_connection(ctx: Ctx, connectionid: str, connectorid: str) -> None:
    """The platform validates connectionid: it must exist for the same connector ([3P] PowerDataOps,
    docs/dataverse.md §4.6); and the writer (the effective caller) must own it or have it shared
    (coe-alm-accelerator activate-flows.ps1, docs/dataverse.md §4.6). The exact errors are UNCONFIRMED."""
    conn = ctx.store.connection(connectionid)
    tail = connectorid.rstrip("/").rsplit("/", 1)[-1].lower()
    env_id = ctx.store.environment.get("environment_id")
    if conn is None:
        raise bad_request(f"The connection '{connectionid}' does not exist in environment '{env_id}'.")
    api_tail = str(conn.get("properties", {}).get("apiId", "")).rstrip("/").rsplit("/", 1)[-1].lower()
    if api_tail != tail:
        raise bad_request(
            f"The connection '{connectionid}' is for connector '{api_tail}', not '{tail}' as the "
            "connection reference's connectorid."
        )
    if ctx.setting("enforce_connection_access") and not connection_usable_by(
        ctx.store.data, conn, ctx.user.get("azureactivedirectoryobjectid")
    ):
        raise HttpError(
            403,
            PRIVILEGE_DENIED,
            f"The caller with object id '{ctx.user.get('azureactivedirectoryobjectid')}' does not "
            "have permission for "
            f"connection '{connectionid}' under Api '{tail}'. Connection references can only be bound "
            "to a connection "
            "the caller owns or that is shared with it.",
        )


def _solution_for_write(ctx: Ctx, uniquename: str) -> dict[str, Any]:
    """The target of ``MSCRM.SolutionUniqueName`` and ``AddSolutionComponent``: it must exist and be
    unmanaged (components are added to unmanaged solutions only, docs/dataverse.md §2.2, §2.6). A wrong
    name is an error, never a silent misroute. Codes UNCONFIRMED."""
    sol = ctx.store.solution(uniquename)
    if sol is None:
        raise HttpError(404, OBJECT_DOES_NOT_EXIST, f"solution With UniqueName = {uniquename} Does Not Exist")
    if sol.get("ismanaged"):
        raise bad_request(f"Cannot add components to the managed solution '{uniquename}'.")
    return sol


def add_component(ctx: Ctx, solution: dict[str, Any], objectid: str, componenttype: int) -> dict[str, Any]:
    for row in ctx.store.rows("solutioncomponents"):
        if (
            str(row.get("_solutionid_value")).lower() == str(solution["solutionid"]).lower()
            and str(row.get("objectid")).lower() == objectid.lower()
            and int(row.get("componenttype", -1)) == componenttype
        ):
            return row
    row = {
        "solutioncomponentid": new_guid(),
        "_solutionid_value": solution["solutionid"],
        "objectid": objectid,
        "componenttype": componenttype,
    }
    ctx.store.rows("solutioncomponents").append(row)
    return row


def _entity_id(ctx: Ctx, rid: str) -> str:
    return f"{ctx.base}/connectionreferences({rid})"


def _write_response(ctx: Ctx, row: dict[str, Any], created: bool) -> Response:
    """204 (+ OData-EntityId), or the row with ``Prefer: return=representation``
    (201 on create, 200 on update)."""
    headers = {"OData-EntityId": _entity_id(ctx, row["connectionreferenceid"]), "ETag": etag_of(row)}
    if ctx.prefer.get("return") == "representation":
        q = tables.check_options(ctx, {"$select"})
        select = tables.parse_select(ctx, TABLE, q)
        body = {"@odata.context": tables.context_url(ctx, TABLE, select, entity=True)}
        body.update(tables.present(ctx, TABLE, row, select))
        return Response.json(201 if created else 200, body, headers)
    return Response.empty(204, headers)


def create(ctx: Ctx, body: dict[str, Any], rid: str | None = None) -> Response:
    fields = _check_body(body)
    with ctx.store.lock:
        bind = fields.pop("ownerid@odata.bind", None)
        rid = (fields.pop("connectionreferenceid", None) or rid or new_guid()).lower()
        if not is_guid(rid):
            raise bad_request(f"'{rid}' is not a valid connectionreferenceid.", PAYLOAD_ERROR)
        if ctx.store.reference(rid) is not None:
            raise HttpError(412, DUPLICATE_RECORD, "A record with matching key values already exists.")
        for col in REQUIRED_ON_CREATE:
            if not fields.get(col):
                raise bad_request(f"The '{col}' attribute is required to create a {ENTITY}.")
        _duplicate_check(ctx, fields["connectionreferencelogicalname"])
        owner = _owner_from_bind(ctx, bind) if bind is not None else ctx.user
        if fields.get("connectionid"):
            _check_connection(ctx, fields["connectionid"], fields["connectorid"])
        solution = None
        sol_name = ctx.request.headers.get("MSCRM.SolutionUniqueName")
        if sol_name:
            solution = _solution_for_write(ctx, sol_name)
        now = utc_now()
        row: dict[str, Any] = {
            "connectionreferenceid": rid,
            "connectionreferencelogicalname": fields["connectionreferencelogicalname"],
            "connectionreferencedisplayname": fields["connectionreferencedisplayname"],
            "connectorid": fields["connectorid"],
            "connectionid": fields.get("connectionid") or None,
            "description": fields.get("description"),
            "statecode": fields.get("statecode", 0),
            "statuscode": fields.get("statuscode", 1),
            "ismanaged": False,
            "promptingbehavior": fields.get("promptingbehavior", 0),
            "_ownerid_value": owner["systemuserid"],
            "_createdby_value": ctx.user["systemuserid"],
            "_modifiedby_value": ctx.user["systemuserid"],
            "_createdonbehalfby_value": ctx.on_behalf_of,
            "_modifiedonbehalfby_value": ctx.on_behalf_of,
            "createdon": now,
            "modifiedon": now,
            "versionnumber": ctx.store.next_version(),
        }
        ctx.store.rows("connectionreferences").append(row)
        if solution is not None:
            add_component(ctx, solution, rid, ctx.store.componenttype)
        return _write_response(ctx, row, created=True)


def update(ctx: Ctx, row: dict[str, Any], body: dict[str, Any]) -> Response:
    fields = _check_body(body)
    with ctx.store.lock:
        fields.pop("connectionreferenceid", None)
        bind = fields.pop("ownerid@odata.bind", None)
        for col in REQUIRED_ON_CREATE:
            if col in fields and not fields[col]:
                raise bad_request(f"The '{col}' attribute of a {ENTITY} cannot be empty.")
        new_ln = fields.get("connectionreferencelogicalname")
        if new_ln is not None and new_ln != row["connectionreferencelogicalname"]:
            if ctx.setting("logical_name_immutable"):
                raise bad_request(
                    "The connectionreferencelogicalname of a connection reference cannot be changed "
                    "after it is "
                    "created: create a new reference instead."
                )
            _duplicate_check(ctx, new_ln, exclude_id=row["connectionreferenceid"])
        owner = _owner_from_bind(ctx, bind) if bind is not None else None
        connectorid = str(fields.get("connectorid") or row.get("connectorid") or "")
        if fields.get("connectionid") and fields["connectionid"] != row.get("connectionid"):
            _check_connection(ctx, fields["connectionid"], connectorid)
        if "connectionid" in fields and not fields["connectionid"]:
            fields["connectionid"] = None
        old_connection = row.get("connectionid")
        changed = [k for k, v in fields.items() if row.get(k) != v]
        row.update(fields)
        if owner is not None:
            if str(row.get("_ownerid_value") or "").lower() != str(owner["systemuserid"]).lower():
                changed.append("_ownerid_value")
            row["_ownerid_value"] = owner["systemuserid"]
        # A managed reference takes binding and owner changes; other changes leave an unmanaged layer
        # (docs/dataverse.md §2.6).
        record_change(ctx, "connectionreferences", row, changed)
        if (old_connection or "").lower() != (row.get("connectionid") or "").lower():
            workflows.on_rebind(ctx, row, old_connection)
        row["_modifiedby_value"] = ctx.user["systemuserid"]
        row["_modifiedonbehalfby_value"] = ctx.on_behalf_of
        row["modifiedon"] = utc_now()
        row["versionnumber"] = ctx.store.next_version()
        return _write_response(ctx, row, created=False)


def check_if_match(ctx: Ctx, row: dict[str, Any] | None, key: str) -> None:
    """``If-Match: *`` on a missing row -> 404; an ETag that moved -> 412
    (perform-conditional-operations.md; docs/dataverse.md §3.4)."""
    im = ctx.request.headers.get("If-Match")
    if im is None:
        return
    if row is None:
        raise not_found(ENTITY, key)
    wanted = [t.strip() for t in im.split(",")]
    if "*" in wanted:
        return
    if etag_of(row) not in wanted:
        raise HttpError(
            412,
            CONCURRENCY_MISMATCH,
            "The version of the existing record doesn't match the RowVersion property provided.",
        )


def patch(ctx: Ctx, key: str) -> Response:
    body = read_json_body(ctx.request, "connectionreferences")
    with ctx.store.lock:
        row = tables.find_row(ctx, TABLE, key)
        check_if_match(ctx, row, key)
        inm = ctx.request.headers.get("If-None-Match")
        if inm is not None and inm.strip() == "*" and row is not None:
            raise HttpError(412, DUPLICATE_RECORD, "A record with matching key values already exists.")
        if row is None:
            # Upsert: a PATCH to a missing id without If-Match creates the row
            # (update-delete-entities-using-web-api.md; docs/dataverse.md §3.3).
            if "connectionreferenceid" in body and str(body["connectionreferenceid"]).lower() != key.lower():
                raise bad_request("The connectionreferenceid in the body does not match the key in the URL.")
            return create(ctx, body, rid=key)
        return update(ctx, row, body)


def post(ctx: Ctx) -> Response:
    return create(ctx, read_json_body(ctx.request, "connectionreferences"))


def delete(ctx: Ctx, key: str) -> Response:
    with ctx.store.lock:
        row = tables.find_row(ctx, TABLE, key)
        if row is None:
            raise not_found(ENTITY, key)
        check_if_match(ctx, row, key)
        if row.get("ismanaged"):
            managed = [s for s in ctx.store.solutions_of(str(row["connectionreferenceid"])) if s.get("ismanaged")]
            raise workflows.managed_refusal(ENTITY, str(row["connectionreferenceid"]), managed)
        users = workflows.dependents_of(ctx.store, row["connectionreferencelogicalname"])
        if users:
            # Message as seen at import/delete; the HTTP status is UNCONFIRMED (docs/dataverse.md §2.4, §2.7).
            raise HttpError(
                int(ctx.setting("delete_in_use_status")),
                IN_USE,
                f"The connectionreference({row['connectionreferenceid']}) component cannot be deleted "
                "because it is "
                f"referenced by {len(users)} other components. For a list of referenced components, use the "
                "RetrieveDependenciesForDeleteRequest.",
            )
        ctx.store.rows("connectionreferences").remove(row)
        rid = str(row["connectionreferenceid"]).lower()
        comps = ctx.store.rows("solutioncomponents")
        comps[:] = [c for c in comps if str(c.get("objectid", "")).lower() != rid]
    return Response.empty(204)


__all__ = ["INVALID_ARGUMENT", "connection_usable_by", "create", "delete", "patch", "post", "update"]
