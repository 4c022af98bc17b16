"""Reads of the emulated tables: which columns each entity set has, how a stored row is served, and
collection queries with ``$select``/``$filter``/``$orderby``/``$top``/``$count`` and server-driven paging.

Paging follows powerapps-docs ``developer/data-platform/webapi/query/page-results.md``
(docs/dataverse.md §3.5): ``Prefer: odata.maxpagesize=N`` (at most 5000; the default page is 5000 rows), a
``Preference-Applied`` header, and an opaque ``@odata.nextLink`` carrying ``$skiptoken`` that the
client follows unchanged. ``$skip`` is not supported and answers 400. Rows carry
``@odata.etag`` = ``W/"<versionnumber>"``; lookups are ``_x_value`` columns.
"""

from __future__ import annotations

import base64
import functools
import json
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from . import odata
from .dvcommon import QUERY_ERROR, Ctx, etag_of, is_guid, not_found, stable_guid
from .web import HttpError, Response

_T = TypeVar("_T")

MAX_PAGE = 5000


@dataclass(frozen=True)
class Table:
    entity_set: str
    logical_name: str
    key: str
    columns: tuple[str, ...]
    hidden: tuple[str, ...] = ()  # emulator-only keys of the stored rows, never served
    rows: Callable[[Ctx], list[dict[str, Any]]] | None = None  # derived tables

    @functools.cached_property
    def column_set(self) -> frozenset[str]:
        return frozenset(self.columns)

    def stored(self, ctx: Ctx) -> list[dict[str, Any]]:
        if self.rows is not None:
            return self.rows(ctx)
        return ctx.store.rows(self.entity_set)


CONNECTIONREFERENCE_COLUMNS = (
    "connectionreferenceid",
    "connectionreferencelogicalname",
    "connectionreferencedisplayname",
    "connectorid",
    "connectionid",
    "description",
    "statecode",
    "statuscode",
    "ismanaged",
    "promptingbehavior",
    "iscustomizable",
    "componentstate",
    "solutionid",
    "_customconnectorid_value",
    "_ownerid_value",
    "_owninguser_value",
    "_owningbusinessunit_value",
    "_createdby_value",
    "_modifiedby_value",
    "_createdonbehalfby_value",
    "_modifiedonbehalfby_value",
    "createdon",
    "modifiedon",
    "versionnumber",
)
WORKFLOW_COLUMNS = (
    "workflowid",
    "workflowidunique",
    "name",
    "description",
    "category",
    "type",
    "primaryentity",
    "statecode",
    "statuscode",
    "ismanaged",
    "clientdata",
    "_ownerid_value",
    "_createdby_value",
    "_modifiedby_value",
    "_createdonbehalfby_value",
    "_modifiedonbehalfby_value",
    "createdon",
    "modifiedon",
    "versionnumber",
)
CANVASAPP_COLUMNS = (
    "canvasappid",
    "name",
    "displayname",
    "ismanaged",
    "_ownerid_value",
    "createdon",
    "modifiedon",
    "versionnumber",
)
BOT_COLUMNS = (
    "botid",
    "name",
    "schemaname",
    "statecode",
    "statuscode",
    "ismanaged",
    "_ownerid_value",
    "createdon",
    "modifiedon",
    "versionnumber",
)
ASYNCOPERATION_COLUMNS = (
    "asyncoperationid",
    "name",
    "operationtype",
    "statecode",
    "statuscode",
    "_regardingobjectid_value",
    "message",
    "friendlymessage",
    "createdon",
    "startedon",
    "completedon",
)
COMPONENTLAYER_COLUMNS = (
    "msdyn_componentlayerid",
    "msdyn_name",
    "msdyn_componentid",
    "msdyn_solutioncomponentname",
    "msdyn_solutionname",
    "msdyn_publishername",
    "msdyn_order",
    "msdyn_changes",
    "msdyn_componentjson",
    "msdyn_children",
    "msdyn_overwritetime",
)
SYSTEMUSER_COLUMNS = (
    "systemuserid",
    "azureactivedirectoryobjectid",
    "domainname",
    "fullname",
    "applicationid",
    "isdisabled",
    "internalemailaddress",
    "_businessunitid_value",
    "accessmode",
)
SOLUTION_COLUMNS = (
    "solutionid",
    "uniquename",
    "friendlyname",
    "ismanaged",
    "isvisible",
    "version",
    "_publisherid_value",
)
SOLUTIONCOMPONENT_COLUMNS = (
    "solutioncomponentid",
    "_solutionid_value",
    "objectid",
    "componenttype",
    "rootcomponentbehavior",
    "ismetadata",
)
DEFINITION_COLUMNS = (
    "solutioncomponentdefinitionid",
    "name",
    "primaryentityname",
    "solutioncomponenttype",
    "objecttypecode",
)


