"""A loopback session a connref config can drive: ``connref emulator --tls``.

connref signs in through MSAL, and MSAL accepts only an https authority (msal/authority.py
``canonicalize``), so a config cannot sign in to the emulator over plain http. With ``--tls`` the emulator
makes a throwaway certificate authority and a certificate for 127.0.0.1, localhost and ::1
(``tls.make_test_ca``) in a session folder, serves https with it, registers a fresh client secret for each
environment's application for this process only (``EmulatorApp.session_secret_hashes``: kept in memory,
never written into the data file, even with ``--persist``), writes each secret to a file in the folder, and
prints the environments and auth profiles to put in connref.yaml and the ``SSL_CERT_FILE`` to export. The
folder is removed when the emulator stops. docs/emulator.md, "A loopback session", shows it in use.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .app import EmulatorApp
from .tls import TlsFiles, make_test_ca

#: What is printed when the emulator serves plain http: no snippet can sign in to it.
HTTP_NOTE = (
    "# connref signs in through MSAL, which accepts only an https authority: start the emulator with --tls\n"
    "# for a config snippet that signs in (docs/emulator.md, \"A loopback session\")."
)


@dataclass
class Session:
    """The session folder, and the throwaway CA when the emulator made its own certificate."""

    directory: str
    tls: TlsFiles | None = None

    @classmethod
    def start(cls, *, make_ca: bool) -> Session:
        directory = tempfile.mkdtemp(prefix="connref-emulator-")
        return cls(directory, make_test_ca(os.path.join(directory, "tls")) if make_ca else None)

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name) or "environment"


def register_secret(app: EmulatorApp, session: Session, name: str) -> tuple[str, str] | None:
    """A fresh secret for the data's first application, accepted by this process only: (client id, the file
    that holds it). None when the data has no application."""
    apps = app.store.data.get("applications") or []
    if not apps or not apps[0].get("client_id"):
        return None
    client_id = str(apps[0]["client_id"])
    secret = secrets.token_urlsafe(32)
    app.session_secret_hashes.setdefault(client_id, []).append(hashlib.sha256(secret.encode("utf-8")).hexdigest())
    path = os.path.join(session.directory, f"{_safe_name(name)}.secret")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(secret + "\n")
    return client_id, path


def snippet(servers: Sequence[Any], session: Session) -> str:
    """The environments and auth profiles of a connref config for ``servers`` (RunningServer objects served
    over https), and what to export in the shell that runs connref."""
    env_lines = ["environments:"]
    auth_lines = ["auth:"]
    used: set[str] = set()
    for server in servers:
        env: dict[str, Any] = server.app.store.environment
        name = _safe_name(str(env.get("name") or "environment"))
        while name in used:
            name += "-2"
        used.add(name)
        env_lines += [f"  {name}:", f"    url: {server.url}", f"    connections_url: {server.url}"]
        if env.get("environment_id"):
            env_lines.append(f"    environment_id: {env['environment_id']}")
        registered = register_secret(server.app, session, name)
        if registered is None:
            env_lines.append("    # the data has no application to sign in as: add one (docs/emulator-data.md)")
            continue
        client_id, secret_file = registered
        env_lines.append(f"    auth: emulator-{name}")
        auth_lines += [
            f"  emulator-{name}:",
            "    method: client_secret",
            f"    tenant_id: {env.get('tenant_id') or '00000000-0000-0000-0000-000000000000'}",
            f"    client_id: {client_id}",
            f"    client_secret_file: {secret_file}",
            f"    authority_host: {server.url}",
        ]
    lines = [
        "",
        "# A connref config for this session: use these environments and auth profiles in connref.yaml (keep",
        "# its version, solution, references and each environment's bindings and service_account).",
        *env_lines,
        *(auth_lines if len(auth_lines) > 1 else []),
    ]
    if session.tls is not None:
        lines += [
            "# In the shell that runs connref, trust the emulator's throwaway certificate authority:",
            f"export SSL_CERT_FILE={session.tls.ca_pem}",
        ]
    else:
        lines.append("# In the shell that runs connref, trust the authority that signed --tls-cert (SSL_CERT_FILE).")
    lines.append(f"# Serving until interrupted (Ctrl-C); {session.directory} is removed then.")
    return "\n".join(lines)
