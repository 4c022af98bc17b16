"""reconciler.schemas.validate, the dependency-free validator apply uses on a saved plan, agrees with the
reference implementation (jsonschema) on real documents and on broken ones, and refuses a schema keyword it
does not implement rather than check less than the schema says."""

from __future__ import annotations

import contextlib
import copy
import json
from typing import Any

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.plan.ops import (
    ConnectionInfo,
    CreateReference,
    DeleteReference,
    EnvironmentPlan,
    FieldChange,
    OwnerInfo,
    Plan,
    UpdateReference,
)
from reconciler.plan.planfile import SavedEnvironment, SavedPlan
from reconciler.schemas import SCHEMAS, load_schema
from reconciler.schemas.validate import UnsupportedSchema, Validator, problems, validator

DIGEST = "sha256:" + "ab" * 32
REF_ID = "0f0e0d0c-0b0a-4909-8807-060504030201"


def saved_plan_document() -> dict[str, Any]:
    """A saved plan as ``plan --out`` writes it: one operation of each kind the planner makes."""
    ops = (
        CreateReference(environment="dev", logical_name="contoso_A", reference_id=REF_ID, reason="declared",
                        after={"logical_name": "contoso_A"}, solution="S", connector="shared_x",
                        display_name="A", connection=ConnectionInfo("c1", "C one", "svc@x.com", "Connected"),
                        owner=OwnerInfo(REF_ID, "svc@x.com")),
        UpdateReference(environment="dev", logical_name="contoso_B", reference_id=REF_ID, etag='W/"7"',
                        reason="rename", changes=(FieldChange("display_name", "b", "B"),)),
        DeleteReference(environment="dev", logical_name="contoso_C", reference_id=REF_ID, etag='W/"8"',
                        reason="prune"),
    )
    plan = Plan(environments=(EnvironmentPlan("dev", ops, ("a warning",), "sha256:f"),), solution="S",
                created_at="2024-06-03T09:15:00Z", config_digest=DIGEST)
    saved = SavedPlan(format_version="1.0", created_at="2024-06-03T09:15:00Z", config_path="connref.yaml",
                      config_digest=DIGEST, options={"prune": True},
                      environments={"dev": SavedEnvironment("dev", 3, REF_ID, DIGEST, "sha256:f",
                                                            {"contoso_B": 'W/"7"'})},
                      plan=plan.to_dict())
    doc: dict[str, Any] = json.loads(json.dumps(saved.to_dict()))
    return doc


def reference_valid(kind: str, doc: Any) -> bool:
    return bool(jsonschema.Draft202012Validator(load_schema(kind)).is_valid(doc))


# Each a change to a valid saved plan, and whether it leaves the document valid.
def _set(path: list[Any], value: Any) -> Any:
    def change(doc: dict[str, Any]) -> None:
        node: Any = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return change


def _drop(path: list[Any]) -> Any:
    def change(doc: dict[str, Any]) -> None:
        node: Any = doc
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    return change


OP = ["plan", "environments", 0, "ops", 0]
MUTATIONS = {
    "unknown operation kind": _set([*OP, "kind"], "activate_everything"),
    "operation without kind": _drop([*OP, "kind"]),
    "actions empty": _set([*OP, "actions"], []),
    "action unknown": _set([*OP, "actions"], ["explode"]),
    "reference id a number": _set([*OP, "reference_id"], 42),
    "reference id null": _set([*OP, "reference_id"], None),
    "connection without name": _drop([*OP, "connection", "name"]),
    "connection null": _set([*OP, "connection"], None),
    "owner a string": _set([*OP, "owner"], "maker@contoso.com"),
    "ops an object": _set(["plan", "environments", 0, "ops"], {}),
    "environment plan without fingerprint": _drop(["plan", "environments", 0, "fingerprint"]),
    "kind of file wrong": _set(["kind"], "terraform-plan"),
    "format 2": _set(["format_version"], "2.0"),
    "format 1.7": _set(["format_version"], "1.7"),
    "digest not sha256": _set(["config", "digest"], "md5:00"),
    "serial negative": _set(["environments", "dev", "state", "serial"], -1),
    "serial a boolean": _set(["environments", "dev", "state", "serial"], True),
    "serial a float": _set(["environments", "dev", "state", "serial"], 3.5),
    "state null": _set(["environments", "dev", "state"], None),
    "state a list": _set(["environments", "dev", "state"], []),
    "etag a number": _set(["environments", "dev", "etags", "contoso_B"], 7),
    "prune a string": _set(["options", "prune"], "yes"),
    "an unknown top-level key": _set(["extra"], {"anything": 1}),
    "plan missing": _drop(["plan"]),
    "change without field": _drop(["plan", "environments", 0, "ops", 1, "changes", 0, "field"]),
    "flows not a list": _set(["plan", "environments", 0, "ops", 2, "flows"], "none"),
}


