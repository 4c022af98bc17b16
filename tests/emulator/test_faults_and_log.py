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
