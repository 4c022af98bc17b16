"""Check a JSON document against one of connref's schemas (``reconciler.schemas``), without a dependency.

The schemas use a small part of JSON Schema draft 2020-12; this module implements exactly that part, and
refuses a schema that uses any other keyword (``UnsupportedSchema``), so a schema can never silently check
less than it says. Supported: ``type``, ``enum``, ``const``, ``required``, ``properties``,
``additionalProperties``, ``propertyNames``, ``minProperties``, ``dependentRequired``, ``items``,
``minItems``, ``uniqueItems``, ``pattern``, ``maxLength``, ``minimum``, ``maximum``, ``allOf``, ``anyOf``, ``oneOf``,
``not``, ``if``/``then``/``else`` and ``$ref`` to the schema's own ``$defs``; ``format``, ``title``,
``description`` and the other annotations are read and ignored, as the specification allows.
``tests/unit/test_schema_validate.py`` checks that it agrees with the reference implementation
(``jsonschema``, a development dependency) on valid and broken documents.

``problems(kind, document)`` returns what is wrong, one line each with the JSON path
(``/plan/environments/0/ops/1/kind: 'bogus' is not one of ...``), never more than ``limit`` lines.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from functools import cache
from typing import Any

from reconciler.schemas import load_schema

ANNOTATIONS = frozenset({"$schema", "$id", "$comment", "title", "description", "default", "examples", "format",
                         "deprecated", "readOnly", "writeOnly"})
_TYPES: dict[str, Callable[[Any], bool]] = {
    "null": lambda v: v is None,
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


class UnsupportedSchema(ValueError):
    """The schema uses a keyword (or a form of one) this validator does not implement."""


def _same(a: Any, b: Any) -> bool:
    """JSON equality: ``true`` is not ``1``, ``1`` is ``1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and bool(a == b)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Validator:
    """One schema, checked for supported keywords when built."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.root = schema
        self._check_keywords(schema, "#")

    # ---- the schema itself

    _SCHEMA_VALUED = ("additionalProperties", "propertyNames", "items", "not", "if", "then", "else")
    _SCHEMA_LISTS = ("allOf", "anyOf", "oneOf")
    _VALUES = ("type", "enum", "const", "required", "minProperties", "dependentRequired", "minItems", "uniqueItems",
               "pattern", "maxLength", "minimum", "maximum", "$ref")

    def _check_keywords(self, schema: Any, where: str) -> None:
        if isinstance(schema, bool):
            return
        if not isinstance(schema, Mapping):
            raise UnsupportedSchema(f"{where}: a schema is an object or a boolean")
        for key, value in schema.items():
            if key in ANNOTATIONS or key in self._VALUES:
                continue
            if key in ("properties", "$defs"):
                for name, sub in value.items():
                    self._check_keywords(sub, f"{where}/{key}/{name}")
            elif key in self._SCHEMA_VALUED:
                self._check_keywords(value, f"{where}/{key}")
            elif key in self._SCHEMA_LISTS:
                for i, sub in enumerate(value):
                    self._check_keywords(sub, f"{where}/{key}/{i}")
            else:
                raise UnsupportedSchema(f"{where}: keyword {key!r} is not supported by reconciler.schemas.validate")
        ref = schema.get("$ref")
        if ref is not None:
            self._resolve(ref)

    def _resolve(self, ref: str) -> Any:
        if ref == "#":
            return self.root
        if not ref.startswith("#/$defs/") or "/" in ref[len("#/$defs/"):]:
            raise UnsupportedSchema(f"$ref {ref!r}: only '#' and '#/$defs/NAME' are supported")
        name = ref[len("#/$defs/"):]
        try:
            return self.root["$defs"][name]
        except KeyError:
            raise UnsupportedSchema(f"$ref {ref!r} names no definition") from None

    # ---- instances

    def valid(self, instance: Any, schema: Any = None) -> bool:
        return next(self.errors(instance, schema), None) is None

    def errors(self, instance: Any, schema: Any = None, path: str = "") -> Iterator[str]:
        """Every problem of ``instance`` against ``schema`` (default: the whole schema), lazily."""
        schema = self.root if schema is None else schema
        if schema is True:
            return
        if schema is False:
            yield f"{path or '/'}: no value is allowed here"
            return
        yield from self._generic(instance, schema, path)
        if isinstance(instance, dict):
            yield from self._object(instance, schema, path)
        elif isinstance(instance, list):
            yield from self._array(instance, schema, path)
        elif isinstance(instance, str):
            yield from self._string(instance, schema, path)
        elif _TYPES["number"](instance):
            yield from self._number(instance, schema, path)
        yield from self._combined(instance, schema, path)

    def _generic(self, instance: Any, schema: Mapping[str, Any], path: str) -> Iterator[str]:
        where = path or "/"
        if "$ref" in schema:
            yield from self.errors(instance, self._resolve(schema["$ref"]), path)
        if "type" in schema:
            types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
            if not any(_TYPES[t](instance) for t in types):
                yield f"{where}: {_shown(instance)} is not of type {' or '.join(types)}"
        if "enum" in schema and not any(_same(instance, v) for v in schema["enum"]):
            yield f"{where}: {_shown(instance)} is not one of {', '.join(_shown(v) for v in schema['enum'])}"
        if "const" in schema and not _same(instance, schema["const"]):
            yield f"{where}: {_shown(instance)} is not {_shown(schema['const'])}"

    def _object(self, instance: dict[str, Any], schema: Mapping[str, Any], path: str) -> Iterator[str]:
        where = path or "/"
        for name in schema.get("required", ()):
            if name not in instance:
                yield f"{where}: {name!r} is missing"
        for name, needs in schema.get("dependentRequired", {}).items():
            if name in instance:
                for other in needs:
                    if other not in instance:
                        yield f"{where}: {other!r} is missing (needed with {name!r})"
        if len(instance) < schema.get("minProperties", 0):
            yield f"{where}: at least {schema['minProperties']} key(s) are needed"
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for name, value in instance.items():
            child = f"{path}/{name}"
            if "propertyNames" in schema:
                for problem in self.errors(name, schema["propertyNames"], child):
                    yield f"{problem} (a key)"
            if name in props:
                yield from self.errors(value, props[name], child)
            elif extra is False:
                yield f"{where}: {name!r} is not allowed here"
            elif extra is not True:
                yield from self.errors(value, extra, child)

    def _array(self, instance: list[Any], schema: Mapping[str, Any], path: str) -> Iterator[str]:
        if len(instance) < schema.get("minItems", 0):
            yield f"{path or '/'}: at least {schema['minItems']} item(s) are needed"
        if schema.get("uniqueItems") is True:
            twice = sorted({j for j in range(len(instance)) for i in range(j) if _same(instance[i], instance[j])})
            if twice:
                yield f"{path or '/'}: item {twice[0]} is {_shown(instance[twice[0]])}, already in the list"
        if "items" in schema:
            for i, item in enumerate(instance):
                yield from self.errors(item, schema["items"], f"{path}/{i}")

    def _string(self, instance: str, schema: Mapping[str, Any], path: str) -> Iterator[str]:
        where = path or "/"
        if "pattern" in schema and not _pattern(schema["pattern"]).search(instance):
            yield f"{where}: {_shown(instance)} does not match {schema['pattern']}"
        if "maxLength" in schema and len(instance) > schema["maxLength"]:
            yield f"{where}: longer than {schema['maxLength']} characters"

    def _number(self, instance: float, schema: Mapping[str, Any], path: str) -> Iterator[str]:
        where = path or "/"
        if "minimum" in schema and instance < schema["minimum"]:
            yield f"{where}: {instance} is less than {schema['minimum']}"
        if "maximum" in schema and instance > schema["maximum"]:
            yield f"{where}: {instance} is more than {schema['maximum']}"

    def _combined(self, instance: Any, schema: Mapping[str, Any], path: str) -> Iterator[str]:
        where = path or "/"
        for sub in schema.get("allOf", ()):
            yield from self.errors(instance, sub, path)
        if "anyOf" in schema and not any(self.valid(instance, sub) for sub in schema["anyOf"]):
            yield from self._none_matches(instance, schema["anyOf"], path)
        if "oneOf" in schema:
            matching = sum(1 for sub in schema["oneOf"] if self.valid(instance, sub))
            if matching == 0:
                yield from self._none_matches(instance, schema["oneOf"], path)
            elif matching > 1:
                yield f"{where}: {_shown(instance)} matches {matching} of the allowed forms, not exactly one"
        if "not" in schema and self.valid(instance, schema["not"]):
            yield f"{where}: {_shown(instance)} is of a form that is not allowed here"
        if "if" in schema:
            branch = "then" if self.valid(instance, schema["if"]) else "else"
            if branch in schema:
                yield from self.errors(instance, schema[branch], path)

    def _none_matches(self, instance: Any, branches: list[Any], path: str) -> Iterator[str]:
        """Why no branch of an ``anyOf``/``oneOf`` matches: the problems of the one branch of the instance's
        type when there is exactly one such branch (``null`` or an object: the object's problems), else
        that none matched."""
        of_type = [b for b in branches if self._type_fits(instance, b)]
        if len(of_type) == 1:
            yield from self.errors(instance, of_type[0], path)
            return
        yield f"{path or '/'}: {_shown(instance)} matches none of the allowed forms"

    def _type_fits(self, instance: Any, schema: Any) -> bool:
        while isinstance(schema, Mapping) and "$ref" in schema and "type" not in schema:
            schema = self._resolve(schema["$ref"])
        if not isinstance(schema, Mapping) or "type" not in schema:
            return False
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        return any(_TYPES[t](instance) for t in types)


@cache
def _pattern(text: str) -> re.Pattern[str]:
    return re.compile(text)


@cache
def validator(kind: str) -> Validator:
    """The validator of a document kind (a key of ``reconciler.schemas.SCHEMAS``)."""
    return Validator(load_schema(kind))


def problems(kind: str, document: Any, *, limit: int = 10) -> list[str]:
    """What is wrong with ``document`` as a ``kind`` document (empty: nothing), at most ``limit`` lines."""
    out: list[str] = []
    for problem in validator(kind).errors(document):
        if problem not in out:
            out.append(problem)
        if len(out) >= limit:
            break
    return out
