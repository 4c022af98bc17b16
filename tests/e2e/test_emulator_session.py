"""``connref emulator --tls``: the loopback session a config drives. The emulator runs as a user runs it (a
subprocess); the config snippet and the export it prints are pasted into the quickstart's config as the
docs say, and connref signs in through MSAL over https and plans. The session secret never reaches the
data file, even with --persist, and the session folder is gone when the emulator stops."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
import yaml

from e2e.e2e_support import QUICKSTART

pytestmark = pytest.mark.emulator_only

STARTUP_TIMEOUT = 60.0
END = re.compile(r"^# Serving until interrupted \(Ctrl-C\); (?P<dir>\S+) is removed then\.$")


@dataclass
class Printed:
    lines: list[str]
    session_dir: Path

    @property
    def snippet(self) -> dict[str, Any]:
        text = "\n".join(line for line in self.lines if not line.startswith(("export ", "dev:", "prod:")))
        doc: dict[str, Any] = yaml.safe_load(text)
        return doc

    @property
    def exports(self) -> dict[str, str]:
        return dict(line.removeprefix("export ").split("=", 1) for line in self.lines if line.startswith("export "))


def _forward(stream: IO[str], out: queue.Queue[str | None]) -> None:
    for line in stream:
        out.put(line.rstrip("\n"))
    out.put(None)


@dataclass
class Running:
    proc: subprocess.Popen[str]
    printed: Printed


def _start(*args: str) -> Iterator[Running]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "emulator", "--port", "0", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_forward, args=(proc.stdout, lines), daemon=True).start()
        seen: list[str] = []
        while True:
            try:
                line = lines.get(timeout=STARTUP_TIMEOUT)
            except queue.Empty:
                pytest.fail(f"connref emulator did not finish its session text: {seen}")
            if line is None:
                pytest.fail(f"connref emulator ended: {proc.stderr.read() if proc.stderr else ''}")
            seen.append(line)
            m = END.match(line)
            if m:
                yield Running(proc, Printed(seen, Path(m["dir"])))
                return
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=20)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    for env in ("dev", "test", "prod"):
        shutil.copy(QUICKSTART / f"{env}.json", d / f"{env}.json")
    return d


def _config_from(printed: Printed, target: Path) -> Path:
    """The quickstart's config with its environments and auth taken from what the emulator printed, as
    docs/emulator.md says: keep bindings and service_account, replace the rest."""
    config: dict[str, Any] = yaml.safe_load((QUICKSTART / "connref.yaml").read_text())
    snippet = printed.snippet
    for name, env in snippet["environments"].items():
        config["environments"][name] = {**config["environments"][name], **env}
    config["auth"] = snippet["auth"]
    path = target / "connref.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _connref(config: Path, printed: Printed, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNREF_")}
    env.update(printed.exports)
    return subprocess.run([sys.executable, "-m", "reconciler", "-c", str(config), *args], env=env,
                          capture_output=True, text=True, timeout=180, check=False)


def test_the_printed_session_signs_in_and_plans(data: Path, tmp_path: Path) -> None:
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    running = _start("--tls", "--data", str(data / "dev.json"), "--data", str(data / "test.json"),
                     "--data", str(data / "prod.json"))
    run = next(running)
    printed = run.printed
    assert re.match(r"^dev: https://127\.0\.0\.1:\d+  <- ", printed.lines[0])  # first line unchanged in form
    assert set(printed.exports) == {"SSL_CERT_FILE"}
    secret_files = [p["client_secret_file"] for p in printed.snippet["auth"].values()]
    assert all(Path(f).parent == printed.session_dir for f in secret_files)
    for f in secret_files:
        assert Path(f).read_text().strip() not in "\n".join(printed.lines)  # the secret itself is never printed
    config = _config_from(printed, tmp_path)
    r = _connref(config, printed, "plan", "--detailed-exitcode")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Plan: 2 to add, 13 to change, 0 to destroy." in r.stdout
    r = _connref(config, printed, "whoami", "-e", "dev")
    assert "authenticated as:" in r.stdout, r.stdout + r.stderr
    next(running, None)  # stop it
    assert not printed.session_dir.exists()
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before  # served from memory


def test_with_persist_the_session_secret_stays_out_of_the_data(data: Path, tmp_path: Path) -> None:
    running = _start("--tls", "--persist", "--data", str(data / "dev.json"), "--data", str(data / "test.json"),
                     "--data", str(data / "prod.json"))
    printed = next(running).printed
    config = _config_from(printed, tmp_path)
    r = _connref(config, printed, "apply", "--auto-approve", "-e", "dev")
    assert r.returncode == 0, r.stdout + r.stderr
    next(running, None)
    written = json.loads((data / "dev.json").read_text())
    original = json.loads((QUICKSTART / "dev.json").read_text())
    assert written["connectionreferences"] != original["connectionreferences"]  # apply was persisted...
    assert written["applications"] == original["applications"]  # ...the session's secret was not


def test_plain_http_says_how_to_get_a_session(data: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "emulator", "--port", "0", "--data", str(data / "dev.json")],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_forward, args=(proc.stdout, lines), daemon=True).start()
        seen: list[str] = []
        while not any("start the emulator with --tls" in line for line in seen):
            try:
                line = lines.get(timeout=STARTUP_TIMEOUT)
            except queue.Empty:
                pytest.fail(f"no hint about --tls in: {seen}")
            assert line is not None, seen
            seen.append(line)
        assert re.match(r"^dev: http://127\.0\.0\.1:\d+  <- ", seen[0])
        assert not any(line.startswith("export ") for line in seen)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        if proc.stdout is not None:
            proc.stdout.close()
