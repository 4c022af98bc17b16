"""The config's YAML is read by one of several paths: the direct builder over libyaml's events (plain
documents), libyaml's composer (anchors, tags, merge keys, duplicates...), or the pure-Python loader
(no libyaml, or a document libyaml refuses). For generated documents they must give the same located
tree and the same errors, and the loader, which skips its secret scan when the builder's strings show
nothing secret-looking, must report exactly what the full scan reports."""

from __future__ import annotations

from collections.abc import Sequence
from unittest import mock

from hypothesis import given
from hypothesis import strategies as st

from reconciler.config import loader, yamlsource
from reconciler.errors import ConfigError

# Scalars as written in a document: plain ones that read as strings, numbers, booleans, null, dates;
# quoted ones (with escapes); values shaped like secrets; and ODD ones the direct builder leaves to the
# composer (a merge key, an undefined alias, tags, an impossible date, an integer too long).
FLOW_SAFE = [
    "text", "Bench 1", "12", "-2", "0x1F", "1.5", ".inf", "true", "False", "yes", "on", "~", "null",
    "2026-03-01", "2026-03-01T09:00:00Z", "6f1c2a3b-0c4d-4e5f-8a9b-0c1d2e3f4a5b",
    "0f3a9e0c6d2b4e1f9a8b7c6d5e4f3a2b", "svc@contoso.com", "shared_sql", "contoso_Sql",
    "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl", "Xy71Q~abcdefghijklmnopqrstuvwxyz0123456_",
    "Qm82Q~Abcdefghijklmnopqrstuvwxyz01234.5",
    "'single'", "'it''s'", '"double"', '"\\x51~ not a secret"', '"ey\\x4A"', '"tab\\there"', "''", '""', "'12'",
    '"-----BEGIN PRIVATE KEY-----"',
]
BLOCK_ONLY = ["https://contoso.crm4.dynamics.com", "-----BEGIN RSA PRIVATE KEY----- MIIEvQ"]
ODD = ["<<", "a: b", "*nowhere", "!!str 5", "!vault x", "2026-13-45", "1" + "0" * 40]
PLAIN_KEYS = ["connector", "display_name", "description", "client_secret_env", "on", "1", "'quoted key'", '"dq"',
              "version", "a", "b", "c"]
SECRET_KEYS = ["client_secret", "api-key", "Password", "x_token", "mytoken", "sas"]
KEYS = PLAIN_KEYS + SECRET_KEYS
SECTIONS = ["version", "solution", "references", "environments", "auth", "state", "lint"]

Tree = tuple[str, object]


def _first_of_each_key(pairs: Sequence[tuple[str, object]]) -> list[tuple[str, object]]:
    return list({k: (k, v) for k, v in reversed(pairs)}.values())[::-1]


def _trees(odd: bool, keys: list[str] = KEYS) -> st.SearchStrategy[Tree]:
    """Documents as trees to render; without ``odd``, plain ones (the direct builder's), keys unique."""
    flow = FLOW_SAFE + ODD if odd else FLOW_SAFE
    keys = [*keys, "<<"] if odd else keys
    scalar = st.sampled_from(flow + BLOCK_ONLY).map(lambda s: ("scalar", s))

    def pairs(values: st.SearchStrategy[object], size: int) -> st.SearchStrategy[list[tuple[str, object]]]:
        drawn = st.lists(st.tuples(st.sampled_from(keys), values), max_size=size)
        return drawn if odd else drawn.map(_first_of_each_key)

    def collections(children: st.SearchStrategy[Tree]) -> st.SearchStrategy[Tree]:
        return st.one_of(
            pairs(children, 4).map(lambda p: ("map", p)),
            st.lists(children, max_size=4).map(lambda items: ("seq", items)),
            pairs(st.sampled_from(flow), 3).map(lambda p: ("flowmap", p)),
            st.lists(st.sampled_from(flow), max_size=3).map(lambda items: ("flowseq", items)),
        )

    return st.recursive(scalar, collections, max_leaves=25)


def _inline(tree: Tree) -> str | None:
    """The tree on one line, or None for a block collection."""
    kind, body = tree
    if kind == "scalar":
        return str(body)
    if kind == "flowmap":
        return "{" + ", ".join(f"{k}: {v}" for k, v in body) + "}"  # type: ignore[attr-defined]
    if kind == "flowseq":
        return "[" + ", ".join(body) + "]"  # type: ignore[arg-type]
    if not body:
        return "{}" if kind == "map" else "[]"
    return None


