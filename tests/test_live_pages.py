"""The live reader when the references take more than one page (more than 5,000): the second read ``$batch``
(the solution's members, the writer's privilege, the users) and the shares of the bound connections go as
soon as the first page and the connections are in, beside the further pages, and the owners first seen on a
later page are read once every page is in: one more request, only when a later page names an owner the
first round did not ask for. Driven against the emulator over loopback, counting requests in its log; the
one ordering test holds page 2 back with an injected delay so that what was sent before its answer is
certain, not a matter of timing."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from builders import EmulatorTokens, sample_config

from reconciler.api.live import MAX_USER_KEYS, read_environment
from reconciler.api.session import EnvSession, open_environment
from reconciler.domain.model import Config, DesiredReference, connector_id
from reconciler.emulator import factory
from reconciler.emulator.factory import Sample

pytestmark = pytest.mark.emulator_only(reason="pages 5,100 references of the emulator and reads its log")

REFS = "/api/data/v9.2/connectionreferences"
USERS = "/api/data/v9.2/systemusers"
PAGE = 5000
BULK = PAGE + 100  # two pages, the second of more references than a users URL may name


def add_bulk(emulator: Any) -> None:
    data = emulator.store.data
    svc = emulator.store.user(Sample.SVC_USER_ID)
    sol = emulator.store.solution(Sample.SOLUTION)
    with emulator.store.lock:
        for i in range(BULK):
            factory.add_reference(data, f"contoso_Bulk{i:04d}", Sample.SP, owner=svc, display_name=f"Bulk {i}",
                                  connection=Sample.CONN_SP_SVC, solution=sol)


def config_for(emulator: Any, *, bound: bool = False) -> Config:
    refs = {Sample.REF_SP_NAME: DesiredReference(Sample.REF_SP_NAME, connector_id(Sample.SP),
                                                 "SharePoint ContosoConnections")}
    bindings = {Sample.REF_SP_NAME: Sample.CONN_SP_SVC} if bound else None
    return sample_config(emulator.url, refs, bindings)


@pytest.fixture
def bulk(emulator: Any) -> Any:
    add_bulk(emulator)
    return emulator


@contextmanager
def session_for(emulator: Any, config: Config) -> Iterator[EnvSession]:
    with open_environment(config, "dev", token_provider=EmulatorTokens(emulator),
                          http=httpx.Client(timeout=30)) as s:
        yield s


def later_page_ids(emulator: Any, config: Config) -> list[str]:
    """The ids of the references the service answers after the first page, in its order."""
    with session_for(emulator, config) as s:
        rows = s.reader.dataverse.get_all("connectionreferences", select=("connectionreferenceid",))
    return [str(r["connectionreferenceid"]) for r in rows[PAGE:]]


def own(emulator: Any, reference_ids: list[str], owners: list[dict[str, Any]]) -> None:
    """Give the references these owners, one after the other (cycled)."""
    rows = {str(r["connectionreferenceid"]): r for r in emulator.store.rows("connectionreferences")}
    with emulator.store.lock:
        for i, rid in enumerate(reference_ids):
            rows[rid]["_ownerid_value"] = owners[i % len(owners)]["systemuserid"]


def new_users(emulator: Any, n: int) -> list[dict[str, Any]]:
    with emulator.store.lock:
        return [factory.add_user(emulator.store.data, domainname=f"late{i}@contoso.com") for i in range(n)]


def user_reads(emulator: Any) -> list[Any]:
    """The users reads sent on their own (the first one travels in the second read ``$batch``)."""
    return [e for e in emulator.app.log if e.method == "GET" and e.path == USERS]


def test_the_second_batch_and_the_shares_do_not_wait_for_page_two(bulk: Any) -> None:
    config = config_for(bulk, bound=True)
    # A registered management app lists every connection, the bound one included, and reads its shares.
    with bulk.store.lock:
        bulk.store.data["applications"][0]["management_app"] = True
    # Page 2 is the only GET of the references sent on its own (page 1 travels in the first read $batch).
    bulk.app.faults.add("latency", REFS, methods=["GET"], latency_ms=1500)
    bulk.app.log.clear()
    with session_for(bulk, config) as s:
        live = read_environment(s, config, "dev")
    assert sum(1 for r in live.references if r.logical_name.startswith("contoso_Bulk")) == BULK  # every page
    log = list(bulk.app.log)
    page2 = next(e for e in log if e.method == "GET" and e.path == REFS)
    batches = sorted((e for e in log if e.path.endswith("/$batch")), key=lambda e: e.started)
    shares = [e for e in log if "/permissions" in e.path]
    assert len(batches) == 2 and len(shares) == 1
    # Sent, and answered, while page 2 was held back: they needed only the first page and the connections.
    assert batches[1].finished < page2.finished
    assert shares[0].finished < page2.finished
    assert live.writer is not None and live.writer.systemuserid == Sample.SVC_USER_ID
    assert next(c for c in live.connections if c.name == Sample.CONN_SP_SVC).shares is not None


def test_owners_seen_on_the_first_page_cost_no_further_read(bulk: Any) -> None:
    config = config_for(bulk)
    bulk.app.log.clear()
    with session_for(bulk, config) as s:
        live = read_environment(s, config, "dev")
    # Every bulk reference, on either page, is the service account's: the second batch asked for it.
    assert user_reads(bulk) == []
    assert len([e for e in bulk.app.log if e.method == "GET" and e.path == REFS]) == 1  # page 2
    assert Sample.SVC_USER_ID in {u.systemuserid for u in live.users}


def test_an_owner_first_seen_on_a_later_page_is_read_once_every_page_is_in(bulk: Any) -> None:
    config = config_for(bulk)
    late = new_users(bulk, 2)
    own(bulk, later_page_ids(bulk, config), late)
    bulk.app.log.clear()
    with session_for(bulk, config) as s:
        live = read_environment(s, config, "dev")
    reads = user_reads(bulk)
    assert len(reads) == 1  # one more request for both
    ids = {u.systemuserid for u in live.users}
    assert {u["systemuserid"] for u in late} <= ids
    assert Sample.SVC_USER_ID in ids and Sample.MAKER_USER_ID in ids
    assert len(ids) == len(live.users)  # nobody twice
    owners = {r.owner_id for r in live.references if r.owner_id}
    assert owners <= ids  # every owner a plan names is known


def test_more_late_owners_than_a_url_holds_read_every_user_once(bulk: Any) -> None:
    config = config_for(bulk)
    late = new_users(bulk, MAX_USER_KEYS + 1)
    own(bulk, later_page_ids(bulk, config), late)
    bulk.app.log.clear()
    with session_for(bulk, config) as s:
        live = read_environment(s, config, "dev")
    reads = user_reads(bulk)
    assert len(reads) == 1 and "filter" not in reads[0].query  # every user, no over-long URL
    ids = [u.systemuserid for u in live.users]
    assert {u["systemuserid"] for u in late} <= set(ids)
    assert len(ids) == len(set(ids))
    # Only the users the plan names: not the users nobody asked for.
    assert Sample.DISABLED_USER_ID not in ids


def test_when_the_first_read_took_every_user_a_late_owner_costs_no_request(bulk: Any) -> None:
    config = config_for(bulk)
    early = new_users(bulk, MAX_USER_KEYS + 1)
    later = later_page_ids(bulk, config)
    first_page = [str(r["connectionreferenceid"]) for r in bulk.store.rows("connectionreferences")
                  if str(r["connectionreferenceid"]) not in set(later)]
    own(bulk, first_page, early)  # too many owners for one URL: the second batch reads every user
    late = new_users(bulk, 1)
    own(bulk, later, late)
    bulk.app.log.clear()
    with session_for(bulk, config) as s:
        live = read_environment(s, config, "dev")
    assert user_reads(bulk) == []
    ids = {u.systemuserid for u in live.users}
    assert late[0]["systemuserid"] in ids and {u["systemuserid"] for u in early} <= ids

