"""State, locking, saved plans, prune and drift end to end through the real CLI.

Two applies race as two real processes against one emulated environment served over loopback (the first is
held inside its ``$batch`` until the test lets it go, so the order is decided by the test, not by timing);
a lock left by a killed process is released with ``connref state unlock``; a saved plan goes stale when the
state's serial moves; prune deletes only what connref manages and no flow uses; a damaged state file is
reported with its backup and restored; ``drift`` exits 0 on a clean environment and 2 after a portal rename.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.e2e_support import TIMEOUT, Served, Workspace, cli_in_child, gate_batches, wait_for, wait_for_byte
from reconciler.emulator import jwt
from reconciler.emulator.app import EmulatorApp
from reconciler.emulator.store import EnvironmentStore
from reconciler.state.local import backup_path, load_state, state_path
from reconciler.state.lock import read_lock
from reconciler.state.model import EnvState

pytestmark = pytest.mark.emulator_only

BATCH = "/api/data/v9.2/$batch"

# A lock holder that is killed with SIGKILL, as a pipeline agent that dies mid-apply would be: it takes the
# lock with the real lock module, says its id, and waits to be killed.
KILLED_HOLDER = """
import sys, threading
from reconciler.state.lock import acquire
lock = acquire(sys.argv[1], sys.argv[2], "apply")
print(lock.id, flush=True)
threading.Event().wait()
"""

# The CLI in a subprocess, with an observer on the lock module's one atomic step: the first time the lock
# is found taken, it writes a byte to the pipe whose descriptor it is given. The test needs it to know,
# without sleeping, that the second run really is waiting on the lock before it lets the first run finish.
# Nothing else is changed.
WAITING_CLI = """
import os, sys
import reconciler.state.lock as lock
from reconciler.cli import main
fd, argv = int(sys.argv[1]), sys.argv[2:]
real = lock._try_create
def observed(path, info):
    global fd
    taken = real(path, info)
    if not taken and fd >= 0:
        os.write(fd, b"w")
        os.close(fd)
        fd = -1
    return taken
lock._try_create = observed
raise SystemExit(main(argv))
"""


# --------------------------------------------------------------------------- helpers


def _cli(config: Path, *argv: str) -> list[str]:
    return [sys.executable, "-m", "reconciler", "-c", str(config), *argv]


def _env() -> dict[str, str]:
    """The test's environment (SSL_CERT_FILE for the loopback CA, NO_COLOR) for a child process."""
    return dict(os.environ)


def _portal_rename(data_file: Path, logical_name: str, new_name: str) -> None:
    """maker2 renames a reference in the portal: a PATCH over HTTP to the emulator of ``data_file`` (which
    writes back into the file, as a ``local:`` environment does)."""
    store = EnvironmentStore.from_file(str(data_file))
    app = EmulatorApp(store, persist=True)
    maker2 = next(u for u in store.data["systemusers"] if u["domainname"] == "maker2@contoso.com")
    env = store.data["environment"]
    token = jwt.mint(store.data["signing_key_pem"], tenant_id=env["tenant_id"],
                     object_id=maker2["azureactivedirectoryobjectid"], audience=env["url"],
                     upn="maker2@contoso.com")
    row = next(x for x in store.data["connectionreferences"]
               if x["connectionreferencelogicalname"] == logical_name)
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="https://dev.local/api/data/v9.2/") as c:
        resp = c.patch(f"connectionreferences({row['connectionreferenceid']})",
                       json={"connectionreferencedisplayname": new_name},
                       headers={"Authorization": f"Bearer {token}", "If-Match": "*"})
        assert resp.status_code == 204, resp.text


def _drop_references(config: Path, names: Iterable[str]) -> None:
    """Remove references from the quickstart config: their declaration block and every binding."""
    text = config.read_text()
    for name in names:
        text, n = re.subn(rf"^  {name}:\n(?:    .*\n)+", "", text, flags=re.M)
        assert n == 1, f"{name} not declared"
        text, n = re.subn(rf"^      {name}: .*\n", "", text, flags=re.M)
        assert n == 3, f"{name} not bound in every environment"
    config.write_text(text)