def _definitions(ctx: Ctx) -> list[dict[str, Any]]:
    """``solutioncomponentdefinitions``: the connection reference's component type is per organization
    (docs/dataverse.md §2.1), taken from the data's ``environment.connectionreference_componenttype``."""
    rows = []
    for name, ctype in (
        ("connectionreference", ctx.store.componenttype),
        ("bot", ctx.store.bot_componenttype),
        ("environmentvariabledefinition", 380),
        ("environmentvariablevalue", 381),
    ):
        rows.append(
            {
                "solutioncomponentdefinitionid": stable_guid("definition", name),
                "name": name,
                "primaryentityname": name,
                "solutioncomponenttype": ctype,
                "objecttypecode": ctype,
            }
        )
    return rows


def _component_layers(ctx: Ctx) -> list[dict[str, Any]]:
    from .layers import component_layers, queried_component  # layers build on this module's presentation

    # Only the layers of the component the query names are built (the $filter still decides what is served):
    # building every component's layers for each of a thousand batched queries would be cubic.
    return component_layers(ctx, only=queried_component(ctx.request.query.get("$filter", "")))


TABLES: dict[str, Table] = {
    t.entity_set: t
    for t in (
        Table(
            "connectionreferences",
            "connectionreference",
            "connectionreferenceid",
            CONNECTIONREFERENCE_COLUMNS,
            hidden=("active_layer",),
        ),
        Table("workflows", "workflow", "workflowid", WORKFLOW_COLUMNS,
              hidden=("applied_connections", "published_once", "update_failure")),
        Table("canvasapps", "canvasapp", "canvasappid", CANVASAPP_COLUMNS, hidden=("connection_references",)),
        Table("bots", "bot", "botid", BOT_COLUMNS, hidden=("connection_references",)),
        Table("asyncoperations", "asyncoperation", "asyncoperationid", ASYNCOPERATION_COLUMNS,
              hidden=("due_epoch", "workflowid", "reference", "connectionid")),
        Table("msdyn_componentlayers", "msdyn_componentlayer", "msdyn_componentlayerid", COMPONENTLAYER_COLUMNS,
              rows=lambda ctx: _component_layers(ctx)),
        Table("systemusers", "systemuser", "systemuserid", SYSTEMUSER_COLUMNS, hidden=("privileges",)),
        Table("solutions", "solution", "solutionid", SOLUTION_COLUMNS, hidden=("publisher_prefix",)),
        Table("solutioncomponents", "solutioncomponent", "solutioncomponentid", SOLUTIONCOMPONENT_COLUMNS),
        Table(
            "solutioncomponentdefinitions",
            "solutioncomponentdefinition",
            "solutioncomponentdefinitionid",
            DEFINITION_COLUMNS,
            rows=_definitions,
        ),
    )
}


# --------------------------------------------------------------------------- presentation


_Derive = Callable[[Ctx, dict[str, Any]], Any]


def _iscustomizable(ctx: Ctx, row: dict[str, Any]) -> Any:
    return {"Value": True, "CanBeChanged": True, "ManagedPropertyLogicalName": "iscustomizableanddeletable"}


#: Columns the real service computes that the data file does not store, per entity set: column -> its value
#: for a row. A stored value that is not null wins (``present``).
_DERIVED: dict[str, dict[str, _Derive]] = {
    "systemusers": {
        "_businessunitid_value": lambda ctx, row: ctx.store.environment.get("business_unit_id"),
        "accessmode": lambda ctx, row: 4 if row.get("applicationid") else 0,  # 4 = Non-interactive
        "internalemailaddress": lambda ctx, row: None if row.get("applicationid") else row.get("domainname"),
    },
    "solutions": {
        "_publisherid_value": lambda ctx, row: stable_guid("publisher", str(row.get("publisher_prefix", ""))),
        "isvisible": lambda ctx, row: True,
    },
    "connectionreferences": {
        "_owninguser_value": lambda ctx, row: row.get("_ownerid_value"),
        "_owningbusinessunit_value": lambda ctx, row: ctx.store.environment.get("business_unit_id"),
        "iscustomizable": _iscustomizable,
        "componentstate": lambda ctx, row: 0,
    },
    "workflows": {
        "workflowidunique": lambda ctx, row: stable_guid("workflowidunique", str(row.get("workflowid"))),
    },
}


