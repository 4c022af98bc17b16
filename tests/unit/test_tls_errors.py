"""Which TLS failures the client gives up on at once (a certificate it cannot trust) and which it treats as a
connection that ended (a pooled keep-alive connection the server closed), retried like any dropped one."""

from __future__ import annotations

import ssl

import httpx

from reconciler.api.client import _tls_refused, _tls_why


def _wrapped(cause: BaseException) -> httpx.TransportError:
    try:
        try:
            raise cause
        except BaseException as inner:
            raise httpx.ReadError("read failed") from inner
    except httpx.TransportError as outer:
        return outer


def test_an_untrusted_certificate_is_a_refusal_named_as_such() -> None:
    exc = _wrapped(ssl.SSLCertVerificationError(1, "certificate verify failed"))
    assert _tls_refused(exc)
    assert _tls_why(exc) == "TLS: the server's certificate is not trusted"


def test_another_handshake_failure_is_a_refusal_not_called_a_certificate_problem() -> None:
    exc = _wrapped(ssl.SSLError(1, "wrong version number"))
    assert _tls_refused(exc)
    assert _tls_why(exc) == "TLS: the handshake failed"


def test_a_tls_connection_that_ended_is_not_a_refusal() -> None:
    for ended in (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), ssl.SSLZeroReturnError(6, "closed")):
        assert not _tls_refused(_wrapped(ended))
    assert not _tls_refused(httpx.ReadError("plain"))
