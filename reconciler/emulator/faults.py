"""Deterministic fault injection for the emulator: latency, service-protection 429s, transient 503s,
any error status, dropped connections and malformed answers, per route pattern and method, plus the
per-user concurrent-request limit.

The 429 bodies, codes and ``Retry-After`` header follow powerapps-docs
``developer/data-platform/api-limits.md`` (docs/dataverse.md §3.8): three limits, each with its own code:

* ``0x80072322`` "Number of requests exceeded the limit of 6000 over time window of 300 seconds."
* ``0x80072321`` "Combined execution time of incoming requests exceeded limit of 1,200,000 milliseconds ..."
* ``0x80072326`` "Number of concurrent requests exceeded the limit of 52." (bites at once, per user)

Errors come in the shape of the route they answer for (``error_body: "route"``): Dataverse and the
connections APIs ``{"error": {"code", "message"}}``, the identity routes (token endpoint, discovery,
managed identity) the OAuth shape ``{"error", "error_description", "error_codes"}`` (RFC 6749 §5.2; the
body of Entra's 429 and 5xx answers is not documented: Learn only says a throttled client credentials
request gets 429 with ``Retry-After``, so the AADSTS codes used are UNCONFIRMED). ``error_body`` also
takes ``"odata"`` (the nested shape on any route, as a gateway in front may answer), ``"oauth"`` and
``"html"`` (a proxy's error page).

``malformed`` answers are what a broken service or a hostile middlebox can send with a 2xx status; the
request is served first (a write is committed), then its answer is replaced or altered (``shape``):

=================  ===================================================================================
``html``           an HTML error page, ``text/html``
``empty``          no body at all
``truncated``      the real answer cut in half
``null``           the JSON ``null``
``wrong_type``     the real answer with ``key_path`` set to ``value`` (default 42)
``missing_field``  the real answer without ``key_path``
``deep``           a JSON array nested ``depth`` levels deep (default 200,000)
``huge``           the real answer padded to ``size_bytes`` (default 1 MiB) with a long string
``self_link``      the real collection with its next link pointing at the request itself
``foreign_link``   the real collection with its next link on another host (``link_host``)
``part_status``    the real ``$batch`` answer with the part answering ``Content-ID: part`` (default 1)
                   rewritten to answer ``status`` (an error body for 4xx and 5xx): a change set's answer
                   that calls some of it written and some refused, which an atomic change set cannot be
=================  ===================================================================================

``key_path`` is a path with ``/`` between keys and ``[]`` for every item of a list:
``value[]/connectionreferenceid``, ``UserId``, ``value[]/properties/apiId``.

**Answers lost after the commit.** With ``after_commit: true`` a ``drop``, ``error`` or ``latency`` rule
acts on the answer, not the request: the request is served first (a write is committed and, for a
``local:`` file, saved), then the connection is dropped, the rule's status (500, 502, 504...) is answered
instead of the real answer, or the real answer is held back ``latency_ms`` (past a client's timeout).
So a ``$batch`` can be committed and its answer lost, as when a gateway times out (502/504) while the
service still commits, a connection breaks after the request was sent, or a client gives up waiting:
the client cannot tell from the answer whether its write happened. ``malformed`` rules always act
after the commit (a 2xx whose body the client cannot read). ``rule.committed`` is set once a request the
rule acted on has been served, for tests that wait on it rather than on time.

**Inside a ``$batch``.** A GET sent as a part of a ``$batch`` (outside any change set) meets the rules as
a request of its own would, with its own path and method: ``error`` and ``malformed`` rules answer or
alter that part, as the service answers each part with its own status and body. Throttling (``throttle``,
``unavailable``), ``drop`` and ``latency`` act on the HTTP request, so they leave parts alone: the batch
itself meets them (the service protection limits answer the request that goes over them, docs/dataverse.md
§3.8), and so does ``latency_ms``.

**Errors that quote the request.** ``echo_request: true`` on an ``error`` rule answers with the request's
body as the error's text (``echo_response``), as a service or a proxy that repeats a request it refuses may:
for a token request, the urlencoded form with its secret or assertion, which the client must never show.

Every choice comes from ``random.Random(seed)``, so a test that injects 30% failures sees the same
sequence on every run. ``latency_ms`` delays every request the app answers, on every route (Dataverse,
connections API and token endpoint alike), as a network round trip would; latency rules add to it.
Controls: ``app.faults`` from Python, or a JSON file (``connref emulator --faults``)::

    {"seed": 7, "concurrency_limit": 52, "latency_ms": 50,
     "rules": [{"kind": "throttle", "path": "/api/data/v9.2/connectionreferences*", "methods": ["GET"],
                "code": "0x80072322", "retry_after": 1, "probability": 0.5, "times": 3}]}
"""

