"""The OData query options the emulator understands: ``$filter`` (tokenizer + recursive-descent parser),
``$select``, ``$orderby`` and ``$top``.

Follows the subset Dataverse documents for the Web API (powerapps-docs
``developer/data-platform/webapi/query/filter-rows.md``, ``select-columns.md``, ``order-rows.md``):
comparison operators ``eq ne gt ge lt le``, ``and``/``or``/``not``, parentheses, the functions
``startswith``, ``endswith`` and ``contains``, string literals in single quotes with a quote escaped
by doubling it (OData ABNF ``SQUOTE-in-string``), GUID literals without quotes, numbers, ``true``,
``false`` and ``null``. String comparison is case-insensitive, as Dataverse's SQL collation is
(docs/dataverse.md §3.6: observed behaviour, not stated in the docs).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

_R = TypeVar("_R")


class ODataError(ValueError):
    """A query option that cannot be parsed; the Dataverse routes answer it with a 400."""


def quote(value: str) -> str:
    """A string literal for a ``$filter``: single quotes around, every quote inside doubled."""
    return "'" + value.replace("'", "''") + "'"


# --------------------------------------------------------------------------- tokenizer

_GUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?![\w-])")
_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?(?![\w.])")
_IDENT_RE = re.compile(r"[A-Za-z_@$][A-Za-z0-9_./@]*")


@dataclass(frozen=True)
class Token:
    kind: str  # "str", "guid", "num", "ident", "(", ")", ","
    value: Any
    pos: int


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        if c in "(),":
            tokens.append(Token(c, c, i))
            i += 1
            continue
        if c == "'":
            start = i
            i += 1
            out: list[str] = []
            while True:
                if i >= n:
                    raise ODataError(f"Syntax error: unterminated string literal at position {start} in $filter")
                if text[i] == "'":
                    if i + 1 < n and text[i + 1] == "'":
                        out.append("'")
                        i += 2
                        continue
                    i += 1
                    break
                out.append(text[i])
                i += 1
            tokens.append(Token("str", "".join(out), start))
            continue
        m = _GUID_RE.match(text, i)
        if m:
            tokens.append(Token("guid", m.group(0).lower(), i))
            i = m.end()
            continue
        m = _NUMBER_RE.match(text, i)
        if m:
            s = m.group(0)
            tokens.append(Token("num", float(s) if "." in s else int(s), i))
            i = m.end()
            continue
        m = _IDENT_RE.match(text, i)
        if m:
            tokens.append(Token("ident", m.group(0), i))
            i = m.end()
            continue
        raise ODataError(f"Syntax error: character '{c}' is not valid at position {i} in $filter")
    return tokens


# --------------------------------------------------------------------------- AST

#: How a compiled filter reads a property of a row: ``getter(name)(row)`` is the value ``Prop(name)`` sees.
Getter = Callable[[Any], Any]
GetterFactory = Callable[[str], Getter]


def mapping_getter(name: str) -> Getter:
    """The getter of a property from a plain mapping (what ``Prop.value`` reads)."""
    return lambda row: row.get(name)


class Node:
    def value(self, row: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    def test(self, row: Mapping[str, Any]) -> bool:
        return bool(self.value(row))

    def properties(self) -> set[str]:
        return set()

    def evaluator(self, get: GetterFactory) -> Callable[[Any], Any]:
        """``value`` compiled into a closure (the tree is walked once, not once per row); ``get`` says how a
        property is read from a row."""
        raise NotImplementedError

    def predicate(self, get: GetterFactory) -> Callable[[Any], bool]:
        """``test`` compiled into a closure: the same answer as ``test`` for every row
        (tests/unit/test_odata_compiled.py checks it against the tree on generated filters and rows)."""
        value = self.evaluator(get)
        return lambda row: bool(value(row))


@dataclass(frozen=True)
class Literal(Node):
    v: Any
    kind: str  # "str", "guid", "num", "bool", "null"

    def value(self, row: Mapping[str, Any]) -> Any:
        return self.v

    def evaluator(self, get: GetterFactory) -> Callable[[Any], Any]:
        v = self.v
        return lambda row: v


@dataclass(frozen=True)
class Prop(Node):
    name: str

    def value(self, row: Mapping[str, Any]) -> Any:
        return row.get(self.name)

    def properties(self) -> set[str]:
        return {self.name}

    def evaluator(self, get: GetterFactory) -> Callable[[Any], Any]:
        return get(self.name)


def _norm(v: Any) -> Any:
    return v.lower() if isinstance(v, str) else v


def _compare(op: str, a: Any, b: Any) -> bool:
    if op in ("eq", "ne"):
        if a is None or b is None:
            same = a is None and b is None
        elif isinstance(a, bool) or isinstance(b, bool):
            same = a is b or (isinstance(a, bool) and isinstance(b, bool) and a == b)
        else:
            same = _norm(a) == _norm(b)
        return same if op == "eq" else not same
    if a is None or b is None:
        return False  # SQL semantics: an ordering comparison with null is never true
    a, b = _norm(a), _norm(b)
    if isinstance(a, str) != isinstance(b, str):
        return False
    try:
        if op == "gt":
            return bool(a > b)
        if op == "ge":
            return bool(a >= b)
        if op == "lt":
            return bool(a < b)
        return bool(a <= b)
    except TypeError:
        return False


def _equals(b: Any) -> Callable[[Any], bool]:
    """``_compare("eq", a, b)`` for a fixed ``b`` (a literal), as a function of ``a`` alone: the literal's case
    folded once instead of once per row. Each branch is ``_compare``'s answer for that kind of ``b``."""
    if b is None:
        return lambda a: a is None
    if isinstance(b, bool):
        return lambda a: a is b  # only the same boolean equals a boolean (True and False are singletons)
    if isinstance(b, str):
        folded = b.lower()
        return lambda a: isinstance(a, str) and a.lower() == folded  # a string never equals a non-string
    return lambda a: a is not None and not isinstance(a, bool) and a == b  # a number


