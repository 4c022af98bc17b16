"""Failures end the way a user can act on: through the real CLI against the emulator, an interrupted
start-up prints no traceback, an apply that exits 1 never says "Apply complete!", and a malformed
answer from the service is one clear error line (no traceback) for every command that reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from e2e.e2e_support import SIGINT_AS_FROM_A_TERMINAL, Served, Workspace

TIMEOUT = 120
BATCH = "/api/data/v9.2/$batch"

# Runs the CLI with an import hook that raises SIGTERM in the main thread the moment start-up imports the
# command code (after the SIGTERM handler is installed, before any command runs): an event, not a timed kill.
# raise_signal delivers it to the calling thread at once (os.kill would let the system pick a thread). SIGINT
# gets its default meaning first, whatever the test process inherited (SIGINT_AS_FROM_A_TERMINAL).
TERM_DURING_IMPORT = SIGINT_AS_FROM_A_TERMINAL + """
import builtins, signal, sys
from reconciler import cli
real_import = builtins.__import__
def hooked(name, globals=None, locals=None, fromlist=(), level=0):
    if name == "reconciler" and fromlist and "commands" in fromlist:
        builtins.__import__ = real_import
        signal.raise_signal(signal.SIGTERM)
    return real_import(name, globals, locals, fromlist, level)
builtins.__import__ = hooked
sys.exit(cli.main(sys.argv[1:]))
"""


def test_sigterm_during_start_up_prints_no_traceback(quickstart: Workspace) -> None:
    proc = subprocess.run([sys.executable, "-c", TERM_DURING_IMPORT, "-c", str(quickstart.config), "validate"],
                          cwd=quickstart.dir, capture_output=True, text=True, timeout=TIMEOUT,
                          env=dict(os.environ))
    assert proc.returncode == 143, proc.stderr  # 128 + SIGTERM, as a shell reports it
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr
    assert proc.stderr.strip() == "Terminated."
    assert proc.stdout == ""


def test_an_apply_that_fails_does_not_say_complete(served: Served) -> None:
    # dev's first $batch that writes (the read batches before it only read) is refused.
    served.apps["dev"].faults.add("error", BATCH, status=403, writes_only=True)
    r = served.run("apply", "--auto-approve")
    assert r.code == 1
    assert "Apply complete!" not in r.out
    # prod and test were written; dev's $batch was refused, so its four changes were not.
    assert "Apply failed: 1 added, 10 changed, 0 destroyed; 4 change(s) not written." in r.out
    assert r.err.startswith("Error: ") or "\nError: " in r.err
    assert "Traceback" not in r.err


def test_an_apply_that_succeeds_still_says_complete(served: Served) -> None:
    r = served.run("apply", "--auto-approve")
    assert r.code == 0, r.err
    assert "Apply complete! Changes: 2 added, 13 changed, 0 destroyed." in r.out
    assert "Apply failed" not in r.out


# --------------------------------------------------------------------------- malformed answers, whole CLI

MALFORMED = [
    ("WhoAmI without UserId", "/api/data/v9.2/WhoAmI", {"shape": "missing_field", "key_path": "UserId"},
     "UserId: missing"),
    ("200,000-deep answer", "/api/data/v9.2/connectionreferences", {"shape": "deep"}, "nested deeper than"),
    ("HTML with 200", "/api/data/v9.2/workflows", {"shape": "html"}, "the body is HTML or XML"),
    ("next link to itself", "/api/data/v9.2/connectionreferences", {"shape": "self_link"},
     "the next link repeats a page already read"),
    ("null connection list", "/providers/Microsoft.PowerApps/scopes/admin/*", {"shape": "null"},
     "expected a collection"),
]


@pytest.mark.parametrize("command", [("plan",), ("drift",), ("lint", "-e", "dev"), ("whoami", "-e", "dev"),
                                     ("import", "-e", "dev"), ("apply", "--auto-approve")],
                         ids=lambda c: c[0])
@pytest.mark.parametrize(("name", "path", "options", "problem"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_answer_is_one_clear_error(
    served: Served, command: tuple[str, ...], name: str, path: str, options: dict[str, object], problem: str
) -> None:
    for app in served.apps.values():
        for a in app.store.data["applications"]:
            a["management_app"] = True
        app.faults.add("malformed", path, methods=["GET"], **options)
    before = sorted(p.name for p in (served.dir / "state").glob("*")) if (served.dir / "state").exists() else []
    r = served.run(*command)
    assert r.code == 1, r.out + r.err
    assert "Traceback" not in r.err
    errors = [line for line in r.err.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, r.err
    assert problem in errors[0]
    assert "HTTP 200: connref cannot read this answer" in errors[0]
    assert "Apply complete!" not in r.out
    after = sorted(p.name for p in (served.dir / "state").glob("*")) if (served.dir / "state").exists() else []
    assert after == before  # nothing recorded, no lock left behind


def test_a_discovery_document_that_is_an_html_page_is_one_clear_error(served: Served) -> None:
    # (A 500 is retried with backoff first: tests/test_token_faults.py counts those retries.)
    served.apps["dev"].faults.add("malformed", "/*/v2.0/.well-known/openid-configuration", shape="html")
    r = served.run("plan")
    assert r.code == 1
    assert "Traceback" not in r.err
    errors = [line for line in r.err.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1
    assert errors[0].startswith("Error: auth profile 'demo' (client_secret): GET ")
    assert "openid-configuration: HTTP 200: connref cannot read this answer: the body is HTML" in errors[0]


def test_ctrl_c_during_start_up_prints_no_traceback(quickstart: Workspace) -> None:
    script = TERM_DURING_IMPORT.replace("signal.SIGTERM", "signal.SIGINT")
    proc = subprocess.run([sys.executable, "-c", script, "-c", str(quickstart.config), "validate"],
                          cwd=quickstart.dir, capture_output=True, text=True, timeout=TIMEOUT,
                          env=dict(os.environ))
    assert proc.returncode == 130, proc.stdout + proc.stderr
    assert proc.stderr.strip() == "Interrupted."
    assert proc.stdout == ""


TERM_WHILE_READING = """
import signal, sys
from reconciler import cli, commands
def stop(*args, **kwargs):
    signal.raise_signal(signal.SIGTERM)
commands.read_all = stop
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_cancelled_plan_still_prints_its_one_json_document_and_writes_its_markdown(quickstart: Workspace) -> None:
    md_path = quickstart.dir / "plan.md"
    proc = subprocess.run([sys.executable, "-c", TERM_WHILE_READING, "-c", str(quickstart.config), "plan", "--json",
                           "--markdown", str(md_path)], cwd=quickstart.dir, capture_output=True, text=True,
                          timeout=TIMEOUT, env=dict(os.environ))
    assert proc.returncode == 143, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["errored"] is True and "cancelled" in json.dumps(doc["errors"]), doc
    assert "cancelled" in md_path.read_text(encoding="utf-8")
    assert proc.stderr.strip() == "Terminated."
