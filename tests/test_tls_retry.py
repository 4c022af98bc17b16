"""A failed TLS handshake over loopback: a certificate the client cannot trust is said at once; another
failure (here a server answering in plain text, as one that does not speak TLS on its port does) is tried
once more, for any method, since the request was never sent; a second failure is said."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import httpx
import pytest

from reconciler.api.client import RetryPolicy, _Transport
from reconciler.emulator.tls import TlsFiles, make_test_ca
from reconciler.errors import TransientError


def _read_request(sock: ssl.SSLSocket) -> None:
    """Read one whole request (headers and a Content-Length body): answering before the body is in would
    close the connection under a client still sending it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return
        body += chunk


class _TlsServer:
    """A loopback server that fails the TLS handshake of its first ``broken`` connections (it answers
    them in plain text) and answers the others ``200 {}`` over TLS."""

    def __init__(self, tls: TlsFiles, broken: int) -> None:
        self.broken = broken
        self.connections = 0
        self._ctx = tls.server_context()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self._sock.getsockname()[1]}/x"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                if self.connections <= self.broken:
                    conn.recv(4096)  # the client's hello
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                    continue
                try:
                    with self._ctx.wrap_socket(conn, server_side=True) as tls:
                        _read_request(tls)
                        tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                    b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
                except OSError:  # ssl.SSLError included: a client that refused the certificate
                    continue

    def close(self) -> None:
        self._sock.close()
        self._thread.join(timeout=5)


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    return make_test_ca(str(tmp_path / "tls"))


def _transport(tls: TlsFiles, sleeps: list[float]) -> _Transport:
    http = httpx.Client(verify=ssl.create_default_context(cafile=tls.ca_pem))
    return _Transport(http, retry=RetryPolicy(sleep=sleeps.append, jitter=lambda: 0.0))


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_handshake_that_fails_once_is_tried_once_more(tls_files: TlsFiles, method: str) -> None:
    server = _TlsServer(tls_files, broken=1)
    sleeps: list[float] = []
    try:
        resp = _transport(tls_files, sleeps).send(method, server.url, body=b"{}" if method == "POST" else None)
    finally:
        server.close()
    assert resp.status_code == 200
    assert server.connections == 2
    assert len(sleeps) == 1


@pytest.mark.parametrize(("broken", "own_ca", "said", "attempts"), [
    (10, True, r"TLS: the handshake failed\) after 2 attempt", 2),  # a server that never speaks TLS
    (0, False, r"certificate is not trusted\) after 1 attempt", 1),  # the client trusts another CA
], ids=["never-tls", "untrusted"])
def test_a_handshake_that_keeps_failing_is_said(tls_files: TlsFiles, tmp_path: Path, broken: int, own_ca: bool,
                                                said: str, attempts: int) -> None:
    trusted = tls_files if own_ca else make_test_ca(str(tmp_path / "other"))
    server = _TlsServer(tls_files, broken=broken)
    sleeps: list[float] = []
    try:
        with pytest.raises(TransientError, match=said):
            _transport(trusted, sleeps).send("GET", server.url)
    finally:
        server.close()
    assert server.connections == attempts
    assert len(sleeps) == attempts - 1