def _derived(ctx: Ctx, table: Table, row: dict[str, Any]) -> dict[str, Any]:
    """Columns the real service computes that the data file does not store."""
    return {name: derive(ctx, row) for name, derive in _DERIVED.get(table.entity_set, {}).items()}


def served_getter(ctx: Ctx, table: Table, name: str) -> Callable[[dict[str, Any]], Any]:
    """How :func:`present` serves column ``name`` of a stored row, as a function of the row: a hidden key
    never, a computed column where the row stores none (null), otherwise the stored value. Filters and
    ordering read rows through it, so they see exactly the served values without presenting whole rows."""
    derive = _DERIVED.get(table.entity_set, {}).get(name)
    if name in table.hidden:
        if derive is None:
            return lambda row: None

        def hidden_derived(row: dict[str, Any]) -> Any:
            return derive(ctx, row) if row.get(name) is None else None

        return hidden_derived
    if derive is None:
        return operator.methodcaller("get", name)  # row.get(name)

    def stored_or_derived(row: dict[str, Any]) -> Any:
        value = row.get(name)
        return derive(ctx, row) if value is None else value

    return stored_or_derived


def columns_of(ctx: Ctx, table: Table) -> frozenset[str]:
    return table.column_set


def present(
    ctx: Ctx,
    table: Table,
    row: dict[str, Any],
    select: list[str] | None = None,
    expand: dict[str, list[str] | None] | None = None,
) -> dict[str, Any]:
    """A stored row as the Web API serves it: ``@odata.etag`` first, then the (selected) columns."""
    return presenter(ctx, table, select, expand)(row)


