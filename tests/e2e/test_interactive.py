"""connref at a terminal: the approval prompt of ``apply`` and colour, driven through a real
pseudo-terminal (the process sees a TTY on stdin and stdout, as a person's shell gives it)."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

from e2e.e2e_support import Workspace

pytestmark = pytest.mark.emulator_only

SGR = re.compile(r"\x1b\[[0-9;]*m")  # a colour or style escape


def _run_in_pty(ws: Workspace, args: list[str], answer: str | None, env: dict[str, str]) -> tuple[int, str]:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "-c", str(ws.config), *args],
        stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True,
    )
    os.close(slave)
    out = b""
    answered = False
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
                if answer is not None and not answered and b"Enter a value:" in out:
                    os.write(master, answer.encode() + b"\n")
                    answered = True
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return code, out.decode("utf-8", "replace")


def _env(color: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    if not color:
        env["NO_COLOR"] = "1"
    return env


def test_apply_asks_and_yes_applies(quickstart: Workspace) -> None:
    code, out = _run_in_pty(quickstart, ["apply", "-e", "dev"], "yes", _env(color=False))
    assert "Only 'yes' will be accepted" in out
    assert code == 0, out
    assert "Apply complete!" in out
    assert quickstart.reference("dev", "contoso_sharedsharepointonline_8f4b0")["connectionreferencedisplayname"] == (
        "SharePoint ContosoFlows Approvals")


def test_apply_anything_but_yes_cancels_and_writes_nothing(quickstart: Workspace) -> None:
    before = (quickstart.dir / "dev.json").read_bytes()
    code, out = _run_in_pty(quickstart, ["apply", "-e", "dev"], "y", _env(color=False))
    assert code == 1, out
    assert "Apply cancelled" in out
    assert (quickstart.dir / "dev.json").read_bytes() == before
    assert not (quickstart.dir / "state" / "dev.json").exists()


def test_colour_on_a_terminal_unless_no_color(quickstart: Workspace) -> None:
    _, coloured = _run_in_pty(quickstart, ["plan", "-e", "dev"], None, _env(color=True))
    _, plain = _run_in_pty(quickstart, ["plan", "-e", "dev"], None, _env(color=False))
    assert SGR.search(coloured)
    # NO_COLOR removes colour; the live status line may still redraw itself (cursor movement).
    assert not SGR.search(plain)
    assert "Plan:" in plain
