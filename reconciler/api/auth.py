"""Access tokens for connref's two APIs (Dataverse and the connections API), one provider per auth profile.

Every method goes through MSAL except ``access_token`` (a bearer token handed in by the pipeline) and
``azure_cli`` (the signed-in ``az`` user). All MSAL traffic goes through the caller's ``httpx.Client``
(see :class:`MsalHttpClient`), so a ``local:`` environment is served in-process with no sockets and the
loopback tests speak TLS with their own CA.

Providers cache tokens for the process, per scope, and renew them before they expire (five minutes
before, or half-way through the lifetime of a short-lived token), so a long apply never sends an expired
token. Every failure is an :class:`~reconciler.errors.AuthError` that names the profile, the method and
what to check; no message ever contains a secret, a token or an assertion.

Profile keys (``AuthProfile.options``), by method:

==================  ==========================================================================
client_secret       client_secret_env | client_secret_file
certificate         certificate_path (PEM or PFX), certificate_password_env (optional)
federated           federated_provider: github | azure_devops, or federated_token_file |
                    federated_token_env; azure_devops_service_connection_id (azure_devops);
                    federated_audience (default api://AzureADTokenExchange)
managed_identity    managed_identity_client_id (user-assigned; omit for system-assigned)
azure_cli           (none; uses the ``az`` on PATH)
access_token        access_token_env (Dataverse); powerplatform_access_token_env, powerapps_access_token_env,
                    graph_access_token_env (one token per API audience; connections_access_token_env is the
                    older name of powerplatform_access_token_env)
all                 authority_host (default per cloud), cloud (default: the environment's)
==================  ==========================================================================
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

import httpx

from reconciler.api.client import MsalHttpClient, OidcTokenClient, RetryPolicy, redact
from reconciler.api.shapes import AZURE_DEVOPS_OIDC_TOKEN, GITHUB_OIDC_TOKEN, Shape
from reconciler.domain.model import AuthProfile, EnvironmentConfig
from reconciler.errors import (
    ApiError,
    AuthError,
    AuthUnavailableError,
    MalformedResponseError,
    ThrottledError,
    TransientError,
)

METHODS = ("client_secret", "certificate", "federated", "managed_identity", "azure_cli", "access_token")

# Audience Entra expects in a federated assertion (Microsoft Learn, "Workload identity federation":
# https://learn.microsoft.com/entra/workload-id/workload-identity-federation).
FEDERATED_AUDIENCE = "api://AzureADTokenExchange"

# Renew a cached token this long before it expires: MSAL itself treats a token with less than five
# minutes left as expired (msal/application.py, ``expires_in < 5*60``).
RENEW_MARGIN_SECONDS = 300


# --------------------------------------------------------------------------- clouds and scopes


@dataclass(frozen=True)
class Cloud:
    """Endpoints of one Microsoft cloud. Source: microsoft/terraform-provider-power-platform
    ``internal/constants/constants.go`` (authority, Power Platform API and Power Apps scopes per cloud;
    docs/dataverse.md §6.1)."""

    name: str
    authority_host: str
    powerplatform_api: str  # resource (audience) of the Power Platform API, also its host
    powerapps_service: str  # resource of the classic Power Apps API and BAP
    dataverse_domain: str  # the suffix of Dataverse environment hosts in that cloud
    graph: str = "https://graph.microsoft.com"  # Microsoft Graph: its host and resource

    @property
    def connections_scope(self) -> str:
        return self.powerplatform_api + "/.default"


CLOUDS: dict[str, Cloud] = {
    "public": Cloud("public", "https://login.microsoftonline.com", "https://api.powerplatform.com",
                    "https://service.powerapps.com", "dynamics.com"),
    "usgov": Cloud("usgov", "https://login.microsoftonline.com", "https://api.gov.powerplatform.microsoft.us",
                   "https://service.powerapps.us", "crm9.dynamics.com", "https://graph.microsoft.com"),
    "usgovhigh": Cloud("usgovhigh", "https://login.microsoftonline.us", "https://api.high.powerplatform.microsoft.us",
                       "https://high.service.powerapps.us", "crm.microsoftdynamics.us", "https://graph.microsoft.us"),
    "dod": Cloud("dod", "https://login.microsoftonline.us", "https://api.appsplatform.us",
                 "https://service.apps.appsplatform.us", "crm.appsplatform.us", "https://dod-graph.microsoft.us"),
    "china": Cloud("china", "https://login.chinacloudapi.cn", "https://api.powerplatform.partner.microsoftonline.cn",
                   "https://service.powerapps.cn", "crm.dynamics.cn", "https://microsoftgraph.chinacloudapi.cn"),
}


def cloud(name: str | None) -> Cloud:
    key = (name or "public").lower()
    if key not in CLOUDS:
        raise AuthError(f"unknown cloud '{name}'; use one of: {', '.join(CLOUDS)}")
    return CLOUDS[key]


def origin(url: str) -> str:
    """``https://org.crm4.dynamics.com/api/data`` -> ``https://org.crm4.dynamics.com``."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def dataverse_scope(environment_url: str) -> str:
    """The scope of a Dataverse environment: its origin + ``/.default`` (docs/dataverse.md §6.1)."""
    return origin(environment_url) + "/.default"


