"""The shape of every answer connref reads, checked in one place before any of it is used.

A service that answers ``200`` may still hand back an HTML error page, an empty or truncated body,
``null``, a field of the wrong type, a row without its key, JSON nested 200,000 levels deep, or a body
that never ends. Each is refused here with a ``ShapeProblem`` saying what was wrong (never quoting the
body); the HTTP client (``reconciler.api.client``) turns it into a ``MalformedResponseError`` that also
names the method, the URL and the status. Nothing past the client ever sees an unchecked answer.

The schemas are deliberately small: what connref reads, with its JSON type; keys connref does not read
are ignored, so a service that adds fields breaks nothing. Facts they rely on:

- A collection is ``{"value": [...], "@odata.nextLink": "..."}``; rows of an OData query carry every
  ``$select``-ed column, with ``null`` when it has no value, so a selected column that is missing is a
  malformed row (docs/dataverse.md §3.5).
- Every row of a table with optimistic concurrency (``connectionreferences``, ``workflows``) carries its
  ``@odata.etag``, and connref writes those rows with ``If-Match`` on it; a row without one could only be
  written with ``If-Match: *``, over any change made since it was read, so it is a malformed row
  (docs/dataverse.md §3.4).
- ``WhoAmI`` answers ``UserId`` (the caller's systemuserid), ``BusinessUnitId`` and ``OrganizationId``
  (docs/dataverse.md §3.9).
- A connection item of either connections API has ``name`` and ``properties`` with ``apiId``, optional
  ``displayName``, ``statuses``, ``createdBy`` and ``permissions`` (docs/dataverse.md §4.4).
- The token endpoint answers ``access_token``, ``token_type`` and ``expires_in``, or an error
  ``{"error": "...", "error_description": "..."}``; the OpenID configuration has
  ``authorization_endpoint`` and ``token_endpoint``, which MSAL reads (docs/dataverse.md §6.5).
- The CI systems' OIDC token endpoints answer the workload identity token as ``value`` (GitHub Actions)
  or ``oidcToken`` (Azure DevOps) (docs/dataverse.md §6.3).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler.domain.patterns import GUID, is_guid

#: Largest answer read, whatever its Content-Length says: a page of 5000 flows with their
#: ``clientdata`` stays far below it; a body that never ends stops here.
MAX_BODY_BYTES = 256 * 1024 * 1024
#: Deepest JSON accepted. Dataverse rows are two levels deep, connection items five.
MAX_JSON_DEPTH = 32
#: Most pages followed for one query: 5000 rows a page makes five million rows.
MAX_PAGES = 1000
#: Longest integer literal accepted in JSON (Python refuses to convert past 4,300 digits anyway).
MAX_INT_DIGITS = 40


@dataclass(frozen=True)
class Limits:
    """Bounds on what one answer may be (tests lower them)."""

    max_body_bytes: int = MAX_BODY_BYTES
    max_json_depth: int = MAX_JSON_DEPTH
    max_pages: int = MAX_PAGES


class ShapeProblem(ValueError):
    """What is wrong with an answer, in words safe to print (no part of the body)."""


# --------------------------------------------------------------------------- JSON


def no_constant(name: str) -> Any:
    """``json.loads``' ``parse_constant``: NaN and Infinity are not JSON."""
    raise ShapeProblem(f"the JSON holds {name}, which is not a JSON number")


def bounded_int(text: str) -> int:
    """``json.loads``' ``parse_int``: no integer longer than any connref reads (Python refuses past 4,300
    digits, and spends quadratic time getting there)."""
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise ShapeProblem(f"the JSON holds an integer of {digits} digits")
    return int(text)


_CONTAINERS = (dict, list)
# What json.loads makes of a JSON scalar (anything else, a container or a subclass, is looked at one by one).
_SCALAR_TYPES = frozenset((str, int, float, bool, type(None)))


def depth_of(value: Any, limit: int) -> int:
    """How deeply ``value`` nests (a scalar is 0), counting no further than ``limit + 1``. Only
    containers go on the stack: a page of rows is mostly scalars, which need no visit of their own, and
    a row of scalars is told so where its list is walked, without a visit of its own either."""
    if not isinstance(value, dict | list):
        return 0
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                return deepest
        children: Iterable[Any] = node.values() if isinstance(node, dict) else node
        # Most nodes (a row of scalars) hold no container: tell so in one pass at C speed, visit none.
        if _SCALAR_TYPES.issuperset(map(type, children)):
            continue
        for child in children:
            if isinstance(child, _CONTAINERS):
                inner: Iterable[Any] = child.values() if isinstance(child, dict) else child
                if _SCALAR_TYPES.issuperset(map(type, inner)):  # a row of scalars: one level more, no visit
                    if depth + 1 > deepest:
                        deepest = depth + 1
                        if deepest > limit:
                            return deepest
                    continue
                stack.append((child, depth + 1))
    return deepest


