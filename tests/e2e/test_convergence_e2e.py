"""The state converges with the environment, through the real CLI (state/README.md, "When the state is
refreshed").

- Every apply refreshes what the state records of each declared reference from the environment, whether
  it wrote anything or not, and says what changed outside connref that it now records (one rule for both
  paths: Terraform's refresh, persisted by apply).
- An apply killed between its write and its state record is healed by the next apply, and in between
  drift does not report connref's own writes as changes made outside it.
- A managed reference no longer declared: gone from the environment, drift says the next apply forgets it
  (nothing is left to prune); moved out of the solution, prune still finds it and deletes it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.e2e_support import TIMEOUT, Served, Workspace, cli_in_child, gate_commits, wait_for
from reconciler.emulator import jwt
from reconciler.emulator.app import EmulatorApp
from reconciler.emulator.store import EnvironmentStore
from reconciler.state.local import load_state
from reconciler.state.lock import read_lock
from reconciler.state.model import EnvState

pytestmark = pytest.mark.emulator_only

APPROVALS = "contoso_sharedsharepointonline_8f4b0"
APPROVALS_DEV_BINDING = "      contoso_sharedsharepointonline_8f4b0: 7c84991c04914d13b9fa2b331a3ad4b8\n"
MAKER2_SHAREPOINT = "a9f6f27419d644e1b15e991a285112d7"  # maker2's own SharePoint connection in dev
TEAMS = "contoso_Teams"


def portal(data_file: Path, upn: str, method: str, logical_name: str, body: dict[str, Any] | None = None) -> None:
    """A maker changes a reference in the portal: a request over HTTP to the emulator of ``data_file`` as
    ``upn`` (the emulator writes back into the file, as a ``local:`` environment does)."""
    store = EnvironmentStore.from_file(str(data_file))
    app = EmulatorApp(store, persist=True)
    user = next(u for u in store.data["systemusers"] if u["domainname"] == upn)
    env = store.data["environment"]
    token = jwt.mint(store.data["signing_key_pem"], tenant_id=env["tenant_id"],
                     object_id=user["azureactivedirectoryobjectid"], audience=env["url"], upn=upn)
    row = next(x for x in store.data["connectionreferences"] if x["connectionreferencelogicalname"] == logical_name)
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="https://dev.local/api/data/v9.2/") as c:
        resp = c.request(method, f"connectionreferences({row['connectionreferenceid']})", json=body,
                         headers={"Authorization": f"Bearer {token}", "If-Match": "*"})
        assert resp.status_code == 204, resp.text


def state(ws: Workspace | Served, env: str) -> EnvState:
    st = load_state(ws.dir / "state", env)
    assert st is not None
    return st


def edit_config(ws: Workspace | Served, old: str, new: str) -> None:
    text = ws.config.read_text()
    assert old in text, old
    ws.config.write_text(text.replace(old, new, 1))


def drift_kinds(ws: Workspace | Served, env: str) -> tuple[int, set[tuple[str, str]], list[str]]:
    r = ws.run("drift", "-e", env, "--json")
    doc = json.loads(r.out)["environments"][0]
    return r.code, {(x["logical_name"], i["kind"]) for x in doc["references"] for i in x["items"]}, doc["notes"]


# --------------------------------------------------------------------------- one rule for both paths

RECORDED = ("dev: changed outside connref since the state last recorded it, now recorded as it is "
            f"(the config does not set it): {APPROVALS} connection")


def rebound_by_hand(quickstart: Workspace) -> None:
    """Applied; then the config stops binding the approvals reference in dev, and maker2 rebinds it in the
    portal to a connection of their own."""
    assert quickstart.run("apply", "--auto-approve").code == 0
    edit_config(quickstart, APPROVALS_DEV_BINDING, "")
    portal(quickstart.dir / "dev.json", "maker2@contoso.com", "PATCH", APPROVALS, {"connectionid": MAKER2_SHAREPOINT})
    # Between applies drift reports the hand rebind, against what connref last applied.
    code, kinds, _ = drift_kinds(quickstart, "dev")
    assert (code, kinds) == (2, {(APPROVALS, "rebound")})


def test_an_apply_with_nothing_to_write_records_a_hand_rebind_and_says_so(quickstart: Workspace) -> None:
    rebound_by_hand(quickstart)
    serial = state(quickstart, "dev").serial
    r = quickstart.run("apply", "-e", "dev", "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert "No changes. Nothing was written." in r.out
    assert RECORDED in r.out
    after = state(quickstart, "dev")
    assert after.serial == serial + 1 and after.reference(APPROVALS).connection == MAKER2_SHAREPOINT  # type: ignore[union-attr]
    assert drift_kinds(quickstart, "dev")[:2] == (0, set())
    # Recorded once: the next apply has nothing to write and nothing to record.
    r = quickstart.run("apply", "-e", "dev", "--auto-approve")
    assert r.code == 0 and RECORDED not in r.out
    assert state(quickstart, "dev").serial == serial + 1


def test_an_apply_that_writes_something_else_records_a_hand_rebind_the_same_way(quickstart: Workspace) -> None:
    rebound_by_hand(quickstart)
    edit_config(quickstart, "display_name: Microsoft Teams ContosoFlows", "display_name: Microsoft Teams (renamed)")
    serial = state(quickstart, "dev").serial
    r = quickstart.run("apply", "-e", "dev", "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert "Apply complete! Changes: 0 added, 1 changed, 0 destroyed." in r.out
    assert RECORDED in r.out  # the same words as when nothing was written
    after = state(quickstart, "dev")
    assert after.serial == serial + 1 and after.reference(APPROVALS).connection == MAKER2_SHAREPOINT  # type: ignore[union-attr]
    assert after.reference(TEAMS).display_name == "Microsoft Teams (renamed)"  # type: ignore[union-attr]
    assert drift_kinds(quickstart, "dev")[:2] == (0, set())


# --------------------------------------------------------------------------- killed between the write and the record


def test_an_apply_killed_after_its_write_is_healed_by_the_next_apply(served: Served) -> None:
    r = served.run("apply", "--auto-approve")
    assert r.code == 0, r.out + r.err
    recorded = state(served, "dev")
    edit_config(served, "display_name: Microsoft Teams ContosoFlows", "display_name: Microsoft Teams (renamed)")

    gate = gate_commits(served, "dev")
    child = subprocess.Popen(cli_in_child("-c", str(served.config), "apply", "-e", "dev", "--auto-approve"),
                             env=dict(os.environ), cwd=served.dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        wait_for(gate.committed, "the apply's $batch is committed", child)
        os.kill(child.pid, signal.SIGKILL)  # between its write and its state record
        child.communicate(timeout=TIMEOUT)
    finally:
        gate.release()
    assert child.returncode == -signal.SIGKILL
    teams = next(x for x in served.apps["dev"].store.data["connectionreferences"]
                 if x["connectionreferencelogicalname"] == TEAMS)
    assert teams["connectionreferencedisplayname"] == "Microsoft Teams (renamed)"  # written ...
    assert state(served, "dev") == recorded  # ... and not recorded

    # drift: connref's own write, to what the config says, is not a change made outside connref.
    code, kinds, notes = drift_kinds(served, "dev")
    assert (code, kinds) == (0, set())
    assert any(TEAMS in n and "the next apply records it" in n for n in notes), notes

    # The killed run left its lock; the next apply names it, it is released as it says, and that apply,
    # with nothing to write, records what the killed one wrote.
    lock = read_lock(served.dir / "state", "dev")
    assert lock is not None
    assert served.run("apply", "-e", "dev", "--auto-approve").code == 1
    assert served.run("state", "unlock", "dev", lock.id).code == 0
    r = served.run("apply", "-e", "dev", "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert "No changes. Nothing was written." in r.out
    healed = state(served, "dev")
    assert healed.serial == recorded.serial + 1
    assert healed.reference(TEAMS).display_name == "Microsoft Teams (renamed)"  # type: ignore[union-attr]
    assert drift_kinds(served, "dev")[:2] == (0, set())
    assert served.run("plan", "-e", "dev", "--detailed-exitcode").code == 0


# --------------------------------------------------------------------------- managed, no longer declared


def undeclare_teams(ws: Workspace) -> None:
    text = ws.config.read_text()
    start = text.index("  contoso_Teams:\n")
    end = text.index("\nenvironments:")
    text = text[:start] + text[end + 1:]
    text = "\n".join(line for line in text.splitlines() if not line.strip().startswith("contoso_Teams:")) + "\n"
    ws.config.write_text(text)


def test_drift_says_a_managed_reference_already_deleted_is_forgotten_by_the_next_apply(quickstart: Workspace) -> None:
    assert quickstart.run("apply", "--auto-approve").code == 0
    undeclare_teams(quickstart)
    portal(quickstart.dir / "dev.json", "svc-flows@contoso.com", "DELETE", TEAMS)
    code, kinds, notes = drift_kinds(quickstart, "dev")
    assert (code, kinds) == (0, set())
    assert [n for n in notes if TEAMS in n] == [
        f"{TEAMS} is managed by connref, no longer declared, and already gone from the environment: "
        "the next apply forgets it (nothing is left to prune)"]
    assert not any("plan with prune" in n for n in notes)
    r = quickstart.run("apply", "-e", "dev", "--auto-approve")
    assert r.code == 0 and f"no longer managed (not declared, and deleted from the environment): {TEAMS}" in r.out
    assert not state(quickstart, "dev").manages(TEAMS)


def moved_out_of_the_solution(ws: Workspace, logical_name: str) -> None:
    """Someone removes the reference from the solution in the portal (RemoveSolutionComponent): the row
    stays, its membership goes."""
    path = ws.dir / "dev.json"
    data = json.loads(path.read_text())
    rid = next(r["connectionreferenceid"] for r in data["connectionreferences"]
               if r["connectionreferencelogicalname"] == logical_name)
    data["solutioncomponents"] = [c for c in data["solutioncomponents"] if c["objectid"] != rid]
    path.write_text(json.dumps(data, indent=2))


def test_prune_finds_a_managed_reference_someone_moved_out_of_the_solution(quickstart: Workspace) -> None:
    assert quickstart.run("apply", "--auto-approve").code == 0
    undeclare_teams(quickstart)
    moved_out_of_the_solution(quickstart, TEAMS)
    # Without prune it stays managed (it still exists), and drift says where it went.
    r = quickstart.run("apply", "-e", "dev", "--auto-approve")
    assert r.code == 0 and state(quickstart, "dev").manages(TEAMS)
    _, kinds, notes = drift_kinds(quickstart, "dev")
    assert (TEAMS, "removed_from_solution") in kinds
    assert any(TEAMS in n and "plan with prune to delete it" in n for n in notes)
    # With prune, the plan deletes it, and the state forgets it.
    r = quickstart.run("plan", "-e", "dev", "--prune", "--detailed-exitcode")
    assert r.code == 2 and f"- {TEAMS}" in r.out and "Plan: 0 to add, 0 to change, 1 to destroy." in r.out
    r = quickstart.run("apply", "-e", "dev", "--prune", "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert TEAMS not in {x["connectionreferencelogicalname"] for x in quickstart.data("dev")["connectionreferences"]}
    assert not state(quickstart, "dev").manages(TEAMS)
    assert drift_kinds(quickstart, "dev")[:2] == (0, set())
