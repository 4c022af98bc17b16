"""Contract tests of the emulated token endpoint and its discovery documents, OIDC issuers and
managed-identity endpoint, over loopback HTTP with httpx (the MSAL round trips are in tests/test_auth.py).

Errors must have the documented AADSTS shape and never echo the secret or assertion sent."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt as pyjwt
import pytest

from reconciler.emulator import jwt
from reconciler.emulator.factory import Sample as S

# Against a real environment the token endpoint is Entra's (login.microsoftonline.com), not the
# environment's origin, and these tests need the sample application's secret and the emulator's key.
pytestmark = pytest.mark.emulator_only(reason="the emulated Entra token endpoint at the environment's origin")

PP = "https://api.powerplatform.com"
TOKEN_PATH = f"/{S.TENANT_ID}/oauth2/v2.0/token"


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def _secret_form(secret: str = S.APP_SECRET, scope: str = S.URL + "/.default", **kv: str) -> dict[str, str]:
    form = {
        "grant_type": "client_credentials",
        "client_id": S.APP_CLIENT_ID,
        "client_secret": secret,
        "scope": scope,
    }
    form.update(kv)
    return form


def _aad_error(r: httpx.Response, status: int, error: str, code: int) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == error
    assert body["error_codes"] == [code]
    assert body["error_description"].startswith(f"AADSTS{code}: ")
    assert "Trace ID: " in body["error_description"] and "Correlation ID: " in body["error_description"]
    assert body["error_uri"].endswith(f"?code={code}")
    assert {"timestamp", "trace_id", "correlation_id"} <= set(body)
    return str(body["error_description"])


# --------------------------------------------------------------------------- discovery


def test_openid_configuration_uses_the_request_origin(emulator: Any, http: httpx.Client) -> None:
    r = http.get(f"{emulator.url}/{S.TENANT_ID}/v2.0/.well-known/openid-configuration")
    assert r.status_code == 200
    doc = r.json()
    assert doc["token_endpoint"] == emulator.url + TOKEN_PATH
    assert doc["jwks_uri"] == f"{emulator.url}/{S.TENANT_ID}/discovery/v2.0/keys"
    assert doc["issuer"] == f"{emulator.url}/{S.TENANT_ID}/v2.0"
    assert "private_key_jwt" in doc["token_endpoint_auth_methods_supported"]
    keys = http.get(doc["jwks_uri"]).json()["keys"]
    assert keys[0]["kty"] == "RSA" and keys[0]["kid"] == "emulator" and "d" not in keys[0]
    # A token from the endpoint verifies with the published key.
    token = http.post(doc["token_endpoint"], data=_secret_form()).json()["access_token"]
    key = pyjwt.PyJWK(keys[0]).key
    claims = pyjwt.decode(token, key, algorithms=["RS256"], audience=S.URL)
    assert (
        claims["appid"] == S.APP_CLIENT_ID
        and claims["oid"] == S.APP_OBJECT_ID
        and claims["tid"] == S.TENANT_ID
    )


def test_unknown_tenant_discovery_is_aadsts90002(emulator: Any, http: httpx.Client) -> None:
    r = http.get(f"{emulator.url}/00000000-0000-4000-8000-000000000000/v2.0/.well-known/openid-configuration")
    _aad_error(r, 400, "invalid_tenant", 90002)


def test_instance_discovery(emulator: Any, http: httpx.Client) -> None:
    host = emulator.url.split("//")[1]
    r = http.get(
        f"{emulator.url}/common/discovery/instance",
        params={
            "api-version": "1.1",
            "authorization_endpoint": f"https://127.0.0.1/{S.TENANT_ID}/oauth2/v2.0/authorize",
        },
    )
    assert r.status_code == 200
    body = r.json()
    assert (
        body["tenant_discovery_endpoint"]
        == f"{emulator.url}/{S.TENANT_ID}/v2.0/.well-known/openid-configuration"
    )
    assert body["metadata"][0]["aliases"] == [host]
    other = http.get(
        f"{emulator.url}/common/discovery/instance",
        params={"authorization_endpoint": "https://elsewhere.example/t/oauth2/v2.0/authorize"},
    )
    assert other.status_code == 400 and other.json()["error"] == "invalid_instance"


# --------------------------------------------------------------------------- token endpoint


def test_client_secret_token_has_audience_identity_and_expiry(emulator: Any, http: httpx.Client) -> None:
    r = http.post(emulator.url + TOKEN_PATH, data=_secret_form(scope=PP + "/.default"))
    assert r.status_code == 200
    body = r.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3599
    who = jwt.verify_bearer(emulator.store.data["signing_key_pem"], "Bearer " + body["access_token"], [PP])
    assert (who.app_id, who.object_id, who.audience) == (S.APP_CLIENT_ID, S.APP_OBJECT_ID, PP)
    claims = pyjwt.decode(body["access_token"], options={"verify_signature": False})
    assert 3590 <= claims["exp"] - time.time() <= 3600


def test_the_token_reads_whoami(emulator: Any, http: httpx.Client) -> None:
    token = http.post(emulator.url + TOKEN_PATH, data=_secret_form(scope=emulator.url + "/.default")).json()
    r = http.get(emulator.api + "WhoAmI", headers={"Authorization": "Bearer " + token["access_token"]})
    assert r.status_code == 200
    assert r.json()["UserId"] == S.APP_USER_ID


def test_wrong_secret_is_aadsts7000215_without_the_secret(emulator: Any, http: httpx.Client) -> None:
    wrong = "canary-" + hashlib.sha256(b"x").hexdigest()
    r = http.post(emulator.url + TOKEN_PATH, data=_secret_form(secret=wrong))
    desc = _aad_error(r, 401, "invalid_client", 7000215)
    assert wrong not in r.text and S.APP_SECRET not in r.text
    assert S.APP_CLIENT_ID in desc


def test_client_secret_basic_is_accepted(emulator: Any, http: httpx.Client) -> None:
    form = {"grant_type": "client_credentials", "scope": PP + "/.default"}
    r = http.post(emulator.url + TOKEN_PATH, data=form, auth=(S.APP_CLIENT_ID, S.APP_SECRET))
    assert r.status_code == 200


@pytest.mark.parametrize(
    ("change", "status", "error", "code"),
    [
        ({"client_id": "99999999-0000-4000-8000-000000000000"}, 400, "unauthorized_client", 700016),
        ({"scope": PP}, 400, "invalid_scope", 1002012),
        ({"scope": f"{PP}/.default {S.URL}/.default"}, 400, "invalid_scope", 70011),
        ({"scope": "https://unknown.example.com/.default"}, 400, "invalid_resource", 500011),
        ({"grant_type": "password"}, 400, "unsupported_grant_type", 70003),
        ({"client_secret": ""}, 401, "invalid_client", 7000218),
    ],
)
def test_documented_errors(
    emulator: Any, http: httpx.Client, change: dict[str, str], status: int, error: str, code: int
) -> None:
    _aad_error(http.post(emulator.url + TOKEN_PATH, data=_secret_form(**change)), status, error, code)


def test_unknown_tenant_token_request(emulator: Any, http: httpx.Client) -> None:
    r = http.post(
        f"{emulator.url}/00000000-0000-4000-8000-000000000000/oauth2/v2.0/token", data=_secret_form()
    )
    _aad_error(r, 400, "invalid_request", 90002)


def test_get_on_token_endpoint_is_refused(emulator: Any, http: httpx.Client) -> None:
    _aad_error(http.get(emulator.url + TOKEN_PATH), 405, "invalid_request", 900561)


def _assertion_form(assertion: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_id": S.APP_CLIENT_ID,
        "scope": PP + "/.default",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }


@pytest.mark.emulator_only
def test_federated_assertion_rules(emulator: Any, http: httpx.Client) -> None:
    app = next(a for a in emulator.store.data["applications"] if a["client_id"] == S.APP_CLIENT_ID)
    app["federated_credentials"] = [
        {
            "issuer": "https://token.actions.githubusercontent.com",
            "subject": "repo:contoso/flows:environment:prod",
            "audience": "api://AzureADTokenExchange",
        }
    ]
    key = emulator.store.data["signing_key_pem"]
    now = int(time.time())

    def assertion(**claims: Any) -> str:
        base = {
            "iss": "https://token.actions.githubusercontent.com",
            "sub": "repo:contoso/flows:environment:prod",
            "aud": "api://AzureADTokenExchange",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
        }
        base.update(claims)
        return pyjwt.encode(base, key, algorithm="RS256")

    ok = http.post(emulator.url + TOKEN_PATH, data=_assertion_form(assertion()))
    assert ok.status_code == 200
    expired = assertion(exp=now - 3600, nbf=now - 7200)
    r = http.post(emulator.url + TOKEN_PATH, data=_assertion_form(expired))
    _aad_error(r, 401, "invalid_client", 700024)
    assert expired not in r.text
    # Subject matching is case-sensitive, as Entra's is.
    desc = _aad_error(
        http.post(
            emulator.url + TOKEN_PATH,
            data=_assertion_form(assertion(sub="repo:Contoso/flows:environment:prod")),
        ),
        400,
        "invalid_request",
        70021,
    )
    assert "Assertion Subject: 'repo:Contoso/flows:environment:prod'" in desc
    _aad_error(
        http.post(emulator.url + TOKEN_PATH, data=_assertion_form(assertion(aud="api://Other"))),
        400,
        "invalid_request",
        70021,
    )
    # Signed by some other key: the signature check fails first.
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = pyjwt.encode(
        {"iss": "https://token.actions.githubusercontent.com", "sub": "x", "aud": "y", "exp": now + 300},
        other,
        algorithm="RS256",
    )
    _aad_error(
        http.post(emulator.url + TOKEN_PATH, data=_assertion_form(forged)), 401, "invalid_client", 700027
    )
    _aad_error(
        http.post(emulator.url + TOKEN_PATH, data=_assertion_form("not-a-jwt")), 400, "invalid_request", 50027
    )


@pytest.mark.emulator_only
def test_short_lived_tokens_by_setting(emulator: Any, http: httpx.Client) -> None:
    emulator.app.settings["token_lifetime_seconds"] = 5
    body = http.post(emulator.url + TOKEN_PATH, data=_secret_form()).json()
    assert body["expires_in"] == 5
    claims = pyjwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 5


# ------------------------------------------------------------------------- OIDC issuers, managed identity


def _sha(v: str) -> str:
    return hashlib.sha256(v.encode()).hexdigest()


@pytest.mark.emulator_only
def test_github_and_azure_devops_issuers(emulator: Any, http: httpx.Client) -> None:
    emulator.store.data["oidc"] = {
        "github": {
            "runs": [
                {
                    "request_token_sha256": _sha("gh-run-token"),
                    "subject": "repo:contoso/flows:ref:refs/heads/main",
                }
            ]
        },
        "azure_devops": {
            "organization_id": "5f0c7e2a-3b1d-4c9e-8a7f-6e5d4c3b2a10",
            "access_token_sha256": [_sha("ado-token")],
            "service_connections": [{"id": "sc-1", "subject": "sc://contoso/flows/prod"}],
        },
    }
    r = http.get(
        f"{emulator.url}/_oidc/github/token",
        params={"audience": "api://AzureADTokenExchange"},
        headers={"Authorization": "Bearer gh-run-token"},
    )
    assert r.status_code == 200 and r.json()["count"] == 1
    claims = pyjwt.decode(r.json()["value"], options={"verify_signature": False})
    assert claims["iss"] == "https://token.actions.githubusercontent.com"
    assert claims["sub"] == "repo:contoso/flows:ref:refs/heads/main"
    assert claims["aud"] == "api://AzureADTokenExchange" and claims["repository"] == "contoso/flows"
    default_aud = http.get(
        f"{emulator.url}/_oidc/github/token", headers={"Authorization": "Bearer gh-run-token"}
    )
    assert (
        pyjwt.decode(default_aud.json()["value"], options={"verify_signature": False})["aud"]
        == "https://github.com/contoso"
    )
    assert (
        http.get(f"{emulator.url}/_oidc/github/token", headers={"Authorization": "Bearer nope"}).status_code
        == 401
    )

    ado_url = (
        f"{emulator.url}/_oidc/ado/contoso/flows/_apis/distributedtask/hubs/build/plans/p/jobs/j/oidctoken"
    )
    r = http.post(
        ado_url,
        params={"api-version": "7.1", "serviceConnectionId": "sc-1"},
        headers={"Authorization": "Bearer ado-token"},
    )
    assert r.status_code == 200
    claims = pyjwt.decode(r.json()["oidcToken"], options={"verify_signature": False})
    assert claims["iss"] == "https://vstoken.dev.azure.com/5f0c7e2a-3b1d-4c9e-8a7f-6e5d4c3b2a10"
    assert claims["sub"] == "sc://contoso/flows/prod" and claims["aud"] == "api://AzureADTokenExchange"
    assert (
        http.post(
            ado_url,
            params={"api-version": "7.1", "serviceConnectionId": "sc-2"},
            headers={"Authorization": "Bearer ado-token"},
        ).status_code
        == 400
    )
    assert (
        http.post(
            ado_url,
            params={"api-version": "7.1", "serviceConnectionId": "sc-1"},
            headers={"Authorization": "Bearer wrong"},
        ).status_code
        == 401
    )


@pytest.mark.emulator_only
def test_managed_identity_endpoints(emulator: Any, http: httpx.Client) -> None:
    app = next(a for a in emulator.store.data["applications"] if a["client_id"] == S.APP_CLIENT_ID)
    emulator.store.data["oidc"] = {"managed_identity": {"identity_header_sha256": [_sha("idh")]}}
    url = f"{emulator.url}/msi/token"
    params = {"api-version": "2019-08-01", "resource": S.URL}
    # Not a managed identity yet: no token.
    r = http.get(url, params=params, headers={"X-IDENTITY-HEADER": "idh"})
    assert r.status_code == 400 and "access_token" not in r.json()
    app["managed_identity"] = True
    r = http.get(url, params=params, headers={"X-IDENTITY-HEADER": "idh"})
    assert r.status_code == 200
    body = r.json()
    assert body["resource"] == S.URL and body["token_type"] == "Bearer"
    assert abs(int(body["expires_on"]) - (time.time() + 3599)) < 5
    who = jwt.verify_bearer(emulator.store.data["signing_key_pem"], "Bearer " + body["access_token"], [S.URL])
    assert who.app_id == S.APP_CLIENT_ID
    assert http.get(url, params=params, headers={"X-IDENTITY-HEADER": "wrong"}).status_code == 401
    r = http.get(
        url,
        params={**params, "client_id": "99999999-0000-4000-8000-000000000000"},
        headers={"X-IDENTITY-HEADER": "idh"},
    )
    assert r.status_code == 400
    imds = http.get(
        f"{emulator.url}/metadata/identity/oauth2/token",
        params={"api-version": "2018-02-01", "resource": PP},
        headers={"Metadata": "true"},
    )
    assert imds.status_code == 200 and int(imds.json()["expires_in"]) == 3599


def test_a_token_for_microsoft_graph_is_issued_to_any_application(emulator: Any, http: httpx.Client) -> None:
    # What the application may read is Graph's own check (its consented permissions), not the token endpoint's.
    r = http.post(emulator.url + TOKEN_PATH, data=_secret_form(scope="https://graph.microsoft.com/.default"))
    assert r.status_code == 200, r.text
    assert r.json()["access_token"]
