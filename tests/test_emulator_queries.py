"""The emulator's collection queries read computed columns (those the service derives, like ``accessmode`` or
``_owninguser_value``) exactly as it serves them whole: ``$select``, ``$filter`` and ``$orderby`` on them agree
with the rows a query without options returns."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from reconciler.api.odata_filter import literal

# entity set -> (primary key, computed columns; the last one not an object)
COMPUTED = {
    "systemusers": ("systemuserid", ["_businessunitid_value", "accessmode", "internalemailaddress"]),
    "solutions": ("solutionid", ["_publisherid_value", "isvisible"]),
    "connectionreferences": (
        "connectionreferenceid",
        ["_owninguser_value", "_owningbusinessunit_value", "iscustomizable", "componentstate"],
    ),
    "workflows": ("workflowid", ["workflowidunique"]),
}

STORED = "~stored"

pytestmark = pytest.mark.emulator_only("stores a value in a computed column of the sample's data")


def rows(dv: httpx.Client, query: str) -> list[dict[str, Any]]:
    r = dv.get(query)
    assert r.status_code == 200, r.text
    value: list[dict[str, Any]] = r.json()["value"]
    return value


@pytest.mark.parametrize("entity_set", sorted(COMPUTED))
def test_select_filter_and_orderby_on_computed_columns_agree_with_whole_rows(
    emulator: Any, dv: httpx.Client, entity_set: str
) -> None:
    key, computed = COMPUTED[entity_set]
    with emulator.store.lock:  # a stored (not null) value wins over the computed one
        stored = emulator.store.rows(entity_set)
        assert len(stored) >= 2
        stored[0][computed[-1]] = STORED
    whole = {r[key]: r for r in rows(dv, entity_set)}
    assert whole[stored[0][key]][computed[-1]] == STORED
    for column in computed:
        selected = rows(dv, f"{entity_set}?$select={column}")
        assert {r[key]: r[column] for r in selected} == {k: r[column] for k, r in whole.items()}
        assert all(set(r) - {"@odata.etag"} == {column, key} for r in selected)
        for v in {literal(r[column]) for r in whole.values() if not isinstance(r[column], dict)}:
            for op in ("eq", "ne"):
                got = {r[key] for r in rows(dv, f"{entity_set}?$select={key}&$filter={column} {op} {v}")}
                want = {k for k, r in whole.items() if (literal(r[column]) == v) == (op == "eq")}
                assert got == want, (column, op, v)
    ordered = [r[computed[-1]] for r in rows(dv, f"{entity_set}?$select={computed[-1]}&$orderby={computed[-1]} desc")]
    assert ordered[0] == STORED  # a string sorts after nulls, booleans and numbers; '~' after letters
