"""connref's client-side authentication, end to end through MSAL (no mock) against the emulator's token
endpoint: over loopback https with a throwaway CA, and in-process for ``local:`` environments.

Every failure must be an AuthError that names the profile and what to check, and never contains the
secret, token or assertion involved.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from reconciler.api.auth import (
    CLOUDS,
    CachingTokenProvider,
    StaticTokenProvider,
    connections_scope,
    dataverse_scope,
    provider_for,
)
from reconciler.domain.model import AuthProfile
from reconciler.emulator import factory, jwt
from reconciler.emulator.app import EmulatorApp
from reconciler.emulator.store import EnvironmentStore, new_environment_data
from reconciler.emulator.tls import TlsFiles, make_test_ca, serve_https
from reconciler.errors import AuthError

TENANT = "11111111-2222-3333-4444-555555555555"
ENV_URL = "https://contoso-dev.crm4.dynamics.com"
SCOPE = dataverse_scope(ENV_URL)
SECRET = "canary-secret-" + uuid.uuid4().hex
GH_REQUEST_TOKEN = "canary-ghreq-" + uuid.uuid4().hex
ADO_ACCESS_TOKEN = "canary-ado-" + uuid.uuid4().hex
IDENTITY_HEADER = "canary-idh-" + uuid.uuid4().hex
PFX_PASSWORD = "canary-pfx-" + uuid.uuid4().hex
GH_SUBJECT = "repo:contoso/flows:ref:refs/heads/main"
ADO_CONNECTION = "7c2b8d3e-1f4a-4b6c-9d8e-0a1b2c3d4e5f"
ADO_SUBJECT = "sc://contoso/flows/connref-prod"
ADO_ORG = "5f0c7e2a-3b1d-4c9e-8a7f-6e5d4c3b2a10"


def _sha(v: str) -> str:
    return hashlib.sha256(v.encode()).hexdigest()


def _self_signed(cn: str) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = time.time()
    import datetime

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime.fromtimestamp(now - 3600, datetime.UTC))
        .not_valid_after(datetime.datetime.fromtimestamp(now + 86400, datetime.UTC))
        .sign(key, hashes.SHA256())
    )
    return key, cert


class Counting:
    """WSGI middleware that counts requests per path, so tests assert request counts."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self.paths: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        self.paths.append(environ.get("PATH_INFO", ""))
        return self.app(environ, start_response)

    def count(self, suffix: str) -> int:
        return sum(1 for p in self.paths if p.endswith(suffix))


