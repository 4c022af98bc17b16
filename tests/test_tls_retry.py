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
                        tls.recv(65536)
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


def test_a_server_that_never_speaks_tls_is_said_after_two_attempts(tls_files: TlsFiles) -> None:
    server = _TlsServer(tls_files, broken=10)
    sleeps: list[float] = []
    try:
        with pytest.raises(TransientError, match=r"TLS: the handshake failed\) after 2 attempt"):
            _transport(tls_files, sleeps).send("GET", server.url)
    finally:
        server.close()
    assert server.connections == 2


def test_an_untrusted_certificate_is_not_tried_again(tls_files: TlsFiles, tmp_path: Path) -> None:
    other = make_test_ca(str(tmp_path / "other"))  # the client trusts another CA than the server's
    server = _TlsServer(tls_files, broken=0)
    sleeps: list[float] = []
    try:
        with pytest.raises(TransientError, match=r"certificate is not trusted\) after 1 attempt"):
            _transport(other, sleeps).send("GET", server.url)
    finally:
        server.close()
    assert server.connections == 1
    assert sleeps == []