from __future__ import annotations

import base64
import fnmatch
import functools
import json
import random
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .web import HttpError, Request, Response, reason_phrase

THROTTLE_MESSAGES = {
    "0x80072322": "Number of requests exceeded the limit of 6000 over time window of 300 seconds.",
    "0x80072321": (
        "Combined execution time of incoming requests exceeded limit of 1,200,000 milliseconds over "
        "time window "
        "of 300 seconds. Decrease number of concurrent requests or reduce the duration of requests "
        "and try again later."
    ),
    "0x80072326": "Number of concurrent requests exceeded the limit of 52.",
}
KINDS = ("latency", "throttle", "unavailable", "error", "drop", "malformed")
#: The kinds that may act after the request was served (``after_commit``): the answer is lost, replaced or late.
#: Not ``throttle`` nor ``unavailable``: they model the service's own 429 and 503, given without acting on the
#: request (docs/dataverse.md §3.8); a gateway's 502, 503 or 504 (or a CDN's 52x) after the commit is an
#: ``error`` rule.
AFTER_COMMIT_KINDS = ("latency", "error", "drop")
SHAPES = ("html", "empty", "truncated", "null", "wrong_type", "missing_field", "deep", "huge", "self_link",
          "foreign_link", "part_status")
ERROR_BODIES = ("route", "odata", "oauth", "html")
#: The OAuth error of the identity routes, per status (RFC 6749 §5.2 ``error``; AADSTS codes from Learn's
#: "Microsoft Entra authentication and authorization error codes"; which ones Entra sends for 429 and
#: 5xx is UNCONFIRMED).
OAUTH_ERRORS = {
    429: ("temporarily_unavailable", 90055, "There are too many incoming requests. Try again later."),
    500: ("server_error", 90033, "A transient error has occurred. Please try again."),
}
_GENERIC_500 = ("0x80040216", "An unexpected error occurred.")
_HTML_PAGE = (b"<!DOCTYPE html><html><head><title>Service Unavailable</title></head>"
              b"<body><h1>The service is unavailable.</h1></body></html>")


class ConnectionDropped(ConnectionAbortedError):
    """Raised by the app to drop the connection without a response. The loopback server closes the
    socket; in-process, the client's WSGI transport (``reconciler.api.session.InProcessTransport``)
    turns it into the transport error a dropped socket gives. A ``ConnectionError`` of the standard
    library, so the emulator needs no HTTP client library."""

    def __init__(self) -> None:
        super().__init__("Server disconnected without sending a response.")


