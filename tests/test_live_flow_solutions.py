"""The live reader fills ``LiveFlow.solutions`` with the unique names of the solutions each flow is a
component of (componenttype 29), in two requests whatever the number of flows, so lint's CR208 (a
reference used by flows of several solutions) fires on what an environment really has.

Every test that reads an environment is emulator_only: it checks the sample's flows (the remote fixture
file names none, and tests cannot create flows), and ``read_environment`` needs a connections-API token
a remote run does not hold (test_live.READS_CONNECTIONS)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from builders import EmulatorTokens
from test_live import READS_CONNECTIONS, make_config

from reconciler.adoption.lint import lint
from reconciler.api.live import WORKFLOW_COMPONENT_TYPE, flow_solutions, read_environment
from reconciler.api.session import open_environment
from reconciler.domain.model import LiveEnvironment
from reconciler.emulator import factory
from reconciler.emulator.factory import Sample


def read(emulator: Any) -> LiveEnvironment:
    config = make_config(emulator.url)
    with open_environment(config, "dev", token_provider=EmulatorTokens(emulator),
                          http=httpx.Client(timeout=10)) as s:
        return read_environment(s, config, "dev")


def add_flows_in_other_solutions(emulator: Any, count: int = 1) -> None:
    """A second solution (Finance), ``count`` flows in it using the sample's SharePoint reference, one
    of them in both solutions; and a classic workflow component of Finance that is no cloud flow."""
    data = emulator.store.data
    with emulator.store.lock:
        svc = emulator.store.user(Sample.SVC_USER_ID)
        main = emulator.store.solution(Sample.SOLUTION)
        finance = factory.add_solution(data, "FinanceFlows", solutionid="50000000-0000-4000-8000-0000000000fa")
        for i in range(count):
            factory.add_flow(data, f"Finance {i:03d}", [(Sample.REF_SP_NAME, Sample.SP)], owner=svc,
                             solution=finance, workflowid=f"fa000000-0000-4000-8000-{i:012d}")
        factory.add_solution_component(data, main, "fa000000-0000-4000-8000-000000000000",
                                       WORKFLOW_COMPONENT_TYPE)
        factory.add_solution_component(data, finance, "c1a55c00-0000-4000-8000-000000000001",
                                       WORKFLOW_COMPONENT_TYPE)


@pytest.mark.emulator_only(reason="checks the sample's flows, which the fixture file does not name; and "
                            + READS_CONNECTIONS)
def test_sample_flows_carry_their_solution(emulator: Any) -> None:
    flows = {f.id: f for f in read(emulator).flows}
    assert flows[Sample.FLOW_ACTIVE].solutions == (Sample.SOLUTION,)
    assert flows[Sample.FLOW_DRAFT].solutions == ()  # made outside any solution


@pytest.mark.emulator_only(reason="adds a solution and flows to the emulator's data; and " + READS_CONNECTIONS)
def test_flows_of_several_solutions_and_lint_cr208(emulator: Any) -> None:
    add_flows_in_other_solutions(emulator)
    live = read(emulator)
    flows = {f.name: f for f in live.flows}
    assert flows["Finance 000"].solutions == ("ContosoConnections", "FinanceFlows")  # sorted, unique
    assert flows["Invoice approval"].solutions == (Sample.SOLUTION,)
    cr208 = [f for f in lint(make_config(emulator.url), {"dev": live}) if f.code == "CR208"]
    assert [f.subject for f in cr208] == [Sample.REF_SP_NAME]
    assert "ContosoConnections, FinanceFlows" in cr208[0].message


@pytest.mark.emulator_only(reason="adds flows to the emulator's data and counts requests in its log")
def test_flow_solutions_take_the_same_requests_for_1_or_200_flows(emulator: Any) -> None:
    emulator.app.log.clear()
    read(emulator)
    before = len(emulator.app.log)
    add_flows_in_other_solutions(emulator, 200)
    emulator.app.log.clear()
    live = read(emulator)
    assert len(emulator.app.log) == before
    assert sum(1 for f in live.flows if "FinanceFlows" in f.solutions) == 200
    # Read alone or inside the reader's read $batches: the solution's references, and every workflow membership.
    components = ([e.path for e in emulator.app.log if e.path.endswith("/solutioncomponents")]
                  + [p.path for p in emulator.app.log.inner_requests() if "/solutioncomponents?" in p.path])
    assert len(components) == 2, components


def test_flow_solutions_join() -> None:
    rows = [
        {"objectid": "F1", "_solutionid_value": "S1"},
        {"objectid": "f1", "_solutionid_value": "s2"},
        {"objectid": "f1", "_solutionid_value": "S2"},  # the same membership twice: one name
        {"objectid": "f2", "_solutionid_value": "gone"},  # a solution not read: left out
    ]
    solutions = [{"solutionid": "s1", "uniquename": "beta"}, {"solutionid": "S2", "uniquename": "Alpha"}]
    assert flow_solutions(rows, solutions) == {"f1": ("Alpha", "beta")}
