"""The emulator splits a ``$batch`` body at its delimiter lines exactly as the regular expression
``(?:^|\\r?\\n)--<boundary>(--)?[ \\t]*(?:\\r?\\n|$)`` does (reconciler/emulator/batch.py ``_split``): the
same parts, and the same refusal of a body without its closing delimiter."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.emulator.batch import _split
from reconciler.emulator.web import HttpError


def split_by_pattern(body: str, boundary: str) -> list[str] | None:
    """The parts, found with the pattern compiled for the boundary; None where the body is refused."""
    delim = re.compile(r"(?:^|\r?\n)--" + re.escape(boundary) + r"(--)?[ \t]*(?:\r?\n|$)")
    parts: list[str] = []
    pos = None
    for m in delim.finditer(body):
        if pos is not None:
            parts.append(body[pos : m.start()])
        pos = m.end()
        if m.group(1):
            return parts
    return None


def split(body: str, boundary: str) -> list[str] | None:
    try:
        return _split(body, boundary)
    except HttpError as e:
        assert e.status == 400
        return None


BODY = (
    "--batch_1\r\nContent-Type: application/http\r\n\r\nGET /x HTTP/1.1\r\n\r\n\r\n"
    "--batch_1\r\nContent-Type: application/http\r\n\r\nGET /y HTTP/1.1\r\n\r\n\r\n--batch_1--\r\n"
)


@pytest.mark.parametrize(
    ("body", "boundary"),
    [
        (BODY, "batch_1"),
        ("preamble\r\n" + BODY + "epilogue", "batch_1"),
        (BODY.replace("\r\n", "\n"), "batch_1"),
        (BODY.replace("--batch_1--\r\n", "--batch_1--"), "batch_1"),
        (BODY.replace("--batch_1--\r\n", "--batch_1-- \t\r\n"), "batch_1"),
        (BODY.replace("--batch_1--\r\n", "--batch_1--x\r\n"), "batch_1"),
        (BODY.replace("--batch_1--\r\n", ""), "batch_1"),
        (BODY, "batch_2"),
        (BODY, "batch_"),
        ("--a\r\n--a\r\nx\r\n--a--", "a"),
        ("--a.b\r\nx\r\n--aXb--", "a.b"),
        ("\r\n--a\r\nx\r\r\n--a--", "a"),
        ("----\n-----\n------", "--"),
        ("", "a"),
    ],
)
def test_split_as_the_pattern_does(body: str, boundary: str) -> None:
    assert split(body, boundary) == split_by_pattern(body, boundary)


def test_split_parts_and_refusal() -> None:
    assert _split(BODY, "batch_1") == [
        "Content-Type: application/http\r\n\r\nGET /x HTTP/1.1\r\n\r\n",
        "Content-Type: application/http\r\n\r\nGET /y HTTP/1.1\r\n\r\n",
    ]
    with pytest.raises(HttpError):
        _split(BODY.replace("--batch_1--", "--batch_1"), "batch_1")


_BOUNDARY = st.sampled_from(["b", "-", "b-", "a.b", "--", "b b"])


@given(_BOUNDARY, st.lists(st.sampled_from(["--", "-", "b", "a.b", "\r\n", "\n", "\r", " ", "\t", "x", "--b", "--a.b"]),
                           max_size=24))
def test_split_as_the_pattern_does_on_generated_bodies(boundary: str, pieces: list[str]) -> None:
    body = "".join(pieces)
    assert split(body, boundary) == split_by_pattern(body, boundary)
