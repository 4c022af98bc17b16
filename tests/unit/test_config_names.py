"""Property tests of the logical-name rules (docs/dataverse.md §1.6) against an independent
oracle, directly and through the config loader."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.config.loader import load_config_text
from reconciler.domain.names import is_valid_logical_name, logical_name_problem, publisher_prefix
from reconciler.errors import ConfigError

# The oracle: the rule docs/dataverse.md §1.6 states, as a regular expression, with the length limit on the whole name.
ORACLE = re.compile(r"(?![Mm][Ss][Cc][Rr][Mm])[A-Za-z][A-Za-z0-9]{1,7}_[A-Za-z0-9_.\-]+")


def oracle(name: str) -> bool:
    return len(name) <= 200 and ORACLE.fullmatch(name) is not None


PREFIX = st.from_regex(r"[A-Za-z][A-Za-z0-9]{1,7}", fullmatch=True).filter(lambda p: not p.lower().startswith("mscrm"))
REST_CHARS = st.sampled_from("abcxyzABCXYZ0189_.-")
VALID = st.builds(
    lambda prefix, rest: f"{prefix}_{rest}"[:200],
    PREFIX,
    st.text(REST_CHARS, min_size=1, max_size=220),
)
# Strings near the boundary: the allowed alphabet plus characters that must be refused.
NEAR = st.text(st.sampled_from("aZ9_.-_ m/é:#@\t"), min_size=0, max_size=30)


@given(VALID)
def test_valid_names_are_accepted(name: str) -> None:
    assert oracle(name)
    assert logical_name_problem(name) is None
    assert publisher_prefix(name) == name.split("_", 1)[0]


@given(st.one_of(NEAR, st.text(max_size=210), VALID))
def test_validator_agrees_with_the_oracle(name: str) -> None:
    assert is_valid_logical_name(name) == oracle(name)
    problem = logical_name_problem(name)
    assert (problem is None) == oracle(name)
    if problem is not None:
        assert problem  # a reason the user can act on


@given(VALID, st.sampled_from(" /\\:#@é!\t"), st.data())
def test_a_forbidden_character_anywhere_is_refused(name: str, bad: str, data: st.DataObject) -> None:
    at = data.draw(st.integers(min_value=0, max_value=len(name)))
    assert not is_valid_logical_name(name[:at] + bad + name[at:])


@given(PREFIX, st.integers(min_value=201, max_value=400))
def test_names_over_200_characters_are_refused(prefix: str, length: int) -> None:
    name = (prefix + "_" + "x" * length)[:length]
    problem = logical_name_problem(name)
    assert problem == f"a logical name may be at most 200 characters (this one has {length})"


@given(st.from_regex(r"[Mm][Ss][Cc][Rr][Mm][a-z0-9]{0,3}", fullmatch=True), st.text(REST_CHARS, min_size=1))
def test_mscrm_prefixes_are_reserved(prefix: str, rest: str) -> None:
    assert logical_name_problem(f"{prefix}_{rest}"[:200]) == (
        "the publisher prefix must not start with 'mscrm' (reserved by Microsoft)"
    )


CONFIG = """\
version: 1
solution: ContosoFlows
references:
  "{name}":
    connector: shared_sharepointonline
    display_name: SharePoint
environments:
  dev:
    url: http://127.0.0.1:8080
    auth: a
    bindings:
      "{name}": {{owner: svc-flows@contoso.com}}
auth:
  a: {{method: azure_cli}}
"""


@settings(max_examples=60, deadline=None)
@given(st.one_of(VALID, NEAR.filter(lambda s: '"' not in s and "\\" not in s and "\t" not in s)))
def test_loader_applies_the_same_rule(name: str) -> None:
    text = CONFIG.format(name=name)
    if oracle(name):
        config = load_config_text(text, "connref.yaml")
        assert list(config.references) == [name]
        assert list(config.environments["dev"].bindings) == [name]
    else:
        try:
            load_config_text(text, "connref.yaml")
        except ConfigError as err:
            assert f"connref.yaml:4:3: references.{name}: invalid logical name: " in str(err)
        else:
            raise AssertionError(f"{name!r} was accepted")
