"""``connref emulator`` as a user runs it: a real subprocess serving a copy of the quickstart's dev
data over loopback HTTP. A client-credentials token from its token endpoint reads ``WhoAmI`` as the
pipeline's application user, and serving (even a write) leaves the data file untouched, because the
served store is saved only with ``--persist``.

The subprocess is started with ``--port 0`` (any free port); the URL it prints on stdout
(``dev: http://127.0.0.1:PORT  <- FILE``) is what the test talks to. Every wait is bounded and the
process is always terminated.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
import yaml

from e2e.e2e_support import QUICKSTART

pytestmark = pytest.mark.emulator_only  # edits nothing, but needs the emulator's own command

REPO = QUICKSTART.parents[1]
STARTUP_TIMEOUT = 30.0  # seconds to print the URL (an interpreter start and a data load)
HTTP_TIMEOUT = 10.0
URL_LINE = re.compile(r"^(?P<name>\S+): (?P<url>https?://127\.0\.0\.1:(?P<port>\d+))\s")


def _lines(stream: IO[str], out: queue.Queue[str | None]) -> None:
    """Forward the child's stdout line by line, so the test can wait for one with a timeout."""
    for line in stream:
        out.put(line)
    out.put(None)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def _serve(data_file: Path) -> Iterator[tuple[str, str]]:
    """Start ``python -m reconciler emulator --port 0 --data FILE``; yield (url, the line it printed)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "emulator", "--port", "0", "--data", str(data_file)],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"},
    )
    try:
        assert proc.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
        try:
            line = lines.get(timeout=STARTUP_TIMEOUT)
        except queue.Empty:
            pytest.fail(f"connref emulator printed no URL within {STARTUP_TIMEOUT:.0f}s")
        if line is None:  # the process ended before printing anything
            _stop(proc)
            err = proc.stderr.read() if proc.stderr else ""
            pytest.fail(f"connref emulator exited with {proc.returncode} before serving: {err.strip()}")
        match = URL_LINE.match(line)
        assert match, f"unexpected first line from connref emulator: {line!r}"
        assert int(match["port"]) != 0, "--port 0 must print the port actually bound"
        yield match["url"], line
        assert proc.poll() is None, "the emulator stopped while the test was using it"
    finally:
        _stop(proc)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def data_copy(tmp_path: Path) -> Path:
    target = tmp_path / "dev.json"
    shutil.copy(QUICKSTART / "dev.json", target)
    return target


@pytest.fixture
def served(data_copy: Path) -> Iterator[tuple[str, str]]:
    with _serve(data_copy) as running:
        yield running


def _demo_ids() -> tuple[str, str, str]:
    """(tenant id, client id, the demo secret) of the quickstart's pipeline profile."""
    config: dict[str, Any] = yaml.safe_load((QUICKSTART / "connref.yaml").read_text())
    profile = config["auth"]["demo"]
    secret = (QUICKSTART / profile["client_secret_file"]).read_text().strip()
    return profile["tenant_id"], profile["client_id"], secret


def _token(client: httpx.Client, url: str, scope: str) -> str:
    tenant_id, client_id, secret = _demo_ids()
    resp = client.post(
        f"{url}/{tenant_id}/oauth2/v2.0/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret, "scope": scope},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["token_type"] == "Bearer"
    token: str = body["access_token"]
    return token


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_serves_the_data_file_it_was_given(served: tuple[str, str], data_copy: Path) -> None:
    _url, line = served
    assert line.startswith("dev: "), line  # the environment's name from the data
    assert line.rstrip().endswith("dev.json"), line  # and the file it serves


def test_token_from_its_token_endpoint_reads_whoami_as_the_application_user(
    served: tuple[str, str], data_copy: Path
) -> None:
    url, _line = served
    data = json.loads(data_copy.read_text())
    _tenant_id, client_id, _secret = _demo_ids()
    app_users = [u for u in data["systemusers"] if (u.get("applicationid") or "").lower() == client_id.lower()]
    assert len(app_users) == 1, "the quickstart data has one application user for the pipeline app"
    environment = data["environment"]

    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        token = _token(client, url, f"{environment['url']}/.default")
        who = client.get(f"{url}/api/data/v9.2/WhoAmI", headers={"Authorization": f"Bearer {token}"})
        assert who.status_code == 200, who.text
        body = who.json()
        assert body["UserId"] == app_users[0]["systemuserid"]
        assert body["BusinessUnitId"] == environment["business_unit_id"]
        assert body["OrganizationId"] == environment["organization_id"]

        # The same route refuses a request without a token: WhoAmI answered because of the token.
        anonymous = client.get(f"{url}/api/data/v9.2/WhoAmI")
        assert anonymous.status_code == 401


def test_serving_and_writing_leave_the_data_file_unchanged(data_copy: Path) -> None:
    before = _digest(data_copy)
    logical_name = "contoso_EmulatorCommandProbe"
    with httpx.Client(timeout=HTTP_TIMEOUT) as client, _serve(data_copy) as (url, _line):
        environment = json.loads(data_copy.read_text())["environment"]
        headers = {"Authorization": f"Bearer {_token(client, url, environment['url'] + '/.default')}"}
        created = client.post(
            f"{url}/api/data/v9.2/connectionreferences",
            headers=headers,
            json={
                "connectionreferencelogicalname": logical_name,
                "connectionreferencedisplayname": "Emulator command probe",
                "connectorid": "/providers/Microsoft.PowerApps/apis/shared_teams",
            },
        )
        assert created.status_code == 204, created.text
        found = client.get(
            f"{url}/api/data/v9.2/connectionreferences",
            headers=headers,
            params={
                "$filter": f"connectionreferencelogicalname eq '{logical_name}'",
                "$select": "connectionreferenceid",
            },
        )
        assert found.status_code == 200, found.text
        assert len(found.json()["value"]) == 1  # the write happened, in the server's memory
    # After the server stopped: the file is byte for byte what it was (no --persist given).
    assert _digest(data_copy) == before
    assert logical_name.lower() not in data_copy.read_text().lower()
