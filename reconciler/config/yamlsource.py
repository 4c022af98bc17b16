"""Line-aware YAML: parse a file into a small tree of nodes that remember their ``file:line:column``.

PyYAML's ``safe_load`` throws positions away and silently keeps the last of two duplicate keys.
The config loader needs both right, so this module works from the composer's node graph
(``get_single_node``), where every node carries start marks, and builds:

- ``Scalar`` (a constructed Python value plus the source text and whether it was quoted),
- ``Map`` (ordered ``(key, value)`` pairs, merge keys ``<<`` already applied), and
- ``Seq``.

Duplicate keys, non-scalar keys, recursive aliases and bad merge values are collected as
``ConfigError``s (with the dotted field path) instead of being raised one at a time, so the loader
can report everything it finds in one pass. Anchors and aliases are allowed; an aliased node is
converted once and shared, which keeps "billion laughs" documents linear.

Speed: libyaml (``yaml.CSafeLoader``, about ten times faster than the pure-Python scanner; its marks
carry the same 0-based line and column) is used when PyYAML was built with it. A plain document (no
anchors, aliases, tags, merge keys or duplicate keys: what a config almost always is) is built
straight from libyaml's events, skipping PyYAML's node graph; any other goes through the composer as
before. A document libyaml refuses is parsed again with the pure-Python ``yaml.SafeLoader``, whose
messages are the ones users see, so every ``file:line:column`` error reads the same with or without
libyaml; so does a machine without libyaml, which simply uses the pure-Python loader.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

try:
    FAST_LOADER: type[yaml.SafeLoader] | None = yaml.CSafeLoader  # type: ignore[assignment]  # stubs: no SafeLoader subclass
except AttributeError:  # PyYAML built without libyaml
    FAST_LOADER = None

from reconciler.errors import ConfigError, Location

MERGE_TAG = "tag:yaml.org,2002:merge"
_STD = "tag:yaml.org,2002:"
_STR = _STD + "str"
_INT = _STD + "int"
# Plain YAML only: a config never needs ``!!python/...`` or application tags.
ALLOWED_TAGS = frozenset(_STD + t for t in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp"))


@dataclass(eq=False, slots=True)
class YNode:
    """Base of the located tree; ``loc`` is where the node starts in the file."""

    loc: Location
    broken: bool = field(default=False, kw_only=True)  # already reported; say nothing more about it


@dataclass(eq=False, slots=True)
class Scalar(YNode):
    value: Any
    text: str
    quoted: bool = False


@dataclass(eq=False, slots=True)
class Seq(YNode):
    items: list[YNode] = field(default_factory=list)


@dataclass(eq=False, slots=True)
class Map(YNode):
    """An ordered mapping. Keys are the source text of scalar keys (so ``on:`` stays ``"on"``)."""

    pairs: list[tuple[Scalar, YNode]] = field(default_factory=list)
    # Each key's value. Keys are unique once parsed (duplicates are reported and dropped), so ``get``
    # answers from a dict: the direct builder hands over the one it filled while checking for
    # duplicates; for any other mapping it is built on first use. ``pairs`` is not changed once built.
    index: dict[str, YNode] | None = field(default=None, repr=False)

    def key_texts(self) -> list[str]:
        return [k.text for k, _ in self.pairs]

    def get(self, key: str) -> YNode | None:
        index = self.index
        if index is None:
            index = {}
            for k, v in self.pairs:
                index.setdefault(k.text, v)
            self.index = index
        return index.get(key)

    def key_node(self, key: str) -> Scalar | None:
        for k, _ in self.pairs:
            if k.text == key:
                return k
        return None


def join_path(parent: str, key: str | int) -> str:
    """Field paths as users read them: ``environments.dev.bindings.contoso_X``, ``lint.ignore[0]``."""
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else key


#: Deepest nesting a config may have. A connref config nests five levels (environments.dev.bindings.x.owner);
#: anything far deeper is refused before the tree is built, so no input can exhaust the recursion.
MAX_NESTING = 64
#: Longest integer a config may hold: no setting takes more (and Python refuses past 4,300 digits).
MAX_INT_DIGITS = 30


class _TooDeep(Exception):
    """The document nests deeper than ``MAX_NESTING`` (``error`` says where)."""

    def __init__(self, error: ConfigError) -> None:
        super().__init__(str(error))
        self.error = error


def _too_deep(file: str, mark: Any) -> _TooDeep:
    return _TooDeep(ConfigError(
        f"the YAML nests deeper than {MAX_NESTING} levels here; a connref config nests five at most "
        "(environments: NAME: bindings: REFERENCE: owner)", Location(file, mark.line + 1, mark.column + 1)))


def _long_int(tag: str, value: str) -> str | None:
    """The problem with an integer literal too long to be any setting, or None."""
    if tag != _INT:
        return None
    digits = sum(ch.isdigit() for ch in value)
    if digits <= MAX_INT_DIGITS:
        return None
    return (f"an integer of {digits} digits: no setting takes a number that long "
            "(put it in quotes if you meant text)")


def _check_depth(loader_class: Any, text: str, file: str) -> None:
    """Raise ``_TooDeep`` when the document nests deeper than ``MAX_NESTING`` (from the parser's events,
    which need no recursion; the composer that follows does)."""
    loader: Any = loader_class(text)
    try:
        depth = 0
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
                depth += 1
                if depth > MAX_NESTING:
                    raise _too_deep(file, event.start_mark)
            elif isinstance(event, yaml.SequenceEndEvent | yaml.MappingEndEvent):
                depth -= 1
    finally:
        loader.dispose()


def _loc(file: str, node: Node) -> Location:
    return Location(file, node.start_mark.line + 1, node.start_mark.column + 1)


def _reader_error(file: str, text: str, exc: yaml.reader.ReaderError) -> ConfigError:
    """A character YAML does not allow in a text (NUL, other control characters), at its line and column."""
    position = max(0, min(int(exc.position), len(text)))
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    code = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "\0")
    what = "a NUL character" if code == 0 else f"the control character U+{code:04X}"
    return ConfigError(f"the config holds {what}, which YAML does not allow; a config is plain text",
                       Location(file, line, column))


def _syntax_error(file: str, exc: yaml.YAMLError, text: str = "") -> ConfigError:
    if isinstance(exc, yaml.reader.ReaderError):
        return _reader_error(file, text, exc)
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if problem == "but found another document" and mark is not None:
        return ConfigError(
            "a config file holds one YAML document; remove the second '---' and what follows",
            Location(file, mark.line + 1, mark.column + 1),
        )
    context = getattr(exc, "context", None)
    message = f"invalid YAML: {problem}"
    context_mark = getattr(exc, "context_mark", None)
    if context and context_mark is not None and context_mark is not mark:
        message += f" ({context} at line {context_mark.line + 1}, column {context_mark.column + 1})"
    location = Location(file, mark.line + 1, mark.column + 1) if mark is not None else None
    return ConfigError(message, location)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _paired(text: str) -> str:
    """``text`` with each UTF-16 surrogate pair (two ``\\u`` escapes, as JSON writes a character beyond
    U+FFFF) made the one character it stands for. Only the pure loader lets surrogates through (libyaml
    refuses them, and connref then reads the document with the pure one). A half without its other half
    is kept as it is: live data can hold one (Dataverse keeps UTF-16), and ``import`` writes it back as
    the same escape, so the config round-trips; everything that shows or encodes text is ready for it."""
    if not _SURROGATE.search(text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")


class _Converter:
    def __init__(self, file: str, loader: Any) -> None:
        self.file = file
        self.loader = loader
        self.errors: list[ConfigError] = []
        self.done: dict[int, YNode] = {}
        self.active: set[int] = set()

    def convert(self, node: Node, path: str) -> YNode:
        nid = id(node)
        done = self.done.get(nid)
        if done is not None:
            return done
        if node.tag == _STR and type(node) is ScalarNode:
            # Most of a config: a string scalar cannot recurse, and the constructor would return its
            # text unchanged (memoised all the same: an alias of it stays one shared node).
            mark = node.start_mark
            value = node.value
            value = _paired(value)
            text = self.done[nid] = Scalar(Location(self.file, mark.line + 1, mark.column + 1), value, value,
                                           quoted=node.style in ("'", '"'))
            return text
        if nid in self.active:
            self.errors.append(
                ConfigError("recursive alias (an anchor used inside itself)", _loc(self.file, node), path or None)
            )
            return Scalar(_loc(self.file, node), None, "", broken=True)
        if node.tag not in ALLOWED_TAGS:
            shown = node.tag.replace(_STD, "!!")
            self.errors.append(
                ConfigError(f"unsupported tag {shown}; connref reads plain YAML", _loc(self.file, node), path or None)
            )
            return Scalar(_loc(self.file, node), None, "", broken=True)
        self.active.add(nid)
        try:
            result: YNode
            if isinstance(node, ScalarNode):
                result = self._scalar(node, path)
            elif isinstance(node, SequenceNode):
                result = Seq(
                    _loc(self.file, node),
                    [self.convert(n, join_path(path, i)) for i, n in enumerate(node.value)],
                )
            elif isinstance(node, MappingNode):
                result = self._mapping(node, path)
            else:  # pragma: no cover - the composer makes only these three
                raise TypeError(type(node))
        finally:
            self.active.discard(nid)
        self.done[nid] = result
        return result

    def _scalar(self, node: ScalarNode, path: str) -> Scalar:
        loc = _loc(self.file, node)
        long_int = _long_int(node.tag, str(node.value))
        if long_int:
            self.errors.append(ConfigError(long_int, loc, path or None))
            return Scalar(loc, None, str(node.value), broken=True)
        try:
            value = self.loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError) as exc:
            # Unknown tags (``!!python/object``, ``!vault``) and malformed timestamps land here; an
            # impossible date (2026-13-45) is a ValueError from the constructor.
            problem = getattr(exc, "problem", None) or (
                "not a valid date; put it in quotes if you meant text" if isinstance(exc, ValueError)
                else "cannot read this value")
            self.errors.append(ConfigError(problem, loc, path or None))
            return Scalar(loc, None, str(node.value), broken=True)
        return Scalar(loc, value, str(node.value), quoted=node.style in ("'", '"'))

    def _mapping(self, node: MappingNode, path: str) -> Map:
        loc = _loc(self.file, node)
        explicit: list[tuple[Scalar, YNode]] = []
        seen: dict[str, Scalar] = {}
        merges: list[Map] = []
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode) and key_node.tag == MERGE_TAG:
                merges.extend(self._merge_sources(value_node, path))
                continue
            if not isinstance(key_node, ScalarNode):
                self.errors.append(
                    ConfigError(
                        "a key must be a plain string, not a list or mapping",
                        _loc(self.file, key_node),
                        path or None,
                    )
                )
                continue
            key_text = _paired(str(key_node.value))
            key = Scalar(_loc(self.file, key_node), key_text, key_text, key_node.style in ("'", '"'))
            key_path = join_path(path, key.text)
            if key.text in seen:
                first = seen[key.text].loc
                self.errors.append(
                    ConfigError(
                        f"duplicate key; first defined at line {first.line}, column {first.column} "
                        "(YAML would silently keep only the last one)",
                        key.loc,
                        key_path,
                    )
                )
                continue
            seen[key.text] = key
            explicit.append((key, self.convert(value_node, key_path)))
        if not merges:
            return Map(loc, explicit)
        # YAML merge-key semantics (https://yaml.org/type/merge.html): explicit keys win; among
        # several merged mappings, the earlier one wins.
        pairs: list[tuple[Scalar, YNode]] = []
        taken = set(seen)
        for source in merges:
            for k, v in source.pairs:
                if k.text not in taken:
                    taken.add(k.text)
                    pairs.append((k, v))
        return Map(loc, pairs + explicit)

    def _merge_sources(self, value_node: Node, path: str) -> list[Map]:
        sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
        maps: list[Map] = []
        for src in sources:
            converted = self.convert(src, path)
            if isinstance(converted, Map):
                maps.append(converted)
            else:
                self.errors.append(
                    ConfigError(
                        "a merge key (<<) takes a mapping or a list of mappings",
                        _loc(self.file, src),
                        path or None,
                    )
                )
        return maps


@dataclass(eq=False, slots=True)
class Strings:
    """The text of every key (``keys``) and of every other string value (``values``) of a tree, in no
    particular order, for a caller that screens them all (the loader's secret scan) without walking
    the tree."""

    keys: list[str] = field(default_factory=list)
    values: list[str] = field(default_factory=list)


@dataclass(eq=False, slots=True)
class Parsed:
    """What ``parse_document`` found: the located tree (None for an empty document), the structural
    errors, and the tree's ``strings`` when it was built straight from libyaml's events (None when
    it went through the composer: walk the tree for them)."""

    tree: YNode | None
    errors: list[ConfigError]
    strings: Strings | None = None


def parse(text: str, file: str, *, fast: bool = True) -> tuple[YNode | None, list[ConfigError]]:
    """Parse one YAML document. Returns the located tree (None for an empty document) and the
    structural errors found; a syntax error is returned as the only error. ``fast=False`` skips
    libyaml (tests compare the two)."""
    parsed = parse_document(text, file, fast=fast)
    return parsed.tree, parsed.errors


def parse_document(text: str, file: str, *, fast: bool = True) -> Parsed:
    """``parse``, with the strings of the tree when the direct builder made it."""
    if fast and FAST_LOADER is not None:
        try:
            strings = Strings()
            plain = _build_plain(FAST_LOADER, text, file, strings)
            if plain is not None:
                return Parsed(plain[0], plain[1], strings)
            return Parsed(*_parse_with(FAST_LOADER, text, file))
        except _TooDeep as exc:
            return Parsed(None, [exc.error])
        except yaml.YAMLError:
            pass  # the pure-Python loader says what is wrong, in the words users know
    try:
        return Parsed(*_parse_with(yaml.SafeLoader, text, file))
    except _TooDeep as exc:
        return Parsed(None, [exc.error])
    except yaml.YAMLError as exc:
        return Parsed(None, [_syntax_error(file, exc, text)])


def _parse_with(loader_class: type[yaml.SafeLoader], text: str, file: str) -> tuple[YNode | None, list[ConfigError]]:
    """Compose and convert with ``loader_class``; a syntax error is raised, and ``_TooDeep`` for a document
    nested too deeply to compose."""
    _check_depth(loader_class, text, file)
    loader = loader_class(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, []
        converter = _Converter(file, loader)
        tree = converter.convert(root, "")
        return tree, converter.errors
    finally:
        loader.dispose()


class _NotPlain(Exception):
    """The document uses something the direct builder leaves to the composer (anchors, aliases, tags,
    merge keys, duplicate or complex keys, several documents, a value that does not construct)."""


_QUOTED = ("'", '"')


def _build_plain(loader_class: Any, text: str, file: str,
                 strings: Strings | None = None) -> tuple[YNode | None, list[ConfigError]] | None:
    """The located tree built straight from libyaml's events, without PyYAML's node graph: most of
    the cost of a large config. Only for plain documents (what a config almost always is); returns None
    for anything else, which the composer path then handles (and reports) as before. The tree is the
    one ``_parse_with`` builds for the same text. ``strings``, when given, receives the text of every key
    and every string value of the tree."""
    loader: Any = loader_class(text)
    try:
        loader.get_event()  # StreamStart
        if loader.check_event(yaml.StreamEndEvent):
            return None, []
        loader.get_event()  # DocumentStart
        root = _plain_tree(loader, file, strings if strings is not None else Strings())
        loader.get_event()  # DocumentEnd
        if not loader.check_event(yaml.StreamEndEvent):
            return None  # a second document: the composer says so
        return root, []
    except _NotPlain:
        return None
    finally:
        loader.dispose()


def _plain_tree(loader: Any, file: str, strings: Strings) -> YNode:
    """The document's root node, from its events (after DocumentStart, up to DocumentEnd).

    One loop over the events, without recursion: the collections still open are kept on ``stack``
    (each with the key it is the value of), the innermost one in the locals ``loc``, ``items``,
    ``seen`` (its values so far by key, which becomes the ``Map``'s index; None for a sequence) and
    ``key`` (its key waiting for a value). Events are told apart by their exact type (libyaml makes no
    subclasses); this loop runs once per node of the document, so it binds what it uses to locals."""
    get_event = loader.get_event
    scalar_event = yaml.ScalarEvent
    mapping_start, mapping_end = yaml.MappingStartEvent, yaml.MappingEndEvent
    sequence_start, sequence_end = yaml.SequenceStartEvent, yaml.SequenceEndEvent
    new_tuple = tuple.__new__  # Location(...) without its Python-level __new__
    # ``loader.resolve`` without the call for most scalars: a quoted or block scalar (``implicit[0]``
    # false) is a string, and so is a plain one whose first character starts none of the loader's
    # implicit types (``null``, ``true``, numbers, dates...), as the resolver decides (without path
    # resolvers or wildcard resolvers, which the safe loaders do not have).
    resolvers = loader.yaml_implicit_resolvers
    no_wildcards = None not in resolvers and not loader.yaml_path_resolvers
    resolved: dict[tuple[str, Any], str] = {}
    keys, values = strings.keys, strings.values
    stack: list[tuple[Location, list[Any], dict[str, YNode] | None, Scalar | None]] = []
    loc: Location = Location(file, 0, 0)
    items: list[Any] | None = None  # None: at the root, outside any collection
    seen: dict[str, YNode] | None = None
    key: Scalar | None = None
    node: YNode
    while True:
        event = get_event()
        kind = type(event)
        if seen is not None and key is None:  # a key of the innermost mapping, or its end
            if kind is mapping_end:
                node = Map(loc, items, seen)  # type: ignore[arg-type]  # a mapping's items are its pairs
                loc, items, seen, key = stack.pop()
            else:
                if kind is not scalar_event or event.anchor is not None or (
                    event.tag is not None and event.tag != "!"
                ):
                    raise _NotPlain  # a complex key, an alias, an anchor or a tag: the composer path's
                text = event.value
                if text in seen or text == "<<":
                    raise _NotPlain  # a duplicate (reported by the composer path), or a merge key
                mark: Any = event.start_mark
                key = Scalar(new_tuple(Location, (file, mark.line + 1, mark.column + 1)), text, text,
                             event.style in _QUOTED)
                keys.append(text)
                continue
        elif kind is sequence_end:
            node = Seq(loc, items)  # type: ignore[arg-type]  # inside a sequence, items is a list
            loc, items, seen, key = stack.pop()
        else:
            if event.anchor is not None or (event.tag is not None and event.tag != "!"):
                raise _NotPlain  # an alias (it names an anchor), an anchor or a tag: the composer path's
            mark = event.start_mark
            node_loc: Location = new_tuple(Location, (file, mark.line + 1, mark.column + 1))
            if kind is scalar_event:
                value = event.value
                implicit = event.implicit
                if (not implicit[0] or (value and value[0] not in resolvers)) and no_wildcards:
                    node = Scalar(node_loc, value, value, event.style in _QUOTED)
                    values.append(value)
                else:
                    node = _plain_scalar(loader, event, node_loc, resolved)
                    if type(node.value) is str:
                        values.append(node.value)
            elif kind is mapping_start or kind is sequence_start:
                if len(stack) >= MAX_NESTING:
                    raise _too_deep(file, mark)
                stack.append((loc, items, seen, key))  # type: ignore[arg-type]  # None at the root
                loc, items, key = node_loc, [], None
                seen = {} if kind is mapping_start else None
                continue
            else:  # pragma: no cover - an alias names an anchor (refused above); the parser makes no other
                raise _NotPlain
        # ``node`` is complete: it is the value of the innermost collection (or the root).
        if items is None:
            return node
        if seen is not None:
            items.append((key, node))
            seen[key.text] = node  # type: ignore[union-attr]  # a mapping's value follows its key
            key = None
        else:
            items.append(node)


def _plain_scalar(loader: Any, event: Any, loc: Location, resolved: dict[tuple[str, Any], str]) -> Scalar:
    """A plain scalar the resolver decides the type of, constructed as the composer path would.
    ``resolved`` keeps the tag of each value met so far (a value is often repeated)."""
    value = event.value
    tag = resolved.get((value, event.implicit))
    if tag is None:
        tag = resolved[(value, event.implicit)] = loader.resolve(ScalarNode, value, event.implicit)
    if tag == _STR:
        return Scalar(loc, value, value, quoted=event.style in _QUOTED)
    if tag not in ALLOWED_TAGS or _long_int(tag, value):
        raise _NotPlain
    try:
        end: Any = event.end_mark
        constructed = loader.construct_object(ScalarNode(tag, value, event.start_mark, end, event.style), deep=True)
    except Exception:  # whatever the composer path makes of it, it says
        raise _NotPlain from None
    return Scalar(loc, constructed, str(value), quoted=event.style in _QUOTED)


def describe(node: YNode) -> str:
    """What kind of value a node is, for "expected X, got Y" messages (never the value itself)."""
    if isinstance(node, Map):
        return "a mapping"
    if isinstance(node, Seq):
        return "a list"
    assert isinstance(node, Scalar)
    value = node.value
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, datetime.date):
        return "a date (put it in quotes if you meant text)"
    return f"a {type(value).__name__}"


def walk(node: YNode) -> list[YNode]:
    """Every node once (shared alias targets included once), keys included, in document order."""
    out: list[YNode] = []
    seen: set[int] = set()
    stack: list[YNode] = [node]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        out.append(n)
        if isinstance(n, Map):
            for k, v in reversed(n.pairs):
                stack.append(v)
                stack.append(k)
        elif isinstance(n, Seq):
            stack.extend(reversed(n.items))
    return out