class World:
    """One emulated tenant with an application per auth method, served over https."""

    def __init__(self, tmp: str, tls: TlsFiles) -> None:
        self.tmp = tmp
        self.key_pem = jwt.new_signing_key_pem()
        d = new_environment_data(tenant_id=TENANT, url=ENV_URL, signing_key_pem=self.key_pem)
        self.secret_app = factory.add_application(d, display_name="pipeline", secrets=[SECRET])
        # Certificate app: one certificate registered as a certificate, one as public key + thumbprints.
        self.cert_app = factory.add_application(d, display_name="cert")
        k1, c1 = _self_signed("connref-cert-1")
        k2, c2 = _self_signed("connref-cert-2")
        self.cert_app["certificates"] = [
            {"certificate_pem": c1.public_bytes(serialization.Encoding.PEM).decode()},
            {
                "thumbprint": c2.fingerprint(hashes.SHA1()).hex(),
                "thumbprint_sha256": c2.fingerprint(hashes.SHA256()).hex(),
                "public_key_pem": k2.public_key()
                .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
                .decode(),
            },
        ]
        self.pem_path = os.path.join(tmp, "cert1.pem")
        with open(self.pem_path, "wb") as f:
            f.write(
                k1.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            f.write(c1.public_bytes(serialization.Encoding.PEM))
        self.pfx_path = os.path.join(tmp, "cert2.pfx")
        with open(self.pfx_path, "wb") as f:
            f.write(
                pkcs12.serialize_key_and_certificates(
                    b"c2", k2, c2, None, serialization.BestAvailableEncryption(PFX_PASSWORD.encode())
                )
            )
        k3, c3 = _self_signed("connref-unregistered")
        self.unknown_pem = os.path.join(tmp, "unknown.pem")
        with open(self.unknown_pem, "wb") as f:
            f.write(
                k3.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            f.write(c3.public_bytes(serialization.Encoding.PEM))
        self.unknown_thumbprint = c3.fingerprint(hashes.SHA1()).hex().upper()
        # Federated app: trusts the emulated GitHub and Azure DevOps issuers.
        self.fed_app = factory.add_application(d, display_name="federated")
        self.fed_app["federated_credentials"] = [
            {
                "issuer": "https://token.actions.githubusercontent.com",
                "subject": GH_SUBJECT,
                "audience": "api://AzureADTokenExchange",
            },
            {
                "issuer": f"https://vstoken.dev.azure.com/{ADO_ORG}",
                "subject": ADO_SUBJECT,
                "audience": "api://AzureADTokenExchange",
            },
        ]
        self.mi_system = factory.add_application(d, display_name="host identity", managed_identity=True)
        self.mi_user = factory.add_application(d, display_name="user identity", managed_identity=True)
        self.store = EnvironmentStore.from_dict(d)
        d["oidc"] = {
            "github": {"runs": [{"request_token_sha256": _sha(GH_REQUEST_TOKEN), "subject": GH_SUBJECT}]},
            "azure_devops": {
                "organization_id": ADO_ORG,
                "access_token_sha256": [_sha(ADO_ACCESS_TOKEN)],
                "service_connections": [{"id": ADO_CONNECTION, "subject": ADO_SUBJECT}],
            },
            "managed_identity": {
                "identity_header_sha256": [_sha(IDENTITY_HEADER)],
                "system_assigned_client_id": self.mi_system["client_id"],
            },
        }
        self.app = EmulatorApp(self.store)
        self.counting = Counting(self.app)
        self.server = serve_https(self.counting, tls)
        self.ca_pem = tls.ca_pem  # for clients that trust what SSL_CERT_FILE names
        self.base = self.server.base_url
        self.http = httpx.Client(verify=tls.client_context())

    def settings(self, **kv: Any) -> None:
        self.store.data["settings"].update(kv)
        if isinstance(getattr(self.app, "settings", None), dict):
            self.app.settings.update(kv)

    def profile(
        self, method: str, client_id: str | None = None, name: str = "pipeline", **options: Any
    ) -> AuthProfile:
        options.setdefault("authority_host", self.base)
        return AuthProfile(name=name, method=method, tenant_id=TENANT, client_id=client_id, options=options)

    def principal(self, token: str, audience: str = ENV_URL) -> Any:
        return jwt.verify_bearer(self.key_pem, "Bearer " + token, [audience])

    def close(self) -> None:
        self.http.close()
        self.server.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = str(tmp_path_factory.mktemp("auth"))
    w = World(tmp, make_test_ca(os.path.join(tmp, "tls")))
    yield w
    w.close()


@pytest.fixture(autouse=True)
def _reset_settings(world: World) -> Iterator[None]:
    yield
    for k in ("token_lifetime_seconds", "oidc_token_lifetime_seconds"):
        world.store.data["settings"].pop(k, None)
        if isinstance(getattr(world.app, "settings", None), dict):
            world.app.settings.pop(k, None)


def _assert_clean(message: str, *canaries: str) -> None:
    for c in canaries:
        assert c not in message


# --------------------------------------------------------------------------- every method, end to end


def test_client_secret_from_env_over_https(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNREF_CLIENT_SECRET", SECRET)
    p = provider_for(
        world.profile(
            "client_secret", world.secret_app["client_id"], client_secret_env="CONNREF_CLIENT_SECRET"
        ),
        http_client=world.http,
    )
    token = p.get_token(SCOPE)
    who = world.principal(token)
    assert who.app_id == world.secret_app["client_id"]
    assert who.object_id == world.secret_app["object_id"]
    assert who.tenant_id == TENANT
    # The connections API scope gives a token for that audience, not for Dataverse.
    cx = p.get_token(connections_scope())
    assert world.principal(cx, "https://api.powerplatform.com").audience == "https://api.powerplatform.com"
    with pytest.raises(Exception, match="audience"):
        world.principal(cx, ENV_URL)


def test_client_secret_from_file(world: World, tmp_path: Any) -> None:
    path = tmp_path / "secret.txt"
    path.write_text(SECRET + "\n")
    p = provider_for(
        world.profile("client_secret", world.secret_app["client_id"], client_secret_file=str(path)),
        http_client=world.http,
    )
    assert world.principal(p.get_token(SCOPE)).app_id == world.secret_app["client_id"]


def test_certificate_pem_signs_ps256_with_sha256_thumbprint(world: World) -> None:
    p = provider_for(
        world.profile("certificate", world.cert_app["client_id"], certificate_path=world.pem_path),
        http_client=world.http,
    )
    assert world.principal(p.get_token(SCOPE)).app_id == world.cert_app["client_id"]


def test_a_token_error_that_echoes_the_assertion_never_shows_it(world: World) -> None:
    """A certificate's signed assertion (a JWT, good for minutes) echoed in the token endpoint's OAuth error,
    which MSAL reads: redacted, as Dataverse's errors are (a 5xx past the retries always was)."""
    from reconciler.api.client import RetryPolicy

    rule = world.app.faults.add("error", f"/{TENANT}/oauth2/v2.0/token", status=400, echo_request=True)
    try:
        p = provider_for(
            world.profile("certificate", world.cert_app["client_id"], certificate_path=world.pem_path),
            http_client=world.http, retry=RetryPolicy(max_retries=1, sleep=lambda _s: None))
        with pytest.raises(AuthError) as info:
            p.get_token(SCOPE)
    finally:
        world.app.faults.clear()
    assert rule.fired >= 1
    text = str(info.value)
    assert "client_assertion=<redacted>" in text, text
    assert "eyJ" not in text


def test_certificate_pfx_with_password(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNREF_PFX_PASSWORD", PFX_PASSWORD)
    p = provider_for(
        world.profile(
            "certificate",
            world.cert_app["client_id"],
            certificate_path=world.pfx_path,
            certificate_password_env="CONNREF_PFX_PASSWORD",
        ),
        http_client=world.http,
    )
    assert world.principal(p.get_token(SCOPE)).object_id == world.cert_app["object_id"]


def test_federated_github_actions(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    # The real variable already carries a query string; the audience is appended to it.
    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_URL", f"{world.base}/_oidc/github/token?api-version=2.0")
    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN", GH_REQUEST_TOKEN)
    p = provider_for(
        world.profile("federated", world.fed_app["client_id"], federated_provider="github"),
        http_client=world.http,
    )
    assert world.principal(p.get_token(SCOPE)).app_id == world.fed_app["client_id"]


def test_federated_azure_devops(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "SYSTEM_OIDCREQUESTURI",
        f"{world.base}/_oidc/ado/contoso/flows/_apis/distributedtask/hubs/build/plans/p1/jobs/j1/oidctoken",
    )
    monkeypatch.setenv("SYSTEM_ACCESSTOKEN", ADO_ACCESS_TOKEN)
    p = provider_for(
        world.profile(
            "federated",
            world.fed_app["client_id"],
            federated_provider="azure_devops",
            azure_devops_service_connection_id=ADO_CONNECTION,
        ),
        http_client=world.http,
    )
    assert world.principal(p.get_token(SCOPE)).app_id == world.fed_app["client_id"]


def _github_token(world: World, audience: str = "api://AzureADTokenExchange") -> str:
    r = world.http.get(
        f"{world.base}/_oidc/github/token",
        params={"audience": audience},
        headers={"Authorization": f"Bearer {GH_REQUEST_TOKEN}"},
    )
    assert r.status_code == 200
    return str(r.json()["value"])


def test_federated_token_file_and_env(world: World, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "token"
    path.write_text(_github_token(world))
    p = provider_for(
        world.profile("federated", world.fed_app["client_id"], federated_token_file=str(path)),
        http_client=world.http,
    )
    assert world.principal(p.get_token(SCOPE)).app_id == world.fed_app["client_id"]
    monkeypatch.setenv("MY_OIDC_TOKEN", _github_token(world))
    p2 = provider_for(
        world.profile("federated", world.fed_app["client_id"], federated_token_env="MY_OIDC_TOKEN"),
        http_client=world.http,
    )
    assert world.principal(p2.get_token(SCOPE)).app_id == world.fed_app["client_id"]


def test_managed_identity_system_and_user_assigned(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{world.base}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", IDENTITY_HEADER)
    system = provider_for(world.profile("managed_identity"), http_client=world.http)
    assert world.principal(system.get_token(SCOPE)).app_id == world.mi_system["client_id"]
    user = provider_for(
        world.profile("managed_identity", managed_identity_client_id=world.mi_user["client_id"]),
        http_client=world.http,
    )
    assert world.principal(user.get_token(SCOPE)).app_id == world.mi_user["client_id"]


def test_managed_identity_for_an_app_without_identity_is_refused(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{world.base}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", IDENTITY_HEADER)
    p = provider_for(
        world.profile(
            "managed_identity", name="mi", managed_identity_client_id=world.secret_app["client_id"]
        ),
        http_client=world.http,
    )
    with pytest.raises(AuthError) as e:
        p.get_token(SCOPE)
    msg = str(e.value)
    assert "auth profile 'mi' (managed_identity)" in msg
    assert world.secret_app["client_id"] in msg
    _assert_clean(msg, IDENTITY_HEADER)


def _fake_az(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, script: str) -> str:
    """Put an ``az`` that runs ``script`` first on PATH; returns the file it records its arguments in."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    args_file = tmp_path / "az-args"
    az = bindir / "az"
    az.write_text(f"#!/bin/sh\necho \"$@\" > '{args_file}'\n{script}\n")
    az.chmod(az.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    return str(args_file)


def test_azure_cli(world: World, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    user_oid = str(uuid.uuid4())
    token = jwt.mint(
        world.key_pem, tenant_id=TENANT, object_id=user_oid, audience=ENV_URL, upn="maker1@contoso.com"
    )
    out = json.dumps(
        {"accessToken": token, "expires_on": int(time.time()) + 3600, "tenant": TENANT, "tokenType": "Bearer"}
    )
    args_file = _fake_az(tmp_path, monkeypatch, f"cat <<'EOF'\n{out}\nEOF")
    p = provider_for(world.profile("azure_cli", name="me"), http_client=world.http)
    got = p.get_token(SCOPE)
    assert world.principal(got).upn == "maker1@contoso.com"
    with open(args_file) as f:
        args = f.read().split()
    assert args[:4] == ["account", "get-access-token", "--resource", ENV_URL]
    assert args[args.index("--tenant") : args.index("--tenant") + 2] == ["--tenant", TENANT]
    assert p.get_token(SCOPE) == got  # cached: az is not run again for a valid token


def test_azure_cli_not_signed_in(world: World, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_az(tmp_path, monkeypatch, "echo \"ERROR: Please run 'az login' to setup account.\" >&2\nexit 1")
    p = provider_for(world.profile("azure_cli", name="me"), http_client=world.http)
    with pytest.raises(AuthError, match=r"auth profile 'me' \(azure_cli\).*az login"):
        p.get_token(SCOPE)


def test_access_token_from_env(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    token = jwt.mint(world.key_pem, tenant_id=TENANT, object_id=str(uuid.uuid4()), audience=ENV_URL)
    monkeypatch.setenv("CONNREF_TOKEN", token)
    p = provider_for(
        world.profile("access_token", name="ci", access_token_env="CONNREF_TOKEN"), http_client=world.http
    )
    assert isinstance(p, StaticTokenProvider)
    assert p.get_token(SCOPE) == token
    assert token not in repr(p)


def test_in_process_local_environment_needs_no_socket(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """``local:`` environments: the default authority host, served by the emulator app in-process."""
    counting = Counting(world.app)
    client = httpx.Client(transport=httpx.WSGITransport(app=counting))
    monkeypatch.setenv("CONNREF_CLIENT_SECRET", SECRET)
    profile = AuthProfile(
        name="pipeline",
        method="client_secret",
        tenant_id=TENANT,
        client_id=world.secret_app["client_id"],
        options={"client_secret_env": "CONNREF_CLIENT_SECRET"},
    )
    token = provider_for(profile, http_client=client).get_token(SCOPE)
    assert world.principal(token).app_id == world.secret_app["client_id"]
    assert counting.count("/oauth2/v2.0/token") == 1


# --------------------------------------------------------------------------- errors users see


def test_wrong_secret_names_profile_and_never_the_secret(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "canary-wrong-" + uuid.uuid4().hex
    monkeypatch.setenv("CONNREF_CLIENT_SECRET", wrong)
    p = provider_for(
        world.profile(
            "client_secret", world.secret_app["client_id"], client_secret_env="CONNREF_CLIENT_SECRET"
        ),
        http_client=world.http,
    )
    with pytest.raises(AuthError) as e:
        p.get_token(SCOPE)
    msg = str(e.value)
    assert msg.startswith(
        "auth profile 'pipeline' (client_secret): the secret in CONNREF_CLIENT_SECRET was rejected"
    )
    assert "AADSTS7000215" in msg and "Check" in msg
    _assert_clean(msg, wrong, SECRET)


def test_unknown_certificate_names_profile_and_thumbprint(world: World) -> None:
    p = provider_for(
        world.profile(
            "certificate", world.cert_app["client_id"], name="certs", certificate_path=world.unknown_pem
        ),
        http_client=world.http,
    )
    with pytest.raises(AuthError) as e:
        p.get_token(SCOPE)
    msg = str(e.value)
    assert "auth profile 'certs' (certificate)" in msg
    assert "AADSTS700027" in msg
    assert world.unknown_thumbprint in msg  # what the user compares with the app registration
    assert "PRIVATE KEY" not in msg


def test_expired_assertion(world: World, tmp_path: Any) -> None:
    now = int(time.time())
    expired = pyjwt.encode(
        {
            "iss": "https://token.actions.githubusercontent.com",
            "sub": GH_SUBJECT,
            "aud": "api://AzureADTokenExchange",
            "iat": now - 7200,
            "nbf": now - 7200,
            "exp": now - 3600,
        },
        world.key_pem,
        algorithm="RS256",
    )
    path = tmp_path / "token"
    path.write_text(expired)
    p = provider_for(
        world.profile("federated", world.fed_app["client_id"], name="gha", federated_token_file=str(path)),
        http_client=world.http,
    )
    with pytest.raises(AuthError) as e:
        p.get_token(SCOPE)
    msg = str(e.value)
    assert "auth profile 'gha' (federated)" in msg and "AADSTS700024" in msg
    _assert_clean(msg, expired, expired.split(".")[1])


def test_wrong_audience_of_federated_token(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_URL", f"{world.base}/_oidc/github/token?api-version=2.0")
    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN", GH_REQUEST_TOKEN)
    p = provider_for(
        world.profile(
            "federated",
            world.fed_app["client_id"],
            name="gha",
            federated_provider="github",
            federated_audience="api://SomethingElse",
        ),
        http_client=world.http,
    )
    with pytest.raises(AuthError) as e:
        p.get_token(SCOPE)
    msg = str(e.value)
    assert "auth profile 'gha' (federated)" in msg
    assert "AADSTS70021" in msg and "api://SomethingElse" in msg and "federated credential" in msg
    _assert_clean(msg, GH_REQUEST_TOKEN)


def test_unknown_client_and_tenant(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNREF_CLIENT_SECRET", SECRET)
    p = provider_for(
        world.profile("client_secret", str(uuid.uuid4()), client_secret_env="CONNREF_CLIENT_SECRET"),
        http_client=world.http,
    )
    with pytest.raises(AuthError, match=r"AADSTS700016.*Check client_id and tenant_id"):
        p.get_token(SCOPE)
    bad_tenant = AuthProfile(
        name="pipeline",
        method="client_secret",
        tenant_id=str(uuid.uuid4()),
        client_id=world.secret_app["client_id"],
        options={"client_secret_env": "CONNREF_CLIENT_SECRET", "authority_host": world.base},
    )
    with pytest.raises(AuthError) as e:
        provider_for(bad_tenant, http_client=world.http).get_token(SCOPE)
    assert "auth profile 'pipeline'" in str(e.value) and "tenant_id" in str(e.value)
    _assert_clean(str(e.value), SECRET)


def test_missing_configuration_is_explained(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONNREF_UNSET", raising=False)
    with pytest.raises(
        AuthError, match=r"auth profile 'ci' \(access_token\): the environment variable CONNREF_UNSET"
    ):
        provider_for(
            world.profile("access_token", name="ci", access_token_env="CONNREF_UNSET"), http_client=world.http
        )
    p = provider_for(
        world.profile("client_secret", world.secret_app["client_id"], client_secret_env="CONNREF_UNSET"),
        http_client=world.http,
    )
    with pytest.raises(AuthError, match="CONNREF_UNSET is empty or not set"):
        p.get_token(SCOPE)
    monkeypatch.delenv("ACTIONS_ID_TOKEN_REQUEST_URL", raising=False)
    p = provider_for(
        world.profile("federated", world.fed_app["client_id"], federated_provider="github"),
        http_client=world.http,
    )
    with pytest.raises(AuthError, match="id-token: write"):
        p.get_token(SCOPE)
    with pytest.raises(AuthError, match="unknown method 'password'"):
        provider_for(world.profile("password"), http_client=world.http)


def test_untrusted_tls_is_an_auth_error(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNREF_CLIENT_SECRET", SECRET)
    with httpx.Client() as untrusting:  # the system trust store does not know the test CA
        p = provider_for(
            world.profile(
                "client_secret", world.secret_app["client_id"], client_secret_env="CONNREF_CLIENT_SECRET"
            ),
            http_client=untrusting,
        )
        with pytest.raises(AuthError, match=r"could not reach .*TLS trust"):
            p.get_token(SCOPE)


# --------------------------------------------------------------------------- caching and renewal


def test_token_is_cached_per_scope(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNREF_CLIENT_SECRET", SECRET)
    p = provider_for(
        world.profile(
            "client_secret", world.secret_app["client_id"], client_secret_env="CONNREF_CLIENT_SECRET"
        ),
        http_client=world.http,
    )
    before = world.counting.count("/oauth2/v2.0/token")
    first = p.get_token(SCOPE)
    for _ in range(20):
        assert p.get_token(SCOPE) == first
    p.get_token(connections_scope())
    assert world.counting.count("/oauth2/v2.0/token") - before == 2
    # A 401 from the service makes the client invalidate the token: the next one is fetched anew.
    assert isinstance(p, CachingTokenProvider)
    p.invalidate(SCOPE)
    assert p.get_token(SCOPE) != first
    assert world.counting.count("/oauth2/v2.0/token") - before == 3


class _GatedProvider(CachingTokenProvider):
    """Fetching scope A waits until a fetch of scope B has started (or gives up after 10 s)."""

    def __init__(self) -> None:
        super().__init__("gated", "test")
        self.a_started = threading.Event()
        self.b_started = threading.Event()

    def _acquire(self, scope: str) -> tuple[str, float]:
        if scope == "A":
            self.a_started.set()
            return ("a-after-b" if self.b_started.wait(10) else "a-alone"), 3600
        self.b_started.set()
        return "b", 3600


def test_tokens_of_different_scopes_are_fetched_at_the_same_time() -> None:
    """The lock is per scope: a fetch for the connections API never waits behind the Dataverse one."""
    p = _GatedProvider()
    got: dict[str, str] = {}
    t = threading.Thread(target=lambda: got.setdefault("A", p.get_token("A")))
    t.start()
    assert p.a_started.wait(10)
    assert p.get_token("B") == "b"  # while A's fetch is still in flight
    t.join(10)
    assert got["A"] == "a-after-b"
    assert p.acquisitions == 2
    assert p.get_token("A") == "a-after-b" and p.acquisitions == 2  # cached


def test_environments_of_one_profile_share_a_provider(tmp_path: Any) -> None:
    from reconciler.api.session import TokenProviders
    from reconciler.domain.model import Config, EnvironmentConfig

    def profile(name: str, client: str) -> AuthProfile:
        return AuthProfile(name, "client_secret", tenant_id="t1", client_id=client,
                           options={"client_secret_env": "X"})

    envs = {n: EnvironmentConfig(n, f"https://{n}.crm.dynamics.com", auth=a)
            for n, a in (("dev", "p"), ("test", "p"), ("prod", "other"), ("gov", "p"))}
    envs["gov"] = EnvironmentConfig("gov", "https://gov.crm9.dynamics.com", auth="p", cloud="usgovhigh")
    config = Config(str(tmp_path / "c.yaml"), 1, "S", {}, envs,
                    auth={"p": profile("p", "c1"), "other": profile("other", "c2")})
    with TokenProviders() as providers:
        dev, test, prod, gov = (providers.for_environment(config, envs[n]) for n in ("dev", "test", "prod", "gov"))
    assert dev is test  # same authority, client and credential: one provider, one token cache
    assert prod is not dev  # another client
    assert gov is not dev  # another cloud, so another authority


def test_the_shared_providers_log_their_token_requests(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """-v logs every request, token requests included: those of the providers a run's environments share
    too (method, URL without query values, status), never their body or the secret."""
    import logging

    from reconciler.api.session import TokenProviders

    monkeypatch.setenv("SSL_CERT_FILE", world.ca_pem)
    monkeypatch.setenv("CONNREF_CLIENT_SECRET", SECRET)
    caplog.set_level(logging.DEBUG, logger="reconciler.api.http")
    with TokenProviders() as providers:
        p = providers.for_profile(world.profile("client_secret", world.secret_app["client_id"],
                                                client_secret_env="CONNREF_CLIENT_SECRET"))
        token = p.get_token(SCOPE)
    lines = [r.getMessage() for r in caplog.records if r.name == "reconciler.api.http"]
    assert any(f"POST {world.base}/{TENANT}/oauth2/v2.0/token -> 200" in line for line in lines), lines
    assert any("/.well-known/openid-configuration -> 200" in line for line in lines), lines
    for line in lines:
        _assert_clean(line, SECRET, token)


def test_managed_identity_token_can_be_invalidated(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{world.base}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", IDENTITY_HEADER)
    p = provider_for(world.profile("managed_identity"), http_client=world.http)
    first = p.get_token(SCOPE)
    assert p.get_token(SCOPE) == first
    before = world.counting.count("/msi/token")
    assert isinstance(p, CachingTokenProvider)
    p.invalidate(SCOPE)
    assert p.get_token(SCOPE) != first
    assert world.counting.count("/msi/token") - before == 1


def test_short_lived_tokens_are_renewed_and_never_used_expired(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long sequence of calls with 3-second tokens and 3-second federated assertions: every token handed
    out is still valid, tokens and assertions are renewed, and far fewer times than they are used."""
    world.settings(token_lifetime_seconds=3, oidc_token_lifetime_seconds=3)
    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_URL", f"{world.base}/_oidc/github/token?api-version=2.0")
    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN", GH_REQUEST_TOKEN)
    p = provider_for(
        world.profile("federated", world.fed_app["client_id"], federated_provider="github"),
        http_client=world.http,
    )
    tokens_before = world.counting.count("/oauth2/v2.0/token")
    oidc_before = world.counting.count("/_oidc/github/token")
    seen = set()
    calls = 0
    deadline = time.time() + 2.6
    while time.time() < deadline:
        token = p.get_token(SCOPE)
        calls += 1
        seen.add(token)
        world.principal(token)  # raises if expired
        exp = pyjwt.decode(token, options={"verify_signature": False})["exp"]
        assert exp - time.time() > 0.3  # renewed before the last moment, not at it
        time.sleep(0.05)
    issued = world.counting.count("/oauth2/v2.0/token") - tokens_before
    assert len(seen) == issued >= 2
    assert issued * 4 < calls
    assert world.counting.count("/_oidc/github/token") - oidc_before >= 2  # the assertion was re-fetched


# --------------------------------------------------------------------------- scopes and clouds


def test_scopes_per_api_and_cloud() -> None:
    assert (
        dataverse_scope("https://contoso.crm4.dynamics.com/api/data/v9.2/")
        == "https://contoso.crm4.dynamics.com/.default"
    )
    assert connections_scope() == "https://api.powerplatform.com/.default"
    assert connections_scope("usgovhigh") == "https://api.high.powerplatform.microsoft.us/.default"
    assert CLOUDS["china"].authority_host == "https://login.chinacloudapi.cn"
    assert CLOUDS["dod"].authority_host == "https://login.microsoftonline.us"
    with pytest.raises(AuthError, match="unknown cloud"):
        connections_scope("mars")