@dataclass(frozen=True)
class Compare(Node):
    op: str
    left: Node
    right: Node

    def value(self, row: Mapping[str, Any]) -> Any:
        return _compare(self.op, self.left.value(row), self.right.value(row))

    def properties(self) -> set[str]:
        return self.left.properties() | self.right.properties()

    def evaluator(self, get: GetterFactory) -> Callable[[Any], Any]:
        op = self.op
        if op in ("eq", "ne") and (isinstance(self.left, Literal) or isinstance(self.right, Literal)):
            # eq/ne are symmetric in _compare: compare the other side with the literal.
            lit, other = (self.right, self.left) if isinstance(self.right, Literal) else (self.left, self.right)
            assert isinstance(lit, Literal)
            side = other.evaluator(get)
            equals = _equals(lit.v)
            if op == "eq":
                return lambda row: equals(side(row))
            return lambda row: not equals(side(row))
        left, right = self.left.evaluator(get), self.right.evaluator(get)
        return lambda row: _compare(op, left(row), right(row))

    def predicate(self, get: GetterFactory) -> Callable[[Any], bool]:
        return self.evaluator(get)  # a comparison's value is already a bool


@dataclass(frozen=True)
class BoolOp(Node):
    op: str  # "and" | "or"
    left: Node
    right: Node

    def value(self, row: Mapping[str, Any]) -> Any:
        if self.op == "and":
            return self.left.test(row) and self.right.test(row)
        return self.left.test(row) or self.right.test(row)

    def properties(self) -> set[str]:
        return self.left.properties() | self.right.properties()

    def evaluator(self, get: GetterFactory) -> Callable[[Any], Any]:
        left, right = self.left.predicate(get), self.right.predicate(get)
        if self.op == "and":
            return lambda row: left(row) and right(row)
        return lambda row: left(row) or right(row)

    def predicate(self, get: GetterFactory) -> Callable[[Any], bool]:
        return self.evaluator(get)  # both sides are bools


