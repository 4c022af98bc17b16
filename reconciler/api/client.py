"""The HTTP boundary: the only module in connref that speaks HTTP or builds a URL.

Two clients share one request core (``_HttpCore``):

- ``DataverseClient`` talks to the Dataverse Web API (``/api/data/v9.2/``): reads in pages, ``$batch``
  change sets for writes, ``WhoAmI``, the org-specific component type of connection references.
- ``ConnectionsClient`` talks to the connections API (Power Platform API, with the classic Power Apps
  admin route for listing every connection of an environment).

The core adds the bearer token and the standard OData headers, retries what is worth retrying
(429 honouring ``Retry-After``, 502/503/504 and dropped connections with exponential backoff and
jitter, all inside a bounded total wait), refreshes the token once on a 401, and maps the documented
error body ``{"error": {"code", "message"}}`` to the typed exceptions of ``reconciler.errors``.
Sources: compose-http-requests-handle-errors (headers, status codes, error body), api-limits
(429/Retry-After), page-results (paging), execute-batch-operations-using-web-api ($batch), all under
https://learn.microsoft.com/power-apps/developer/data-platform/ (docs/dataverse.md §3.1-§3.8).

No message built here contains the ``Authorization`` header or a token: only the method, the URL
(which never carries a secret) and the service's own error code and message, through ``redact``: the
credentials the request carried (a token request's secret or assertion, in every encoding it may come
back in, should the service echo the request) and anything shaped like a bearer token or a JWT removed.

OData ``$filter`` expressions are built only with the helpers of ``reconciler.api.odata_filter`` (``eq``,
``any_of``, ...), which escape every value (single quotes doubled) and accept only plain column names,
so no user value can change the meaning of a query. The ``$batch`` operations and the multipart
response parser are in ``reconciler.api.batch_format``; this module sends them.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import random
import re
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypedDict
from urllib.parse import SplitResult, parse_qsl, quote, urlsplit

import httpx

from reconciler.api.batch_format import (
    MAX_BATCH_OPERATIONS,
    BatchOperation,
    MultipartPart,
    OperationResult,
    entity_id_from_headers,
    multipart_boundary,
    parse_multipart,
)
from reconciler.api.odata_filter import Filter, checked_column, entity_path, eq, literal
from reconciler.api.shapes import (
    CONNECTION,
    INSTANCE_DISCOVERY,
    MEMBER_GROUPS,
    OPENID_CONFIGURATION,
    ROWS,
    SHARE,
    TOKEN,
    TOKEN_ERROR,
    USER_PRIVILEGES,
    WHO_AM_I,
    Limits,
    Shape,
    ShapeProblem,
    check,
    check_collection,
    parse_json,
)
from reconciler.domain.patterns import GUID, JWT
from reconciler.errors import (
    ApiError,
    MalformedResponseError,
    NotFoundError,
    OutcomeUnknownError,
    PreconditionFailedError,
    ThrottledError,
    TransientError,
)

if TYPE_CHECKING:
    from reconciler.api.auth import TokenProvider

log = logging.getLogger(__name__)

API_PATH = "/api/data/v9.2/"
#: Dataverse caps a page at 5000 rows; larger values are ignored (docs/dataverse.md §3.5).
MAX_PAGE_SIZE = 5000
#: Standard headers recommended by compose-http-requests-handle-errors (docs/dataverse.md §3.1).
STANDARD_HEADERS = {"Accept": "application/json", "OData-MaxVersion": "4.0", "OData-Version": "4.0"}
#: Power Platform API (connectivity) version used by the Terraform provider (docs/dataverse.md §4.2).
PP_API_VERSION = "1"
#: Classic Power Apps API version for the admin connection list (docs/dataverse.md §4.2, §4.3).
POWERAPPS_API_VERSION = "2016-11-01"
#: The version the admin PowerShell sends to a connection's permissions routes (docs/dataverse.md §4.8).
POWERAPPS_PERMISSIONS_API_VERSION = "2017-06-01"
#: Public-cloud hosts and token scopes of the connections APIs (docs/dataverse.md §4.2, §6.1).
POWERAPPS_BASE = "https://api.powerapps.com"
POWERAPPS_SCOPE = "https://service.powerapps.com/.default"
POWERPLATFORM_SCOPE = "https://api.powerplatform.com/.default"
GRAPH_BASE = "https://graph.microsoft.com"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"

# Throttled (429, honouring Retry-After) and unavailable (503) answers: retried for any request but a
# $batch of writes (below). 500, 502 and 504 may come after the service acted (a gateway that timed out
# while it committed): retried for requests that may be repeated only (docs/dataverse.md §3.8, §3.12).
_RETRY_STATUSES = frozenset({429, 503})
_RETRY_IF_REPEATABLE = frozenset({500, 502, 504})
#: The one answer after which a $batch of writes is sent again: a 429 refuses the request before it is
#: processed (docs/dataverse.md §3.8). A 503 is not proof of that: a gateway or load balancer in front of
#: the service answers it too, after handing the request on (docs/dataverse.md §3.12), so it is settled like
#: any lost answer.
_WRITE_RETRY_STATUSES = frozenset({429})
#: 4xx answers that refuse nothing: the request timed out somewhere on its way, and may have been served.
_LOST_CLIENT_STATUSES = frozenset({408})

_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
_BEARER = re.compile(r"(?i)bearer\s+[A-Za-z0-9._\-~+/=]+")
_PATH_SEGMENT = re.compile(r"^[A-Za-z0-9_.\-]+$")
# Characters left as they are in a query value: everything else is percent-encoded, so a value can
# never add a parameter (&), end the query (#) or turn into a space (+).
_QUERY_SAFE = "'(),/:$@"


def outcome_unknown(status: int) -> bool:
    """Whether an answer with ``status`` that is not the service's own ``$batch`` answer leaves the writes'
    outcome unknown: every 5xx (a server's or a gateway's, 500-511 and the 52x of CDNs alike: none proves
    the writes were not committed) and a 408. Only a 4xx refusal of the request (400, 401, 403, 404, 413,
    a 429 past the retries...) says nothing was written (docs/dataverse.md §3.12)."""
    return status >= 500 or status in _LOST_CLIENT_STATUSES


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """A message without ``secrets`` and without anything shaped like a bearer token or a JWT: what every
    error built from a service's answer goes through, Dataverse's and the identity platform's alike.

    A service that echoes a request in its error (a token endpoint repeating the form it was sent, a proxy
    quoting the request) hands a secret back in the encoding it travelled in, so each secret is removed
    as sent and percent-encoded in any mix (``quote_plus`` and ``quote``, either case of hex, ``+`` for a
    space, even the ``%`` encoded again), and with ``/`` escaped as JSON may write it. Values shorter than
    four characters are left alone: they would redact ordinary words."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = _secret_pattern(secret).sub("<redacted>", text)
    return JWT.sub("<redacted>", _BEARER.sub("Bearer <redacted>", text))


def _hex_byte(byte: int) -> str:
    """A regex for one byte percent-encoded: ``%2F``, ``%2f`` or ``%252F`` (the ``%`` encoded again)."""
    digits = "".join(f"[{d.upper()}{d.lower()}]" if d.isalpha() else d for d in f"{byte:02X}")
    return "%(?:25)?" + digits


def _secret_pattern(secret: str) -> re.Pattern[str]:
    """A regex matching ``secret`` in every encoding ``redact`` removes it in."""
    parts = []
    for char in secret:
        forms = [re.escape(char), "".join(_hex_byte(b) for b in char.encode("utf-8"))]
        if char == " ":
            forms.append(r"\+")
        if char == "/":
            forms.append(r"\\/")
        parts.append("(?:" + "|".join(forms) + ")")
    return re.compile("".join(parts))


#: Form fields and headers of a token request that carry a credential (OAuth 2.0 client authentication,
#: RFC 6749 §2.3 and RFC 7523; the managed identity endpoints' header; a bearer or basic credential).
_SECRET_FIELDS = frozenset({"client_secret", "client_assertion", "assertion", "password", "refresh_token"})
_SECRET_HEADERS = frozenset({"authorization", "x-identity-header", "secret"})


def sent_secrets(data: Any = None, headers: Mapping[str, str] | None = None, body: bytes | None = None) -> list[str]:
    """The credentials a request carries (form fields, whether a mapping or an encoded body, and headers):
    what an error answer that echoes the request must not be allowed to show."""
    fields: list[tuple[str, Any]] = list(data.items()) if isinstance(data, Mapping) else []
    if body:
        with contextlib.suppress(UnicodeDecodeError):
            fields += parse_qsl(body.decode("utf-8"), keep_blank_values=True)
    found = [str(v) for k, v in fields if str(k).lower() in _SECRET_FIELDS and v]
    for name, value in (headers or {}).items():
        if name.lower() in _SECRET_HEADERS and value:
            found.append(str(value))
            _scheme, _, credential = str(value).partition(" ")
            if credential:
                found.append(credential.strip())
    return found


