"""A flow's definition (reconciler.domain.flowdef): the entries it uses, its trigger, and re-pointing it from
replaced references onto the kept one (docs/dataverse.md §5.2, §5.9, §5.10)."""

from __future__ import annotations

import json
from typing import Any

from builders import host_keys
from hypothesis import given
from hypothesis import strategies as st

from reconciler.domain import flowdef
from reconciler.domain.model import FlowConnection

KEPT, OLD, OLDER = "contoso_sharedsharepointonline_30e7d", "contoso_sharedsharepointonline_8f4b0", "contoso_sp_c0ffe"
APIS = "/providers/Microsoft.PowerApps/apis/"


def entry(logical: str, api: str = "shared_sharepointonline", source: str = "embedded") -> dict[str, Any]:
    return {"runtimeSource": source, "connection": {"connectionReferenceLogicalName": logical}, "api": {"name": api}}


def action(key: str, api: str = "shared_sharepointonline") -> dict[str, Any]:
    return {"type": "OpenApiConnection",
            "inputs": {"host": {"apiId": f"{APIS}{api}", "connectionName": key, "operationId": "Op"},
                       "authentication": "@parameters('$authentication')"}}


def definition(entries: dict[str, Any], actions: dict[str, Any], trigger: dict[str, Any] | None = None) -> str:
    triggers = {"manual": {"type": "Request", "kind": "Button"}} if trigger is None else trigger
    return json.dumps({"properties": {"connectionReferences": entries,
                                      "definition": {"triggers": triggers, "actions": actions}},
                       "schemaVersion": "1.0.0.0"})


def doc(clientdata: str | None) -> dict[str, Any]:
    assert clientdata is not None
    parsed: dict[str, Any] = json.loads(clientdata)
    return parsed


# --------------------------------------------------------------------------- reading


def test_connections_of_each_shape() -> None:
    clientdata = json.dumps({"properties": {"connectionReferences": {
        "shared_sharepointonline": entry(KEPT),
        "shared_office365": {"runtimeSource": "invoker", "connectionReferenceLogicalName": "contoso_Outlook",
                             "api": {"name": "shared_office365"}},
        "shared_teams": {"connectionName": "shared-teams-123", "source": "Embedded", "id": f"{APIS}shared_teams"},
    }, "definition": {"triggers": {}, "actions": {}}}})
    assert flowdef.connections(clientdata) == (
        FlowConnection("shared_sharepointonline", KEPT, "shared_sharepointonline", "embedded"),
        FlowConnection("shared_office365", "contoso_Outlook", "shared_office365", "invoker"),
        FlowConnection("shared_teams", None, "shared_teams", "embedded", "shared-teams-123"),
    )
    assert flowdef.logical_names(clientdata) == (KEPT, "contoso_Outlook")


def test_unreadable_definitions_use_nothing() -> None:
    for bad in (None, "", "{not json", "[1]", json.dumps({"properties": {"connectionReferences": [1]}})):
        assert flowdef.connections(bad) == ()
        assert flowdef.trigger_kind(bad) is None
        assert flowdef.repoint(bad, {OLD: KEPT}) is None


def test_trigger_kinds() -> None:
    def kind(trigger: dict[str, Any]) -> str | None:
        return flowdef.trigger_kind(definition({}, {}, trigger))

    assert kind({"manual": {"type": "Request", "kind": "Button"}}) == "manual"
    assert kind({"manual": {"type": "Request", "kind": "PowerAppV2"}}) == "manual"
    assert kind({"Recurrence": {"type": "Recurrence", "recurrence": {"frequency": "Day"}}}) == "scheduled"
    assert kind({"When_an_item_is_created": {"type": "OpenApiConnectionNotification"}}) == "automated"
    assert kind({"When_a_row_is_added": {"type": "OpenApiConnectionWebhook"}}) == "automated"
    assert kind({}) is None
    assert flowdef.trigger_name(definition({}, {}, {"Recurrence": {"type": "Recurrence"}})) == "Recurrence"


# --------------------------------------------------------------------------- re-pointing


def test_a_flow_on_a_replaced_reference_names_the_kept_one() -> None:
    before = definition({"shared_sharepointonline": entry(OLD)}, {"Get_items": action("shared_sharepointonline")})
    after = doc(flowdef.repoint(before, {OLD: KEPT}))
    assert after["properties"]["connectionReferences"] == {"shared_sharepointonline": entry(KEPT)}
    assert host_keys(after) == ["shared_sharepointonline"]
    # Everything else is as it was.
    old = doc(before)
    old["properties"]["connectionReferences"]["shared_sharepointonline"] = entry(KEPT)
    assert after == old