@dataclass
class FaultRule:
    """One fault. ``times`` limits how often it fires ("fail the next N requests"); ``after`` lets the
    first N matching requests through; ``probability`` draws from the seeded generator."""

    kind: str
    path: str = "*"
    methods: tuple[str, ...] | None = None
    probability: float = 1.0
    times: int | None = None
    after: int = 0
    # Only Dataverse requests that write: a POST, PATCH, PUT or DELETE, and a $batch only when one of its
    # parts writes (a $batch of GETs reads). "Fail the Nth write" whatever the reads between.
    writes_only: bool = False
    retry_after: int = 0
    code: str = "0x80072322"
    latency_ms: int = 0
    status: int = 500
    error_body: str = "route"
    shape: str = "html"
    key_path: str | None = None
    value: Any = 42
    depth: int = 200_000
    size_bytes: int = 1024 * 1024
    link_host: str = "https://elsewhere.example"
    part: int = 1
    after_commit: bool = False
    # An error rule whose answer quotes the request's body (below, ``echo_response``).
    echo_request: bool = False
    seen: int = field(default=0, compare=False)
    fired: int = field(default=0, compare=False)
    committed: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r} (one of {', '.join(KINDS)})")
        if self.kind == "throttle" and self.code not in THROTTLE_MESSAGES:
            raise ValueError(f"unknown throttle code {self.code!r} (one of {', '.join(THROTTLE_MESSAGES)})")
        if self.kind == "error" and not 400 <= self.status <= 599:
            raise ValueError(f"an error fault answers 4xx or 5xx, not {self.status}")
        if self.error_body not in ERROR_BODIES:
            raise ValueError(f"unknown error_body {self.error_body!r} (one of {', '.join(ERROR_BODIES)})")
        if self.kind == "malformed":
            if self.shape not in SHAPES:
                raise ValueError(f"unknown malformed shape {self.shape!r} (one of {', '.join(SHAPES)})")
            if self.shape in ("wrong_type", "missing_field") and not self.key_path:
                raise ValueError(f"a {self.shape} fault needs the key_path it alters")
            if self.shape == "part_status" and (not 100 <= self.status <= 599 or self.part < 1):
                raise ValueError(f"a part_status fault answers a part (Content-ID 1 or more, not {self.part}) "
                                 f"with a status of 100 to 599, not {self.status}")
        if self.echo_request and (self.kind != "error" or self.after_commit):
            raise ValueError("echo_request applies to error rules answered before the request is served")
        if self.after_commit and self.kind not in AFTER_COMMIT_KINDS:
            raise ValueError(f"after_commit applies to {', '.join(AFTER_COMMIT_KINDS)} rules "
                             f"(a malformed answer is always made after the commit), not to {self.kind!r}")
        if self.methods is not None:
            self.methods = tuple(m.upper() for m in self.methods)

    def matches(self, request: Request) -> bool:
        if self.methods is not None and request.method.upper() not in self.methods:
            return False
        if self.writes_only and not writes(request):
            return False
        return fnmatch.fnmatchcase(request.path, self.path)

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.fired >= self.times

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": self.path,
            "methods": list(self.methods) if self.methods else None,
            "probability": self.probability,
            "times": self.times,
            "after": self.after,
            "writes_only": self.writes_only,
            "retry_after": self.retry_after,
            "code": self.code,
            "latency_ms": self.latency_ms,
            "status": self.status,
            "error_body": self.error_body,
            "shape": self.shape,
            "key_path": self.key_path,
            "value": self.value,
            "depth": self.depth,
            "size_bytes": self.size_bytes,
            "link_host": self.link_host,
            "part": self.part,
            "after_commit": self.after_commit,
            "echo_request": self.echo_request,
        }


_WRITE_LINE = re.compile(rb"^(?:POST|PATCH|PUT|DELETE) ", re.MULTILINE)


def writes(request: Request) -> bool:
    """A Dataverse request that writes; a ``$batch`` when one of its parts writes."""
    if _route(request) != "dataverse" or request.method.upper() not in ("POST", "PATCH", "PUT", "DELETE"):
        return False
    if request.path.rstrip("/").endswith("$batch"):
        return bool(_WRITE_LINE.search(request.body))
    return True


def throttle_error(code: str = "0x80072322", retry_after: int = 0, message: str | None = None) -> HttpError:
    return HttpError(429, code, message or THROTTLE_MESSAGES[code], {"Retry-After": str(retry_after)})


def _route(request: Request) -> str:
    """Which family of routes a request is for: ``dataverse``, ``connections`` or ``identity``."""
    path = request.path.lower()
    if path == "/api/data/v9.2" or path.startswith("/api/data/v9.2/"):
        return "dataverse"
    if path.startswith("/connectivity/") or path.startswith("/providers/microsoft.powerapps/"):
        return "connections"
    return "identity"


def error_response(request: Request, status: int, *, body: str = "route", retry_after: int = 0,
                   code: str | None = None, message: str | None = None) -> Response:
    """An error answer in the shape ``body`` names (``route``: the shape of the route's own service)."""
    headers = {"Retry-After": str(retry_after)} if retry_after else {}
    if body == "html":
        return Response(status, _HTML_PAGE, {"Content-Type": "text/html; charset=utf-8", **headers})
    if body == "oauth" or (body == "route" and _route(request) == "identity"):
        error, aadsts, text = OAUTH_ERRORS[429] if status == 429 else OAUTH_ERRORS[500]
        payload = {"error": error, "error_description": f"AADSTS{aadsts}: {text}", "error_codes": [aadsts]}
        return Response(status, json.dumps(payload).encode("utf-8"),
                        {"Content-Type": "application/json; charset=utf-8", **headers})
    if code is None:
        code, default = _GENERIC_500 if status == 500 else ("", reason_phrase(status))
        message = message or default
    return HttpError(status, code, message or "", headers).response()


