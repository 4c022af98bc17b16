"""Request and response primitives of the emulator's WSGI application.

Kept tiny and dependency-free so every route module (Dataverse, connections, tokens) speaks the
same types, and the same objects serve loopback sockets and in-process clients (httpx's WSGI
transport, ``reconciler.api.session.InProcessTransport``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl


class Headers:
    """Case-insensitive, read-only view over request headers."""

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        self._d: dict[str, str] = {}
        for k, v in items:
            self._d[k.lower()] = v

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._d.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._d

    def items(self) -> Iterable[tuple[str, str]]:
        return self._d.items()


@dataclass
class Request:
    """One HTTP request as the emulator sees it (also used for the parts of a ``$batch``)."""

    method: str
    path: str  # without the query string, percent-decoded
    query_string: str
    headers: Headers
    body: bytes = b""
    scheme: str = "http"
    host: str = "localhost"
    # Per-request facts the routes learn (caller, effective user, batch parts) for the request log.
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(self.query_string, keep_blank_values=True))

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.host}"

    def json(self) -> Any:
        if not self.body:
            return None
        return json.loads(self.body.decode("utf-8"))


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Response:
        h = {"Content-Type": "application/json; odata.metadata=minimal", "OData-Version": "4.0"}
        h.update(headers or {})
        return cls(status, json.dumps(payload).encode("utf-8"), h)

    @classmethod
    def empty(cls, status: int = 204, headers: Mapping[str, str] | None = None) -> Response:
        h = {"OData-Version": "4.0"}
        h.update(headers or {})
        return cls(status, b"", h)


#: Reason phrases of statuses outside the HTTP standard that a CDN in front of a service answers with
#: (Cloudflare's 52x: https://developers.cloudflare.com/support/troubleshooting/http-status-codes/cloudflare-5xx-errors/).
_CDN_PHRASES = {
    520: "Web Server Returned an Unknown Error",
    521: "Web Server Is Down",
    522: "Connection Timed Out",
    523: "Origin Is Unreachable",
    524: "A Timeout Occurred",
    525: "SSL Handshake Failed",
    526: "Invalid SSL Certificate",
}


def reason_phrase(status: int) -> str:
    """The reason phrase of a status line: the standard one, a CDN's for its own codes, else ``Unknown``
    (clients key on the code; the phrase is only read by people)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return _CDN_PHRASES.get(status, "Unknown")


class HttpError(Exception):
    """Raised inside route code to answer with an error in the documented Dataverse shape
    ``{"error": {"code": ..., "message": ...}}``."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    def response(self, annotations: bool = False) -> Response:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if annotations:
            # Documented extra keys with Prefer: odata.include-annotations="*" (compose-http-requests-handle-errors).
            err["@Microsoft.PowerApps.CDS.ErrorDetails.OperationStatus"] = "0"
            err["@Microsoft.PowerApps.CDS.ErrorDetails.SubErrorCode"] = "-2146233088"
            err["@Microsoft.PowerApps.CDS.HelpLink"] = (
                "http://go.microsoft.com/fwlink/?LinkID=398563&error=Microsoft.Crm.CrmException%3a"
                + (self.code[2:] if self.code.startswith("0x") else self.code)
                + "&client=platform"
            )
            err["@Microsoft.PowerApps.CDS.TraceText"] = ""
            err["@Microsoft.PowerApps.CDS.InnerError.Message"] = self.message
        return Response.json(self.status, {"error": err}, self.headers)


@dataclass(frozen=True)
class Principal:
    """Who a valid bearer token says the caller is."""

    object_id: str
    tenant_id: str
    app_id: str | None = None  # set for service principals and managed identities
    upn: str | None = None  # set for users (azure_cli tokens)
    audience: str = ""
