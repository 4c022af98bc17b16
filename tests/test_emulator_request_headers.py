"""The loopback server's request headers (reconciler/emulator/server.py ``_RequestHeaders``) parse as the
standard library's do, a ``$batch``'s multipart Content-Type included."""

from __future__ import annotations

import http.client
import io

from reconciler.emulator.server import _RequestHandler, _RequestHeaders

BLOCK = (
    b"Host: 127.0.0.1:8400\r\nContent-Type: multipart/mixed; boundary=batch_0f1e\r\n"
    b"Authorization: Bearer abc\r\nX-Twice: 1\r\nX-Twice: 2\r\nPrefer: odata.continue-on-error\r\n"
    b"Content-Length: 12\r\n\r\n"
)


def test_request_headers_parse_as_the_standard_librarys() -> None:
    ours = http.client.parse_headers(io.BytesIO(BLOCK), _class=_RequestHeaders)
    stock = http.client.parse_headers(io.BytesIO(BLOCK))
    assert ours.items() == stock.items()
    assert ours.get_all("X-Twice") == ["1", "2"]
    assert ours.get_content_type() == stock.get_content_type() == "multipart/mixed"
    assert ours.get_param("boundary") == "batch_0f1e"
    assert _RequestHandler.MessageClass is _RequestHeaders
