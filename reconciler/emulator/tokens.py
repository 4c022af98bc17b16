"""The emulator's identity routes: an Entra-like token endpoint, its discovery documents, emulated
workload-identity issuers (GitHub Actions, Azure DevOps) and managed-identity endpoints.

Enough of the Microsoft identity platform for MSAL to be pointed at the emulator unchanged:

- ``GET /common/discovery/instance``, ``GET /{tenant}/v2.0/.well-known/openid-configuration`` and
  ``GET /{tenant}/discovery/v2.0/keys``: the documents MSAL reads before its first token request
  (msal/authority.py). Endpoints are built from the request's own origin, so the same data works
  in-process and over loopback.
- ``POST /{tenant}/oauth2/v2.0/token``, client credentials grant only, authenticated by a client
  secret, a certificate-signed client assertion, or a federated (workload identity) assertion
  (Microsoft Learn: "OAuth 2.0 client credentials flow", "Certificate credentials", "Workload identity
  federation"). Errors carry the documented AADSTS shape (``error``, ``error_description``,
  ``error_codes``, ``timestamp``, ``trace_id``, ``correlation_id``, ``error_uri``; Microsoft Learn,
  "Microsoft Entra authentication and authorization error codes").
- ``GET /_oidc/github/token`` and ``POST /_oidc/ado/...``: stand-ins for the GitHub Actions and Azure
  DevOps OIDC token services (docs/dataverse.md §6.3), issuing JWTs signed by the emulator's key.
- ``GET /msi/token`` (App Service: IDENTITY_ENDPOINT + X-IDENTITY-HEADER, api-version 2019-08-01) and
  ``GET /metadata/identity/oauth2/token`` (VM IMDS), as MSAL calls them (msal/managed_identity.py).

No response or error ever contains a secret or an assertion the caller sent.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jwt as pyjwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from . import jwt
from .web import Request, Response

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
FEDERATED_AUDIENCE = "api://AzureADTokenExchange"
GITHUB_ISSUER = "https://token.actions.githubusercontent.com"
ADO_ISSUER_TEMPLATE = "https://vstoken.dev.azure.com/{organization_id}"

# Resources every emulated tenant knows besides the environment itself (docs/dataverse.md §6.1).
# Azure Storage: the audience of the azurerm state backend's tokens (Microsoft Learn, "Authorize access to
# blobs using Microsoft Entra ID": scope https://storage.azure.com/.default).
# The token format is the resource's choice (its accessTokenAcceptedVersion; Microsoft Learn, "Access tokens
# in the Microsoft identity platform", "Token formats"): Azure Storage takes v1.0 tokens, issuer
# https://sts.windows.net/{tenant}/ (the issuers Azurite accepts are all v1.0 ones). UNCONFIRMED for
# Dataverse and the Power Platform API, which keep the emulator's v2.0 shape.
V1_RESOURCES = ("https://storage.azure.com",)
# Microsoft Graph too: Entra issues its token to any application; what the application may read is Graph's
# own check (the data's applications[].graph_permissions, reconciler/emulator/graph.py).
WELL_KNOWN_RESOURCES = ("https://api.powerplatform.com", "https://service.powerapps.com", "https://storage.azure.com",
                        "https://graph.microsoft.com")

DEFAULT_TOKEN_LIFETIME = 3599  # what Entra answers for a client credentials token (expires_in)
DEFAULT_OIDC_TOKEN_LIFETIME = 300
CLOCK_SKEW = 60  # seconds of leeway on an assertion's nbf/exp
# Verify only the signature with PyJWT; times, audience and subject are checked here so each failure
# gets its own AADSTS code.
_SIGNATURE_ONLY: Any = {"verify_aud": False, "verify_exp": False, "verify_nbf": False, "verify_iat": False}

_TENANT_ROUTE = re.compile(r"^/(?P<tenant>[^/]+)/(?P<rest>v2\.0/\.well-known/openid-configuration|"
                           r"discovery/v2\.0/keys|oauth2/v2\.0/token)$")
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


# --------------------------------------------------------------------------- helpers


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def _hash_in(value: str, hashes_: Any) -> bool:
    digest = _sha256(value)
    return any(hmac.compare_digest(digest, str(h).lower()) for h in (hashes_ or []))


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    h = {"Content-Type": "application/json; charset=utf-8", "Cache-Control": "no-store", "Pragma": "no-cache"}
    h.update(headers or {})
    return Response(status, json.dumps(payload).encode("utf-8"), h)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")


class _AadError(Exception):
    """An error of the token endpoint in the documented AADSTS shape."""

    def __init__(self, error: str, code: int, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.error = error
        self.code = code
        self.message = message
        self.status = status or (401 if error == "invalid_client" else 400)

    def response(self) -> Response:
        now = time.time()
        stamp = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        trace, corr = str(uuid.uuid4()), str(uuid.uuid4())
        return _json(self.status, {
            "error": self.error,
            "error_description": f"AADSTS{self.code}: {self.message}\r\nTrace ID: {trace}\r\n"
                                 f"Correlation ID: {corr}\r\nTimestamp: {stamp}",
            "error_codes": [self.code],
            "timestamp": stamp,
            "trace_id": trace,
            "correlation_id": corr,
            "error_uri": f"https://login.microsoftonline.com/error?code={self.code}",
        })


def _settings(app: Any) -> dict[str, Any]:
    merged: dict[str, Any] = dict(getattr(app, "settings", None) or {})
    for k, v in (app.store.data.get("settings") or {}).items():
        merged.setdefault(k, v)
    return merged


def _lifetime(app: Any, key: str, default: int) -> int:
    return int(_settings(app).get(key, default))


def _tenant_id(app: Any) -> str:
    return str(app.store.data["environment"].get("tenant_id") or "")


def _known_tenant(app: Any, tenant: str) -> bool:
    return bool(tenant) and tenant.lower() == _tenant_id(app).lower()


def _applications(app: Any) -> list[dict[str, Any]]:
    apps: list[dict[str, Any]] = app.store.data.get("applications") or []
    return apps


def _application(app: Any, client_id: str) -> dict[str, Any] | None:
    for a in _applications(app):
        if str(a.get("client_id", "")).lower() == client_id.lower():
            return a
    return None


def _oidc(app: Any) -> dict[str, Any]:
    section: dict[str, Any] = app.store.data.get("oidc") or {}
    return section


def _token_version(resource: str) -> str:
    return "1.0" if resource.rstrip("/").lower() in V1_RESOURCES else "2.0"


def _resource_ok(app: Any, resource: str, request: Request) -> bool:
    r = resource.rstrip("/").lower()
    known = {x.lower() for x in WELL_KNOWN_RESOURCES}
    env_url = str(app.store.data["environment"].get("url") or "")
    if env_url:
        parts = urlsplit(env_url)
        known.add(f"{parts.scheme}://{parts.netloc}".lower())
    known.add(request.origin.lower())
    if r in known:
        return True
    # The loopback emulator serves Dataverse at its own origin, whichever port the test picked.
    host = urlsplit(r).hostname or ""
    return host in ("127.0.0.1", "localhost", "::1")


# --------------------------------------------------------------------------- entry point


def handle(app: Any, request: Request) -> Response | None:
    """Serve the identity routes; None when the path is not one of them."""
    path = request.path
    if path == "/common/discovery/instance" and request.method == "GET":
        return _instance_discovery(request)
    if path == "/_oidc/github/token":
        return _github_token(app, request)
    if path.startswith("/_oidc/ado/"):
        return _ado_token(app, request)
    if path == "/msi/token":
        return _managed_identity(app, request, app_service=True)
    if path == "/metadata/identity/oauth2/token":
        return _managed_identity(app, request, app_service=False)
    m = _TENANT_ROUTE.match(path)
    if not m:
        return None
    tenant, rest = m.group("tenant"), m.group("rest")
    if rest == "discovery/v2.0/keys":
        if request.method != "GET":
            return None
        return _json(200, {"keys": [jwt.public_jwk(app.store.data["signing_key_pem"])]})
    if rest.startswith("v2.0/"):
        if request.method != "GET":
            return None
        if not _known_tenant(app, tenant):
            # Entra answers 400 with AADSTS90002 for an unknown tenant's discovery document.
            return _AadError("invalid_tenant", 90002, _tenant_not_found(tenant)).response()
        return _json(200, _openid_configuration(request, tenant))
    try:
        if request.method != "POST":
            raise _AadError("invalid_request", 900561, "The endpoint only accepts POST requests. "
                            f"Received a {request.method} request.", status=405)
        return _token(app, request, tenant)
    except _AadError as e:
        return e.response()


def _tenant_not_found(tenant: str) -> str:
    return (f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing "
            "into the correct cloud. Check with your subscription administrator, this may happen if there "
            "are no active subscriptions for the tenant.")


# --------------------------------------------------------------------------- discovery


def _instance_discovery(request: Request) -> Response:
    """Instance discovery metadata (the v1.1 document MSAL reads): aliases of the host, and the
    tenant discovery endpoint for the authorization endpoint MSAL asks about."""
    q = request.query
    auth_endpoint = q.get("authorization_endpoint", "")
    parts = urlsplit(auth_endpoint)
    host = request.host
    # MSAL names the instance by host name only (no port: msal/authority.py), so compare host names.
    if parts.hostname and parts.hostname.lower() != (urlsplit("//" + host).hostname or "").lower():
        return _AadError("invalid_instance", 50049, "Unknown or invalid instance.").response()
    tenant = parts.path.strip("/").split("/")[0] if parts.path.strip("/") else "common"
    return _json(200, {
        "tenant_discovery_endpoint": f"{request.origin}/{tenant}/v2.0/.well-known/openid-configuration",
        "api-version": q.get("api-version", "1.1"),
        "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
    })


def _openid_configuration(request: Request, tenant: str) -> dict[str, Any]:
    base = f"{request.origin}/{tenant}"
    return {
        "issuer": f"{base}/v2.0",
        "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
        "token_endpoint": f"{base}/oauth2/v2.0/token",
        "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
        "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
        "jwks_uri": f"{base}/discovery/v2.0/keys",
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt",
                                                  "client_secret_basic"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "oid", "tid", "ver"],
        "request_uri_parameter_supported": False,
        "tenant_region_scope": None,
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
    }


# --------------------------------------------------------------------------- token endpoint


def _form(request: Request) -> dict[str, str]:
    try:
        return dict(parse_qsl(request.body.decode("utf-8"), keep_blank_values=True))
    except UnicodeDecodeError:
        raise _AadError("invalid_request", 900144, "The request body could not be read.") from None


def _token(app: Any, request: Request, tenant: str) -> Response:
    if not _known_tenant(app, tenant):
        raise _AadError("invalid_request", 90002, _tenant_not_found(tenant))
    form = _form(request)
    basic_id, basic_secret = _basic_auth(request)
    grant = form.get("grant_type")
    if not grant:
        raise _AadError("invalid_request", 900144, "The request body must contain the following parameter: "
                        "'grant_type'.")
    if grant != "client_credentials":
        raise _AadError("unsupported_grant_type", 70003, "The app requested an unsupported grant type "
                        f"'{grant}'.")
    client_id = form.get("client_id") or basic_id or ""
    if not client_id:
        raise _AadError("invalid_request", 900144, "The request body must contain the following parameter: "
                        "'client_id'.")
    resource = _resource_from_scope(app, request, form.get("scope", ""), tenant)
    application = _application(app, client_id)
    if application is None:
        raise _AadError("unauthorized_client", 700016, f"Application with identifier '{client_id}' was not "
                        f"found in the directory '{tenant}'. This can happen if the application has not been "
                        "installed by the administrator of the tenant or consented to by any user in the "
                        "tenant. You may have sent your authentication request to the wrong tenant.")
    secret = form.get("client_secret") or basic_secret
    assertion = form.get("client_assertion")
    token_endpoint = f"{request.origin}/{tenant}/oauth2/v2.0/token"
    if secret:
        accepted = [*(application.get("client_secret_sha256") or []),
                    *getattr(app, "session_secret_hashes", {}).get(client_id, [])]
        if not _hash_in(secret, accepted):
            raise _AadError("invalid_client", 7000215, "Invalid client secret provided. Ensure the secret "
                            "being sent in the request is the client secret value, not the client secret ID, "
                            f"for a secret added to app '{client_id}'.")
    elif assertion:
        if form.get("client_assertion_type") != JWT_BEARER:
            raise _AadError("invalid_request", 7000219, "'client_assertion_type' must be "
                            f"'{JWT_BEARER}'.")
        _check_assertion(app, application, assertion, token_endpoint)
    else:
        raise _AadError("invalid_client", 7000218, "The request body must contain the following parameter: "
                        "'client_assertion' or 'client_secret'.")
    lifetime = _lifetime(app, "token_lifetime_seconds", DEFAULT_TOKEN_LIFETIME)
    token = jwt.mint(app.store.data["signing_key_pem"], tenant_id=_tenant_id(app),
                     object_id=str(application.get("object_id") or ""), audience=resource,
                     app_id=str(application["client_id"]), lifetime=lifetime,
                     version=_token_version(resource))
    return _json(200, {"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime,
                       "access_token": token})


def _basic_auth(request: Request) -> tuple[str | None, str | None]:
    """client_secret_basic: ``Authorization: Basic base64(client_id:client_secret)`` (RFC 6749 §2.3.1)."""
    h = request.headers.get("Authorization") or ""
    if not h.lower().startswith("basic "):
        return None, None
    try:
        raw = base64.b64decode(h[6:].strip()).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None, None
    cid, _, sec = raw.partition(":")
    return cid or None, sec or None


def _resource_from_scope(app: Any, request: Request, scope: str, tenant: str) -> str:
    """Client credentials take exactly one ``<resource>/.default`` scope (Microsoft Learn, "OAuth 2.0
    client credentials flow": "The value passed for the scope parameter in this request should be the
    resource identifier (application ID URI) of the resource you want, affixed with the .default suffix")."""
    scopes = [s for s in scope.split() if s not in ("openid", "profile", "offline_access")]
    if not scopes:
        raise _AadError("invalid_request", 900144, "The request body must contain the following parameter: "
                        "'scope'.")
    if len(scopes) > 1:
        raise _AadError("invalid_scope", 70011, "The provided value for the input parameter 'scope' is not "
                        f"valid. The scope '{scope}' is not valid.")
    s = scopes[0]
    if not s.endswith("/.default"):
        raise _AadError("invalid_scope", 1002012, f"The provided value for scope {s} is not valid. Client "
                        "credential flows must have a scope value with /.default suffixed to the resource "
                        "identifier (application ID URI).")
    resource = s[: -len("/.default")]
    if not _resource_ok(app, resource, request):
        raise _AadError("invalid_resource", 500011, f"The resource principal named {resource} was not "
                        f"found in the tenant named {tenant}. This can happen if the application has not "
                        "been installed by the administrator of the tenant or consented to by any user in "
                        "the tenant. You might have sent your authentication request to the wrong tenant.")
    return resource


def _b64url_to_hex(value: str) -> str:
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()
    except ValueError:
        return ""


def _public_key(cert_entry: dict[str, Any]) -> Any:
    if cert_entry.get("certificate_pem"):
        return x509.load_pem_x509_certificate(str(cert_entry["certificate_pem"]).encode("ascii")).public_key()
    return serialization.load_pem_public_key(str(cert_entry["public_key_pem"]).encode("ascii"))


def _thumbprints(cert_entry: dict[str, Any]) -> tuple[str, str]:
    """(sha1 hex, sha256 hex) of a registered certificate, lower case; computed from the certificate
    when one is stored."""
    if cert_entry.get("certificate_pem"):
        cert = x509.load_pem_x509_certificate(str(cert_entry["certificate_pem"]).encode("ascii"))
        return cert.fingerprint(hashes.SHA1()).hex(), cert.fingerprint(hashes.SHA256()).hex()
    return (str(cert_entry.get("thumbprint") or "").lower().replace(":", ""),
            str(cert_entry.get("thumbprint_sha256") or "").lower().replace(":", ""))


def _unverified(assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        header = pyjwt.get_unverified_header(assertion)
        claims = pyjwt.decode(assertion, options={"verify_signature": False})
    except pyjwt.PyJWTError:
        raise _AadError("invalid_request", 50027, "JWT token is invalid or malformed.") from None
    return header, claims


def _check_times(claims: dict[str, Any], doc: str) -> None:
    now = time.time()
    exp, nbf = claims.get("exp"), claims.get("nbf", 0)
    if not isinstance(exp, (int, float)) or now > exp + CLOCK_SKEW or now + CLOCK_SKEW < float(nbf or 0):
        raise _AadError("invalid_client", 700024, "Client assertion is not within its valid time range. "
                        f"Current time: {_iso(now)}, assertion valid from {_iso(float(nbf or 0))}, "
                        f"expiry time of assertion {_iso(float(exp or 0))}. Review the documentation at "
                        f"{doc} .")


def _check_assertion(app: Any, application: dict[str, Any], assertion: str, token_endpoint: str) -> None:
    header, claims = _unverified(assertion)
    client_id = str(application["client_id"])
    if str(claims.get("iss", "")).lower() == client_id.lower():
        _check_certificate_assertion(application, assertion, header, claims, token_endpoint)
    else:
        _check_federated_assertion(app, application, assertion, claims)


def _check_certificate_assertion(application: dict[str, Any], assertion: str, header: dict[str, Any],
                                 claims: dict[str, Any], token_endpoint: str) -> None:
    """Microsoft Learn, "Microsoft identity platform application authentication certificate credentials":
    header alg RS256/PS256 with x5t (SHA-1) or x5t#S256 (SHA-256) thumbprint; claims aud = the token
    endpoint, iss = sub = client_id, exp/nbf."""
    doc = "https://learn.microsoft.com/entra/identity-platform/certificate-credentials"
    client_id = str(application["client_id"])
    alg = header.get("alg")
    if alg not in ("RS256", "PS256"):
        raise _AadError("invalid_client", 5002738, f"Invalid JWT token. '{alg}' is not a supported signature "
                        "algorithm. Supported signing algorithms are: 'RS256, PS256'.")
    sha1 = _b64url_to_hex(str(header.get("x5t") or "")) if header.get("x5t") else ""
    sha256 = _b64url_to_hex(str(header.get("x5t#S256") or "")) if header.get("x5t#S256") else ""
    entry = None
    for c in application.get("certificates") or []:
        t1, t256 = _thumbprints(c)
        if (sha1 and t1 and sha1 == t1) or (sha256 and t256 and sha256 == t256):
            entry = c
            break
    if entry is None:
        shown = (sha256 or sha1).upper()
        raise _AadError("invalid_client", 700027, "The certificate with identifier used to sign the client "
                        "assertion is not registered on application. [Reason - The key was not found., "
                        f"Thumbprint of key used by client: '{shown}', Please visit the Azure Portal, "
                        "Graph Explorer or directly use MS Graph to see configured keys for app Id "
                        f"'{client_id}'. Review the documentation at {doc} .]")
    try:
        pyjwt.decode(assertion, _public_key(entry), algorithms=[str(alg)], options=_SIGNATURE_ONLY)
    except pyjwt.PyJWTError:
        raise _AadError("invalid_client", 700027, "Client assertion failed signature validation. Review the "
                        f"documentation at {doc} .") from None
    _check_times(claims, doc)
    if str(claims.get("sub", "")).lower() != client_id.lower():
        raise _AadError("invalid_client", 700021, "Client assertion application identifier doesn't match "
                        "'client_id' parameter. Review the documentation at " + doc + " .")
    aud = claims.get("aud")
    auds = aud if isinstance(aud, list) else [aud]
    wanted = {token_endpoint.lower(), token_endpoint.lower().replace("/oauth2/v2.0/token", "/oauth2/token")}
    if not any(str(a).rstrip("/").lower() in wanted for a in auds):
        raise _AadError("invalid_client", 700023, "Client assertion audience claim does not match Realm "
                        f"issuer. Review the documentation at {doc} .")


@functools.lru_cache(maxsize=8)
def _issuer_public_key(signing_key_pem: str) -> Any:
    """The public half of the emulator's key, which signs the emulated OIDC issuers' tokens. Cached:
    loading an RSA private key validates it, which takes tens of milliseconds."""
    key = serialization.load_pem_private_key(signing_key_pem.encode("ascii"), password=None)
    return key.public_key()


def _check_federated_assertion(app: Any, application: dict[str, Any], assertion: str,
                               claims: dict[str, Any]) -> None:
    """Microsoft Learn, "Workload identity federation": the assertion must be signed by its issuer and
    match a federated identity credential of the app (issuer, subject and audience, case-sensitive)."""
    doc = "https://learn.microsoft.com/entra/workload-id/workload-identity-federation"
    try:
        pyjwt.decode(assertion, _issuer_public_key(app.store.data["signing_key_pem"]), algorithms=["RS256"],
                     options=_SIGNATURE_ONLY)
    except pyjwt.PyJWTError:
        raise _AadError("invalid_client", 700027, "Client assertion failed signature validation. The token "
                        "was not signed by a key of its issuer.") from None
    _check_times(claims, doc)
    iss, sub = str(claims.get("iss", "")), str(claims.get("sub", ""))
    aud = claims.get("aud")
    auds = [str(a) for a in (aud if isinstance(aud, list) else [aud]) if a]
    for fic in application.get("federated_credentials") or []:
        fic_aud = fic.get("audience") or FEDERATED_AUDIENCE
        fic_auds = fic_aud if isinstance(fic_aud, list) else [fic_aud]
        if fic.get("issuer") == iss and fic.get("subject") == sub and any(a in fic_auds for a in auds):
            return
    raise _AadError("invalid_request", 70021, "No matching federated identity record found for presented "
                    f"assertion. Assertion Issuer: '{iss}'. Assertion Subject: '{sub}'. Assertion Audience: "
                    f"'{', '.join(auds)}'. {doc}")


# --------------------------------------------------------------------------- OIDC issuers


def _bearer(request: Request) -> str | None:
    h = request.headers.get("Authorization") or ""
    return h[7:].strip() if h.lower().startswith("bearer ") else None


def _mint_oidc(app: Any, claims: dict[str, Any]) -> str:
    now = int(time.time())
    lifetime = _lifetime(app, "oidc_token_lifetime_seconds", DEFAULT_OIDC_TOKEN_LIFETIME)
    body = {"jti": str(uuid.uuid4()), "iat": now, "nbf": now, "exp": now + lifetime, **claims}
    return pyjwt.encode(body, app.store.data["signing_key_pem"], algorithm="RS256", headers={"kid": "oidc"})


def _github_token(app: Any, request: Request) -> Response:
    """GitHub Actions' ID token service: ``GET $ACTIONS_ID_TOKEN_REQUEST_URL&audience=...`` with the run's
    request token; answers ``{"count": 1, "value": "<jwt>"}`` (docs/dataverse.md §6.3; GitHub docs "About security
    hardening with OpenID Connect" for the claims: iss, sub ``repo:OWNER/REPO:...``, aud, repository)."""
    if request.method != "GET":
        return _json(405, {"message": "Method not allowed"})
    token = _bearer(request)
    run = None
    for r in (_oidc(app).get("github") or {}).get("runs") or []:
        if token and _hash_in(token, [r.get("request_token_sha256")]):
            run = r
            break
    if run is None:
        return _json(401, {"message": "Bad credentials"})
    subject = str(run.get("subject") or "")
    repository = subject.split(":")[1] if subject.startswith("repo:") and subject.count(":") >= 2 else ""
    owner = repository.split("/")[0] if repository else ""
    # Without an audience GitHub uses the URL of the repository owner.
    audience = request.query.get("audience") or f"https://github.com/{owner}"
    claims = {"iss": GITHUB_ISSUER, "sub": subject, "aud": audience, "repository": repository,
              "repository_owner": owner}
    for k in ("ref", "environment", "workflow"):
        if run.get(k):
            claims[k] = run[k]
    return _json(200, {"count": 1, "value": _mint_oidc(app, claims)})


def _ado_token(app: Any, request: Request) -> Response:
    """Azure DevOps' OIDC token request:
    ``POST $SYSTEM_OIDCREQUESTURI?api-version=7.1&serviceConnectionId=<id>`` with
    ``$(System.AccessToken)``; answers ``{"oidcToken": "<jwt>"}`` with iss
    ``https://vstoken.dev.azure.com/<organization id>`` and sub ``sc://<org>/<project>/<connection>``
    (docs/dataverse.md §6.3; Microsoft Learn "Workload identity federation for Azure DevOps service connections")."""
    if request.method != "POST":
        return _json(405, {"message": "Method not allowed"})
    ado = _oidc(app).get("azure_devops") or {}
    token = _bearer(request)
    if not token or not _hash_in(token, ado.get("access_token_sha256")):
        return _json(401, {"message": "TF400813: The user '' is not authorized to access this resource."})
    conn_id = request.query.get("serviceConnectionId", "")
    conn = next((c for c in ado.get("service_connections") or []
                 if str(c.get("id", "")).lower() == conn_id.lower() and conn_id), None)
    if conn is None:
        return _json(400, {"message": f"Service connection '{conn_id}' was not found or is not a workload "
                           "identity federation service connection.", "typeKey": "InvalidRequestException"})
    claims = {"iss": ADO_ISSUER_TEMPLATE.format(organization_id=ado.get("organization_id", "")),
              "sub": str(conn.get("subject") or ""), "aud": FEDERATED_AUDIENCE}
    return _json(200, {"oidcToken": _mint_oidc(app, claims)})


# --------------------------------------------------------------------------- managed identity


def _managed_identity(app: Any, request: Request, *, app_service: bool) -> Response:
    """App Service (``X-IDENTITY-HEADER``, api-version 2019-08-01, ``expires_on`` in epoch seconds) and VM
    IMDS (``Metadata: true``, api-version 2018-02-01, ``expires_in``), as msal/managed_identity.py calls them.
    Only applications with ``managed_identity: true`` get tokens."""
    if request.method != "GET":
        return _json(405, {"error": "invalid_request", "error_description": "Method not allowed"})
    mi = _oidc(app).get("managed_identity") or {}
    q = request.query

    def fail(status: int, message: str) -> Response:
        if app_service:
            return _json(status, {"statusCode": status, "message": message})
        return _json(status, {"error": "invalid_request", "error_description": message})

    if app_service:
        header = request.headers.get("X-IDENTITY-HEADER") or ""
        if not header or not _hash_in(header, mi.get("identity_header_sha256")):
            return fail(401, "The X-IDENTITY-HEADER header is missing or wrong.")
    elif (request.headers.get("Metadata") or "").lower() != "true":
        return fail(400, "Required metadata header not specified")
    resource = q.get("resource", "")
    if not resource:
        return fail(400, "The resource parameter is required.")
    if not _resource_ok(app, resource.rstrip("/"), request):
        return fail(400, f"The resource '{resource}' is not known in this tenant.")
    identities = [a for a in _applications(app) if a.get("managed_identity")]
    wanted = q.get("client_id") or q.get("object_id") or q.get("msi_res_id") or q.get("mi_res_id")
    chosen = None
    if wanted:
        w = wanted.lower()
        chosen = next((a for a in identities
                       if w in (str(a.get("client_id", "")).lower(), str(a.get("object_id", "")).lower())),
                      None)
    else:
        sys_id = str(mi.get("system_assigned_client_id") or "")
        chosen = next((a for a in identities if str(a.get("client_id", "")).lower() == sys_id.lower()), None)
        if chosen is None and not sys_id and len(identities) == 1:
            chosen = identities[0]
    if chosen is None:
        what = f"identity '{wanted}'" if wanted else "system-assigned identity"
        return fail(400, f"No managed {what} is assigned to this host.")
    lifetime = _lifetime(app, "token_lifetime_seconds", DEFAULT_TOKEN_LIFETIME)
    audience = resource.rstrip("/")
    token = jwt.mint(app.store.data["signing_key_pem"], tenant_id=_tenant_id(app),
                     object_id=str(chosen.get("object_id") or ""), audience=audience,
                     app_id=str(chosen["client_id"]), lifetime=lifetime, version=_token_version(audience))
    expires_on = int(time.time()) + lifetime
    body: dict[str, Any] = {"access_token": token, "expires_on": str(expires_on), "resource": resource,
                            "token_type": "Bearer", "client_id": str(chosen["client_id"])}
    if not app_service:
        body["expires_in"] = str(lifetime)
    return _json(200, body)
