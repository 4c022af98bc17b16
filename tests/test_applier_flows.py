"""The applier's flow steps against the emulator over loopback (docs/dataverse.md §5.6-§5.8): it waits for the
asynchronous update a rebind sends to the flows (bounded, with progress), reports an update that does not
finish in time, and only then switches flows on. Time is the test's: the applier's ``sleep`` and ``clock``
are injected, and the emulator's pending updates are moved on explicitly, so nothing here waits."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import httpx
import pytest
from builders import EmulatorTokens, sample_config

from reconciler.api.batch_format import ANY_VERSION
from reconciler.api.live import read_environment, read_reference_rows
from reconciler.api.session import EnvSession, open_environment
from reconciler.apply.applier import ApplyResult, FlowProgress, FlowWatch, apply_environment
from reconciler.apply.flowstate import flow_state_request
from reconciler.domain.model import Config, DesiredReference, FlowSettings, connector_id, frozen_map
from reconciler.emulator import factory, workflows
from reconciler.emulator.factory import Sample
from reconciler.errors import ApplyError
from reconciler.plan.planner import plan_environment

pytestmark = pytest.mark.emulator_only(reason="moves the emulator's asynchronous flow updates on by hand")

SYNC = "f0000000-0000-4000-8000-0000000000f9"


@pytest.fixture
def emulator_data(signing_key_pem: str) -> dict[str, Any]:
    """The sample with a flow of the solution that is off and uses the unbound Dataverse reference, and a
    rebind that takes an hour to reach the flows."""
    data = factory.sample_environment(signing_key_pem)
    svc = next(u for u in data["systemusers"] if u["systemuserid"] == Sample.SVC_USER_ID)
    sol = next(s for s in data["solutions"] if s["uniquename"] == Sample.SOLUTION)
    factory.add_flow(data, "Dataverse sync", [(Sample.REF_DV_NAME, Sample.DATAVERSE)], owner=svc, active=False,
                     solution=sol, workflowid=SYNC)
    data["settings"]["rebind_propagation_seconds"] = 3600
    for app in data["applications"]:
        app["management_app"] = True
    return data


def config(url: str, wait: int) -> Config:
    refs = {Sample.REF_DV_NAME: DesiredReference(Sample.REF_DV_NAME, connector_id(Sample.DATAVERSE),
                                                  "Dataverse ContosoConnections")}
    cfg = sample_config(url, refs, {Sample.REF_DV_NAME: Sample.CONN_DV_SVC})
    env = dataclasses.replace(cfg.environments["dev"], flows=FlowSettings(wait_seconds=wait))
    return dataclasses.replace(cfg, environments=frozen_map({"dev": env}))


@pytest.fixture
def make_session(emulator: Any) -> Iterator[Any]:
    opened: list[Any] = []

    def make(wait: int) -> tuple[EnvSession, Config]:
        cfg = config(emulator.url, wait)
        ctx = open_environment(cfg, "dev", token_provider=EmulatorTokens(emulator), http=httpx.Client(timeout=10))
        opened.append(ctx)
        return ctx.__enter__(), cfg

    yield make
    for ctx in opened:
        ctx.__exit__(None, None, None)


class Clock:
    """The applier's time: each sleep moves it on, and can move the emulator on too."""

    def __init__(self, on_sleep: Any = None) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.on_sleep = on_sleep

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep()

    def clock(self) -> float:
        return self.now


def test_waits_for_the_update_then_switches_the_flow_on(emulator: Any, make_session: Any) -> None:
    session, cfg = make_session(120)
    env_plan = plan_environment(cfg, cfg.environments["dev"], read_environment(session.reader, cfg, "dev"))
    assert [op.logical_name for op in env_plan.activations] == ["Dataverse sync"]
    # The update finishes while the applier sleeps for the first time.
    clock = Clock(lambda: workflows.run_due_updates(emulator.store, time.time() + 7200))
    seen: list[FlowProgress] = []
    watch = FlowWatch(session.reader.dataverse, 120, seen.append, clock.sleep, clock.clock)
    result = apply_environment(session.dataverse, partial(read_reference_rows, session.reader), env_plan, flows=watch)
    assert isinstance(result, ApplyResult) and result.ok
    assert [(f.name, f.outcome) for f in result.flows] == [("Dataverse sync", "updated"),
                                                          ("Dataverse sync", "switched_on")]
    assert [(p.done, p.total) for p in seen] == [(0, 1), (1, 1)] and len(clock.sleeps) == 1
    assert emulator.store.workflow(SYNC)["statecode"] == 1