def presenter(
    ctx: Ctx,
    table: Table,
    select: list[str] | None = None,
    expand: dict[str, list[str] | None] | None = None,
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """:func:`present` for many rows: what to serve is worked out once (which columns, how each is read),
    then each row is only read."""
    if select is None:
        columns: list[tuple[str, Callable[[dict[str, Any]], Any] | None]] | None = None
    else:
        # Only the selected columns (each known: parse_select checked them), then the primary key, which
        # always comes back (in its place when selected); each valued as the whole row would serve it: a
        # stored column is the row's value (None: read it with row.get), the others through served_getter.
        derivable = _DERIVED.get(table.entity_set, {})
        columns = [
            (c, served_getter(ctx, table, c) if c in table.hidden or c in derivable else None)
            for c in dict.fromkeys((*select, table.key))
        ]
    navigations = list((expand or {}).items())

    def present_row(row: dict[str, Any]) -> dict[str, Any]:
        stored = row.get
        out: dict[str, Any] = {"@odata.etag": etag_of(row)} if "versionnumber" in row else {}
        if columns is None:
            out.update(_full(ctx, table, row))
        else:
            for c, get in columns:
                out[c] = stored(c) if get is None else get(row)
        for nav, nav_select in navigations:
            out[nav] = _expand(ctx, table, row, nav, nav_select)
        return out

    return present_row


def _full(ctx: Ctx, table: Table, row: dict[str, Any]) -> dict[str, Any]:
    """Every column of ``row`` as served: the table's columns in order (null when not stored), then any other
    stored key that is not hidden; a computed column where the row stores none."""
    full: dict[str, Any] = dict.fromkeys(table.columns)
    full.update({k: v for k, v in row.items() if k not in table.hidden})
    full.update({k: v for k, v in _derived(ctx, table, row).items() if row.get(k) is None})
    return full


def _expand(ctx: Ctx, table: Table, row: dict[str, Any], nav: str, select: list[str] | None) -> dict[str, Any]:
    # Only solutions(publisherid) is expandable: it is how a client reads the publisher prefix.
    prefix = str(row.get("publisher_prefix") or "")
    pub = {
        "publisherid": stable_guid("publisher", prefix),
        "customizationprefix": prefix,
        "uniquename": f"{prefix}publisher",
        "friendlyname": f"{prefix} publisher",
    }
    if select is None:
        return pub
    return {k: pub.get(k) for k in [*select, "publisherid"]}


def context_url(ctx: Ctx, table: Table, select: list[str] | None, entity: bool = False) -> str:
    cols = f"({','.join(select)})" if select else ""
    return f"{ctx.base}/$metadata#{table.entity_set}{cols}" + ("/$entity" if entity else "")


# --------------------------------------------------------------------------- query options

ALLOWED_OPTIONS = {"$select", "$filter", "$orderby", "$top", "$count", "$skiptoken", "$expand"}


def _query_error(message: str) -> HttpError:
    return HttpError(400, QUERY_ERROR, message)


def check_options(ctx: Ctx, allowed: set[str]) -> dict[str, str]:
    """The request's query options; 400 for ``$skip`` and any option the emulator does not support."""
    q = ctx.request.query
    for name in q:
        low = name.lower()
        if low == "$skip":
            raise _query_error("The query parameter $skip is not supported")
        if name.startswith("$") and name not in allowed:
            raise _query_error(f"The query parameter {name} is not supported")
    return q


def _unknown_property(table: Table, name: str) -> HttpError:
    return _query_error(
        f"Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.{table.logical_name}'."
    )


def parse_select(ctx: Ctx, table: Table, q: dict[str, str]) -> list[str] | None:
    if "$select" not in q:
        return None
    try:
        cols = odata.parse_select(q["$select"])
    except odata.ODataError as e:
        raise _query_error(str(e)) from None
    known = columns_of(ctx, table)
    for c in cols:
        if c not in known:
            raise _unknown_property(table, c)
    return cols


_EXPAND_RE = re.compile(r"^\s*(\w+)\s*(?:\(\s*\$select=([\w,\s]+)\))?\s*$")


def parse_expand(ctx: Ctx, table: Table, q: dict[str, str]) -> dict[str, list[str] | None] | None:
    if "$expand" not in q:
        return None
    m = _EXPAND_RE.match(q["$expand"])
    if not m or table.entity_set != "solutions" or m.group(1) != "publisherid":
        raise _query_error(f"The $expand '{q['$expand']}' is not supported by the emulator on {table.entity_set}.")
    sel = [c.strip() for c in m.group(2).split(",")] if m.group(2) else None
    return {"publisherid": sel}


def _page_size(ctx: Ctx) -> tuple[int, bool]:
    """(page size, whether odata.maxpagesize was requested and applied)."""
    raw = ctx.prefer.get("odata.maxpagesize")
    default = int(ctx.setting("page_size_default"))
    if raw is None:
        return min(default, MAX_PAGE), False
    try:
        n = int(raw)
    except ValueError:
        return min(default, MAX_PAGE), False
    if n <= 0:
        return min(default, MAX_PAGE), False
    return min(n, MAX_PAGE), True


def _encode_skiptoken(offset: int, page: int, last_key: str) -> str:
    # Shaped like the real paging cookie; the content is the emulator's own and opaque to clients.
    inner = base64.urlsafe_b64encode(json.dumps({"o": offset, "k": last_key}).encode()).decode().rstrip("=")
    return f'<cookie pagenumber="{page}" pagingcookie="{inner}" istracking="False" />'


_SKIP_RE = re.compile(r'^<cookie pagenumber="(\d+)" pagingcookie="([A-Za-z0-9_-]+)" istracking="False" />$')


def _decode_skiptoken(token: str) -> int:
    m = _SKIP_RE.match(token)
    if not m:
        raise _query_error("The $skiptoken is not valid: follow @odata.nextLink unchanged.")
    inner = m.group(2)
    try:
        doc = json.loads(base64.urlsafe_b64decode(inner + "=" * (-len(inner) % 4)))
        return int(doc["o"])
    except (ValueError, KeyError, TypeError):
        raise _query_error("The $skiptoken is not valid: follow @odata.nextLink unchanged.") from None


def query(ctx: Ctx, table: Table, rows: list[dict[str, Any]] | None = None) -> Response:
    """GET on an entity set: filter, order, top, page; the documented collection shape."""
    q = check_options(ctx, ALLOWED_OPTIONS)
    select = parse_select(ctx, table, q)
    expand = parse_expand(ctx, table, q)
    with ctx.store.lock:
        source = rows if rows is not None else table.stored(ctx)
        node = _filter_node(ctx, table, q)
        keys = _order_keys(ctx, table, q)
        # Filter and order the stored rows on the values of the columns they name as served (served_getter):
        # the filter compiled once for the query, and only the rows of the page presented whole.
        getters: dict[str, Callable[[dict[str, Any]], Any]] = {}

        def getter(name: str) -> Callable[[dict[str, Any]], Any]:
            if name not in getters:
                getters[name] = served_getter(ctx, table, name)
            return getters[name]

        matched = list(source) if node is None else list(filter(odata.compile_filter(node, getter), source))
        # Stable order for paging: the requested keys, then the primary key (as Dataverse pages by it).
        matched = odata.order_by(matched, [(getter(name), desc) for name, desc in [*keys, (table.key, False)]])
        total = len(matched)
        top = _parsed(odata.parse_top, q["$top"]) if "$top" in q else None
        size, applied = _page_size(ctx)
        page, next_link = _page(ctx, table, q, matched, top, size, getter(table.key))
        headers = {"Preference-Applied": f"odata.maxpagesize={size}"} if applied else {}
        body: dict[str, Any] = {"@odata.context": context_url(ctx, table, select)}
        if q.get("$count", "").lower() == "true":
            body["@odata.count"] = min(total, MAX_PAGE)
        present_row = presenter(ctx, table, select, expand)
        body["value"] = [present_row(r) for r in page]
        if next_link:
            body["@odata.nextLink"] = next_link
    return Response.json(200, body, headers)


def _parsed(parse: Callable[[str], _T], text: str) -> _T:
    """``parse(text)``, an OData syntax error answered as Dataverse's query error."""
    try:
        return parse(text)
    except odata.ODataError as e:
        raise _query_error(str(e)) from None


def _filter_node(ctx: Ctx, table: Table, q: dict[str, str]) -> odata.Node | None:
    """``$filter`` parsed (None without one), after checking the properties it names."""
    if "$filter" not in q:
        if table.entity_set == "msdyn_componentlayers":
            from .layers import check_query

            check_query(ctx, ())
        return None
    node = _parsed(odata.parse_filter, q["$filter"])
    for p in node.properties():
        if p not in columns_of(ctx, table):
            raise _unknown_property(table, p)
    if table.entity_set == "msdyn_componentlayers":
        from .layers import check_query

        check_query(ctx, node.properties())
    return node


def _order_keys(ctx: Ctx, table: Table, q: dict[str, str]) -> list[tuple[str, bool]]:
    """``$orderby`` as (property, descending) pairs, after checking the properties it names."""
    if "$orderby" not in q:
        return []
    keys = _parsed(odata.parse_orderby, q["$orderby"])
    for name, _ in keys:
        if name not in columns_of(ctx, table):
            raise _unknown_property(table, name)
    return keys


def _page(ctx: Ctx, table: Table, q: dict[str, str], served: list[dict[str, Any]], top: int | None,
          size: int, key_of: Callable[[dict[str, Any]], Any]) -> tuple[list[dict[str, Any]], str | None]:
    """The rows of this page and the next page's link (None on the last page, and with ``$top``); ``key_of``
    reads a row's primary key as served."""
    offset = _decode_skiptoken(q["$skiptoken"]) if "$skiptoken" in q else 0
    if top is not None:
        # $top limits the result; no nextLink is returned beyond it.
        return served[: min(top, MAX_PAGE)], None
    page = served[offset : offset + size]
    if offset + size >= len(served):
        return page, None
    last = key_of(page[-1]) if page else ""
    token = _encode_skiptoken(offset + size, offset // size + 2, str(last))
    params = [(k, v) for k, v in q.items() if k != "$skiptoken"] + [("$skiptoken", token)]
    return page, f"{ctx.base}/{table.entity_set}?" + urlencode(params, quote_via=quote, safe="$,'()")


def get_one(ctx: Ctx, table: Table, key: str) -> Response:
    """GET ``set(<guid>)``; a conditional ``If-None-Match: <etag>`` -> 304
    (perform-conditional-operations.md)."""
    q = check_options(ctx, {"$select", "$expand"})
    select = parse_select(ctx, table, q)
    expand = parse_expand(ctx, table, q)
    row = find_row(ctx, table, key)
    if row is None:
        raise not_found(table.logical_name, key)
    inm = ctx.request.headers.get("If-None-Match")
    if (
        inm
        and inm.strip() not in ("null", "*")
        and "versionnumber" in row
        and inm.strip() == etag_of(row)
        and not expand
    ):
        return Response.empty(304, {"ETag": etag_of(row)})
    body = {"@odata.context": context_url(ctx, table, select, entity=True)}
    body.update(present(ctx, table, row, select, expand))
    headers = {"ETag": etag_of(row)} if "versionnumber" in row else {}
    return Response.json(200, body, headers)


def find_row(ctx: Ctx, table: Table, key: str) -> dict[str, Any] | None:
    if not is_guid(key):
        raise _query_error(f"Bad Request - Error in query syntax: '{key}' is not a valid key for {table.entity_set}.")
    key_l = key.lower()
    for row in table.stored(ctx):
        if str(row.get(table.key, "")).lower() == key_l:
            return row
    return None
