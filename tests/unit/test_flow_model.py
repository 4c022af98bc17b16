"""What connref reads from a flow's ``clientdata``: references, child flows (docs/dataverse.md §5.5) and the
trigger's kind, from the shapes the designer writes (the emulator's factory writes the same)."""

from __future__ import annotations

import json

from reconciler.api.live import flow_from_row
from reconciler.domain.flowdef import flow_children, flow_references, flow_trigger
from reconciler.emulator import factory

CHILD_A = "F0000000-0000-4000-8000-0000000000C1"
CHILD_B = "f0000000-0000-4000-8000-0000000000c2"


def test_children_are_found_at_any_depth_once_each_lower_case() -> None:
    doc = json.loads(factory.flow_clientdata([("contoso_SP", "shared_sharepointonline")], children=[CHILD_A]))
    doc["properties"]["definition"]["actions"]["Scope"] = {
        "type": "Scope",
        "actions": {"If": {"type": "If", "actions": {}, "else": {"actions": {
            "Run_b": {"type": "Workflow", "inputs": {"host": {"workflowReferenceName": CHILD_B}}},
            "Run_a_again": {"type": "Workflow", "inputs": {"host": {"workflowReferenceName": CHILD_A}}},
            "Not_a_guid": {"type": "Workflow", "inputs": {"host": {"workflowReferenceName": "@{variables('x')}"}}},
        }}}},
    }
    clientdata = json.dumps(doc)
    assert flow_children(clientdata) == (CHILD_A.lower(), CHILD_B)
    assert flow_references(clientdata) == ("contoso_SP",)


def test_trigger_kinds() -> None:
    assert flow_trigger(factory.flow_clientdata([])) == "manual"
    assert flow_trigger(factory.flow_clientdata([], trigger="recurrence")) == "recurrence"
    doc = {"properties": {"definition": {"triggers": {"When_a_row_is_added": {"type": "OpenApiConnectionWebhook"}}}}}
    assert flow_trigger(json.dumps(doc)) == "automated"
    assert flow_trigger("not json") is None and flow_children(None) == ()


def test_flow_from_row_keeps_state_owner_children_and_etag() -> None:
    row = {"workflowid": "F1000000-0000-4000-8000-000000000001", "name": "Parent", "statecode": 0, "statuscode": 1,
           "ismanaged": True, "_ownerid_value": "u-1", "@odata.etag": 'W/"12"',
           "clientdata": factory.flow_clientdata([], children=[CHILD_B], trigger="recurrence")}
    flow = flow_from_row(row, ("ContosoFlows",))
    assert (flow.id, flow.state_name, flow.is_on, flow.status) == ("f1000000-0000-4000-8000-000000000001", "Off",
                                                                   False, 1)
    assert (flow.children, flow.trigger, flow.managed, flow.etag) == ((CHILD_B,), "recurrence", True, 'W/"12"')