# --------------------------------------------------------------------------- URLs


def power_platform_api_base(environment_id: str, cloud: str = "public") -> str:
    """The Power Platform API host of an environment (docs/dataverse.md §4.2, from the Terraform provider's
    ``helpers/uri.go``): the id without dashes, minus its last two characters, a dot, the last two
    characters, then ``.environment.api.powerplatform.com``."""
    if cloud != "public":
        raise ValueError(f"no known Power Platform API host for cloud {cloud!r}: set connections_url")
    compact = environment_id.replace("-", "").lower()
    if len(compact) < 3 or not compact.isalnum():
        raise ValueError(f"not an environment id: {environment_id!r}")
    return f"https://{compact[:-2]}.{compact[-2:]}.environment.api.powerplatform.com"


def scope_for(url: str) -> str:
    """The token scope of a resource URL: its origin plus ``/.default`` (docs/dataverse.md §6.1)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/.default"


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _query(params: Mapping[str, object] | None) -> str:
    if not params:
        return ""
    items = []
    for key, value in params.items():
        if value is None:
            continue
        text = value.text if isinstance(value, Filter) else str(value)
        items.append(f"{quote(key, safe='$@')}={quote(text, safe=_QUERY_SAFE)}")
    return "&".join(items)


def _display_url(url: str) -> str:
    return url if len(url) <= 300 else url[:297] + "..."


def loggable_url(url: str | httpx.URL) -> str:
    """A URL fit for a log line: scheme, host, port and path, and the query's parameter names without
    their values (``?$select=...&$filter=...``): no user info, and nothing a caller put in a value."""
    try:
        parts = urlsplit(str(url))
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{port}" if port else "")
    names = [pair.split("=", 1)[0] for pair in parts.query.split("&") if pair]
    query = "?" + "&".join(f"{name}=..." for name in names) if names else ""
    return redact(_display_url(f"{parts.scheme}://{netloc}{parts.path}{query}"))


http_log = logging.getLogger("reconciler.api.http")


class _LoggableUrl:
    """``loggable_url`` of a URL, worked out only when a log line is written with it."""

    __slots__ = ("url",)

    def __init__(self, url: str | httpx.URL) -> None:
        self.url = url

    def __str__(self) -> str:
        return loggable_url(self.url)


def request_log_hooks(label: str) -> dict[str, list[Callable[[Any], None]]]:
    """httpx event hooks that log every request of one environment's client (the API calls, and the
    token requests MSAL sends through it): method, URL (``loggable_url``), status and time to the
    answer's headers, at debug level. The progress display counts them per environment."""
    started: dict[int, float] = {}
    lock = threading.Lock()

    # Nothing is timed or worded when no handler would see the line (a pipeline's log): at 20 environments
    # the hooks run for every request while other environments wait for the same CPU.
    def on_request(request: httpx.Request) -> None:
        if http_log.isEnabledFor(logging.DEBUG):
            with lock:
                started[id(request)] = time.monotonic()

    def on_response(response: httpx.Response) -> None:
        request = response.request
        with lock:
            t0 = started.pop(id(request), None)
        if not http_log.isEnabledFor(logging.DEBUG):
            return
        elapsed = f"{(time.monotonic() - t0) * 1000:.0f} ms" if t0 is not None else "?"
        http_log.debug(
            "%s: %s %s -> %s (%s)", label, request.method, _LoggableUrl(request.url), response.status_code,
            elapsed, extra={"connref_env": label, "connref_state": "request"},
        )

    return {"request": [on_request], "response": [on_response]}


# --------------------------------------------------------------------------- request core


class RefreshableTokenProvider(Protocol):
    """A provider that can drop a cached token (asked after a 401)."""

    def invalidate(self, scope: str) -> None: ...


def _error_body(resp: httpx.Response, secrets: Sequence[str] = ()) -> tuple[str | None, str | None, Any]:
    """(code, message, parsed body) of an error answer: the Dataverse and connections APIs'
    ``{"error": {"code", "message"}}``, or the identity platform's ``{"error": "...",
    "error_description": "..."}`` (RFC 6749 §5.2). A body that is neither is shown cut short, redacted
    first (``secrets`` and tokens), so a cut never leaves half a secret or half a token to be shown."""
    try:
        body = parse_json(resp.content, content_type=resp.headers.get("Content-Type"))
    except ShapeProblem:
        try:
            text = resp.text.strip()
        except (UnicodeDecodeError, LookupError):
            text = ""
        if text.startswith("<"):
            return None, f"an HTML page ({len(resp.content)} bytes)", None
        return None, (redact(text, secrets)[:300] or None), None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        return (_text(err.get("code")) or None), (_text(err.get("message")) or None), body
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        description = _text(body.get("error_description")).replace("\r\n", "\n").split("\n")[0]
        return (body["error"] or None), (description or None), body
    return None, None, body


def _text(value: Any) -> str:
    """A scalar of an error body as text; anything else (a nested object or list) is not a message."""
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    return ""


def error_from_response(method: str, url: str, resp: httpx.Response, *, after: str = "",
                        secrets: Iterable[str] = ()) -> ApiError:
    """The typed exception for an error response, with a message safe to print: ``secrets`` (what the request
    carried) and anything shaped like a token are redacted (``redact``)."""
    secrets = list(secrets)
    code, message, body = _error_body(resp, secrets)
    status = resp.status_code
    cls: type[ApiError]
    if status == 404:
        cls = NotFoundError
    elif status == 412:
        cls = PreconditionFailedError
    elif status == 429:
        cls = ThrottledError
    elif status in (500, 502, 503, 504):
        cls = TransientError
    else:
        cls = ApiError
    shown = _display_url(url)
    text = f"{method} {shown}: HTTP {status}"
    if code:
        text += f" {code}"
    if message:
        text += f": {message}"
    if after:
        text += f" ({after})"
    return cls(redact(text, secrets), status=status, code=code, method=method, url=shown, body=body)


def malformed(method: str, url: str, status: int | None, problem: str) -> MalformedResponseError:
    """The error for an answer connref cannot read: method, URL, status and what was wrong."""
    shown = _display_url(url)
    where = f"HTTP {status}" if status is not None else "the answer"
    return MalformedResponseError(
        redact(f"{method} {shown}: {where}: connref cannot read this answer: {problem}"),
        problem=problem, status=status, method=method, url=shown,
    )


@dataclass(frozen=True)
class RetryPolicy:
    """How hard a client tries before giving up: retries on 429 (honouring Retry-After), 5xx and dropped
    connections, with exponential backoff and jitter, within a total wait. ``sleep`` and ``jitter`` are
    injectable so tests count waits instead of waiting."""

    max_retries: int = 5
    max_total_wait: float = 120.0
    backoff_base: float = 1.0
    sleep: Callable[[float], None] = time.sleep
    jitter: Callable[[], float] = random.random


class _BodyTooLarge(Exception):
    pass


#: TLS errors that are a connection ending (the peer closed it, or it broke mid-record), not a refusal:
#: a pooled keep-alive connection the server has closed ends so, and is retried like any dropped one.
_TLS_CONNECTION_ENDED = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what caused it, five deep (httpx wraps the ``ssl`` error it met)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return
        yield seen
        seen = seen.__cause__ or seen.__context__


def _tls_refused(exc: BaseException) -> bool:
    """Whether a transport error is a TLS handshake that failed (an untrusted or wrong certificate, or a
    server that does not speak TLS); a TLS connection that merely ended is not."""
    for seen in _causes(exc):
        if isinstance(seen, _TLS_CONNECTION_ENDED):
            return False
        if isinstance(seen, ssl.SSLError):
            return True
    return False


def _tls_untrusted(exc: BaseException) -> bool:
    """Whether a transport error is the server's certificate refused: it stays refused, however often asked."""
    return any(isinstance(seen, ssl.SSLCertVerificationError) for seen in _causes(exc))


def _tls_why(exc: BaseException) -> str:
    if _tls_untrusted(exc):
        return "TLS: the server's certificate is not trusted"
    return "TLS: the handshake failed"


