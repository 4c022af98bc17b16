"""Request budgets, asserted by counting the emulator's request log (never wall-clock time):

- planning one environment takes the same number of requests with 3 references as with 3,000;
- applying N changes takes ceil(N/1000) ``$batch`` requests (plus the reads).
"""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest
from builders import EmulatorTokens, sample_config

from reconciler.api.live import read_environment
from reconciler.api.session import open_environment
from reconciler.apply.applier import apply_environment
from reconciler.domain.model import Config, DesiredReference, connector_id
from reconciler.emulator import factory
from reconciler.emulator.factory import Sample
from reconciler.plan.planner import plan_environment

pytestmark = pytest.mark.emulator_only


def add_bulk(emulator: Any, start: int, count: int, display: str = "Bulk {i}") -> None:
    data = emulator.store.data
    svc = emulator.store.user(Sample.SVC_USER_ID)
    sol = emulator.store.solution(Sample.SOLUTION)
    with emulator.store.lock:
        for i in range(start, start + count):
            factory.add_reference(data, f"contoso_Bulk{i:04d}", Sample.SP, owner=svc,
                                  display_name=display.format(i=i), connection=Sample.CONN_SP_SVC,
                                  solution=sol)


def config_for(emulator: Any, count: int, display: str = "Bulk {i}") -> Config:
    refs = {
        f"contoso_Bulk{i:04d}": DesiredReference(f"contoso_Bulk{i:04d}", connector_id(Sample.SP),
                                                 display.format(i=i))
        for i in range(count)
    }
    return sample_config(emulator.url, refs)


def plan_requests(emulator: Any, config: Config) -> tuple[int, int]:
    emulator.app.log.clear()
    with open_environment(config, "dev", token_provider=EmulatorTokens(emulator),
                          http=httpx.Client(timeout=30)) as s:
        live = read_environment(s, config, "dev")
        env_plan = plan_environment(config, config.environments["dev"], live)
    return len(emulator.app.log), len(env_plan.ops)


def test_planning_3_or_3000_references_takes_the_same_requests(emulator: Any) -> None:
    add_bulk(emulator, 0, 3)
    small, small_ops = plan_requests(emulator, config_for(emulator, 3))
    add_bulk(emulator, 3, 2997)
    large, large_ops = plan_requests(emulator, config_for(emulator, 3000))
    assert small_ops == large_ops == 0  # in sync: nothing to do either way
    assert large == small
    # A fixed dozen: round 1 WhoAmI, component type, the solution, references, flows, the flows'
    # solution memberships and every solution's name (two requests since flows carry their solutions,
    # for lint CR208; not one per flow), connections (admin list 403, then the caller's list); round 2
    # the solution's members, users, the impersonation privilege.
    assert small == 12


def test_applying_2500_changes_takes_3_batches(emulator: Any) -> None:
    n = 2500
    add_bulk(emulator, 0, n, display="Old {i}")
    config = config_for(emulator, n, display="New {i}")
    with open_environment(config, "dev", token_provider=EmulatorTokens(emulator),
                          http=httpx.Client(timeout=60)) as s:
        live = read_environment(s, config, "dev")
        env_plan = plan_environment(config, config.environments["dev"], live)
        assert len(env_plan.ops) == n
        emulator.app.log.clear()
        seen: list[int] = []
        result = apply_environment(s, env_plan, progress=lambda p: seen.append(p.done))
    batches = [e for e in emulator.app.log if e.path.endswith("/$batch")]
    assert len(batches) == math.ceil(n / 1000) == 3
    assert [e.batch_count for e in batches] == [1000, 1000, 500]
    assert len(emulator.app.log) == len(batches)  # nothing read again: the plan carried ids and ETags
    assert seen == [1000, 2000, 2500]
    assert len(result.written) == n
    # Idempotent: planning again finds nothing to do.
    _, ops = plan_requests(emulator, config)
    assert ops == 0
