"""Helpers for end-to-end tests: run the real CLI in-process and look at the emulator's files."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
