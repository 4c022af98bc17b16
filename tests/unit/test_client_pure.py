"""Pure parts of the HTTP boundary: OData literals and filters, URLs, the Power Platform API host rule,
the $batch request body and the parsing of documented batch responses (no network)."""

from __future__ import annotations

import httpx
import pytest

from reconciler.api.auth import StaticTokenProvider
from reconciler.api.batch_format import (
    ANY_VERSION,
    MAX_BATCH_OPERATIONS,
    chunked,
    create_op,
    delete_op,
    parse_multipart,
    update_op,
)
from reconciler.api.client import (
    DataverseClient,
    outcome_unknown,
    power_platform_api_base,
    redact,
)
from reconciler.api.odata_filter import (
    Filter,
    Guid,
    any_of,
    either,
    entity_path,
    eq,
    literal,
)
from reconciler.api.rows import written_row

GUID = "6f1c2a3b-0c4d-4e5f-8a9b-0c1d2e3f4a5b"


def test_string_literal_doubles_single_quotes() -> None:
    assert literal("o'brien@contoso.com") == "'o''brien@contoso.com'"
    assert literal("x' or 1 eq 1 or name eq '") == "'x'' or 1 eq 1 or name eq '''"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, "null"), (True, "true"), (False, "false"), (5, "5"), (Guid(GUID.upper()), GUID)],
)
def test_other_literals(value: object, expected: str) -> None:
    assert literal(value) == expected


def test_column_names_are_checked() -> None:
    with pytest.raises(ValueError):
        eq("name eq 'x' or domainname", "y")
    with pytest.raises(ValueError):
        Guid("not-a-guid")


def test_any_of_and_combinators() -> None:
    f = any_of("systemuserid", [Guid(GUID)]) | eq("domainname", "a'b")
    assert f.text == f"((systemuserid eq {GUID})) or (domainname eq 'a''b')"
    assert either(eq("a", 1), eq("b", 2)).text == "(a eq 1) or (b eq 2)"
    with pytest.raises(ValueError):
        any_of("a", [])


def test_query_encoding_keeps_a_hostile_value_inside_the_filter() -> None:
    client = DataverseClient("https://org.crm4.dynamics.com", StaticTokenProvider("t"),
                             http=httpx.Client(), scope="https://org.crm4.dynamics.com/.default")
    url = client.url("systemusers", {"$filter": eq("domainname", "a&$top=1#x+y z'")})
    query = httpx.URL(url).params
    # One parameter, whose decoded value is exactly the escaped filter.
    assert list(query.keys()) == ["$filter"]
    assert query["$filter"] == "domainname eq 'a&$top=1#x+y z'''"


def test_entity_path_and_host_rule() -> None:
    assert entity_path("connectionreferences", GUID.upper()) == f"connectionreferences({GUID})"
    # docs/dataverse.md §4.2: id without dashes, minus its last 2 chars, '.', last 2 chars.
    assert power_platform_api_base(GUID) == (
        "https://6f1c2a3b0c4d4e5f8a9b0c1d2e3f4a.5b.environment.api.powerplatform.com"
    )
    with pytest.raises(ValueError):
        power_platform_api_base(GUID, cloud="usgov")


def test_redact_removes_tokens() -> None:
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJvaWQiOiJ4In0.c2lnbmF0dXJl"
    text = redact(f"failed with Authorization: Bearer {jwt} and {jwt}")
    assert jwt not in text
    assert "<redacted>" in text


def test_chunked_makes_ceil_n_over_1000_batches() -> None:
    ops = [create_op("connectionreferences", {"n": i}) for i in range(2500)]
    sizes = [len(c) for c in chunked(ops)]
    assert sizes == [MAX_BATCH_OPERATIONS, MAX_BATCH_OPERATIONS, 500]


def test_batch_body_has_one_change_set_content_ids_and_if_match() -> None:
    client = DataverseClient("https://org.crm4.dynamics.com/", StaticTokenProvider("t"),
                             http=httpx.Client(), scope="s")
    ops = [
        create_op("connectionreferences", {"connectionreferencelogicalname": "p_a"},
                  solution_unique_name="Sol"),
        update_op("connectionreferences", GUID, {"connectionid": "abc"}, etag='W/"12"'),
    ]
    body = client._batch_body(ops, "batch_X", "changeset_Y").decode()
    assert body.count('boundary="changeset_Y"') == 1
    assert "Content-ID: 1" in body and "Content-ID: 2" in body
    assert "POST https://org.crm4.dynamics.com/api/data/v9.2/connectionreferences HTTP/1.1" in body
    assert "MSCRM.SolutionUniqueName: Sol" in body
    assert 'If-Match: W/"12"' in body
    assert body.rstrip().endswith("--batch_X--")
    with pytest.raises(ValueError):
        client.execute_batch([ops[0]] * (MAX_BATCH_OPERATIONS + 1))


