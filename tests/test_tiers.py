"""The fast tier stays pure: tests/unit/conftest.py refuses the emulator, processes and sockets to every
test under tests/unit/. Proved by running pytest on probe tests next to a copy of that conftest, so a
change that quietly disarms it fails here."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

PROBES = '''
import socket
import subprocess
import sys

import httpx

from reconciler.emulator.app import EmulatorApp
from reconciler.emulator.store import EnvironmentStore, new_environment_data


def test_socket() -> None:
    socket.create_connection(("127.0.0.1", 9))


def test_listen() -> None:
    socket.socket().bind(("127.0.0.1", 0))


def test_process() -> None:
    subprocess.run([sys.executable, "-c", "pass"], check=True)


def test_emulator() -> None:
    app = EmulatorApp(EnvironmentStore.from_dict(new_environment_data()))
    with httpx.Client(transport=httpx.WSGITransport(app=app)) as client:
        client.get("https://contoso.crm4.dynamics.com/api/data/v9.2/WhoAmI")


def test_pure() -> None:
    assert sorted("cba") == ["a", "b", "c"]
'''


def test_the_fast_tier_refuses_the_emulator_processes_and_sockets(tmp_path: Path) -> None:
    unit = tmp_path / "unit"
    unit.mkdir()
    shutil.copy(TESTS / "unit" / "conftest.py", unit / "conftest.py")
    (unit / "test_probes.py").write_text(PROBES)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--rootdir", str(tmp_path),
         "-c", "/dev/null", str(unit)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )
    out = proc.stdout + proc.stderr
    assert "4 failed, 1 passed" in out, out
    for what in ("opened a network connection", "listened on a socket", "started a process",
                 "sent a request to the emulator"):
        assert f"AssertionError: a test in tests/unit/ {what}: move the test out of tests/unit/" in out, out