def _state(state_dir: Path, env: str) -> EnvState:
    """The state of ``env``, which must exist."""
    st = load_state(state_dir, env)
    assert st is not None, f"no state for {env}"
    return st


def _names(rows: Iterable[dict[str, Any]]) -> set[str]:
    return {r["connectionreferencelogicalname"] for r in rows}


def _snapshot(ws: Workspace) -> dict[str, bytes]:
    """Every data and state file of the workspace, to prove that a refused command wrote nothing."""
    files = [ws.dir / "dev.json", ws.dir / "prod.json", *sorted((ws.dir / "state").glob("*"))]
    return {str(p): p.read_bytes() for p in files if p.is_file()}


# --------------------------------------------------------------------------- concurrent applies


def test_two_processes_racing_second_is_locked_out_and_state_stays_intact(served: Served) -> None:
    state_dir = served.dir / "state"
    gate = gate_batches(served, "dev")
    first = subprocess.Popen(_cli(served.config, "apply", "--auto-approve", "--lock-timeout", "0.5"),
                             env=_env(), cwd=served.dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # It takes the lock before it writes: held in its $batch, it holds the lock.
        wait_for(gate.reached, "the first apply sends its $batch", first)
        holder = read_lock(state_dir, "dev")
        assert holder is not None and holder.pid == first.pid
        second = subprocess.run(_cli(served.config, "apply", "--auto-approve", "--lock-timeout", "0.5"),
                                env=_env(), cwd=served.dir, capture_output=True, text=True, timeout=TIMEOUT,
                                check=False)
    finally:
        gate.release()
    out1, err1 = first.communicate(timeout=TIMEOUT)

    assert second.returncode == 1, second.stdout + second.stderr
    assert holder.holder in second.stderr and f"pid {first.pid}" in second.stderr
    assert f"connref state unlock dev {holder.id}" in second.stderr
    assert "Apply complete" not in second.stdout
    assert first.returncode == 0, out1 + err1
    assert "Apply complete! Changes: 2 added, 13 changed, 0 destroyed." in out1

    # The state is whole, written once per environment (no backup: nothing overwrote it), locks released.
    for env in ("dev", "prod"):
        st = load_state(state_dir, env)
        assert st is not None and st.serial == 1
        assert st.manages("contoso_Teams")
        assert not backup_path(state_dir, env).exists()
        assert read_lock(state_dir, env) is None
    # Only the first run wrote: one $batch per environment.
    assert served.apps["dev"].log.count_writes(BATCH) == 1
    assert served.apps["prod"].log.count_writes(BATCH) == 1

    r = served.run("apply", "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert "No changes" in r.out
    assert _state(state_dir, "dev").serial == 1
    assert served.apps["dev"].log.count_writes(BATCH) == 1


def test_second_apply_waits_within_lock_timeout_then_finds_no_changes(served: Served) -> None:
    state_dir = served.dir / "state"
    gate = gate_batches(served, "dev")
    first = subprocess.Popen(_cli(served.config, "apply", "--auto-approve"),
                             env=_env(), cwd=served.dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second: subprocess.Popen[str] | None = None
    found_taken, tell = os.pipe()
    try:
        wait_for(gate.reached, "the first apply sends its $batch", first)
        second = subprocess.Popen(
            [sys.executable, "-c", WAITING_CLI, str(tell),
             "-c", str(served.config), "apply", "--auto-approve", "--lock-timeout", str(TIMEOUT)],
            env=_env(), cwd=served.dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            pass_fds=(tell,))
        os.close(tell)
        tell = -1
        wait_for_byte(found_taken, "the second apply finds the lock taken", second)
    finally:
        gate.release()
        os.close(found_taken)
        if tell >= 0:
            os.close(tell)
    out1, err1 = first.communicate(timeout=TIMEOUT)
    assert second is not None
    out2, err2 = second.communicate(timeout=TIMEOUT)

    assert first.returncode == 0, out1 + err1
    assert "Apply complete!" in out1
    assert second.returncode == 0, out2 + err2
    assert "No changes" in out2 and "Apply complete!" not in out2
    st = load_state(state_dir, "dev")
    assert st is not None and st.serial == 1
    assert served.apps["dev"].log.count_writes(BATCH) == 1
    assert read_lock(state_dir, "dev") is None


# --------------------------------------------------------------------------- unlock


def test_unlock_releases_the_lock_of_a_killed_run_and_refuses_a_wrong_id(quickstart: Workspace) -> None:
    state_dir = quickstart.dir / "state"
    holder = subprocess.Popen([sys.executable, "-c", KILLED_HOLDER, str(state_dir), "prod"],
                              cwd=quickstart.dir, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        lock_id = holder.stdout.readline().strip()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=TIMEOUT)
    assert lock_id and (state_dir / "prod.lock").exists()

    before = _snapshot(quickstart)
    r = quickstart.run("apply", "--auto-approve")
    assert r.code == 1
    assert f"connref state unlock prod {lock_id}" in r.err
    assert f"pid {holder.pid}" in r.err and "no longer running" in r.err
    assert _snapshot(quickstart) == before, "a locked-out apply wrote something"
    # dev's lock, taken before prod's was found held, was given back
    assert not (state_dir / "dev.lock").exists()
    r = quickstart.run("apply", "-e", "dev", "--auto-approve")  # an unlocked environment is not blocked
    assert r.code == 0, r.out + r.err

    r = quickstart.run("state", "unlock", "prod", "00000000-0000-0000-0000-000000000000")
    assert r.code == 1 and lock_id in r.err and "nothing released" in r.err
    assert (state_dir / "prod.lock").exists()

    r = quickstart.run("state", "unlock", "prod", lock_id)
    assert r.code == 0, r.err
    assert f"pid {holder.pid}" in r.out
    assert not (state_dir / "prod.lock").exists()
    r = quickstart.run("state", "unlock", "prod", lock_id)
    assert r.code == 1 and "not locked" in r.err

    r = quickstart.run("apply", "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert "Apply complete!" in r.out
    assert _state(state_dir, "prod").serial == 1


# SIGTERM is what a cancelled CI job or a stopped container gets: it must unwind like Ctrl-C.
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_apply_gives_its_locks_back(served: Served, sig: signal.Signals) -> None:
    state_dir = served.dir / "state"
    gate = gate_batches(served, "dev")
    # SIGINT as from a terminal: the child does not inherit an ignored SIGINT from the way the suite was started.
    first = subprocess.Popen(cli_in_child("-c", str(served.config), "apply", "--auto-approve"), env=_env(),
                             cwd=served.dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(gate.reached, "the apply sends its $batch", first)
        first.send_signal(sig)
        _, first_err = first.communicate(timeout=TIMEOUT)
    finally:
        gate.release()
    # The $batch had been sent whole: the emulator still answers it. Wait for that, so what follows is ordered.
    assert gate.answered.wait(TIMEOUT), "the sent $batch was not answered"
    assert served.apps["dev"].log.count_writes(BATCH) == 1

    assert read_lock(state_dir, "dev") is None and read_lock(state_dir, "prod") is None
    assert first.returncode == (143 if sig == signal.SIGTERM else 130)
    # It says what may have been written, and how to find out.
    assert "may have been made: 'connref plan' shows what is left" in first_err, first_err
    assert load_state(state_dir, "dev") is None  # interrupted before it could record anything
    # The next run is not blocked, finds dev already written and records it.
    r = served.run("apply", "--auto-approve")
    assert r.code == 0, r.out + r.err
    st = load_state(state_dir, "dev")
    assert st is not None and st.serial == 1 and st.manages("contoso_Teams")


# --------------------------------------------------------------------------- stale saved plans


def test_saved_plan_refused_when_another_apply_moved_the_serial(quickstart: Workspace) -> None:
    state_dir = quickstart.dir / "state"
    plan_path = quickstart.dir / "plan.json"
    assert quickstart.run("apply", "--auto-approve").code == 0
    _portal_rename(quickstart.dir / "dev.json", "contoso_sharedoffice365_d4c61", "Outlook (renamed in the portal)")
    r = quickstart.run("plan", "-e", "dev", "--out", str(plan_path))
    assert r.code == 0 and "contoso_sharedoffice365_d4c61" in r.out, r.out + r.err

    # Meanwhile another run (the merge pipeline) applies to dev: state serial 1 -> 2.
    r = quickstart.run("apply", "-e", "dev", "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert _state(state_dir, "dev").serial == 2

    before = _snapshot(quickstart)
    r = quickstart.run("apply", str(plan_path))
    assert r.code == 1
    assert "stale" in r.err and "serial 1 -> 2" in r.err
    assert "connref plan --out FILE" in r.err
    assert _snapshot(quickstart) == before, "a stale plan wrote something"


def test_saved_plan_refused_when_only_the_state_moved(quickstart: Workspace) -> None:
    """No live row changes here: the serial alone makes the plan stale (a restore writes the state)."""
    state_dir = quickstart.dir / "state"
    plan_path = quickstart.dir / "plan.json"
    assert quickstart.run("apply", "--auto-approve").code == 0
    _portal_rename(quickstart.dir / "dev.json", "contoso_sharedoffice365_d4c61", "Outlook (portal)")
    assert quickstart.run("apply", "-e", "dev", "--auto-approve").code == 0  # serial 2, backup at serial 1
    _portal_rename(quickstart.dir / "dev.json", "contoso_sharedoffice365_d4c61", "Outlook (portal, again)")
    assert quickstart.run("plan", "-e", "dev", "--out", str(plan_path)).code == 0

    r = quickstart.run("state", "restore", "dev")
    assert r.code == 0, r.err
    assert _state(state_dir, "dev").serial == 3

    before = _snapshot(quickstart)
    r = quickstart.run("apply", str(plan_path))
    assert r.code == 1
    assert "serial 2 -> 3" in r.err and "connref plan --out FILE" in r.err
    assert "ETag" not in r.err  # no live row moved: the serial alone was enough
    assert _snapshot(quickstart) == before, "a stale plan wrote something"


# --------------------------------------------------------------------------- prune


ORPHAN = "contoso_sharedteams_0rph4"


def _add_unmanaged_orphan(ws: Workspace) -> None:
    """An in-solution reference that no flow uses and that no config ever declared: prune must keep it."""
    path = ws.dir / "dev.json"
    data = json.loads(path.read_text())
    template = next(r for r in data["connectionreferences"]
                    if r["connectionreferencelogicalname"] == "contoso_sharedteams_c93f2")
    row = {**template, "connectionreferencelogicalname": ORPHAN,
           "connectionreferenceid": "0d2c1e5a-7b44-4f0e-9a53-6f1d2b0c9e71",
           "connectionreferencedisplayname": "Teams orphan", "versionnumber": data["next_versionnumber"]}
    data["next_versionnumber"] += 1
    data["connectionreferences"].append(row)
    member = dict(data["solutioncomponents"][0])
    member.update(objectid=row["connectionreferenceid"], solutioncomponentid="5e0b7f3c-9d1a-4c2e-8f60-2a7b9c4d1e83")
    data["solutioncomponents"].append(member)
    path.write_text(json.dumps(data, indent=2))


def test_prune_deletes_only_managed_unused_references(quickstart: Workspace) -> None:
    state_dir = quickstart.dir / "state"
    _add_unmanaged_orphan(quickstart)
    assert quickstart.run("apply", "--auto-approve").code == 0
    assert _state(state_dir, "dev").manages("contoso_Teams")
    # contoso_Teams: managed, no flow uses it. contoso_sharedoffice365_d4c61: managed, "Invoice intake" uses it.
    _drop_references(quickstart.config, ["contoso_Teams", "contoso_sharedoffice365_d4c61"])

    r = quickstart.run("plan", "--detailed-exitcode")
    assert r.code == 0, r.out + r.err
    assert "No changes." in r.out and "destroy" not in r.out.replace("0 to destroy", "")

    r = quickstart.run("plan", "--prune", "--detailed-exitcode")
    assert r.code == 2, r.out + r.err
    deleted = re.findall(r"^  - (\S+)$", r.out, flags=re.M)
    # once in dev, once in prod; never in test, where both are part of the managed solution
    assert deleted == ["contoso_Teams", "contoso_Teams"], r.out
    assert "Plan: 0 to add, 0 to change, 2 to destroy." in r.out
    kept = [line for line in r.out.splitlines() if "contoso_sharedoffice365_d4c61" in line]
    in_use = [k for k in kept if "not deleted" in k and '"Invoice intake"' in k]
    assert len(in_use) == 2 and all(k.lstrip().startswith(("Warning: dev:", "Warning: prod:")) for k in in_use)
    managed = [line for line in r.out.splitlines() if line.lstrip().startswith("Warning: test:")]
    assert len(managed) == 2 and all("part of the managed solution ContosoFlows, so prune leaves it" in m
                                     for m in managed), r.out
    for never_managed in ("contoso_sharedteams_c93f2", ORPHAN):
        assert never_managed not in r.out

    r = quickstart.run("plan", "--prune", "--json")
    assert r.code == 0
    doc = json.loads(r.out)
    changes = [(c["environment"], c["kind"], c["logical_name"]) for c in doc["changes"]]
    assert changes == [("dev", "delete", "contoso_Teams"), ("prod", "delete", "contoso_Teams")]
    assert sum("Invoice intake" in w for w in doc["warnings"]) == 2

    r = quickstart.run("apply", "--prune", "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert "Changes: 0 added, 0 changed, 2 destroyed." in r.out
    for env in ("dev", "prod"):
        names = _names(quickstart.data(env)["connectionreferences"])
        assert "contoso_Teams" not in names
        assert "contoso_sharedoffice365_d4c61" in names
        st = load_state(state_dir, env)
        assert st is not None and not st.manages("contoso_Teams")
        # still managed: once no flow uses it, a later prune may delete it
        assert st.manages("contoso_sharedoffice365_d4c61")
    assert {"contoso_sharedteams_c93f2", ORPHAN} <= _names(quickstart.data("dev")["connectionreferences"])

    r = quickstart.run("plan", "--prune", "--detailed-exitcode")
    assert r.code == 0, r.out + r.err


def test_prune_true_in_config_works_like_the_flag(quickstart: Workspace) -> None:
    assert quickstart.run("apply", "--auto-approve").code == 0
    _drop_references(quickstart.config, ["contoso_Teams"])
    text = quickstart.config.read_text()
    quickstart.config.write_text(text.replace("solution: ContosoFlows\n", "solution: ContosoFlows\nprune: true\n", 1))

    r = quickstart.run("plan", "--detailed-exitcode")
    assert r.code == 2, r.out + r.err
    assert re.findall(r"^  - (\S+)$", r.out, flags=re.M) == ["contoso_Teams", "contoso_Teams"]
    r = quickstart.run("apply", "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert "2 destroyed" in r.out
    for env in ("dev", "prod"):
        assert "contoso_Teams" not in _names(quickstart.data(env)["connectionreferences"])
        assert not _state(quickstart.dir / "state", env).manages("contoso_Teams")


# --------------------------------------------------------------------------- damaged state


def _damage_truncated(raw: bytes) -> bytes:
    return raw[: len(raw) // 2]


def _damage_garbage(raw: bytes) -> bytes:
    return b"\x00\x9f\x13 not a state \xff"


def _damage_no_lineage(raw: bytes) -> bytes:
    doc = json.loads(raw)
    del doc["lineage"]
    return json.dumps(doc).encode()


def _damage_nested(raw: bytes) -> bytes:
    # Nested deeper than any reader may recurse: once a RecursionError traceback in every command.
    return b"[" * 100_000 + b"]" * 100_000


def _damage_other_row(raw: bytes) -> bytes:
    # A hand edit: one entry moved under another key, and its row recorded twice.
    doc = json.loads(raw)
    refs = doc["references"]
    first, second = sorted(refs)[:2]
    refs[second] = {**refs[first]}
    return json.dumps(doc).encode()


@pytest.mark.parametrize("damage", [_damage_truncated, _damage_garbage, _damage_no_lineage, _damage_nested,
                                    _damage_other_row],
                         ids=["truncated", "garbage", "missing-field", "nested-deep", "another-row"])
def test_damaged_state_is_reported_with_its_backup_and_restored(
    quickstart: Workspace, damage: Callable[[bytes], bytes]
) -> None:
    state_dir = quickstart.dir / "state"
    assert quickstart.run("apply", "--auto-approve").code == 0
    _portal_rename(quickstart.dir / "dev.json", "contoso_sharedoffice365_d4c61", "Outlook (portal)")
    assert quickstart.run("apply", "-e", "dev", "--auto-approve").code == 0  # serial 2; backup = serial 1
    good_backup = load_state(state_dir, "dev")
    assert good_backup is not None and good_backup.serial == 2
    backup = backup_path(state_dir, "dev").read_bytes()

    path = state_path(state_dir, "dev")
    path.write_bytes(damage(path.read_bytes()))
    before = _snapshot(quickstart)
    for argv in (("plan",), ("apply", "--auto-approve"), ("drift",)):
        r = quickstart.run(*argv)
        assert r.code == 1, (argv, r.out, r.err)
        assert str(path) in r.err, (argv, r.err)
        assert "connref state restore dev" in r.err, (argv, r.err)
        assert "Traceback" not in r.err
    for state_argv in (["state", "list"], ["state", "show", "dev"]):
        r = quickstart.run(*state_argv)
        assert r.code == 1, (state_argv, r.out, r.err)  # state list names it DAMAGED, and fails a pipeline's check
        assert str(path) in r.out + r.err, (state_argv, r.out, r.err)
    assert _snapshot(quickstart) == before, "a command wrote over a damaged state"

    r = quickstart.run("state", "restore", "dev")
    assert r.code == 0, r.err
    restored = load_state(state_dir, "dev")
    assert restored is not None
    from_backup = json.loads(backup)
    assert restored.lineage == from_backup["lineage"]
    assert sorted(restored.references) == sorted(from_backup["references"])
    assert restored.serial == from_backup["serial"] + 1
    assert len(list(state_dir.glob("dev.json.damaged-*"))) == 1  # the damaged file is kept for inspection

    r = quickstart.run("plan", "--detailed-exitcode")
    assert r.code == 0, r.out + r.err
    r = quickstart.run("apply", "--auto-approve")
    assert r.code == 0 and "No changes" in r.out, r.out + r.err


def test_damaged_state_without_backup_says_so(quickstart: Workspace) -> None:
    state_dir = quickstart.dir / "state"
    assert quickstart.run("apply", "--auto-approve").code == 0
    path = state_path(state_dir, "dev")
    path.write_bytes(path.read_bytes()[:40])
    r = quickstart.run("plan")
    assert r.code == 1 and str(path) in r.err and "No backup" in r.err
    r = quickstart.run("state", "restore", "dev")
    assert r.code == 1 and "no backup" in r.err.lower()


# --------------------------------------------------------------------------- drift exit codes


def test_drift_exit_codes_clean_then_portal_rename(quickstart: Workspace) -> None:
    assert quickstart.run("apply", "--auto-approve").code == 0
    # Right after the apply the quickstart has no drift: its leftovers (maker2's unbound Teams reference
    # contoso_sharedteams_c93f2) are outside the solution, so they are not "appeared unmanaged".
    r = quickstart.run("drift")
    assert r.code == 0, r.out + r.err
    assert "No drift in 3 environments." in r.out

    _portal_rename(quickstart.dir / "dev.json", "contoso_sharedsharepointonline_30e7d", "SP renamed in portal")
    r = quickstart.run("drift", "--json")
    assert r.code == 2, r.out + r.err
    text = r.out
    assert "contoso_sharedsharepointonline_30e7d" in text and "maker2@contoso.com" in text
    assert "SP renamed in portal" in text
    r = quickstart.run("drift")
    assert r.code == 2
    assert "renamed" in r.out.lower() and "rebound" not in r.out.lower()
    assert quickstart.run("drift", "-e", "prod").code == 0  # only dev drifted

    # drift is read-only; an apply puts the declared name back and the drift is gone.
    assert quickstart.run("apply", "--auto-approve").code == 0
    assert quickstart.run("drift").code == 0


# --------------------------------------------------------------------------- a state that cannot be written


def test_state_that_cannot_be_written_after_the_writes_says_so_and_the_next_apply_records_them(
    quickstart: Workspace,
) -> None:
    state_dir = quickstart.dir / "state"
    assert quickstart.run("apply", "-e", "dev", "--auto-approve").code == 0
    recorded = state_path(state_dir, "dev").read_bytes()
    # Where the backup of the state belongs, a directory: the state write fails after the environment's
    # write was committed (as a full disk or a read-only mount would make it fail).
    backup = backup_path(state_dir, "dev")
    backup.unlink(missing_ok=True)
    (backup / "x").mkdir(parents=True)
    text = quickstart.config.read_text()
    quickstart.config.write_text(text.replace("display_name: Microsoft Teams ContosoFlows\n",
                                              "display_name: Teams (renamed)\n", 1))

    r = quickstart.run("apply", "-e", "dev", "--auto-approve")
    assert r.code == 1, r.out + r.err
    assert "update contoso_Teams (written)" in r.out
    assert "dev: the state could not be recorded" in r.err and str(backup) in r.err
    assert "Is a directory" in r.err and "Nothing is lost" in r.err and "the next apply records" in r.err
    assert quickstart.reference("dev", "contoso_Teams")["connectionreferencedisplayname"] == "Teams (renamed)"
    assert state_path(state_dir, "dev").read_bytes() == recorded  # the previous version, whole
    assert not list(state_dir.glob(".*.tmp")) and not (state_dir / "dev.lock").exists()

    (backup / "x").rmdir()
    backup.rmdir()
    r = quickstart.run("apply", "-e", "dev", "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert "No changes" in r.out
    # The refresh took in what the failed record missed; its notice is one line after a blank one.
    assert '\ndev: already as the config declares, now recorded' in r.out and "\\n" not in r.out
    assert _state(state_dir, "dev").reference("contoso_Teams").display_name == "Teams (renamed)"  # type: ignore[union-attr]
    r = quickstart.run("drift", "-e", "dev")
    assert r.code == 0, r.out + r.err


def test_unlock_refuses_a_lock_whose_holder_still_runs_here_unless_forced(quickstart: Workspace) -> None:
    state_dir = quickstart.dir / "state"
    holder = subprocess.Popen([sys.executable, "-c", KILLED_HOLDER, str(state_dir), "dev"],
                              cwd=quickstart.dir, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        lock_id = holder.stdout.readline().strip()
        r = quickstart.run("state", "unlock", "dev", lock_id)
        assert r.code == 1, r.out + r.err
        assert f"pid {holder.pid}" in r.err and "still running on this host" in r.err
        assert f"connref state unlock dev {lock_id} --force" in r.err
        assert read_lock(state_dir, "dev") is not None
        r = quickstart.run("state", "unlock", "dev", lock_id, "--force")
        assert r.code == 0, r.out + r.err
        assert read_lock(state_dir, "dev") is None
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=TIMEOUT)