def test_an_update_that_does_not_finish_in_time_is_reported(emulator: Any, make_session: Any) -> None:
    session, cfg = make_session(30)
    env_plan = plan_environment(cfg, cfg.environments["dev"], read_environment(session.reader, cfg, "dev"))
    clock = Clock()
    with pytest.raises(ApplyError) as info:
        apply_environment(session.dataverse, partial(read_reference_rows, session.reader), env_plan,
                          flows=FlowWatch(session.reader.dataverse, 30, None, clock.sleep, clock.clock))
    result = info.value.results
    assert isinstance(result, ApplyResult)
    outcomes = {f.outcome: f for f in result.flows}
    assert outcomes["update_not_finished"].reason.startswith(
        "the platform's update of the flow after the rebind did not finish within 30 s")
    assert "not_attempted" in outcomes  # switching it on is not even tried
    assert clock.now == pytest.approx(30) and sum(clock.sleeps) == pytest.approx(30)
    assert emulator.store.workflow(SYNC)["statecode"] == 0
    assert "flows are left failing" in str(info.value)


def test_one_request_switches_a_flow_off_and_on_as_the_platform_allows(emulator: Any, make_session: Any) -> None:
    """``flow_state_request`` is the one write for both directions (docs/dataverse.md §5.1); switching on is
    checked by the platform: the acting user must own or have shared every connection (docs/dataverse.md
    §5.3)."""
    session, _ = make_session(0)
    flow = Sample.FLOW_ACTIVE
    (off,) = session.dataverse.execute_batch([flow_state_request(flow, "off", on=False, etag=ANY_VERSION)],
                                             caller_object_id=Sample.SVC_OBJECT_ID)
    assert off.ok and emulator.store.workflow(flow)["statecode"] == 0
    assert emulator.store.workflow(flow)["statuscode"] == 1
    # As the application user, which neither owns nor has been shared the service account's connections.
    (refused,) = session.dataverse.execute_batch([flow_state_request(flow, "on", on=True, etag=ANY_VERSION)])
    assert not refused.ok and refused.status == 403
    assert refused.error is not None and "ConnectionAuthorizationFailed" in str(refused.error)
    assert emulator.store.workflow(flow)["statecode"] == 0
    switch_on = flow_state_request(flow, "on", on=True, etag=ANY_VERSION, select=("statecode",))
    (on,) = session.dataverse.execute_batch([switch_on], caller_object_id=Sample.SVC_OBJECT_ID)
    assert on.ok and isinstance(on.body, dict) and on.body["statecode"] == 1
    assert emulator.store.workflow(flow)["statuscode"] == 2


def test_a_lost_answer_to_switching_a_flow_on_is_sent_once_more(emulator: Any, make_session: Any) -> None:
    """The change set that binds goes first; the emulator commits the switch-on and drops its answer."""
    session, cfg = make_session(120)
    env_plan = plan_environment(cfg, cfg.environments["dev"], read_environment(session.reader, cfg, "dev"))
    emulator.app.faults.add("drop", "/api/data/v9.2/$batch", methods=["POST"], after_commit=True, times=1, after=1)
    clock = Clock(lambda: workflows.run_due_updates(emulator.store, time.time() + 7200))
    result = apply_environment(session.dataverse, partial(read_reference_rows, session.reader), env_plan,
                               flows=FlowWatch(session.reader.dataverse, 120, None, clock.sleep, clock.clock))
    assert result.ok and [(f.name, f.outcome) for f in result.flows][-1] == ("Dataverse sync", "switched_on")
    switches = [e for e in emulator.app.log if e.path.endswith("/$batch")
                and any("workflows(" in p.path for p in e.parts)]
    assert len(switches) == 2 and switches[0].fault == "drop"
    assert emulator.store.workflow(SYNC)["statecode"] == 1


def add_two_flows_that_are_off(emulator: Any) -> None:
    """Beside "Dataverse sync", two more flows of the solution that are off, each using one of the service
    account's references: one activation pass of three flows."""
    svc = emulator.store.user(Sample.SVC_USER_ID)
    sol = emulator.store.solution(Sample.SOLUTION)
    with emulator.store.lock:
        for name, ref, api in (("Outlook digest", Sample.REF_OUTLOOK_NAME, Sample.OUTLOOK),
                               ("SharePoint sync", Sample.REF_SP_NAME, Sample.SP)):
            factory.add_flow(emulator.store.data, name, [(ref, api)], owner=svc, active=False, solution=sol)


