"""The fast tier (``make test-fast``): pure tests of the core, no emulator, no process, no socket.

Every test under tests/unit/ runs with the emulator app, process creation and socket connections
refused, so a test that starts using one fails here with a message saying where it belongs (the full
suite: tests/, tests/emulator/, tests/e2e/) instead of slowly turning the fast tier into a slow one.
"""

from __future__ import annotations

import multiprocessing.process
import socket
import subprocess
from collections.abc import Callable
from typing import Any, NoReturn

import pytest

from reconciler.emulator.app import EmulatorApp

MOVE = "move the test out of tests/unit/ (the fast tier is pure: docs/architecture.md, 'Test tiers')"


def _refuse(what: str) -> Callable[..., NoReturn]:
    def refuse(*args: Any, **kwargs: Any) -> NoReturn:
        raise AssertionError(f"a test in tests/unit/ {what}: {MOVE}")

    return refuse


@pytest.fixture(autouse=True)
def _pure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _refuse("opened a network connection"))
    monkeypatch.setattr(socket.socket, "connect_ex", _refuse("opened a network connection"))
    monkeypatch.setattr(socket.socket, "bind", _refuse("listened on a socket"))
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("started a process"))
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", _refuse("started a process"))
    monkeypatch.setattr(EmulatorApp, "__call__", _refuse("sent a request to the emulator"))
    monkeypatch.setattr(EmulatorApp, "handle", _refuse("sent a request to the emulator"))