@dataclass(frozen=True)
class Not(Node):
    operand: Node

    def value(self, row: Mapping[str, Any]) -> Any:
        return not self.operand.test(row)

    def properties(self) -> set[str]:
        return self.operand.properties()

    def evaluator(self, get: GetterFactory) -> Callable[[Any], Any]:
        operand = self.operand.predicate(get)
        return lambda row: not operand(row)

    def predicate(self, get: GetterFactory) -> Callable[[Any], bool]:
        return self.evaluator(get)


def _str_func(f: Callable[[str, str], bool]) -> Callable[[Any, Any], bool]:
    def run(a: Any, b: Any) -> bool:
        if not isinstance(a, str) or not isinstance(b, str):
            return False
        return f(a.lower(), b.lower())

    return run


FUNCTIONS: dict[str, Callable[[Any, Any], bool]] = {
    "startswith": _str_func(lambda a, b: a.startswith(b)),
    "endswith": _str_func(lambda a, b: a.endswith(b)),
    "contains": _str_func(lambda a, b: b in a),
}


@dataclass(frozen=True)
class Func(Node):
    name: str
    args: tuple[Node, ...]

    def value(self, row: Mapping[str, Any]) -> Any:
        return FUNCTIONS[self.name](self.args[0].value(row), self.args[1].value(row))

    def properties(self) -> set[str]:
        out: set[str] = set()
        for a in self.args:
            out |= a.properties()
        return out

    def evaluator(self, get: GetterFactory) -> Callable[[Any], Any]:
        run = FUNCTIONS[self.name]
        first, second = self.args[0].evaluator(get), self.args[1].evaluator(get)
        return lambda row: run(first(row), second(row))

    def predicate(self, get: GetterFactory) -> Callable[[Any], bool]:
        return self.evaluator(get)  # the string functions answer bools


# --------------------------------------------------------------------------- parser

