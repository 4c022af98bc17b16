"""The loopback server, several environments, persistence and in-process serving (emulator-only)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from reconciler.emulator import jwt
from reconciler.emulator.app import EmulatorApp
from reconciler.emulator.factory import Sample as S
from reconciler.emulator.server import build_apps, serve
from reconciler.emulator.store import EnvironmentStore, new_environment_data

pytestmark = pytest.mark.emulator_only(reason="starts emulator servers on data files")


def bearer(data: dict[str, Any]) -> dict[str, str]:
    token = jwt.mint(
        data["signing_key_pem"],
        tenant_id=S.TENANT_ID,
        object_id=S.APP_OBJECT_ID,
        audience=data["environment"]["url"],
        app_id=S.APP_CLIENT_ID,
    )
    return {"Authorization": f"Bearer {token}"}


def test_persist_writes_back_after_each_successful_write(tmp_path: Path, emulator_data: dict[str, Any]) -> None:
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(emulator_data))
    app = EmulatorApp(EnvironmentStore.from_file(str(path)), persist=True)
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url=S.URL, headers=bearer(emulator_data)) as c:
        r = c.patch(f"/api/data/v9.2/connectionreferences({S.REF_DV})", json={"description": "saved"})
        assert r.status_code == 204
        rows = json.loads(path.read_text())["connectionreferences"]
        assert next(x for x in rows if x["connectionreferenceid"] == S.REF_DV)["description"] == "saved"
        before = path.read_text()
        assert (
            c.patch(
                f"/api/data/v9.2/connectionreferences({S.REF_DV})",
                json={"description": "x" * 2001},
            ).status_code
            == 400
        )
        assert path.read_text() == before


def test_several_environments_on_consecutive_ports(tmp_path: Path, signing_key_pem: str) -> None:
    files = []
    for name in ("dev", "test"):
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps(new_environment_data(name=name, signing_key_pem=signing_key_pem)))
        files.append(str(p))
    servers = serve(build_apps(files))
    try:
        assert len(servers.urls) == 2
        names = [s.app.store.environment["name"] for s in servers]
        assert names == ["dev", "test"]
        assert httpx.get(servers.urls[1] + "/api/data/v9.2/WhoAmI").status_code == 401
    finally:
        servers.shutdown()


def test_unknown_route_is_404(emulator: Any) -> None:
    assert httpx.get(emulator.url + "/nothing/here").status_code == 404


def test_run_emulator_command_reports_bad_data_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from reconciler.emulator.server import run_emulator_command

    p = tmp_path / "bad.json"
    p.write_text(json.dumps({"format": "connref-emulator/1", "oops": 1}))
    args = SimpleNamespace(port=0, data=[str(p)], faults=None, tls_cert=None, tls_key=None)
    assert run_emulator_command(args) == 1
    assert "oops" in capsys.readouterr().err


def _read_response(sock: socket.socket, buf: bytes) -> tuple[bytes, bytes]:
    """One HTTP/1.1 response (head and a Content-Length body) from ``sock``; returns it and what follows."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection before answering"
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection mid-body"
        rest += chunk
    return head + b"\r\n\r\n" + rest[:length], rest[length:]


def test_connections_are_kept_alive_and_closed_by_shutdown(emulator_data: dict[str, Any]) -> None:
    """Two requests on one connection get two answers (HTTP/1.1 keep-alive, as the real services keep
    connections); a server that is shut down closes the connection it kept open."""
    server = serve(EmulatorApp(EnvironmentStore.from_dict(emulator_data)))
    try:
        with socket.create_connection((server.host, server.port), timeout=10) as sock:
            request = f"GET /api/data/v9.2/WhoAmI HTTP/1.1\r\nHost: {server.host}:{server.port}\r\n\r\n".encode()
            sock.sendall(request)
            first, rest = _read_response(sock, b"")
            sock.sendall(request)
            second, rest = _read_response(sock, rest)
            assert first.startswith(b"HTTP/1.1 401 ") and second.startswith(b"HTTP/1.1 401 ")
            assert rest == b""
            server.shutdown()
            assert sock.recv(1) == b""  # end of file: the kept connection is closed
    finally:
        server.shutdown()


def test_connection_close_is_honoured(emulator: Any) -> None:
    with socket.create_connection((emulator.server.host, emulator.server.port), timeout=10) as sock:
        sock.sendall(f"GET /nothing HTTP/1.1\r\nHost: {emulator.server.host}\r\nConnection: close\r\n\r\n".encode())
        answer, rest = _read_response(sock, b"")
        assert answer.startswith(b"HTTP/1.1 404 ")
        assert rest == b"" and sock.recv(1) == b""
