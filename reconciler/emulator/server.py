"""Serve emulator apps over loopback HTTP(S) with the standard library's WSGI server, one thread per
connection, and the ``connref emulator`` command.

Connections are persistent (HTTP/1.1 keep-alive, as the services connref talks to keep them): a
client sends its next request on the connection it already has instead of a new TCP connection and
TLS handshake. ``shutdown()`` closes the connections still open, so a stopped server serves nothing.

``serve(app)`` starts a server in a background thread and returns it (``.url``, ``.shutdown()``);
tests use it, and ``main``/``run_emulator_command`` use it to serve until interrupted. A fault that
drops the connection (``faults.ConnectionDropped``) closes the socket without a response.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import socket
import ssl
import sys
import threading
from collections.abc import Sequence
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer

from .app import EmulatorApp
from .faults import ConnectionDropped, Faults
from .session import HTTP_NOTE, Session, snippet
from .store import EnvironmentStore, new_environment_data

#: Seconds a kept-alive connection may stay idle before the server closes it.
IDLE_TIMEOUT = 60.0


class _Handler(ServerHandler):
    http_version = "1.1"  # every answer carries Content-Length (EmulatorApp.__call__): keep-alive works
    dropped = False
    answered = False  # the answer was written (wsgiref's own headers_sent is reset when the handler closes)
    request_handler: WSGIRequestHandler | None = None  # as wsgiref's own handle() sets it

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: list[bytes] = []

    # wsgiref writes an answer in pieces (status line, Date, Server, the other headers, the body), each a
    # send of its own: over TLS a record and a system call each, and as many reads for the client. They are
    # gathered here and sent together when wsgiref flushes after the body: the same bytes, one write.
    def _write(self, data: bytes) -> None:
        self._pending.append(data)

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            super()._write(data)
            self.answered = True
        self.stdout.flush()

    def finish_content(self) -> None:
        super().finish_content()  # headers of an answer without a body are written without a flush
        self._flush()

    def handle_error(self) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionDropped):
            self.dropped = True
            return  # write nothing: the request handler closes the socket
        super().handle_error()


class _RequestHeaders(http.client.HTTPMessage):
    """A request's headers. http.server parses the header block with the email package, which takes a
    ``multipart/*`` Content-Type (every ``$batch``) for a MIME message and compiles a pattern for its boundary
    (about 0.15 ms, each batch having its own) to look for parts in a body the block never has: it ends at the
    blank line, and the application reads the body. No boundary here skips that search; the headers parse the
    same, and the application reads the boundary from the Content-Type value itself (batch._boundary)."""

    def get_boundary(self, failobj: Any = None) -> Any:
        return failobj


class _RequestHandler(WSGIRequestHandler):
    protocol_version = "HTTP/1.1"  # persistent connections unless the client asks to close
    timeout = IDLE_TIMEOUT  # a connection idle this long is closed
    MessageClass = _RequestHeaders

    def setup(self) -> None:
        # With Nagle's algorithm on, the last part of an answer that does not fit in one segment waits
        # for the client to acknowledge the segments before it, which a client acknowledges late (delayed
        # ACK, ~40 ms on Linux), so a round trip could gain 40 ms the services do not have. Web servers
        # switch it off; so does the client (httpcore sets TCP_NODELAY on its sockets).
        with contextlib.suppress(OSError):
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()  # in this connection's thread, not the accept loop
        super().setup()
        server = self.server
        if isinstance(server, _ThreadingWSGIServer):
            server.track(self.connection)

    def finish(self) -> None:
        server = self.server
        if isinstance(server, _ThreadingWSGIServer):
            server.untrack(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def get_environ(self) -> dict[str, Any]:
        env: dict[str, Any] = super().get_environ()
        if isinstance(self.request, ssl.SSLSocket):
            env["HTTPS"] = "on"
        return env

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests and CLI output stay clean
        pass

    def handle(self) -> None:
        # http.server's loop over the requests of one connection (wsgiref answers one and closes).
        self.close_connection = True
        self.handle_one_request()
        while not self.close_connection:
            self.handle_one_request()

    def handle_one_request(self) -> None:
        # wsgiref's handle(), with our ServerHandler that knows how to drop a connection.
        try:
            self.raw_requestline = self.rfile.readline(65537)
        except (TimeoutError, OSError):  # idle past the timeout, or closed by shutdown()
            self.close_connection = True
            return
        if not self.raw_requestline:  # the client closed the connection
            self.close_connection = True
            return
        if len(self.raw_requestline) > 65536:
            self.send_error(414)
            return
        if not self.parse_request():
            return
        handler = _Handler(
            self.rfile,
            self.wfile,
            self.get_stderr(),
            self.get_environ(),
            multithread=True,
        )
        handler.dropped = False
        handler.request_handler = self
        assert isinstance(self.server, WSGIServer)
        app = self.server.get_app()
        assert app is not None, "serve() sets the app before the server starts"
        handler.run(app)
        # No answer written: a dropped connection (wsgiref's run() swallows the ConnectionAbortedError
        # that ConnectionDropped is without calling handle_error), or a client gone mid-answer. The
        # connection cannot carry another request: close it, as the client expects.
        if handler.dropped or not handler.answered:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = 128  # bursts of concurrent requests (the 52-per-user limit) must connect

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        self._closing = False

    def track(self, conn: socket.socket) -> None:
        with self._open_lock:
            if not self._closing:
                self._open.add(conn)
                return
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)

    def untrack(self, conn: socket.socket) -> None:
        with self._open_lock:
            self._open.discard(conn)

    def close_connections(self) -> None:
        """End every open connection: its thread reads end-of-file and returns."""
        with self._open_lock:
            self._closing = True
            conns, self._open = list(self._open), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class RunningServer:
    """One app served on one port in a background thread."""

    def __init__(self, app: EmulatorApp, server: _ThreadingWSGIServer, thread: threading.Thread, scheme: str) -> None:
        self.app = app
        self._server = server
        self._thread = thread
        host, port = server.server_address[:2]
        self.host = str(host)
        self.port = int(port)
        self.url = f"{scheme}://{self.host}:{self.port}"

    def shutdown(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._server.close_connections()
        self._thread.join(timeout=5)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


class RunningServers(list[RunningServer]):
    """Several environments, one port each (``port``, ``port+1``, ...)."""

    @property
    def url(self) -> str:
        return self[0].url

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self]

    def shutdown(self) -> None:
        for s in self:
            s.shutdown()


def _serve_one(app: EmulatorApp, host: str, port: int, ssl_context: ssl.SSLContext | None) -> RunningServer:
    server = _ThreadingWSGIServer((host, port), _RequestHandler)
    server.set_app(app)
    if ssl_context is not None:
        server.socket = ssl_context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name=f"connref-emulator-{server.server_address[1]}",
        daemon=True,
    )
    thread.start()
    return RunningServer(app, server, thread, "https" if ssl_context is not None else "http")


def serve(
    app_or_apps: EmulatorApp | Sequence[EmulatorApp],
    host: str = "127.0.0.1",
    port: int = 0,
    ssl_context: ssl.SSLContext | None = None,
) -> Any:
    """Start serving in background threads. One app -> a :class:`RunningServer`; a sequence ->
    :class:`RunningServers` on ``port``, ``port+1``, ... (each its own free port when ``port`` is 0)."""
    if isinstance(app_or_apps, EmulatorApp):
        return _serve_one(app_or_apps, host, port, ssl_context)
    servers = RunningServers()
    try:
        for i, app in enumerate(app_or_apps):
            servers.append(_serve_one(app, host, port + i if port else 0, ssl_context))
    except BaseException:
        servers.shutdown()
        raise
    return servers


def _ssl_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if not cert and not key:
        return None
    if not cert or not key:
        raise ValueError("--tls-cert and --tls-key go together")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def build_apps(data_files: Sequence[str], faults_file: str | None = None, persist: bool = False,
               latency_ms: int | None = None) -> list[EmulatorApp]:
    """One app per data file (or one fresh in-memory environment when none is given). ``latency_ms``
    (when given) delays every request of every app, token endpoint included."""
    stores = [EnvironmentStore.from_file(p) for p in data_files] or [EnvironmentStore.from_dict(new_environment_data())]
    apps = []
    for store in stores:
        faults = Faults.from_file(faults_file) if faults_file else Faults()
        if latency_ms is not None:
            faults.latency_ms = latency_ms
        apps.append(EmulatorApp(store, persist=persist and store.path is not None, faults=faults))
    return apps


def run_emulator_command(args: Any) -> int:
    """``connref emulator``: ``args.port`` (int|None), ``args.data`` (list of paths, or one path, or None),
    ``args.faults``, ``args.tls_cert``, ``args.tls_key``; optional ``args.persist``. Serves until
    interrupted; returns the exit code."""
    data = getattr(args, "data", None) or []
    if isinstance(data, str):
        data = [data]
    tls = bool(getattr(args, "tls", False))
    cert, key = getattr(args, "tls_cert", None), getattr(args, "tls_key", None)
    if tls and (cert or key):
        print("connref emulator: --tls makes its own certificate; leave out --tls-cert and --tls-key",
              file=sys.stderr)
        return 1
    session: Session | None = None
    try:
        apps = build_apps(list(data), getattr(args, "faults", None), bool(getattr(args, "persist", False)),
                          getattr(args, "latency_ms", None))
        if tls or cert:
            session = Session.start(make_ca=tls)
        ctx = session.tls.server_context() if session and session.tls else _ssl_context(cert, key)
        servers = serve(
            apps,
            host=getattr(args, "host", None) or "127.0.0.1",
            port=int(getattr(args, "port", None) or 0),
            ssl_context=ctx,
        )
    except (OSError, ValueError, json.JSONDecodeError) as e:
        if session is not None:
            session.close()
        print(f"connref emulator: {e}", file=sys.stderr)
        return 1
    for server in servers:
        env = server.app.store.environment
        source = server.app.store.path or "(in-memory environment)"
        print(
            f"{env.get('name', 'environment')}: {server.url}  <- "
            f"{os.path.relpath(source) if server.app.store.path else source}",
            flush=True,
        )
    print(snippet(servers, session) if session is not None else HTTP_NOTE, flush=True)
    stop = threading.Event()
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        servers.shutdown()
        if session is not None:
            session.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="connref emulator", description="Serve the local Dataverse + connections + token emulator."
    )
    parser.add_argument("--port", type=int, default=0, help="first port (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--data", action="append", help="emulator data file (repeat for several environments)")
    parser.add_argument("--faults", help="fault-injection JSON file")
    parser.add_argument("--latency-ms", dest="latency_ms", type=int,
                        help="delay every request by this many milliseconds (all routes)")
    parser.add_argument("--tls", action="store_true", help="https with a throwaway CA, and a config snippet")
    parser.add_argument("--tls-cert", dest="tls_cert")
    parser.add_argument("--tls-key", dest="tls_key")
    parser.add_argument("--persist", action="store_true", help="write changes back into the data files")
    return run_emulator_command(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
