"""The azurerm state backend against Azurite: the contract every backend keeps (tests/unit/test_state_backend.py),
then what the blob service itself enforces (lease, ETag), the holder record in the metadata, lease renewal while
a run lasts, a killed holder's lease expiring, a conditional write that loses, damaged state and restore.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError
from azure.storage.blob import BlobLeaseClient, BlobServiceClient, ContainerClient
from azurite_support import ACCOUNT_KEY, AzuriteServer, running_azurite
from builders import applied_state
from e2e.e2e_support import QUICKSTART
from unit.test_state_backend import BackendContract

from reconciler.config.loader import load_config
from reconciler.errors import ConfigError, LockError, StateError, StateTooNewError
from reconciler.state import azurerm
from reconciler.state.azurerm import AzureBlobBackend, BlobLock, open_azure_backend
from reconciler.state.backend import StateBackend
from reconciler.state.model import serialize_state
from reconciler.state.select import backend_for

TIMEOUT = 120.0  # bound on every wait in this file
LEASE = 15  # the shortest lease the service grants

CONFIG = """\
version: 1
solution: ContosoFlows
references:
  contoso_SharePoint:
    connector: shared_sharepointonline
    display_name: SharePoint ContosoFlows
environments:
  dev:
    url: local:dev.json
state:
  backend: azurerm
  container: {container}
  key_prefix: connref/
  connection_string_env: TEST_AZURITE
  lease_duration: {lease}
