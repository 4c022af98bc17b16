"""The HTTP boundary against the emulator over loopback HTTP: paging, retries on injected 429/503 and
dropped connections, the 401 refresh, error mapping, filter escaping, and $batch change sets.

Tests without the ``emulator_only`` mark also run against a real environment (remote mode,
docs/emulator.md): they take ids from the ``target`` fixture, write only references they create
(per-run logical names; the ``http`` client records them and ``dv`` deletes them afterwards), and
check the emulator's request log only when there is one."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from reconciler.api.batch_format import ANY_VERSION, create_op, update_op
from reconciler.api.client import (
    POWERPLATFORM_SCOPE,
    ConnectionsClient,
    DataverseClient,
    RetryPolicy,
)
from reconciler.api.odata_filter import Guid, eq
from reconciler.emulator import factory
from reconciler.emulator.factory import Sample
from reconciler.errors import (
    ApiError,
    NotFoundError,
    OutcomeUnknownError,
    PreconditionFailedError,
    ThrottledError,
    TransientError,
)

API = "/api/data/v9.2/"
# Why tests are emulator_only (shown by `pytest -rs` in remote mode).
FAULTS = "injects faults and reads the emulator's request log"
CONNECTIONS_API = "the connections API: another host and audience, and the test edits the emulator's data"


class EmulatorTokens:
    """Real tokens signed with the emulator's key for the pipeline application. ``expired_first``
    hands out an expired token until ``invalidate`` is called (what a revoked/expired cache looks like).

    In remote mode the tokens are the run's one bearer (the application's, for the environment URL);
    only the emulator can mint an expired one, so there the refused token is that bearer with a
    signature that does not verify, which Dataverse refuses with the same 401."""

    def __init__(self, emulator: Any, *, expired_first: bool = False) -> None:
        self.emulator = emulator
        self.expired = expired_first
        self.invalidations = 0
        self.issued: list[str] = []
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, bool], str] = {}

    def get_token(self, scope: str) -> str:
        audience = scope.removesuffix("/.default")
        with self._lock:
            key = (audience, self.expired)
            if key not in self._cache:  # cached per scope, as real providers do
                self._cache[key] = self._issue(audience)
                self.issued.append(self._cache[key])
            return self._cache[key]

    def _issue(self, audience: str) -> str:
        if not self.emulator.remote:
            lifetime = -60 if self.expired else 3600
            return str(self.emulator.token(audience=audience, lifetime=lifetime))
        if audience != self.emulator.url:
            # Another audience (the connections API): the remote handle refuses, saying the test
            # needs the emulator_only mark.
            return str(self.emulator.token(audience=audience))
        bearer = str(self.emulator.token())
        if not self.expired:
            return bearer
        header, payload, signature = bearer.split(".")
        return f"{header}.{payload}.{signature[::-1]}"

    def invalidate(self, scope: str) -> None:
        with self._lock:
            self.invalidations += 1
            self.expired = False


@pytest.fixture
def http(emulator: Any, created: Any, request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        if emulator.remote:
            # The clients below write through this transport, not through `dv`: record the references
            # they create (POST or $batch) so that `dv`, set up here, deletes them when the test ends.
            request.getfixturevalue("dv")
            client.event_hooks["response"].append(created.record)
        yield client


@pytest.fixture
def sleeps() -> list[float]:
    return []


def make_client(emulator: Any, http: httpx.Client, sleeps: list[float], **kw: Any) -> DataverseClient:
    tokens = kw.pop("tokens", None) or EmulatorTokens(emulator)
    retry = RetryPolicy(sleep=sleeps.append, jitter=lambda: 0.0, **kw)
    return DataverseClient(emulator.url, tokens, http=http, scope=emulator.url + "/.default", retry=retry)


@pytest.fixture
def client(emulator: Any, http: httpx.Client, sleeps: list[float]) -> DataverseClient:
    return make_client(emulator, http, sleeps)


def dv_log(emulator: Any, path: str) -> list[Any]:
    return [e for e in emulator.app.log if e.path == API + path]


# --------------------------------------------------------------------------- reads


def test_who_am_i_and_component_type(client: DataverseClient, target: Any) -> None:
    assert client.who_am_i().user_id == target.APP_USER_ID
    # Read at run time, never hard-coded: the sample org uses a non-obvious number.
    assert client.component_type_for("connectionreference") == target.COMPONENT_TYPE


@pytest.mark.emulator_only(reason="adds references through the emulator's store and counts pages in its request log")
def test_paging_follows_next_link_over_several_pages(emulator: Any, client: DataverseClient) -> None:
    svc = emulator.store.user(Sample.SVC_USER_ID)
    with emulator.store.lock:
        for i in range(11):
            factory.add_reference(emulator.store.data, f"contoso_Paged{i:02d}", Sample.SP, owner=svc)
    emulator.app.log.clear()
    rows = client.get_all("connectionreferences", select=["connectionreferencelogicalname"], page_size=5)
    names = [r["connectionreferencelogicalname"] for r in rows]
    assert len(names) == 15 == len(set(names))  # 4 sample rows + 11, no duplicates, none lost
    entries = dv_log(emulator, "connectionreferences")
    assert len(entries) == 3
    assert all("skiptoken" in e.query for e in entries[1:])
    assert "skiptoken" not in entries[0].query


@pytest.mark.emulator_only(reason="adds a user with an apostrophe to the emulator's data (tests create no users)")
def test_filter_escaping_with_hostile_values(emulator: Any, client: DataverseClient) -> None:
    with emulator.store.lock:
        factory.add_user(emulator.store.data, domainname="o'brien@contoso.com", fullname="Pat O'Brien")
    rows = client.get_all("systemusers", select=["domainname"],
                          filter=eq("domainname", "o'brien@contoso.com"))
    assert [r["domainname"] for r in rows] == ["o'brien@contoso.com"]
    # Unescaped, this value would close the string and match every user.
    hostile = "x' or domainname ne 'x"
    assert client.get_all("systemusers", select=["domainname"], filter=eq("domainname", hostile)) == []
    # Query-string metacharacters stay inside the value too.
    assert client.get_all("systemusers", select=["domainname"], filter=eq("domainname", "a&$top=1#")) == []


# --------------------------------------------------------------------------- retries and errors


@pytest.mark.emulator_only(reason=FAULTS)
def test_429_is_retried_honouring_retry_after(
    emulator: Any, client: DataverseClient, sleeps: list[float]
) -> None:
    emulator.app.faults.fail_next(2, path=API + "WhoAmI", kind="throttle", retry_after=1)
    assert client.who_am_i().user_id == Sample.APP_USER_ID
    assert sleeps == [1.0, 1.0]
    assert [e.status for e in dv_log(emulator, "WhoAmI")] == [429, 429, 200]


@pytest.mark.emulator_only(reason=FAULTS)
def test_throttling_past_the_budget_raises_throttled_error(
    emulator: Any, http: httpx.Client, sleeps: list[float]
) -> None:
    client = make_client(emulator, http, sleeps, max_retries=2)
    emulator.app.faults.throttle(path=API + "WhoAmI", code="0x80072321", retry_after=1)
    with pytest.raises(ThrottledError) as info:
        client.who_am_i()
    assert info.value.status == 429
    assert info.value.code == "0x80072321"
    assert "gave up after 3 attempt(s)" in str(info.value)
    assert len(dv_log(emulator, "WhoAmI")) == 3


@pytest.mark.emulator_only(reason=FAULTS)
def test_retry_after_beyond_the_total_wait_is_not_slept(
    emulator: Any, http: httpx.Client, sleeps: list[float]
) -> None:
    client = make_client(emulator, http, sleeps, max_total_wait=5)
    emulator.app.faults.fail_next(1, path=API + "WhoAmI", kind="throttle", retry_after=60)
    with pytest.raises(ThrottledError):
        client.who_am_i()
    assert sleeps == []


@pytest.mark.emulator_only(reason=FAULTS)
def test_503_backs_off_exponentially_then_gives_up(
    emulator: Any, http: httpx.Client, sleeps: list[float]
) -> None:
    client = make_client(emulator, http, sleeps, max_retries=3)
    emulator.app.faults.fail_next(2, path=API + "WhoAmI", kind="unavailable")
    assert client.who_am_i().user_id == Sample.APP_USER_ID
    assert sleeps == [0.5, 1.0]  # base 1s * 2^n, half fixed + jitter (0 here)
    sleeps.clear()
    emulator.app.faults.add("unavailable", API + "WhoAmI")
    with pytest.raises(TransientError) as info:
        client.who_am_i()
    assert info.value.status == 503
    assert sleeps == [0.5, 1.0, 2.0]


@pytest.mark.emulator_only(reason=FAULTS)
def test_dropped_connection_is_retried_for_reads_not_for_batches(
    emulator: Any, client: DataverseClient, sleeps: list[float]
) -> None:
    emulator.app.faults.fail_next(1, path=API + "WhoAmI", kind="drop")
    assert client.who_am_i().user_id == Sample.APP_USER_ID
    assert len(sleeps) == 1
    emulator.app.faults.fail_next(1, path=API + "$batch", kind="drop")
    op = create_op("connectionreferences", {"connectionreferencelogicalname": "contoso_Dropped",
                                            "connectionreferencedisplayname": "d",
                                            "connectorid": "/providers/Microsoft.PowerApps/apis/shared_sql"})
    with pytest.raises(OutcomeUnknownError) as info:
        client.execute_batch([op])
    assert "the answer was lost after the request was sent (RemoteProtocolError)" in str(info.value)
    # A POST that may have been committed is not repeated: the applier reads back first.
    assert len(dv_log(emulator, "$batch")) == 1


def _reads(client: DataverseClient) -> list[tuple[str, dict[str, str]]]:
    """Three reads a prefetch can carry: WhoAmI, the component type and the references."""
    return [(client.who_am_i_url(), {}),
            client.query("solutioncomponentdefinitions", **client.component_type_query("connectionreference")),
            client.query("connectionreferences", select=["connectionreferencelogicalname"])]


@pytest.mark.emulator_only(reason=FAULTS)
@pytest.mark.parametrize("kind", ["throttle", "unavailable"])
def test_a_throttled_read_batch_waits_retry_after_then_is_sent_again(
    emulator: Any, client: DataverseClient, sleeps: list[float], kind: str
) -> None:
    """A 429 (or a 503 saying when to come back) on a read $batch is a pause the service asks for: the batch
    waits Retry-After and goes again, rather than its reads bursting out one by one inside the window."""
    emulator.app.faults.fail_next(1, path=API + "$batch", kind=kind, retry_after=5)
    emulator.app.log.clear()
    assert client.prefetch(_reads(client)) == 3
    assert sleeps == [5.0]
    assert [e.status for e in dv_log(emulator, "$batch")] == [429 if kind == "throttle" else 503, 200]
    assert emulator.app.log.count_requests("GET") == 0  # nothing was sent on its own
    assert client.who_am_i().user_id == Sample.APP_USER_ID  # answered from the batch
    assert emulator.app.log.count_requests("GET") == 0


@pytest.mark.emulator_only(reason=FAULTS)
def test_a_read_batch_throttled_past_the_budget_falls_back_to_single_reads(
    emulator: Any, http: httpx.Client, sleeps: list[float]
) -> None:
    client = make_client(emulator, http, sleeps, max_retries=2)
    emulator.app.faults.throttle(path=API + "$batch", retry_after=1)
    assert client.prefetch(_reads(client)) == 0
    assert sleeps == [1.0, 1.0]
    assert [e.status for e in dv_log(emulator, "$batch")] == [429, 429, 429]
    sleeps.clear()
    emulator.app.faults.clear()
    assert client.who_am_i().user_id == Sample.APP_USER_ID  # read on its own
    assert len(dv_log(emulator, "WhoAmI")) == 1
    # A 503 that does not say when to come back is a batch the service cannot serve: one by one at once.
    emulator.app.faults.fail_next(1, path=API + "$batch", kind="unavailable")
    assert client.prefetch(_reads(client)) == 0
    assert sleeps == []


def test_401_refreshes_the_token_once(
    emulator: Any, http: httpx.Client, sleeps: list[float], target: Any
) -> None:
    tokens = EmulatorTokens(emulator, expired_first=True)
    client = make_client(emulator, http, sleeps, tokens=tokens)
    assert client.who_am_i().user_id == target.APP_USER_ID
    assert tokens.invalidations == 1
    if not emulator.remote:
        assert [e.status for e in dv_log(emulator, "WhoAmI")] == [401, 200]


def test_401_twice_is_an_error_without_the_token(
    emulator: Any, http: httpx.Client, sleeps: list[float]
) -> None:
    class AlwaysExpired(EmulatorTokens):
        def invalidate(self, scope: str) -> None:
            self.invalidations += 1  # and keeps handing out expired tokens

    tokens = AlwaysExpired(emulator, expired_first=True)
    client = make_client(emulator, http, sleeps, tokens=tokens)
    with pytest.raises(ApiError) as info:
        client.who_am_i()
    assert info.value.status == 401
    assert tokens.invalidations == 1
    assert all(t not in str(info.value) for t in tokens.issued)
    assert "Bearer" not in str(info.value)


def test_error_mapping(client: DataverseClient) -> None:
    missing = "99999999-0000-4000-8000-000000000000"
    with pytest.raises(NotFoundError) as info:
        client.get(f"connectionreferences({missing})")
    assert info.value.status == 404
    assert info.value.code == "0x80040217"
    assert missing in str(info.value)
    with pytest.raises(ApiError) as bad:
        client.get("connectionreferences", {"$skip": 1})  # $skip is not supported (page-results)
    assert bad.value.status == 400
    assert not isinstance(bad.value, NotFoundError)


# --------------------------------------------------------------------------- $batch


def _name(tag: str) -> str:
    """A logical name no other row has (per test and run, so a real environment never collides)."""
    return f"contoso_{tag}{uuid.uuid4().hex[:8]}"


def _new_ref(name: str, **extra: Any) -> dict[str, Any]:
    return {"connectionreferencelogicalname": name, "connectionreferencedisplayname": name,
            "connectorid": "/providers/Microsoft.PowerApps/apis/shared_sharepointonline", **extra}


def _own_ref(client: DataverseClient, tag: str) -> str:
    """A reference of this test's, outside any solution, written through ``client`` (so recorded for
    cleanup in remote mode); returns its id."""
    results = client.execute_batch([create_op("connectionreferences", _new_ref(_name(tag)))])
    assert [r.outcome for r in results] == ["written"], results
    assert results[0].entity_id is not None
    return results[0].entity_id


def test_batch_writes_a_change_set(emulator: Any, client: DataverseClient, target: Any) -> None:
    mine = _own_ref(client, "bu")
    etag = client.get(f"connectionreferences({mine})")["@odata.etag"]
    name = _name("batch")
    ops = [
        create_op("connectionreferences", _new_ref(name), solution_unique_name=target.SOLUTION),
        update_op("connectionreferences", mine, {"description": "set in a batch"}, etag=etag),
    ]
    results = client.execute_batch(ops)
    assert [r.outcome for r in results] == ["written", "written"]
    new_id = results[0].entity_id
    assert new_id is not None
    row = client.get(f"connectionreferences({new_id})")
    assert row["connectionreferencelogicalname"] == name
    members = client.get_all("solutioncomponents", select=["objectid"], filter=eq("objectid", Guid(new_id)))
    assert len(members) == 1  # MSCRM.SolutionUniqueName put it in the solution
    assert client.get(f"connectionreferences({mine})")["description"] == "set in a batch"


def test_batch_failure_rolls_back_and_names_the_failed_operation(
    emulator: Any, client: DataverseClient, created: Any, target: Any
) -> None:
    first, second = _own_ref(client, "bs"), _own_ref(client, "bd")
    # A stale ETag: the one read before another write to the row.
    stale = client.get(f"connectionreferences({first})")["@odata.etag"]
    client.execute_batch([update_op("connectionreferences", first, {"description": "before"}, etag=stale)])
    assert client.get(f"connectionreferences({first})")["@odata.etag"] != stale
    name = _name("rolledback")
    ops = [
        create_op("connectionreferences", _new_ref(name), solution_unique_name=target.SOLUTION),
        update_op("connectionreferences", first, {"description": "never"}, etag=stale),
        update_op("connectionreferences", second, {"description": "never either"}, etag=ANY_VERSION),
    ]
    results = client.execute_batch(ops)
    assert [r.outcome for r in results] == ["not_written", "failed", "not_written"]
    assert isinstance(results[1].error, PreconditionFailedError)
    assert results[1].status == 412
    # Atomic: the create before the failure was rolled back.
    rows = client.get_all("connectionreferences", select=["connectionreferenceid"],
                          filter=eq("connectionreferencelogicalname", name))
    for row in rows:  # a failed change set carries no entity id: clean up what it should not have left
        created.add(str(row["connectionreferenceid"]))
    assert rows == []
    assert client.get(f"connectionreferences({first})").get("description") == "before"
    assert client.get(f"connectionreferences({second})").get("description") != "never either"


def test_batch_impersonates_with_caller_object_id(
    emulator: Any, client: DataverseClient, target: Any
) -> None:
    results = client.execute_batch(
        [create_op("connectionreferences", _new_ref(_name("assvc")), solution_unique_name=target.SOLUTION)],
        caller_object_id=target.SVC_OBJECT_ID,
    )
    assert results[0].ok
    row = client.get(f"connectionreferences({results[0].entity_id})")
    assert row["_ownerid_value"] == target.SVC_USER_ID
    assert row["_createdonbehalfby_value"] == target.APP_USER_ID
    if not emulator.remote:
        entry = dv_log(emulator, "$batch")[-1]
        assert entry.effective_user_id == target.SVC_USER_ID


# --------------------------------------------------------------------------- connections API


def _connections(emulator: Any, http: httpx.Client) -> ConnectionsClient:
    return ConnectionsClient(emulator.url, EmulatorTokens(emulator), http=http, scope=POWERPLATFORM_SCOPE,
                             environment_id=Sample.ENVIRONMENT_ID,
                             admin_scope="https://service.powerapps.com/.default")


@pytest.mark.emulator_only(reason=CONNECTIONS_API)
def test_connections_user_scope_and_admin_scope(emulator: Any, http: httpx.Client) -> None:
    conns = _connections(emulator, http)
    # The pipeline app sees only the connection shared with it.
    assert [c["name"] for c in conns.list_connections()] == [Sample.CONN_DV_SVC]
    with pytest.raises(ApiError) as info:
        conns.list_connections_admin()
    assert info.value.status == 403
    for app in emulator.store.data["applications"]:
        app["management_app"] = True
    assert len(conns.list_connections_admin()) == 4


@pytest.mark.emulator_only(reason=CONNECTIONS_API)
def test_connections_paging_follows_next_link(emulator: Any, http: httpx.Client) -> None:
    emulator.store.data["settings"]["connections_page_size"] = 2
    for app in emulator.store.data["applications"]:
        app["management_app"] = True
    names = [c["name"] for c in _connections(emulator, http).list_connections_admin()]
    assert sorted(names) == sorted(c["name"] for c in emulator.store.data["connections"])
    assert len([e for e in emulator.app.log if "/connections" in e.path]) == 2
