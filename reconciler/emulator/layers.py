"""Solution layers of components: the managed layer a managed solution brings, and the unmanaged
("Active") layer a change made in the environment leaves on top of it, served as the
``msdyn_componentlayers`` table.

Sources (docs/dataverse.md §2.6): the solution-layers page (an unmanaged layer over the managed layers;
"All ... unmanaged customizations exist at this layer"); the ``msdyn_componentlayer`` table reference
(``msdyn_componentid``, ``msdyn_solutioncomponentname``, ``msdyn_solutionname``, ``msdyn_order``,
``msdyn_changes``, ``msdyn_componentjson``); public tools that read the unmanaged layer as the one whose
``msdyn_solutionname`` is ``Active``. UNCONFIRMED, each behind a setting: whether the table answers a
query that does not name one component (``componentlayers_require_component``), and whether a change of
``connectionid`` or owner on a managed reference leaves a layer too (``binding_leaves_layer``). The
shape of ``msdyn_changes`` (``{"Attributes": [{"Key", "Value"}]}``) follows ``msdyn_componentjson`` as
public tools parse it; it is not documented.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .dvcommon import QUERY_ERROR, stable_guid
from .web import HttpError

if TYPE_CHECKING:
    from .dvcommon import Ctx

ACTIVE = "Active"  # the unmanaged layer's solution name
#: Columns whose change on a managed reference is a customization (always leaves a layer).
CUSTOMIZING_COLUMNS = ("connectionreferencedisplayname", "description")
#: Columns that bind a managed reference; a layer only with ``binding_leaves_layer``.
BINDING_COLUMNS = ("connectionid", "_ownerid_value")
#: The ``msdyn_solutioncomponentname`` of each table the emulator layers (UNCONFIRMED names: the table's
#: logical name).
COMPONENT_NAMES = {"connectionreferences": "connectionreference", "workflows": "workflow"}
_KEYS = {"connectionreferences": "connectionreferenceid", "workflows": "workflowid"}
_NAMES = {"connectionreferences": "connectionreferencedisplayname", "workflows": "name"}


def record_change(ctx: Ctx, table: str, row: dict[str, Any], changed: Iterable[str]) -> None:
    """A write changed ``changed`` columns of ``row``: on a managed component, remember the new values in
    its unmanaged layer (the row's hidden ``active_layer``)."""
    if not row.get("ismanaged"):
        return
    layered = set(CUSTOMIZING_COLUMNS) | (set(BINDING_COLUMNS) if ctx.setting("binding_leaves_layer") else set())
    if table == "workflows":
        layered = {"name", "description", "clientdata"}
    layer: dict[str, Any] = row.setdefault("active_layer", {})
    for col in changed:
        if col in layered:
            layer[col] = row.get(col)
    if not layer:
        row.pop("active_layer", None)


def _json_attributes(values: dict[str, Any]) -> str:
    return json.dumps({"Attributes": [{"Key": k, "Value": v} for k, v in sorted(values.items())]},
                      separators=(",", ":"))


def _layer(ctx: Ctx, table: str, row: dict[str, Any], solution: str, publisher: str | None, order: int,
           changes: dict[str, Any] | None) -> dict[str, Any]:
    key = str(row[_KEYS[table]]).lower()
    component = {k: v for k, v in row.items() if not k.startswith("@") and k not in ("active_layer",
                                                                                     "applied_connections")}
    return {
        "msdyn_componentlayerid": stable_guid("layer", table, key, solution),
        "msdyn_name": row.get(_NAMES[table]),
        "msdyn_componentid": key,
        "msdyn_solutioncomponentname": COMPONENT_NAMES[table],
        "msdyn_solutionname": solution,
        "msdyn_publishername": publisher,
        "msdyn_order": order,
        "msdyn_changes": _json_attributes(changes) if changes is not None else None,
        "msdyn_componentjson": _json_attributes(component),
        "msdyn_children": None,
        "msdyn_overwritetime": None,
    }


_COMPONENT_ID = re.compile(r"\bmsdyn_componentid\s+eq\s+'?([0-9A-Fa-f-]{36})'?", re.I)


def queried_component(filter_text: str) -> str | None:
    """The component id a ``$filter`` pins with ``msdyn_componentid eq <id>`` (lower case), or None (also
    when it has an ``or`` or a ``not``, which may let other components through)."""
    if re.search(r"\b(or|not)\b", filter_text, re.I):
        return None
    m = _COMPONENT_ID.search(filter_text)
    return m.group(1).lower() if m else None


def component_layers(ctx: Ctx, only: str | None = None) -> list[dict[str, Any]]:
    """Every layer of every connection reference and flow (of the one component ``only`` names, when
    given): an unmanaged component has one ``Active`` layer; a managed one its managed solution's layer
    (order 1), and the ``Active`` layer on top when it was changed in the environment."""
    managed_solutions = {str(s.get("solutionid", "")).lower(): s for s in ctx.store.rows("solutions")
                         if s.get("ismanaged")}
    managed_of: dict[str, dict[str, Any]] = {}
    for c in ctx.store.rows("solutioncomponents"):
        sol = managed_solutions.get(str(c.get("_solutionid_value", "")).lower())
        if sol is not None:
            managed_of.setdefault(str(c.get("objectid", "")).lower(), sol)
    rows: list[dict[str, Any]] = []
    for table in ("connectionreferences", "workflows"):
        for row in ctx.store.rows(table):
            key = str(row[_KEYS[table]]).lower()
            if only is not None and key != only:
                continue
            if not row.get("ismanaged"):
                rows.append(_layer(ctx, table, row, ACTIVE, None, 1, None))
                continue
            sol = managed_of.get(key)
            name = str(sol["uniquename"]) if sol else "System"
            publisher = f"{sol.get('publisher_prefix')}publisher" if sol else None
            rows.append(_layer(ctx, table, row, name, publisher, 1, None))
            active = row.get("active_layer") or {}
            if active:
                rows.append(_layer(ctx, table, row, ACTIVE, None, 2, dict(active)))
    return rows


def check_query(ctx: Ctx, properties: Iterable[str]) -> None:
    """With ``componentlayers_require_component``, a query must name one component (UNCONFIRMED)."""
    if not ctx.setting("componentlayers_require_component"):
        return
    props = set(properties)
    if not {"msdyn_componentid", "msdyn_solutioncomponentname"} <= props:
        raise HttpError(
            400, QUERY_ERROR,
            "msdyn_componentlayers can only be queried for one component: filter on msdyn_componentid and "
            "msdyn_solutioncomponentname.",
        )
