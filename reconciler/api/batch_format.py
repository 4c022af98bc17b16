"""The ``$batch`` request format of the Dataverse Web API, as data and text.

``BatchOperation`` is one request of a change set (``create_op``, ``update_op``, ``delete_op``,
``action_op`` build them with checked names and ``If-Match`` ETags); ``chunked`` splits a list into
batches of at most ``MAX_BATCH_OPERATIONS``; ``OperationResult`` says what became of each one;
``parse_multipart`` flattens a ``batchresponse`` into its HTTP responses. Pure data and text, no I/O:
``reconciler.api.client`` sends the batch and maps the response (execute-batch-operations-using-web-api,
https://learn.microsoft.com/power-apps/developer/data-platform/webapi/execute-batch-operations-using-web-api).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from reconciler.api.odata_filter import checked_column, entity_path
from reconciler.domain.patterns import GUID
from reconciler.errors import ApiError

#: "Batch requests can contain up to 1000 individual requests" (execute-batch-operations-using-web-api).
MAX_BATCH_OPERATIONS = 1000


@dataclass(frozen=True)
class BatchOperation:
    """One request inside a ``$batch`` change set. ``path`` is relative to the API root."""

    method: str
    path: str
    body: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    label: str = ""


Outcome = Literal["written", "not_written", "failed"]


@dataclass(frozen=True)
class OperationResult:
    """What became of one batch operation: ``written``; ``failed`` (with the service's error); or
    ``not_written`` (rolled back with its change set, or never sent)."""

    operation: BatchOperation
    outcome: Outcome
    status: int | None = None
    error: ApiError | None = None
    reason: str = ""
    entity_id: str | None = None
    body: Any = None

    @property
    def ok(self) -> bool:
        return self.outcome == "written"


def _returning(path: str, headers: dict[str, str], select: Sequence[str] | None) -> str:
    """Ask for the written row back (``Prefer: return=representation`` with ``$select``;
    docs/dataverse.md §3.3), so what was written is known without reading it again."""
    if select is None:
        return path
    headers["Prefer"] = "return=representation"
    return path + "?$select=" + ",".join(checked_column(c) for c in select)


def create_op(
    entity_set: str, body: Mapping[str, Any], *, solution_unique_name: str | None = None, label: str = "",
    select: Sequence[str] | None = None,
) -> BatchOperation:
    """POST a new row; ``MSCRM.SolutionUniqueName`` makes it a component of that unmanaged solution
    (compose-http-requests-handle-errors, "Other headers"). With ``select`` the answer carries the
    new row's columns."""
    headers = {"MSCRM.SolutionUniqueName": solution_unique_name} if solution_unique_name else {}
    path = _returning(checked_column(entity_set), headers, select)
    return BatchOperation("POST", path, dict(body), headers, label)


#: ``If-Match: *``: any version of the row, as long as it exists. Only for a write that does the same whatever
#: version it meets (switching a flow on); never for an update or delete of a row read when planning, which
#: carries the ETag it was read with.
ANY_VERSION = "*"


def _if_match(entity_set: str, entity_id: str, etag: str | None) -> str:
    """The ``If-Match`` of a write: its ETag, or ``ANY_VERSION`` when the caller asks for it by name. A write
    with no ETag would be sent with ``If-Match: *`` and overwrite any change made since the row was read
    (docs/dataverse.md §3.4), so it is refused before anything is sent."""
    if not etag or not etag.strip():
        raise ValueError(f"{entity_set}({entity_id}): no ETag to send as If-Match; a write without one would "
                         "overwrite changes made since the row was read")
    return etag


def update_op(
    entity_set: str, entity_id: str, body: Mapping[str, Any], *, etag: str | None, label: str = "",
    select: Sequence[str] | None = None,
) -> BatchOperation:
    """PATCH a row. ``If-Match`` carries the ETag read when planning, so a row changed since is not
    overwritten (412; perform-conditional-operations-using-web-api); ``ANY_VERSION`` only where every version
    may be written over (it still stops a PATCH from creating a missing row, docs/dataverse.md §3.3). No ETag
    is a ``ValueError``. With ``select`` the answer carries the updated row's columns (its new ETag among
    them)."""
    headers = {"If-Match": _if_match(entity_set, entity_id, etag)}
    path = _returning(entity_path(entity_set, entity_id), headers, select)
    return BatchOperation("PATCH", path, dict(body), headers, label)


def delete_op(entity_set: str, entity_id: str, *, etag: str | None, label: str = "") -> BatchOperation:
    """DELETE a row with ``If-Match`` the ETag read when planning (no ETag: ``ValueError``, as for ``update_op``)."""
    path = entity_path(entity_set, entity_id)
    return BatchOperation("DELETE", path, None, {"If-Match": _if_match(entity_set, entity_id, etag)}, label)


def action_op(action: str, body: Mapping[str, Any], *, label: str = "") -> BatchOperation:
    """POST an unbound action such as ``AddSolutionComponent``."""
    return BatchOperation("POST", checked_column(action), dict(body), {}, label)


def chunked(
    items: Sequence[BatchOperation], size: int = MAX_BATCH_OPERATIONS
) -> Iterator[Sequence[BatchOperation]]:
    """Split operations into batches of at most ``size`` (ceil(N/size) of them)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class MultipartPart:
    headers: dict[str, str]
    status: int
    response_headers: dict[str, str]
    body: bytes


def multipart_boundary(content_type: str) -> str | None:
    m = re.search(r'boundary="?([^";]+)"?', content_type, re.IGNORECASE)
    return m.group(1) if m else None


def _split_headers(block: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in block.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip().lower()] = v.strip()
    return out


def _head_end(data: bytes, start: int, end: int) -> tuple[int, int]:
    """Where the header block starting at ``start`` ends and its body begins (a blank line, CRLF or, failing
    that, bare LF); no blank line: all head, no body."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        at = data.find(sep, start, end)
        if at != -1:
            return at, at + len(sep)
    return end, end


_STATUS_LINE = re.compile(r"HTTP/\d(?:\.\d)?\s+(\d{3})")


def parse_multipart(body: str | bytes, boundary: str) -> list[MultipartPart]:
    """Flatten a ``batchresponse`` (and any nested ``changesetresponse``) into its HTTP responses.

    Works on the bytes, by offsets: a read ``$batch`` answer carries pages of 5,000 rows, and slicing each
    part's body out once (instead of splitting, stripping and encoding the whole text again per step) is
    what keeps its cost near a copy of the body. Header blocks are read as UTF-8 (an undecodable byte
    becomes U+FFFD); bodies are handed on as the bytes the service sent."""
    data = body.encode("utf-8") if isinstance(body, str) else body
    return _parse_parts(data, 0, len(data), boundary)


def _parse_parts(data: bytes, start: int, end: int, boundary: str) -> list[MultipartPart]:
    parts: list[MultipartPart] = []
    delimiter = b"--" + boundary.encode("utf-8")
    at = data.find(delimiter, start, end)
    while at != -1:
        begin = at + len(delimiter)
        if data.startswith(b"--", begin, end):
            break  # close delimiter
        following = data.find(delimiter, begin, end)
        stop = following if following != -1 else end
        at = following
        while begin < stop and data[begin] in b"\r\n":
            begin += 1
        mime_end, rest = _head_end(data, begin, stop)
        mime = _split_headers(data[begin:mime_end].decode("utf-8", "replace"))
        ctype = mime.get("content-type", "")
        if ctype.lower().startswith("multipart/"):
            inner = multipart_boundary(ctype)
            if inner:
                parts.extend(_parse_parts(data, rest, stop, inner))
            continue
        http_end, body_start = _head_end(data, rest, stop)
        lines = data[rest:http_end].decode("utf-8", "replace").splitlines()
        if not lines:
            continue
        m = _STATUS_LINE.match(lines[0].strip())
        if not m:
            continue
        body_end = stop
        while body_end > body_start and data[body_end - 1] in b"\r\n":
            body_end -= 1
        parts.append(
            MultipartPart(
                headers=mime,
                status=int(m.group(1)),
                response_headers=_split_headers("\n".join(lines[1:])),
                body=data[body_start:body_end],
            )
        )
    return parts


def entity_id_from_headers(headers: Mapping[str, str]) -> str | None:
    location = headers.get("odata-entityid") or headers.get("location")
    if not location:
        return None
    m = GUID.findall(location)
    return m[-1].lower() if m else None
