"""Fixtures for end-to-end tests: the quickstart in a scratch folder, run through the real CLI, either
in-process (``local:`` environments) or served over loopback https with a test CA (so MSAL's
client-secret flow runs for real against the emulator's token endpoint). Helpers: e2e_support.py.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.e2e_support import QUICKSTART, Served, Workspace
from reconciler.emulator.app import EmulatorApp
from reconciler.emulator.store import EnvironmentStore
from reconciler.emulator.tls import TlsServer, make_test_ca, serve_https


@pytest.fixture
def quickstart(tmp_path: Path) -> Workspace:
    target = tmp_path / "qs"
    shutil.copytree(QUICKSTART, target,
                    ignore=shutil.ignore_patterns("demo.py", "make_data.py", "__pycache__"))
    return Workspace(target, target / "connref.yaml")


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    tls = make_test_ca(str(tmp_path / "tls"))
    monkeypatch.setenv("SSL_CERT_FILE", tls.ca_pem)
    work = tmp_path / "served"
    work.mkdir()
    shutil.copy(QUICKSTART / ".demo-secret", work / ".demo-secret")
    text = (QUICKSTART / "connref.yaml").read_text()
    apps: dict[str, EmulatorApp] = {}
    servers: dict[str, TlsServer] = {}
    try:
        for env in ("dev", "test", "prod"):
            store = EnvironmentStore.from_file(str(QUICKSTART / f"{env}.json"))
            store.path = None  # served from memory: the example file stays untouched
            if apps:  # one tenant signs every token: every environment trusts the same key
                store.data["signing_key_pem"] = apps["dev"].store.data["signing_key_pem"]
            apps[env] = EmulatorApp(store)
            servers[env] = serve_https(apps[env], tls)
            base = servers[env].base_url
            env_id = store.data["environment"]["environment_id"]
            text = text.replace(
                f"    url: local:{env}.json\n",
                f"    url: {base}\n    connections_url: {base}\n    environment_id: {env_id}\n",
            )
        # One tenant: MSAL asks dev's token endpoint for every environment's tokens.
        authority = f"    authority_host: {servers['dev'].base_url}"
        text = text.replace("    client_secret_file: .demo-secret",
                            "    client_secret_file: .demo-secret\n" + authority)
        config = work / "connref.yaml"
        config.write_text(text)
        yield Served(work, config, apps, servers)
    finally:
        for s in servers.values():
            s.close()


@pytest.fixture(autouse=True)
def _no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    for name in list(os.environ):
        if name.startswith("CONNREF_"):
            monkeypatch.delenv(name)
