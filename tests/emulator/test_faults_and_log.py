"""Fault injection and the request log (emulator-only controls)."""

from __future__ import annotations

import concurrent.futures
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from reconciler.api.session import InProcessTransport
from reconciler.emulator.app import EmulatorApp
from reconciler.emulator.faults import THROTTLE_MESSAGES, Faults
from reconciler.emulator.store import EnvironmentStore

pytestmark = pytest.mark.emulator_only(reason="fault injection and the request log are the emulator's controls")


@pytest.mark.parametrize("code", sorted(THROTTLE_MESSAGES))
def test_throttle_codes_with_retry_after(emulator: Any, dv: httpx.Client, code: str) -> None:
    emulator.app.faults.throttle("/api/data/v9.2/connectionreferences", code=code, retry_after=2, times=1)
    r = dv.get("connectionreferences")
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "2"
    assert r.json()["error"] == {"code": code, "message": THROTTLE_MESSAGES[code]}
    assert dv.get("connectionreferences").status_code == 200  # only the next one failed


def test_fail_next_n_matching_method_only(emulator: Any, dv: httpx.Client) -> None:
    emulator.app.faults.fail_next(2, "/api/data/v9.2/connectionreferences*", kind="unavailable", methods=["PATCH"])
    assert dv.get("connectionreferences").status_code == 200
    codes = [
        dv.patch("connectionreferences(e0000000-0000-4000-8000-0000000000e3)", json={"description": "x"}).status_code
        for _ in range(3)
    ]
    assert codes == [503, 503, 204]


def test_dropped_connection_over_loopback(emulator: Any, dv: httpx.Client) -> None:
    emulator.app.faults.fail_next(1, "/api/data/v9.2/WhoAmI", kind="drop")
    with pytest.raises(httpx.TransportError):
        dv.get("WhoAmI")
    assert dv.get("WhoAmI").status_code == 200


def test_dropped_connection_in_process(emulator_data: dict[str, Any], emulator: Any) -> None:
    app = EmulatorApp(EnvironmentStore.from_dict(emulator_data))
    app.faults.fail_next(1, kind="drop")
    token = emulator.token()
    transport = InProcessTransport(app=app)
    with httpx.Client(transport=transport, base_url="https://contoso-dev.crm4.dynamics.com") as c:
        with pytest.raises(httpx.TransportError):
            c.get("/api/data/v9.2/WhoAmI", headers={"Authorization": f"Bearer {token}"})
        assert c.get("/api/data/v9.2/WhoAmI", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_probability_is_deterministic_per_seed(emulator: Any, dv: httpx.Client) -> None:
    def run() -> list[int]:
        emulator.app.faults.clear()
        emulator.app.faults.reseed(42)
        emulator.app.faults.add("unavailable", "/api/data/v9.2/WhoAmI", probability=0.5)
        return [dv.get("WhoAmI").status_code for _ in range(12)]

    first, second = run(), run()
    assert first == second
    assert 200 in first and 503 in first


def test_latency_rule_delays_but_answers(emulator: Any, dv: httpx.Client) -> None:
    emulator.app.faults.add("latency", "/api/data/v9.2/WhoAmI", latency_ms=1, times=1)
    assert dv.get("WhoAmI").status_code == 200
    assert emulator.app.faults.rules[0].fired == 1


def test_concurrency_limit_per_user(emulator: Any) -> None:
    emulator.app.faults.concurrency_limit = 2
    emulator.app.faults.add("latency", "/api/data/v9.2/WhoAmI", latency_ms=300)
    token = emulator.token()

    def call(_: int) -> httpx.Response:
        return httpx.get(emulator.api + "WhoAmI", headers={"Authorization": f"Bearer {token}"}, timeout=10)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(call, range(6)))
    throttled = [r for r in results if r.status_code == 429]
    assert throttled and len(throttled) <= 4
    assert throttled[0].json()["error"]["code"] == "0x80072326"
    assert sum(r.status_code == 200 for r in results) >= 2


def test_faults_from_json_file(tmp_path: Path) -> None:
    p = tmp_path / "faults.json"
    p.write_text(
        json.dumps(
            {
                "seed": 3,
                "concurrency_limit": 10,
                "rules": [
                    {
                        "kind": "throttle",
                        "path": "/api/data/*",
                        "methods": ["GET"],
                        "code": "0x80072321",
                        "retry_after": 1,
                        "times": 2,
                    }
                ],
            }
        )
    )
    faults = Faults.from_file(str(p))
    assert faults.concurrency_limit == 10
    assert faults.rules[0].code == "0x80072321" and faults.rules[0].methods == ("GET",)
    p.write_text(json.dumps({"rules": [{"kind": "explode"}]}))
    with pytest.raises(ValueError, match="explode"):
        Faults.from_file(str(p))


