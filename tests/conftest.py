"""Shared fixtures: a populated emulator environment served over loopback, and clients for it.

* ``emulator_data``: a fresh data dict (``factory.sample_environment``; names and ids in ``factory.Sample``).
* ``emulator``: an ``EmulatorApp`` over that data on a loopback port; ``.url``, ``.app``, ``.store``,
  ``.token(object_id=..., app_id=..., audience=None)`` and ``.client(...)``.
* ``dv``: an ``httpx.Client`` for ``{url}/api/data/v9.2/`` authenticated as the pipeline application.

The RSA signing key is generated once per session (key generation is the slow part); everything else
is rebuilt per test, so tests never see each other's writes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from reconciler.emulator import jwt
from reconciler.emulator.app import EmulatorApp
from reconciler.emulator.factory import Sample, sample_environment
from reconciler.emulator.server import RunningServer, serve
from reconciler.emulator.store import EnvironmentStore

API = "/api/data/v9.2/"
ODATA_HEADERS = {"Accept": "application/json", "OData-Version": "4.0", "OData-MaxVersion": "4.0"}


@pytest.fixture(scope="session")
def signing_key_pem() -> str:
    return jwt.new_signing_key_pem()


@pytest.fixture
def emulator_data(signing_key_pem: str) -> dict[str, Any]:
    return sample_environment(signing_key_pem=signing_key_pem)


@dataclass
class EmulatorHandle:
    url: str
    app: EmulatorApp
    store: EnvironmentStore
    server: RunningServer

    @property
    def api(self) -> str:
        return self.url + API

    def token(
        self,
        object_id: str | None = None,
        app_id: str | None = None,
        audience: str | None = None,
        *,
        upn: str | None = None,
        lifetime: int = 3600,
    ) -> str:
        """A valid bearer for this environment. Defaults to the pipeline application."""
        if object_id is None and app_id is None and upn is None:
            object_id, app_id = Sample.APP_OBJECT_ID, Sample.APP_CLIENT_ID
        return jwt.mint(
            self.store.data["signing_key_pem"],
            tenant_id=str(self.store.environment.get("tenant_id") or Sample.TENANT_ID),
            object_id=object_id or "",
            audience=audience or str(self.store.environment["url"]),
            app_id=app_id,
            upn=upn,
            lifetime=lifetime,
        )

    def client(
        self,
        object_id: str | None = None,
        app_id: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **token_options: Any,
    ) -> httpx.Client:
        """An httpx client for the Dataverse API as the given identity (default: the pipeline app)."""
        h = dict(ODATA_HEADERS)
        h["Authorization"] = "Bearer " + self.token(object_id, app_id, **token_options)
        h.update(headers or {})
        return httpx.Client(base_url=self.api, headers=h, timeout=10)


@pytest.fixture
def emulator(emulator_data: dict[str, Any]) -> Iterator[EmulatorHandle]:
    store = EnvironmentStore.from_dict(emulator_data)
    app = EmulatorApp(store)
    server = serve(app)
    try:
        yield EmulatorHandle(url=server.url, app=app, store=store, server=server)
    finally:
        server.shutdown()


@pytest.fixture
def dv(emulator: EmulatorHandle) -> Iterator[httpx.Client]:
    with emulator.client() as client:
        yield client
