"""``POST /api/data/v9.2/$batch``: multipart/mixed batches with atomic change sets.

Follows powerapps-docs ``developer/data-platform/webapi/execute-batch-operations-using-web-api.md``
(docs/dataverse.md §3.7):

* parts are ``application/http`` requests; a ``multipart/mixed`` part is a change set, atomic: any
  failure inside rolls every write of the change set back (the store is snapshotted under its lock);
* ``Content-ID: n`` lets later requests of the change set use ``$n`` (in the URL or an ``@odata.bind``);
  a reference before its declaration is 400 "Content-ID Reference: '$1' does not exist in the batch context.";
* GET is not allowed inside a change set; at most 1000 requests; no nested batches;
* without ``Prefer: odata.continue-on-error`` the batch stops at the first failure and the overall
  status is that failure's status; with it, the batch answers 200 and every part carries its own status;
* the answer is a ``batchresponse_<guid>`` envelope, change sets nested as ``changesetresponse_<guid>``,
  ``Content-ID`` echoed (outside a change set only with the setting ``batch_content_id_outside_changesets``
  ``echo``, the default; UNCONFIRMED), ``Location`` and ``OData-EntityId`` on creates; the answers in the
  order of the requests.

Headers of the outer request that identify the caller (``Authorization``, ``CallerObjectId``,
``MSCRMCallerID``) apply to every inner request unless the part carries its own.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from .dvcommon import API_ROOT, INVALID_ARGUMENT, Ctx, parse_prefer, wants_annotations
from .requestlog import BatchPart
from .web import Headers, HttpError, Request, Response, reason_phrase

MAX_REQUESTS = 1000
_IMPERSONATION = ("callerobjectid", "mscrmcallerid")


@dataclass
class Part:
    """One inner request of the batch as parsed."""

    method: str
    url: str
    headers: list[tuple[str, str]]
    body: bytes
    content_id: str | None = None


@dataclass
class ChangeSet:
    parts: list[Part] = field(default_factory=list)


# --------------------------------------------------------------------------- parsing


def _boundary(content_type: str | None) -> str | None:
    if not content_type or "multipart/mixed" not in content_type.lower():
        return None
    m = re.search(r'boundary="?([^";]+)"?', content_type, re.IGNORECASE)
    return m.group(1).strip() if m else None


# What may follow ``--boundary`` on a delimiter line: ``--`` on the closing one, blanks, then the line's end.
_DELIMITER_TAIL = re.compile(r"(--)?[ \t]*(?:\r?\n|$)")


def _delimiters(body: str, boundary: str) -> Iterator[tuple[int, int, bool]]:
    """(start, end, closing) of each delimiter line in ``body``, as ``re.finditer`` finds the pattern
    ``(?:^|\r?\n)--<boundary>(--)?[ \t]*(?:\r?\n|$)``: a delimiter starts the body or follows a line break, which
    belongs to it. Searched with ``str.find`` and one pattern compiled once, rather than a pattern compiled for
    each batch's own boundary (tests/unit/test_emulator_batch_split.py checks it against that pattern)."""
    dash = "--" + boundary
    pos = 0  # where the search goes on: matches do not overlap
    d = body.find(dash)
    while d != -1:
        # The leftmost start of a match whose dash is at d, not before pos.
        start = None
        if d == 0:
            start = 0 if pos == 0 else None
        elif d >= 2 and body.startswith("\r\n", d - 2) and d - 2 >= pos:
            start = d - 2
        elif body[d - 1] == "\n" and d - 1 >= pos:
            start = d - 1
        tail = _DELIMITER_TAIL.match(body, d + len(dash)) if start is not None else None
        if start is None or tail is None:
            d = body.find(dash, d + 1)
            continue
        yield start, tail.end(), tail.group(1) is not None
        pos = tail.end()
        d = body.find(dash, pos)


def _split(body: str, boundary: str) -> list[str]:
    """The parts between ``--boundary`` delimiters (preamble and epilogue dropped)."""
    parts: list[str] = []
    pos = None
    closed = False
    for start, end, closing in _delimiters(body, boundary):
        if pos is not None:
            parts.append(body[pos:start])
        pos = end
        if closing:
            closed = True
            break
    if pos is None or not closed:
        raise HttpError(
            400, INVALID_ARGUMENT, f"The batch body is not valid multipart/mixed with boundary '{boundary}'."
        )
    return parts


def _head_body(text: str) -> tuple[list[tuple[str, str]], str, str]:
    """Split a MIME/HTTP block: (headers, first line if it is not a header, rest)."""
    m = re.search(r"\r?\n\r?\n", text)
    head, rest = (text[: m.start()], text[m.end() :]) if m else (text, "")
    lines = [ln for ln in re.split(r"\r?\n", head)]
    return [(k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in lines if ":" in ln)], head, rest


