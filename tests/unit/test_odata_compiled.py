"""The emulator's compiled ``$filter`` (one closure per query) answers exactly as the parsed tree does."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.emulator.odata import Node, ODataError, _Parser, compile_filter, order_by, parse_filter

GUID = "0A0A0A0A-0000-4000-8000-00000000000A"

#: Values a stored column may hold: nulls, booleans next to the numbers they equal in Python, numbers next
#: to the strings that spell them, strings in both cases, a GUID in both cases.
VALUES: list[Any] = [None, True, False, 0, 1, 1.0, -1.5, "1", "x", "X", "abc", "ABC", "", "it's", GUID, GUID.lower()]
ROWS: list[dict[str, Any]] = [{}, *({"a": v, "b": w} for v in VALUES for w in (None, "x", 1, True, GUID))]


def compiled_matches(node: Node) -> list[int]:
    test = compile_filter(node)
    return [i for i, row in enumerate(ROWS) if test(row)]


def tree_matches(node: Node) -> list[int]:
    return [i for i, row in enumerate(ROWS) if node.test(row)]


@pytest.mark.parametrize(
    "expr",
    [
        "a eq null", "a ne null", "null eq a", "null ne a", "a eq b", "a ne b", "null eq null", "null ne null",
        "a eq true", "a eq false", "a ne true", "true eq a", "true", "false", "not true",
        "a eq 1", "a ne 1", "1 eq a", "a eq 1.0", "a eq -1.5", "a eq 0", "a eq '1'", "a ne '1'",
        "a eq 'x'", "a eq 'X'", "'X' eq a", "a ne 'x'", "a eq ''", "a eq 'it''s'", "a eq 'ABC' and b eq 'X'",
        f"a eq {GUID}", f"a eq {GUID.lower()}", f"a ne {GUID}", f"{GUID} eq a", f"b eq {GUID}",
        "a gt 0", "a ge 1", "a lt 'b'", "a le 'ABC'", "a gt null", "a lt true", "a gt b",
        "a eq 1 or b eq 'x'", "a eq null and b ne null", "not (a eq 'x' or b eq true)", "not a eq null",
        "(a eq 1 or a eq true) and not (b eq 1)", "(a eq b) eq true", "(a eq b) ne false",
        "contains(a,'B')", "startswith(a,'a')", "endswith(a,'0A')", "not contains(a,'x')",
        "startswith(a,b)", "contains('xyz',a)", f"startswith(b,'{GUID[:8].lower()}')",
    ],
)
def test_compiled_filter_matches_the_tree(expr: str) -> None:
    node = parse_filter(expr)
    assert compiled_matches(node) == tree_matches(node)


def test_compiled_filter_keeps_the_documented_answers() -> None:
    """Not only the same as the tree: the answers the emulator documents (case-insensitive strings and
    GUIDs, null only equal to null, a boolean never equal to a number)."""
    assert compile_filter(parse_filter("a eq 'abc'"))({"a": "AbC"})
    assert compile_filter(parse_filter(f"a eq {GUID}"))({"a": GUID.lower()})
    assert not compile_filter(parse_filter("a eq null"))({"a": ""})
    assert compile_filter(parse_filter("a eq null"))({})
    assert not compile_filter(parse_filter("a ne null"))({"a": None})
    assert not compile_filter(parse_filter("a eq 1"))({"a": True})
    assert not compile_filter(parse_filter("a eq true"))({"a": 1})
    assert not compile_filter(parse_filter("a eq 1"))({"a": "1"})
    assert compile_filter(parse_filter("a ne 1"))({"a": "1"})


def test_compiled_filter_reads_through_the_getter() -> None:
    """Properties are read with the getter the query gives (the emulator's served values), not the mapping."""
    node = parse_filter("a eq 'served' and not (b eq null)")
    test = compile_filter(node, lambda name: lambda row: {"a": "SERVED", "b": 1}[name])
    assert test({})
    assert not compile_filter(node)({})


_PROP = st.sampled_from(["a", "b"])
_LITERAL = st.sampled_from(
    ["null", "true", "false", "0", "1", "1.0", "-1.5", "'1'", "'x'", "'X'", "'abc'", "''", "'it''s'", GUID,
     GUID.lower()]
)
_OPERAND = st.one_of(_PROP, _LITERAL)
_COMPARISON = st.builds(lambda a, op, b: f"{a} {op} {b}", _OPERAND,
                        st.sampled_from(["eq", "ne", "gt", "ge", "lt", "le"]), _OPERAND)
_FUNCTION = st.builds(lambda f, a, b: f"{f}({a},{b})", st.sampled_from(["contains", "startswith", "endswith"]),
                      _OPERAND, _OPERAND)
_FILTER = st.recursive(
    st.one_of(_COMPARISON, _FUNCTION, st.sampled_from(["true", "false"])),
    lambda inner: st.one_of(
        st.builds(lambda x, op, y: f"({x}) {op} ({y})", inner, st.sampled_from(["and", "or"]), inner),
        st.builds(lambda x: f"not ({x})", inner),
        st.builds(lambda x, op, b: f"({x}) {op} {b}", inner, st.sampled_from(["eq", "ne"]),
                  st.sampled_from(["true", "false", "null"])),
    ),
    max_leaves=6,
)


@given(_FILTER)
def test_compiled_filter_matches_the_tree_on_generated_filters(expr: str) -> None:
    node = parse_filter(expr)
    assert compiled_matches(node) == tree_matches(node)


def test_order_by_sorts_on_what_the_getters_read_stably() -> None:
    """Nulls first ascending, strings case-folded, ties kept in their order; the getter's values decide, the
    rows themselves are returned."""
    rows: list[dict[str, Any]] = [{"id": i} for i in range(6)]
    served = {0: "b", 1: None, 2: "A", 3: "a", 4: 2, 5: None}
    ordered = order_by(rows, [(lambda row: served[row["id"]], False)])
    assert [r["id"] for r in ordered] == [1, 5, 4, 2, 3, 0]
    descending = order_by(rows, [(lambda row: served[row["id"]], True), (lambda row: -row["id"], False)])
    assert [r["id"] for r in descending] == [0, 3, 2, 4, 5, 1]


def test_parsed_filters_are_remembered_and_refusals_are_not() -> None:
    text = "a eq 'x' and not (b ne null)"
    assert parse_filter(text) is parse_filter(text)
    assert parse_filter(text) == _Parser(text).parse()
    for _ in range(2):
        with pytest.raises(ODataError):
            parse_filter("a eq")
        with pytest.raises(ODataError):
            parse_filter("  ")