# The documented response shapes (execute-batch-operations-using-web-api.md).
SUCCESS = (
    "--batchresponse_1\r\n"
    "Content-Type: multipart/mixed; boundary=changesetresponse_2\r\n\r\n"
    "--changesetresponse_2\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
    "Content-ID: 1\r\n\r\nHTTP/1.1 204 No Content\r\nOData-Version: 4.0\r\n"
    f"OData-EntityId: https://org/api/data/v9.2/connectionreferences({GUID})\r\n\r\n\r\n"
    "--changesetresponse_2\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
    "Content-ID: 2\r\n\r\nHTTP/1.1 204 No Content\r\nOData-Version: 4.0\r\n\r\n\r\n"
    "--changesetresponse_2--\r\n--batchresponse_1--\r\n"
)
FAILURE = (
    "--batchresponse_9\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
    "HTTP/1.1 412 Precondition Failed\r\nContent-Type: application/json; odata.metadata=minimal\r\n"
    "OData-Version: 4.0\r\n\r\n"
    '{"error":{"code":"0x80060882","message":"The version of the existing record doesn\'t match."}}\r\n'
    "--batchresponse_9--\r\n"
)


def test_parse_success_flattens_change_set() -> None:
    parts = parse_multipart(SUCCESS, "batchresponse_1")
    assert [p.status for p in parts] == [204, 204]
    assert parts[0].headers["content-id"] == "1"
    assert GUID in parts[0].response_headers["odata-entityid"]


def test_map_failure_without_content_id_attributes_to_the_single_op() -> None:
    parts = parse_multipart(FAILURE, "batchresponse_9")
    assert [p.status for p in parts] == [412]
    ops = [update_op("connectionreferences", GUID, {"description": "x"}, etag='W/"1"')]
    client = DataverseClient("https://org", StaticTokenProvider("t"), http=httpx.Client(), scope="s")
    results = client._map_batch(ops, parts, "https://org/api/data/v9.2/$batch")
    assert results[0].outcome == "failed"
    assert results[0].status == 412
    assert results[0].error is not None and results[0].error.code == "0x80060882"


def test_filter_must_come_from_the_builder() -> None:
    client = DataverseClient("https://org.crm4.dynamics.com", StaticTokenProvider("t"),
                             http=httpx.Client(), scope="s")
    with pytest.raises(TypeError):
        client.get_all("systemusers", filter="domainname eq 'x'")  # type: ignore[arg-type]  # the point
    assert isinstance(eq("a", "b"), Filter)


def test_map_failure_without_content_id_in_a_larger_batch_uses_the_id_in_the_message() -> None:
    other = "11111111-2222-3333-4444-555555555555"
    body = FAILURE.replace("doesn\'t match.", f"doesn\'t match for connectionreference With Id = {GUID}.")
    parts = parse_multipart(body, "batchresponse_9")
    ops = [
        update_op("connectionreferences", other, {"description": "x"}, etag='W/"1"'),
        update_op("connectionreferences", GUID, {"description": "y"}, etag='W/"2"'),
    ]
    client = DataverseClient("https://org", StaticTokenProvider("t"), http=httpx.Client(), scope="s")
    results = client._map_batch(ops, parts, "https://org/api/data/v9.2/$batch")
    assert [r.outcome for r in results] == ["not_written", "failed"]
    assert "rolled back" in results[0].reason


@pytest.mark.parametrize("etag", [None, "", "  "])
def test_an_update_or_delete_without_an_etag_is_refused(etag: str | None) -> None:
    """Without an ETag the only If-Match left is ``*``, which overwrites a change made since the row was read."""
    with pytest.raises(ValueError, match="no ETag to send as If-Match"):
        update_op("connectionreferences", GUID, {"description": "x"}, etag=etag)
    with pytest.raises(ValueError, match="no ETag to send as If-Match"):
        delete_op("connectionreferences", GUID, etag=etag)


def test_any_version_is_sent_only_when_asked_for_by_name() -> None:
    assert update_op("workflows", GUID, {"statecode": 1}, etag=ANY_VERSION).headers["If-Match"] == "*"
    assert delete_op("connectionreferences", GUID, etag='W/"7"').headers["If-Match"] == 'W/"7"'


@pytest.mark.parametrize(("status", "unknown"), [
    (500, True), (501, True), (502, True), (503, True), (504, True), (507, True), (520, True), (524, True),
    (599, True), (408, True), (400, False), (401, False), (403, False), (404, False), (412, False), (413, False),
    (429, False),
])
def test_which_answers_leave_a_write_unknown(status: int, unknown: bool) -> None:
    assert outcome_unknown(status) is unknown


def test_a_written_row_without_its_etag_is_not_taken_as_the_row() -> None:
    row = {"connectionreferenceid": GUID, "connectionreferencelogicalname": "contoso_x", "@odata.etag": 'W/"3"'}
    assert written_row(row) == row
    assert written_row({k: v for k, v in row.items() if k != "@odata.etag"}) is None
    assert written_row({**row, "@odata.etag": None}) is None
    assert written_row(None) is None and written_row([row]) is None