def test_request_log_counts_requests(emulator: Any, dv: httpx.Client) -> None:
    emulator.app.log.clear()
    dv.get("connectionreferences")
    dv.get("workflows")
    dv.patch("connectionreferences(e0000000-0000-4000-8000-0000000000e3)", json={"description": "y"})
    dv.get("connectionreferences(00000000-0000-4000-8000-000000000000)")
    log = emulator.app.log
    assert log.count_requests() == 4
    assert log.count_requests("GET") == 3
    assert log.count_requests(path="/api/data/v9.2/connectionreferences*") == 3
    assert [e.status for e in log] == [200, 200, 204, 404]
    assert sum(e.is_write for e in log) == 1
    log.clear()
    assert log.count_requests() == 0


def test_injected_fault_is_logged(emulator: Any, dv: httpx.Client) -> None:
    emulator.app.log.clear()
    emulator.app.faults.throttle(times=1)
    dv.get("WhoAmI")
    assert [(e.status, e.fault) for e in emulator.app.log] == [(429, "throttle")]


# --------------------------------------------------------------------------- answers lost after the commit

NEW_REFERENCE = "5e000000-0000-4000-8000-0000000000f1"


def _new_reference(logical_name: str = "contoso_LostAnswer") -> dict[str, Any]:
    return {"connectionreferenceid": NEW_REFERENCE, "connectionreferencelogicalname": logical_name,
            "connectionreferencedisplayname": "Lost answer",
            "connectorid": "/providers/Microsoft.PowerApps/apis/shared_sharepointonline"}


@pytest.mark.parametrize(("kind", "options", "status"), [
    ("drop", {}, None),
    ("error", {"status": 500}, 500),
    ("error", {"status": 502, "error_body": "html"}, 502),
    ("error", {"status": 504, "error_body": "html"}, 504),
], ids=["dropped", "500", "502", "504"])
def test_a_write_is_committed_before_its_answer_is_lost(
    emulator: Any, dv: httpx.Client, kind: str, options: dict[str, Any], status: int | None
) -> None:
    rule = emulator.app.faults.add(kind, "/api/data/v9.2/connectionreferences", methods=["POST"],
                                   after_commit=True, times=1, **options)
    if status is None:
        with pytest.raises(httpx.TransportError):
            dv.post("connectionreferences", json=_new_reference())
    else:
        assert dv.post("connectionreferences", json=_new_reference()).status_code == status
    assert rule.committed.is_set()
    assert emulator.store.reference(NEW_REFERENCE) is not None  # written, whatever the answer said
    entry = emulator.app.log.matching("POST", "*/connectionreferences")[-1]
    assert entry.fault == kind and entry.status == (status or 0)
    # Sent again, the same create (same id) is refused: the row is there once.
    again = dv.post("connectionreferences", json=_new_reference())
    assert again.status_code == 412 and again.json()["error"]["code"] == "0x80040237"
    assert len([r for r in emulator.store.data["connectionreferences"]
                if r["connectionreferenceid"] == NEW_REFERENCE]) == 1


def test_a_batch_is_committed_before_its_answer_is_lost(emulator: Any, dv: httpx.Client) -> None:
    emulator.app.faults.add("error", "/api/data/v9.2/$batch", after_commit=True, times=1, status=504,
                            error_body="html")
    boundary, changeset = "batch_lost", "changeset_lost"
    body = "\r\n".join([
        f"--{boundary}", f'Content-Type: multipart/mixed; boundary="{changeset}"', "",
        f"--{changeset}", "Content-Type: application/http", "Content-Transfer-Encoding: binary", "Content-ID: 1", "",
        "POST connectionreferences HTTP/1.1", "Content-Type: application/json; type=entry", "",
        json.dumps(_new_reference()), f"--{changeset}--", "", f"--{boundary}--", ""])
    r = dv.post("$batch", content=body.encode(), headers={"Content-Type": f'multipart/mixed; boundary="{boundary}"'})
    assert r.status_code == 504 and r.headers["Content-Type"].startswith("text/html")
    assert emulator.store.reference(NEW_REFERENCE) is not None


