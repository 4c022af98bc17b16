"""``reconciler.api.live._guids``: the GUIDs among many owner ids (thousands of references name a handful of
owners), lower case, each once, in first-seen order; anything else dropped. Held to the plain reading
(check every value, keep the first of each) on values hypothesis draws from GUIDs in both cases, repeats,
near-GUIDs and empties."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from reconciler.api.live import _guids
from reconciler.domain.patterns import is_guid

GUIDS = [str(uuid.UUID(int=i * 7919)) for i in range(1, 5)]
VALUE = st.one_of(st.sampled_from(GUIDS), st.sampled_from(GUIDS).map(str.upper), st.none(), st.just(""),
                  st.sampled_from(GUIDS).map(lambda g: g[:-1]), st.text(max_size=5))


def plain(values: list[str | None]) -> list[str]:
    out: list[str] = []
    for v in values:
        if v and is_guid(v) and v.lower() not in out:
            out.append(v.lower())
    return out


@given(st.lists(VALUE, max_size=30))
def test_each_guid_once_lower_case_in_first_seen_order(values: list[str | None]) -> None:
    assert [g.value for g in _guids(values)] == plain(values)


def test_a_guid_in_upper_and_lower_case_is_one() -> None:
    assert [g.value for g in _guids([GUIDS[0].upper(), None, "x", GUIDS[0]])] == [GUIDS[0]]