def connections_scope(cloud_name: str | None = None) -> str:
    """The scope of the Power Platform API (connections) in a cloud (docs/dataverse.md §6.1)."""
    return cloud(cloud_name).connections_scope


def resource_of(scope: str) -> str:
    """``https://x/.default`` -> ``https://x`` (managed identity and the Azure CLI take a resource;
    docs/dataverse.md §6.2)."""
    return scope[: -len("/.default")] if scope.endswith("/.default") else scope.rstrip("/")


# --------------------------------------------------------------------------- providers


class TokenProvider(Protocol):
    """Gives a bearer token for a scope such as ``https://org.crm.dynamics.com/.default``."""

    def get_token(self, scope: str) -> str: ...


#: The ``access_token`` method's variables, one per API audience (docs/dataverse.md §6.6): the key naming the
#: variable and the hosts whose scopes it serves. ``access_token_env`` serves Dataverse (every other scope).
ACCESS_TOKEN_AUDIENCES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("powerplatform_access_token_env", "the Power Platform API", ("api.powerplatform.", "powerplatform.microsoft.us",
                                                                  "api.appsplatform.us", "powerplatform.partner.")),
    ("powerapps_access_token_env", "the Power Apps admin API", ("service.powerapps.", "service.apps.appsplatform.",
                                                                "api.bap.")),
    ("graph_access_token_env", "Microsoft Graph", ("graph.microsoft.", "dod-graph.", "microsoftgraph.")),
)


class StaticTokenProvider:
    """Fixed bearer tokens (``method: access_token``), one per API audience (a token has one audience:
    docs/dataverse.md §6.6): ``token`` for Dataverse, ``by_audience`` (key of ``ACCESS_TOKEN_AUDIENCES`` ->
    token) for the others. A scope whose token was not handed in raises ``AuthError`` naming the variable
    that would give it, rather than sending another API's token to be refused."""

    def __init__(self, token: str, connections_token: str | None = None, *,
                 by_audience: Mapping[str, str] | None = None, profile: str = "") -> None:
        self._token = token
        self._by_audience = dict(by_audience or {})
        if connections_token and "powerplatform_access_token_env" not in self._by_audience:
            self._by_audience["powerplatform_access_token_env"] = connections_token
        self._profile = profile

    def get_token(self, scope: str) -> str:
        low = scope.lower()
        for key, api, hosts in ACCESS_TOKEN_AUDIENCES:
            if any(h in low for h in hosts):
                found = self._by_audience.get(key)
                if found:
                    return found
                raise AuthError(
                    f"auth profile '{self._profile}' (access_token): no token for {api} ({resource_of(scope)}); "
                    f"a token has one audience, so set {key} to the variable holding one for it")
        return self._token

    def invalidate(self, scope: str) -> None:
        """Nothing to renew: a handed-in token is used as it is."""

    def __repr__(self) -> str:  # never show the token
        return "StaticTokenProvider(<redacted>)"


@dataclass
class _Cached:
    token: str
    expires_at: float
    lifetime: float