def parse_json(body: bytes, *, content_type: str | None = None, limits: Limits | None = None) -> Any:
    """The JSON value of ``body``; ``ShapeProblem`` when it is empty, not JSON, truncated, too deep or
    holds a number JSON does not have."""
    limits = limits or Limits()
    if len(body) > limits.max_body_bytes:
        raise ShapeProblem(f"the body is larger than {limits.max_body_bytes} bytes")
    if not body.strip():
        return _raise("the body is empty; JSON was expected")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        return _raise("the body is not UTF-8 text; JSON was expected")
    kind = (content_type or "").split(";")[0].strip().lower()
    try:
        value = json.loads(text, parse_constant=no_constant, parse_int=bounded_int)
    except RecursionError:
        return _raise(f"the JSON is nested deeper than {limits.max_json_depth} levels")
    except ShapeProblem:
        raise
    except json.JSONDecodeError as exc:
        stripped = text.rstrip()
        if stripped[:1] in ("{", "[") and (exc.pos >= len(stripped) or exc.msg.startswith("Unterminated")):
            return _raise(f"the JSON ends before it is complete (truncated after {len(body)} bytes)")
        what = f" ({kind})" if kind and kind != "application/json" else ""
        if stripped[:1] == "<":
            return _raise(f"the body is HTML or XML{what}, not JSON")
        return _raise(f"the body is not JSON{what}: {exc.msg} at line {exc.lineno}, column {exc.colno}")
    except ValueError as exc:  # a number Python will not convert
        return _raise(f"the JSON holds a number connref cannot read ({type(exc).__name__})")
    if depth_of(value, limits.max_json_depth) > limits.max_json_depth:
        return _raise(f"the JSON is nested deeper than {limits.max_json_depth} levels")
    return value


def _raise(problem: str) -> Any:
    raise ShapeProblem(problem)


# --------------------------------------------------------------------------- schemas


