"""Helpers for end-to-end tests: run the real CLI in-process and look at the emulator's files."""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import subprocess
import sys
import threading
from collections.abc import Iterable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from reconciler import cli
from reconciler.emulator.app import EmulatorApp
from reconciler.emulator.tls import TlsServer

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_cli(*argv: str) -> Result:
    """Run the connref CLI in this process and capture what it prints."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.run(list(argv))
    return Result(code, out.getvalue(), err.getvalue())


def add_explain_flows(directory: Path) -> None:
    """Add to the quickstart's dev.json in ``directory`` an instant flow run with the caller's connections
    ("Approve from Teams") and a scheduled flow on the service account's Dataverse connection ("Nightly
    summary"), both in the solution: the dev environment docs/concepts.md explains."""
    from reconciler.emulator import factory

    path = directory / "dev.json"
    data = json.loads(path.read_text())
    solution = data["solutions"][0]
    users = {u["domainname"]: u for u in data["systemusers"]}
    factory.add_flow(data, "Approve from Teams",
                     [("contoso_sharedsharepointonline_30e7d", "shared_sharepointonline"),
                      ("contoso_sharedoffice365_d4c61", "shared_office365")],
                     owner=users["maker2@contoso.com"], solution=solution, trigger="manual", runtime_source="invoker",
                     workflowid="a0000000-0000-4000-8000-00000000aa01")
    factory.add_flow(data, "Nightly summary",
                     [("contoso_sharedcommondataserviceforapps_7b2e9", "shared_commondataserviceforapps")],
                     owner=users["svc-flows@contoso.com"], solution=solution, trigger="recurrence",
                     workflowid="a0000000-0000-4000-8000-00000000aa02")
    path.write_text(json.dumps(data))


@dataclass
class Workspace:
    """A scratch copy of the quickstart (``local:`` environments, in-process emulator)."""

    dir: Path
    config: Path

    def run(self, *argv: str) -> Result:
        return run_cli("-c", str(self.config), *argv)

    def data(self, env: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.dir / f"{env}.json").read_text())
        return data

    def reference(self, env: str, logical_name: str) -> dict[str, Any]:
        rows: list[dict[str, Any]] = [r for r in self.data(env)["connectionreferences"]
                if r["connectionreferencelogicalname"].lower() == logical_name.lower()]
        assert len(rows) == 1, rows
        return rows[0]


@dataclass
class Served:
    """The quickstart environments served over loopback https, and a config pointing at them."""

    dir: Path
    config: Path
    apps: dict[str, EmulatorApp]
    servers: dict[str, TlsServer] = field(default_factory=dict)

    def run(self, *argv: str) -> Result:
        return run_cli("-c", str(self.config), *argv)


# --------------------------------------------------------------------------- waiting on processes and requests

#: Seconds: the bound on every subprocess and every wait of the end-to-end tests that use these helpers.
TIMEOUT = 120

#: Python source that gives SIGINT its default meaning (KeyboardInterrupt) in a child process, as in a process
#: started from a terminal. A process inherits an ignored SIGINT from its parent (a shell ignores it for the
#: commands it starts in the background, and so for pytest and everything pytest starts when `make test` runs
#: that way), and Python then leaves it ignored: a test that interrupts a child with SIGINT starts it with this
#: first, so the test does not depend on how the suite was started.
SIGINT_AS_FROM_A_TERMINAL = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)"


def cli_in_child(*argv: str) -> list[str]:
    """The command line of the real CLI in a child process, SIGINT as from a terminal
    (``SIGINT_AS_FROM_A_TERMINAL``): what ``python -m reconciler ARGV`` runs, with that one line first."""
    code = "\n".join((SIGINT_AS_FROM_A_TERMINAL, "import sys", "from reconciler.cli import main",
                      "raise SystemExit(main(sys.argv[1:]))"))
    return [sys.executable, "-c", code, *argv]


def wait_for(event: threading.Event, what: str, proc: subprocess.Popen[str]) -> None:
    """Wait until ``event`` is set; fail (with the process's output) if ``proc`` exits first, or after TIMEOUT.
    Two watchers wake the test on whichever comes first: no polling."""
    woke = threading.Event()

    def on_event() -> None:
        if event.wait(TIMEOUT):
            woke.set()

    def on_exit() -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(TIMEOUT)
        woke.set()

    for watch in (on_event, on_exit):
        threading.Thread(target=watch, daemon=True).start()
    woke.wait(TIMEOUT)
    if event.is_set():
        return
    if proc.poll() is not None:
        out, err = proc.communicate()
        pytest.fail(f"the process exited ({proc.returncode}) before {what}:\n{out}\n{err}")
    pytest.fail(f"timed out waiting for {what}")


