"""``connref validate`` loads only what checking a config needs: no HTTP client, no MSAL, no planner,
drift or terminal library (start-up time; ``make bench`` measures it, this test pins the cause)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"

HEAVY = ("httpx", "msal", "deepdiff", "rich", "cryptography", "reconciler.api.client", "reconciler.plan.planner",
         "reconciler.drift.detect", "reconciler.emulator.app")


def test_validate_imports_nothing_it_does_not_use() -> None:
    code = (
        "import json, sys\n"
        "from reconciler import cli\n"
        "code = cli.run(['-c', sys.argv[1], 'validate'])\n"
        "print(json.dumps({'code': code, 'modules': sorted(sys.modules)}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(QUICKSTART / "connref.yaml")],
                          capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] == 0
    loaded = [m for m in HEAVY if m in result["modules"]]
    assert loaded == []
