"""The loopback server writes each answer whole, in one write: status line, headers and body together
(reconciler/emulator/server.py, ``_Handler``), also when the answer has no body, and nothing when a fault
drops the connection."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any

from reconciler.emulator.faults import ConnectionDropped
from reconciler.emulator.server import _Handler

App = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Recorder:
    """A socket writer that keeps every write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.writes.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass


class RequestHandler:
    def __init__(self) -> None:
        self.logged: list[tuple[Any, ...]] = []

    def log_request(self, *args: Any) -> None:
        self.logged.append(args)


def serve_one(app: App) -> tuple[list[bytes], _Handler]:
    out = Recorder()
    environ = {"REQUEST_METHOD": "GET", "SERVER_PROTOCOL": "HTTP/1.1", "SERVER_NAME": "127.0.0.1",
               "SERVER_PORT": "80", "PATH_INFO": "/"}
    handler = _Handler(io.BytesIO(), out, io.StringIO(), environ, multithread=True)
    handler.request_handler = RequestHandler()  # type: ignore[assignment]  # wsgiref only logs through it
    handler.run(app)
    return out.writes, handler


def answering(body: list[bytes], status: str = "200 OK") -> App:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(sum(map(len, body))))])
        return body

    return app


def test_an_answer_is_one_write_of_status_headers_and_body() -> None:
    writes, handler = serve_one(answering([b'{"value": []}']))
    assert len(writes) == 1
    head, _, body = writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\nDate: ")
    assert b"\r\nContent-Type: application/json\r\nContent-Length: 13" in head
    assert body == b'{"value": []}'
    assert handler.answered


def test_an_answer_without_a_body_is_written_too() -> None:
    for body in ([b""], []):
        writes, handler = serve_one(answering(body, "204 No Content"))
        assert len(writes) == 1, body
        assert writes[0].startswith(b"HTTP/1.1 204 No Content\r\n") and writes[0].endswith(b"\r\n\r\n")
        assert handler.answered


def test_a_body_in_pieces_keeps_its_bytes_and_order() -> None:
    writes, _ = serve_one(answering([b"ab", b"cd"]))
    assert b"".join(writes).endswith(b"\r\n\r\nabcd")
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n")


def test_a_dropped_connection_writes_nothing() -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        raise ConnectionDropped()

    writes, handler = serve_one(app)
    assert writes == []
    assert not handler.answered  # the request handler closes the connection
