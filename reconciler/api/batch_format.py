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


def update_op(
    entity_set: str, entity_id: str, body: Mapping[str, Any], *, etag: str | None, label: str = "",
    select: Sequence[str] | None = None,
) -> BatchOperation:
    """PATCH a row. ``If-Match`` carries the ETag read when planning, so a row changed since is not
    overwritten (412); without one, ``If-Match: *`` still stops a PATCH from creating a missing row
    (perform-conditional-operations-using-web-api). With ``select`` the answer carries the updated
    row's columns (its new ETag among them)."""
    headers = {"If-Match": etag or "*"}
    path = _returning(entity_path(entity_set, entity_id), headers, select)
    return BatchOperation("PATCH", path, dict(body), headers, label)


def delete_op(entity_set: str, entity_id: str, *, etag: str | None, label: str = "") -> BatchOperation:
    path = entity_path(entity_set, entity_id)
    return BatchOperation("DELETE", path, None, {"If-Match": etag or "*"}, label)


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


def _split_head_body(text: str) -> tuple[str, str]:
    for sep in ("\r\n\r\n", "\n\n"):
        if sep in text:
            head, body = text.split(sep, 1)
            return head, body
    return text, ""


def parse_multipart(body: str, boundary: str) -> list[MultipartPart]:
    """Flatten a ``batchresponse`` (and any nested ``changesetresponse``) into its HTTP responses."""
    parts: list[MultipartPart] = []
    delimiter = "--" + boundary
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith("--"):
            break  # close delimiter
        chunk = chunk.lstrip("\r\n")
        mime_head, rest = _split_head_body(chunk)
        mime = _split_headers(mime_head)
        ctype = mime.get("content-type", "")
        if ctype.lower().startswith("multipart/"):
            inner = multipart_boundary(ctype)
            if inner:
                parts.extend(parse_multipart(rest, inner))
            continue
        http_head, http_body = _split_head_body(rest)
        lines = http_head.splitlines()
        if not lines:
            continue
        m = re.match(r"HTTP/\d(?:\.\d)?\s+(\d{3})", lines[0].strip())
        if not m:
            continue
        parts.append(
            MultipartPart(
                headers=mime,
                status=int(m.group(1)),
                response_headers=_split_headers("\n".join(lines[1:])),
                body=http_body.rstrip("\r\n").encode("utf-8"),
            )
        )
    return parts


def entity_id_from_headers(headers: Mapping[str, str]) -> str | None:
    location = headers.get("odata-entityid") or headers.get("location")
    if not location:
        return None
    m = GUID.findall(location)
    return m[-1].lower() if m else None
