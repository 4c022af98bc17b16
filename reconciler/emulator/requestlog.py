"""The emulator's request log: one entry per HTTP request it answered, for tests to count requests
("plan reads in bulk", "apply writes in one $batch") without timing anything.

Emulator-only: a real environment has no such log. Entries never hold a token or a body.
"""

from __future__ import annotations

import fnmatch
import threading
from dataclasses import dataclass, field


@dataclass(frozen=True)
class BatchPart:
    """One request inside a ``$batch`` (method, path relative to the service root, status)."""

    method: str
    path: str
    status: int
    content_id: str | None = None


@dataclass(frozen=True)
class LogEntry:
    method: str
    path: str
    query: str
    status: int
    caller_object_id: str | None = None  # the ``oid`` of the bearer token, when there was a valid one
    effective_user_id: str | None = None  # systemuserid the request acted as (after impersonation)
    batch_count: int | None = None  # number of inner requests, for a $batch
    parts: tuple[BatchPart, ...] = field(default_factory=tuple)
    fault: str | None = None  # the injected fault, if one answered instead of the route
    # When the app received the request and when it answered (``time.perf_counter()``, injected latency
    # included): benchmarks find the critical path of round trips with them. Tests count, never time.
    started: float = 0.0
    finished: float = 0.0

    @property
    def is_write(self) -> bool:
        """A write request; a ``$batch`` only when one of its parts writes (a batch of GETs reads)."""
        if self.batch_count is not None:
            return any(p.method not in ("GET", "HEAD") for p in self.parts)
        return self.method in ("POST", "PATCH", "PUT", "DELETE")


class RequestLog(list[LogEntry]):
    """A list of :class:`LogEntry` (thread-safe append) with counting helpers; ``clear()`` empties it."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def record(self, entry: LogEntry) -> None:
        with self._lock:
            self.append(entry)

    def matching(self, method: str | None = None, path: str | None = None) -> list[LogEntry]:
        """Entries with this method (any if None) whose path matches the glob ``path`` (any if None)."""
        with self._lock:
            items = list(self)
        return [
            e
            for e in items
            if (method is None or e.method == method.upper()) and (path is None or fnmatch.fnmatchcase(e.path, path))
        ]

    def count_requests(self, method: str | None = None, path: str | None = None) -> int:
        return len(self.matching(method, path))

    def count_writes(self, path: str | None = None) -> int:
        """Requests that wrote (``LogEntry.is_write``: a ``$batch`` of GETs is a read) whose path matches."""
        return sum(1 for e in self.matching(None, path) if e.is_write)

    def inner_requests(self) -> list[BatchPart]:
        """Every request carried inside the logged ``$batch`` requests, in order."""
        with self._lock:
            return [p for e in self for p in e.parts]
