"""What uses a reference, read through the real client from the emulator (``RetrieveDependenciesForDelete``,
docs/dataverse.md §2.5, §2.7): flows, canvas apps and Copilot Studio agents, named with state and owner; and
prune keeping, naming them, a reference an app or an agent uses."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from builders import EmulatorTokens, sample_config

from reconciler.api.live import read_dependents, read_environment
from reconciler.api.session import EnvSession, open_environment
from reconciler.domain.model import DesiredReference, LiveEnvironment, connector_id
from reconciler.emulator import factory
from reconciler.emulator.factory import Sample as S
from reconciler.plan.ops import DeleteReference
from reconciler.plan.planner import dependency_candidates, plan_environment

pytestmark = pytest.mark.emulator_only

APP = "a7000000-0000-4000-8000-000000000001"
BOT = "b7000000-0000-4000-8000-000000000001"


@pytest.fixture
def emulator_data(signing_key_pem: str) -> dict[str, Any]:
    """The sample, with a canvas app using its Outlook reference and an agent (switched off) using both its
    Outlook and its Dataverse references."""
    data = factory.sample_environment(signing_key_pem)
    svc = next(u for u in data["systemusers"] if u["systemuserid"] == S.SVC_USER_ID)
    maker = next(u for u in data["systemusers"] if u["systemuserid"] != S.SVC_USER_ID
                 and u.get("domainname", "").startswith("maker"))
    factory.add_canvas_app(data, "Invoice app", [S.REF_OUTLOOK_NAME], owner=maker, canvasappid=APP)
    factory.add_bot(data, "Invoice agent", [S.REF_OUTLOOK_NAME, S.REF_DV_NAME], owner=svc, botid=BOT, active=False)
    return data


@pytest.fixture
def session(emulator: Any) -> Iterator[EnvSession]:
    config = sample_config(emulator.url, {})
    with open_environment(config, "dev", token_provider=EmulatorTokens(emulator),
                          http=httpx.Client(timeout=30)) as s:
        yield s


def only_sharepoint() -> dict[str, DesiredReference]:
    return {S.REF_SP_NAME: DesiredReference(S.REF_SP_NAME, connector_id(S.SP), "SharePoint ContosoConnections")}


def read(session: EnvSession, ids: list[str]) -> LiveEnvironment:
    live = read_environment(session.reader, sample_config(session.env.url, only_sharepoint()), "dev")
    return read_dependents(session.reader, live, ids)


def test_apps_and_agents_are_named_with_state_and_owner(session: EnvSession, emulator: Any) -> None:
    live = read(session, [S.REF_OUTLOOK, S.REF_DV])
    outlook = {(d.kind, d.name, d.state) for d in live.dependents[S.REF_OUTLOOK]}
    assert outlook == {("flow", "Invoice approval", "On"), ("canvas_app", "Invoice app", None),
                       ("bot", "Invoice agent", "Inactive")}
    (dv,) = live.dependents[S.REF_DV]
    assert (dv.kind, dv.id, dv.owner_id) == ("bot", BOT, S.SVC_USER_ID)
    app = next(d for d in live.dependents[S.REF_OUTLOOK] if d.kind == "canvas_app")
    assert live.user(app.owner_id) is not None  # the app's owner was read too, to be named


def test_prune_keeps_what_a_flow_or_an_agent_uses_and_names_them(session: EnvSession, emulator: Any) -> None:
    config = sample_config(session.env.url, only_sharepoint())
    managed = [S.REF_OUTLOOK_NAME, S.REF_DV_NAME]  # the state says connref manages them; no longer declared
    live = read_environment(session.reader, config, "dev", managed=managed)
    wanted = dependency_candidates(config, {"dev": live}, prune=True, managed={"dev": managed})["dev"]
    # Only the Dataverse reference looks deletable before the read: a flow's definition names the Outlook one.
    assert [w.lower() for w in wanted] == [S.REF_DV]
    live = read_dependents(session.reader, live, wanted)
    env_plan = plan_environment(config, config.environments["dev"], live, prune=True, managed=managed)
    assert not [op for op in env_plan.ops if isinstance(op, DeleteReference)]
    blocked = [w for w in env_plan.warnings if "CR323" in w or "not deleted" in w]
    assert len(blocked) == 2
    assert any(S.REF_DV_NAME in w and 'agent "Invoice agent" (Inactive' in w for w in blocked)
    assert any(S.REF_OUTLOOK_NAME in w and 'flow "Invoice approval" (On' in w for w in blocked)
    # Nothing was written: the emulator refuses such a delete anyway (0x8004F01F).
    assert not [e for e in emulator.app.log if e.is_write]
