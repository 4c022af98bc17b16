"""Every answer is checked against its shape by a quick test first (``shapes._fits``: no messages, exact
JSON types) and only the way that words the problem (``shapes.explain``) when the quick test fails. For
generated values, close to every shape connref reads and broken in the ways answers break, the two must
agree: what the quick test passes, the slow way passes too; ``check`` raises exactly what ``explain``
raises; and a page of rows is refused with the same message either way."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.api import shapes
from reconciler.api.shapes import Shape, ShapeProblem

SHAPES: list[Shape] = [v for v in vars(shapes).values() if isinstance(v, Shape)]
GUID = "6f1c2a3b-0c4d-4e5f-8a9b-0c1d2e3f4a5b"

# Values of every JSON type and a few near misses: GUID-like strings that are not GUIDs, bool vs int,
# a digit string (a "seconds" value), and subclasses json.loads never makes but a caller might pass.


class _Dict(dict[str, Any]):
    pass


class _Str(str):
    pass


SCALARS = st.sampled_from([None, True, False, 0, 7, -1, 1.5, "", "text", "42", " 3600 ", GUID, GUID.upper(),
                           GUID[:-1], GUID + "0", "{" + GUID + "}", _Str(GUID), _Str("x")])


def _values(depth: int) -> st.SearchStrategy[Any]:
    if depth == 0:
        return SCALARS
    inner = _values(depth - 1)
    return st.one_of(SCALARS, st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["a", "id", "x"]), inner,
                                                                           max_size=2))


@st.composite
def near(draw: st.DrawFn, shape: Shape, depth: int = 2) -> Any:
    """A value shaped like ``shape``: each field present or absent, of its kind or another, nested
    shapes followed; sometimes not an object at all, or a dict subclass."""
    if draw(st.integers(0, 19)) == 0:
        return draw(_values(1))
    row: dict[str, Any] = _Dict() if draw(st.integers(0, 9)) == 0 else {}
    for f in shape.fields:
        choice = draw(st.integers(0, 5))
        if choice == 0:
            continue
        if choice == 1:
            row[f.name] = None
        elif choice == 2 or depth == 0:
            row[f.name] = draw(_values(1))
        elif f.shape is not None and f.kind == "object":
            row[f.name] = draw(near(f.shape, depth - 1))
        elif f.shape is not None and f.kind == "list":
            row[f.name] = draw(st.lists(near(f.shape, depth - 1), max_size=3))
        else:
            row[f.name] = {"string": "text", "guid": GUID, "integer": 3, "boolean": True, "object": {},
                           "list": [], "seconds": "3600"}[f.kind]
    if draw(st.booleans()):
        row["extra"] = draw(_values(1))
    return row


def _outcome(fn: Any, *args: Any) -> str | None:
    try:
        fn(*args)
    except ShapeProblem as exc:
        return str(exc)
    return None


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_the_quick_test_agrees_with_the_slow_way(data: st.DataObject) -> None:
    shape = data.draw(st.sampled_from(SHAPES))
    value = data.draw(near(shape))
    slow = _outcome(shapes.explain, value, shape, "")
    if shapes._fits(value, shape):
        assert slow is None
    assert _outcome(shapes.check, value, shape, "") == slow


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_a_page_is_refused_with_the_message_of_its_first_bad_row(data: st.DataObject) -> None:
    shape = data.draw(st.sampled_from(SHAPES))
    rows = data.draw(st.lists(near(shape), max_size=4))
    selected = data.draw(st.lists(st.sampled_from([f.name for f in shape.fields]), max_size=2))
    expected: str | None = None
    for i, r in enumerate(rows):
        expected = _outcome(shapes.explain, r, shape, f"value[{i}]")
        if expected is None and isinstance(r, dict):
            missing = [c for c in selected if c not in r]
            if missing:
                expected = (f"value[{i}].{missing[0]}: missing (a selected column is always returned, "
                            "null when empty)")
        if expected is not None:
            break
    assert _outcome(shapes.check_collection, {"value": rows}, shape, selected) == expected


@pytest.mark.parametrize("value, deepest", [
    ({"a": 1, "b": "x"}, 1),
    ([{"a": [1, {"b": None}]}], 4),
    (_Dict(a=_Dict(b=1)), 2),  # containers json.loads never makes are still counted
    ([[[[]]]], 4),
    ("scalar", 0),
])
def test_depth_counts_every_container(value: Any, deepest: int) -> None:
    assert shapes.depth_of(value, 32) == deepest


def _depth(value: Any) -> int:
    """The nesting depth, counted the plain recursive way (the reference ``depth_of`` is held to)."""
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=3),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=2), inner, max_size=4),
                    max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(JSON, st.integers(0, 6))
def test_depth_matches_the_recursive_count_up_to_its_limit(value: Any, limit: int) -> None:
    deepest = _depth(value)
    found = shapes.depth_of(value, limit)
    if deepest <= limit:
        assert found == deepest
    else:  # it may stop counting once past the limit, never report a depth within it
        assert limit < found <= deepest
