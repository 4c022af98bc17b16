"""Azurite, Microsoft's Azure Storage emulator, for the azurerm state backend tests (no tests here).

``make test`` installs it from package.json (``npm ci``, into node_modules/); ``start_azurite`` runs its blob
service on a free loopback port (port 0: the service picks one and says which), in memory, and
``AzuriteServer.stop`` ends it. With ``tls`` it serves https and checks bearer tokens (``--oauth basic``:
audience, issuer and lifetime, not the signature), so the token path of an auth profile is exercised too.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from azure.storage.blob import BlobServiceClient

from reconciler.emulator.tls import TlsFiles

ROOT = Path(__file__).resolve().parents[1]
AZURITE_BLOB = ROOT / "node_modules" / ".bin" / "azurite-blob"
# Azurite's documented well-known development account (the same in every installation; not a secret).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
STARTUP_TIMEOUT = 60.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h
_LISTENING = re.compile(r"successfully listens on (https?://[\w.:\[\]-]+)")


@dataclass
class AzuriteServer:
    """A running Azurite blob service."""

    process: subprocess.Popen[str]
    origin: str  # http(s)://127.0.0.1:PORT
    output: list[str] = field(default_factory=list)

    @property
    def account_url(self) -> str:
        return f"{self.origin}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        scheme = self.origin.split(":", 1)[0]
        return (f"DefaultEndpointsProtocol={scheme};AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
                f"BlobEndpoint={self.account_url};")

    def new_container(self) -> str:
        """A fresh container (tests never see each other's blobs); its name."""
        name = f"state-{uuid.uuid4().hex[:12]}"
        with BlobServiceClient.from_connection_string(self.connection_string) as service:
            service.create_container(name)
        return name

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


def _die_with_parent() -> None:
    """In the child, before Azurite starts: on Linux, be sent SIGTERM when the test process dies, so a run
    killed outright (a CI timeout) leaves no emulator behind."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _missing() -> str:
    return (f"Azurite is not installed ({AZURITE_BLOB} is missing): run `make test`, or `npm ci` in {ROOT} "
            "(package.json pins it; node 20 and npm are needed).")


def start_azurite(workdir: Path, *, tls: TlsFiles | None = None) -> AzuriteServer:
    """Start Azurite's blob service on a free loopback port and wait until it listens."""
    if not AZURITE_BLOB.exists():
        raise RuntimeError(_missing())
    workdir.mkdir(parents=True, exist_ok=True)
    # In memory (nothing outlives the process); run in ``workdir`` so anything it writes lands there.
    argv = [str(AZURITE_BLOB), "--blobHost", "127.0.0.1", "--blobPort", "0", "--inMemoryPersistence",
            "--disableTelemetry", "--skipApiVersionCheck", "--silent"]
    if tls is not None:
        argv += ["--cert", tls.cert_pem, "--key", tls.key_pem, "--oauth", "basic"]
    proc = subprocess.Popen(argv, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "AZURITE_ACCOUNTS": ""}, preexec_fn=_die_with_parent)
    assert proc.stdout is not None
    found: list[str] = []
    lines: list[str] = []
    ready = threading.Event()

    def pump() -> None:  # reads the output for the whole run, so the pipe never fills up
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
            m = _LISTENING.search(line)
            if m and not found:
                found.append(m.group(1))
                ready.set()
        ready.set()

    threading.Thread(target=pump, name="azurite-output", daemon=True).start()
    if not ready.wait(STARTUP_TIMEOUT) or not found:
        proc.kill()
        proc.wait(timeout=15)
        raise RuntimeError("Azurite did not start:\n" + "\n".join(lines[-30:]))
    return AzuriteServer(proc, found[0], lines)


@contextmanager
def running_azurite(workdir: Path, *, tls: TlsFiles | None = None) -> Iterator[AzuriteServer]:
    server = start_azurite(workdir, tls=tls)
    try:
        yield server
    finally:
        server.stop()