def wait_for_byte(fd: int, what: str, proc: subprocess.Popen[str]) -> None:
    """Wait until ``proc`` writes a byte to the pipe ``fd`` reads; fail (with its output) if it closes the
    pipe without one (it exited), or after TIMEOUT."""
    ready, _, _ = select.select([fd], [], [], TIMEOUT)
    if not ready:
        pytest.fail(f"timed out waiting for {what}")
    if os.read(fd, 1) != b"w":
        out, err = proc.communicate(timeout=TIMEOUT)
        pytest.fail(f"the process exited ({proc.returncode}) before {what}:\n{out}\n{err}")


def writes_batch(environ: dict[str, Any]) -> bool:
    """Whether a WSGI request is a ``POST .../$batch`` that writes (holds a change set); a batch of reads
    (the live reader's) does not. The body is read and put back for the app."""
    path = environ.get("PATH_INFO", "")
    if environ.get("REQUEST_METHOD") != "POST" or not path.endswith(("$batch", "%24batch")):
        return False
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    environ["wsgi.input"] = io.BytesIO(body)
    return b"changeset_" in body


class BatchGate:
    """WSGI middleware in front of an emulator app: every ``POST .../$batch`` that writes (holds a change set)
    waits until ``release()``; a batch of reads passes.

    Deterministic where a latency fault is not: the first apply holds its lock for exactly as long as the
    test wants, whatever the machine's speed. The emulator app itself answers every request unchanged;
    ``answered`` is set once it has answered a ``$batch`` (and logged it)."""

    def __init__(self, app: EmulatorApp) -> None:
        self.app = app
        self.reached = threading.Event()
        self.answered = threading.Event()
        self._open = threading.Event()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        is_batch = writes_batch(environ)
        if is_batch:
            self.reached.set()
            self._open.wait(TIMEOUT)
        result: Iterable[bytes] = self.app(environ, start_response)
        if is_batch:
            self.answered.set()
        return result

    def release(self) -> None:
        self._open.set()


def gate_batches(served: Served, env: str) -> BatchGate:
    gate = BatchGate(served.apps[env])
    served.servers[env].server.set_app(gate)
    return gate


class CommitGate:
    """WSGI middleware in front of an emulator app: the next ``POST .../$batch`` that writes is served
    (committed) at once, then its answer is held until ``release()``; a batch of reads passes.
    ``committed`` is set once the change set has been committed, so a test can kill the client between
    its write and its state record, on an event."""

    def __init__(self, app: EmulatorApp) -> None:
        self.app = app
        self.committed = threading.Event()
        self._open = threading.Event()
        self._used = False

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        is_batch = writes_batch(environ)
        result: Iterable[bytes] = self.app(environ, start_response)
        if is_batch and not self._used:
            self._used = True
            self.committed.set()
            self._open.wait(TIMEOUT)
        return result

    def release(self) -> None:
        self._open.set()


def gate_commits(served: Served, env: str) -> CommitGate:
    gate = CommitGate(served.apps[env])
    served.servers[env].server.set_app(gate)
    return gate


# --------------------------------------------------------------------------- consolidating the quickstart

KEPT_SP = "contoso_sharedsharepointonline_30e7d"
REPLACED_SP = "contoso_sharedsharepointonline_8f4b0"


def consolidated(config_text: str) -> str:
    """The quickstart's config as docs/adoption.md ("Consolidating per-developer references") edits it: the
    second maker's SharePoint reference is no longer declared nor bound, and the first one replaces it."""
    lines = config_text.splitlines(keepends=True)
    out: list[str] = []
    skipping = False
    for line in lines:
        if line == f"  {REPLACED_SP}:\n":
            skipping = True
            continue
        if skipping and line.startswith("    "):
            continue
        skipping = False
        if line.strip().startswith(f"{REPLACED_SP}:"):
            continue  # its bindings
        out.append(line)
        if line == "    description: Invoice library and approvals list\n":
            out.append(f"    replaces: [{REPLACED_SP}]\n")
    text = "".join(out)
    assert f"replaces: [{REPLACED_SP}]" in text and text.count(REPLACED_SP) == 1, text
    return text