def test_a_flow_on_both_keeps_one_entry_and_its_actions_follow() -> None:
    before = definition(
        {"shared_sharepointonline": entry(OLD), "shared_sharepointonline-1": entry(KEPT)},
        {"Scope": {"type": "Scope", "actions": {
            "Get_items": action("shared_sharepointonline"),
            "Update_item": action("shared_sharepointonline-1")}},
         "Legacy": {"type": "ApiConnection", "inputs": {"host": {"connection": {
             "name": "@parameters('$connections')['shared_sharepointonline']['connectionId']"}}}}},
        trigger={"When_an_item_is_created": {"type": "OpenApiConnectionNotification",
                                             "inputs": {"host": {"connectionName": "shared_sharepointonline"}}}},
    )
    after = doc(flowdef.repoint(before, {OLD.upper(): KEPT}))
    assert after["properties"]["connectionReferences"] == {"shared_sharepointonline-1": entry(KEPT)}
    assert sorted(host_keys(after)) == ["shared_sharepointonline-1"] * 3
    legacy = after["properties"]["definition"]["actions"]["Legacy"]["inputs"]["host"]["connection"]["name"]
    assert legacy == "@parameters('$connections')['shared_sharepointonline-1']['connectionId']"
    assert flowdef.logical_names(json.dumps(after)) == (KEPT,)


def test_two_replaced_references_merge_into_one_entry() -> None:
    before = definition({"shared_sharepointonline": entry(OLD), "shared_sharepointonline-1": entry(OLDER)},
                        {"A": action("shared_sharepointonline"), "B": action("shared_sharepointonline-1")})
    after = doc(flowdef.repoint(before, {OLD: KEPT, OLDER: KEPT}))
    assert after["properties"]["connectionReferences"] == {"shared_sharepointonline": entry(KEPT)}
    assert host_keys(after) == ["shared_sharepointonline", "shared_sharepointonline"]


def test_entries_with_another_runtime_source_are_not_merged() -> None:
    before = definition({"shared_sharepointonline": entry(OLD, source="invoker"),
                         "shared_sharepointonline-1": entry(KEPT)},
                        {"A": action("shared_sharepointonline"), "B": action("shared_sharepointonline-1")})
    after = doc(flowdef.repoint(before, {OLD: KEPT}))
    assert after["properties"]["connectionReferences"] == {
        "shared_sharepointonline": entry(KEPT, source="invoker"), "shared_sharepointonline-1": entry(KEPT)}
    assert host_keys(after) == ["shared_sharepointonline", "shared_sharepointonline-1"]


def test_nothing_to_move_is_none_and_a_moved_flow_stays_put() -> None:
    before = definition({"shared_sharepointonline": entry(KEPT)}, {"A": action("shared_sharepointonline")})
    assert flowdef.repoint(before, {OLD: KEPT}) is None
    moved = flowdef.repoint(definition({"shared_sharepointonline": entry(OLD)}, {}), {OLD: KEPT})
    assert flowdef.repoint(moved, {OLD: KEPT}) is None


KEYS = st.sampled_from(["shared_sharepointonline", "shared_sharepointonline-1", "shared_sharepointonline-2",
                        "shared_office365"])
NAMES = st.sampled_from([KEPT, OLD, OLDER, "contoso_Outlook"])


@given(entries=st.dictionaries(KEYS, st.tuples(NAMES, st.sampled_from(["embedded", "invoker"])), min_size=1),
       uses=st.lists(KEYS, max_size=6))
def test_repointing_leaves_a_valid_definition_on_the_kept_reference(
        entries: dict[str, tuple[str, str]], uses: list[str]) -> None:
    actions = {f"A{i}": action(k) for i, k in enumerate(uses) if k in entries}
    before = definition({k: entry(n, source=s) for k, (n, s) in entries.items()}, actions)
    replaced = {OLD: KEPT, OLDER: KEPT}
    out = flowdef.repoint(before, replaced)
    if not {n for n, _ in entries.values()} & set(replaced):
        assert out is None
        return
    after = doc(out)
    refs = after["properties"]["connectionReferences"]
    # No entry names a replaced reference; every operation names an entry that exists.
    assert not {e["connection"]["connectionReferenceLogicalName"] for e in refs.values()} & set(replaced)
    assert set(host_keys(after)) <= set(refs)
    assert len(host_keys(after)) == len(actions)
    # The other references are untouched, and the kept one is used wherever a replaced one was.
    names_before = {n for n, _ in entries.values()}
    names_after = {e["connection"]["connectionReferenceLogicalName"] for e in refs.values()}
    assert names_after == (names_before - set(replaced)) | {KEPT}
    assert flowdef.repoint(out, replaced) is None