def test_a_saved_plan_as_written_is_valid() -> None:
    doc = saved_plan_document()
    assert reference_valid("saved-plan", doc)
    assert problems("saved-plan", doc) == []


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_agrees_with_jsonschema_on_a_changed_saved_plan(name: str) -> None:
    doc = saved_plan_document()
    MUTATIONS[name](doc)
    found = problems("saved-plan", doc)
    assert (found == []) == reference_valid("saved-plan", doc), found


def test_problems_name_the_path_and_what_is_wrong() -> None:
    doc = saved_plan_document()
    MUTATIONS["unknown operation kind"](doc)
    found = problems("saved-plan", doc)
    assert found and found[0].startswith("/plan/environments/0/ops/0/kind: 'activate_everything' is not one of")
    doc = saved_plan_document()
    MUTATIONS["serial negative"](doc)
    assert problems("saved-plan", doc) == ["/environments/dev/state/serial: -1 is less than 0"]
    doc = saved_plan_document()
    MUTATIONS["state a list"](doc)
    assert problems("saved-plan", doc) == ["/environments/dev/state: [] matches none of the allowed forms"]


def test_problems_are_bounded() -> None:
    doc = saved_plan_document()
    doc["plan"]["environments"][0]["ops"] = [{"kind": 1}] * 50
    assert len(problems("saved-plan", doc, limit=5)) == 5


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_every_schema_connref_ships_uses_only_what_the_validator_implements(kind: str) -> None:
    assert validator(kind).root == load_schema(kind)


def test_a_keyword_it_does_not_implement_is_refused() -> None:
    with pytest.raises(UnsupportedSchema, match="patternProperties"):
        Validator({"type": "object", "patternProperties": {"^x": {"type": "string"}}})
    with pytest.raises(UnsupportedSchema, match="only '#' and '#/\\$defs/NAME'"):
        Validator({"$ref": "https://example.com/schema.json"})
    with pytest.raises(UnsupportedSchema, match="names no definition"):
        Validator({"$ref": "#/$defs/missing"})


@pytest.mark.parametrize("items", [[], ["a", "b"], ["a", "a"], [1, 1.0], [1, True], [{"x": 1}, {"x": 1}],
                                   [[1], [True]]])
def test_unique_items_agrees_with_jsonschema(items: list[Any]) -> None:
    schema = {"type": "array", "uniqueItems": True}
    assert Validator(schema).valid(items) == bool(jsonschema.Draft202012Validator(schema).is_valid(items))


def test_json_equality_tells_booleans_from_numbers() -> None:
    v = Validator({"enum": [1, "a", None]})
    assert v.valid(1) and v.valid(1.0) and v.valid(None)
    assert not v.valid(True) and not v.valid("1")
    assert not Validator({"const": False}).valid(0)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["", "create", "1.0", "sha256:" + "0" * 64, "dev", REF_ID]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["kind", "name", "serial", "state", "ops", "x"]), inner, max_size=3),
    max_leaves=8,
)


@given(st.lists(st.sampled_from(sorted(MUTATIONS)), max_size=3), json_values,
       st.sampled_from([OP, [*OP, "connection"], ["environments", "dev"], ["options"], ["plan", "environments"]]))
def test_agrees_with_jsonschema_on_random_documents(names: list[str], value: Any, where: list[Any]) -> None:
    doc = saved_plan_document()
    for name in names:
        with contextlib.suppress(KeyError, IndexError, TypeError):
            MUTATIONS[name](doc)
    with contextlib.suppress(KeyError, IndexError, TypeError):
        _set(where, copy.deepcopy(value))(doc)
    assert (problems("saved-plan", doc) == []) == reference_valid("saved-plan", doc)