_CMP_OPS = {"eq", "ne", "gt", "ge", "lt", "le"}
_KEYWORDS = {"true": (True, "bool"), "false": (False, "bool"), "null": (None, "null")}


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0

    def peek(self) -> Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> Token:
        tok = self.peek()
        if tok is None:
            raise ODataError("Syntax error: unexpected end of $filter")
        self.i += 1
        return tok

    def expect(self, kind: str) -> Token:
        tok = self.take()
        if tok.kind != kind:
            raise ODataError(f"Syntax error: expected '{kind}' at position {tok.pos} in $filter")
        return tok

    def at_ident(self, *words: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.kind == "ident" and tok.value in words

    def parse(self) -> Node:
        node = self.parse_or()
        tok = self.peek()
        if tok is not None:
            raise ODataError(f"Syntax error at position {tok.pos} in $filter: unexpected '{tok.value}'")
        return node

    def parse_or(self) -> Node:
        node = self.parse_and()
        while self.at_ident("or"):
            self.take()
            node = BoolOp("or", node, self.parse_and())
        return node

    def parse_and(self) -> Node:
        node = self.parse_not()
        while self.at_ident("and"):
            self.take()
            node = BoolOp("and", node, self.parse_not())
        return node

    def parse_not(self) -> Node:
        if self.at_ident("not"):
            self.take()
            return Not(self.parse_not())
        return self.parse_cmp()

    def parse_cmp(self) -> Node:
        left = self.parse_primary()
        tok = self.peek()
        if tok is not None and tok.kind == "ident" and tok.value in _CMP_OPS:
            self.take()
            right = self.parse_primary()
            return Compare(tok.value, left, right)
        if isinstance(left, (Compare, BoolOp, Not, Func)):
            return left
        if isinstance(left, Literal) and left.kind == "bool":
            return left
        where = f"position {tok.pos}" if tok else "the end"
        raise ODataError(f"Syntax error: expected a comparison operator at {where} in $filter")

    def parse_primary(self) -> Node:
        tok = self.take()
        if tok.kind == "(":
            node = self.parse_or()
            self.expect(")")
            return node
        if tok.kind == "str":
            return Literal(tok.value, "str")
        if tok.kind == "guid":
            return Literal(tok.value, "guid")
        if tok.kind == "num":
            return Literal(tok.value, "num")
        if tok.kind == "ident":
            word = tok.value
            if word in _KEYWORDS:
                v, kind = _KEYWORDS[word]
                return Literal(v, kind)
            nxt = self.peek()
            if nxt is not None and nxt.kind == "(":
                if word not in FUNCTIONS:
                    raise ODataError(f"Syntax error: unknown function '{word}' in $filter")
                self.take()
                a = self.parse_primary()
                self.expect(",")
                b = self.parse_primary()
                self.expect(")")
                return Func(word, (a, b))
            if word in _CMP_OPS or word in ("and", "or", "not"):
                raise ODataError(f"Syntax error: unexpected '{word}' at position {tok.pos} in $filter")
            return Prop(word)
        raise ODataError(f"Syntax error: unexpected '{tok.value}' at position {tok.pos} in $filter")


# Parsed filters are remembered by their text (a client sends the same few filters to every environment). It
# cannot change an answer: parsing depends on the text alone, the tree is immutable (frozen dataclasses), and a
# text that does not parse is not remembered (the error is raised again each time).
@functools.lru_cache(maxsize=256)
def parse_filter(text: str) -> Node:
    """Parse a ``$filter`` expression into a tree whose ``test(row)`` says whether a row matches."""
    if not text.strip():
        raise ODataError("Syntax error: empty $filter")
    return _Parser(text).parse()


def compile_filter(node: Node, get: GetterFactory = mapping_getter) -> Callable[[Any], bool]:
    """``node.test`` as one closure per query: what the emulator runs on every row of a collection."""
    return node.predicate(get)


# --------------------------------------------------------------------------- $select / $orderby / $top

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_select(text: str) -> list[str]:
    cols = [c.strip() for c in text.split(",")]
    for c in cols:
        if not _NAME_RE.match(c):
            raise ODataError(f"Syntax error: '{c}' is not a valid property name in $select")
    return cols


def parse_orderby(text: str) -> list[tuple[str, bool]]:
    """``"a desc, b"`` -> ``[("a", True), ("b", False)]`` (the bool says descending)."""
    keys: list[tuple[str, bool]] = []
    for item in text.split(","):
        parts = item.split()
        if not parts or len(parts) > 2 or not _NAME_RE.match(parts[0]):
            raise ODataError(f"Syntax error: '{item.strip()}' is not a valid $orderby item")
        direction = parts[1].lower() if len(parts) == 2 else "asc"
        if direction not in ("asc", "desc"):
            raise ODataError(f"Syntax error: '{parts[1]}' is not asc or desc in $orderby")
        keys.append((parts[0], direction == "desc"))
    return keys


def parse_top(text: str) -> int:
    if not text.strip().isdigit():
        raise ODataError(f"Invalid value '{text}' for $top: a non-negative integer is required")
    return int(text.strip())


def _sort_key(v: Any) -> tuple[int, Any]:
    if v is None:
        return (0, 0)  # SQL Server sorts nulls first in ascending order
    if isinstance(v, bool):
        return (1, int(v))
    if isinstance(v, (int, float)):
        return (2, v)
    return (3, str(v).lower())


def _sort_key_of(get: Getter) -> Callable[[Any], tuple[int, Any]]:
    """The sort key of a row by the value ``get`` reads from it."""

    def key(row: Any) -> tuple[int, Any]:
        v = get(row)
        if type(v) is str:  # the common case, without a call: the key _sort_key gives a string
            return (3, v.lower())
        return _sort_key(v)

    return key


def order_by(rows: Iterable[_R], keys: list[tuple[Getter, bool]]) -> list[_R]:
    """Stable multi-key sort on the values the getters read (the bool says descending): the keys applied
    last to first."""
    out = list(rows)
    for get, desc in reversed(keys):
        out.sort(key=_sort_key_of(get), reverse=desc)
    return out


def order_rows(rows: list[dict[str, Any]], keys: list[tuple[str, bool]]) -> list[dict[str, Any]]:
    """Stable multi-key sort of mappings by the named columns: apply the keys last to first."""
    return order_by(rows, [(mapping_getter(name), desc) for name, desc in keys])
