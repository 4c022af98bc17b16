"""``parse_multipart`` reads a ``batchresponse`` by byte offsets (a read ``$batch`` answer holds pages of 5,000
rows). It must read every answer exactly as the plain text reading does: that reading is written out here, in
the test, as the reference (split on the delimiter, strip, split head from body), and hypothesis builds
answers (nested change sets, LF or CRLF, missing blank lines, preambles, non-ASCII bodies) to compare them on;
a few fixed answers pin the cases that matter most."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.api.batch_format import MultipartPart, parse_multipart
from reconciler.api.batch_format import _split_headers as _headers  # a header block's reading is not what changed


def _head_body(text: str) -> tuple[str, str]:
    for sep in ("\r\n\r\n", "\n\n"):
        if sep in text:
            head, body = text.split(sep, 1)
            return head, body
    return text, ""


def reference(body: str, boundary: str) -> list[MultipartPart]:
    """The text reading: what ``parse_multipart`` answered when it split the decoded text."""
    parts: list[MultipartPart] = []
    for chunk in body.split("--" + boundary)[1:]:
        if chunk.startswith("--"):
            break
        mime_head, rest = _head_body(chunk.lstrip("\r\n"))
        mime = _headers(mime_head)
        ctype = mime.get("content-type", "")
        if ctype.lower().startswith("multipart/"):
            m = re.search(r'boundary="?([^";]+)"?', ctype, re.IGNORECASE)
            if m:
                parts.extend(reference(rest, m.group(1)))
            continue
        http_head, http_body = _head_body(rest)
        lines = http_head.splitlines()
        if not lines:
            continue
        status = re.match(r"HTTP/\d(?:\.\d)?\s+(\d{3})", lines[0].strip())
        if not status:
            continue
        parts.append(MultipartPart(headers=mime, status=int(status.group(1)),
                                   response_headers=_headers("\n".join(lines[1:])),
                                   body=http_body.rstrip("\r\n").encode("utf-8")))
    return parts


NL = st.sampled_from(["\r\n", "\n"])
BODY = st.one_of(st.just(""), st.just('{"value":[]}'), st.text(alphabet="ab{}\":,é€\r\n -", max_size=40))
STATUS = st.sampled_from(["HTTP/1.1 200 OK", "HTTP/1.1 204 No Content", "HTTP/1.1 412 Precondition Failed",
                          "HTTP/2 429", "not a status line"])


@st.composite
def part(draw: st.DrawFn, boundary: str, depth: int = 0) -> str:
    nl = draw(NL)
    if depth == 0 and draw(st.booleans()) and draw(st.booleans()):
        inner = "changesetresponse_" + draw(st.sampled_from(["1", "x-2"]))
        inner_parts = draw(st.lists(part(inner, depth=1), max_size=3))
        closing = f"--{inner}--{nl}" if draw(st.booleans()) else ""
        return (f"--{boundary}{nl}Content-Type: multipart/mixed; boundary={inner}{nl}{nl}"
                + "".join(inner_parts) + closing)
    head = f"Content-Type: application/http{nl}Content-Transfer-Encoding: binary{nl}"
    if draw(st.booleans()):
        head += f"Content-ID: {draw(st.integers(1, 9))}{nl}"
    blank = nl if draw(st.integers(0, 9)) else ""  # now and then no blank line after the part's headers
    http = f"{draw(STATUS)}{nl}Content-Type: application/json{nl}OData-Version: 4.0{nl}{nl}{draw(BODY)}{nl}"
    return f"--{boundary}{nl}{draw(st.sampled_from(['', nl]))}{head}{blank}{http}"


@st.composite
def answer(draw: st.DrawFn) -> tuple[str, str]:
    boundary = "batchresponse_" + draw(st.sampled_from(["1", "0f3a-9e0c", "é"]))
    preamble = draw(st.sampled_from(["", "preamble\r\n", "\r\n"]))
    parts = draw(st.lists(part(boundary), max_size=4))
    closing = draw(st.sampled_from([f"--{boundary}--\r\n", f"--{boundary}--", ""]))
    return preamble + "".join(parts) + closing, boundary


@settings(max_examples=300, deadline=None)
@given(answer())
def test_the_byte_reading_answers_what_the_text_reading_does(case: tuple[str, str]) -> None:
    body, boundary = case
    expected = reference(body, boundary)
    assert parse_multipart(body.encode("utf-8"), boundary) == expected
    assert parse_multipart(body, boundary) == expected  # text in: the same answer


def test_a_part_body_is_handed_on_as_the_bytes_sent() -> None:
    page = '{"value":[{"name":"Büro €"}]}'.encode()
    raw = (b"--b\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n"
           + page + b"\r\n--b\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 404 Not Found\r\n\r\n\r\n--b--\r\n")
    parts = parse_multipart(raw, "b")
    assert [p.status for p in parts] == [200, 404]
    assert parts[0].body == page and parts[1].body == b""
    assert parts[0].response_headers == {"content-type": "application/json"}


def test_an_undecodable_header_byte_does_not_stop_the_reading() -> None:
    raw = (b"--b\r\nContent-Type: application/http\r\nX-Odd: \xff\r\n\r\nHTTP/1.1 200 OK\r\n\r\n{}\r\n--b--")
    parts = parse_multipart(raw, "b")
    assert len(parts) == 1 and parts[0].headers["x-odd"] == "\ufffd" and parts[0].body == b"{}"
