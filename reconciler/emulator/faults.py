"""Deterministic fault injection for the emulator: latency, service-protection 429s, transient 503s and
dropped connections, per route pattern and method, plus the per-user concurrent-request limit.

The 429 bodies, codes and ``Retry-After`` header follow powerapps-docs
``developer/data-platform/api-limits.md`` (docs/dataverse.md §3.8): three limits, each with its own code:

* ``0x80072322`` "Number of requests exceeded the limit of 6000 over time window of 300 seconds."
* ``0x80072321`` "Combined execution time of incoming requests exceeded limit of 1,200,000 milliseconds ..."
* ``0x80072326`` "Number of concurrent requests exceeded the limit of 52." (bites at once, per user)

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
import json
import random
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from .web import HttpError, Request, Response

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
KINDS = ("latency", "throttle", "unavailable", "drop")


class ConnectionDropped(httpx.RemoteProtocolError):
    """Raised by the app to drop the connection without a response. The loopback server closes the
    socket; in-process (``httpx.WSGITransport``) it reaches the client as the transport error it is."""

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
    retry_after: int = 0
    code: str = "0x80072322"
    latency_ms: int = 0
    seen: int = field(default=0, compare=False)
    fired: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r} (one of {', '.join(KINDS)})")
        if self.kind == "throttle" and self.code not in THROTTLE_MESSAGES:
            raise ValueError(f"unknown throttle code {self.code!r} (one of {', '.join(THROTTLE_MESSAGES)})")
        if self.methods is not None:
            self.methods = tuple(m.upper() for m in self.methods)

    def matches(self, request: Request) -> bool:
        if self.methods is not None and request.method.upper() not in self.methods:
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
            "retry_after": self.retry_after,
            "code": self.code,
            "latency_ms": self.latency_ms,
        }


def throttle_error(code: str = "0x80072322", retry_after: int = 0, message: str | None = None) -> HttpError:
    return HttpError(429, code, message or THROTTLE_MESSAGES[code], {"Retry-After": str(retry_after)})


@dataclass
class Decision:
    """What the faults say about one request: wait ``delay`` seconds, then answer ``response`` or drop."""

    delay: float = 0.0
    response: Response | None = None
    drop: bool = False
    name: str | None = None


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

    def decide(self, request: Request) -> Decision:
        """Which faults fire for this request (latency adds up; the first failing rule answers)."""
        decision = Decision(delay=max(self.latency_ms, 0) / 1000.0)
        with self._lock:
            for rule in self.rules:
                if rule.exhausted or not rule.matches(request):
                    continue
                rule.seen += 1
                if rule.seen <= rule.after:
                    continue
                if rule.probability < 1.0 and self.rng.random() >= rule.probability:
                    continue
                rule.fired += 1
                if rule.kind == "latency":
                    decision.delay += rule.latency_ms / 1000.0
                    continue
                decision.name = rule.kind
                if rule.kind == "throttle":
                    decision.response = throttle_error(rule.code, rule.retry_after).response()
                elif rule.kind == "unavailable":
                    headers = {"Retry-After": str(rule.retry_after)} if rule.retry_after else None
                    decision.response = HttpError(503, "", "Service Unavailable", headers).response()
                else:
                    decision.drop = True
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
