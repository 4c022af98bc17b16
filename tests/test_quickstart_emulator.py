"""The quickstart example planned through the real chain (session -> emulator over WSGI -> live reader
-> planner): the first plan against dev has a create, a rename and a rebind; against test (managed) it
binds, sets owners and switches the flows on, the child before its parent. The example's other checks
need no emulator: tests/unit/test_config_quickstart.py."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.config.loader import load_config

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart"


@pytest.fixture()
def scratch(tmp_path: Path) -> Iterator[Path]:
    target = tmp_path / "quickstart"
    shutil.copytree(QUICKSTART, target, ignore=shutil.ignore_patterns("__pycache__"))
    yield target


@pytest.mark.emulator_only
def test_emulator_plans_the_quickstart(scratch: Path) -> None:
    """Drives the real chain (session -> emulator over WSGI -> live reader -> planner) on a copy."""
    pytest.importorskip("reconciler.emulator.app")
    from reconciler.api.live import read_environment
    from reconciler.api.session import open_environment
    from reconciler.plan.ops import CreateReference, UpdateReference
    from reconciler.plan.planner import plan

    cfg = load_config(str(scratch / "connref.yaml"))
    lives = {}
    for env in ("dev", "test", "prod"):
        session = open_environment(cfg, env)
        lives[env] = read_environment(session, cfg, env)
    result = plan(cfg, lives)
    dev = next(p for p in result.environments if p.environment == "dev")
    creates = [op for op in dev.ops if isinstance(op, CreateReference)]
    updates = [op for op in dev.ops if isinstance(op, UpdateReference)]
    assert [op.logical_name for op in creates] == ["contoso_Teams"]
    changed = {op.logical_name: {c.field for c in op.changes} for op in updates}
    assert "display_name" in changed["contoso_sharedsharepointonline_30e7d"]
    assert "connection" in changed["contoso_sharedsharepointonline_30e7d"]
    assert "connection" in changed["contoso_sharedoffice365_d4c61"]  # away from the broken connection
    assert "contoso_sharedcommondataserviceforapps_7b2e9" not in changed  # already clean
    assert "contoso_sharedteams_c93f2" not in changed  # not declared, outside the solution
    prod = next(p for p in result.environments if p.environment == "prod")
    assert [op.logical_name for op in prod.ops if isinstance(op, CreateReference)] == ["contoso_Teams"]
    # test (managed): bind and owner only, then the flows, the child before its parent.
    test = next(p for p in result.environments if p.environment == "test")
    assert test.mode == "managed" and dev.mode == "unmanaged"
    assert {op.kind for op in test.ops} == {"update", "activate_flow"}
    assert all({c.field for c in op.changes} == {"connection", "owner"} for op in test.ops
               if isinstance(op, UpdateReference))
    passes = {op.logical_name: op.pass_number for op in test.activations}
    assert passes == {"Invoice intake": 1, "Post to finance channel": 1, "Invoice approval": 2}
