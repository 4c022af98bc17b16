"""The emulator remembers the bearer tokens it accepted (reconciler/emulator/jwt.py): a remembered token must
still be refused once expired, for another audience, or when presented against another signing key."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import jwt as pyjwt
import pytest
from jwt import api_jwt

from reconciler.emulator import jwt
from reconciler.emulator.web import HttpError

AUD = "https://org.crm.dynamics.com"
OTHER_AUD = "https://other.crm.dynamics.com"


@pytest.fixture(scope="module")
def keys() -> tuple[str, str]:
    return jwt.new_signing_key_pem(), jwt.new_signing_key_pem()


@pytest.fixture(autouse=True)
def empty_cache() -> Iterator[None]:
    jwt._accepted.clear()
    yield
    jwt._accepted.clear()


@pytest.fixture
def shift_clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Move the clock that both the emulator and PyJWT read by ``seconds``."""

    def shift(seconds: float) -> None:
        real_time = time.time
        real_now = datetime.now

        class Shifted(datetime):
            @classmethod
            def now(cls, tz: Any = None) -> Any:
                return real_now(tz) + timedelta(seconds=seconds)

        monkeypatch.setattr(time, "time", lambda: real_time() + seconds)
        monkeypatch.setattr(api_jwt, "datetime", Shifted)

    return shift


def mint(pem: str, **options: Any) -> str:
    return jwt.mint(pem, tenant_id="t", object_id="o", audience=options.pop("audience", AUD), app_id="a", **options)


def refusal(pem: str, token: str, audiences: list[str]) -> str:
    with pytest.raises(HttpError) as e:
        jwt.verify_bearer(pem, "Bearer " + token, audiences)
    assert e.value.status == 401
    return e.value.message


def test_a_remembered_token_is_refused_once_it_expires(keys: tuple[str, str], shift_clock: Any) -> None:
    pem = keys[0]
    token = mint(pem, lifetime=600)
    assert jwt.verify_bearer(pem, "Bearer " + token, [AUD]).object_id == "o"
    assert (pem, token) in jwt._accepted
    assert jwt.verify_bearer(pem, "Bearer " + token, [AUD]).object_id == "o"  # from memory
    shift_clock(601)
    assert "expired" in refusal(pem, token, [AUD])


def test_a_token_not_yet_valid_is_refused_then_accepted_when_its_time_comes(
    keys: tuple[str, str], shift_clock: Any
) -> None:
    pem = keys[0]
    token = mint(pem, now=time.time() + 300)
    assert "invalid" in refusal(pem, token, [AUD])
    assert "invalid" in refusal(pem, token, [AUD])  # a refusal is not remembered as an answer...
    shift_clock(301)
    assert jwt.verify_bearer(pem, "Bearer " + token, [AUD]).object_id == "o"  # ...nor kept once time passes


def test_a_remembered_token_is_refused_for_another_audience(keys: tuple[str, str]) -> None:
    pem = keys[0]
    token = mint(pem)
    jwt.verify_bearer(pem, "Bearer " + token, [AUD])
    assert "another audience" in refusal(pem, token, [OTHER_AUD])
    assert jwt.verify_bearer(pem, "Bearer " + token, [OTHER_AUD, AUD]).audience == AUD


def test_a_remembered_token_is_refused_against_another_signing_key(keys: tuple[str, str]) -> None:
    mine, other = keys
    token = mint(mine)
    jwt.verify_bearer(mine, "Bearer " + token, [AUD])
    assert "invalid" in refusal(other, token, [AUD])
    foreign = mint(other)
    for _ in range(2):
        assert "invalid" in refusal(mine, foreign, [AUD])


def test_a_token_changed_after_signing_is_refused(keys: tuple[str, str]) -> None:
    pem = keys[0]
    token = mint(pem)
    jwt.verify_bearer(pem, "Bearer " + token, [AUD])
    header, _, signature = token.split(".")
    claims = pyjwt.decode(token, options={"verify_signature": False})
    claims["oid"] = "someone-else"
    forged_payload = pyjwt.encode(claims, "k" * 32, algorithm="HS256").split(".")[1]
    assert "invalid" in refusal(pem, f"{header}.{forged_payload}.{signature}", [AUD])


def test_the_memory_is_bounded_and_drops_the_oldest(keys: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    pem = keys[0]
    monkeypatch.setattr(jwt, "_ACCEPTED_MAX", 3)
    tokens = [mint(pem, upn=f"u{i}@contoso.com") for i in range(5)]
    for t in tokens:
        jwt.verify_bearer(pem, "Bearer " + t, [AUD])
    assert [t for _, t in jwt._accepted] == tokens[2:]
    assert jwt.verify_bearer(pem, "Bearer " + tokens[0], [AUD]).upn == "u0@contoso.com"  # checked again


def test_time_checks_match_pyjwt_at_the_boundaries() -> None:
    t = int(time.time())
    assert jwt._times_pass({"iat": t, "nbf": t, "exp": t + 1}, t)
    assert not jwt._times_pass({"exp": t}, t)  # PyJWT: expired when exp <= now
    assert not jwt._times_pass({"nbf": t + 1}, t)
    assert not jwt._times_pass({"iat": t + 1}, t)
    assert not jwt._times_pass({"exp": "soon"}, t)
    assert jwt._times_pass({}, t)
