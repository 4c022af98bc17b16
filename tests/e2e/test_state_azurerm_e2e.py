"""The real CLI with its state in Azure Blob storage (Azurite): two applies racing as two processes, a killed
run's lease broken with ``state unlock``, ``state list/show`` and ``drift`` reading the blobs,
``state migrate`` both ways, and an auth profile's token (MSAL against the emulator's token endpoint, for the
storage audience) accepted by Azurite over https.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient
from azurite_support import AzuriteServer
from schema_support import check

from e2e.e2e_support import TIMEOUT, Served, Workspace, gate_batches, wait_for, wait_for_byte
from reconciler.emulator.tls import TlsFiles

pytestmark = pytest.mark.emulator_only

BATCH = "/api/data/v9.2/$batch"

# The CLI in a subprocess, with an observer on the backend's wait: the first time a run finds the lease taken
# and sleeps before asking again, it writes a byte to the pipe whose descriptor it is given, so the test knows
# (without sleeping itself) that the second run really is waiting before it lets the first one finish.
# Nothing else is changed.
WAITING_CLI = """
import os, sys
import reconciler.state.azurerm as azurerm
from reconciler.cli import main
fd, argv = int(sys.argv[1]), sys.argv[2:]
real_init = azurerm.AzureBlobBackend.__init__
def init(self, *args, **kwargs):
    real_init(self, *args, **kwargs)
    real_sleep = self._sleep
    def sleep(seconds):
        global fd
        if fd >= 0:
            os.write(fd, b"w")
            os.close(fd)
            fd = -1
        real_sleep(seconds)
    self._sleep = sleep
