"""The layer rules of docs/architecture.md, as ruff enforces them (banned-api, TID251): the root
pyproject.toml bans the HTTP libraries outside reconciler/api, and each reconciler/<layer>/ruff.toml
lists what its layer may not import. These tests run ruff on probe modules given on stdin under a path
inside each package, so a mistake in those files (a misspelt module, a nested file that no longer
extends the root, a list that replaces the root's without repeating httpx) cannot switch a rule off
unnoticed. ``EXPECTED`` is the table of docs/architecture.md; change both together.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "reconciler"

HTTP = frozenset({"httpx", "msal"})
# What every layer may import: controls, so a list that bans everything fails too.
HARMLESS = ("json", "yaml", "reconciler.errors")


def reconciler_modules() -> frozenset[str]:
    """reconciler's subpackages and top-level modules, as absolute module names."""
    names = {f"reconciler.{p.name}" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    names |= {f"reconciler.{p.stem}" for p in PACKAGE.glob("*.py") if not p.stem.startswith("__")}
    return frozenset(names)


ALL = reconciler_modules()
ABOVE_API = frozenset({"reconciler.apply", "reconciler.commands", "reconciler.cli", "reconciler.console"})
PURE_REFUSES = HTTP | ABOVE_API | {"reconciler.api", "reconciler.emulator"}

# Where a module lives -> what it may not import (of HTTP | ALL | HARMLESS).
EXPECTED: dict[str, frozenset[str]] = {
    "reconciler/domain": HTTP | (ALL - {"reconciler.domain", "reconciler.errors"}),
    "reconciler/config": PURE_REFUSES,
    "reconciler/plan": PURE_REFUSES,
    "reconciler/drift": PURE_REFUSES,
    "reconciler/adoption": PURE_REFUSES,
    "reconciler/state": HTTP,
    "reconciler/api": ABOVE_API,
    "reconciler/apply": HTTP,
    "reconciler/schemas": HTTP,
    "reconciler/emulator": HTTP | (ALL - {"reconciler.emulator"}),
    "reconciler": HTTP,  # cli.py, commands.py, console.py, completion.py, progress.py, errors.py
}


def ruff_codes(path: str, source: str, select: str = "TID251,TID252") -> list[tuple[int, str]]:
    """(line, code) of what ruff reports for ``source`` as if it were the file at ``path``; ``select="ALL"``:
    the rules the config selects."""
    chosen = [] if select == "ALL" else ["--select", select]
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", *chosen, "--output-format", "json",
         "--stdin-filename", path, "-"],
        input=source, cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert proc.returncode in (0, 1), proc.stderr
    return [(r["location"]["row"], r["code"]) for r in json.loads(proc.stdout)]


def refused(path: str, modules: list[str]) -> set[str]:
    """Which of ``modules`` ruff refuses to let the module at ``path`` import."""
    source = "".join(f"import {m}\n" for m in modules)
    return {modules[row - 1] for row, code in ruff_codes(path, source) if code == "TID251"}


def test_every_package_has_a_layer() -> None:
    """A new package must be placed in the table (and docs/architecture.md) on purpose."""
    packages = {f"reconciler/{m.split('.')[1]}" for m in ALL if (PACKAGE / m.split(".")[1]).is_dir()}
    assert packages == set(EXPECTED) - {"reconciler"}


def test_every_layer_config_extends_the_root() -> None:
    """A nested ruff.toml that stops extending the root keeps its bans but drops every other setting."""
    nested = sorted(PACKAGE.glob("*/ruff.toml"))
    assert nested
    for path in nested:
        assert tomllib.loads(path.read_text()).get("extend") == "../../pyproject.toml", path


@pytest.mark.parametrize("where", sorted(EXPECTED))
def test_layer_refuses_exactly_what_the_table_says(where: str) -> None:
    universe = sorted(HTTP | ALL | set(HARMLESS))
    assert refused(f"{where}/layer_probe.py", universe) == EXPECTED[where]


@pytest.mark.parametrize(
    "statement",
    [
        "from httpx import Client",
        "import httpx as h",
        "from reconciler.api.client import DataverseClient",
        "from reconciler import api",
        "def later() -> None:\n    import msal",
    ],
)
def test_every_import_form_is_caught(statement: str) -> None:
    assert [code for _, code in ruff_codes("reconciler/plan/layer_probe.py", statement + "\n")] == ["TID251"]


def test_relative_imports_cannot_reach_another_package() -> None:
    # Refused twice: as the module it names (banned-api), and as a relative import out of the package.
    assert set(ruff_codes("reconciler/plan/layer_probe.py", "from ..api import client\n")) == {
        (1, "TID251"), (1, "TID252")}
    assert ruff_codes("reconciler/emulator/layer_probe.py", "from . import web\n") == []


def test_the_applier_does_not_read_through_the_live_reader() -> None:
    """It takes what it needs from the plan and writes through the client it is handed."""
    source = ("from reconciler.api.live import read_environment\nimport reconciler.api.session\n"
              "from reconciler.api.batch_format import chunked\n")
    assert ruff_codes("reconciler/apply/layer_probe.py", source) == [(1, "TID251"), (2, "TID251")]


def test_tests_may_import_any_layer() -> None:
    assert ruff_codes("tests/layer_probe.py", "import httpx\nimport msal\nimport reconciler.api.client\n") == []


def branchy(paths: int) -> str:
    """A function with exactly ``paths`` paths through it (McCabe complexity)."""
    body = "".join(f"    if x == {i}:\n        return {i}\n" for i in range(paths - 1))
    return f"def f(x: int) -> int:\n{body}    return -1\n"


@pytest.mark.parametrize("where", ["reconciler/layer_probe.py", "reconciler/plan/layer_probe.py",
                                   "reconciler/emulator/layer_probe.py", "tests/layer_probe.py"])
def test_the_complexity_limit_holds_everywhere(where: str) -> None:
    """The limit comes from the config (not the command line), also through the nested layer configs."""
    def c901(source: str) -> list[str]:
        return [code for _, code in ruff_codes(where, source, select="ALL") if code == "C901"]

    assert c901(branchy(15)) == []
    assert c901(branchy(16)) == ["C901"]


def test_the_repository_keeps_its_layers() -> None:
    """The same check ``make test`` runs, restricted to the layer rules: clean today."""
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "TID", "reconciler", "tests"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