def _mime(text: str) -> tuple[dict[str, str], str]:
    headers, _, rest = _head_body(text.lstrip("\r\n"))
    return {k.lower(): v for k, v in headers}, rest


def _http_part(text: str, content_id: str | None) -> Part:
    text = text.lstrip("\r\n")
    m = re.search(r"\r?\n\r?\n", text)
    head, rest = (text[: m.start()], text[m.end() :]) if m else (text, "")
    lines = re.split(r"\r?\n", head)
    request_line = lines[0].split()
    if len(request_line) < 2:
        raise HttpError(400, INVALID_ARGUMENT, f"The batch part request line '{lines[0]}' is not valid.")
    headers = [(k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in lines[1:] if ":" in ln)]
    body = rest.rstrip("\r\n").encode("utf-8")
    return Part(request_line[0].upper(), request_line[1], headers, body, content_id)


def parse(request: Request) -> list[Part | ChangeSet]:
    boundary = _boundary(request.headers.get("Content-Type"))
    if boundary is None:
        raise HttpError(400, INVALID_ARGUMENT, "A $batch request needs Content-Type: multipart/mixed with a boundary.")
    items: list[Part | ChangeSet] = []
    for raw in _split(request.body.decode("utf-8"), boundary):
        mime, content = _mime(raw)
        inner_boundary = _boundary(mime.get("content-type"))
        if inner_boundary is not None:
            cs = ChangeSet()
            for sub in _split(content, inner_boundary):
                sub_mime, sub_content = _mime(sub)
                if _boundary(sub_mime.get("content-type")) is not None:
                    raise HttpError(400, INVALID_ARGUMENT, "Change sets cannot be nested.")
                part = _http_part(sub_content, sub_mime.get("content-id"))
                if part.method == "GET":
                    raise HttpError(400, INVALID_ARGUMENT, "GET requests are not allowed inside a change set.")
                cs.parts.append(part)
            items.append(cs)
        else:
            items.append(_http_part(content, mime.get("content-id")))
    return items


# --------------------------------------------------------------------------- execution


def _resolve_url(url: str, content_ids: dict[str, str]) -> tuple[str, str]:
    """(path, query) of an inner URL: absolute, rooted, relative to the service root, or ``$n``."""
    if url.startswith("$"):
        ref, _, tail = url[1:].partition("/")
        if ref not in content_ids:
            raise HttpError(
                400, INVALID_ARGUMENT, f"Content-ID Reference: '${ref}' does not exist in the batch context."
            )
        url = content_ids[ref] + ("/" + tail if tail else "")
    parts = urlsplit(url)
    path = unquote(parts.path)
    if not path.startswith("/"):
        path = f"{API_ROOT}/{path}"
    return path, parts.query


def _bind_refs(body: bytes, content_ids: dict[str, str]) -> bytes:
    """Replace ``"x@odata.bind": "$n"`` with the entity URL created under Content-ID n."""
    if b"$" not in body:
        return body
    try:
        doc = json.loads(body)
    except ValueError:
        return body
    if not isinstance(doc, dict):
        return body
    for k, v in list(doc.items()):
        if k.endswith("@odata.bind") and isinstance(v, str) and v.startswith("$"):
            ref = v[1:]
            if ref not in content_ids:
                raise HttpError(
                    400, INVALID_ARGUMENT, f"Content-ID Reference: '${ref}' does not exist in the batch context."
                )
            doc[k] = urlsplit(content_ids[ref]).path.rsplit("/", 1)[-1]
    return json.dumps(doc).encode("utf-8")