def test_a_late_answer_arrives_after_the_client_gave_up_but_the_write_is_committed(emulator: Any) -> None:
    rule = emulator.app.faults.add("latency", "/api/data/v9.2/connectionreferences", methods=["POST"],
                                   after_commit=True, latency_ms=3000, times=1)
    with emulator.client() as client, pytest.raises(httpx.ReadTimeout):
        client.post("connectionreferences", json=_new_reference(), timeout=0.5)
    assert rule.committed.wait(10)
    assert emulator.store.reference(NEW_REFERENCE) is not None


def test_a_write_lost_after_the_commit_is_saved_to_a_local_file(tmp_path: Path, emulator_data: dict[str, Any],
                                                                emulator: Any) -> None:
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(emulator_data))
    app = EmulatorApp(EnvironmentStore.from_file(str(path)), persist=True)
    app.faults.add("drop", "/api/data/v9.2/connectionreferences", methods=["POST"], after_commit=True, times=1)
    client = httpx.Client(transport=InProcessTransport(app=app), base_url=emulator_data["environment"]["url"])
    with client, pytest.raises(httpx.TransportError):
        client.post("/api/data/v9.2/connectionreferences", json=_new_reference(),
                    headers={"Authorization": f"Bearer {emulator.token()}"})
    saved = json.loads(path.read_text())
    assert NEW_REFERENCE in {r["connectionreferenceid"] for r in saved["connectionreferences"]}


def test_after_commit_is_refused_where_it_would_not_be_faithful() -> None:
    faults = Faults()
    for kind in ("throttle", "unavailable", "malformed"):
        with pytest.raises(ValueError, match="after_commit applies to latency, error, drop"):
            faults.add(kind, after_commit=True)
    faults.load({"rules": [{"kind": "drop", "path": "/api/data/v9.2/$batch", "after_commit": True}]})
    assert faults.rules[0].after_commit and faults.to_dict()["rules"][0]["after_commit"] is True


@pytest.mark.parametrize("enforced", [True, False], ids=["refused", "accepted"])
def test_a_second_reference_with_the_same_logical_name_both_readings(
    emulator: Any, dv: httpx.Client, enforced: bool
) -> None:
    # UNCONFIRMED (docs/dataverse.md §1.5): the setting gives both readings.
    emulator.app.settings["enforce_duplicate_logical_name"] = enforced
    first = dv.post("connectionreferences", json=_new_reference("contoso_Twice"))
    assert first.status_code == 204
    other = {**_new_reference("contoso_twice"), "connectionreferenceid": "5e000000-0000-4000-8000-0000000000f2"}
    second = dv.post("connectionreferences", json=other)
    rows = [r for r in emulator.store.data["connectionreferences"]
            if r["connectionreferencelogicalname"].lower() == "contoso_twice"]
    if enforced:
        assert second.status_code == 412 and second.json()["error"]["code"] == "0x80040237"
        assert len(rows) == 1
    else:
        assert second.status_code == 204
        assert len(rows) == 2


def test_writes_only_counts_writes_and_not_reads(emulator: Any, dv: httpx.Client) -> None:
    """``writes_only``: "fail the Nth write" whatever the reads between, a $batch counting only when it writes."""
    from emulator.test_batch import send

    emulator.app.faults.add("error", writes_only=True, after=1, times=1, status=400)
    ref = "connectionreferences(e0000000-0000-4000-8000-0000000000e3)"
    assert dv.get("connectionreferences").status_code == 200  # a read: not counted
    assert send(dv, [("GET", "connectionreferences")]).status_code == 200  # a $batch of reads: not counted
    assert dv.patch(ref, json={"description": "first"}).status_code == 204  # write 1: let through
    r = send(dv, [[("PATCH", ref, {"description": "second"})]])  # write 2, in a $batch: refused
    assert r.status_code == 400
    assert dv.patch(ref, json={"description": "third"}).status_code == 204  # it fired once
    assert dv.get(ref).json()["description"] == "third"