@pytest.mark.parametrize("content_ids", ["echo", "omit"])
def test_the_flows_of_a_pass_are_switched_on_in_one_batch_and_one_refusal_stops_none_of_the_others(
        emulator: Any, make_session: Any, content_ids: str) -> None:
    """Two more flows of the solution are off; the connection of one is deleted between plan and apply, so
    the platform refuses that one (docs/dataverse.md §5.3). The three switch-ons travel in one ``$batch``,
    each in a part of its own outside any change set: the refusal is that flow's verdict alone, whether the
    answer names each part's request (``Content-ID``) or only answers in order (docs/dataverse.md §3.7)."""
    emulator.app.settings["batch_content_id_outside_changesets"] = content_ids
    add_two_flows_that_are_off(emulator)
    session, cfg = make_session(120)
    env_plan = plan_environment(cfg, cfg.environments["dev"], read_environment(session.reader, cfg, "dev"))
    assert sorted(op.logical_name for op in env_plan.activations) == ["Dataverse sync", "Outlook digest",
                                                                      "SharePoint sync"]
    with emulator.store.lock:
        emulator.store.data["connections"].remove(emulator.store.connection(Sample.CONN_OUTLOOK_SVC))
    emulator.app.log.clear()
    clock = Clock(lambda: workflows.run_due_updates(emulator.store, time.time() + 7200))
    with pytest.raises(ApplyError) as info:
        apply_environment(session.dataverse, partial(read_reference_rows, session.reader), env_plan,
                          flows=FlowWatch(session.reader.dataverse, 120, None, clock.sleep, clock.clock))
    result = info.value.results
    assert isinstance(result, ApplyResult)
    outcomes = {f.name: f for f in result.flows if f.outcome != "updated"}
    assert {n: o.outcome for n, o in outcomes.items()} == {
        "Dataverse sync": "switched_on", "Outlook digest": "not_switched_on", "SharePoint sync": "switched_on"}
    assert "cannot be used to activate this flow" in outcomes["Outlook digest"].reason
    switches = [e for e in emulator.app.log if e.path.endswith("/$batch")
                and any("workflows(" in p.path for p in e.parts)]
    assert len(switches) == 1 and sorted(p.status for p in switches[0].parts) == [204, 204, 403]
    states = {w["name"]: w["statecode"] for w in emulator.store.data["workflows"]}
    assert (states["Dataverse sync"], states["Outlook digest"], states["SharePoint sync"]) == (1, 0, 1)


def test_a_switch_on_batch_whose_answer_is_cut_short_is_sent_once_more(emulator: Any, make_session: Any) -> None:
    """The emulator switches the three flows on and answers half of its ``$batch`` answer: connref cannot tell
    which were switched on, sends the same batch again (switching on twice changes nothing) and reads them
    back on."""
    add_two_flows_that_are_off(emulator)
    session, cfg = make_session(120)
    env_plan = plan_environment(cfg, cfg.environments["dev"], read_environment(session.reader, cfg, "dev"))
    assert len(env_plan.activations) == 3
    # The first $batch binds the reference; the second switches the flows on.
    emulator.app.faults.add("malformed", "/api/data/v9.2/$batch", methods=["POST"], shape="truncated", times=1,
                            after=1)
    emulator.app.log.clear()
    clock = Clock(lambda: workflows.run_due_updates(emulator.store, time.time() + 7200))
    result = apply_environment(session.dataverse, partial(read_reference_rows, session.reader), env_plan,
                               flows=FlowWatch(session.reader.dataverse, 120, None, clock.sleep, clock.clock))
    assert result.ok
    assert sorted((f.name, f.outcome) for f in result.flows if f.outcome != "updated") == [
        ("Dataverse sync", "switched_on"), ("Outlook digest", "switched_on"), ("SharePoint sync", "switched_on")]
    switches = [e for e in emulator.app.log if e.path.endswith("/$batch")
                and any("workflows(" in p.path for p in e.parts)]
    assert [(e.fault, e.batch_count) for e in switches] == [("malformed", 3), (None, 3)]
    assert all(w["statecode"] == 1 for w in emulator.store.data["workflows"]
               if w["name"] in ("Dataverse sync", "Outlook digest", "SharePoint sync"))


def test_a_rerun_waits_for_the_update_an_earlier_apply_left_under_way(emulator: Any, make_session: Any) -> None:
    # The first apply writes the rebind and does not wait for the flow's update: as one stopped while waiting.
    session, cfg = make_session(0)
    first = plan_environment(cfg, cfg.environments["dev"], read_environment(session.reader, cfg, "dev"))
    idle = Clock()
    with pytest.raises(ApplyError):
        apply_environment(session.dataverse, partial(read_reference_rows, session.reader), first,
                          flows=FlowWatch(session.reader.dataverse, 0, None, idle.sleep, idle.clock))
    assert emulator.store.workflow(SYNC)["statecode"] == 0
    # The next plan has nothing to rebind, only the flow to switch on; its update is still under way.
    session, cfg = make_session(120)
    again = plan_environment(cfg, cfg.environments["dev"], read_environment(session.reader, cfg, "dev"))
    assert [op.kind for op in again.ops] == ["activate_flow"]
    clock = Clock(lambda: workflows.run_due_updates(emulator.store, time.time() + 7200))
    result = apply_environment(session.dataverse, partial(read_reference_rows, session.reader), again,
                               flows=FlowWatch(session.reader.dataverse, 120, None, clock.sleep, clock.clock))
    assert result.ok
    assert [(f.name, f.outcome) for f in result.flows] == [("Dataverse sync", "updated"),
                                                          ("Dataverse sync", "switched_on")]
    assert len(clock.sleeps) == 1 and emulator.store.workflow(SYNC)["statecode"] == 1