class _Transport:
    """Retries and bounded reading over a shared ``httpx.Client``: what every request connref sends
    goes through (the APIs' and the identity platform's).

    Retried: 429 (honouring ``Retry-After``) and 503 for any method, unless the caller names the statuses
    that prove its request was not acted on (``retry_statuses``: a ``$batch`` of writes is sent again after
    a 429 only); 500, 502, 504 and a connection dropped after sending only when the request may be
    repeated (``_may_repeat``: reads; a ``$batch`` may have been committed). A request that may not be
    repeated and meets one of those ends in ``OutcomeUnknownError`` (docs/dataverse.md §3.12). Every
    answer is read whole, up to ``limits.max_body_bytes``, before anything looks at it."""

    def __init__(self, http: httpx.Client, *, retry: RetryPolicy | None = None,
                 limits: Limits | None = None, label: str = "") -> None:
        self._http = http
        self.retry = retry or RetryPolicy()
        self.limits = limits or Limits()
        self.label = label  # the environment's name, for the log and the progress display
        # Answers of GETs already received inside a read ``$batch`` (``DataverseClient.prefetch``), by URL:
        # the next GET of that URL takes its answer from here, once, instead of from the network.
        self._prefetched: dict[str, httpx.Response] = {}
        self._prefetched_lock = threading.Lock()

    def _log_wait(self, method: str, url: str, why: str, attempt: int, delay: float) -> None:
        """Say that a request is retried and how long it waits first: a wait over a second is a warning,
        so it is shown even without -v (a throttled run never sits silent)."""
        level = logging.WARNING if delay > 1.0 else logging.INFO
        who = f"{self.label}: " if self.label else ""
        log.log(
            level, "%s%s %s: %s; retry %d of %d in %.1f s", who, method, loggable_url(url), why,
            attempt + 1, self.retry.max_retries, delay,
            extra={"connref_env": self.label or None, "connref_state": "wait", "connref_delay": delay},
        )

    # -- hooks

    def _may_repeat(self, method: str) -> bool:
        """Whether a request that may have reached the service can be sent again."""
        return method.upper() in _IDEMPOTENT

    def _request_headers(self, scope: str | None, extra: Mapping[str, str] | None,
                         has_body: bool) -> dict[str, str]:
        return dict(extra or {})

    def _unauthorized(self, scope: str | None) -> bool:
        """Called on a first 401: True to send the request again (with a fresh token)."""
        return False

    # -- plumbing

    def _wait_to_resend(self, method: str, url: str, resp: httpx.Response, attempt: int, waited: float,
                        delay: float) -> bool:
        """Wait ``delay`` before sending a request again after ``resp``, saying why (its status, and
        Retry-After when it gave one); False, without waiting, when the retry budget does not allow it."""
        if attempt >= self.retry.max_retries or waited + delay > self.retry.max_total_wait:
            return False
        why = f"HTTP {resp.status_code}" + (" (throttled)" if resp.status_code == 429 else "")
        asked = self._retry_after(resp)
        if asked is not None:
            why += f", Retry-After {asked:g} s"
        self._log_wait(method, url, why, attempt, delay)
        self.retry.sleep(delay)
        return True

    def _backoff(self, attempt: int) -> float:
        # Exponential backoff with jitter (half fixed, half random) so parallel readers spread out.
        delay = self.retry.backoff_base * 2.0**attempt
        return delay / 2 + self.retry.jitter() * delay / 2

    @staticmethod
    def _retry_after(resp: httpx.Response) -> float | None:
        value = resp.headers.get("Retry-After")
        if not value:
            return None
        value = value.strip()
        try:
            return max(0.0, float(value))  # Dataverse sends seconds (api-limits).
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())

    @staticmethod
    def _never_sent(exc: httpx.TransportError) -> bool:
        """Whether a transport error happened before the request left (connect, pool)."""
        return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)

    def _retryable_transport(self, method: str, exc: httpx.TransportError, repeatable: bool,
                             attempt: int = 0) -> bool:
        # A failure before the request left (connect, pool) is safe to retry for any method. A
        # connection dropped after sending is retried only when the request may be repeated: a POST
        # ($batch) may already have been committed, and repeating it is not ours to decide.
        if _tls_refused(exc):
            # An untrusted certificate stays untrusted. Another failed handshake is tried once more (the
            # request was not sent): a loaded server or middlebox can break one, while a server that does
            # not speak TLS on that port fails the second time too, and is said after two attempts.
            return not _tls_untrusted(exc) and attempt == 0
        if self._never_sent(exc):
            return True
        return repeatable

    def _retryable_status(self, status: int, repeatable: bool) -> bool:
        if status in _RETRY_STATUSES:
            return True
        return status in _RETRY_IF_REPEATABLE and repeatable

    def _fetch(self, method: str, url: str, headers: Mapping[str, str], content: bytes | None,
               **request: Any) -> httpx.Response:
        """One request, its answer read whole within the size limit (``_BodyTooLarge`` past it)."""
        req = self._http.build_request(method, url, headers=headers, content=content, **request)
        resp = self._http.send(req, stream=True)
        try:
            declared = resp.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > self.limits.max_body_bytes:
                raise _BodyTooLarge()
            chunks: list[bytes] = []
            size = 0
            for chunk in resp.iter_bytes():
                size += len(chunk)
                if size > self.limits.max_body_bytes:
                    raise _BodyTooLarge()
                chunks.append(chunk)
        finally:
            resp.close()
        # The body is decoded already: drop the headers that described it on the wire.
        kept = [(k, v) for k, v in resp.headers.multi_items()
                if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")]
        return httpx.Response(resp.status_code, headers=kept, content=b"".join(chunks), request=req)

    def send(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        scope: str | None = None,
        raise_for_status: bool = True,
        repeatable: bool | None = None,
        secrets: Sequence[str] = (),
        retry_statuses: frozenset[int] | None = None,
        **request: Any,
    ) -> httpx.Response:
        """Send one request (absolute ``url``) with retries; raise the typed error for a failure.
        ``repeatable``: whether the request may be sent again after it may have reached the service
        (default: by method, ``_may_repeat``). One that may not, and whose answer is lost after it was
        sent (a dropped connection, a timeout), raises ``OutcomeUnknownError``. ``secrets``: credentials the
        request carries, redacted from any error built from its answer (``redact``). ``retry_statuses``, when
        given, are the only statuses sent again (for a write, those that prove it was not acted on)."""
        if method == "GET" and self._prefetched:
            with self._prefetched_lock:
                answered = self._prefetched.pop(url, None)
            if answered is not None:
                return answered
        content = body
        if json_body is not None:
            content = json.dumps(json_body).encode("utf-8")
        if repeatable is None:
            repeatable = self._may_repeat(method)
        refreshed = False
        attempt = 0
        waited = 0.0
        while True:
            req_headers = self._request_headers(scope, headers, content is not None)
            try:
                resp = self._fetch(method, url, req_headers, content, **request)
            except _BodyTooLarge:
                raise malformed(method, url, None,
                                f"the body is larger than {self.limits.max_body_bytes} bytes") from None
            except httpx.TransportError as exc:
                kind = type(exc).__name__
                delay = self._backoff(attempt)
                if not repeatable and not self._never_sent(exc) and not _tls_refused(exc):
                    raise OutcomeUnknownError(
                        f"{method} {_display_url(url)}: the answer was lost after the request was sent "
                        f"({kind})", why=f"the connection failed after the request was sent ({kind})",
                        method=method, url=_display_url(url),
                    ) from None
                if (
                    not self._retryable_transport(method, exc, repeatable, attempt)
                    or attempt >= self.retry.max_retries
                    or waited + delay > self.retry.max_total_wait
                ):
                    why = _tls_why(exc) if _tls_refused(exc) else kind
                    raise TransientError(
                        f"{method} {_display_url(url)}: connection failed ({why}) "
                        f"after {attempt + 1} attempt(s)",
                        method=method,
                        url=_display_url(url),
                    ) from None
                self._log_wait(method, url, f"connection failed ({kind})", attempt, delay)
                self.retry.sleep(delay)
                waited += delay
                attempt += 1
                continue
            status = resp.status_code
            if status == 401 and not refreshed and self._unauthorized(scope):
                # A token can expire or be revoked between two requests: get a fresh one, once.
                log.info("%s%s %s: HTTP 401; fetching a new token and trying once more",
                         f"{self.label}: " if self.label else "", method, loggable_url(url))
                refreshed = True
                continue
            if status in retry_statuses if retry_statuses is not None else self._retryable_status(status, repeatable):
                asked = self._retry_after(resp)
                delay = self._backoff(attempt) if asked is None else asked
                if not self._wait_to_resend(method, url, resp, attempt, waited, delay):
                    raise error_from_response(
                        method, url, resp,
                        after=f"gave up after {attempt + 1} attempt(s) and {waited:.0f}s of waiting",
                        secrets=secrets,
                    )
                waited += delay
                attempt += 1
                continue
            if status >= 400 and raise_for_status:
                raise error_from_response(method, url, resp, secrets=secrets)
            return resp

    def read_json(self, method: str, url: str, resp: httpx.Response) -> Any:
        """The JSON of an answer, or ``MalformedResponseError`` saying why there is none."""
        try:
            return parse_json(resp.content, content_type=resp.headers.get("Content-Type"), limits=self.limits)
        except ShapeProblem as exc:
            raise malformed(method, url, resp.status_code, str(exc)) from None


class _HttpCore(_Transport):
    """Auth header, standard headers, retries, 401 refresh and error mapping for one API."""

    def __init__(
        self,
        token_provider: TokenProvider,
        *,
        http: httpx.Client,
        scope: str,
        retry: RetryPolicy | None = None,
        limits: Limits | None = None,
        label: str = "",
    ) -> None:
        super().__init__(http, retry=retry, limits=limits, label=label)
        self._tokens = token_provider
        self.scope = scope

    def _unauthorized(self, scope: str | None) -> bool:
        invalidate = getattr(self._tokens, "invalidate", None)
        if callable(invalidate):
            invalidate(scope or self.scope)
        return True

    def _request_headers(self, scope: str | None, extra: Mapping[str, str] | None,
                         has_body: bool) -> dict[str, str]:
        headers = dict(STANDARD_HEADERS)
        if has_body:
            headers["Content-Type"] = "application/json"
        headers.update(extra or {})
        headers["Authorization"] = "Bearer " + self._tokens.get_token(scope or self.scope)
        return headers

    def get_json(self, url: str, *, shape: Shape | None = None, scope: str | None = None,
                 headers: Mapping[str, str] | None = None) -> Any:
        """GET ``url`` and return its JSON, checked against ``shape`` when one is given."""
        resp = self.send("GET", url, headers=headers, scope=scope)
        doc = self.read_json("GET", url, resp)
        if shape is not None:
            try:
                check(doc, shape)
            except ShapeProblem as exc:
                raise malformed("GET", url, resp.status_code, str(exc)) from None
        return doc

    def get_pages(
        self,
        url: str,
        *,
        row: Shape | None,
        selected: Sequence[str] = (),
        headers: Mapping[str, str] | None = None,
        scope: str | None = None,
        next_link_keys: Sequence[str] = ("@odata.nextLink",),
        same_path: bool = True,
        first_page: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Every row of a paged collection, following its next links (page-results) unchanged.

        A next link must stay on the first page's origin (it would receive our bearer token) and, with
        ``same_path``, on its path; a link already followed (a loop) and more than ``limits.max_pages``
        pages are errors, not endless reads. ``first_page`` is handed the first page's rows once they passed
        their checks, while the next page is on its way: a caller can start what needs only them."""
        first = urlsplit(url)
        rows: list[dict[str, Any]] = []
        seen = {url}
        next_url: str | None = url
        pages = 0
        # The next page is asked for as soon as its link is known and followable, and this page's rows
        # are checked while it is on its way; what is raised, and when, is as if read one after the other.
        ahead: Future[httpx.Response] | None = None
        pool: ThreadPoolExecutor | None = None
        try:
            while next_url:
                current = next_url
                pages += 1
                if ahead is not None:
                    resp, ahead = ahead.result(), None
                else:
                    resp = self.send("GET", current, headers=headers, scope=scope)
                # The services write the next link last: read it from the body's tail, so the next page is
                # on its way while this one is parsed; the parsed page must then name the same link, or
                # that answer is dropped and the link the page names is read instead.
                guessed = _tail_next_link(resp.content, next_link_keys)
                if guessed is not None and self._link_problem(guessed, url, first, same_path, seen, pages) is None:
                    pool = pool or ThreadPoolExecutor(max_workers=1, thread_name_prefix="next-page")
                    ahead = pool.submit(self.send, "GET", guessed, headers=headers, scope=scope)
                else:
                    guessed = None
                doc = self.read_json("GET", current, resp)
                early = _next_link(doc, next_link_keys)
                if ahead is not None and early != guessed:
                    with contextlib.suppress(Exception):
                        ahead.result()
                    ahead = None
                if ahead is None and early is not None and (
                        self._link_problem(early, url, first, same_path, seen, pages) is None):
                    pool = pool or ThreadPoolExecutor(max_workers=1, thread_name_prefix="next-page")
                    ahead = pool.submit(self.send, "GET", early, headers=headers, scope=scope)
                try:
                    page, link = check_collection(doc, row, selected, next_link_keys)
                except ShapeProblem as exc:
                    raise malformed("GET", current, resp.status_code, str(exc)) from None
                rows.extend(page)
                if first_page is not None and pages == 1:
                    first_page(page)
                next_url = None
                if not link:
                    break
                problem = self._link_problem(link, url, first, same_path, seen, pages)
                if problem:
                    raise malformed("GET", current, resp.status_code, problem)
                seen.add(link)
                next_url = link
        finally:
            if ahead is not None:  # this page failed its checks: the page asked for ahead is not used
                with contextlib.suppress(Exception):
                    ahead.result()
            if pool is not None:
                pool.shutdown()
        return rows

    def _link_problem(self, link: str, url: str, first: SplitResult, same_path: bool, seen: set[str],
                      pages: int) -> str | None:
        """Why the next link of page ``pages`` is not followed (None: it is)."""
        if _origin(link) != _origin(url):
            return (f"the next link points at another host ({_display_url(_origin(link))}); "
                    "connref does not send its token there")
        if same_path and urlsplit(link).path.rstrip("/").lower() != first.path.rstrip("/").lower():
            return "the next link points at another collection"
        if link in seen:
            return f"the next link repeats a page already read (page {pages}); paging stopped"
        if pages >= self.limits.max_pages:
            return f"more than {self.limits.max_pages} pages; paging stopped"
        return None


#: How far from the end of a page its next link is looked for before the page is parsed.
_TAIL_BYTES = 8192


def _tail_next_link(body: bytes, keys: Sequence[str]) -> str | None:
    """A guess at a page's next link from the last bytes of its body, before the whole is parsed: the
    last ``"key": "..."`` there that reads as a JSON string. Only a guess (the key could sit inside a
    value): ``get_pages`` uses it only when the parsed page names the same link."""
    tail = body[-_TAIL_BYTES:]
    for key in keys:
        at = tail.rfind(b'"' + key.encode("ascii") + b'"')
        if at < 0:
            continue
        text = tail[at + len(key) + 2:].decode("utf-8", "replace").lstrip()
        if not text.startswith(":"):
            return None
        try:
            value, _ = json.JSONDecoder().raw_decode(text[1:].lstrip())
        except ValueError:
            return None
        return value if isinstance(value, str) and value.strip() else None
    return None


def _next_link(doc: Any, keys: Sequence[str]) -> str | None:
    """The next link of a page as ``check_collection`` picks it (the first key present), when it is a
    non-empty string; None otherwise (``check_collection`` then says what is wrong)."""
    if not isinstance(doc, dict):
        return None
    for key in keys:
        candidate = doc.get(key)
        if candidate is not None:
            return candidate if isinstance(candidate, str) and candidate.strip() else None
    return None


# --------------------------------------------------------------------------- Dataverse


class QueryArgs(TypedDict, total=False):
    """The arguments of a collection read (``DataverseClient.get_all`` and ``query``), kept together so a
    read and its place in a read ``$batch`` are the same query."""

    select: Sequence[str] | None
    filter: Filter | None
    orderby: str | None
    expand: str | None
    page_size: int


@dataclass(frozen=True)
class WhoAmI:
    user_id: str
    business_unit_id: str | None
    organization_id: str | None


class DataverseClient(_HttpCore):
    """The Dataverse Web API of one environment.

    ``caller_object_id``: the Entra object id writes impersonate (``CallerObjectId``; the caller needs
    prvActOnBehalfOfAnotherUser; docs/dataverse.md §3.10). Reads are never impersonated.
    """

    def __init__(
        self,
        base_url: str,
        token_provider: TokenProvider,
        *,
        http: httpx.Client,
        scope: str,
        caller_object_id: str | None = None,
        retry: RetryPolicy | None = None,
        limits: Limits | None = None,
        label: str = "",
    ) -> None:
        super().__init__(token_provider, http=http, scope=scope, retry=retry, limits=limits, label=label)
        root = base_url.rstrip("/")
        if root.lower().endswith(API_PATH.rstrip("/")):
            root = root[: -len(API_PATH.rstrip("/"))]
        self.base_url = root
        self.api_root = root + API_PATH
        self.caller_object_id = caller_object_id

    def url(self, path: str, params: Mapping[str, object] | None = None) -> str:
        """The absolute URL of ``path`` (relative to ``/api/data/v9.2/``) with an encoded query."""
        query = _query(params)
        base = self.api_root + path.lstrip("/")
        return f"{base}?{query}" if query else base

    # -- reads

    def get(self, path: str, params: Mapping[str, object] | None = None,
            headers: Mapping[str, str] | None = None, *, shape: Shape | None = None) -> Any:
        """The JSON at ``path``, checked against ``shape`` when one is given."""
        return self.get_json(self.url(path, params), shape=shape, headers=headers)

    def get_all(
        self,
        entity_set: str,
        *,
        select: Sequence[str] | None = None,
        filter: Filter | None = None,  # the OData name
        orderby: str | None = None,
        expand: str | None = None,
        page_size: int = MAX_PAGE_SIZE,
        first_page: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Every row of a query, page by page: ``Prefer: odata.maxpagesize`` and ``@odata.nextLink``
        followed unchanged (docs/dataverse.md §3.5). With the 5000 cap, 3,000 rows are one request.
        ``first_page``: see ``get_pages``."""
        url, headers = self.query(entity_set, select=select, filter=filter, orderby=orderby, expand=expand,
                                  page_size=page_size)
        # Rows are checked against the shape of their entity set (reconciler.api.shapes); a selected
        # column is always returned, null when empty.
        selected = [c for c in (select or ()) if c]
        return self.get_pages(url, row=ROWS.get(entity_set), selected=selected, headers=headers,
                              first_page=first_page)

    def query(
        self,
        entity_set: str,
        *,
        select: Sequence[str] | None = None,
        filter: Filter | None = None,  # the OData name
        orderby: str | None = None,
        expand: str | None = None,
        page_size: int = MAX_PAGE_SIZE,
    ) -> tuple[str, dict[str, str]]:
        """The URL and headers of the first page ``get_all`` reads with the same arguments (what a
        ``prefetch`` of that read sends)."""
        params: dict[str, object] = {}
        if select:
            params["$select"] = ",".join(checked_column(c) for c in select)
        if filter is not None:
            if not isinstance(filter, Filter):
                raise TypeError("filter must be built with reconciler.api.odata_filter helpers (eq, any_of, ...)")
            params["$filter"] = filter
        if orderby:
            params["$orderby"] = orderby
        if expand:
            params["$expand"] = expand
        headers = {"Prefer": f"odata.maxpagesize={min(page_size, MAX_PAGE_SIZE)}"}
        return self.url(checked_column(entity_set), params), headers

    def prefetch(self, reads: Sequence[tuple[str, Mapping[str, str]]]) -> int:
        """Send these GETs (absolute URL and headers, as ``query`` and the ``*_url`` helpers build them) as ONE
        ``$batch`` outside any change set (docs/dataverse.md §3.7): one request and one connection instead
        of one each. The service runs them one after the other and answers each in its own part; a later
        GET of the same URL takes its answer from its part, once, and goes through every check a GET
        answered by the network does. A throttled batch (429, or 503 with ``Retry-After``) waits as the
        service says and is sent again, within the retry budget (docs/dataverse.md §3.8). A refused or
        unreadable batch, one still throttled past the budget, or a part, keeps nothing: each read is then
        sent on its own with its own retries and errors, so a prefetch never changes what a read returns or
        raises, only how many requests it takes. Returns how many answers were kept."""
        if not reads:
            return 0
        batch_id = f"batch_{uuid.uuid4()}"
        lines: list[str] = []
        for url, headers in reads:
            lines += [f"--{batch_id}", "Content-Type: application/http", "Content-Transfer-Encoding: binary",
                      "", f"GET {url} HTTP/1.1", "Accept: application/json",
                      *(f"{k}: {v}" for k, v in headers.items()), "", ""]
        lines += [f"--{batch_id}--", ""]
        url = self.url("$batch")
        body = "\r\n".join(lines).encode("utf-8")
        attempt = 0
        waited = 0.0
        while True:
            try:
                request_headers = self._request_headers(
                    None, {"Content-Type": f'multipart/mixed; boundary="{batch_id}"',
                           "Prefer": "odata.continue-on-error"}, True)
                resp = self._fetch("POST", url, request_headers, body)
            except (httpx.TransportError, _BodyTooLarge) as exc:
                log.info("%s: the read $batch failed (%s); reading one by one", self.label, type(exc).__name__)
                return 0
            # A 429, or a 503 that says when to come back, is the service asking for a pause, not a batch it
            # cannot serve: its reads sent one by one at once would each go over the same limit (every
            # request counts against it, docs/dataverse.md §3.8). So the batch waits as told and is sent
            # again, within the retry budget of any request.
            delay = self._read_batch_pause(resp, attempt)
            if delay is None:
                break
            if not self._wait_to_resend("POST", url, resp, attempt, waited, delay):
                log.info("%s: the read $batch was still answered HTTP %s after %d attempt(s) and %.0f s of "
                         "waiting; reading one by one", self.label, resp.status_code, attempt + 1, waited)
                return 0
            waited += delay
            attempt += 1
        ctype = resp.headers.get("Content-Type", "")
        boundary = multipart_boundary(ctype) if ctype.lower().startswith("multipart/") else None
        try:
            parts = parse_multipart(resp.content, boundary) if resp.status_code == 200 and boundary else []
        except ValueError:  # UnicodeDecodeError among them
            parts = []
        if len(parts) != len(reads):
            log.info("%s: the read $batch was answered HTTP %s with %d of %d parts; reading one by one",
                     self.label, resp.status_code, len(parts), len(reads))
            return 0
        if http_log.isEnabledFor(logging.DEBUG):
            for (read_url, _), part in zip(reads, parts, strict=True):
                # -v shows what the batch carried, as it shows every request (never query values).
                http_log.debug("%s:   in the $batch: GET %s -> %s", self.label, _LoggableUrl(read_url), part.status,
                               extra={"connref_env": self.label})
        # A kept answer carries no httpx.Request: parsing its URL again cost more than the rest of the
        # answer, and what takes it (``send``'s callers) is handed the URL beside it; only the network's
        # answers reach the request log hooks and MSAL, which read ``response.request``.
        kept = {
            read_url: httpx.Response(part.status, headers=part.response_headers, content=part.body)
            for (read_url, _), part in zip(reads, parts, strict=True)
            if part.status == 200
        }
        with self._prefetched_lock:
            self._prefetched.update(kept)
        return len(kept)

    def _read_batch_pause(self, resp: httpx.Response, attempt: int) -> float | None:
        """How long to wait before sending a read ``$batch`` again (None: not again). Only a 429 (Retry-After,
        else the usual backoff) and a 503 carrying Retry-After ask for a pause; any other failure is a batch
        the service cannot serve, whose reads are then sent one by one with their own retries."""
        asked = self._retry_after(resp)
        if resp.status_code == 429:
            return self._backoff(attempt) if asked is None else asked
        if resp.status_code == 503 and asked is not None:
            return asked
        return None

    def forget_prefetched(self) -> None:
        """Drop the answers a ``prefetch`` kept that no read has taken (a read that failed before its
        turn): a later GET of the same URL then asks the service, never takes an old answer."""
        with self._prefetched_lock:
            self._prefetched.clear()

    def who_am_i_url(self) -> str:
        """The URL ``who_am_i`` reads."""
        return self.url("WhoAmI")

    def who_am_i(self) -> WhoAmI:
        """``WhoAmI`` (docs/dataverse.md §3.9): the caller's systemuserid."""
        data = self.get_json(self.who_am_i_url(), shape=WHO_AM_I)
        return WhoAmI(
            user_id=str(data["UserId"]).lower(),
            business_unit_id=data.get("BusinessUnitId"),
            organization_id=data.get("OrganizationId"),
        )

    def component_type_for(self, entity: str) -> int:
        """The org-specific solution component type of a table (docs/dataverse.md §2.1): it varies per org,
        so it is read, never hard-coded."""
        rows = self.get_all("solutioncomponentdefinitions", **self.component_type_query(entity))
        if not rows:
            raise NotFoundError(f"no solution component definition for table {entity!r}")
        return int(rows[0]["solutioncomponenttype"])

    @staticmethod
    def component_type_query(entity: str) -> QueryArgs:
        """The ``get_all`` arguments of ``component_type_for`` (``solutioncomponentdefinitions``)."""
        return {"select": ("solutioncomponenttype", "name", "primaryentityname"),
                "filter": eq("primaryentityname", entity)}

    def privilege_url(self, systemuserid: str, privilege: str) -> str:
        """The URL ``user_has_privilege`` reads."""
        path = (
            entity_path("systemusers", systemuserid)
            + "/Microsoft.Dynamics.CRM.RetrieveUserPrivilegeByPrivilegeName(PrivilegeName=@p)"
        )
        return self.url(path, {"@p": literal(privilege)})

    def user_has_privilege(self, systemuserid: str, privilege: str) -> bool | None:
        """Whether a user holds a privilege, by ``RetrieveUserPrivilegeByPrivilegeName``; ``None`` when
        the service cannot tell (the function is missing or refused)."""
        try:
            data = self.get_json(self.privilege_url(systemuserid, privilege), shape=USER_PRIVILEGES)
        except MalformedResponseError:
            raise
        except ApiError as exc:
            if exc.status in (400, 403, 404, 405, 501):
                return None
            raise
        return bool(data.get("RolePrivileges"))

    # -- writes

    def execute_batch(
        self, operations: Sequence[BatchOperation], *, caller_object_id: str | None = None
    ) -> list[OperationResult]:
        """Send at most 1000 operations as ONE atomic change set in one ``$batch`` request.

        Without ``Prefer: odata.continue-on-error`` Dataverse stops at the first failure, rolls the
        change set back and answers with that failure's status and one response part
        (docs/dataverse.md §3.7). The result has one entry per operation: all
        ``written``, or one ``failed`` and the rest ``not_written``. Errors of the batch request as a
        whole (401 twice, 403, throttling past the budget) are raised. An answer that cannot say whether
        the change set was committed raises ``OutcomeUnknownError``: lost, a 5xx or 408 without the
        ``$batch`` answer, unreadable, or one that calls some of the change set written and some refused.
        """
        if not operations:
            return []
        parts, url, status = self._post_writes(operations, caller_object_id, atomic=True)
        return self._map_batch(operations, parts, url, status)

    def execute_each(
        self, operations: Sequence[BatchOperation], *, caller_object_id: str | None = None
    ) -> list[OperationResult]:
        """Send at most 1000 INDEPENDENT writes in one ``$batch`` request, outside any change set and with
        ``Prefer: odata.continue-on-error``: each is committed or refused on its own and answered in its own
        part (docs/dataverse.md §3.7), so one refusal neither rolls back nor hides the others. The result has
        one entry per operation, ``written`` or ``failed``, matched by ``Content-ID``. For writes whose order
        among themselves does not matter and that may each be sent again (switching flows on). An answer
        that is lost or cannot be read raises ``OutcomeUnknownError``: any of them may have been committed."""
        if not operations:
            return []
        parts, url, status = self._post_writes(operations, caller_object_id, atomic=False)
        if len(parts) != len(operations):
            raise self._unreadable(url, status, f"{len(parts)} response parts for {len(operations)} operations",
                                   what="any of its writes")
        # The answers come in the order of the requests (docs/dataverse.md §3.7); the Content-ID, when every
        # part echoes it, says the same thing more surely.
        by_id = {p.headers.get("content-id"): p for p in parts}
        numbered = all(str(n) in by_id for n in range(1, len(operations) + 1))
        results: list[OperationResult] = []
        for n, op in enumerate(operations, start=1):
            part = by_id[str(n)] if numbered else parts[n - 1]
            if part.status >= 400:
                error = self._part_error(operations, n - 1, part, url)
                results.append(OperationResult(op, "failed", status=part.status, error=error, reason=str(error)))
            else:
                results.append(OperationResult(op, "written", status=part.status,
                                               entity_id=entity_id_from_headers(part.response_headers),
                                               body=_json_or_none(part.body)))
        return results

    def _post_writes(self, operations: Sequence[BatchOperation], caller_object_id: str | None, *,
                     atomic: bool) -> tuple[list[MultipartPart], str, int]:
        """POST ``operations`` as one ``$batch``, as one change set (``atomic``) or each in a part of its own
        with ``Prefer: odata.continue-on-error``, and split its answer into parts. A lost or unreadable
        answer raises ``OutcomeUnknownError``."""
        if len(operations) > MAX_BATCH_OPERATIONS:
            raise ValueError(
                f"a $batch holds at most {MAX_BATCH_OPERATIONS} operations, got {len(operations)}"
            )
        batch_id = f"batch_{uuid.uuid4()}"
        body = self._batch_body(operations, batch_id, f"changeset_{uuid.uuid4()}" if atomic else None)
        headers = {"Content-Type": f'multipart/mixed; boundary="{batch_id}"'}
        if not atomic:
            headers["Prefer"] = "odata.continue-on-error"
        what = "the change set" if atomic else "any of its writes"
        impersonate = caller_object_id or self.caller_object_id
        if impersonate:
            headers["CallerObjectId"] = impersonate
        url = self.url("$batch")
        # Writes may have been committed whatever became of their answer: never resent here, but after a 429.
        resp = self.send("POST", url, body=body, headers=headers, raise_for_status=False, repeatable=False,
                         retry_statuses=_WRITE_RETRY_STATUSES)
        resp.read()
        ctype = resp.headers.get("Content-Type", "")
        boundary = multipart_boundary(ctype) if ctype.lower().startswith("multipart/") else None
        if boundary is None:
            if outcome_unknown(resp.status_code):
                raise self._lost(url, resp, what)
            if resp.status_code >= 400:
                raise error_from_response("POST", url, resp)
            raise self._unreadable(url, resp.status_code, f"not a $batch answer ({ctype or 'no content type'})",
                                   what=what)
        try:
            resp.content.decode("utf-8")
        except UnicodeDecodeError:
            raise self._unreadable(url, resp.status_code, "the body is not UTF-8 text", what=what) from None
        parts = parse_multipart(resp.content, boundary)
        if not parts:
            if outcome_unknown(resp.status_code):
                raise self._lost(url, resp, what)
            if resp.status_code >= 400:
                raise error_from_response("POST", url, resp)
            raise self._unreadable(url, resp.status_code, "no response part could be read", what=what)
        return parts, url, resp.status_code

    @staticmethod
    def _lost(url: str, resp: httpx.Response, what: str) -> OutcomeUnknownError:
        """A 5xx (or 408) that is not the service's own $batch answer (that is multipart, with a part per
        request): a gateway's, or a layer's that cannot say whether the writes were committed."""
        error = error_from_response("POST", url, resp)
        return OutcomeUnknownError(f"{error}; {what} may have been committed",
                                   why=f"HTTP {resp.status_code} without the $batch answer",
                                   status=resp.status_code, method="POST", url=url)

    @staticmethod
    def _unreadable(url: str, status: int, problem: str, *, what: str = "the change set") -> OutcomeUnknownError:
        """A $batch answered 2xx (or a multipart error) that cannot be read: it may have been committed."""
        return OutcomeUnknownError(
            f"POST {url}: HTTP {status}: connref cannot read this $batch answer ({problem}); {what} "
            "may have been committed", why=f"HTTP {status} with an answer connref cannot read ({problem})",
            status=status, method="POST", url=url)

    def get_batch(self, requests: Sequence[tuple[str, Mapping[str, object] | None]]) -> list[tuple[int, Any]]:
        """Several GETs (``(path, query parameters)``, built like ``get``'s) in ``$batch`` requests of at most
        1000, outside any change set and with ``Prefer: odata.continue-on-error`` so one refusal does not
        hide the others (docs/dataverse.md §3.7). Returns ``(status, JSON body or None)`` per request, in
        order: ceil(N/1000) requests instead of N."""
        out: list[tuple[int, Any]] = []
        for start in range(0, len(requests), MAX_BATCH_OPERATIONS):
            chunk = requests[start:start + MAX_BATCH_OPERATIONS]
            batch_id = f"batch_{uuid.uuid4()}"
            lines: list[str] = []
            for n, (path, params) in enumerate(chunk, start=1):
                query = _query(params)
                lines += [f"--{batch_id}", "Content-Type: application/http", "Content-Transfer-Encoding: binary",
                          f"Content-ID: {n}", "", f"GET {self.api_root}{path}{'?' + query if query else ''} HTTP/1.1",
                          "Accept: application/json", ""]
            lines += [f"--{batch_id}--", ""]
            url = self.url("$batch")
            headers = {"Content-Type": f'multipart/mixed; boundary="{batch_id}"',
                       "Prefer": "odata.continue-on-error"}
            # Only GETs: sending it again changes nothing, so it is retried like a GET.
            resp = self.send("POST", url, body="\r\n".join(lines).encode("utf-8"), headers=headers,
                             raise_for_status=False, repeatable=True)
            resp.read()
            ctype = resp.headers.get("Content-Type", "")
            boundary = multipart_boundary(ctype) if ctype.lower().startswith("multipart/") else None
            if boundary is None:
                if resp.status_code >= 400:
                    raise error_from_response("POST", url, resp)
                raise ApiError(f"POST {url}: unexpected $batch response ({resp.status_code}, {ctype or 'no type'})",
                               status=resp.status_code, method="POST", url=url)
            parts = parse_multipart(resp.content, boundary)
            if len(parts) != len(chunk):
                raise ApiError(f"POST {url}: $batch answered {len(parts)} parts for {len(chunk)} requests",
                               status=resp.status_code, method="POST", url=url)
            by_id = {p.headers.get("content-id"): p for p in parts}
            for n in range(1, len(chunk) + 1):
                part = by_id.get(str(n)) or parts[n - 1]
                out.append((part.status, _json_or_none(part.body)))
        return out

    def _batch_body(self, operations: Sequence[BatchOperation], batch_id: str, changeset_id: str | None) -> bytes:
        """The body of a write ``$batch``: the operations as one change set, or (``changeset_id`` None) each
        as a part of its own."""
        crlf = "\r\n"
        out = [f"--{batch_id}", f'Content-Type: multipart/mixed; boundary="{changeset_id}"', ""] if changeset_id else []
        for n, op in enumerate(operations, start=1):
            out += [
                f"--{changeset_id or batch_id}",
                "Content-Type: application/http",
                "Content-Transfer-Encoding: binary",
                f"Content-ID: {n}",
                "",
                f"{op.method} {self.api_root}{op.path} HTTP/1.1",
            ]
            if op.body is not None:
                out.append("Content-Type: application/json; type=entry")
            out += [f"{k}: {v}" for k, v in op.headers.items()]
            out.append("")
            out.append(json.dumps(op.body) if op.body is not None else "")
        out += [f"--{changeset_id}--", "", f"--{batch_id}--", ""] if changeset_id else [f"--{batch_id}--", ""]
        return crlf.join(out).encode("utf-8")

    def _map_batch(
        self, operations: Sequence[BatchOperation], parts: list[MultipartPart], url: str, status: int = 200
    ) -> list[OperationResult]:
        failures = [p for p in parts if p.status >= 400]
        successes = [p for p in parts if p.status < 400]
        if failures and successes:
            # A change set is committed or rolled back as a whole (docs/dataverse.md §3.7): an answer that says
            # some of it was written and some refused cannot be both, and neither half can be believed.
            raise self._unreadable(
                url, status, f"the atomic change set is answered both written ({len(successes)} part(s), "
                f"HTTP {successes[0].status}) and refused ({len(failures)} part(s), HTTP {failures[0].status})")
        if not failures:
            if len(parts) != len(operations):
                raise self._unreadable(url, status, f"{len(parts)} response parts for {len(operations)} operations")
            by_id = {p.headers.get("content-id"): p for p in parts}
            results = []
            for n, op in enumerate(operations, start=1):
                part = by_id.get(str(n)) or parts[n - 1]
                results.append(OperationResult(
                    op, "written", status=part.status, entity_id=entity_id_from_headers(part.response_headers),
                    body=_json_or_none(part.body),
                ))
            return results
        failed = failures[0]
        index = self._failed_index(operations, parts, failed)
        error = self._part_error(operations, index, failed, url)
        results = []
        for i, op in enumerate(operations):
            if i == index:
                results.append(
                    OperationResult(op, "failed", status=failed.status, error=error, reason=str(error))
                )
            else:
                results.append(OperationResult(
                    op, "not_written", reason="rolled back: another change in the same change set failed"
                    if index is not None else f"the change set failed: {error}",
                ))
        return results

    @staticmethod
    def _failed_index(
        operations: Sequence[BatchOperation], parts: list[MultipartPart], failed: MultipartPart
    ) -> int | None:
        content_id = failed.headers.get("content-id")
        if content_id and content_id.isdigit() and 1 <= int(content_id) <= len(operations):
            return int(content_id) - 1
        if len(operations) == 1:
            return 0
        if len(parts) == len(operations):
            return parts.index(failed)
        # Last resort: the error message often names the row ("... With Id = <guid> Does Not Exist").
        _code, message, _ = _part_error_fields(failed)
        for guid in GUID.findall(message or ""):
            for i, op in enumerate(operations):
                if guid.lower() in op.path.lower():
                    return i
        return None

    @staticmethod
    def _part_error(
        operations: Sequence[BatchOperation], index: int | None, part: MultipartPart, url: str
    ) -> ApiError:
        fake = httpx.Response(part.status, headers=part.response_headers, content=part.body)
        if index is None:
            return error_from_response("POST", url, fake)
        op = operations[index]
        return error_from_response(op.method, f"{url} part {index + 1} ({op.method} {op.path})", fake)


def _part_error_fields(part: MultipartPart) -> tuple[str | None, str | None, Any]:
    return _error_body(httpx.Response(part.status, content=part.body))


def _json_or_none(data: bytes) -> Any:
    try:
        return parse_json(data)
    except ShapeProblem:
        return None


# --------------------------------------------------------------------------- connections API


class ConnectionsClient(_HttpCore):
    """The connections of one environment (they live outside Dataverse; docs/dataverse.md §4.1).

    ``base_url`` serves the Power Platform API (``/connectivity/connections``, caller-scoped).
    ``admin_base_url``/``admin_scope`` serve the classic Power Apps admin route that lists every
    connection of the environment; by default the same base and scope (an emulator, or a
    ``connections_url`` override, serves both). ``environment_id`` may be None when unknown: the
    admin list is then unavailable.
    """

    def __init__(
        self,
        base_url: str,
        token_provider: TokenProvider,
        *,
        http: httpx.Client,
        scope: str,
        environment_id: str | None,
        admin_base_url: str | None = None,
        admin_scope: str | None = None,
        retry: RetryPolicy | None = None,
        limits: Limits | None = None,
        label: str = "",
    ) -> None:
        super().__init__(token_provider, http=http, scope=scope, retry=retry, limits=limits, label=label)
        if environment_id is not None and not _PATH_SEGMENT.match(environment_id):
            raise ValueError(f"not an environment id: {environment_id!r}")
        self.base_url = base_url.rstrip("/")
        self.environment_id = environment_id
        self.admin_base_url = (admin_base_url or base_url).rstrip("/")
        self.admin_scope = admin_scope or scope

    def _list(self, url: str, scope: str) -> list[dict[str, Any]]:
        # The classic API pages with a top-level nextLink, not @odata.nextLink (docs/dataverse.md §4.2).
        return self.get_pages(url, row=CONNECTION, scope=scope, next_link_keys=("nextLink", "@odata.nextLink"))

    def list_connections(self) -> list[dict[str, Any]]:
        """Connections the caller owns or has shared with it (Power Platform API)."""
        query = _query({"api-version": PP_API_VERSION})
        return self._list(f"{self.base_url}/connectivity/connections?{query}", self.scope)

    def list_connections_admin(self) -> list[dict[str, Any]]:
        """Every connection of the environment (admin scope; needs a Power Platform admin or a
        registered management app, else 403). Needs the environment id."""
        if not self.environment_id:
            raise ValueError("the admin connection list needs the environment id")
        path = f"/providers/Microsoft.PowerApps/scopes/admin/environments/{self.environment_id}/connections"
        return self._list(f"{self.admin_base_url}{path}?{_query({'api-version': POWERAPPS_API_VERSION})}",
                          self.admin_scope)

    def _segment(self, value: str, what: str) -> str:
        if not _PATH_SEGMENT.match(value):
            raise ValueError(f"not a {what}: {value!r}")
        return value

    def _shares(self, url: str, scope: str) -> list[dict[str, Any]]:
        return self.get_pages(url, row=SHARE, scope=scope, next_link_keys=("nextLink", "@odata.nextLink"))

    def list_permissions(self, connector: str, name: str) -> list[dict[str, Any]]:
        """Every share of one connection, for a caller holding a role on it (Power Platform API; the
        Terraform provider's ``GetConnectionShares``; docs/dataverse.md §4.8)."""
        path = (f"/connectivity/connectors/{self._segment(connector, 'connector')}/connections/"
                f"{self._segment(name, 'connection name')}/permissions")
        return self._shares(f"{self.base_url}{path}?{_query({'api-version': PP_API_VERSION})}", self.scope)

    def _admin_connection(self, connector: str, name: str, rest: str) -> str:
        if not self.environment_id:
            raise ValueError("the admin connection routes need the environment id")
        path = (f"/providers/Microsoft.PowerApps/scopes/admin/environments/{self.environment_id}/apis/"
                f"{self._segment(connector, 'connector')}/connections/{self._segment(name, 'connection name')}"
                f"/{rest}")
        return f"{self.admin_base_url}{path}?{_query({'api-version': POWERAPPS_PERMISSIONS_API_VERSION})}"

    def list_permissions_admin(self, connector: str, name: str) -> list[dict[str, Any]]:
        """Every share of one connection, as an admin (``Get-AdminPowerAppConnectionRoleAssignment``;
        docs/dataverse.md §4.8)."""
        return self._shares(self._admin_connection(connector, name, "permissions"), self.admin_scope)

    def share_admin(self, connector: str, name: str, *, principal_id: str, principal_type: str, role: str,
                    tenant_id: str | None = None) -> None:
        """Share one connection as an admin (``Set-AdminPowerAppConnectionRoleAssignment``: a ``put`` of
        one role for one principal; docs/dataverse.md §4.8, §4.9)."""
        principal: dict[str, Any] = {"id": principal_id, "type": principal_type}
        if tenant_id:
            principal["tenantId"] = tenant_id
        body = {"put": [{"properties": {"roleName": role, "principal": principal,
                                        "NotifyShareTargetOption": "NotSpecified"}}], "delete": []}
        self.send("POST", self._admin_connection(connector, name, "modifyPermissions"), json_body=body,
                  scope=self.admin_scope)


# --------------------------------------------------------------------------- Microsoft Graph


class GraphClient(_HttpCore):
    """Microsoft Graph, for the one question connref asks it: which of some groups a principal belongs to
    (``checkMemberGroups``, transitive, at most 20 groups a request; docs/dataverse.md §4.10)."""

    MAX_GROUPS = 20

    def __init__(self, base_url: str, token_provider: TokenProvider, *, http: httpx.Client, scope: str,
                 retry: RetryPolicy | None = None, limits: Limits | None = None, label: str = "") -> None:
        super().__init__(token_provider, http=http, scope=scope, retry=retry, limits=limits, label=label)
        self.base_url = base_url.rstrip("/")

    def _may_repeat(self, method: str) -> bool:
        return True  # checkMemberGroups is a POST that changes nothing

    def member_groups(self, object_id: str, group_ids: Sequence[str]) -> set[str]:
        """The ids (lower case) among ``group_ids`` that ``object_id`` belongs to, directly or not."""
        if not _PATH_SEGMENT.match(object_id):
            raise ValueError(f"not an object id: {object_id!r}")
        found: set[str] = set()
        ids = list(dict.fromkeys(g.lower() for g in group_ids))
        for start in range(0, len(ids), self.MAX_GROUPS):
            url = f"{self.base_url}/v1.0/directoryObjects/{object_id}/checkMemberGroups"
            resp = self.send("POST", url, json_body={"groupIds": ids[start:start + self.MAX_GROUPS]})
            doc = self.read_json("POST", url, resp)
            try:
                check(doc, MEMBER_GROUPS)
                if not all(isinstance(v, str) for v in doc["value"]):
                    raise ShapeProblem("value: not a list of group ids")
            except ShapeProblem as exc:
                raise malformed("POST", url, resp.status_code, str(exc)) from None
            found.update(v.lower() for v in doc["value"])
        return found


# --------------------------------------------------------------------------- the CI systems' OIDC endpoints


class OidcTokenClient(_Transport):
    """Requests to the OIDC token endpoints of the CI systems (GitHub Actions, Azure DevOps), which hand
    out the workload identity token a federated credential exchanges (docs/dataverse.md §6.3). They go
    through the same transport as every other request connref sends: retried on 429 (honouring
    ``Retry-After``), 5xx and dropped connections (asking for a token changes nothing, so any request,
    the Azure DevOps POST included, may be repeated), read within the size limit, and the answer checked
    against its shape before anything reads it."""

    def _may_repeat(self, method: str) -> bool:
        return True

    def token_answer(self, method: str, url: str, *, shape: Shape, params: Mapping[str, str],
                     headers: Mapping[str, str]) -> dict[str, Any]:
        """The JSON answer of ``method url`` (the URL without its query: ``params`` holds it), checked
        against ``shape``. An error status past the retries raises the typed ``ApiError``; an answer that
        is not of the shape a ``MalformedResponseError``. Messages name the URL without its query."""
        resp = self.send(method, url, headers=headers, params=dict(params), secrets=sent_secrets(headers=headers))
        try:
            doc = parse_json(resp.content, content_type=resp.headers.get("Content-Type"), limits=self.limits)
            check(doc, shape)
        except ShapeProblem as exc:
            raise malformed(method, url, resp.status_code, str(exc)) from None
        assert isinstance(doc, dict)
        return doc


# --------------------------------------------------------------------------- identity platform (MSAL)


class MsalHttpClient(_Transport):
    """The requests-like object MSAL's ``http_client`` parameter expects (``.get``/``.post``/``.close``
    returning objects with ``status_code``, ``text``, ``headers`` and ``raise_for_status``; see
    msal/oauth2cli/http.py), backed by a shared ``httpx.Client``.

    Below MSAL (whose own throttling cache would otherwise replay a 429 or 5xx answer), every request is
    retried like the APIs' (429 with ``Retry-After``, 5xx, a dropped or reset connection: asking for a
    token changes nothing, so any request may be repeated), read within the size limit, and the
    answers MSAL relies on are checked before it parses them: the token answer (``access_token``,
    ``expires_in``), a token error in the OAuth shape, the OpenID configuration and the instance
    discovery document. An answer connref cannot hand to MSAL raises a typed ``ApiError`` (through MSAL
    to the provider, which names the auth profile)."""

    def __init__(self, client: httpx.Client, *, retry: RetryPolicy | None = None,
                 limits: Limits | None = None) -> None:
        super().__init__(client, retry=retry, limits=limits)

    def _may_repeat(self, method: str) -> bool:
        return True

    def get(self, url: str, params: Any = None, headers: Any = None, **kwargs: Any) -> httpx.Response:
        return self._exchange("GET", url, params=params, headers=headers, timeout=kwargs.get("timeout", 30.0))

    def post(
        self, url: str, params: Any = None, data: Any = None, headers: Any = None, **kwargs: Any
    ) -> httpx.Response:
        timeout = kwargs.get("timeout", 30.0)
        if isinstance(data, (str, bytes)):
            content = data.encode("utf-8") if isinstance(data, str) else data
            return self._exchange("POST", url, params=params, headers=headers, timeout=timeout, body=content)
        if isinstance(data, Mapping):
            # MSAL hands the client assertion over as bytes; requests form-encodes bytes as-is, httpx
            # would send their repr, so decode them first.
            data = {k: v.decode("utf-8") if isinstance(v, bytes) else v for k, v in data.items()}
        return self._exchange("POST", url, params=params, headers=headers, timeout=timeout, data=data)

    def close(self) -> None:
        """The httpx client belongs to the caller; MSAL must not close it."""

    def _exchange(self, method: str, url: str, *, params: Any, headers: Any, timeout: Any,
                  body: bytes | None = None, data: Any = None) -> httpx.Response:
        extra = {"params": params, "timeout": timeout}
        if data is not None:
            extra["data"] = data
        # The secret, the assertion or the identity header this request carries: an error answer that echoes
        # the request must not show them, in whatever encoding they went (the form is urlencoded).
        secrets = sent_secrets(data, headers, body)
        resp = self.send(method, url, body=body, headers=dict(headers or {}), raise_for_status=False,
                         secrets=secrets, **extra)
        shown = str(resp.request.url.copy_with(query=None)) if resp.request is not None else url
        if resp.status_code >= 500:
            # Past the retry budget (or a 5xx that is never retried): MSAL would raise a bare HTTP error.
            raise error_from_response(method, shown, resp, secrets=secrets)
        self._check(method, shown, resp, secrets)
        return resp

    def _check(self, method: str, url: str, resp: httpx.Response, secrets: Sequence[str] = ()) -> None:
        path = urlsplit(url).path.lower()
        status = resp.status_code
        shape: Shape | None = None
        if path.endswith("/token") and status < 400:  # the token endpoint and the managed identity ones
            shape = TOKEN
        elif path.endswith("/token") and "/oauth2/" in path:  # Entra's errors (MSAL reads them)
            shape = TOKEN_ERROR
        elif path.endswith("/.well-known/openid-configuration") and status < 400:
            shape = OPENID_CONFIGURATION
        elif path.endswith("/discovery/instance") and status < 400:
            shape = INSTANCE_DISCOVERY
        if shape is None:
            return
        try:
            doc = parse_json(resp.content, content_type=resp.headers.get("Content-Type"), limits=self.limits)
            check(doc, shape)
        except ShapeProblem as exc:
            if status >= 400:
                # Not an OAuth error (a gateway's page, another service's error shape): say what it was
                # rather than let MSAL fail on it.
                raise error_from_response(method, url, resp, secrets=secrets) from None
            raise malformed(method, url, status, str(exc)) from None
