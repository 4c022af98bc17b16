"""No secret and no token ever shows up in what connref prints or writes.

Every command runs with a canary client secret that the emulator accepts; then once more with a wrong
canary secret. Neither canary, nor any access token the emulator issued, may appear in stdout, stderr,
the saved plan, the markdown reports, the state files or anything else written next to the config.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from e2e.e2e_support import Result, Served, Workspace

pytestmark = pytest.mark.emulator_only

CANARY = "CANARY-secret-7f3c9b1e-do-not-print"
WRONG = "CANARY-wrong-secret-41aa-do-not-print"
JWT = re.compile(r"eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]+")


def _use_canary(ws: Workspace) -> None:
    """Register the canary as a secret of the pipeline app in every environment, and point the auth
    profile at an environment variable instead of the demo secret file."""
    for env in ("dev", "test", "prod"):
        path = ws.dir / f"{env}.json"
        data = json.loads(path.read_text())
        for app in data["applications"]:
            app.setdefault("client_secret_sha256", []).append(hashlib.sha256(CANARY.encode()).hexdigest())
        path.write_text(json.dumps(data, indent=2))
    text = ws.config.read_text().replace("client_secret_file: .demo-secret", "client_secret_env: CONNREF_CANARY")
    ws.config.write_text(text)
    (ws.dir / ".demo-secret").unlink()


def _assert_clean(texts: list[str], where: str) -> None:
    for t in texts:
        assert CANARY not in t, f"the secret leaked into {where}"
        assert WRONG not in t, f"the wrong secret leaked into {where}"
        assert not JWT.search(t), f"a token leaked into {where}"


@pytest.mark.parametrize("log_level", ["default", "debug"])
def test_no_command_prints_or_writes_a_secret(
    quickstart: Workspace, monkeypatch: pytest.MonkeyPatch, log_level: str
) -> None:
    """Once with the default output, once with -v's log of every request, retry and step."""
    _use_canary(quickstart)
    monkeypatch.setenv("CONNREF_CANARY", CANARY)
    if log_level == "debug":
        monkeypatch.setenv("CONNREF_LOG", "debug")
    d = str(quickstart.dir)
    runs: list[Result] = [
        quickstart.run("validate"),
        quickstart.run("plan", "--out", f"{d}/plan.json", "--markdown", f"{d}/plan.md"),
        quickstart.run("plan", "--json"),
        quickstart.run("apply", f"{d}/plan.json"),
        quickstart.run("plan", "--detailed-exitcode"),
        quickstart.run("drift", "--json", "--markdown", f"{d}/drift.md"),
        quickstart.run("lint", "-e", "dev"),
        quickstart.run("import", "-e", "dev", "-o", f"{d}/imported.yaml"),
        quickstart.run("settings", "-e", "prod"),
        quickstart.run("whoami", "-e", "dev"),
        quickstart.run("state", "list"),
        quickstart.run("state", "show", "dev", "--json"),
    ]
    # Prove the runs really authenticated and worked, so the check below means something.
    assert runs[3].code == 0, runs[3].out + runs[3].err
    assert runs[4].code == 0 and "No changes." in runs[4].out

    monkeypatch.setenv("CONNREF_CANARY", WRONG)
    failed = quickstart.run("plan")
    assert failed.code == 1
    assert "demo" in failed.err  # the error names the auth profile...
    runs.append(failed)

    if log_level == "debug":  # the debug log really ran: every request is in it
        assert "/oauth2/v2.0/token -> 200" in runs[1].err
        assert "/api/data/v9.2/$batch -> 200" in runs[3].err
        assert "/oauth2/v2.0/token -> 401" in failed.err or "/oauth2/v2.0/token -> 400" in failed.err
    for r in runs:
        _assert_clean([r.out, r.err], "command output")
    for path in Path(d).rglob("*"):
        if path.is_file():
            _assert_clean([path.read_text(errors="replace")], str(path.relative_to(d)))


def test_a_token_endpoint_that_echoes_the_request_does_not_make_plan_print_the_secret(served: Served) -> None:
    """The identity platform (or a proxy before it) answers 400 quoting the form it was sent: the secret went
    urlencoded (``+`` ``/`` ``=`` ``%`` ``&`` all change), and comes back so. -v plan prints the error and
    every request, and none of it holds the secret in any encoding."""
    secret = "Zq8Q~abc+def/ghi=jk%lm&no"
    (served.dir / ".demo-secret").write_text(secret + "\n")
    served.apps["dev"].faults.add("error", "/*/oauth2/v2.0/token", status=400, echo_request=True)
    r = served.run("-v", "plan")
    assert r.code == 1
    assert "Traceback" not in r.err
    assert "/oauth2/v2.0/token -> 400" in r.err  # the token request was logged, and refused
    assert "client_secret=<redacted>" in r.err  # the echo was shown, without the secret
    for form in (secret, quote_plus(secret), quote(secret), quote(secret, safe="")):
        assert form not in r.out + r.err, form
    _assert_clean([r.out, r.err], "plan's output")
