"""$batch: change sets, Content-ID references, continue-on-error, limits and the response envelope.
Unmarked tests also run against a real environment (remote mode): ids come from ``target``, logical names
are unique per run, and ``dv`` deletes the references a batch created."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import httpx
import pytest

SQL = "/providers/Microsoft.PowerApps/apis/shared_sql"
# Logical names of the rows these tests create: unique per run, so a real environment never sees a clash.
_RUN = uuid.uuid4().hex[:8]
N = {k: f"contoso_{k}{_RUN}" for k in ("b1", "b2", "ok", "bad", "c1", "late", "s1", "s2", "k1", "k2", "l1", "l2")}
Req = tuple[str, str, Any] | tuple[str, str, Any, dict[str, str]]


def http_part(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None, content_id: str | None = None
) -> str:
    mime = "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
    if content_id:
        mime += f"Content-ID: {content_id}\r\n"
    lines = [f"{method} {url} HTTP/1.1"]
    if body is not None:
        lines.append("Content-Type: application/json; type=entry")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    text = "\r\n".join(lines) + "\r\n\r\n" + (json.dumps(body) if body is not None else "")
    return mime + "\r\n" + text + "\r\n"


def batch(items: list[Any]) -> tuple[str, str]:
    """items: ("GET", url) tuples, or lists of (method, url, body[, content_id]) for change sets."""
    b = f"batch_{uuid.uuid4().hex}"
    out = []
    for item in items:
        if isinstance(item, list):
            cs = f"changeset_{uuid.uuid4().hex}"
            inner = "".join(
                f"--{cs}\r\n" + http_part(m, u, body, h, cid)
                for m, u, body, h, cid in (tuple(x) + (None,) * (5 - len(x)) for x in item)
            )
            out.append(f"--{b}\r\nContent-Type: multipart/mixed; boundary={cs}\r\n\r\n{inner}--{cs}--\r\n")
        else:
            m, u, body, h = (tuple(item) + (None,) * (4 - len(item)))[:4]
            out.append(f"--{b}\r\n" + http_part(m, u, body, h))
    return b, "".join(out) + f"--{b}--\r\n"


def send(client: httpx.Client, items: list[Any], **headers: str) -> httpx.Response:
    b, body = batch(items)
    return client.post(
        "$batch", content=body.encode(), headers={"Content-Type": f'multipart/mixed; boundary="{b}"', **headers}
    )


def statuses(r: httpx.Response) -> list[int]:
    return [int(s) for s in re.findall(r"^HTTP/1\.1 (\d{3})", r.text, re.M)]


def ref(name: str) -> dict[str, str]:
    return {"connectionreferencelogicalname": name, "connectionreferencedisplayname": name, "connectorid": SQL}


def names(dv: httpx.Client) -> set[str]:
    rows = dv.get("connectionreferences", params={"$select": "connectionreferencelogicalname"}).json()["value"]
    return {r["connectionreferencelogicalname"] for r in rows}


def test_change_set_commits_and_envelope(dv: httpx.Client) -> None:
    r = send(
        dv,
        [
            [
                ("POST", "/api/data/v9.2/connectionreferences", ref(N["b1"]), None, "1"),
                ("POST", "connectionreferences", ref(N["b2"]), None, "2"),
            ],
            ("GET", "WhoAmI"),
        ],
    )
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("multipart/mixed; boundary=batchresponse_")
    assert "changesetresponse_" in r.text
    assert statuses(r) == [204, 204, 200]
    assert re.search(r"^Content-ID: 1\r?$", r.text, re.M)
    assert re.search(r"^Location: .*/connectionreferences\([0-9a-f-]{36}\)\r?$", r.text, re.M)
    assert {N["b1"], N["b2"]} <= names(dv)


def test_change_set_is_atomic(dv: httpx.Client) -> None:
    r = send(
        dv,
        [
            [
                ("POST", "connectionreferences", ref(N["ok"])),
                ("POST", "connectionreferences", {**ref(N["bad"]), "description": "x" * 2001}),
            ]
        ],
    )
    assert r.status_code == 400
    assert "0x80044331" in r.text
    assert N["ok"] not in names(dv)


def test_content_id_reference(dv: httpx.Client) -> None:
    r = send(
        dv,
        [
            [
                ("POST", "connectionreferences", ref(N["c1"]), None, "1"),
                ("PATCH", "$1", {"description": "patched via $1"}, None, "2"),
            ]
        ],
    )
    assert r.status_code == 200, r.text
    rows = dv.get("connectionreferences", params={"$filter": f"connectionreferencelogicalname eq '{N['c1']}'"})
    assert rows.json()["value"][0]["description"] == "patched via $1"


def test_content_id_reference_before_declaration_is_400(dv: httpx.Client) -> None:
    r = send(
        dv,
        [
            [
                ("PATCH", "$1", {"description": "x"}, None, "2"),
                ("POST", "connectionreferences", ref(N["late"]), None, "1"),
            ]
        ],
    )
    assert r.status_code == 400
    assert "Content-ID Reference: '$1' does not exist in the batch context." in r.text
    assert N["late"] not in names(dv)


def test_stops_at_first_failure_without_continue_on_error(dv: httpx.Client) -> None:
    missing = uuid.uuid4()
    r = send(
        dv,
        [
            ("POST", "connectionreferences", ref(N["s1"])),
            ("GET", f"connectionreferences({missing})"),
            ("POST", "connectionreferences", ref(N["s2"])),
        ],
    )
    assert r.status_code == 404
    assert statuses(r)[-1] == 404
    assert N["s1"] in names(dv) and N["s2"] not in names(dv)


def test_continue_on_error(dv: httpx.Client) -> None:
    missing = uuid.uuid4()
    r = send(
        dv,
        [
            ("POST", "connectionreferences", ref(N["k1"])),
            ("GET", f"connectionreferences({missing})"),
            ("POST", "connectionreferences", ref(N["k2"])),
        ],
        Prefer="odata.continue-on-error",
    )
    assert r.status_code == 200
    assert statuses(r) == [204, 404, 204]
    assert {N["k1"], N["k2"]} <= names(dv)


def test_get_inside_change_set_is_400(dv: httpx.Client) -> None:
    r = send(dv, [[("GET", "WhoAmI")]])
    assert r.status_code == 400


def test_more_than_1000_requests_is_400(dv: httpx.Client) -> None:
    r = send(dv, [("GET", "WhoAmI")] * 1001)
    assert r.status_code == 400


def test_outer_impersonation_applies_and_inner_header_overrides(dv: httpx.Client, target: Any) -> None:
    r = send(
        dv,
        [("GET", "WhoAmI"), ("GET", "WhoAmI", None, {"CallerObjectId": target.MAKER_OBJECT_ID})],
        CallerObjectId=target.SVC_OBJECT_ID,
    )
    bodies = [json.loads(m) for m in re.findall(r"^(\{.*\})\r?$", r.text, re.M)]
    assert [b["UserId"] for b in bodies] == [target.SVC_USER_ID, target.MAKER_USER_ID]


def test_inner_if_match(dv: httpx.Client) -> None:
    made = dv.post("connectionreferences", json=ref(f"contoso_m{uuid.uuid4().hex[:8]}"))
    assert made.status_code == 204, made.text
    rid = made.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")
    r = send(dv, [[("PATCH", f"connectionreferences({rid})", {"description": "x"}, {"If-Match": 'W/"1"'})]])
    assert r.status_code == 412
    assert dv.get(f"connectionreferences({rid})").json()["description"] is None


@pytest.mark.emulator_only(reason="reads the emulator's request log")
def test_batch_logged_as_one_request_with_parts(emulator: Any, dv: httpx.Client) -> None:
    emulator.app.log.clear()
    send(
        dv,
        [
            [("POST", "connectionreferences", ref(N["l1"])), ("POST", "connectionreferences", ref(N["l2"]))],
            ("GET", "WhoAmI"),
        ],
    )
    assert emulator.app.log.count_requests() == 1
    (entry,) = emulator.app.log
    assert entry.batch_count == 3
    assert [p.status for p in entry.parts] == [204, 204, 200]