"""

# Takes the lock of dev through the backend, says its id, then waits to be killed (as a pipeline agent
# that dies mid-apply): no finally block runs, the lease is left to expire.
HOLDER = """
import sys, threading
from reconciler.config.loader import load_config
from reconciler.state.select import backend_for
lock = backend_for(load_config(sys.argv[1])).lock("dev", "apply")
print(lock.id, flush=True)
threading.Event().wait()
"""


@pytest.fixture
def config_path(azurite: AzuriteServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TEST_AZURITE", azurite.connection_string)
    path = tmp_path / "connref.yaml"
    path.write_text(CONFIG.format(container=azurite.new_container(), lease=LEASE))
    shutil.copy(QUICKSTART / "dev.json", tmp_path / "dev.json")
    return path


@pytest.fixture
def backend(config_path: Path) -> Iterator[AzureBlobBackend]:
    b = backend_for(load_config(str(config_path)))
    assert isinstance(b, AzureBlobBackend)
    with b:
        yield b


@pytest.fixture
def raw(azurite: AzuriteServer, backend: AzureBlobBackend) -> Iterator[ContainerClient]:
    """The same container through the SDK directly: what another client sees."""
    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        yield service.get_container_client(backend.container.container_name)


class TestAzureBlobBackendContract(BackendContract):
    @pytest.fixture
    def backend(self, config_path: Path) -> Iterator[StateBackend]:
        with backend_for(load_config(str(config_path))) as b:
            yield b


def test_lock_is_a_lease_whose_id_is_the_lock_id_with_the_holder_in_metadata(
    backend: AzureBlobBackend, raw: ContainerClient
) -> None:
    blob = raw.get_blob_client("connref/dev.json")
    with backend.lock("dev", "apply") as lock:
        props = blob.get_blob_properties()
        assert (props.lease.state, props.lease.status, props.lease.duration) == ("leased", "locked", "fixed")
        record = json.loads(base64.b64decode(props.metadata["connref_lock"]))
        assert record["id"] == lock.id and record["operation"] == "apply" and record["pid"] == os.getpid()
        # The service enforces the lock: another client can neither lease nor write the blob.
        with pytest.raises(ResourceExistsError):
            BlobLeaseClient(blob).acquire(lease_duration=LEASE)
        with pytest.raises(HttpResponseError) as refused:
            blob.upload_blob(b"{}", overwrite=True)
        assert refused.value.status_code == 412
        # ... but the lease id is the lock id: holding it is what lets a write through.
        BlobLeaseClient(blob, lease_id=lock.id).renew()
    assert blob.get_blob_properties().lease.state == "available"


@pytest.mark.slow
def test_the_lease_is_renewed_for_as_long_as_the_run_holds_it(backend: AzureBlobBackend,
                                                              raw: ContainerClient) -> None:
    lock = backend.lock("dev", "apply")
    assert isinstance(lock, BlobLock)
    start = time.monotonic()
    try:
        # Four renewals, one every LEASE/3 seconds, outlast the lease itself.
        assert lock.wait_for_renewals(4, TIMEOUT), "the lease was not renewed four times"
        assert time.monotonic() - start > LEASE
        assert raw.get_blob_client("connref/dev.json").get_blob_properties().lease.state == "leased"
        with pytest.raises(LockError, match=f"connref state unlock dev {lock.id}"):
            backend.lock("dev", "apply")
        assert lock.lost is None
        token = backend.write(applied_state("dev", "contoso_A"), token=None, lock=lock)
        snap = backend.read("dev")
        assert snap is not None and snap.token == token
    finally:
        lock.release()
    with backend.lock("dev", "apply"):
        pass


@pytest.mark.slow
def test_a_killed_holders_lease_expires_and_a_waiting_run_takes_over(
    backend: AzureBlobBackend, config_path: Path
) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(config_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        lock_id = holder.stdout.readline().strip()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=TIMEOUT)
    killed_at = time.monotonic()
    info = backend.lock_info("dev")
    assert info is not None and info.id == lock_id and info.pid == holder.pid
    with pytest.raises(LockError) as e:
        backend.lock("dev", "apply")
    assert f"pid {holder.pid}" in str(e.value) and "expires by itself" in str(e.value)

    with backend.lock("dev", "apply", timeout=TIMEOUT) as lock:
        waited = time.monotonic() - killed_at
        assert lock.id != lock_id
        # Freed by expiry: not before the holder's last renewal ran out, not long after the lease duration.
        assert 0 < waited <= LEASE + 5, waited


def test_a_write_that_loses_the_etag_race_is_refused_by_the_service(
    backend: AzureBlobBackend, raw: ContainerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    s1 = applied_state("dev", "contoso_A")
    with backend.lock("dev", "apply") as lock:
        backend.write(s1, token=None, lock=lock)
    snap = backend.read("dev")
    assert snap is not None
    rival = serialize_state(applied_state("dev", "contoso_A", "contoso_R", prev=s1))
    real_backup = backend._backup_current

    def rival_slips_in(env: str, current: bytes) -> None:
        real_backup(env, current)
        # Between this run's read of the ETag and its upload, a writer holding the lease id replaces the blob.
        blob = raw.get_blob_client("connref/dev.json")
        blob.upload_blob(rival, overwrite=True, lease=BlobLeaseClient(blob, lease_id=lock.id))

    monkeypatch.setattr(backend, "_backup_current", rival_slips_in)
    with backend.lock("dev", "apply") as lock, pytest.raises(StateError, match="changed since this run read it"):
        backend.write(applied_state("dev", "contoso_A", "contoso_B", prev=s1), token=snap.token, lock=lock)
    assert raw.get_blob_client("connref/dev.json").download_blob().readall() == rival


def test_damaged_state_names_the_backup_and_restore_brings_it_back(
    backend: AzureBlobBackend, raw: ContainerClient
) -> None:
    s1 = applied_state("dev", "contoso_A")
    with backend.lock("dev", "apply") as lock:
        t1 = backend.write(s1, token=None, lock=lock)
        s2 = applied_state("dev", "contoso_A", "contoso_B", prev=s1)
        backend.write(s2, token=t1, lock=lock)
    raw.get_blob_client("connref/dev.json").upload_blob(b'{"format_version": "1.0", "environ', overwrite=True)

    with pytest.raises(StateError) as e:
        backend.read("dev")
    message = str(e.value)
    assert "connref/dev.json is not valid JSON" in message and "connref/dev.json.backup (serial 1" in message
    assert "connref state restore dev" in message
    with backend.lock("dev", "apply") as lock, pytest.raises(StateError, match="refusing to overwrite a damaged"):
        backend.write(applied_state("dev", "contoso_C", prev=s2), token=None, lock=lock)

    with backend.lock("dev", "state restore") as lock:
        restored = backend.restore("dev", lock=lock)
    assert restored.references == s1.references and restored.serial == 2
    assert backend.load("dev") == restored
    kept = [b.name for b in raw.list_blobs(name_starts_with="connref/dev.json.damaged-")]
    assert len(kept) == 1
    assert backend.environments() == ["dev"]  # backups and set-aside copies are not environments


def test_state_written_by_a_newer_connref_is_neither_read_nor_overwritten(
    backend: AzureBlobBackend, raw: ContainerClient
) -> None:
    # An older connref would write back only the fields it knows, labelled 1.0, and the next write would replace
    # the backup with that downgraded copy too.
    s1 = applied_state("dev", "contoso_A")
    with backend.lock("dev", "apply") as lock:
        t1 = backend.write(s1, token=None, lock=lock)
        s2 = applied_state("dev", "contoso_A", "contoso_B", prev=s1)
        backend.write(s2, token=t1, lock=lock)
    blob = raw.get_blob_client("connref/dev.json")
    doc = json.loads(blob.download_blob().readall())
    doc["format_version"] = "1.7"
    doc["drift_policy"] = {"mode": "strict"}
    for ref in doc["references"].values():
        ref["pinned_by"] = "change-4711"
    newer = json.dumps(doc, indent=2).encode()
    blob.upload_blob(newer, overwrite=True)
    backup_before = raw.get_blob_client("connref/dev.json.backup").download_blob().readall()

    with pytest.raises(StateTooNewError) as e:
        backend.read("dev")
    message = str(e.value)
    assert "connref/dev.json was written by a newer connref (format_version '1.7'" in message
    assert "upgrade connref" in message
    assert "damaged" not in message and "restore" not in message and "start a new state" not in message
    with backend.lock("dev", "apply") as lock, pytest.raises(StateTooNewError, match="written by a newer connref"):
        backend.write(applied_state("dev", "contoso_A", "contoso_C", prev=s2), token=None, lock=lock)
    with backend.lock("dev", "state restore") as lock, pytest.raises(StateTooNewError, match="not restoring over"):
        backend.restore("dev", lock=lock)
    assert blob.download_blob().readall() == newer
    assert raw.get_blob_client("connref/dev.json.backup").download_blob().readall() == backup_before
    assert sorted(b.name for b in raw.list_blobs()) == ["connref/dev.json", "connref/dev.json.backup"]


def test_listing_skips_the_empty_blob_a_lock_leaves_and_other_prefixes(
    backend: AzureBlobBackend, raw: ContainerClient
) -> None:
    with backend.lock("prod", "apply"):
        pass  # an apply that failed before writing leaves the empty blob it leased
    raw.get_blob_client("terraform.tfstate").upload_blob(b"{}")
    raw.get_blob_client("connref/nested/dev.json").upload_blob(b"{}")
    with backend.lock("dev", "apply") as lock:
        backend.write(applied_state("dev", "contoso_A"), token=None, lock=lock)
    assert backend.environments() == ["dev"]
    assert backend.read("prod") is None and backend.lock_info("prod") is None



def _token_config(tmp_path: Path) -> Path:
    """The test config with an auth profile (azure_cli: nothing is asked of it here) instead of Azurite's
    connection string."""
    text = CONFIG.format(container="connref-state", lease=LEASE).replace(
        "  connection_string_env: TEST_AZURITE\n",
        "  auth: storage\n  account_url: https://contosostate.blob.core.windows.net\n",
    ).replace("state:\n", "auth:\n  storage:\n    method: azure_cli\nstate:\n")
    path = tmp_path / "connref.yaml"
    path.write_text(text)
    shutil.copy(QUICKSTART / "dev.json", tmp_path / "dev.json")
    return path


def test_opening_a_token_backend_over_plain_http_is_a_config_error(tmp_path: Path) -> None:
    # The SDK refuses a token over plain http (even to loopback) with a ValueError; the loader reports it at the
    # line (tests/config_corpus/state_azurerm_http_with_auth.yaml), and a config made another way is stopped
    # here with the same reason instead of reaching the SDK.
    config = load_config(str(_token_config(tmp_path)))
    assert config.remote_state is not None
    settings = replace(config.remote_state, account_url="http://127.0.0.1:10000/devstoreaccount1")
    with pytest.raises(ConfigError, match=r"state\.account_url: .*sends tokens only over https.*connection_string_env"):
        open_azure_backend(config, settings)


def test_any_other_sdk_value_error_is_a_config_or_state_error(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # The SDK validates its settings with ValueError, when the client is built and when a request is made:
    # connref must say what is wrong rather than report a bug of its own.
    config = load_config(str(_token_config(tmp_path)))
    assert config.remote_state is not None

    def refuse(*args: object, **kwargs: object) -> None:
        raise ValueError("Token credential is only supported with HTTPS.")

    monkeypatch.setattr(azurerm, "BlobServiceClient", refuse)
    with pytest.raises(ConfigError, match=r"state\.account_url: .*refused .*only supported with HTTPS"):
        open_azure_backend(config, config.remote_state)

    with (pytest.raises(StateError, match=r"client refused to read https://x/dev\.json: .*only supported with HTTPS"),
          azurerm._azure_errors("read", "https://x/dev.json", "check the credentials")):
        raise ValueError("Token credential is only supported with HTTPS.")



# --------------------------------------------------------------------------- outages and the request log


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed): connections to it are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _backend_at(connection_string: str, container: str, monkeypatch: pytest.MonkeyPatch,
                tmp_path: Path) -> AzureBlobBackend:
    monkeypatch.setenv("TEST_AZURITE", connection_string)
    path = tmp_path / "connref.yaml"
    path.write_text(CONFIG.format(container=container, lease=LEASE))
    shutil.copy(QUICKSTART / "dev.json", tmp_path / "dev.json")
    b = backend_for(load_config(str(path)))
    assert isinstance(b, AzureBlobBackend)
    return b


def _no_secret(text: str) -> None:
    for secret in (ACCOUNT_KEY, ACCOUNT_KEY[:20], "SharedKey", "Authorization", "sig="):
        assert secret not in text


def test_an_unreachable_account_fails_within_seconds_and_says_each_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The SDK's own policy waited 15 s and more between attempts: `state list` sat silent for 79 s.
    port = _closed_port()
    conn = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")
    caplog.set_level(logging.DEBUG, logger="reconciler")
    with _backend_at(conn, "connref-state", monkeypatch, tmp_path) as b:
        t0 = time.monotonic()
        with pytest.raises(StateError, match="cannot reach Azure Storage to list") as e:
            b.environments()
        elapsed = time.monotonic() - t0
        with pytest.raises(StateError, match="cannot reach Azure Storage to read"):
            b.read("dev")
    assert elapsed < 10, f"{elapsed:.1f} s"
    retries = [r for r in caplog.records if r.name == "reconciler.state.azurerm" and r.levelno == logging.WARNING]
    listing = [r.getMessage() for r in retries if "comp=" in r.getMessage()]
    assert [m.split("; ")[-1].split(" in ")[0] for m in listing] == ["retry 1 of 3", "retry 2 of 3", "retry 3 of 3"]
    assert all(f"GET http://127.0.0.1:{port}/devstoreaccount1/connref-state?" in m for m in listing)
    assert all("ServiceRequestError" in m for m in listing)
    reading = [r for r in retries if "connref/dev.json" in r.getMessage()]
    assert len(reading) == 3 and all(getattr(r, "connref_env", None) == "dev" for r in reading)
    assert all(getattr(r, "connref_state", None) == "wait" for r in retries)
    _no_secret(caplog.text + str(e.value))


def test_with_v_each_blob_request_is_logged_without_secrets(
    backend: AzureBlobBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="reconciler")
    with backend.lock("dev", "apply") as lock:
        backend.write(applied_state("dev", "contoso_A"), token=None, lock=lock)
    backend.environments()
    lines = [r.getMessage() for r in caplog.records if r.name == "reconciler.state.http"]
    url = backend.location("dev")
    assert f"Azure Storage: PUT {url} -> 201 (" in "\n".join(lines)  # the empty blob the lock leases
    assert any(line.startswith(f"Azure Storage: PUT {url}?comp=... -> 20") for line in lines)  # lease, metadata
    assert any(line.startswith(f"Azure Storage: GET {url} -> 200 (") and line.endswith(" ms)") for line in lines)
    listing = [line for line in lines if "restype=...&comp=...&prefix=..." in line]
    assert listing and "connref/" not in listing[0].split("?", 1)[1]  # query values are never shown
    dev = [r for r in caplog.records if r.name == "reconciler.state.http" and url in r.getMessage()]
    assert all(getattr(r, "connref_env", None) == "dev" and getattr(r, "connref_state", None) == "request"
               for r in dev)
    _no_secret(caplog.text)


def test_an_outage_while_holding_the_lock_is_said_within_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Azurite killed mid-apply left the run silent for minutes, in retries longer than the lease they renewed.
    caplog.set_level(logging.DEBUG, logger="reconciler")
    with running_azurite(tmp_path / "azurite") as server:
        b = _backend_at(server.connection_string, server.new_container(), monkeypatch, tmp_path)
        with b:
            lock = b.lock("dev", "apply")
            assert isinstance(lock, BlobLock)
            try:
                server.stop()
                deadline = time.monotonic() + LEASE
                while time.monotonic() < deadline and "renewing the lease" not in caplog.text:
                    time.sleep(0.2)
                t0 = time.monotonic()
                # The write reads the blob first (its compare-and-swap): that read is what finds the outage.
                with pytest.raises(StateError, match=r"cannot reach Azure Storage to read .*connref/dev\.json"):
                    b.write(applied_state("dev", "contoso_A"), token=None, lock=lock)
                write_took = time.monotonic() - t0
            finally:
                t0 = time.monotonic()
                lock.release()
                release_took = time.monotonic() - t0
    renewals = [r for r in caplog.records if "renewing the lease" in r.getMessage()]
    assert renewals, "a failed renewal is said"
    assert renewals[0].levelno == logging.WARNING and getattr(renewals[0], "connref_env", None) == "dev"
    assert f"lock id {lock.id}" in renewals[0].getMessage() and "trying again in 1 s" in renewals[0].getMessage()
    assert write_took < 10, f"{write_took:.1f} s"
    assert release_took < 10, f"{release_took:.1f} s"
    assert any("retry 1 of 3" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    _no_secret(caplog.text)