def echo_response(request: Request, rule: FaultRule) -> Response:
    """An error answer of ``rule`` (its status and ``error_body``) that quotes the request's body as it came
    (for a token request: the urlencoded form, secret or assertion included), as a service or a proxy in front
    of it that repeats a request it refuses may answer: the identity routes in the OAuth shape with the body as
    ``error_description``, the APIs in ``{"error": {"code", "message"}}`` with the body as ``message``, and
    ``html`` as a page quoting it. What the client must never show, in whatever encoding it came back."""
    text = request.body.decode("utf-8", "replace")
    headers = {"Retry-After": str(rule.retry_after)} if rule.retry_after else {}
    if rule.error_body == "html":
        page = f"<!DOCTYPE html><html><body><h1>Bad Request</h1><pre>{text}</pre></body></html>"
        return Response(rule.status, page.encode("utf-8"), {"Content-Type": "text/html; charset=utf-8", **headers})
    if rule.error_body == "oauth" or (rule.error_body == "route" and _route(request) == "identity"):
        payload = {"error": "invalid_request", "error_description": text}
        return Response(rule.status, json.dumps(payload).encode("utf-8"),
                        {"Content-Type": "application/json; charset=utf-8", **headers})
    return HttpError(rule.status, "0x80040203", text, headers).response()


def _edit(doc: Any, path: list[str], change: Callable[[dict[str, Any], str], None]) -> None:
    """Apply ``change(parent, key)`` at ``path`` (``[]`` after a key: every item of that list)."""
    if not path or not isinstance(doc, dict):
        return
    head, rest = path[0], path[1:]
    every = head.endswith("[]")
    key = head[:-2] if every else head
    if not rest and not every:
        change(doc, key)
        return
    child = doc.get(key)
    for item in (child if every and isinstance(child, list) else [child]):
        _edit(item, rest, change)