def describe(value: Any) -> str:
    """The JSON type of a value, for messages (never the value itself)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


_KINDS: dict[str, str] = {
    "string": "a string",
    "guid": "a GUID string",
    "integer": "an integer",
    "boolean": "a boolean",
    "object": "an object",
    "list": "a list",
    "seconds": "a number of seconds",
}


def _kind_ok(kind: str, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "guid":
        return isinstance(value, str) and is_guid(value)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "object":
        return isinstance(value, dict)
    if kind == "list":
        return isinstance(value, list)
    if kind == "seconds":  # RFC 6749 says a number; some services send it as a string of digits
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, str) and value.strip().isdigit())
    raise ValueError(f"unknown kind {kind!r}")


@dataclass(frozen=True)
class Field:
    """One key connref reads. ``required``: it must be there (``nullable`` says whether null will do).
    ``shape`` checks an object, or each item of a list."""

    name: str
    kind: str
    required: bool = False
    nullable: bool = True
    shape: Shape | None = None


@dataclass(frozen=True)
class Shape:
    """An object connref reads: what it is (for messages) and the keys it reads."""

    what: str
    fields: tuple[Field, ...]
    # The fields as the quick test reads them (``_fits``): name, the one type json.loads gives a value
    # of that kind (None: ask ``_kind_ok``), whether it must be a GUID, required, nullable, nested shape.
    _quick: tuple[tuple[str, type | None, bool, bool, bool, Shape | None], ...] = field(
        init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_quick", tuple(
            (f.name, _EXACT_TYPES.get(f.kind), f.kind == "guid", f.required, f.nullable, f.shape)
            for f in self.fields))

    def field(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)


#: The type json.loads gives a value of each kind (``bool`` is not an ``int`` here: types compare exactly).
_EXACT_TYPES: dict[str, type] = {"string": str, "guid": str, "integer": int, "boolean": bool, "object": dict,
                                 "list": list}


def _fits(value: Any, shape: Shape) -> bool:
    """True when ``value`` certainly fits ``shape``: the quick test of every row of every page, with no
    message built. False sends ``check`` the slow way, which finds (and words) the problem, if any:
    the quick test may say False of a value that fits (a subclass, a kind it does not know)."""
    if type(value) is not dict:
        return False
    get = value.get
    for name, exact, guid, required, nullable, nested in shape._quick:
        item: Any = get(name, _ABSENT)
        if item is None:
            if required and not nullable:
                return False
            continue
        if item is _ABSENT:
            if required:
                return False
            continue
        if exact is None or type(item) is not exact:
            return False
        item = value[name]  # as Any again: the type test above narrows it to ``object`` for mypy
        if guid and _guid_match(item) is None:
            return False
        if nested is not None:
            if exact is dict:
                if not _fits(item, nested):
                    return False
            elif exact is list and not all(_fits(element, nested) for element in item):
                return False
    return True


_ABSENT = object()
# ``is_guid`` without its call (a non-empty string here): the quick test makes it for several columns of
# every row.
_guid_match = GUID.fullmatch


def check(value: Any, shape: Shape, path: str = "") -> None:
    """Raise ``ShapeProblem`` naming the first key of ``value`` that does not fit ``shape``."""
    if not _fits(value, shape):
        explain(value, shape, path)


def explain(value: Any, shape: Shape, path: str = "") -> None:
    """``check`` the slow way, field by field, each problem worded with its path: what ``check`` runs when
    the quick test fails (and what it must agree with)."""
    if not isinstance(value, dict):
        raise ShapeProblem(f"{path or 'the answer'}: expected an object ({shape.what}), got {describe(value)}")
    for f in shape.fields:
        where = f"{path}.{f.name}" if path else f.name
        if f.name not in value:
            if f.required:
                raise ShapeProblem(f"{where}: missing (every {shape.what} has it)")
            continue
        item = value[f.name]
        if item is None:
            if f.required and not f.nullable:
                raise ShapeProblem(f"{where}: expected {_KINDS[f.kind]}, got null")
            continue
        if not _kind_ok(f.kind, item):
            raise ShapeProblem(f"{where}: expected {_KINDS[f.kind]}, got {describe(item)}")
        if f.shape is not None:
            if f.kind == "object":
                check(item, f.shape, where)
            elif f.kind == "list":
                for i, element in enumerate(item):
                    check(element, f.shape, f"{where}[{i}]")


def check_collection(doc: Any, row: Shape | None, selected: Sequence[str] = (),
                     next_link_keys: Sequence[str] = ("@odata.nextLink",)) -> tuple[list[dict[str, Any]], str | None]:
    """The rows and the next link of one page of a collection; each row is checked against ``row``
    and must carry every ``selected`` column (null or not)."""
    if not isinstance(doc, dict):
        raise ShapeProblem(f"expected a collection (an object with 'value'), got {describe(doc)}")
    if "value" not in doc:
        raise ShapeProblem("value: missing (every collection has it)")
    rows = doc["value"]
    if not isinstance(rows, list):
        raise ShapeProblem(f"value: expected a list of rows, got {describe(rows)}")
    wanted = frozenset(selected)
    for i, r in enumerate(rows):
        # The quick test first: a message (and the row's place in it) is made only for a row that fails.
        # (``keys() >= wanted``: every selected column there, tested at C speed.)
        if (_fits(r, row) if row is not None else type(r) is dict) and r.keys() >= wanted:
            continue
        where = f"value[{i}]"
        if row is not None:
            check(r, row, where)
        elif not isinstance(r, dict):
            raise ShapeProblem(f"{where}: expected a row (an object), got {describe(r)}")
        for column in selected:
            if column not in r:
                raise ShapeProblem(f"{where}.{column}: missing (a selected column is always returned, "
                                   "null when empty)")
    link: str | None = None
    for key in next_link_keys:
        candidate = doc.get(key)
        if candidate is None:
            continue
        if not isinstance(candidate, str) or not candidate.strip():
            raise ShapeProblem(f"{key}: expected a URL (a string), got {describe(candidate)}")
        link = candidate
        break
    return rows, link


def check_object(doc: Any, shape: Shape) -> dict[str, Any]:
    """``doc`` checked against ``shape``."""
    check(doc, shape)
    assert isinstance(doc, dict)
    return doc


# --------------------------------------------------------------------------- what connref reads


def _f(name: str, kind: str = "string", **kw: Any) -> Field:
    return Field(name, kind, **kw)


CONNECTION_REFERENCE = Shape("connection reference row", (
    _f("connectionreferenceid", "guid", required=True, nullable=False),
    _f("connectionreferencelogicalname"),
    _f("connectionreferencedisplayname"),
    _f("connectorid"),
    _f("connectionid"),
    _f("description"),
    _f("ismanaged", "boolean"),
    _f("statecode", "integer"),
    _f("_ownerid_value", "guid"),
    _f("_createdby_value", "guid"),
    _f("createdon"),
    _f("_modifiedby_value", "guid"),
    _f("modifiedon"),
    _f("@odata.etag", required=True, nullable=False),
))
SYSTEM_USER = Shape("user row", (
    _f("systemuserid", "guid", required=True, nullable=False),
    _f("azureactivedirectoryobjectid", "guid"),
    _f("domainname"),
    _f("fullname"),
    _f("isdisabled", "boolean"),
    _f("applicationid", "guid"),
))
PUBLISHER = Shape("publisher", (_f("customizationprefix"),))
SOLUTION = Shape("solution row", (
    _f("solutionid", "guid", required=True, nullable=False),
    _f("uniquename"),
    _f("friendlyname"),
    _f("ismanaged", "boolean"),
    _f("publisherid", "object", shape=PUBLISHER),
))
SOLUTION_COMPONENT = Shape("solution component row", (
    _f("objectid", "guid", required=True, nullable=False),
    _f("_solutionid_value", "guid"),
    _f("componenttype", "integer"),
))
WORKFLOW = Shape("flow row", (
    _f("workflowid", "guid", required=True, nullable=False),
    _f("name"),
    _f("statecode", "integer"),
    _f("_ownerid_value", "guid"),
    _f("clientdata"),
    _f("@odata.etag", required=True, nullable=False),
))
COMPONENT_DEFINITION = Shape("solution component definition row", (
    _f("solutioncomponenttype", "integer", required=True, nullable=False),
    _f("name"),
    _f("primaryentityname"),
))
#: Rows of each entity set connref queries, by entity set name.
ROWS: Mapping[str, Shape] = {
    "connectionreferences": CONNECTION_REFERENCE,
    "systemusers": SYSTEM_USER,
    "solutions": SOLUTION,
    "solutioncomponents": SOLUTION_COMPONENT,
    "workflows": WORKFLOW,
    "solutioncomponentdefinitions": COMPONENT_DEFINITION,
}

WHO_AM_I = Shape("WhoAmI answer", (
    _f("UserId", "guid", required=True, nullable=False),
    _f("BusinessUnitId", "guid"),
    _f("OrganizationId", "guid"),
))
USER_PRIVILEGES = Shape("RetrieveUserPrivilegeByPrivilegeName answer", (
    _f("RolePrivileges", "list", required=True, nullable=False),
))

_PRINCIPAL = Shape("principal", (_f("id"), _f("type"), _f("displayName"), _f("tenantId")))
_PERMISSION = Shape("permission", (
    _f("name"),
    _f("properties", "object", shape=Shape("permission properties", (
        _f("roleName"),
        _f("principal", "object", shape=_PRINCIPAL),
    ))),
))
_CREATED_BY = Shape("creator", (_f("id"), _f("userPrincipalName"), _f("email"), _f("displayName")))
_STATUS = Shape("status", (_f("status"),))
CONNECTION = Shape("connection", (
    _f("name", required=True, nullable=False),
    _f("properties", "object", required=True, nullable=False, shape=Shape("connection properties", (
        _f("apiId", required=True, nullable=False),
        _f("displayName"),
        _f("statuses", "list", shape=_STATUS),
        _f("createdBy", "object", shape=_CREATED_BY),
        _f("permissions", "list", shape=_PERMISSION),
    ))),
))

#: One share as the permissions route serves it (docs/dataverse.md §4.8): the principal's id is required.
SHARE = Shape("connection permission", (
    _f("name"),
    _f("id"),
    _f("properties", "object", required=True, nullable=False, shape=Shape("permission properties", (
        _f("roleName", required=True, nullable=False),
        _f("principal", "object", required=True, nullable=False, shape=Shape("principal", (
            _f("id", required=True, nullable=False), _f("type"), _f("displayName"), _f("tenantId"),
        ))),
    ))),
))
#: Microsoft Graph's checkMemberGroups answer: the group ids the object belongs to (docs/dataverse.md §4.10).
MEMBER_GROUPS = Shape("checkMemberGroups answer", (
    _f("value", "list", required=True, nullable=False),
))

TOKEN = Shape("token answer", (
    _f("access_token", required=True, nullable=False),
    _f("token_type"),
    _f("expires_in", "seconds"),
))
TOKEN_ERROR = Shape("token error", (
    _f("error", required=True, nullable=False),
    _f("error_description"),
    _f("error_codes", "list"),
))
OPENID_CONFIGURATION = Shape("OpenID configuration", (
    _f("authorization_endpoint", required=True, nullable=False),
    _f("token_endpoint", required=True, nullable=False),
    _f("issuer"),
))
INSTANCE_DISCOVERY = Shape("instance discovery answer", (
    _f("tenant_discovery_endpoint", required=True, nullable=False),
    _f("metadata", "list"),
))
GITHUB_OIDC_TOKEN = Shape("GitHub Actions OIDC token answer", (_f("value", required=True, nullable=False),))
AZURE_DEVOPS_OIDC_TOKEN = Shape("Azure DevOps OIDC token answer", (_f("oidcToken", required=True, nullable=False),))
