"""Signed JWT access tokens for the emulator: minted by the token endpoint, verified by every API route.

Uses PyJWT and cryptography, which msal already depends on. Tokens are RS256-signed with the key
in the environment's data file (``signing_key_pem``) so a token minted by one process is valid in
another that loads the same file (a test mints a token, a CLI run uses it).
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .web import HttpError, Principal

ISSUER_TEMPLATE = "https://login.microsoftonline.com/{tenant}/v2.0"
# v1.0 access tokens (resources that accept only those, e.g. Azure Storage) carry the STS issuer.
V1_ISSUER_TEMPLATE = "https://sts.windows.net/{tenant}/"


def new_signing_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


_KEYS_LOCK = threading.Lock()


@functools.lru_cache(maxsize=32)
def _load_private_key(signing_key_pem: str) -> Any:
    return serialization.load_pem_private_key(signing_key_pem.encode("ascii"), password=None)


def _private_key(signing_key_pem: str) -> Any:
    """Parse a PEM key once: loading an RSA key checks it and costs tens of milliseconds, which every
    request and every minted token would otherwise pay. Under a lock, so the first requests of several
    threads at once (one per environment of a run) load it once, not once each."""
    with _KEYS_LOCK:
        return _load_private_key(signing_key_pem)


def public_jwk(signing_key_pem: str, kid: str = "emulator") -> dict[str, Any]:
    key = _private_key(signing_key_pem)
    jwk: dict[str, Any] = pyjwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update({"kid": kid, "use": "sig", "alg": "RS256"})
    return jwk


def mint(
    signing_key_pem: str,
    *,
    tenant_id: str,
    object_id: str,
    audience: str,
    app_id: str | None = None,
    upn: str | None = None,
    lifetime: int = 3600,
    now: float | None = None,
    version: str = "2.0",
) -> str:
    """Mint an access token in the shape Entra issues (v2 claims; ``version="1.0"`` for the v1 issuer)."""
    t = int(now if now is not None else time.time())
    claims: dict[str, Any] = {
        "aud": audience,
        "iss": (V1_ISSUER_TEMPLATE if version == "1.0" else ISSUER_TEMPLATE).format(tenant=tenant_id),
        "iat": t,
        "nbf": t,
        "exp": t + lifetime,
        "oid": object_id,
        "sub": object_id,
        "tid": tenant_id,
        "uti": uuid.uuid4().hex,
        "ver": version,
    }
    if app_id:
        claims["appid"] = app_id
        claims["azp"] = app_id
        claims["idtyp"] = "app"
    if upn:
        claims["upn"] = upn
        claims["idtyp"] = "user"
    return pyjwt.encode(claims, _private_key(signing_key_pem), algorithm="RS256", headers={"kid": "emulator"})


def _norm_aud(a: str) -> str:
    a = a.strip().lower().rstrip("/")
    return a[: -len("/.default")] if a.endswith("/.default") else a


def verify_bearer(signing_key_pem: str, authorization: str | None, audiences: list[str]) -> Principal:
    """Check an ``Authorization: Bearer`` header; 401 for a missing, malformed, expired or
    wrong-audience token (the messages mirror Dataverse's and never echo the token)."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise HttpError(401, "0x80048306", "Bearer token is missing.",
                        {"WWW-Authenticate": 'Bearer error="invalid_request"'})
    token = authorization[7:].strip()
    try:
        claims = _checked_claims(signing_key_pem, token)
    except pyjwt.ExpiredSignatureError:
        raise HttpError(401, "0x80048306", "ExpiredAuthTicket: the access token has expired.",
                        {"WWW-Authenticate": 'Bearer error="invalid_token", error_description="expired"'}) from None
    except pyjwt.PyJWTError:
        raise HttpError(401, "0x80048306", "BadAuthTicket: the access token is invalid.",
                        {"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None
    wanted = {_norm_aud(a) for a in audiences}
    if _norm_aud(str(claims.get("aud", ""))) not in wanted:
        raise HttpError(401, "0x80048306", "BadAuthTicket: the access token was issued for another audience.",
                        {"WWW-Authenticate": 'Bearer error="invalid_token", error_description="audience"'})
    return Principal(
        object_id=str(claims.get("oid", "")),
        tenant_id=str(claims.get("tid", "")),
        app_id=claims.get("appid"),
        upn=claims.get("upn"),
        audience=str(claims.get("aud", "")),
    )


# Tokens PyJWT accepted, with their claims, keyed by (signing key, exact token string); at most _ACCEPTED_MAX,
# the oldest dropped first. It cannot change an answer: PyJWT's checks of a token are its signature and format
# (the same for the same token and key, every time) and its times (iat, nbf, exp against the clock). A
# remembered token is answered from here only while its times still pass, checked on every request; once one
# does not, PyJWT checks the token again and gives its own refusal. The audience and every rule after it are
# checked on every request by the callers, from the claims.
_ACCEPTED_MAX = 1024
_accepted: dict[tuple[str, str], dict[str, Any]] = {}
_accepted_lock = threading.Lock()


def _checked_claims(signing_key_pem: str, token: str) -> dict[str, Any]:
    """The claims of ``token`` if it is signed with ``signing_key_pem`` and valid now (signature, format, iat,
    nbf, exp; not the audience); PyJWT's error otherwise. The claims are not to be changed (they are shared)."""
    cache_key = (signing_key_pem, token)
    claims = _accepted.get(cache_key)
    if claims is not None and _times_pass(claims, time.time()):
        return claims
    key = _private_key(signing_key_pem).public_key()
    claims = pyjwt.decode(token, key, algorithms=["RS256"], options={"verify_aud": False})
    with _accepted_lock:
        if len(_accepted) >= _ACCEPTED_MAX:
            _accepted.pop(next(iter(_accepted)), None)
        _accepted[cache_key] = claims
    return claims


def _times_pass(claims: dict[str, Any], now: float) -> bool:
    """PyJWT's time checks (no leeway), all passing: issued and valid from no later than now, expiring after
    now. False when any fails (or cannot be read): the caller then lets PyJWT decide."""
    try:
        return (
            ("iat" not in claims or int(claims["iat"]) <= now)
            and ("nbf" not in claims or int(claims["nbf"]) <= now)
            and ("exp" not in claims or int(claims["exp"]) > now)
        )
    except (TypeError, ValueError, OverflowError):
        return False