def malformed_response(rule: FaultRule, request: Request, real: Response) -> Response:
    """The answer ``rule`` makes of the real answer ``real`` to ``request``."""
    json_type = {"Content-Type": "application/json; odata.metadata=minimal", "OData-Version": "4.0"}
    shape = rule.shape
    if shape == "html":
        return Response(200, _HTML_PAGE, {"Content-Type": "text/html; charset=utf-8"})
    if shape == "empty":
        return Response(200, b"", json_type)
    if shape == "null":
        return Response(200, b"null", json_type)
    if shape == "deep":
        return Response(200, b"[" * rule.depth + b"]" * rule.depth, json_type)
    if shape == "truncated":
        return Response(real.status, real.body[: len(real.body) // 2], dict(real.headers))
    if shape == "part_status":
        return _part_answered(real, rule.part, rule.status)
    try:
        doc = json.loads(real.body) if real.body else None
    except ValueError:
        return real
    if shape == "wrong_type":
        _edit(doc, str(rule.key_path).split("/"), lambda parent, key: parent.__setitem__(key, rule.value))
    elif shape == "missing_field":
        _edit(doc, str(rule.key_path).split("/"), lambda parent, key: parent.pop(key, None))
    elif shape == "huge" and isinstance(doc, dict):
        doc["padding"] = ""
        doc["padding"] = "x" * max(0, rule.size_bytes - len(json.dumps(doc)))
    elif shape in ("self_link", "foreign_link") and isinstance(doc, dict):
        query = f"?{request.query_string}" if request.query_string else ""
        origin = rule.link_host.rstrip("/") if shape == "foreign_link" else request.origin
        own = origin + request.path + query
        key = "nextLink" if _route(request) == "connections" and "nextLink" in doc else "@odata.nextLink"
        doc[key] = own
    return Response(real.status, json.dumps(doc).encode("utf-8"), dict(real.headers))


def _part_answered(real: Response, part: int, status: int) -> Response:
    """The real ``$batch`` answer with the part that answers ``Content-ID: part`` answering ``status`` instead
    (echoed inside every change set, docs/dataverse.md §3.7), the rest as served; unchanged when no part
    answers that Content-ID."""
    answer = (HttpError(status, "", reason_phrase(status)).response() if status >= 400
              else Response.empty(status))
    block = "\r\n".join([f"HTTP/1.1 {status} {reason_phrase(status)}",
                          *(f"{k}: {v}" for k, v in answer.headers.items())]) + "\r\n\r\n"
    # A part's HTTP answer runs from its status line to the CRLF before the next delimiter ("--").
    pattern = re.compile(rb"(Content-ID: " + str(part).encode("ascii") + rb"\r\n\r\n)HTTP/\d\.\d \d{3}.*?(?=\r\n--)",
                         re.DOTALL | re.IGNORECASE)
    body = pattern.sub(lambda m: m.group(1) + block.encode("utf-8") + answer.body, real.body, count=1)
    return Response(real.status, body, dict(real.headers))


@dataclass
class Decision:
    """What the faults say about one request: wait ``delay`` seconds, then answer ``response`` or drop,
    or serve it and let ``alter`` change the answer. With ``after_commit`` the request is served first,
    then held ``late`` seconds, then dropped or answered ``response`` instead; ``served`` are the rules
    to tell once it has been served."""

    delay: float = 0.0
    response: Response | None = None
    drop: bool = False
    name: str | None = None
    alter: Callable[[Response], Response] | None = None
    after_commit: bool = False
    late: float = 0.0
    served: list[FaultRule] = field(default_factory=list)

    def mark_served(self) -> None:
        for rule in self.served:
            rule.committed.set()


def _user_key(request: Request) -> str:
    """The caller a request counts against (token ``oid``), read without verifying: the limit is a
    load-shedding measure, the route still verifies the token."""
    auth = request.headers.get("Authorization") or ""
    if auth.lower().startswith("bearer "):
        parts = auth[7:].strip().split(".")
        if len(parts) == 3:
            try:
                pad = "=" * (-len(parts[1]) % 4)
                claims = json.loads(base64.urlsafe_b64decode(parts[1] + pad))
                return str(claims.get("oid") or "anonymous")
            except (ValueError, UnicodeDecodeError):
                pass
    return "anonymous"


class Faults:
    """The fault configuration of one app (``app.faults``)."""

    def __init__(self, seed: int = 0, concurrency_limit: int | None = 52, latency_ms: int = 0) -> None:
        self.seed = seed
        #: Round-trip latency added to every request, whatever its route (milliseconds).
        self.latency_ms = latency_ms
        self.rng = random.Random(seed)
        self.rules: list[FaultRule] = []
        #: Service protection: at most this many in-flight Dataverse requests per user (None = no limit).
        self.concurrency_limit = concurrency_limit
        self._inflight: dict[str, int] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ configuration

    def add(
        self,
        kind: str,
        path: str = "*",
        methods: Iterable[str] | None = None,
        **options: Any,
    ) -> FaultRule:
        rule = FaultRule(kind=kind, path=path, methods=tuple(methods) if methods is not None else None, **options)
        with self._lock:
            self.rules.append(rule)
        return rule

    def fail_next(
        self,
        n: int,
        path: str = "*",
        kind: str = "unavailable",
        methods: Iterable[str] | None = None,
        **options: Any,
    ) -> FaultRule:
        """Fail the next ``n`` requests matching ``path``/``methods`` with ``kind``, then behave."""
        return self.add(kind, path, methods, times=n, **options)

    def throttle(
        self,
        path: str = "*",
        code: str = "0x80072322",
        retry_after: int = 0,
        methods: Iterable[str] | None = None,
        **options: Any,
    ) -> FaultRule:
        return self.add("throttle", path, methods, code=code, retry_after=retry_after, **options)

    def reseed(self, seed: int) -> None:
        with self._lock:
            self.seed = seed
            self.rng = random.Random(seed)

    def clear(self) -> None:
        """Remove every rule (the concurrency limit stays)."""
        with self._lock:
            self.rules.clear()

    def load(self, config: dict[str, Any]) -> None:
        """Replace the configuration with a JSON-style dict (the ``--faults`` file format)."""
        unknown = set(config) - {"seed", "concurrency_limit", "latency_ms", "rules"}
        if unknown:
            raise ValueError(f"unknown fault option(s): {', '.join(sorted(unknown))}")
        rules = []
        for r in config.get("rules", []):
            r = dict(r)
            methods = r.pop("methods", None)
            rules.append(FaultRule(methods=tuple(methods) if methods else None, **r))
        with self._lock:
            self.seed = int(config.get("seed", 0))
            self.rng = random.Random(self.seed)
            self.rules = rules
            if "concurrency_limit" in config:
                self.concurrency_limit = config["concurrency_limit"]
            self.latency_ms = int(config.get("latency_ms", 0))

    @classmethod
    def from_file(cls, path: str) -> Faults:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        faults = cls()
        try:
            faults.load(config)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None
        return faults

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "concurrency_limit": self.concurrency_limit,
            "latency_ms": self.latency_ms,
            "rules": [r.to_dict() for r in self.rules],
        }

    # ------------------------------------------------------------------ evaluation

    def _fires(self, rule: FaultRule) -> bool:
        """Count a matching request against ``rule`` and say whether it fires for it: past its first
        ``after`` matches, and drawn with its ``probability`` (under ``self._lock``)."""
        rule.seen += 1
        if rule.seen <= rule.after:
            return False
        if rule.probability < 1.0 and self.rng.random() >= rule.probability:
            return False
        rule.fired += 1
        return True

    def decide(self, request: Request) -> Decision:
        """Which faults fire for this request (latency adds up; the first failing rule answers)."""
        decision = Decision(delay=max(self.latency_ms, 0) / 1000.0)
        with self._lock:
            for rule in self.rules:
                if rule.exhausted or not rule.matches(request) or not self._fires(rule):
                    continue
                if rule.after_commit or rule.kind == "malformed":
                    decision.served.append(rule)
                if rule.kind == "latency":
                    if rule.after_commit:
                        decision.late += rule.latency_ms / 1000.0
                        decision.name = decision.name or "late answer"
                    else:
                        decision.delay += rule.latency_ms / 1000.0
                    continue
                decision.name = rule.kind
                decision.after_commit = rule.after_commit
                if rule.kind == "throttle":
                    if (rule.error_body == "route" and _route(request) != "identity") or rule.error_body == "odata":
                        decision.response = throttle_error(rule.code, rule.retry_after).response()
                    else:
                        decision.response = error_response(request, 429, body=rule.error_body,
                                                           retry_after=rule.retry_after)
                elif rule.kind == "unavailable":
                    decision.response = error_response(request, 503, body=rule.error_body,
                                                       retry_after=rule.retry_after,
                                                       code="", message="Service Unavailable")
                elif rule.kind == "error":
                    decision.response = error_response(request, rule.status, body=rule.error_body,
                                                       retry_after=rule.retry_after)
                elif rule.kind == "malformed":
                    decision.alter = functools.partial(malformed_response, rule, request)
                else:
                    decision.drop = True
                if rule.echo_request:
                    decision.response = echo_response(request, rule)
                break
        return decision

    def decide_part(self, request: Request) -> Decision:
        """``decide`` for a GET carried as a part of a ``$batch``: only the rules that answer or alter one
        response (``error``, ``malformed``, not after the commit) apply (module docstring)."""
        decision = Decision()
        with self._lock:
            for rule in self.rules:
                if (rule.exhausted or rule.kind not in ("error", "malformed") or rule.after_commit
                        or not rule.matches(request) or not self._fires(rule)):
                    continue
                decision.name = rule.kind
                if rule.kind == "error":
                    decision.response = error_response(request, rule.status, body=rule.error_body,
                                                       retry_after=rule.retry_after)
                else:
                    decision.served.append(rule)
                    decision.alter = functools.partial(malformed_response, rule, request)
                break
        return decision

    def enter(self, request: Request) -> str | None:
        """Count a Dataverse request in flight for its user; returns the key to pass to ``leave``, or
        raises the documented concurrency 429 when the user is over the limit."""
        if self.concurrency_limit is None:
            return None
        key = _user_key(request)
        with self._lock:
            n = self._inflight.get(key, 0)
            if n >= self.concurrency_limit:
                raise throttle_error(
                    "0x80072326",
                    0,
                    f"Number of concurrent requests exceeded the limit of {self.concurrency_limit}.",
                )
            self._inflight[key] = n + 1
        return key

    def leave(self, key: str | None) -> None:
        if key is None:
            return
        with self._lock:
            n = self._inflight.get(key, 0) - 1
            if n <= 0:
                self._inflight.pop(key, None)
            else:
                self._inflight[key] = n
