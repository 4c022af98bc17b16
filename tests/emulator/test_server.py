"""The loopback server, several environments, persistence and in-process serving (emulator-only)."""

from __future__ import annotations

import json
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
