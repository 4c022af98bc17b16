"""Shared fixtures: a populated emulator environment served over loopback, and clients for it, or the
same interface pointed at a real environment ("remote mode", docs/emulator.md, "Running the contract
tests against a real environment").

* ``emulator_data``: a fresh data dict (``factory.sample_environment``; names and ids in ``factory.Sample``).
* ``emulator``: an ``EmulatorHandle`` over that data on a loopback port; ``.url``, ``.app``, ``.store``,
  ``.token(object_id=..., app_id=..., audience=None)`` and ``.client(...)``. In remote mode a
  ``RemoteHandle`` with ``.url``, ``.api``, ``.token()`` and ``.client()`` for the application only.
* ``target``: the ids the contract tests need (a ``Target``): ``factory.Sample``'s values on the
  emulator, the fixture file's in remote mode.
* ``dv``: an ``httpx.Client`` for ``{url}/api/data/v9.2/`` authenticated as the pipeline application.
  In remote mode every connection reference created through it (POST, or a ``$batch`` part) is
  deleted when the test ends, so a run leaves the environment as it was; ``created.add(id)`` records
  rows made otherwise (an upsert).

Remote mode is on when ``CONNREF_REMOTE_URL``, ``CONNREF_REMOTE_TOKEN`` and ``CONNREF_REMOTE_FIXTURE``
are all set. Then tests marked ``emulator_only`` are skipped, and so are tests outside tests/emulator/
that use the emulator fixtures (they read ``factory.Sample`` directly), except the files in
``PORTED_FILES``, which take their ids from ``target`` like the contract tests.

The RSA signing key is generated once per session (key generation is the slow part); everything else
is rebuilt per test, so tests never see each other's writes.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from azurite_support import AzuriteServer, running_azurite
from hypothesis import settings

from reconciler.emulator import jwt
from reconciler.emulator.app import EmulatorApp
from reconciler.emulator.factory import Sample, sample_environment
from reconciler.emulator.server import RunningServer, serve
from reconciler.emulator.store import EnvironmentStore
from reconciler.emulator.tls import TlsFiles, make_test_ca

API = "/api/data/v9.2/"
ODATA_HEADERS = {"Accept": "application/json", "OData-Version": "4.0", "OData-MaxVersion": "4.0"}

REMOTE_URL_VAR = "CONNREF_REMOTE_URL"
REMOTE_TOKEN_VAR = "CONNREF_REMOTE_TOKEN"
REMOTE_FIXTURE_VAR = "CONNREF_REMOTE_FIXTURE"
REMOTE_FIXTURE_FORMAT = "connref-remote-fixture/1"
_EMULATOR_FIXTURES = frozenset({"emulator", "dv", "emulator_data", "target"})
# Test files outside tests/emulator/ ported like the contract tests (ids from `target`, rows they create
# cleaned up, emulator-only controls marked): remote mode runs them instead of skipping them wholesale.
# tests/emulator/test_remote_mode.py runs them in its self-check.
PORTED_FILES = frozenset({"test_client_emulator.py", "test_live.py", "test_live_flow_solutions.py"})


# Hypothesis profiles. "ci" (the default, what `make test` runs): the same examples on every run
# (derandomized, no example database), no per-example deadline on a shared machine. "long"
# (HYPOTHESIS_PROFILE=long): twenty times the examples, random, failures replayed from .hypothesis/.
# "fast" (HYPOTHESIS_PROFILE=fast, what `make test-fast` runs): "ci" with 15 examples per test.
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("long", max_examples=2000, deadline=None, print_blob=True)
settings.register_profile("fast", parent=settings.get_profile("ci"), max_examples=15)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def remote_mode() -> bool:
    """True when the environment variables name a real environment (all three must be set)."""
    return all(os.environ.get(v) for v in (REMOTE_URL_VAR, REMOTE_TOKEN_VAR, REMOTE_FIXTURE_VAR))


# --------------------------------------------------------------------------- the ids tests need


@dataclass(frozen=True)
class Target:
    """The ids and names the contract tests rely on. Attribute names match ``factory.Sample`` so a test
    reads the same against either; only what the fixture file can name is here (no reference or flow
    ids: tests create the references they need)."""

    TENANT_ID: str
    APP_CLIENT_ID: str
    APP_OBJECT_ID: str
    APP_USER_ID: str
    SVC_UPN: str
    SVC_OBJECT_ID: str
    SVC_USER_ID: str
    MAKER_UPN: str
    MAKER_OBJECT_ID: str
    MAKER_USER_ID: str
    DISABLED_OBJECT_ID: str | None
    SOLUTION: str
    PUBLISHER_PREFIX: str
    COMPONENT_TYPE: int
    # a connection the application may bind (owned by or shared with it) ...
    APP_CONNECTOR: str
    APP_CONNECTION: str
    # ... and one it may not (the maker's personal connection)
    MAKER_CONNECTOR: str
    MAKER_CONNECTION: str
    is_sample: bool = False

    @classmethod
    def sample(cls) -> Target:
        s = Sample
        return cls(
            TENANT_ID=s.TENANT_ID,
            APP_CLIENT_ID=s.APP_CLIENT_ID,
            APP_OBJECT_ID=s.APP_OBJECT_ID,
            APP_USER_ID=s.APP_USER_ID,
            SVC_UPN=s.SVC_UPN,
            SVC_OBJECT_ID=s.SVC_OBJECT_ID,
            SVC_USER_ID=s.SVC_USER_ID,
            MAKER_UPN=s.MAKER_UPN,
            MAKER_OBJECT_ID=s.MAKER_OBJECT_ID,
            MAKER_USER_ID=s.MAKER_USER_ID,
            DISABLED_OBJECT_ID=s.DISABLED_OBJECT_ID,
            SOLUTION=s.SOLUTION,
            PUBLISHER_PREFIX="contoso",
            COMPONENT_TYPE=s.COMPONENT_TYPE,
            APP_CONNECTOR=s.DATAVERSE,
            APP_CONNECTION=s.CONN_DV_SVC,
            MAKER_CONNECTOR=s.SP,
            MAKER_CONNECTION=s.CONN_SP_MAKER,
            is_sample=True,
        )

    @classmethod
    def from_fixture_file(cls, path: str) -> Target:
        """Read the fixture file (format in docs/emulator.md); a missing key is an error naming it."""
        doc = json.loads(Path(path).read_text(encoding="utf-8"))

        def get(*keys: str, optional: bool = False) -> Any:
            node: Any = doc
            for k in keys:
                if not isinstance(node, dict) or k not in node:
                    if optional:
                        return None
                    raise ValueError(f"{path}: missing {'.'.join(keys)}")
                node = node[k]
            return node

        if doc.get("format") != REMOTE_FIXTURE_FORMAT:
            raise ValueError(f"{path}: format must be {REMOTE_FIXTURE_FORMAT!r}")
        return cls(
            TENANT_ID=get("tenant_id"),
            APP_CLIENT_ID=get("application", "client_id"),
            APP_OBJECT_ID=get("application", "object_id"),
            APP_USER_ID=get("application", "systemuserid"),
            SVC_UPN=get("service_account", "upn"),
            SVC_OBJECT_ID=get("service_account", "object_id"),
            SVC_USER_ID=get("service_account", "systemuserid"),
            MAKER_UPN=get("maker", "upn"),
            MAKER_OBJECT_ID=get("maker", "object_id"),
            MAKER_USER_ID=get("maker", "systemuserid"),
            DISABLED_OBJECT_ID=get("disabled_user", "object_id", optional=True),
            SOLUTION=get("solution", "uniquename"),
            PUBLISHER_PREFIX=get("solution", "publisher_prefix"),
            COMPONENT_TYPE=int(get("connectionreference_componenttype")),
            APP_CONNECTOR=get("connections", "usable_by_application", "connector"),
            APP_CONNECTION=get("connections", "usable_by_application", "name"),
            MAKER_CONNECTOR=get("connections", "maker_only", "connector"),
            MAKER_CONNECTION=get("connections", "maker_only", "name"),
        )


def fixture_document(t: Target) -> dict[str, Any]:
    """The fixture-file JSON describing ``t`` (the inverse of ``Target.from_fixture_file``)."""
    doc: dict[str, Any] = {
        "format": REMOTE_FIXTURE_FORMAT,
        "tenant_id": t.TENANT_ID,
        "application": {"client_id": t.APP_CLIENT_ID, "object_id": t.APP_OBJECT_ID, "systemuserid": t.APP_USER_ID},
        "service_account": {"upn": t.SVC_UPN, "object_id": t.SVC_OBJECT_ID, "systemuserid": t.SVC_USER_ID},
        "maker": {"upn": t.MAKER_UPN, "object_id": t.MAKER_OBJECT_ID, "systemuserid": t.MAKER_USER_ID},
        "solution": {"uniquename": t.SOLUTION, "publisher_prefix": t.PUBLISHER_PREFIX},
        "connectionreference_componenttype": t.COMPONENT_TYPE,
        "connections": {
            "usable_by_application": {"connector": t.APP_CONNECTOR, "name": t.APP_CONNECTION},
            "maker_only": {"connector": t.MAKER_CONNECTOR, "name": t.MAKER_CONNECTION},
        },
    }
    if t.DISABLED_OBJECT_ID:
        doc["disabled_user"] = {"object_id": t.DISABLED_OBJECT_ID}
    return doc


@pytest.fixture(scope="session")
def target() -> Target:
    if remote_mode():
        return Target.from_fixture_file(os.environ[REMOTE_FIXTURE_VAR])
    return Target.sample()


# --------------------------------------------------------------------------- remote mode: what is skipped


def _emulator_only_reason(item: pytest.Item) -> str:
    # The closest mark that gives a reason (a bare function-level mark under a module-level mark with
    # a reason keeps the module's).
    for mark in item.iter_markers("emulator_only"):
        why = mark.kwargs.get("reason") or (mark.args[0] if mark.args else "")
        if why:
            return f"emulator_only: {why}"
    return "emulator_only: needs emulator-only controls"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not remote_mode():
        return  # the default run is untouched
    contract_dir = Path(__file__).parent / "emulator"
    ported = {Path(__file__).parent / name for name in PORTED_FILES}
    for item in items:
        path = Path(str(item.path))
        if item.get_closest_marker("emulator_only") is not None:
            item.add_marker(pytest.mark.skip(reason="remote mode: " + _emulator_only_reason(item)))
        elif contract_dir not in path.parents and path not in ported and _EMULATOR_FIXTURES & set(
            getattr(item, "fixturenames", ())
        ):
            item.add_marker(
                pytest.mark.skip(
                    reason="remote mode: uses the emulator fixtures with factory.Sample's ids; only "
                    "tests/emulator/ and PORTED_FILES take their ids from the `target` fixture"
                )
            )


def pytest_report_header(config: pytest.Config) -> str | None:
    if remote_mode():
        # The URL only: the token is never printed.
        return f"connref contract tests in remote mode against {os.environ[REMOTE_URL_VAR]}"
    return None


# --------------------------------------------------------------------------- handles


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
    remote = False

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


@dataclass
class RemoteHandle:
    """The handle's interface over a real environment. It holds one token, the application's for the
    Dataverse URL: asking for any other identity, audience or lifetime is a test that should be marked
    ``emulator_only``, and fails loudly so the mark gets added."""

    url: str
    bearer: str = field(repr=False)
    remote = True

    @property
    def api(self) -> str:
        return self.url + API

    def token(
        self,
        object_id: str | None = None,
        app_id: str | None = None,
        audience: str | None = None,
        **options: Any,
    ) -> str:
        if object_id is not None or app_id is not None or audience is not None or options:
            raise RuntimeError(
                "remote mode holds only the application's Dataverse token; a test that needs another "
                "identity, audience or lifetime must be marked emulator_only"
            )
        return self.bearer

    def client(self, *, headers: dict[str, str] | None = None, **token_options: Any) -> httpx.Client:
        h = dict(ODATA_HEADERS)
        h["Authorization"] = "Bearer " + self.token(**token_options)
        h.update(headers or {})
        return httpx.Client(base_url=self.api, headers=h, timeout=30)

    def __getattr__(self, name: str) -> Any:
        # .app, .store, .server exist only on the emulator.
        raise AttributeError(f"remote mode has no {name!r}: a test that uses it must be marked emulator_only")


@pytest.fixture
def emulator(request: pytest.FixtureRequest) -> Iterator[EmulatorHandle | RemoteHandle]:
    if remote_mode():
        yield RemoteHandle(url=os.environ[REMOTE_URL_VAR].rstrip("/"), bearer=os.environ[REMOTE_TOKEN_VAR])
        return
    store = EnvironmentStore.from_dict(request.getfixturevalue("emulator_data"))
    app = EmulatorApp(store)
    server = serve(app)
    try:
        yield EmulatorHandle(url=server.url, app=app, store=store, server=server)
    finally:
        server.shutdown()


# --------------------------------------------------------------------------- cleanup of created rows

_CREATED_REF = re.compile(r"connectionreferences\(([0-9a-fA-F-]{36})\)")


class Created:
    """Ids of connection references a test created; deleted when the test ends."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def add(self, rid: str) -> None:
        if rid.lower() not in (i.lower() for i in self.ids):
            self.ids.append(rid)

    def record(self, response: httpx.Response) -> None:
        """httpx response hook: remember references created by a POST or inside a ``$batch``."""
        request = response.request
        if request.method != "POST":
            return
        path = request.url.path
        if path.endswith("/connectionreferences") and response.status_code < 300:
            entity = response.headers.get("OData-EntityId", "")
            m = _CREATED_REF.search(entity)
            if m is None and response.status_code == 201:
                response.read()
                rid = response.json().get("connectionreferenceid")
                if rid:
                    self.add(str(rid))
            elif m is not None:
                self.add(m.group(1))
        elif path.endswith("/$batch"):
            # Whatever the batch's overall status: without continue-on-error, parts before a failing
            # one are committed (a failed change set is not, and its parts carry no entity id).
            response.read()
            for line in response.text.splitlines():
                if line.lower().startswith(("odata-entityid:", "location:")):
                    m = _CREATED_REF.search(line)
                    if m is not None:
                        self.add(m.group(1))

    def delete_all(self, client: httpx.Client) -> None:
        failures = []
        for rid in reversed(self.ids):
            r = client.delete(f"connectionreferences({rid})")
            if r.status_code not in (204, 404):
                failures.append(f"{rid}: {r.status_code}")
        assert not failures, f"could not delete the connection references this test created: {failures}"


@pytest.fixture
def created() -> Created:
    return Created()


@pytest.fixture
def dv(emulator: EmulatorHandle | RemoteHandle, created: Created) -> Iterator[httpx.Client]:
    with emulator.client() as client:
        if not emulator.remote:
            # Each emulator test has its own environment: nothing to clean up, and faults a test
            # injected must not meet teardown requests. The remote self-check exercises the cleanup.
            yield client
            return
        client.event_hooks["response"].append(created.record)
        yield client
        client.event_hooks["response"].clear()
        created.delete_all(client)


# --------------------------------------------------------------------------- Azurite (azurerm state backend)


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteServer]:
    """Azurite's blob service over http on a free loopback port, for the whole session."""
    with running_azurite(tmp_path_factory.mktemp("azurite")) as server:
        yield server


@pytest.fixture(scope="session")
def azurite_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AzuriteServer, TlsFiles]]:
    """Azurite over https with bearer-token checks (``--oauth basic``), and the test CA it presents."""
    tls = make_test_ca(str(tmp_path_factory.mktemp("azurite-tls")))
    with running_azurite(tmp_path_factory.mktemp("azurite-oauth"), tls=tls) as server:
        yield server, tls