azurerm.AzureBlobBackend.__init__ = init
raise SystemExit(main(argv))
"""
CONN_VAR = "CONNREF_TEST_AZURITE"


def _azurerm_section(container: str, *, auth: str | None = None, account_url: str | None = None) -> str:
    lines = ["state:", "  backend: azurerm", f"  container: {container}", "  key_prefix: connref/",
             "  lease_duration: 15"]
    if auth:
        lines += [f"  auth: {auth}", f"  account_url: {account_url}"]
    else:
        lines.append(f"  connection_string_env: {CONN_VAR}")
    return "\n".join(lines) + "\n"


def _use_azurerm(config: Path, container: str, **kw: str) -> None:
    config.write_text(config.read_text() + "\n" + _azurerm_section(container, **kw))


def _cli(config: Path, *argv: str) -> list[str]:
    return [sys.executable, "-m", "reconciler", "-c", str(config), *argv]


def _blob_json(container: ContainerClient, name: str) -> dict[str, object]:
    doc: dict[str, object] = json.loads(container.get_blob_client(name).download_blob().readall())
    return doc


@pytest.fixture
def container(azurite: AzuriteServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[ContainerClient]:
    """A fresh container, its connection string in CONN_VAR (inherited by child processes)."""
    monkeypatch.setenv(CONN_VAR, azurite.connection_string)
    name = azurite.new_container()
    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        yield service.get_container_client(name)


# --------------------------------------------------------------------------- racing applies


def test_two_processes_racing_through_the_blob_backend_one_is_refused_naming_the_holder(
    served: Served, container: ContainerClient
) -> None:
    _use_azurerm(served.config, container.container_name)
    gate = gate_batches(served, "dev")
    first = subprocess.Popen(_cli(served.config, "apply", "--auto-approve"), cwd=served.dir,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(gate.reached, "the first apply sends its $batch (holding the dev lease)", first)
        second = subprocess.run(_cli(served.config, "apply", "--auto-approve", "--lock-timeout", "1"),
                                cwd=served.dir, capture_output=True, text=True, timeout=TIMEOUT, check=False)
        listed = served.run("state", "list")
    finally:
        gate.release()
    out1, err1 = first.communicate(timeout=TIMEOUT)

    assert second.returncode == 1, second.stdout + second.stderr
    assert f"pid {first.pid}" in second.stderr and "connref state unlock dev " in second.stderr
    assert "lease on http://127.0.0.1:" in second.stderr and "Apply complete" not in second.stdout
    assert "dev:" not in listed.out or "LOCKED" in listed.out  # dev has no state yet, only its lock
    assert first.returncode == 0, out1 + err1
    assert "Apply complete! Changes: 2 added, 13 changed, 0 destroyed." in out1

    # Nothing lost: every environment recorded once by the winner, no lease left behind.
    for env in ("dev", "test", "prod"):
        doc = _blob_json(container, f"connref/{env}.json")
        check("state", doc)
        references = doc["references"]
        assert doc["serial"] == 1 and isinstance(references, dict) and "contoso_Teams" in references
        props = container.get_blob_client(f"connref/{env}.json").get_blob_properties()
        assert props.lease.state == "available"
    assert served.apps["dev"].log.count_writes(BATCH) == 1

    again = served.run("apply", "--auto-approve")
    assert again.code == 0 and "No changes" in again.out, again.out + again.err
    shown = served.run("state", "show", "dev", "--json")
    doc = json.loads(shown.out)
    check("state", doc)
    assert doc["serial"] == 1 and doc["path"].endswith("/connref/dev.json")


def test_a_second_apply_waits_for_the_lease_then_finds_no_changes(served: Served,
                                                                  container: ContainerClient) -> None:
    _use_azurerm(served.config, container.container_name)
    gate = gate_batches(served, "dev")
    first = subprocess.Popen(_cli(served.config, "apply", "--auto-approve"), cwd=served.dir,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second: subprocess.Popen[str] | None = None
    found_taken, tell = os.pipe()
    try:
        wait_for(gate.reached, "the first apply sends its $batch", first)
        second = subprocess.Popen(
            [sys.executable, "-c", WAITING_CLI, str(tell),
             "-c", str(served.config), "apply", "--auto-approve", "--lock-timeout", str(TIMEOUT)],
            cwd=served.dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, pass_fds=(tell,))
        os.close(tell)
        tell = -1
        wait_for_byte(found_taken, "the second apply finds the lease taken and waits", second)
    finally:
        gate.release()
        os.close(found_taken)
        if tell >= 0:
            os.close(tell)
    out1, err1 = first.communicate(timeout=TIMEOUT)
    assert second is not None
    out2, err2 = second.communicate(timeout=TIMEOUT)
    assert first.returncode == 0, out1 + err1
    assert second.returncode == 0, out2 + err2
    assert "No changes" in out2 and "Apply complete!" not in out2
    assert _blob_json(container, "connref/dev.json")["serial"] == 1
    assert served.apps["dev"].log.count_writes(BATCH) == 1


# --------------------------------------------------------------------------- a killed run


def test_a_killed_runs_lease_is_broken_with_state_unlock(served: Served, container: ContainerClient) -> None:
    _use_azurerm(served.config, container.container_name)
    gate = gate_batches(served, "dev")
    victim = subprocess.Popen(_cli(served.config, "apply", "-e", "dev", "--auto-approve"), cwd=served.dir,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(gate.reached, "the apply sends its $batch", victim)
        os.kill(victim.pid, signal.SIGKILL)  # no finally, no lease release: as an agent that dies
        victim.communicate(timeout=TIMEOUT)
    finally:
        gate.release()

    blocked = served.run("apply", "--auto-approve")
    assert blocked.code == 1
    assert f"pid {victim.pid}" in blocked.err
    lock_id = blocked.err.split("connref state unlock dev ", 1)[1].split()[0]

    wrong = served.run("state", "unlock", "dev", "00000000-0000-0000-0000-000000000000")
    assert wrong.code == 1 and "nothing released" in wrong.err and lock_id in wrong.err
    released = served.run("state", "unlock", "dev", lock_id)
    assert released.code == 0, released.err
    assert f"pid {victim.pid}" in released.out
    assert served.run("state", "unlock", "dev", lock_id).code == 1  # not locked any more

    done = served.run("apply", "--auto-approve")
    assert done.code == 0, done.out + done.err
    assert _blob_json(container, "connref/dev.json")["serial"] == 1
    drift = served.run("drift", "--json")
    assert drift.code == 0, drift.out + drift.err
    check("drift", json.loads(drift.out))


# --------------------------------------------------------------------------- migrate


def test_migrate_local_state_into_the_blob_backend_and_back(quickstart: Workspace,
                                                           container: ContainerClient) -> None:
    assert quickstart.run("apply", "--auto-approve").code == 0
    local_dev = (quickstart.dir / "state" / "dev.json").read_bytes()

    _use_azurerm(quickstart.config, container.container_name)
    empty = quickstart.run("state", "list")
    assert empty.code == 0 and "No state" in empty.out
    moved = quickstart.run("state", "migrate", "--to", "azurerm")
    assert moved.code == 0, moved.err
    assert "dev: copied serial 1" in moved.out and "prod: copied serial 1" in moved.out
    assert container.get_blob_client("connref/dev.json").download_blob().readall() == local_dev
    listed = quickstart.run("state", "list")
    assert "dev: serial 1" in listed.out and "prod: serial 1" in listed.out
    # The history continues from the blobs: nothing to change, no drift against the last apply.
    assert quickstart.run("plan", "--detailed-exitcode").code == 0
    assert quickstart.run("drift").code == 0
    again = quickstart.run("state", "migrate", "--to", "azurerm")
    assert again.code == 0 and "already holds serial 1" in again.out

    # A newer serial in the backend is never overwritten by an older local one.
    data = json.loads((quickstart.dir / "dev.json").read_text())
    row = next(r for r in data["connectionreferences"]
               if r["connectionreferencelogicalname"] == "contoso_sharedoffice365_d4c61")
    row["connectionreferencedisplayname"] = "Renamed in the portal"
    (quickstart.dir / "dev.json").write_text(json.dumps(data))
    assert quickstart.run("apply", "-e", "dev", "--auto-approve").code == 0  # renames it back: serial 2
    assert _blob_json(container, "connref/dev.json")["serial"] == 2
    refused = quickstart.run("state", "migrate", "--to", "azurerm", "-e", "dev")
    assert refused.code == 1 and "already holds another state (serial 2" in refused.err
    assert _blob_json(container, "connref/dev.json")["serial"] == 2

    back = quickstart.dir / "back"
    returned = quickstart.run("state", "migrate", "--to", "local", "--dir", str(back))
    assert returned.code == 0, returned.err
    assert (back / "prod.json").read_bytes() == container.get_blob_client(
        "connref/prod.json").download_blob().readall()


def test_migrate_without_an_azurerm_backend_says_what_to_declare(quickstart: Workspace) -> None:
    r = quickstart.run("state", "migrate", "--to", "azurerm")
    assert r.code == 1 and "backend: azurerm" in r.err


# --------------------------------------------------------------------------- token auth


def test_an_auth_profile_token_for_the_storage_audience_is_accepted_over_https(
    served: Served, azurite_tls: tuple[AzuriteServer, TlsFiles], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, tls = azurite_tls
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", tls.ca_pem)  # the Azure SDK (requests) trusts Azurite's test CA
    with BlobServiceClient.from_connection_string(server.connection_string,
                                                  connection_verify=tls.ca_pem) as service:
        name = f"state-{os.urandom(6).hex()}"
        service.create_container(name)
        blobs = service.get_container_client(name)
        # The quickstart's pipeline profile (client secret, MSAL against the emulator's token endpoint).
        _use_azurerm(served.config, name, auth="demo", account_url=server.account_url)
        r = served.run("apply", "--auto-approve")
        assert r.code == 0, r.out + r.err
        assert json.loads(blobs.get_blob_client("connref/dev.json").download_blob().readall())["serial"] == 1
        assert "dev: serial 1" in served.run("state", "list").out


def test_a_token_for_another_audience_is_refused_with_what_to_check(
    served: Served, azurite_tls: tuple[AzuriteServer, TlsFiles], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, tls = azurite_tls
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", tls.ca_pem)
    app = served.apps["dev"]
    env = app.store.data["environment"]
    from reconciler.emulator import jwt

    dataverse_token = jwt.mint(app.store.data["signing_key_pem"], tenant_id=env["tenant_id"],
                               object_id="00000000-0000-0000-0000-0000000000aa", audience=env["url"])
    monkeypatch.setenv("WRONG_AUDIENCE_TOKEN", dataverse_token)
    profile = "  wrongaudience:\n    method: access_token\n    access_token_env: WRONG_AUDIENCE_TOKEN\n"
    served.config.write_text(served.config.read_text().replace("\nauth:\n", "\nauth:\n" + profile, 1))
    _use_azurerm(served.config, "any-container", auth="wrongaudience", account_url=server.account_url)
    r = served.run("state", "list")
    assert r.code == 1
    assert "Azure Storage refused to list" in r.err and "auth profile 'wrongaudience'" in r.err
    assert dataverse_token not in r.err + r.out


def test_the_quickstart_state_directory_is_untouched_when_the_backend_is_azurerm(
    quickstart: Workspace, container: ContainerClient
) -> None:
    _use_azurerm(quickstart.config, container.container_name)
    assert quickstart.run("apply", "--auto-approve").code == 0
    assert not (quickstart.dir / "state").exists()
    shutil.rmtree(quickstart.dir / "state", ignore_errors=True)
    assert quickstart.run("plan", "--detailed-exitcode").code == 0


# --------------------------------------------------------------------------- a newer format, the request log


def test_state_written_by_a_newer_connref_is_left_as_it_is(quickstart: Workspace,
                                                          container: ContainerClient) -> None:
    # The reviewer's case: a blob rewritten as a newer connref (format 1.7, fields this one does not know) and a
    # change to apply. The old code applied, wrote "1.0" without the unknown fields, and the next apply
    # replaced the backup with that copy too.
    _use_azurerm(quickstart.config, container.container_name)
    assert quickstart.run("apply", "--auto-approve").code == 0
    blob = container.get_blob_client("connref/dev.json")
    doc = json.loads(blob.download_blob().readall())
    doc["format_version"] = "1.7"
    doc["drift_policy"] = {"mode": "strict"}
    for ref in doc["references"].values():
        ref["pinned_by"] = "change-4711"
    newer = json.dumps(doc, indent=2).encode()
    blob.upload_blob(newer, overwrite=True)
    backups = sorted(b.name for b in container.list_blobs())
    data = json.loads((quickstart.dir / "dev.json").read_text())
    row = next(r for r in data["connectionreferences"]
               if r["connectionreferencelogicalname"] == "contoso_sharedoffice365_d4c61")
    row["connectionreferencedisplayname"] = "Renamed in the portal"
    (quickstart.dir / "dev.json").write_text(json.dumps(data))

    for _ in range(2):
        r = quickstart.run("apply", "-e", "dev", "--auto-approve")
        assert r.code == 1
        assert "connref/dev.json was written by a newer connref (format_version '1.7'" in r.err
        assert "upgrade connref" in r.err and "Traceback" not in r.err and "unexpectedly" not in r.err
    assert blob.download_blob().readall() == newer
    assert sorted(b.name for b in container.list_blobs()) == backups
    listed = quickstart.run("state", "list")
    assert listed.code == 1
    assert "dev: WRITTEN BY A NEWER CONNREF: " in listed.out and "DAMAGED" not in listed.out
    assert "prod: serial 1" in listed.out


def test_verbose_logs_each_blob_request_without_secrets(quickstart: Workspace, azurite: AzuriteServer,
                                                        container: ContainerClient) -> None:
    _use_azurerm(quickstart.config, container.container_name)
    r = quickstart.run("-v", "state", "list")
    assert r.code == 0, r.err
    url = f"{azurite.account_url}/{container.container_name}?restype=...&comp=...&prefix=..."
    assert f"Azure Storage: GET {url} -> 200 (" in r.err
    key = azurite.connection_string.split("AccountKey=", 1)[1].split(";", 1)[0]
    assert key not in r.err and "SharedKey" not in r.err and "Authorization" not in r.err
