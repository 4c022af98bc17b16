"""Every malformed answer is a clear error naming the URL, the status and what was wrong: never a
traceback, never a hang. The emulator serves each shape (``kind="malformed"`` faults) over loopback
and the real client reads it; retries of transient GET failures (500, 502, 503, 504) are checked the
same way."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from builders import EmulatorTokens

from reconciler.api.client import ConnectionsClient, DataverseClient, RetryPolicy
from reconciler.api.shapes import Limits, parse_json
from reconciler.emulator.factory import Sample
from reconciler.errors import (
    ApiError,
    MalformedResponseError,
    OutcomeUnknownError,
    ThrottledError,
    TransientError,
)

pytestmark = pytest.mark.emulator_only(reason="serves malformed answers through the emulator's fault injection")

API = "/api/data/v9.2/"
REFS = API + "connectionreferences"


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


@pytest.fixture
def sleeps() -> list[float]:
    return []


def dataverse(emulator: Any, http: httpx.Client, sleeps: list[float], **limits: Any) -> DataverseClient:
    retry = RetryPolicy(sleep=sleeps.append, jitter=lambda: 0.0, max_retries=3)
    return DataverseClient(emulator.url, EmulatorTokens(emulator), http=http, scope=emulator.url + "/.default",
                           retry=retry, limits=Limits(**limits))


def connections(emulator: Any, http: httpx.Client, sleeps: list[float]) -> ConnectionsClient:
    for app in emulator.store.data["applications"]:
        app["management_app"] = True
    retry = RetryPolicy(sleep=sleeps.append, jitter=lambda: 0.0, max_retries=3)
    return ConnectionsClient(emulator.url, EmulatorTokens(emulator), http=http, scope="https://api.powerplatform.com/.default",
                             environment_id=Sample.ENVIRONMENT_ID, retry=retry,
                             admin_scope="https://service.powerapps.com/.default")


def references(c: DataverseClient) -> Any:
    return c.get_all("connectionreferences", select=["connectionreferencelogicalname", "connectionid"])


# (name, fault path, fault options, call, what the message must say)
Call = Callable[[DataverseClient], Any]
CASES: list[tuple[str, str, dict[str, Any], Call, str]] = [
    ("html with 200", API + "WhoAmI", {"shape": "html"}, lambda c: c.who_am_i(),
     "the body is HTML or XML (text/html), not JSON"),
    ("empty body with 200", REFS, {"shape": "empty"}, references, "the body is empty"),
    ("truncated JSON", REFS, {"shape": "truncated"}, references, "the JSON ends before it is complete"),
    ("null WhoAmI", API + "WhoAmI", {"shape": "null"}, lambda c: c.who_am_i(),
     "the answer: expected an object (WhoAmI answer), got null"),
    ("null collection", REFS, {"shape": "null"}, references, "expected a collection"),
    ("value is not a list", REFS, {"shape": "wrong_type", "key_path": "value", "value": {"a": 1}}, references,
     "value: expected a list of rows, got an object"),
    ("row is not an object", REFS, {"shape": "wrong_type", "key_path": "value", "value": [1, 2]}, references,
     "value[0]: expected an object (connection reference row), got an integer"),
    ("row key of the wrong type", REFS,
     {"shape": "wrong_type", "key_path": "value[]/connectionreferenceid", "value": 42}, references,
     "value[0].connectionreferenceid: expected a GUID string, got an integer"),
    ("display name of the wrong type", REFS,
     {"shape": "wrong_type", "key_path": "value[]/connectionreferencelogicalname", "value": ["x"]}, references,
     "value[0].connectionreferencelogicalname: expected a string, got a list"),
    ("selected column missing", REFS, {"shape": "missing_field", "key_path": "value[]/connectionid"}, references,
     "value[0].connectionid: missing"),
    ("row key missing", REFS, {"shape": "missing_field", "key_path": "value[]/connectionreferenceid"}, references,
     "value[0].connectionreferenceid: missing"),
    # Rows connref writes with If-Match: without their ETag they could only be written over (docs/dataverse.md §3.4).
    ("reference row without its ETag", REFS, {"shape": "missing_field", "key_path": "value[]/@odata.etag"},
     references, "value[0].@odata.etag: missing (every connection reference row has it)"),
    ("reference row with a null ETag", REFS, {"shape": "wrong_type", "key_path": "value[]/@odata.etag", "value": None},
     references, "value[0].@odata.etag: expected a string, got null"),
    ("flow row without its ETag", API + "workflows", {"shape": "missing_field", "key_path": "value[]/@odata.etag"},
     lambda c: c.get_all("workflows", select=["statecode"]), "value[0].@odata.etag: missing (every flow row has it)"),
    ("WhoAmI without UserId", API + "WhoAmI", {"shape": "missing_field", "key_path": "UserId"},
     lambda c: c.who_am_i(), "UserId: missing"),
    ("WhoAmI UserId not a GUID", API + "WhoAmI", {"shape": "wrong_type", "key_path": "UserId", "value": "me"},
     lambda c: c.who_am_i(), "UserId: expected a GUID string, got a string"),
    ("200,000-deep array", API + "WhoAmI", {"shape": "deep"}, lambda c: c.who_am_i(), "nested deeper than 32 levels"),
    ("100-deep array", REFS, {"shape": "deep", "depth": 100}, references, "nested deeper than 32 levels"),
    ("component type not an integer", API + "solutioncomponentdefinitions",
     {"shape": "wrong_type", "key_path": "value[]/solutioncomponenttype", "value": "10150"},
     lambda c: c.component_type_for("connectionreference"),
     "value[0].solutioncomponenttype: expected an integer, got a string"),
    ("nextLink not a string", REFS, {"shape": "wrong_type", "key_path": "@odata.nextLink", "value": 7}, references,
     "@odata.nextLink: expected a URL (a string), got an integer"),
    ("user key of the wrong type", API + "systemusers",
     {"shape": "wrong_type", "key_path": "value[]/systemuserid", "value": True},
     lambda c: c.get_all("systemusers", select=["domainname"]),
     "value[0].systemuserid: expected a GUID string, got a boolean"),
    ("user disabled flag of the wrong type", API + "systemusers",
     {"shape": "wrong_type", "key_path": "value[]/isdisabled", "value": "no"},
     lambda c: c.get_all("systemusers", select=["isdisabled"]),
     "value[0].isdisabled: expected a boolean, got a string"),
    ("solution name of the wrong type", API + "solutions",
     {"shape": "wrong_type", "key_path": "value[]/uniquename", "value": ["x"]},
     lambda c: c.get_all("solutions", select=["uniquename"]),
     "value[0].uniquename: expected a string, got a list"),
    ("publisher not an object", API + "solutions",
     {"shape": "wrong_type", "key_path": "value[]/publisherid", "value": "contoso"},
     lambda c: c.get_all("solutions", select=["uniquename"], expand="publisherid($select=customizationprefix)"),
     "value[0].publisherid: expected an object, got a string"),
    ("solution component without objectid", API + "solutioncomponents",
     {"shape": "missing_field", "key_path": "value[]/objectid"},
     lambda c: c.get_all("solutioncomponents", select=["objectid"]), "value[0].objectid: missing"),
    ("flow clientdata not a string", API + "workflows",
     {"shape": "wrong_type", "key_path": "value[]/clientdata", "value": {"properties": {}}},
     lambda c: c.get_all("workflows", select=["name", "clientdata"]),
     "value[0].clientdata: expected a string, got an object"),
    ("flow state not an integer", API + "workflows",
     {"shape": "wrong_type", "key_path": "value[]/statecode", "value": "On"},
     lambda c: c.get_all("workflows", select=["statecode"]),
     "value[0].statecode: expected an integer, got a string"),
    ("privilege answer without RolePrivileges", API + "systemusers(*",
     {"shape": "missing_field", "key_path": "RolePrivileges"},
     lambda c: c.user_has_privilege(Sample.APP_USER_ID, "prvActOnBehalfOfAnotherUser"), "RolePrivileges: missing"),
]


@pytest.mark.parametrize(("name", "path", "options", "call", "problem"), CASES, ids=[c[0] for c in CASES])
def test_malformed_dataverse_answer_is_a_clear_error(
    emulator: Any, http: httpx.Client, sleeps: list[float],
    name: str, path: str, options: dict[str, Any], call: Call, problem: str,
) -> None:
    emulator.app.faults.add("malformed", path, methods=["GET"], **options)
    with pytest.raises(MalformedResponseError) as info:
        call(dataverse(emulator, http, sleeps))
    err = info.value
    assert problem in err.problem
    assert err.status == 200
    assert err.method == "GET"
    assert err.url is not None and err.url.startswith(emulator.url + path.rstrip("*").split("(")[0])
    # The message says all of it in one line: the request, the status and what was wrong.
    text = str(err)
    assert text.startswith(f"GET {emulator.url}{API}")
    assert "HTTP 200: connref cannot read this answer: " + err.problem in text
    assert "\n" not in text
    assert sleeps == []  # a malformed answer is not retried


def test_body_size_is_bounded(emulator: Any, http: httpx.Client, sleeps: list[float]) -> None:
    emulator.app.faults.add("malformed", REFS, shape="huge", size_bytes=300_000)
    with pytest.raises(MalformedResponseError, match="the body is larger than 100000 bytes"):
        references(dataverse(emulator, http, sleeps, max_body_bytes=100_000))
    emulator.app.faults.clear()
    assert len(references(dataverse(emulator, http, sleeps, max_body_bytes=100_000))) == 4


def test_next_link_to_itself_stops_at_once(emulator: Any, http: httpx.Client, sleeps: list[float]) -> None:
    emulator.app.faults.add("malformed", REFS, shape="self_link")
    emulator.app.log.clear()
    with pytest.raises(MalformedResponseError, match="the next link repeats a page already read"):
        references(dataverse(emulator, http, sleeps))
    assert emulator.app.log.count_requests(path=REFS) <= 2


def test_next_link_to_another_host_is_not_followed(emulator: Any, http: httpx.Client, sleeps: list[float]) -> None:
    seen: list[str] = []
    http.event_hooks["request"].append(lambda request: seen.append(str(request.url.host)))
    emulator.app.faults.add("malformed", REFS, shape="foreign_link", link_host="https://elsewhere.example")
    with pytest.raises(MalformedResponseError, match=r"points at another host \(https://elsewhere.example\)"):
        references(dataverse(emulator, http, sleeps))
    assert "elsewhere.example" not in seen


def test_next_link_to_another_collection_is_not_followed(
    emulator: Any, http: httpx.Client, sleeps: list[float]
) -> None:
    emulator.app.faults.add("malformed", REFS, shape="wrong_type", key_path="@odata.nextLink",
                            value=emulator.url + API + "systemusers")
    with pytest.raises(MalformedResponseError, match="the next link points at another collection"):
        references(dataverse(emulator, http, sleeps))


def test_page_cap(emulator: Any, http: httpx.Client, sleeps: list[float]) -> None:
    client = dataverse(emulator, http, sleeps, max_pages=3)
    emulator.app.log.clear()
    with pytest.raises(MalformedResponseError, match="more than 3 pages; paging stopped"):
        client.get_all("connectionreferences", page_size=1)  # four rows: four pages
    assert emulator.app.log.count_requests(path=REFS) == 3
    rows = dataverse(emulator, http, sleeps, max_pages=4).get_all("connectionreferences", page_size=1)
    assert len(rows) == 4


CONNECTION_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("html", {"shape": "html"}, "the body is HTML or XML"),
    ("item without properties", {"shape": "missing_field", "key_path": "value[]/properties"},
     "value[0].properties: missing"),
    ("connector id of the wrong type", {"shape": "wrong_type", "key_path": "value[]/properties/apiId", "value": 5},
     "value[0].properties.apiId: expected a string, got an integer"),
    ("statuses not a list", {"shape": "wrong_type", "key_path": "value[]/properties/statuses", "value": "ok"},
     "value[0].properties.statuses: expected a list, got a string"),
    ("permission not an object", {"shape": "wrong_type", "key_path": "value[]/properties/permissions",
                                  "value": ["Owner"]},
     "value[0].properties.permissions[0]: expected an object (permission), got a string"),
    ("next link to itself", {"shape": "self_link"}, "the next link repeats a page already read"),
]


@pytest.mark.parametrize(("name", "options", "problem"), CONNECTION_CASES, ids=[c[0] for c in CONNECTION_CASES])
def test_malformed_connections_answer_is_a_clear_error(
    emulator: Any, http: httpx.Client, sleeps: list[float], name: str, options: dict[str, Any], problem: str
) -> None:
    emulator.app.faults.add("malformed", "/providers/Microsoft.PowerApps/scopes/admin/*", **options)
    with pytest.raises(MalformedResponseError) as info:
        connections(emulator, http, sleeps).list_connections_admin()
    assert problem in info.value.problem
    assert "/providers/Microsoft.PowerApps/scopes/admin/environments/" in str(info.value)


def test_well_formed_answers_still_read(emulator: Any, http: httpx.Client, sleeps: list[float]) -> None:
    c = dataverse(emulator, http, sleeps)
    assert c.who_am_i().user_id == Sample.APP_USER_ID
    assert len(references(c)) == 4
    assert len(connections(emulator, http, sleeps).list_connections_admin()) == 4


# --------------------------------------------------------------------------- retries of reads


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_get_answered_5xx_is_retried_with_backoff(
    emulator: Any, http: httpx.Client, sleeps: list[float], status: int
) -> None:
    emulator.app.faults.fail_next(2, API + "WhoAmI", kind="error", status=status)
    assert dataverse(emulator, http, sleeps).who_am_i().user_id == Sample.APP_USER_ID
    assert sleeps == [0.5, 1.0]
    assert [e.status for e in emulator.app.log if e.path == API + "WhoAmI"] == [status, status, 200]


def test_get_500_past_the_budget_names_the_service_error(
    emulator: Any, http: httpx.Client, sleeps: list[float]
) -> None:
    emulator.app.faults.add("error", API + "WhoAmI", status=500)
    with pytest.raises(TransientError) as info:
        dataverse(emulator, http, sleeps).who_am_i()
    assert info.value.status == 500
    assert "HTTP 500 0x80040216: An unexpected error occurred. (gave up after 4 attempt(s)" in str(info.value)


def test_gateway_html_page_is_described_not_dumped(emulator: Any, http: httpx.Client, sleeps: list[float]) -> None:
    emulator.app.faults.add("error", API + "WhoAmI", status=502, error_body="html")
    with pytest.raises(TransientError) as info:
        dataverse(emulator, http, sleeps).who_am_i()
    assert "HTTP 502: an HTML page (" in str(info.value)
    assert "<" not in str(info.value)


def test_batch_answered_500_is_not_repeated(emulator: Any, http: httpx.Client, sleeps: list[float]) -> None:
    from reconciler.api.batch_format import create_op

    emulator.app.faults.fail_next(1, API + "$batch", kind="error", status=500)
    op = create_op("connectionreferences", {
        "connectionreferencelogicalname": f"contoso_Once{uuid.uuid4().hex[:6]}",
        "connectionreferencedisplayname": "once",
        "connectorid": "/providers/Microsoft.PowerApps/apis/shared_sql"})
    with pytest.raises(ApiError) as info:
        dataverse(emulator, http, sleeps).execute_batch([op])
    assert info.value.status == 500
    assert sleeps == []
    assert emulator.app.log.count_requests(path=API + "$batch") == 1


# Answers that do not prove a write was refused: a 5xx (a server's, a gateway's, a CDN's) or a 408 without the
# $batch answer. (name, status, error body)
LOST_WRITE_STATUSES: list[tuple[str, int, str]] = [
    ("503", 503, "route"), ("507", 507, "route"), ("501 with an HTML page", 501, "html"), ("408", 408, "route"),
    ("520 from a CDN", 520, "html"), ("524 from a CDN", 524, "html"),
]


@pytest.mark.parametrize(("name", "status", "body"), LOST_WRITE_STATUSES, ids=[c[0] for c in LOST_WRITE_STATUSES])
def test_a_write_batch_answered_without_its_answer_is_an_unknown_outcome_never_resent(
    emulator: Any, http: httpx.Client, sleeps: list[float], name: str, status: int, body: str
) -> None:
    from reconciler.api.batch_format import create_op

    emulator.app.faults.add("error", API + "$batch", writes_only=True, after_commit=True, times=1, status=status,
                            error_body=body)
    op = create_op("connectionreferences", {
        "connectionreferencelogicalname": f"contoso_Once{uuid.uuid4().hex[:6]}",
        "connectionreferencedisplayname": "once",
        "connectorid": "/providers/Microsoft.PowerApps/apis/shared_sql"})
    with pytest.raises(OutcomeUnknownError) as info:
        dataverse(emulator, http, sleeps).execute_batch([op])
    assert info.value.status == status
    assert f"HTTP {status} without the $batch answer" in info.value.why
    assert sleeps == [], "not sent again blindly"
    assert emulator.app.log.count_requests(path=API + "$batch") == 1


def test_a_change_set_answered_both_written_and_refused_is_an_unknown_outcome(
    emulator: Any, http: httpx.Client, sleeps: list[float]
) -> None:
    """An atomic change set is committed or rolled back whole (docs/dataverse.md §3.7): an answer with a 2xx part
    and a 412 part says both, so it says nothing."""
    from reconciler.api.batch_format import create_op

    emulator.app.faults.add("malformed", API + "$batch", writes_only=True, times=1, shape="part_status", part=2,
                            status=412)
    ops = [create_op("connectionreferences", {
        "connectionreferencelogicalname": f"contoso_Both{n}{uuid.uuid4().hex[:6]}",
        "connectionreferencedisplayname": "both",
        "connectorid": "/providers/Microsoft.PowerApps/apis/shared_sql"}) for n in range(2)]
    with pytest.raises(OutcomeUnknownError) as info:
        dataverse(emulator, http, sleeps).execute_batch(ops)
    assert "answered both written (1 part(s), HTTP 204) and refused (1 part(s), HTTP 412)" in str(info.value)
    assert emulator.app.log.count_requests(path=API + "$batch") == 1


def test_throttled_get_still_honours_retry_after(emulator: Any, http: httpx.Client, sleeps: list[float]) -> None:
    emulator.app.faults.add("throttle", API + "WhoAmI", retry_after=2)
    with pytest.raises(ThrottledError):
        dataverse(emulator, http, sleeps).who_am_i()
    assert sleeps == [2.0, 2.0, 2.0]


# --------------------------------------------------------------------------- the JSON reader itself


@pytest.mark.parametrize(("body", "problem"), [
    (b"", "the body is empty"),
    (b"   \n", "the body is empty"),
    (b"\xff\xfe{", "not UTF-8"),
    (b"<html>oops</html>", "HTML or XML"),
    (b'{"value": [', "ends before it is complete"),
    (b"[" * 200_000 + b"]" * 200_000, "nested deeper than 32 levels"),
    (b'{"n": NaN}', "NaN, which is not a JSON number"),
    (b'{"n": ' + b"9" * 5000 + b"}", "an integer of 5000 digits"),
    (b"ok", "the body is not JSON"),
])
def test_parse_json_refuses(body: bytes, problem: str) -> None:
    from reconciler.api.shapes import ShapeProblem

    with pytest.raises(ShapeProblem, match=problem):
        parse_json(body)