class CachingTokenProvider:
    """Caches one token per scope for the process and renews it before it expires.

    Locking is per scope: a thread waiting for the Dataverse token never waits for the connections
    API token, so the two are fetched at the same time; two threads asking for the same scope send
    one request. One provider serves every environment of a run that shares its authority and client
    (see ``reconciler.api.session.TokenProviders``), so the cache is in effect keyed by
    (authority, client, scope).

    Subclasses implement :meth:`_acquire` returning ``(token, expires_in_seconds)``."""

    def __init__(self, profile_name: str, method: str, *, clock: Callable[[], float] = time.time) -> None:
        self.profile_name = profile_name
        self.method = method
        self._clock = clock
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()  # guards the dicts and the counter, never held across a request
        self._scope_locks: dict[str, threading.Lock] = {}
        self.acquisitions = 0  # how many tokens were fetched (tests assert renewal with it)

    def _scope_lock(self, scope: str) -> threading.Lock:
        with self._lock:
            lock = self._scope_locks.get(scope)
            if lock is None:
                lock = self._scope_locks[scope] = threading.Lock()
            return lock

    def _fresh(self, scope: str, now: float) -> str | None:
        with self._lock:
            hit = self._cache.get(scope)
        if hit is not None and now < hit.expires_at - self._margin(hit.lifetime):
            return hit.token
        return None

    def get_token(self, scope: str) -> str:
        token = self._fresh(scope, self._clock())
        if token is not None:
            return token
        with self._scope_lock(scope):
            now = self._clock()
            token = self._fresh(scope, now)  # another thread may have fetched it while this one waited
            if token is not None:
                return token
            token, expires_in = self._acquire(scope)
            # expires_in is whole seconds counted from when the service minted the token: take one off
            # for the rounding and the trip back.
            lifetime = max(float(expires_in) - 1.0, 0.0)
            with self._lock:
                self.acquisitions += 1
                self._cache[scope] = _Cached(token, now + lifetime, lifetime)
            return token

    def invalidate(self, scope: str) -> None:
        """Forget the cached token of ``scope`` (the service refused it with 401); the next
        :meth:`get_token` fetches a new one."""
        with self._scope_lock(scope):
            with self._lock:
                self._cache.pop(scope, None)
            self._forget(scope)

    def _forget(self, scope: str) -> None:
        """Drop any lower-level cache of ``scope`` (MSAL's)."""

    @staticmethod
    def _margin(lifetime: float) -> float:
        # Five minutes, but never more than half the lifetime, so a short-lived token is still used.
        return min(RENEW_MARGIN_SECONDS, lifetime / 2)

    def _acquire(self, scope: str) -> tuple[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _error(self, what: str, check: str) -> AuthError:
        return AuthError(f"auth profile '{self.profile_name}' ({self.method}): {what}. Check {check}")

    def _known_secrets(self) -> list[str]:
        """The credentials this provider sends that it holds itself (redacted from its errors)."""
        return []

    def _unavailable(self, exc: ApiError, check: str) -> AuthError:
        """The error for a token service that did not answer usefully: ``AuthUnavailableError`` (a
        failure, not a refusal) when it was down, throttled or unreadable, else an ``AuthError``."""
        detail = redact(str(exc), self._known_secrets())
        text = f"auth profile '{self.profile_name}' ({self.method}): {detail}. Check {check}"
        if isinstance(exc, TransientError | ThrottledError | MalformedResponseError):
            return AuthUnavailableError(text)
        return AuthError(text)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(profile={self.profile_name!r}, method={self.method!r})"


# --------------------------------------------------------------------------- MSAL http adapter


# ``MsalHttpClient`` (the requests-like adapter MSAL talks through, with retries and answer checks) lives
# with the other HTTP code in reconciler.api.client.


# --------------------------------------------------------------------------- error explanations

# What to check for the AADSTS codes a user is likely to meet (Microsoft Learn, "Microsoft Entra
# authentication and authorization error codes": https://learn.microsoft.com/entra/identity-platform/reference-error-codes).
_AADSTS_HINTS: dict[str, str] = {
    "7000215": "that the value is the client secret's value (not its id) and has not been rotated",
    "7000222": "the secret's expiry in the app registration (Certificates & secrets) and create a new one",
    "700016": "client_id and tenant_id: the app registration must exist in that tenant",
    "700027": "for a certificate profile, that the certificate is uploaded to the app registration "
    "(Certificates & secrets); for a federated profile, that the token comes from the issuer the "
    "app's federated credential names (its signature could not be verified)",
    "700024": "the clock of this machine and that the federated token is fresh (it is re-fetched on expiry)",
    "70021": "the federated credential of the app registration: its issuer, subject and audience must "
    "match the token exactly (case-sensitive)",
    "700211": "the issuer of the app registration's federated credential",
    "700212": "the audience of the federated credential (normally api://AzureADTokenExchange)",
    "700213": "the subject of the federated credential (repository/branch/environment or service connection)",
    "90002": "tenant_id: the tenant was not found",
    "1002012": "the scope: client credentials need '<resource>/.default'",
    "70011": "the scope: client credentials need '<resource>/.default'",
    "500011": "that the resource (environment URL) is right and the service is enabled in the tenant",
    "7000218": "that a secret, certificate or federated token is configured",
}


def _aadsts(result: Mapping[str, Any]) -> str | None:
    codes = result.get("error_codes") or []
    if codes:
        return str(codes[0])
    desc = str(result.get("error_description") or "")
    if desc.startswith("AADSTS"):
        return desc[6:].split(":", 1)[0]
    return None


def _first_sentence(text: str) -> str:
    line = text.split("\r\n")[0].split("\n")[0]
    # Drop the service's boilerplate (trace ids, timestamps) that follows the explanation.
    for marker in (" Trace ID:", " Correlation ID:", " Timestamp:"):
        line = line.split(marker)[0]
    return line.strip()


# --------------------------------------------------------------------------- MSAL-backed providers


class MsalClientProvider(CachingTokenProvider):
    """A confidential client (secret, certificate or client assertion) through MSAL's client
    credentials flow (``ConfidentialClientApplication.acquire_token_for_client``)."""

    def __init__(
        self,
        profile: AuthProfile,
        *,
        http_client: httpx.Client,
        authority_host: str,
        credential: Callable[[], Any],
        what_failed: str,
        secrets: Callable[[], list[str]] = lambda: [],
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__(profile.name, profile.method)
        if not profile.tenant_id or not profile.client_id:
            raise self._error("tenant_id and client_id are required", "the profile under auth:")
        self._tenant = profile.tenant_id
        self._client_id = profile.client_id
        self._authority = authority_host.rstrip("/") + "/" + self._tenant
        self._http = MsalHttpClient(http_client, retry=retry)
        self._credential = credential
        self._what_failed = what_failed
        self._secrets = secrets
        self._app: Any = None
        self._app_lock = threading.Lock()  # one application (one discovery) for every scope

    def _build(self) -> Any:
        import msal  # imported lazily: a run that only uses access_token never pays for it

        host = urlsplit(self._authority).hostname or ""
        # For a host it does not know, MSAL asks https://login.microsoftonline.com/common/discovery/instance
        # about it, and asks again for aliases after any failed token request (msal/application.py
        # ``_get_authority_aliases``). An authority host given on purpose (the emulator on loopback, a
        # proxy) may have no route to that host, so discovery is off for it: the tenant's
        # openid-configuration on the given host still validates the tenant.
        known = host in msal.authority.WELL_KNOWN_AUTHORITY_HOSTS
        discovery = None if known else False
        try:
            return msal.ConfidentialClientApplication(
                self._client_id,
                client_credential=self._credential(),
                authority=self._authority,
                http_client=self._http,
                instance_discovery=discovery,
            )
        except AuthError:
            raise
        except ApiError as e:  # the discovery documents: unavailable past the retries, or unreadable
            raise self._unreachable(e) from None
        except ValueError as e:
            detail = _first_sentence(redact(str(e), self._secrets()))
            raise self._error(f"the authority {self._authority} could not be used ({detail})",
                              "tenant_id and authority_host") from None
        except httpx.HTTPError as e:
            raise self._error(f"could not reach {self._authority} ({type(e).__name__})",
                              "authority_host and the network (proxy, TLS trust)") from None
        except Exception as e:  # MSAL's own errors for an authority it cannot use
            detail = _first_sentence(redact(str(e), self._secrets()))
            raise self._error(f"the authority {self._authority} could not be used ({detail})",
                              "tenant_id and authority_host") from None

    def _unreachable(self, exc: ApiError) -> AuthError:
        if exc.status is None and not isinstance(exc, MalformedResponseError):  # no answer at all
            return AuthUnavailableError(
                f"auth profile '{self.profile_name}' ({self.method}): could not reach {self._authority} "
                f"({redact(str(exc), self._secrets())}). Check authority_host and the network (proxy, TLS trust)")
        return self._unavailable(exc, "authority_host, or try again later if the service is busy")

    def _known_secrets(self) -> list[str]:
        return self._secrets()

    def _forget(self, scope: str) -> None:
        if self._app is not None:
            cache = self._app.token_cache
            for at in list(cache.search(cache.CredentialType.ACCESS_TOKEN, target=[scope])):
                cache.remove_at(at)

    def _acquire(self, scope: str) -> tuple[str, float]:
        with self._app_lock:
            if self._app is None:
                self._app = self._build()
        try:
            result = self._app.acquire_token_for_client(scopes=[scope])
        except AuthError:
            raise
        except ApiError as e:  # the token endpoint: unavailable past the retries, or unreadable
            raise self._unreachable(e) from None
        except httpx.HTTPError as e:
            raise self._error(f"could not reach {self._authority} ({type(e).__name__})",
                              "authority_host and the network (proxy, TLS trust)") from None
        except Exception as e:  # MSAL raises plain ValueError/MsalServiceError for a broken setup
            raise self._error(f"MSAL failed: {_first_sentence(redact(str(e), self._secrets()))}",
                              "the profile's keys") from None
        return self._result(result, scope)

    def _result(self, result: Mapping[str, Any] | None, scope: str) -> tuple[str, float]:
        if result and result.get("access_token"):
            return str(result["access_token"]), float(result.get("expires_in") or 3600)
        result = result or {}
        code = _aadsts(result)
        # A token endpoint (or a proxy before it) may echo the request in its error: the secret, urlencoded
        # as it was sent, or the assertion. Redacted as every error of every service is (``redact``).
        desc = _first_sentence(redact(str(result.get("error_description") or result.get("error") or ""),
                                      self._secrets()))
        desc = re.sub(r"^AADSTS\d+:\s*", "", desc)
        hint = _AADSTS_HINTS.get(code or "", "the profile's keys and the app registration in Entra")
        what = self._what_failed if code in ("7000215", "700027", "700024", "70021", "700211", "700212",
                                             "700213") else "the token request was refused"
        label = f"AADSTS{code}" if code else redact(str(result.get("error") or "error"), self._secrets())
        return self._raise(f"{what} for scope {scope} ({label}: {desc})", hint)

    def _raise(self, what: str, check: str) -> tuple[str, float]:
        raise self._error(what, check)


class ManagedIdentityProvider(CachingTokenProvider):
    """A managed identity through ``msal.ManagedIdentityClient`` (msal 1.29+), which takes a resource,
    not a scope. The endpoint is found by MSAL from the environment (IDENTITY_ENDPOINT/IDENTITY_HEADER
    on App Service and Functions, IMDS on a VM)."""

    def __init__(self, profile: AuthProfile, *, http_client: httpx.Client, retry: RetryPolicy | None = None) -> None:
        super().__init__(profile.name, profile.method)
        self._client_id = profile.options.get("managed_identity_client_id")
        # Fewer attempts than for the APIs: off an Azure host the endpoint is unreachable, each attempt
        # waits out the connect timeout, and that is a set-up problem, not a passing one.
        self._http = MsalHttpClient(http_client, retry=retry or RetryPolicy(max_retries=2))
        self._mi: Any = None
        self._mi_lock = threading.Lock()

    def _known_secrets(self) -> list[str]:
        # App Service's identity header (IDENTITY_HEADER, older hosts MSI_SECRET) authenticates the request.
        return [v for v in (os.environ.get("IDENTITY_HEADER"), os.environ.get("MSI_SECRET")) if v]

    def _forget(self, scope: str) -> None:
        cache = getattr(self._mi, "_token_cache", None)  # the client keeps its tokens there (msal 1.29+)
        if cache is not None:
            for at in list(cache.search(cache.CredentialType.ACCESS_TOKEN, target=[resource_of(scope)])):
                cache.remove_at(at)

    def _acquire(self, scope: str) -> tuple[str, float]:
        import msal

        with self._mi_lock:
            if self._mi is None:
                identity: Any = (msal.UserAssignedManagedIdentity(client_id=self._client_id)
                                 if self._client_id else msal.SystemAssignedManagedIdentity())
                self._mi = msal.ManagedIdentityClient(identity, http_client=self._http)
        resource = resource_of(scope)
        kind = f"user-assigned {self._client_id}" if self._client_id else "system-assigned"
        try:
            result = self._mi.acquire_token_for_client(resource=resource)
        except ApiError as e:
            raise self._unavailable(e, "that the managed identity is enabled on this host") from None
        except httpx.HTTPError as e:
            raise self._error(f"the managed identity endpoint could not be reached ({type(e).__name__})",
                              "that this runs on an Azure host with a managed identity enabled "
                              "(IDENTITY_ENDPOINT/IDENTITY_HEADER, or IMDS)") from None
        except Exception as e:
            raise self._error(f"the managed identity request failed: "
                              f"{_first_sentence(redact(str(e), self._known_secrets()))}",
                              "that the managed identity is enabled on this host") from None
        if result and result.get("access_token"):
            return str(result["access_token"]), float(result.get("expires_in") or 3600)
        result = result or {}
        desc = _first_sentence(redact(str(result.get("error_description") or result.get("error") or ""),
                                      self._known_secrets()))
        raise self._error(f"no token for the {kind} managed identity and resource {resource} ({desc})",
                          "that the identity is assigned to this host and, for user-assigned, "
                          "managed_identity_client_id")


class AzureCliProvider(CachingTokenProvider):
    """The user signed in to the Azure CLI: ``az account get-access-token --resource R -o json``."""

    def __init__(self, profile: AuthProfile) -> None:
        super().__init__(profile.name, profile.method)
        self._tenant = profile.tenant_id

    def _acquire(self, scope: str) -> tuple[str, float]:
        az = shutil.which("az")
        if az is None:
            raise self._error("the Azure CLI ('az') was not found on PATH",
                              "that the Azure CLI is installed, then run 'az login'")
        resource = resource_of(scope)
        cmd = [az, "account", "get-access-token", "--resource", resource, "-o", "json"]
        if self._tenant:
            cmd += ["--tenant", self._tenant]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise self._error(f"'az account get-access-token' could not run ({type(e).__name__})",
                              "the Azure CLI installation") from None
        if proc.returncode != 0:
            msg = _first_sentence(redact((proc.stderr or "").strip().removeprefix("ERROR:").strip())) or "no details"
            raise self._error(f"'az account get-access-token --resource {resource}' failed: {msg}",
                              "that you are signed in ('az login'"
                              + (f" --tenant {self._tenant}" if self._tenant else "") + ")")
        try:
            out = json.loads(proc.stdout)
            token = str(out["accessToken"])
        except (ValueError, KeyError, TypeError):
            raise self._error("'az account get-access-token' printed no token",
                              "the Azure CLI version (2.x is needed)") from None
        return token, self._expires_in(out)

    def _expires_in(self, out: Mapping[str, Any]) -> float:
        now = time.time()
        if out.get("expires_on"):  # epoch seconds, Azure CLI 2.54+
            return float(out["expires_on"]) - now
        if out.get("expiresOn"):  # local time, older releases
            try:
                return datetime.fromisoformat(str(out["expiresOn"])).timestamp() - now
            except ValueError:
                pass
        return 300.0  # unknown: keep it five minutes at most


# --------------------------------------------------------------------------- federated assertions


def _jwt_exp(token: str) -> float | None:
    """The ``exp`` claim of a JWT, read without verification (only to know when to re-fetch it)."""
    try:
        payload = token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        exp = json.loads(base64.urlsafe_b64decode(payload)).get("exp")
        return float(exp) if exp is not None else None
    except (IndexError, ValueError, TypeError):
        return None


class FederatedAssertion:
    """Fetches the workload identity token (GitHub Actions, Azure DevOps, a file or a variable) and
    fetches it again once it is within a minute of expiring. MSAL calls it before every token request."""

    def __init__(self, profile: AuthProfile, http_client: httpx.Client, retry: RetryPolicy | None = None) -> None:
        self._profile = profile
        self._http = OidcTokenClient(http_client, retry=retry)
        self._opts = profile.options
        self._value: str | None = None
        self._exp: float | None = None
        self.fetches = 0
        self._lock = threading.Lock()  # token requests for several scopes run at once: fetch once

    def _error(self, what: str, check: str) -> AuthError:
        return AuthError(f"auth profile '{self._profile.name}' (federated): {what}. Check {check}")

    def __call__(self) -> str:
        with self._lock:
            now = time.time()
            if self._value is not None and (self._exp is None or now < self._exp - 60):
                return self._value
            self._value = self._fetch()
            self._exp = _jwt_exp(self._value)
            self.fetches += 1
            return self._value

    def secrets(self) -> list[str]:
        return [self._value] if self._value else []

    def _fetch(self) -> str:
        provider = self._opts.get("federated_provider")
        if provider == "github":
            return self._github()
        if provider == "azure_devops":
            return self._azure_devops()
        if self._opts.get("federated_token_file"):
            path = str(self._opts["federated_token_file"])
            try:
                with open(path, encoding="utf-8") as f:
                    value = f.read().strip()
            except OSError as e:
                raise self._error(f"the token file {path} could not be read ({e.strerror})",
                                  "federated_token_file") from None
            if not value:
                raise self._error(f"the token file {path} is empty", "federated_token_file")
            return value
        if self._opts.get("federated_token_env"):
            name = str(self._opts["federated_token_env"])
            value = os.environ.get(name, "").strip()
            if not value:
                raise self._error(f"the environment variable {name} is not set", "federated_token_env")
            return value
        raise self._error("no source for the federated token",
                          "federated_provider (github | azure_devops), federated_token_file or "
                          "federated_token_env")

    def _need_env(self, name: str, check: str) -> str:
        value = os.environ.get(name, "")
        if not value:
            raise self._error(f"the environment variable {name} is not set", check)
        return value

    def _oidc_token(self, method: str, url: str, *, params: Mapping[str, str], headers: Mapping[str, str],
                    shape: Shape, key: str, who: str, refused: Callable[[int | None], AuthError],
                    secrets: list[str]) -> str:
        """The workload identity token from a CI system's OIDC endpoint (``url`` may carry a query of its
        own: kept, with ``params`` added). Through the request core (``OidcTokenClient``): retries, bounded
        reads, the answer's shape checked. A refusal (4xx) is ``refused(status)``; no answer past the
        retries, or one connref cannot read, is an ``AuthUnavailableError``. No message holds a token."""
        base, _, query = url.partition("?")
        merged = dict(parse_qsl(query, keep_blank_values=True))
        merged.update(params)
        try:
            doc = self._http.token_answer(method, base, shape=shape, params=merged, headers=headers)
        except MalformedResponseError as e:
            raise AuthUnavailableError(self._message(redact(str(e), secrets))) from None
        except ApiError as e:
            if e.status is not None and 400 <= e.status < 500 and e.status != 429:
                raise refused(e.status) from None
            raise AuthUnavailableError(self._message(
                f"the {who} OIDC endpoint did not answer usefully: {redact(str(e), secrets)}")) from None
        return str(doc[key])

    def _message(self, what: str) -> str:
        return f"auth profile '{self._profile.name}' (federated): {what}"

    def _github(self) -> str:
        # GitHub Actions: GET $ACTIONS_ID_TOKEN_REQUEST_URL&audience=... with the request token as a
        # bearer; the answer is {"count":..,"value":"<jwt>"} (docs/dataverse.md §6.3).
        check = "that the workflow has 'permissions: id-token: write'"
        url = self._need_env("ACTIONS_ID_TOKEN_REQUEST_URL", check)
        request_token = self._need_env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", check)
        audience = str(self._opts.get("federated_audience") or FEDERATED_AUDIENCE)
        return self._oidc_token(
            "GET", url, params={"audience": audience}, headers={"Authorization": f"Bearer {request_token}"},
            shape=GITHUB_OIDC_TOKEN, key="value", who="GitHub",
            refused=lambda status: self._error(f"the GitHub OIDC endpoint answered {status}", check),
            secrets=[request_token])

    def _azure_devops(self) -> str:
        # Azure DevOps: POST $SYSTEM_OIDCREQUESTURI?api-version=7.1&serviceConnectionId=<id> with
        # $(System.AccessToken) as a bearer; the answer is {"oidcToken":"<jwt>"} (docs/dataverse.md §6.3).
        check = "that the pipeline maps SYSTEM_ACCESSTOKEN ('env: SYSTEM_ACCESSTOKEN: $(System.AccessToken)')"
        url = self._need_env("SYSTEM_OIDCREQUESTURI", "that this runs in an Azure DevOps pipeline")
        access_token = self._need_env("SYSTEM_ACCESSTOKEN", check)
        connection = self._opts.get("azure_devops_service_connection_id")
        if not connection:
            raise self._error("azure_devops_service_connection_id is not set",
                              "the id of the workload identity service connection")
        return self._oidc_token(
            "POST", url, params={"api-version": "7.1", "serviceConnectionId": str(connection)},
            headers={"Authorization": f"Bearer {access_token}", "Content-Type": "application/json"},
            shape=AZURE_DEVOPS_OIDC_TOKEN, key="oidcToken", who="Azure DevOps",
            refused=lambda status: self._error(
                f"the Azure DevOps OIDC endpoint answered {status} for service connection {connection}",
                check + " and that the service connection may be used by this pipeline"),
            secrets=[access_token])


# --------------------------------------------------------------------------- certificates


def load_certificate(path: str, password: str | None) -> dict[str, Any]:
    """Read a PEM (key + certificate) or PFX file into MSAL's credential dict, with the SHA-1 and
    SHA-256 thumbprints computed from the certificate (Entra matches ``x5t`` / ``x5t#S256``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    with open(path, "rb") as f:
        data = f.read()
    pw = password.encode("utf-8") if password else None
    key: Any
    cert: Any
    if b"-----BEGIN" in data:
        cert = x509.load_pem_x509_certificate(data)
        key = serialization.load_pem_private_key(data, password=pw)
    else:
        key, cert, _ = pkcs12.load_key_and_certificates(data, pw)
        if key is None or cert is None:
            raise ValueError("the PFX holds no private key and certificate")
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode("ascii")
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    return {
        "private_key": key_pem,
        "public_certificate": cert_pem,  # MSAL then signs PS256 with x5t#S256 (msal 1.35+)
        "thumbprint_sha1": cert.fingerprint(hashes.SHA1()).hex(),  # what the Entra portal shows
        "thumbprint_sha256": cert.fingerprint(hashes.SHA256()).hex(),
    }


# --------------------------------------------------------------------------- provider_for


def _opt(profile: AuthProfile, key: str) -> str | None:
    v = profile.options.get(key)
    return str(v) if v not in (None, "") else None


def authority_of(profile: AuthProfile, env: EnvironmentConfig | None = None) -> str:
    """The authority a profile's tokens come from (host and tenant), as its provider will use it."""
    cloud_name = _opt(profile, "cloud") or (env.cloud if env else None)
    host = _opt(profile, "authority_host") or cloud(cloud_name).authority_host
    return host.rstrip("/").lower() + "/" + (profile.tenant_id or "").lower()


def provider_key(profile: AuthProfile, env: EnvironmentConfig | None = None) -> tuple[str, ...]:
    """What makes two environments' providers interchangeable: the same authority, client, method and
    credential settings (names of variables and files, never their values). Environments with the same
    key share one provider, so each (authority, client, scope) gets one token per run."""
    options = tuple(f"{k}={profile.options[k]}" for k in sorted(profile.options))
    return (authority_of(profile, env), (profile.client_id or "").lower(), profile.method, *options)


@dataclass(frozen=True)
class _Setup:
    """What building any provider of one profile takes."""

    profile: AuthProfile
    http_client: httpx.Client
    authority_host: str
    retry: RetryPolicy | None

    def err(self, what: str, check: str) -> AuthError:
        return AuthError(f"auth profile '{self.profile.name}' ({self.profile.method}): {what}. Check {check}")

    def msal(self, credential: Callable[[], Any], what_failed: str,
             secrets: Callable[[], list[str]]) -> MsalClientProvider:
        return MsalClientProvider(self.profile, http_client=self.http_client, authority_host=self.authority_host,
                                  retry=self.retry, credential=credential, what_failed=what_failed,
                                  secrets=secrets)


def provider_for(
    profile: AuthProfile, *, http_client: httpx.Client, env: EnvironmentConfig | None = None,
    retry: RetryPolicy | None = None,
) -> TokenProvider:
    """The token provider of an auth profile (``retry``: how hard to try the identity platform; the
    default policy when None). Reading secrets is deferred to the first token request
    where possible, so building a provider never fails on a missing variable of an unused profile."""
    cloud_name = _opt(profile, "cloud") or (env.cloud if env else None)
    authority_host = _opt(profile, "authority_host") or cloud(cloud_name).authority_host
    setup = _Setup(profile, http_client, authority_host, retry)
    build = _BUILDERS.get(profile.method)
    if build is None:
        raise setup.err(f"unknown method '{profile.method}'", f"method: one of {', '.join(METHODS)}")
    return build(setup)


def _access_token_provider(setup: _Setup) -> TokenProvider:
    profile, err = setup.profile, setup.err
    name = _opt(profile, "access_token_env")
    if not name:
        raise err("access_token_env is not set", "the profile under auth:")
    token = os.environ.get(name, "").strip()
    if not token:
        raise err(f"the environment variable {name} is empty or not set",
                  f"that the pipeline sets {name}")
    by_audience: dict[str, str] = {}
    keys = [("connections_access_token_env", "powerplatform_access_token_env")]
    keys += [(key, key) for key, _, _ in ACCESS_TOKEN_AUDIENCES]
    for key, audience in keys:
        var = _opt(profile, key)
        if not var:
            continue
        value = os.environ.get(var, "").strip()
        if not value:
            raise err(f"the environment variable {var} is empty or not set", f"that the pipeline sets {var}")
        by_audience[audience] = value
    return StaticTokenProvider(token, by_audience=by_audience, profile=profile.name)


def _client_secret_provider(setup: _Setup) -> TokenProvider:
    profile, err = setup.profile, setup.err
    secret_env, secret_file = _opt(profile, "client_secret_env"), _opt(profile, "client_secret_file")
    if not secret_env and not secret_file:
        raise err("client_secret_env or client_secret_file is required", "the profile under auth:")
    source = f"the secret in {secret_env}" if secret_env else f"the secret in file {secret_file}"
    holder: list[str] = []

    def secret() -> str:
        if secret_env:
            value = os.environ.get(secret_env, "").strip()
            if not value:
                raise err(f"the environment variable {secret_env} is empty or not set",
                          f"that the pipeline sets {secret_env}")
        else:
            try:
                with open(str(secret_file), encoding="utf-8") as f:
                    value = f.read().strip()
            except OSError as e:
                raise err(f"the secret file {secret_file} could not be read ({e.strerror})",
                          "client_secret_file") from None
            if not value:
                raise err(f"the secret file {secret_file} is empty", "client_secret_file")
        holder[:] = [value]
        return value

    return setup.msal(secret, f"{source} was rejected", secrets=lambda: list(holder))


def _certificate_provider(setup: _Setup) -> TokenProvider:
    profile, err = setup.profile, setup.err
    path = _opt(profile, "certificate_path")
    if not path:
        raise err("certificate_path is required", "the profile under auth:")
    pw_env = _opt(profile, "certificate_password_env")
    thumbs: dict[str, str] = {}

    def certificate() -> dict[str, Any]:
        password = os.environ.get(pw_env) if pw_env else None
        if pw_env and password is None:
            raise err(f"the environment variable {pw_env} is not set", "certificate_password_env")
        try:
            loaded = load_certificate(str(path), password)
        except OSError as e:
            raise err(f"the certificate {path} could not be read ({e.strerror})",
                      "certificate_path") from None
        except (ValueError, TypeError):
            raise err(f"the certificate {path} could not be loaded (wrong format or password)",
                      "that it is a PEM with key and certificate or a PFX, and certificate_password_env"
                      ) from None
        thumbs["sha1"] = loaded.pop("thumbprint_sha1")
        thumbs["sha256"] = loaded.pop("thumbprint_sha256")
        return loaded

    class _CertProvider(MsalClientProvider):
        def _raise(self, what: str, check: str) -> tuple[str, float]:
            if thumbs:
                what += f"; certificate thumbprint {thumbs['sha1'].upper()}"
            raise self._error(what, check)

    return _CertProvider(profile, http_client=setup.http_client, authority_host=setup.authority_host,
                         retry=setup.retry, credential=certificate,
                         what_failed=f"the certificate {path} was rejected")


def _federated_provider(setup: _Setup) -> TokenProvider:
    assertion = FederatedAssertion(setup.profile, setup.http_client, setup.retry)
    # MSAL calls a callable client_assertion before each token request (msal/application.py
    # docstring), so an expired token is re-fetched.
    return setup.msal(lambda: {"client_assertion": assertion}, "the federated token was rejected",
                      secrets=assertion.secrets)


def _managed_identity_provider(setup: _Setup) -> TokenProvider:
    return ManagedIdentityProvider(setup.profile, http_client=setup.http_client, retry=setup.retry)


def _azure_cli_provider(setup: _Setup) -> TokenProvider:
    return AzureCliProvider(setup.profile)


# One builder per auth method (METHODS).
_BUILDERS: dict[str, Callable[[_Setup], TokenProvider]] = {
    "access_token": _access_token_provider,
    "client_secret": _client_secret_provider,
    "certificate": _certificate_provider,
    "federated": _federated_provider,
    "managed_identity": _managed_identity_provider,
    "azure_cli": _azure_cli_provider,
}
