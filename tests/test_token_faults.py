"""Faults of the identity platform, through MSAL (no mock) against the emulator's token endpoint in
process: 5xx, 429 with Retry-After and dropped connections are retried below MSAL; what is still wrong
after the retries, and every answer MSAL could not read, is an AuthError naming the profile, the URL and
the status (``AuthUnavailableError``: a failure, not a refusal), never a traceback or MSAL's internals."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import pytest

from reconciler.api.auth import provider_for
from reconciler.api.client import RetryPolicy
from reconciler.api.session import InProcessTransport
from reconciler.domain.model import AuthProfile
from reconciler.emulator import jwt
from reconciler.emulator.app import EmulatorApp
from reconciler.emulator.factory import Sample, sample_environment
from reconciler.emulator.store import EnvironmentStore
from reconciler.errors import AuthError, AuthUnavailableError

AUTHORITY = "https://login.emulator.test"
TOKEN = f"/{Sample.TENANT_ID}/oauth2/v2.0/token"
DISCOVERY = f"/{Sample.TENANT_ID}/v2.0/.well-known/openid-configuration"
SCOPE = Sample.URL + "/.default"
SECRET = "token-faults-secret-value"


@pytest.fixture
def app(signing_key_pem: str) -> EmulatorApp:
    data = sample_environment(signing_key_pem=signing_key_pem)
    data["applications"][0]["client_secret_sha256"] = [hashlib.sha256(SECRET.encode()).hexdigest()]
    return EmulatorApp(EnvironmentStore.from_dict(data))


@pytest.fixture
def http(app: EmulatorApp) -> Iterator[httpx.Client]:
    with httpx.Client(transport=InProcessTransport(app=app)) as client:
        yield client


@pytest.fixture
def sleeps() -> list[float]:
    return []


def provider(http: httpx.Client, sleeps: list[float], monkeypatch: pytest.MonkeyPatch, **retry: Any) -> Any:
    monkeypatch.setenv("TOKEN_FAULTS_SECRET", SECRET)
    profile = AuthProfile(name="pipeline", method="client_secret", tenant_id=Sample.TENANT_ID,
                          client_id=Sample.APP_CLIENT_ID,
                          options={"client_secret_env": "TOKEN_FAULTS_SECRET", "authority_host": AUTHORITY})
    policy = RetryPolicy(sleep=sleeps.append, jitter=lambda: 0.0, **retry)
    return provider_for(profile, http_client=http, retry=policy)


def statuses(app: EmulatorApp, path: str) -> list[int]:
    return [e.status for e in app.log if e.path == path]


def assert_token(app: EmulatorApp, token: str) -> None:
    who = jwt.verify_bearer(app.store.data["signing_key_pem"], "Bearer " + token, [Sample.URL])
    assert who.app_id == Sample.APP_CLIENT_ID


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_token_endpoint_5xx_is_retried(
    app: EmulatorApp, http: httpx.Client, sleeps: list[float], monkeypatch: pytest.MonkeyPatch, status: int
) -> None:
    app.faults.fail_next(2, TOKEN, kind="error", status=status)
    assert_token(app, provider(http, sleeps, monkeypatch).get_token(SCOPE))
    assert statuses(app, TOKEN) == [status, status, 200]
    assert sleeps == [0.5, 1.0]


def test_token_endpoint_429_honours_retry_after(
    app: EmulatorApp, http: httpx.Client, sleeps: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    app.faults.fail_next(1, TOKEN, kind="throttle", retry_after=7)
    assert_token(app, provider(http, sleeps, monkeypatch).get_token(SCOPE))
    assert statuses(app, TOKEN) == [429, 200]
    assert sleeps == [7.0]


def test_token_endpoint_connection_reset_is_retried(
    app: EmulatorApp, http: httpx.Client, sleeps: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    app.faults.fail_next(2, TOKEN, kind="drop")
    assert_token(app, provider(http, sleeps, monkeypatch).get_token(SCOPE))
    assert statuses(app, TOKEN) == [0, 0, 200]


@pytest.mark.parametrize("body", ["odata", "oauth", "html"])
def test_token_endpoint_429_past_the_budget_is_a_clear_message(
    app: EmulatorApp, http: httpx.Client, sleeps: list[float], monkeypatch: pytest.MonkeyPatch, body: str
) -> None:
    # "odata": the nested {"error": {"code", "message"}} body a gateway in front may answer with.
    app.faults.add("throttle", TOKEN, retry_after=1, error_body=body)
    with pytest.raises(AuthUnavailableError) as info:
        provider(http, sleeps, monkeypatch, max_retries=2).get_token(SCOPE)
    text = str(info.value)
    assert text.startswith("auth profile 'pipeline' (client_secret): POST " + AUTHORITY + TOKEN + ": HTTP 429")
    assert "gave up after 3 attempt(s)" in text
    assert "MSAL" not in text and "sequence item" not in text and "{" not in text
    assert SECRET not in text
    if body == "odata":
        assert "0x80072322: Number of requests exceeded the limit" in text
    if body == "oauth":
        assert "temporarily_unavailable: AADSTS90055" in text


def test_oidc_discovery_500_is_a_clear_message(
    app: EmulatorApp, http: httpx.Client, sleeps: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    app.faults.add("error", DISCOVERY, status=500)
    with pytest.raises(AuthUnavailableError) as info:
        provider(http, sleeps, monkeypatch, max_retries=2).get_token(SCOPE)
    text = str(info.value)
    assert f"GET {AUTHORITY}{DISCOVERY}: HTTP 500 server_error: AADSTS90033" in text
    assert "gave up after 3 attempt(s)" in text
    assert statuses(app, DISCOVERY) == [500, 500, 500]


def test_oidc_discovery_500_then_200_is_retried(
    app: EmulatorApp, http: httpx.Client, sleeps: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    app.faults.fail_next(1, DISCOVERY, kind="error", status=500, error_body="html")
    assert_token(app, provider(http, sleeps, monkeypatch).get_token(SCOPE))
    assert statuses(app, DISCOVERY) == [500, 200]


MALFORMED: list[tuple[str, str, dict[str, Any], str]] = [
    ("token html", TOKEN, {"shape": "html"}, "the body is HTML or XML (text/html), not JSON"),
    ("token empty", TOKEN, {"shape": "empty"}, "the body is empty"),
    ("token null", TOKEN, {"shape": "null"}, "expected an object (token answer), got null"),
    ("token truncated", TOKEN, {"shape": "truncated"}, "the JSON ends before it is complete"),
    ("token without access_token", TOKEN, {"shape": "missing_field", "key_path": "access_token"},
     "access_token: missing"),
    ("access_token not a string", TOKEN, {"shape": "wrong_type", "key_path": "access_token", "value": 5},
     "access_token: expected a string, got an integer"),
    ("expires_in not seconds", TOKEN, {"shape": "wrong_type", "key_path": "expires_in", "value": "soon"},
     "expires_in: expected a number of seconds, got a string"),
    ("token deep", TOKEN, {"shape": "deep"}, "nested deeper than 32 levels"),
    ("discovery html", DISCOVERY, {"shape": "html"}, "the body is HTML or XML"),
    ("discovery null", DISCOVERY, {"shape": "null"}, "expected an object (OpenID configuration), got null"),
    ("discovery without token_endpoint", DISCOVERY, {"shape": "missing_field", "key_path": "token_endpoint"},
     "token_endpoint: missing"),
]


@pytest.mark.parametrize(("name", "path", "options", "problem"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_identity_answer_is_a_clear_message(
    app: EmulatorApp, http: httpx.Client, sleeps: list[float], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, name: str, path: str, options: dict[str, Any], problem: str,
) -> None:
    app.faults.add("malformed", path, **options)
    with pytest.raises(AuthUnavailableError) as info:
        provider(http, sleeps, monkeypatch).get_token(SCOPE)
    text = str(info.value)
    assert text.startswith("auth profile 'pipeline' (client_secret): ")
    assert f"{AUTHORITY}{path}: HTTP 200: connref cannot read this answer: " in text
    assert problem in text
    assert SECRET not in text
    # MSAL never got to parse it, so it logged no traceback of its own.
    assert not [r for r in caplog.records if r.exc_info]


def test_refusal_is_still_a_plain_auth_error(
    app: EmulatorApp, http: httpx.Client, sleeps: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKEN_FAULTS_SECRET", "wrong")
    p = provider(http, sleeps, monkeypatch)
    monkeypatch.setenv("TOKEN_FAULTS_SECRET", "wrong")
    with pytest.raises(AuthError) as info:
        p.get_token(SCOPE)
    assert not isinstance(info.value, AuthUnavailableError)
    assert "AADSTS7000215" in str(info.value)
    assert sleeps == []


# --------------------------------------------------------------------------- an error that echoes the request

#: A secret with every character form-urlencoding changes: quote_plus and quote each send it otherwise.
AWKWARD_SECRET = "Zq8Q~abc+def/ghi=jk%lm&no"


def assert_redacted(text: str, secret: str) -> None:
    for form in (secret, quote_plus(secret), quote(secret), quote(secret, safe="")):
        assert form not in text, f"the secret leaked as {form!r}: {text}"
    assert "<redacted>" in text


@pytest.mark.parametrize(("status", "body"), [(400, "route"), (401, "route"), (400, "odata"), (500, "route"),
                                              (503, "odata")],
                         ids=["400-oauth", "401-oauth", "400-other-shape", "500-past-the-retries",
                              "503-other-shape-past-the-retries"])
def test_a_token_error_that_echoes_the_request_never_shows_the_secret(
    app: EmulatorApp, http: httpx.Client, sleeps: list[float], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, status: int, body: str,
) -> None:
    """The token endpoint answers with the form it was sent (client_secret=<urlencoded>&scope=...) as its
    error: what reaches MSAL (an OAuth error) and what does not (another shape, a 5xx past the retries) are
    each said without the secret, in any encoding it went in."""
    app.faults.add("error", TOKEN, status=status, error_body=body, echo_request=True)
    p = provider(http, sleeps, monkeypatch, max_retries=1)
    monkeypatch.setenv("TOKEN_FAULTS_SECRET", AWKWARD_SECRET)  # read at the first token request
    with pytest.raises(AuthError) as info:
        p.get_token(SCOPE)
    text = str(info.value)
    assert text.startswith("auth profile 'pipeline' (client_secret): ")
    assert "client_secret=<redacted>" in text  # the echo was there, and it was redacted
    assert_redacted(text, AWKWARD_SECRET)
    for record in caplog.records:
        assert_redacted(record.getMessage() + "<redacted>", AWKWARD_SECRET)


# --------------------------------------------------------------------------- the admin connection list


def connections_session(app: EmulatorApp, http: httpx.Client, sleeps: list[float],
                        monkeypatch: pytest.MonkeyPatch) -> Any:
    """A session whose connections client asks the identity platform for a separate admin-scope token
    (as against the real Power Apps admin route), through MSAL and the emulator's token endpoint."""
    from builders import sample_config

    from reconciler.api.client import POWERAPPS_SCOPE, POWERPLATFORM_SCOPE, ConnectionsClient
    from reconciler.api.session import EnvSession

    tokens = provider(http, sleeps, monkeypatch, max_retries=1)
    config = sample_config(Sample.URL, {})
    env = config.environments["dev"]
    policy = RetryPolicy(sleep=sleeps.append, jitter=lambda: 0.0, max_retries=1)
    conns = ConnectionsClient(Sample.URL, tokens, http=http, scope=POWERPLATFORM_SCOPE,
                              environment_id=Sample.ENVIRONMENT_ID, admin_scope=POWERAPPS_SCOPE, retry=policy)
    from reconciler.api.client import DataverseClient

    dv = DataverseClient(Sample.URL, tokens, http=http, scope=SCOPE, retry=policy)
    return EnvSession("dev", env, dv, conns, http, tokens)


