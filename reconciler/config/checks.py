"""Checks of single config values, each answering with a problem message or None.

The ``*_problem`` functions say what is wrong with one value (a solution unique name, a connector, a
connection name, an environment variable name, a naming template, a URL) in words fit for
``file:line:column: field.path: message``; ``_is_loopback_host``/``is_loopback_url`` tell where
plain http is allowed; ``normalise_connector`` writes a connector in its one stored form;
``absent_if_null`` and ``is_empty_node`` read optional and blank nodes, ``is_blank`` blank text;
``secret_value_kind`` tells a value that is a secret whatever key it sits under. ``reconciler.config.loader``
runs them from its validator, and ``connref import`` runs them on what it is about to write.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import string
from urllib.parse import urlsplit

from reconciler.config.yamlsource import Map, Scalar, Seq, YNode
from reconciler.domain.model import CONNECTOR_PREFIX, connector_id
from reconciler.domain.naming import PLACEHOLDERS
from reconciler.domain.patterns import has_jwt

MAX_CONNECTION_NAME = 1000
ENV_VAR_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SOLUTION_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,64}")
CONNECTOR_NAME_RE = re.compile(r"shared_[A-Za-z0-9][A-Za-z0-9_.\-]*")


# Values that are secrets whatever key they sit under (and JWTs: reconciler.domain.patterns).
PEM_RE = re.compile(r"-----BEGIN [A-Z0-9 ]+-----")
# Entra client secrets since 2021: three characters, a digit, "Q~", then 31-34 more.
# Found anywhere in a value ("the secret is Xy71Q~..."), not only as the whole of it.
_SECRET_CHAR = r"[A-Za-z0-9_\-.~]"
_ENTRA_SECRET_RE = re.compile(rf"(?<!{_SECRET_CHAR}){_SECRET_CHAR}{{3}}\dQ~{_SECRET_CHAR}{{31,34}}(?!{_SECRET_CHAR})")
# Each value pattern of ``secret_value_kind`` needs one of these fragments.
SECRET_VALUE_FRAGMENTS = ("-----BEGIN ", "eyJ", "Q~")


def secret_value_kind(value: str) -> str | None:
    """What secret ``value`` looks like ("a token (JWT)", "a PEM block (key or certificate)", "a client
    secret"), or None. Callers name the kind, never the value."""
    # Each pattern below needs one of these fragments: most values have none and skip the searches.
    if all(fragment not in value for fragment in SECRET_VALUE_FRAGMENTS):
        return None
    if PEM_RE.search(value):
        return "a PEM block (key or certificate)"
    if has_jwt(value):
        return "a token (JWT)"
    if _ENTRA_SECRET_RE.search(value):
        return "a client secret"
    return None


def is_blank(value: str) -> bool:
    """Empty, or nothing but whitespace (any Unicode space, tab or line break): the config reads such a
    text as no value, and refuses it where a value is required."""
    return not value.strip()


def absent_if_null(node: YNode | None) -> YNode | None:
    """An optional section written with no value (``auth:``) counts as absent."""
    if isinstance(node, Scalar) and node.value is None and not node.broken:
        return None
    return node


def is_empty_node(node: YNode) -> bool:
    if isinstance(node, Scalar):
        return node.value is None or (isinstance(node.value, str) and is_blank(node.value))
    if isinstance(node, Map):
        return not node.pairs
    if isinstance(node, Seq):
        return not node.items
    return False


def solution_problem(value: str) -> str | None:
    if SOLUTION_RE.fullmatch(value):
        return None
    return "expected the solution's unique name (letters, digits and '_', starting with a letter or '_', at most 65)"


# Cached: a config names the same few connectors for thousands of references.
@functools.lru_cache(maxsize=1024)
def connector_problem(value: str) -> str | None:
    tail = value
    if value.startswith("/"):
        if not value.lower().startswith(CONNECTOR_PREFIX.lower()):
            return f"expected shared_<name> or {CONNECTOR_PREFIX}shared_<name>"
        tail = value[len(CONNECTOR_PREFIX) :]
    if len(connector_id(value)) > MAX_CONNECTION_NAME:
        return f"a connector id may be at most {MAX_CONNECTION_NAME} characters"
    if CONNECTOR_NAME_RE.fullmatch(tail):
        return None
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", tail) and "/" not in value:
        return f"expected shared_<name> or {CONNECTOR_PREFIX}shared_<name>; did you mean 'shared_{tail}'?"
    return f"expected shared_<name> or {CONNECTOR_PREFIX}shared_<name>"


@functools.lru_cache(maxsize=1024)
def normalise_connector(value: str) -> str:
    if value.startswith("/"):
        return CONNECTOR_PREFIX + value[len(CONNECTOR_PREFIX) :]
    return connector_id(value)


def connection_name_problem(name: str) -> str | None:
    if not name:
        return "a connection name must not be empty"
    if len(name) > MAX_CONNECTION_NAME:
        return f"a connection name may be at most {MAX_CONNECTION_NAME} characters"
    if "/" in name:
        return "expected the connection name (the last segment of the connection id), not a path"
    if name.split() != [name]:  # a whitespace character anywhere (str.isspace's), without a loop per character
        return (
            "a connection name has no spaces; to pick a connection by display name use {owner: ..., display_name: ...}"
        )
    return None


def env_var_problem(value: str) -> str | None:
    if ENV_VAR_RE.fullmatch(value):
        return None
    return "expected the name of an environment variable (letters, digits and '_'), not its value"


def naming_problem(value: str) -> str | None:
    try:
        parts = list(string.Formatter().parse(value))
    except ValueError as exc:
        return f"invalid template: {exc}"
    for _, name, spec, conv in parts:
        if name is None:
            continue
        if name not in PLACEHOLDERS or spec or conv:
            allowed = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
            return f"unknown placeholder {{{name}}}; the template may use {allowed}"
    return None


def _is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_url(url: str) -> bool:
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return False
    return bool(host) and _is_loopback_host(host or "")


def url_problem(value: str) -> str | None:
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises for a malformed port
    except ValueError:
        return "not a valid URL"
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not parts.hostname:
        return "expected an https:// URL (or local:PATH for the built-in emulator)"
    if parts.username or parts.password:
        return "a URL must not carry credentials; use an auth profile"
    if parts.query or parts.fragment:
        return "expected the base URL, without a query or fragment"
    if "/api/data" in parts.path.lower():
        return "expected the environment's base URL, without /api/data/..."
    if scheme == "http" and not _is_loopback_host(parts.hostname):
        return "plain http is allowed only for loopback (127.0.0.1, ::1, localhost); use https"
    return None
