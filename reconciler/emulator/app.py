"""The emulator as one WSGI application: Dataverse Web API, connections API and token endpoint for
one environment.

The same object serves loopback sockets (``server.serve``) and in-process clients
(``reconciler.api.session.InProcessTransport`` for ``local:`` environments), so both go
through identical code. It dispatches by path:

* ``/api/data/v9.2/...`` -> ``dataverse.handle``
* ``/connectivity/...``, ``/providers/Microsoft.PowerApps/...`` -> ``connections.handle``
* ``/v1.0/...`` (Microsoft Graph) -> ``graph.handle``
* anything else (token, discovery and OIDC routes) -> ``tokens.handle``

A route module returning ``None`` means "not my route" (404). ``connections`` and ``tokens`` are
imported lazily so the app works (their routes answer 404) while they are absent.
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from types import ModuleType
from typing import Any

from . import dataverse, workflows
from .dvcommon import API_ROOT, wants_annotations
from .faults import ConnectionDropped, Faults
from .requestlog import BatchPart, LogEntry, RequestLog
from .store import DEFAULT_SETTINGS, EnvironmentStore
from .web import Headers, HttpError, Request, Response, reason_phrase

StartResponse = Callable[..., Any]
_WRITE_METHODS = {"POST", "PATCH", "PUT", "DELETE"}


class Settings(MutableMapping[str, Any]):
    """The data's ``settings`` over the defaults; writes go into the data (so they persist with it)."""

    def __init__(self, store: EnvironmentStore) -> None:
        self._store = store

    def _own(self) -> dict[str, Any]:
        own: dict[str, Any] = self._store.data.setdefault("settings", {})
        return own

    def __getitem__(self, key: str) -> Any:
        own = self._own()
        if key in own:
            return own[key]
        return DEFAULT_SETTINGS[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._own()[key] = value

    def __delitem__(self, key: str) -> None:
        del self._own()[key]

    def __iter__(self) -> Iterator[str]:
        return iter({**DEFAULT_SETTINGS, **self._own()})

    def __len__(self) -> int:
        return len({**DEFAULT_SETTINGS, **self._own()})

    def __repr__(self) -> str:
        return f"Settings({dict(self)!r})"


def _wsgi_str(s: str) -> str:
    """PEP 3333 hands paths over as latin-1-decoded bytes; recover UTF-8 where that is what they were."""
    try:
        return s.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return s


def request_from_environ(environ: dict[str, Any]) -> Request:
    headers: list[tuple[str, str]] = []
    for k, v in environ.items():
        if k.startswith("HTTP_"):
            headers.append((k[5:].replace("_", "-"), v))
    if environ.get("CONTENT_TYPE"):
        headers.append(("Content-Type", environ["CONTENT_TYPE"]))
    if environ.get("CONTENT_LENGTH"):
        headers.append(("Content-Length", environ["CONTENT_LENGTH"]))
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    body = environ["wsgi.input"].read(length) if length > 0 else b""
    host = environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME', 'localhost')}:{environ.get('SERVER_PORT', '80')}"
    return Request(
        method=str(environ.get("REQUEST_METHOD", "GET")).upper(),
        path=_wsgi_str(environ.get("PATH_INFO", "") or "/"),
        query_string=_wsgi_str(environ.get("QUERY_STRING", "")),
        headers=Headers(headers),
        body=body,
        scheme=environ.get("wsgi.url_scheme", "http"),
        host=host,
    )


class EmulatorApp:
    """WSGI callable serving one environment (``store``). ``persist=True`` saves the store to its file
    after every successful write (how ``apply`` on a ``local:`` environment writes back)."""

    def __init__(self, store: EnvironmentStore, *, persist: bool = False, faults: Faults | None = None) -> None:
        self.store = store
        self.persist = persist
        self.log = RequestLog()
        self.faults = faults or Faults()
        self.settings = Settings(store)
        # Client secrets accepted for this process only (client id -> SHA-256 hex digests), never part of the
        # data: what ``connref emulator --tls`` registers for the session it prints (emulator/session.py).
        self.session_secret_hashes: dict[str, list[str]] = {}
        self._modules: dict[str, ModuleType] = {}

    # ------------------------------------------------------------------ WSGI

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        request = request_from_environ(environ)
        response = self.handle(request)
        headers = dict(response.headers)
        body = b"" if response.status in (204, 304) else response.body
        headers["Content-Length"] = str(len(body))
        start_response(f"{response.status} {reason_phrase(response.status)}", list(headers.items()))
        return [body]

    # ------------------------------------------------------------------ dispatch

    def handle(self, request: Request) -> Response:
        """Answer one request (faults, routing, errors, log, persistence); raises ``ConnectionDropped``
        when a fault drops the connection."""
        started = time.perf_counter()
        # Service protection counts a user's requests in flight (latency included); Dataverse only.
        slot = None
        try:
            if request.path == API_ROOT or request.path.startswith(API_ROOT + "/"):
                try:
                    slot = self.faults.enter(request)
                except HttpError as e:
                    self._log(request, e.status, fault="concurrency", started=started)
                    return e.response(annotations=wants_annotations(request))
            response = self._answer(request)
        finally:
            self.faults.leave(slot)
        if response is None:
            return self._dropped(request, started)
        self._log(request, response.status, fault=request.state.get("fault"), started=started)
        return response

    def _answer(self, request: Request) -> Response | None:
        """Faults then routing; None when a fault drops the connection. A rule acting after the commit
        lets the request be served (and saved) first, then holds, drops or replaces its answer."""
        decision = self.faults.decide(request)
        if decision.delay:
            time.sleep(decision.delay)
        if not decision.after_commit:
            if decision.drop:
                return None
            if decision.response is not None:
                request.state["fault"] = decision.name
                return decision.response
        response = self._serve(request)
        decision.mark_served()
        if decision.late:
            request.state["fault"] = decision.name
            time.sleep(decision.late)  # committed already: only the answer is late
        if decision.after_commit:
            request.state["fault"] = decision.name
            if decision.drop:
                return None
            if decision.response is not None:
                return decision.response
        if decision.alter is not None:
            # Served (a write is committed), then the answer is replaced or altered.
            request.state["fault"] = decision.name
            response = decision.alter(response)
        return response

    def _serve(self, request: Request) -> Response:
        """Route the request and save what it wrote (``persist``), whatever becomes of its answer."""
        try:
            response = self.dispatch(request)
        except HttpError as e:
            response = e.response(annotations=wants_annotations(request))
        except Exception:
            # A bug in a route: answer like the service's generic 500 and keep serving.
            traceback.print_exc(file=sys.stderr)
            response = HttpError(500, "0x80040216", "An unexpected error occurred.").response()
        # Token requests are POSTs that change nothing; every other successful write is saved.
        wrote = (request.method in _WRITE_METHODS and response.status < 400 and request.state.get("route") != "tokens"
                 and "batch_count" not in request.state)  # a $batch marks itself dirty when a part writes
        if self.persist and (wrote or request.state.get("dirty")):
            self.store.save()
        return response

    def _dropped(self, request: Request, started: float) -> Response:
        self._log(request, 0, fault="drop", started=started)
        raise ConnectionDropped()

    def dispatch(self, request: Request) -> Response:
        path = request.path
        if path == API_ROOT or path.startswith(API_ROOT + "/"):
            # Asynchronous flow updates whose time has come finish before the request is served
            # (docs/dataverse.md §5.7): no background thread, the same answer in-process and over loopback.
            if workflows.run_due_updates(self.store):
                request.state["dirty"] = True
            return dataverse.handle(self, request)
        if path.startswith("/connectivity/") or path.lower().startswith("/providers/microsoft.powerapps/"):
            module = self._module("connections")
        elif path.startswith("/v1.0/"):
            module = self._module("graph")
        else:
            request.state["route"] = "tokens"
            module = self._module("tokens")
        if module is not None:
            result: Response | None = module.handle(self, request)
            if result is not None:
                return result
        raise HttpError(404, "", f"Resource not found for the segment '{path.strip('/')}'.")

    def _module(self, name: str) -> ModuleType | None:
        if name in self._modules:
            return self._modules[name]
        full = f"{__package__}.{name}"
        try:
            module = importlib.import_module(full)
        except ModuleNotFoundError as e:
            if e.name == full:
                return None  # not written (yet): its routes answer 404
            raise
        self._modules[name] = module
        return module

    # ------------------------------------------------------------------ request log

    def _log(self, request: Request, status: int, fault: str | None = None, started: float = 0.0) -> None:
        parts: list[BatchPart] = request.state.get("batch_parts", [])
        self.log.record(
            LogEntry(
                method=request.method,
                path=request.path,
                query=request.query_string,
                status=status,
                caller_object_id=request.state.get("caller_object_id"),
                effective_user_id=request.state.get("effective_user_id"),
                batch_count=request.state.get("batch_count"),
                parts=tuple(parts),
                fault=fault,
                started=started,
                finished=time.perf_counter(),
            )
        )