def _execute(outer: Ctx, part: Part, content_ids: dict[str, str]) -> Response:
    from .dataverse import resolve_effective, route

    try:
        path, query = _resolve_url(part.url, content_ids)
        if path.rstrip("/").endswith("$batch"):
            raise HttpError(400, INVALID_ARGUMENT, "Nested $batch requests are not supported.")
        if not path.startswith(API_ROOT + "/"):
            raise HttpError(404, "", f"Resource not found for the segment '{path.strip('/')}'.")
        own = {k.lower() for k, _ in part.headers}
        headers = [(k, v) for k, v in part.headers]
        for k, v in outer.request.headers.items():
            if k == "authorization" and k not in own:
                headers.append(("Authorization", v))
            elif k in _IMPERSONATION and not own & set(_IMPERSONATION):
                headers.append((k, v))
        inner = Request(
            method=part.method,
            path=path,
            query_string=query,
            headers=Headers(headers),
            body=_bind_refs(part.body, content_ids),
            scheme=outer.request.scheme,
            host=outer.request.host,
        )
        with outer.store.lock:
            user = resolve_effective(outer.store, outer.caller, inner.headers)
        ctx = Ctx(outer.app, inner, outer.principal, outer.caller, user, in_batch=True)
        # A GET part meets the fault rules as a request of its own (faults.py, "Inside a $batch").
        decision = outer.app.faults.decide_part(inner) if part.method == "GET" else None
        if decision is not None and decision.response is not None:
            return decision.response
        response = route(ctx, path[len(API_ROOT) :])
        if decision is not None and decision.alter is not None:
            decision.mark_served()
            response = decision.alter(response)
    except HttpError as e:
        annotations = wants_annotations(outer.request) or any(
            k.lower() == "prefer" and "include-annotations" in v for k, v in part.headers
        )
        response = e.response(annotations=annotations)
    if response.status < 400 and "OData-EntityId" in response.headers and part.method == "POST":
        response.headers["Location"] = response.headers["OData-EntityId"]
    if response.status < 400 and part.content_id and "OData-EntityId" in response.headers:
        content_ids[part.content_id] = response.headers["OData-EntityId"]
    return response


def _http_block(response: Response) -> str:
    lines = [f"HTTP/1.1 {response.status} {reason_phrase(response.status)}"]
    lines += [f"{k}: {v}" for k, v in response.headers.items()]
    body = response.body.decode("utf-8") if response.status not in (204, 304) else ""
    return "\r\n".join(lines) + "\r\n\r\n" + body


def _part_block(boundary: str, response: Response, content_id: str | None) -> str:
    head = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if content_id:
        head.append(f"Content-ID: {content_id}")
    return f"--{boundary}\r\n" + "\r\n".join(head) + "\r\n\r\n" + _http_block(response) + "\r\n"


def handle(ctx: Ctx) -> Response:
    items = parse(ctx.request)
    count = sum(len(i.parts) if isinstance(i, ChangeSet) else 1 for i in items)
    ctx.request.state["batch_count"] = count
    if count > MAX_REQUESTS:
        raise HttpError(
            400,
            INVALID_ARGUMENT,
            f"The number of requests in the batch ({count}) exceeds the limit of {MAX_REQUESTS}.",
        )
    continue_on_error = "odata.continue-on-error" in parse_prefer(ctx.request.headers.get("Prefer"))
    log: list[BatchPart] = ctx.request.state.setdefault("batch_parts", [])
    boundary = f"batchresponse_{uuid.uuid4()}"
    out: list[str] = []
    failure: Response | None = None

    def note(part: Part, response: Response) -> None:
        log.append(BatchPart(part.method, part.url, response.status, part.content_id))
        if response.status < 400 and part.method != "GET":
            ctx.request.state["dirty"] = True

    echo_outside = ctx.setting("batch_content_id_outside_changesets") != "omit"
    for item in items:
        if isinstance(item, Part):
            response = _execute(ctx, item, {})
            note(item, response)
            out.append(_part_block(boundary, response, item.content_id if echo_outside else None))
            if response.status >= 400:
                failure = failure or response
                if not continue_on_error:
                    break
            continue
        # A change set: all or nothing, under the store lock so no other request sees half of it.
        with ctx.store.lock:
            snapshot = ctx.store.snapshot()
            content_ids: dict[str, str] = {}
            results: list[tuple[Part, Response]] = []
            failed: tuple[Part, Response] | None = None
            for part in item.parts:
                response = _execute(ctx, part, content_ids)
                results.append((part, response))
                if response.status >= 400:
                    failed = (part, response)
                    break
            if failed is not None:
                ctx.store.restore(snapshot)
        for part, response in results:
            log.append(BatchPart(part.method, part.url, response.status, part.content_id))
        if failed is not None:
            # The failed change set answers with the one error, in place of the change set.
            out.append(_part_block(boundary, failed[1], failed[0].content_id))
            failure = failure or failed[1]
            if not continue_on_error:
                break
            continue
        ctx.request.state["dirty"] = True
        cs_boundary = f"changesetresponse_{uuid.uuid4()}"
        inner = "".join(_part_block(cs_boundary, r, p.content_id) for p, r in results) + f"--{cs_boundary}--\r\n"
        out.append(f"--{boundary}\r\nContent-Type: multipart/mixed; boundary={cs_boundary}\r\n\r\n" + inner)
    body = "".join(out) + f"--{boundary}--\r\n"
    status = failure.status if failure is not None and not continue_on_error else 200
    return Response(
        status,
        body.encode("utf-8"),
        {"Content-Type": f"multipart/mixed; boundary={boundary}", "OData-Version": "4.0"},
    )