def test_transient_token_failure_on_the_admin_list_does_not_fall_back(
    app: EmulatorApp, http: httpx.Client, sleeps: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    from reconciler.api.live import read_connections

    for a in app.store.data["applications"]:
        a["management_app"] = True
    session = connections_session(app, http, sleeps, monkeypatch)
    # The admin-scope token is asked for first: its two attempts fail, the next token request would not.
    app.faults.fail_next(2, TOKEN, kind="error", status=503)
    with pytest.raises(AuthUnavailableError, match="HTTP 503"):
        read_connections(session)
    assert not [e for e in app.log if e.path.startswith("/connectivity/")]  # no silent fallback


def test_transient_failure_of_the_admin_list_itself_does_not_fall_back(
    app: EmulatorApp, http: httpx.Client, sleeps: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    from reconciler.api.live import read_connections
    from reconciler.errors import TransientError

    for a in app.store.data["applications"]:
        a["management_app"] = True
    session = connections_session(app, http, sleeps, monkeypatch)
    app.faults.add("error", "/providers/Microsoft.PowerApps/scopes/admin/*", status=503)
    with pytest.raises(TransientError):
        read_connections(session)
    assert not [e for e in app.log if e.path.startswith("/connectivity/")]


def test_a_refused_admin_list_still_falls_back_to_the_callers_list(
    app: EmulatorApp, http: httpx.Client, sleeps: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    from reconciler.api.live import read_connections

    session = connections_session(app, http, sleeps, monkeypatch)  # not a management app: 403
    items, scope = read_connections(session)
    assert scope == "user"
    assert [c["name"] for c in items] == [Sample.CONN_DV_SVC]


# --------------------------------------------------------------------------- the CI systems' OIDC token endpoints

GH_REQUEST_TOKEN = "token-faults-github-request-token"
ADO_ACCESS_TOKEN = "token-faults-azure-devops-access-token"
GH_SUBJECT = "repo:contoso/flows:ref:refs/heads/main"
ADO_ORG = "5f0c7e2a-3b1d-4c9e-8a7f-6e5d4c3b2a10"
ADO_CONNECTION = "7c2b8d3e-1f4a-4b6c-9d8e-0a1b2c3d4e5f"
ADO_SUBJECT = "sc://contoso/flows/connref-prod"
GITHUB_OIDC = "/_oidc/github/token"
ADO_OIDC = "/_oidc/ado/contoso/flows/_apis/distributedtask/hubs/build/plans/p1/jobs/j1/oidctoken"


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def federated(app: EmulatorApp, http: httpx.Client, sleeps: list[float], monkeypatch: pytest.MonkeyPatch,
              ci: str, **retry: Any) -> Any:
    """A ``federated`` provider for GitHub Actions or Azure DevOps (``ci``), whose OIDC token endpoint is the
    emulator's: the application trusts both issuers."""
    data = app.store.data
    data["applications"][0]["federated_credentials"] = [
        {"issuer": "https://token.actions.githubusercontent.com", "subject": GH_SUBJECT,
         "audience": "api://AzureADTokenExchange"},
        {"issuer": f"https://vstoken.dev.azure.com/{ADO_ORG}", "subject": ADO_SUBJECT,
         "audience": "api://AzureADTokenExchange"},
    ]
    data["oidc"] = {
        "github": {"runs": [{"request_token_sha256": _sha(GH_REQUEST_TOKEN), "subject": GH_SUBJECT}]},
        "azure_devops": {"organization_id": ADO_ORG, "access_token_sha256": [_sha(ADO_ACCESS_TOKEN)],
                         "service_connections": [{"id": ADO_CONNECTION, "subject": ADO_SUBJECT}]},
    }
    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_URL", f"{AUTHORITY}{GITHUB_OIDC}?api-version=2.0")
    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN", GH_REQUEST_TOKEN)
    monkeypatch.setenv("SYSTEM_OIDCREQUESTURI", f"{AUTHORITY}{ADO_OIDC}")
    monkeypatch.setenv("SYSTEM_ACCESSTOKEN", ADO_ACCESS_TOKEN)
    options: dict[str, Any] = {"federated_provider": ci, "authority_host": AUTHORITY}
    if ci == "azure_devops":
        options["azure_devops_service_connection_id"] = ADO_CONNECTION
    profile = AuthProfile(name="pipeline", method="federated", tenant_id=Sample.TENANT_ID,
                          client_id=Sample.APP_CLIENT_ID, options=options)
    policy = RetryPolicy(sleep=sleeps.append, jitter=lambda: 0.0, **retry)
    return provider_for(profile, http_client=http, retry=policy)


CI_ENDPOINTS = [("github", GITHUB_OIDC), ("azure_devops", ADO_OIDC)]


@pytest.mark.parametrize(("ci", "path"), CI_ENDPOINTS, ids=["github", "azure_devops"])
@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_ci_oidc_endpoint_5xx_is_retried(
    app: EmulatorApp, http: httpx.Client, sleeps: list[float], monkeypatch: pytest.MonkeyPatch,
    ci: str, path: str, status: int,
) -> None:
    # Asking the CI system for a token changes nothing, so its endpoint is retried like the token endpoint
    # (the Azure DevOps request is a POST).
    app.faults.fail_next(2, path, kind="error", status=status)
    assert_token(app, federated(app, http, sleeps, monkeypatch, ci).get_token(SCOPE))
    assert statuses(app, path) == [status, status, 200]
    assert sleeps == [0.5, 1.0]


@pytest.mark.parametrize(("ci", "path"), CI_ENDPOINTS, ids=["github", "azure_devops"])
def test_ci_oidc_endpoint_429_and_dropped_connections_are_retried(
    app: EmulatorApp, http: httpx.Client, sleeps: list[float], monkeypatch: pytest.MonkeyPatch, ci: str, path: str,
) -> None:
    app.faults.fail_next(1, path, kind="throttle", retry_after=3)
    app.faults.fail_next(1, path, kind="drop")
    assert_token(app, federated(app, http, sleeps, monkeypatch, ci).get_token(SCOPE))
    assert statuses(app, path) == [429, 0, 200]
    assert sleeps[0] == 3.0


OIDC_MALFORMED: list[tuple[str, dict[str, Any], str]] = [
    ("html", {"shape": "html"}, "the body is HTML or XML (text/html), not JSON"),
    ("empty", {"shape": "empty"}, "the body is empty"),
    ("null", {"shape": "null"}, "expected an object"),
    ("truncated", {"shape": "truncated"}, "the JSON ends before it is complete"),
]


@pytest.mark.parametrize(("ci", "path"), CI_ENDPOINTS, ids=["github", "azure_devops"])
@pytest.mark.parametrize(("name", "options", "problem"), OIDC_MALFORMED, ids=[m[0] for m in OIDC_MALFORMED])
def test_ci_oidc_endpoint_malformed_answer_is_a_clear_message(
    app: EmulatorApp, http: httpx.Client, sleeps: list[float], monkeypatch: pytest.MonkeyPatch,
    ci: str, path: str, name: str, options: dict[str, Any], problem: str,
) -> None:
    app.faults.add("malformed", path, **options)
    with pytest.raises(AuthUnavailableError) as info:
        federated(app, http, sleeps, monkeypatch, ci).get_token(SCOPE)
    text = str(info.value)
    assert text.startswith("auth profile 'pipeline' (federated): ")
    assert f"{AUTHORITY}{path}: HTTP 200: connref cannot read this answer: " in text
    assert problem in text
    assert GH_REQUEST_TOKEN not in text and ADO_ACCESS_TOKEN not in text


@pytest.mark.parametrize(("ci", "path", "key"),
                         [("github", GITHUB_OIDC, "value"), ("azure_devops", ADO_OIDC, "oidcToken")],
                         ids=["github", "azure_devops"])
def test_ci_oidc_answer_without_its_token_is_a_clear_message(
    app: EmulatorApp, http: httpx.Client, sleeps: list[float], monkeypatch: pytest.MonkeyPatch,
    ci: str, path: str, key: str,
) -> None:
    app.faults.add("malformed", path, shape="missing_field", key_path=key)
    with pytest.raises(AuthUnavailableError, match=f"{key}: missing"):
        federated(app, http, sleeps, monkeypatch, ci).get_token(SCOPE)
    app.faults.clear()
    app.faults.add("malformed", path, shape="wrong_type", key_path=key, value=7)
    with pytest.raises(AuthUnavailableError, match=f"{key}: expected a string, got an integer"):
        federated(app, http, sleeps, monkeypatch, ci).get_token(SCOPE)


@pytest.mark.parametrize(("ci", "path"), CI_ENDPOINTS, ids=["github", "azure_devops"])
def test_ci_oidc_endpoint_unavailable_past_the_budget(
    app: EmulatorApp, http: httpx.Client, sleeps: list[float], monkeypatch: pytest.MonkeyPatch, ci: str, path: str,
) -> None:
    app.faults.add("unavailable", path)
    with pytest.raises(AuthUnavailableError) as info:
        federated(app, http, sleeps, monkeypatch, ci, max_retries=2).get_token(SCOPE)
    text = str(info.value)
    assert f"{AUTHORITY}{path}: HTTP 503" in text and "gave up after 3 attempt(s)" in text
    assert statuses(app, path) == [503, 503, 503]
    assert GH_REQUEST_TOKEN not in text and ADO_ACCESS_TOKEN not in text


@pytest.mark.parametrize(("ci", "path"), CI_ENDPOINTS, ids=["github", "azure_devops"])
def test_ci_oidc_refusal_is_a_plain_auth_error(
    app: EmulatorApp, http: httpx.Client, sleeps: list[float], monkeypatch: pytest.MonkeyPatch, ci: str, path: str,
) -> None:
    provider = federated(app, http, sleeps, monkeypatch, ci)
    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "not-the-run-token")
    monkeypatch.setenv("SYSTEM_ACCESSTOKEN", "not-the-access-token")
    with pytest.raises(AuthError) as info:
        provider.get_token(SCOPE)
    assert not isinstance(info.value, AuthUnavailableError)
    assert "answered 401" in str(info.value)
    assert sleeps == [] and statuses(app, path) == [401]