def test_a_get_inside_a_batch_meets_the_error_and_malformed_rules_of_its_path(
        emulator: Any, dv: httpx.Client) -> None:
    """A part answers as the request would alone: its own status for an ``error`` rule, an altered body for a
    ``malformed`` one; throttling acts on the HTTP request (the batch), never on one part."""
    from emulator.test_batch import send, statuses

    emulator.app.faults.add("error", "/api/data/v9.2/WhoAmI", methods=["GET"], status=403, times=1)
    emulator.app.faults.add("malformed", "/api/data/v9.2/solutions", methods=["GET"], shape="html", times=1)
    emulator.app.faults.throttle("/api/data/v9.2/connectionreferences*", retry_after=1, times=1)
    r = send(dv, [("GET", "WhoAmI"), ("GET", "solutions"), ("GET", "connectionreferences")],
             Prefer="odata.continue-on-error")
    assert r.status_code == 200
    assert statuses(r) == [403, 200, 200]
    parts = r.text.split("--batchresponse_")
    assert "<html" in parts[2].lower() and '"value"' in parts[3]
    # Each rule fired once (the throttle never: a part does not meet it) and is spent.
    assert statuses(send(dv, [("GET", "WhoAmI"), ("GET", "solutions")], Prefer="odata.continue-on-error")) == [200, 200]
    assert dv.get("connectionreferences").status_code == 429  # the throttle still waits for a request of its own


def test_the_server_sends_without_delay() -> None:
    """TCP_NODELAY on every accepted connection: with Nagle's algorithm the end of a long answer waits for
    the client's delayed acknowledgement of the rest, about 40 ms a round trip the services do not have."""
    import socket

    from reconciler.emulator.server import serve

    running = serve(EmulatorApp(EnvironmentStore.from_dict(factory_sample())))
    try:
        with httpx.Client(timeout=10) as client:
            assert client.get(running.url + "/api/data/v9.2/").status_code in (200, 401)
            server = running._server
            with server._open_lock:  # the connection the client keeps alive
                conns = list(server._open)
            assert conns and all(c.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for c in conns)
    finally:
        running.shutdown()


def factory_sample() -> dict[str, Any]:
    from reconciler.emulator import factory

    return factory.sample_environment()


@pytest.mark.parametrize(("status", "phrase"), [(520, "Web Server Returned an Unknown Error"),
                                                (524, "A Timeout Occurred"), (599, "Unknown")])
def test_an_error_fault_answers_a_status_outside_the_standard(
    emulator: Any, dv: httpx.Client, status: int, phrase: str
) -> None:
    """A CDN in front of a service answers its own 52x codes: served with a reason phrase, not a crash."""
    emulator.app.faults.fail_next(1, "/api/data/v9.2/WhoAmI", kind="error", status=status)
    r = dv.get("WhoAmI")
    assert r.status_code == status and r.reason_phrase == phrase
    assert r.json()["error"]["message"] == phrase


def test_part_status_rewrites_one_part_of_a_committed_change_set(emulator: Any, dv: httpx.Client) -> None:
    """``part_status``: the change set is committed, then the part answering Content-ID 2 says 412."""
    rule = emulator.app.faults.add("malformed", "/api/data/v9.2/$batch", shape="part_status", part=2, status=412,
                                   times=1)
    refs = emulator.store.data["connectionreferences"][:2]
    lines = ["--b", 'Content-Type: multipart/mixed; boundary="c"', ""]
    for n, row in enumerate(refs, start=1):
        url = f"{emulator.url}/api/data/v9.2/connectionreferences({row['connectionreferenceid']})"
        lines += ["--c", "Content-Type: application/http", "Content-Transfer-Encoding: binary", f"Content-ID: {n}",
                  "", f"PATCH {url} HTTP/1.1", "Content-Type: application/json", "If-Match: *", "",
                  json.dumps({"description": f"part {n}"})]
    lines += ["--c--", "--b--", ""]
    batch = "\r\n".join(lines).encode()
    r = dv.post("$batch", content=batch, headers={"Content-Type": 'multipart/mixed; boundary="b"'})
    assert r.status_code == 200 and rule.committed.is_set()
    assert "HTTP/1.1 204 No Content" in r.text
    assert "Content-ID: 2\r\n\r\nHTTP/1.1 412 Precondition Failed" in r.text
    assert '"message": "Precondition Failed"' in r.text
    # Both writes were committed, whatever the answer says.
    assert [row["description"] for row in emulator.store.data["connectionreferences"][:2]] == ["part 1", "part 2"]


def test_part_status_needs_a_part_and_a_status() -> None:
    with pytest.raises(ValueError, match="part_status"):
        Faults().add("malformed", shape="part_status", part=0)
    with pytest.raises(ValueError, match="part_status"):
        Faults().add("malformed", shape="part_status", status=700)
