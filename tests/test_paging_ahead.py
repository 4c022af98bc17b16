"""Paged reads ask for the next page as soon as its link is known (read from the end of the body, before the
page is parsed, then confirmed by the parsed page) and check a page's rows while the next one is on its way
(``_HttpCore.get_pages``); what they return, and the error they raise, are those of
reading the pages one after the other. Driven against the emulator over loopback (its paging and its
``malformed`` faults), counting requests in its log, never timing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from builders import EmulatorTokens

from reconciler.api.client import DataverseClient, RetryPolicy
from reconciler.errors import MalformedResponseError

pytestmark = pytest.mark.emulator_only(reason="pages the emulator's references and injects malformed pages")

REFS = "/api/data/v9.2/connectionreferences"


@pytest.fixture
def client(emulator: Any) -> Iterator[DataverseClient]:
    with httpx.Client(timeout=10) as http:
        yield DataverseClient(emulator.url, EmulatorTokens(emulator), http=http, scope=emulator.url + "/.default",
                              retry=RetryPolicy(sleep=lambda _s: None, jitter=lambda: 0.0, max_retries=1))


def names(client: DataverseClient, page_size: int) -> list[str]:
    rows = client.get_all("connectionreferences", select=["connectionreferencelogicalname"], page_size=page_size)
    return [str(r["connectionreferencelogicalname"]) for r in rows]


def test_pages_read_ahead_return_every_row_once_in_order(emulator: Any, client: DataverseClient) -> None:
    whole = names(client, 5000)
    assert len(whole) >= 3
    emulator.app.log.clear()
    assert names(client, 1) == whole
    pages = [e for e in emulator.app.log if e.path == REFS]
    assert len(pages) == len(whole)  # one request per page, none twice
    assert sum(1 for e in pages if "skiptoken" in e.query) == len(whole) - 1


def test_a_malformed_page_raises_its_own_error_after_the_next_was_asked_for(
    emulator: Any, client: DataverseClient
) -> None:
    # Page 2's rows are wrong, its next link is fine: page 3 is already on its way when page 2's rows
    # are checked, and the error is page 2's, as if the pages were read one after the other.
    emulator.app.faults.add("malformed", REFS, shape="wrong_type",
                            key_path="value[]/connectionreferencelogicalname", value=5, after=1, times=1)
    emulator.app.log.clear()
    with pytest.raises(MalformedResponseError) as info:
        names(client, 1)
    assert "value[0].connectionreferencelogicalname: expected a string, got an integer" in info.value.problem
    assert "skiptoken" in str(info.value)  # page 2's URL, not page 1's
    pages = [e for e in emulator.app.log if e.path == REFS]
    assert len(pages) == 3


def test_a_next_link_guessed_from_the_tail_is_dropped_when_the_page_names_another(
    emulator: Any, client: DataverseClient
) -> None:
    """The next page is asked for from the link found at the end of the body, before the page is parsed;
    here that is a row's own (nested) ``@odata.nextLink`` on the last page: its answer is dropped, and the
    rows are those of the page, as if no guess had been made."""
    whole = names(client, 5000)
    decoy = f"{emulator.url}{REFS}?$skiptoken=decoy"
    emulator.app.faults.add("malformed", REFS, shape="wrong_type", key_path="value[]/zz_note",
                            value={"@odata.nextLink": decoy}, times=1)
    emulator.app.log.clear()
    assert names(client, 5000) == whole
    pages = [e for e in emulator.app.log if e.path == REFS]
    assert len(pages) == 2 and "decoy" in pages[1].query  # the guess was sent, and its answer not used


def test_a_page_whose_tail_names_its_next_link_is_read_ahead_once(emulator: Any, client: DataverseClient) -> None:
    # The link read from the tail is the page's own: each page is asked for once, none again.
    whole = names(client, 5000)
    emulator.app.log.clear()
    assert names(client, 2) == whole
    pages = [e for e in emulator.app.log if e.path == REFS]
    assert len(pages) == -(-len(whole) // 2)
    assert len({e.query for e in pages}) == len(pages)