def _render(tree: Tree, indent: int) -> list[str]:
    pad = " " * indent
    kind, body = tree
    inline = _inline(tree)
    if inline is not None:
        return [pad + inline]
    lines: list[str] = []
    for entry in body:  # type: ignore[attr-defined]
        head, value = (f"{entry[0]}:", entry[1]) if kind == "map" else ("-", entry)
        child = _inline(value)
        if child is not None:
            lines.append(f"{pad}{head} {child}")
        else:
            lines.append(pad + head)
            lines.extend(_render(value, indent + 2))
    return lines


def _text(tree: Tree) -> str:
    return "\n".join(_render(tree, 0)) + "\n"


PLAIN_TREES = _trees(odd=False)
ANY_TREES = st.one_of(PLAIN_TREES, _trees(odd=True))


@st.composite
def documents(draw: st.DrawFn) -> str:
    return _text(draw(ANY_TREES))


NO_SECRET_KEYS = _trees(odd=False, keys=PLAIN_KEYS)


@st.composite
def configs(draw: st.DrawFn) -> str:
    """A plain document whose top-level keys are mostly a config's sections; in half of them no key is
    secret-named, so only a value can make the scan run."""
    trees = draw(st.sampled_from([PLAIN_TREES, NO_SECRET_KEYS]))
    sections = draw(st.lists(st.tuples(st.sampled_from(SECTIONS + PLAIN_KEYS), trees), min_size=1, max_size=6))
    return _text(("map", _first_of_each_key(sections)))


def _flat(tree: yamlsource.YNode | None) -> list[tuple[object, ...]]:
    if tree is None:
        return []
    return [(type(n).__name__, n.loc, n.broken, n.value if isinstance(n, yamlsource.Scalar) else None,
             n.text if isinstance(n, yamlsource.Scalar) else None,
             n.quoted if isinstance(n, yamlsource.Scalar) else None) for n in yamlsource.walk(tree)]


@given(documents())
def test_libyaml_and_pure_python_read_the_same_tree(text: str) -> None:
    fast = yamlsource.parse_document(text, "g.yaml")
    pure = yamlsource.parse_document(text, "g.yaml", fast=False)
    assert pure.strings is None
    assert _flat(fast.tree) == _flat(pure.tree)
    assert [str(e) for e in fast.errors] == [str(e) for e in pure.errors]


@given(documents())
def test_the_direct_builder_hands_over_every_string_and_an_index_of_each_mapping(text: str) -> None:
    parsed = yamlsource.parse_document(text, "g.yaml")
    if parsed.strings is None or parsed.tree is None:
        return  # not a plain document: the composer made it
    keys: list[str] = []
    values: list[str] = []
    for node in yamlsource.walk(parsed.tree):
        if isinstance(node, yamlsource.Map):
            keys.extend(k.text for k, _ in node.pairs)
            assert node.index is not None and len(node.index) == len(node.pairs)
            assert all(node.get(k.text) is v for k, v in node.pairs)
        elif isinstance(node, yamlsource.Scalar) and isinstance(node.value, str):
            values.append(node.value)
    for key in keys:  # keys are Scalars too: take them out of the values
        values.remove(key)
    assert sorted(parsed.strings.keys) == sorted(keys)
    assert sorted(parsed.strings.values) == sorted(values)


def _outcome(text: str) -> object:
    try:
        return loader.load_config_text(text, "/nowhere/g.yaml")
    except ConfigError as exc:
        return str(exc)


@given(configs())
def test_skipping_the_secret_scan_changes_no_error(text: str) -> None:
    # Without libyaml there are no builder strings: the secret scan walks every node.
    with mock.patch.object(yamlsource, "FAST_LOADER", None):
        walked = _outcome(text)
    assert _outcome(text) == walked


def test_the_screen_misses_no_secret_named_key_or_secret_shaped_value() -> None:
    def screened(keys: list[str], values: list[str]) -> bool:
        return loader._may_hold_secrets(yamlsource.Strings(keys, values))

    assert not screened(["client_secret_env", "connections_url", "access_token_env"], ["CONNREF_SECRET", "x"])
    for key in ("client_secret", "Client-Secret", "api-key", "x_token", "sas", "private_key\n", "PRIVATEKEY"):
        assert loader._secret_key(key)
        assert screened(["a", key, "b"], [])
    for value in ("-----BEGIN RSA PRIVATE KEY-----", "eyJhbGciOiJSUzI1NiJ9", "Xy71Q~abc"):
        assert screened([], ["a", value])
        assert screened([f"x{value}"], [])
