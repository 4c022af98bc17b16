"""Wires one environment of the config to its HTTP clients: ``open_environment(config, name)``.

For a real environment (https URL, or a loopback emulator) the clients share one ordinary
``httpx.Client``. For ``local:PATH`` the emulator app runs in-process behind
``InProcessTransport``: Dataverse, the connections API and the token endpoint (MSAL) all go to it,
and ``apply`` writes back into the file (``persist=True``). Either way the same client code runs.
"""

from __future__ import annotations

import os
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from reconciler.api.auth import TokenProvider, provider_key
from reconciler.api.client import (
    GRAPH_BASE,
    MAX_PAGE_SIZE,
    POWERAPPS_BASE,
    POWERAPPS_SCOPE,
    POWERPLATFORM_SCOPE,
    ConnectionsClient,
    DataverseClient,
    GraphClient,
    QueryArgs,
    RetryPolicy,
    WhoAmI,
    power_platform_api_base,
    request_log_hooks,
    scope_for,
)
from reconciler.api.odata_filter import Filter
from reconciler.domain.model import AuthProfile, Config, EnvironmentConfig
from reconciler.errors import AuthError, ConfigError

#: Timeouts for real services: Dataverse may take tens of seconds on a large $batch.
DEFAULT_TIMEOUT = httpx.Timeout(120.0, connect=15.0)

#: What the request log calls the token requests of ``TokenProviders`` (shared by the run's environments).
TOKEN_LOG_LABEL = "(auth)"  # not an environment name (those start with a letter or digit)

_TLS_LOCK = threading.Lock()
_TLS_CONTEXTS: dict[tuple[str, str], ssl.SSLContext] = {}


def tls_context() -> ssl.SSLContext:
    """The TLS context every client of the process shares: loading the trusted certificates costs
    tens of milliseconds of CPU, once instead of once per environment. Built as httpx builds its own
    (``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` honoured), once per value of those variables."""
    key = (os.environ.get("SSL_CERT_FILE", ""), os.environ.get("SSL_CERT_DIR", ""))
    with _TLS_LOCK:
        ctx = _TLS_CONTEXTS.get(key)
        if ctx is None:
            ctx = _TLS_CONTEXTS[key] = httpx.create_ssl_context()
        return ctx


class InProcessTransport(httpx.WSGITransport):
    """httpx's WSGI transport for an in-process app, where an app that drops the connection (raises a
    ``ConnectionError``, as the emulator's ``drop`` fault does) reaches the client as the transport
    error a dropped socket gives over the network, so retries behave the same either way."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return super().handle_request(request)
        except ConnectionError as exc:
            raise httpx.RemoteProtocolError(str(exc) or "Server disconnected without sending a response.",
                                            request=request) from exc


class ReadOnlyDataverse:
    """The read half of a ``DataverseClient``: what the live reader is handed, so it cannot write."""

    def __init__(self, client: DataverseClient) -> None:
        self._client = client

    def get_all(self, entity_set: str, *, select: Sequence[str] | None = None, filter: Filter | None = None,
                orderby: str | None = None, expand: str | None = None,
                page_size: int = MAX_PAGE_SIZE,
                first_page: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
        return self._client.get_all(entity_set, select=select, filter=filter, orderby=orderby, expand=expand,
                                    page_size=page_size, first_page=first_page)

    def query(self, entity_set: str, *, select: Sequence[str] | None = None, filter: Filter | None = None,
              orderby: str | None = None, expand: str | None = None,
              page_size: int = MAX_PAGE_SIZE) -> tuple[str, dict[str, str]]:
        return self._client.query(entity_set, select=select, filter=filter, orderby=orderby, expand=expand,
                                  page_size=page_size)

    def prefetch(self, reads: Sequence[tuple[str, Mapping[str, str]]]) -> int:
        """GETs only, as one read ``$batch`` (``DataverseClient.prefetch``): a read."""
        return self._client.prefetch(reads)

    def forget_prefetched(self) -> None:
        self._client.forget_prefetched()

    def who_am_i_url(self) -> str:
        return self._client.who_am_i_url()

    def privilege_url(self, systemuserid: str, privilege: str) -> str:
        return self._client.privilege_url(systemuserid, privilege)

    @staticmethod
    def component_type_query(entity: str) -> QueryArgs:
        return DataverseClient.component_type_query(entity)

    def who_am_i(self) -> WhoAmI:
        return self._client.who_am_i()

    def component_type_for(self, entity: str) -> int:
        return self._client.component_type_for(entity)

    def get_batch(self, requests: Sequence[tuple[str, Mapping[str, object] | None]]) -> list[tuple[int, Any]]:
        """GETs only, in ``$batch`` requests (``DataverseClient.get_batch``): a read."""
        return self._client.get_batch(requests)

    def user_has_privilege(self, systemuserid: str, privilege: str) -> bool | None:
        return self._client.user_has_privilege(systemuserid, privilege)


class ReadOnlyConnections:
    """The read half of a ``ConnectionsClient``: the lists and one connection's shares, never a share."""

    def __init__(self, client: ConnectionsClient) -> None:
        self._client = client

    @property
    def environment_id(self) -> str | None:
        return self._client.environment_id

    def list_connections(self) -> list[dict[str, Any]]:
        return self._client.list_connections()

    def list_connections_admin(self) -> list[dict[str, Any]]:
        return self._client.list_connections_admin()

    def list_permissions(self, connector: str, name: str) -> list[dict[str, Any]]:
        return self._client.list_permissions(connector, name)

    def list_permissions_admin(self, connector: str, name: str) -> list[dict[str, Any]]:
        return self._client.list_permissions_admin(connector, name)


