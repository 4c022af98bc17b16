"""Operations and plans round-trip exactly through plain JSON (saved plans are written to files)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.plan.ops import (
    AddToSolution,
    ApplyFacts,
    ConnectionInfo,
    CreateReference,
    DeleteReference,
    EnvironmentPlan,
    FieldChange,
    FlowInfo,
    Op,
    OwnerInfo,
    Plan,
    UpdateReference,
    operation_from_dict,
)

text = st.text(max_size=20)
opt_text = st.none() | text
scalar = st.none() | st.booleans() | text
snapshot = st.dictionaries(text, scalar, max_size=6)

connections = st.builds(ConnectionInfo, name=text, display_name=opt_text, owner=opt_text, status=opt_text)
owners = st.builds(OwnerInfo, systemuserid=text, upn=opt_text)
flows = st.builds(FlowInfo, id=text, name=text)
field_changes = st.builds(FieldChange, field=text, before=opt_text, after=opt_text)


def _common() -> dict[str, Any]:
    return {
        "environment": text,
        "logical_name": text,
        "reference_id": opt_text,
        "etag": opt_text,
        "reason": text,
        "before": snapshot,
        "after": snapshot,
    }


operations: st.SearchStrategy[Op] = st.one_of(
    st.builds(
        CreateReference,
        **_common(),
        solution=text,
        connector=text,
        display_name=text,
        description=opt_text,
        connection=st.none() | connections,
        owner=st.none() | owners,
    ),
    st.builds(
        UpdateReference,
        **_common(),
        changes=st.lists(field_changes, max_size=4).map(tuple),
        old_connection=st.none() | connections,
        new_connection=st.none() | connections,
        old_owner=st.none() | owners,
        new_owner=st.none() | owners,
    ),
    st.builds(AddToSolution, **_common(), solution=text),
    st.builds(DeleteReference, **_common(), flows=st.lists(flows, max_size=3).map(tuple)),
)

env_plans = st.builds(
    EnvironmentPlan,
    environment=text,
    ops=st.lists(operations, max_size=4).map(tuple),
    warnings=st.lists(text, max_size=3).map(tuple),
    fingerprint=text,
    facts=st.none() | st.builds(ApplyFacts, writer_object_id=st.none() | text,
                                component_type=st.none() | st.integers(0, 2**31)),
)
plans = st.builds(
    Plan,
    environments=st.lists(env_plans, max_size=3).map(tuple),
    solution=text,
    created_at=text,
    config_digest=text,
)


def through_json(d: dict[str, Any]) -> Any:
    return json.loads(json.dumps(d))


@given(operations)
def test_operation_round_trip(op: Op) -> None:
    d = op.to_dict()
    assert d["actions"] == list(op.actions)
    back = operation_from_dict(through_json(d))
    assert type(back) is type(op)
    assert back == op
    assert back.to_dict() == d


@given(plans)
def test_plan_round_trip(p: Plan) -> None:
    back = Plan.from_dict(through_json(p.to_dict()))
    assert back == p
    assert back.counts == p.counts


def test_actions_use_terraform_vocabulary() -> None:
    common: dict[str, Any] = {"environment": "dev", "logical_name": "x_a"}
    assert CreateReference(**common, solution="S", connector="c", display_name="d").to_dict()["actions"] == [
        "create"
    ]
    assert UpdateReference(**common, changes=()).to_dict()["actions"] == ["update"]
    assert AddToSolution(**common, solution="S").to_dict()["actions"] == ["update"]
    assert DeleteReference(**common).to_dict()["actions"] == ["delete"]


def test_snapshots_are_read_only() -> None:
    op = AddToSolution(environment="dev", logical_name="x_a", solution="S", before={"in_solution": False})
    with pytest.raises(TypeError):
        op.before["in_solution"] = True  # type: ignore[index]  # the point: it is read-only
    assert hash(op) == hash(AddToSolution(environment="dev", logical_name="x_a", solution="S"))


def test_unknown_kind_and_major_version_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown operation kind 'rename'"):
        operation_from_dict({"kind": "rename", "environment": "dev", "logical_name": "x"})
    doc = Plan((), "S", "2026-03-04T10:15:00Z", "sha256:0").to_dict()
    assert Plan.from_dict({**doc, "format_version": "1.7"}).format_version == "1.7"
    with pytest.raises(ValueError, match=r"unsupported plan format_version '2\.0'"):
        Plan.from_dict({**doc, "format_version": "2.0"})
