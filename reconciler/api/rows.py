"""Dataverse ``connectionreferences`` rows and the domain's ``LiveReference``: the columns connref
reads, and how a row becomes a reference. The live reader reads rows with them, and the applier asks
for its written rows back with the same columns (``Prefer: return=representation``), so both turn a
row into the same ``LiveReference``. No requests here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler.api.shapes import CONNECTION_REFERENCE, ShapeProblem, check
from reconciler.domain.model import LiveReference

REFERENCE_COLUMNS = (
    "connectionreferenceid",
    "connectionreferencelogicalname",
    "connectionreferencedisplayname",
    "connectorid",
    "connectionid",
    "description",
    "ismanaged",
    "statecode",
    "_ownerid_value",
    "_createdby_value",
    "createdon",
    "_modifiedby_value",
    "modifiedon",
)


def written_row(body: Any) -> dict[str, Any] | None:
    """The row a write's answer carries (``Prefer: return=representation``, docs/dataverse.md §3.3) when it is
    a whole reference row, its ETag among its columns (``shapes.CONNECTION_REFERENCE``); None otherwise, and
    the row is read back instead: a row recorded without its ETag would be written next with nothing to
    send as ``If-Match``."""
    if not isinstance(body, dict):
        return None
    try:
        check(body, CONNECTION_REFERENCE)
    except ShapeProblem:
        return None
    return body


def reference_from_row(row: Mapping[str, Any], in_solution: bool) -> LiveReference:
    """A row checked against ``shapes.CONNECTION_REFERENCE`` (a read page, ``written_row``) as a reference."""
    return LiveReference(
        id=str(row["connectionreferenceid"]).lower(),
        logical_name=str(row.get("connectionreferencelogicalname") or ""),
        display_name=row.get("connectionreferencedisplayname"),
        connector=str(row.get("connectorid") or ""),
        connection=row.get("connectionid") or None,
        description=row.get("description"),
        owner_id=(row.get("_ownerid_value") or None),
        etag=str(row["@odata.etag"]),
        in_solution=in_solution,
        managed=bool(row.get("ismanaged")),
        modified_by=row.get("_modifiedby_value"),
        modified_on=row.get("modifiedon"),
        created_by=row.get("_createdby_value"),
        created_on=row.get("createdon"),
    )