@dataclass(frozen=True)
class ReadOnlySource:
    """One environment for the live reader (``reconciler.api.live.LiveSource``): reads only."""

    name: str
    env: EnvironmentConfig
    dataverse: ReadOnlyDataverse
    connections: ReadOnlyConnections | None
    graph: GraphClient | None = None  # Microsoft Graph: group membership only (docs/dataverse.md §4.10)


@dataclass
class EnvSession:
    """The clients of one environment, and (for ``local:``) the in-process emulator app.

    ``reader`` is what the live reader is given (it can only read); ``dataverse`` (which also sends
    ``$batch``) is handed to the applier alone."""

    name: str
    env: EnvironmentConfig
    dataverse: DataverseClient
    connections: ConnectionsClient | None
    http: httpx.Client
    token_provider: TokenProvider
    emulator: Any = None  # reconciler.emulator.app.EmulatorApp for local: environments
    graph: GraphClient | None = None  # group membership (docs/dataverse.md §4.10)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _closed: bool = False

    @property
    def is_local(self) -> bool:
        return self.emulator is not None

    @property
    def service_account(self) -> str | None:
        return self.env.service_account

    @property
    def reader(self) -> ReadOnlySource:
        """This environment seen through read-only clients: what the live reader is given."""
        return ReadOnlySource(self.name, self.env, ReadOnlyDataverse(self.dataverse),
                              ReadOnlyConnections(self.connections) if self.connections else None, self.graph)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.http.close()

    def __enter__(self) -> EnvSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalTokenProvider:
    """Tokens for a ``local:`` environment that names no auth profile: minted with the data file's
    own emulator signing key for the file's first application user (or else its first enabled
    user), so every command works with no tenant and no secret. Emulator-only by construction."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        from reconciler.emulator import jwt  # local import: only local: environments need the emulator

        self._jwt = jwt
        self._key = str(data["signing_key_pem"])
        env = data.get("environment", {})
        self._tenant = str(env.get("tenant_id") or "00000000-0000-0000-0000-000000000000")
        self._object_id, self._app_id, self._upn = self._identity(data)
        self._cache: dict[str, str] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _identity(data: Mapping[str, Any]) -> tuple[str, str | None, str | None]:
        apps = {a.get("client_id"): a for a in data.get("applications", [])}
        users = [u for u in data.get("systemusers", []) if not u.get("isdisabled")]
        for u in users:
            if u.get("applicationid") in apps and u.get("azureactivedirectoryobjectid"):
                return str(u["azureactivedirectoryobjectid"]), str(u["applicationid"]), None
        for u in users:
            if u.get("azureactivedirectoryobjectid"):
                return str(u["azureactivedirectoryobjectid"]), None, u.get("domainname")
        raise AuthError("the local environment has no user to sign in as: add a systemusers row "
                        "or an auth profile")

    def get_token(self, scope: str) -> str:
        with self._lock:
            if scope not in self._cache:
                audience = scope[: -len("/.default")] if scope.endswith("/.default") else scope
                self._cache[scope] = self._jwt.mint(
                    self._key, tenant_id=self._tenant, object_id=self._object_id, audience=audience,
                    app_id=self._app_id, upn=self._upn,
                )
            return self._cache[scope]

    def invalidate(self, scope: str) -> None:
        with self._lock:
            self._cache.pop(scope, None)

    def __repr__(self) -> str:
        return "LocalTokenProvider(<emulator>)"


def _profile(config: Config, env: EnvironmentConfig) -> AuthProfile | None:
    if not env.auth:
        return None
    profile = config.auth.get(env.auth)
    if profile is None:
        raise ConfigError(f"environment '{env.name}' names auth profile '{env.auth}', which is not defined",
                          env.location, "auth")
    return profile


def _provider(config: Config, env: EnvironmentConfig, http: httpx.Client,
              retry: RetryPolicy | None = None) -> TokenProvider | None:
    profile = _profile(config, env)
    if profile is None:
        return None
    from reconciler.api.auth import provider_for

    return provider_for(profile, http_client=http, env=env, retry=retry)


class TokenProviders:
    """The token providers of one run, shared by all its remote environments.

    Environments whose auth profiles resolve to the same authority, client and credential settings
    (``auth.provider_key``) get the same provider, and so share its token cache: twenty environments
    of one tenant cost one token request per scope (each environment's Dataverse URL, and the
    connections API once), and MSAL reads the tenant's discovery document once. Token traffic goes
    through one ``httpx.Client`` owned here, closed with :meth:`close`."""

    def __init__(self) -> None:
        self._providers: dict[tuple[str, ...], TokenProvider] = {}
        self._lock = threading.Lock()
        self._http: httpx.Client | None = None

    def for_environment(self, config: Config, env: EnvironmentConfig) -> TokenProvider | None:
        profile = _profile(config, env)
        if profile is None:
            return None
        return self._provider(profile, env)

    def for_profile(self, profile: AuthProfile) -> TokenProvider:
        """The provider of a profile used outside any environment: the azurerm state backend asks it for
        Azure Storage tokens."""
        return self._provider(profile, None)

    def _provider(self, profile: AuthProfile, env: EnvironmentConfig | None) -> TokenProvider:
        key = provider_key(profile, env)
        with self._lock:
            found = self._providers.get(key)
            if found is None:
                from reconciler.api.auth import provider_for

                if self._http is None:
                    # Logged like every other request (-v): method, URL without query values, status.
                    # These requests serve every environment of the run, so the log names no environment.
                    self._http = httpx.Client(timeout=DEFAULT_TIMEOUT, verify=tls_context(),
                                              event_hooks=request_log_hooks(TOKEN_LOG_LABEL))
                found = self._providers[key] = provider_for(profile, http_client=self._http, env=env)
            return found

    def close(self) -> None:
        with self._lock:
            if self._http is not None:
                self._http.close()
                self._http = None
            self._providers.clear()

    def __enter__(self) -> TokenProviders:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_environment(
    config: Config,
    env_name: str,
    *,
    token_provider: TokenProvider | None = None,
    http: httpx.Client | None = None,
    max_retries: int = 5,
    providers: TokenProviders | None = None,
) -> EnvSession:
    """Open the clients of environment ``env_name``. ``token_provider`` overrides the auth profile
    (tests); ``http`` overrides the transport for a real URL (tests pass a loopback client);
    ``providers`` shares token providers with the run's other environments (a remote environment
    without it gets a provider of its own)."""
    env = config.environments.get(env_name)
    if env is None:
        known = ", ".join(sorted(config.environments)) or "none"
        raise ConfigError(f"unknown environment '{env_name}' (configured: {known})")
    retry = RetryPolicy(max_retries=max_retries)
    if env.is_local:
        return _open_local(config, env, token_provider, retry)
    return _open_remote(config, env, token_provider, http, retry, providers)


def _open_local(
    config: Config, env: EnvironmentConfig, token_provider: TokenProvider | None, retry: RetryPolicy
) -> EnvSession:
    from reconciler.emulator.app import EmulatorApp
    from reconciler.emulator.store import EnvironmentStore

    path = str(env.local_path)
    field = f"environments.{env.name}.url"
    if not os.path.exists(path):
        raise ConfigError(f"emulator data file {path} does not exist", env.location, field)
    try:
        store = EnvironmentStore.from_file(path)
    except ValueError as e:
        raise ConfigError(str(e), env.location, field) from None
    app = EmulatorApp(store, persist=True)
    # Every host goes to the in-process app: the data's environment URL (the token audience),
    # the connections API and the token endpoint MSAL talks to.
    http = httpx.Client(transport=InProcessTransport(app=app), timeout=DEFAULT_TIMEOUT,
                        event_hooks=request_log_hooks(env.name))
    try:
        url = str(store.data["environment"]["url"]).rstrip("/")
        env_id = str(store.data["environment"].get("environment_id") or env.environment_id or "local")
        tokens = token_provider or _provider(config, env, http, retry) or LocalTokenProvider(store.data)
        dataverse = DataverseClient(url, tokens, http=http, scope=scope_for(url), retry=retry, label=env.name)
        # Each API wants its own audience (docs/dataverse.md §6.1, §6.6): the emulator serves both APIs.
        connections = ConnectionsClient(url, tokens, http=http, scope=POWERPLATFORM_SCOPE,
                                        environment_id=env_id, admin_scope=POWERAPPS_SCOPE,
                                        retry=retry, label=env.name)
        graph = GraphClient(url, tokens, http=http, scope=GRAPH_BASE + "/.default", retry=retry, label=env.name)
    except BaseException:
        http.close()
        raise
    return EnvSession(env.name, env, dataverse, connections, http, tokens, emulator=app, graph=graph)


def _open_remote(
    config: Config,
    env: EnvironmentConfig,
    token_provider: TokenProvider | None,
    http: httpx.Client | None,
    retry: RetryPolicy,
    providers: TokenProviders | None = None,
) -> EnvSession:
    own_http = http is None
    client = http or httpx.Client(timeout=DEFAULT_TIMEOUT, verify=tls_context(),
                                  event_hooks=request_log_hooks(env.name))
    try:
        if token_provider is None and providers is not None and http is None:
            token_provider = providers.for_environment(config, env)
        tokens = token_provider or _provider(config, env, client, retry)
        if tokens is None:
            raise ConfigError(f"environment '{env.name}' needs an auth profile (auth:)", env.location, "auth")
        url = env.url.rstrip("/")
        dataverse = DataverseClient(url, tokens, http=client, scope=scope_for(url), retry=retry, label=env.name)
        connections = _connections_client(env, tokens, client, retry)
        graph = _graph_client(env, tokens, client, retry)
    except BaseException:
        if own_http:
            client.close()
        raise
    return EnvSession(env.name, env, dataverse, connections, client, tokens, graph=graph)


def _graph_client(env: EnvironmentConfig, tokens: TokenProvider, http: httpx.Client,
                  retry: RetryPolicy) -> GraphClient:
    """Microsoft Graph of the environment's cloud; with ``connections_url`` (an emulator, which serves
    Graph's routes too) that host, still with Graph's own audience (docs/dataverse.md §6.6)."""
    from reconciler.api.auth import cloud

    graph = cloud(env.cloud).graph
    base = env.connections_url.rstrip("/") if env.connections_url else graph
    return GraphClient(base, tokens, http=http, scope=graph + "/.default", retry=retry, label=env.name)


def _connections_client(
    env: EnvironmentConfig, tokens: TokenProvider, http: httpx.Client, retry: RetryPolicy
) -> ConnectionsClient | None:
    """The connections API: ``connections_url`` when given (an emulator serves both route families
    there), else the Power Platform API host derived from the environment id (docs/dataverse.md §4.2) with
    the classic Power Apps admin route for the admin-scope list."""
    if env.connections_url:
        base = env.connections_url.rstrip("/")
        env_id = env.environment_id
        # One host serving both route families (an emulator): each family still wants its own API's
        # audience (docs/dataverse.md §6.1, §6.6).
        return ConnectionsClient(base, tokens, http=http, scope=POWERPLATFORM_SCOPE, environment_id=env_id,
                                 admin_scope=POWERAPPS_SCOPE, retry=retry, label=env.name)
    if not env.environment_id:
        return None  # the live reader says what is missing when it needs connections
    try:
        base = power_platform_api_base(env.environment_id, env.cloud)
    except ValueError as e:
        raise ConfigError(f"environment '{env.name}': {e}", env.location, "environment_id") from None
    from reconciler.api.auth import cloud

    c = cloud(env.cloud)
    return ConnectionsClient(
        base, tokens, http=http, scope=c.connections_scope, environment_id=env.environment_id,
        admin_base_url=POWERAPPS_BASE if env.cloud == "public" else None,
        admin_scope=POWERAPPS_SCOPE if env.cloud == "public" else None,
        retry=retry, label=env.name,
    )
