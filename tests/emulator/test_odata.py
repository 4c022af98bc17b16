"""The $filter parser and the other query-option parsers, without HTTP."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.emulator.odata import ODataError, order_rows, parse_filter, parse_orderby, parse_select, quote, tokenize

ROWS: list[dict[str, Any]] = [
    {"name": "contoso_SharePoint", "connectionid": "abc", "statecode": 0, "ismanaged": False},
    {"name": "contoso_Outlook", "connectionid": None, "statecode": 1, "ismanaged": False},
    {"name": "fabrikam_Sql", "connectionid": "def", "statecode": 0, "ismanaged": True},
]


def names(expr: str) -> list[str]:
    node = parse_filter(expr)
    return [r["name"] for r in ROWS if node.test(r)]


def test_eq_is_case_insensitive_for_strings() -> None:
    assert names("name eq 'CONTOSO_sharepoint'") == ["contoso_SharePoint"]


def test_ne_null_and_eq_null() -> None:
    assert names("connectionid ne null") == ["contoso_SharePoint", "fabrikam_Sql"]
    assert names("connectionid eq null") == ["contoso_Outlook"]


def test_and_binds_tighter_than_or_and_parentheses_override() -> None:
    assert names("statecode eq 1 or statecode eq 0 and ismanaged eq true") == ["contoso_Outlook", "fabrikam_Sql"]
    assert names("(statecode eq 1 or statecode eq 0) and ismanaged eq false") == [
        "contoso_SharePoint",
        "contoso_Outlook",
    ]


def test_not_and_functions() -> None:
    assert names("startswith(name,'contoso_')") == ["contoso_SharePoint", "contoso_Outlook"]
    assert names("contains(name, 'POINT')") == ["contoso_SharePoint"]
    assert names("endswith(name,'sql')") == ["fabrikam_Sql"]
    assert names("not startswith(name,'contoso_')") == ["fabrikam_Sql"]


def test_guid_literal_matches_string_id_case_insensitively() -> None:
    node = parse_filter("_ownerid_value eq 0A0A0A0A-0000-4000-8000-000000000001")
    assert node.test({"_ownerid_value": "0a0a0a0a-0000-4000-8000-000000000001"})
    assert not node.test({"_ownerid_value": "0a0a0a0a-0000-4000-8000-000000000002"})


def test_numbers_and_ordering_comparisons() -> None:
    assert names("statecode gt 0") == ["contoso_Outlook"]
    assert names("statecode le 0") == ["contoso_SharePoint", "fabrikam_Sql"]
    assert parse_filter("x eq -1.5").test({"x": -1.5})


def test_doubled_quote_is_one_quote() -> None:
    tokens = tokenize("name eq 'O''Brien'")
    assert tokens[-1].value == "O'Brien"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "name eq",
        "name eq 'open",
        "(name eq 'a'",
        "name eq 'a' and",
        "name foo 'a'",
        "unknownfn(name,'a')",
        "name eq 'a' 'b'",
        "name ! 'a'",
    ],
)
def test_syntax_errors(bad: str) -> None:
    with pytest.raises(ODataError):
        parse_filter(bad)


@given(st.text(max_size=40))
def test_quoted_values_round_trip(value: str) -> None:
    """Any value, quotes included, escaped by doubling, matches itself and nothing else."""
    node = parse_filter(f"name eq {quote(value)}")
    assert node.test({"name": value})
    assert node.test({"name": value.upper()}) == (value.upper().lower() == value.lower())
    assert not node.test({"name": value + "x"})


@given(st.text(alphabet=st.sampled_from("ab'' ()"), max_size=20))
def test_quote_injection_cannot_escape_the_literal(value: str) -> None:
    """A value full of quotes and parentheses stays one literal: the filter has exactly one comparison."""
    node = parse_filter(f"name eq {quote(value)} and statecode eq 0")
    assert node.properties() == {"name", "statecode"}
    assert node.test({"name": value, "statecode": 0})


def test_select_and_orderby_parsers() -> None:
    assert parse_select("a, b,c") == ["a", "b", "c"]
    assert parse_orderby("a desc, b") == [("a", True), ("b", False)]
    with pytest.raises(ODataError):
        parse_orderby("a sideways")
    with pytest.raises(ODataError):
        parse_select("a,,b")


def test_order_rows_multi_key_with_nulls_first() -> None:
    rows: list[dict[str, Any]] = [{"a": 1, "b": "y"}, {"a": None, "b": "z"}, {"a": 1, "b": "X"}, {"a": 0, "b": "w"}]
    assert [(r["a"], r["b"]) for r in order_rows(rows, [("a", False), ("b", True)])] == [
        (None, "z"),
        (0, "w"),
        (1, "y"),
        (1, "X"),
    ]
