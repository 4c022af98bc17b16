"""The applier against the emulator over loopback: create (in the solution, bound, owned by the service
account), rename, rebind, add-to-solution with an owner change, stale ETags, failures reported per
operation, and idempotence (a second plan has nothing to do)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from functools import partial
from typing import Any

import httpx
import pytest
from builders import EmulatorTokens, sample_config

from reconciler.api.batch_format import update_op
from reconciler.api.live import read_environment, read_reference_rows
from reconciler.api.odata_filter import Guid, eq
from reconciler.api.session import EnvSession, open_environment
from reconciler.apply.applier import ApplyResult, BatchProgress, apply_environment
from reconciler.domain.model import Binding, Config, DesiredReference, connector_id
from reconciler.emulator.factory import Sample
from reconciler.errors import ApplyError, MalformedResponseError
from reconciler.plan.ops import ApplyFacts, EnvironmentPlan, FieldChange, UpdateReference
from reconciler.plan.planner import plan_environment

# Every test makes the pipeline app a management app by editing the emulator's data, and several
# count requests in the emulator's log.
pytestmark = pytest.mark.emulator_only


def ref(name: str, connector: str, display: str, description: str | None = None) -> DesiredReference:
    return DesiredReference(name, connector_id(connector), display, description)


def in_sync() -> dict[str, DesiredReference]:
    """The sample's solution as it is: planning it gives no changes."""
    return {
        Sample.REF_SP_NAME: ref(Sample.REF_SP_NAME, Sample.SP, "SharePoint ContosoConnections"),
        Sample.REF_OUTLOOK_NAME: ref(Sample.REF_OUTLOOK_NAME, Sample.OUTLOOK,
                                     "Office 365 Outlook ContosoConnections"),
        Sample.REF_DV_NAME: ref(Sample.REF_DV_NAME, Sample.DATAVERSE, "Dataverse ContosoConnections"),
    }


@pytest.fixture
def admin_app(emulator: Any) -> Any:
    # The pipeline app reads every connection (a registered management app), so bindings resolve.
    for app in emulator.store.data["applications"]:
        app["management_app"] = True
    return emulator


@pytest.fixture
def session(admin_app: Any) -> Iterator[EnvSession]:
    config = sample_config(admin_app.url, in_sync())
    with open_environment(config, "dev", token_provider=EmulatorTokens(admin_app),
                          http=httpx.Client(timeout=10)) as s:
        yield s


def plan(session: EnvSession, config: Config) -> EnvironmentPlan:
    live = read_environment(session, config, "dev")
    return plan_environment(config, config.environments["dev"], live)


def row(emulator: Any, logical_name: str) -> dict[str, Any]:
    found = emulator.store.reference_by_logical_name(logical_name)
    assert found is not None, logical_name
    return dict(found)


def members(emulator: Any) -> set[str]:
    sol = emulator.store.solution(Sample.SOLUTION)
    return {c["objectid"] for c in emulator.store.data["solutioncomponents"]
            if c["_solutionid_value"] == sol["solutionid"]}


def test_in_sync_plan_applies_nothing(admin_app: Any, session: EnvSession) -> None:
    env_plan = plan(session, sample_config(admin_app.url, in_sync()))
    admin_app.app.log.clear()
    result = apply_environment(session.dataverse, partial(read_reference_rows, session.reader), env_plan)
    assert result.results == () and result.ok
    assert len(admin_app.app.log) == 0


def test_create_rename_rebind_then_nothing_to_do(admin_app: Any, session: EnvSession) -> None:
    refs = in_sync()
    refs[Sample.REF_SP_NAME] = ref(Sample.REF_SP_NAME, Sample.SP, "SharePoint (renamed)")
    refs["contoso_Sql"] = ref("contoso_Sql", Sample.DATAVERSE, "Dataverse second", "created by apply")
    bindings: dict[str, Binding] = {Sample.REF_DV_NAME: Sample.CONN_DV_SVC, "contoso_Sql": Sample.CONN_DV_SVC}
    config = sample_config(admin_app.url, refs, bindings)
    env_plan = plan(session, config)
    kinds = sorted((op.kind, op.logical_name) for op in env_plan.ops)
    assert kinds == [("create", "contoso_Sql"), ("update", Sample.REF_DV_NAME),
                     ("update", Sample.REF_SP_NAME)]

    admin_app.app.log.clear()
    progress: list[BatchProgress] = []
    result = apply_environment(session.dataverse, partial(read_reference_rows, session.reader),
        env_plan, progress=progress.append)
    assert result.ok and len(result.written) == 3
    assert [(p.batch, p.batches, p.done, p.total) for p in progress] == [(1, 1, 3, 3)]
    assert [e.path.rsplit("/", 1)[-1] for e in admin_app.app.log] == ["$batch"]
    batch = admin_app.app.log[0]
    assert batch.effective_user_id == Sample.SVC_USER_ID  # CallerObjectId: the service account writes

    created = row(admin_app, "contoso_Sql")
    assert created["connectionid"] == Sample.CONN_DV_SVC
    assert created["description"] == "created by apply"
    assert created["_ownerid_value"] == Sample.SVC_USER_ID
    assert created["_createdonbehalfby_value"] == Sample.APP_USER_ID
    assert created["connectionreferenceid"] in members(admin_app)  # MSCRM.SolutionUniqueName
    create_result = next(r for r in result.written if r.op.kind == "create")
    assert create_result.reference_id == created["connectionreferenceid"]
    assert row(admin_app, Sample.REF_SP_NAME)["connectionreferencedisplayname"] == "SharePoint (renamed)"
    assert row(admin_app, Sample.REF_DV_NAME)["connectionid"] == Sample.CONN_DV_SVC

    assert plan(session, config).ops == ()  # idempotent


def test_add_to_solution_and_take_ownership(admin_app: Any, session: EnvSession) -> None:
    refs = in_sync()
    refs[Sample.REF_MAKER_NAME] = ref(Sample.REF_MAKER_NAME, Sample.SP, "SharePoint Solution-8f4b0")
    config = sample_config(admin_app.url, refs)
    env_plan = plan(session, config)
    assert sorted(op.kind for op in env_plan.ops) == ["add_to_solution", "update"]
    update = next(op for op in env_plan.ops if isinstance(op, UpdateReference))
    assert [c.field for c in update.changes] == ["owner"]

    admin_app.app.log.clear()
    result = apply_environment(session.dataverse, partial(read_reference_rows, session.reader), env_plan)
    assert result.ok
    # The plan carried the component type and the service account's object id: apply read nothing.
    assert [e.path.rsplit("/", 1)[-1] for e in admin_app.app.log] == ["$batch"]
    assert admin_app.app.log[0].effective_user_id == Sample.SVC_USER_ID
    assert Sample.REF_MAKER in members(admin_app)
    assert row(admin_app, Sample.REF_MAKER_NAME)["_ownerid_value"] == Sample.SVC_USER_ID
    inner = admin_app.app.log.inner_requests()
    assert any(p.path.endswith("AddSolutionComponent") for p in inner)
    assert plan(session, config).ops == ()


def test_stale_etag_stops_the_apply_and_says_to_plan_again(admin_app: Any, session: EnvSession) -> None:
    refs = in_sync()
    refs[Sample.REF_SP_NAME] = ref(Sample.REF_SP_NAME, Sample.SP, "SharePoint (renamed)")
    refs[Sample.REF_OUTLOOK_NAME] = ref(Sample.REF_OUTLOOK_NAME, Sample.OUTLOOK, "Outlook (renamed)")
    refs["contoso_Late"] = ref("contoso_Late", Sample.DATAVERSE, "Created too late")
    config = sample_config(admin_app.url, refs)
    env_plan = plan(session, config)
    assert len(env_plan.ops) == 3

    # Someone edits the Outlook reference in the portal after the plan was made.
    before = row(admin_app, Sample.REF_OUTLOOK_NAME)
    etag = f'W/"{before["versionnumber"]}"'
    session.dataverse.execute_batch([update_op(
        "connectionreferences", Sample.REF_OUTLOOK, {"description": "edited in the portal"}, etag=etag)])

    with pytest.raises(ApplyError) as info:
        apply_environment(session.dataverse, partial(read_reference_rows, session.reader), env_plan)
    message = str(info.value)
    assert Sample.REF_OUTLOOK_NAME in message and "plan" in message and "again" in message
    result = info.value.results
    assert isinstance(result, ApplyResult)
    outcome = {r.op.logical_name: r.outcome for r in result.results}
    assert outcome == {"contoso_Late": "not_written", Sample.REF_OUTLOOK_NAME: "failed",
                       Sample.REF_SP_NAME: "not_written"}
    failed = result.failed[0]
    assert failed.status == 412 and "changed" in failed.reason
    # Nothing was written: the change set rolled back, the portal edit survived.
    sp_row = row(admin_app, Sample.REF_SP_NAME)
    assert sp_row["connectionreferencedisplayname"] == "SharePoint ContosoConnections"
    assert row(admin_app, Sample.REF_OUTLOOK_NAME)["description"] == "edited in the portal"
    rows = session.dataverse.get_all("connectionreferences", select=["connectionreferenceid"],
                                     filter=eq("connectionreferencelogicalname", "contoso_Late"))
    assert rows == []
    # Planning again picks up the new ETag and applies cleanly.
    assert apply_environment(session.dataverse, partial(read_reference_rows, session.reader), plan(session, config)).ok


def test_rebind_to_a_connection_the_writer_cannot_use_fails_with_the_reason(
    admin_app: Any, session: EnvSession
) -> None:
    config = sample_config(admin_app.url, in_sync())
    live = read_environment(session, config, "dev")
    sp = next(r for r in live.references if r.logical_name == Sample.REF_SP_NAME)
    # Built by hand: the planner refuses this binding; the applier must still report the service's refusal.
    op = UpdateReference(environment="dev", logical_name=Sample.REF_SP_NAME, reference_id=sp.id, etag=sp.etag,
                         changes=(FieldChange("connection", Sample.CONN_SP_SVC, Sample.CONN_SP_MAKER),))
    facts = ApplyFacts(writer_object_id=Sample.SVC_OBJECT_ID, component_type=Sample.COMPONENT_TYPE)
    with pytest.raises(ApplyError) as info:
        apply_environment(session.dataverse, partial(read_reference_rows, session.reader),
            EnvironmentPlan("dev", (op,), facts=facts))
    result = info.value.results
    assert [r.outcome for r in result.results] == ["failed"]
    assert result.failed[0].status == 403
    assert row(admin_app, Sample.REF_SP_NAME)["connectionid"] == Sample.CONN_SP_SVC
    member_filter = eq("connectionreferenceid", Guid(sp.id))
    assert session.dataverse.get_all("connectionreferences", filter=member_filter)[0]["connectionid"] == (
        Sample.CONN_SP_SVC)


def test_a_plan_without_the_facts_apply_needs_is_refused_before_anything_is_sent(
    admin_app: Any, session: EnvSession
) -> None:
    refs = in_sync()
    refs[Sample.REF_SP_NAME] = ref(Sample.REF_SP_NAME, Sample.SP, "SharePoint (renamed)")
    env_plan = plan(session, sample_config(admin_app.url, refs))
    assert env_plan.facts is not None and env_plan.facts.writer_object_id == Sample.SVC_OBJECT_ID
    admin_app.app.log.clear()
    with pytest.raises(ApplyError, match=r"earlier connref.*plan' again"):
        apply_environment(session.dataverse, partial(read_reference_rows, session.reader),
            dataclasses.replace(env_plan, facts=None))
    assert len(admin_app.app.log) == 0
    assert row(admin_app, Sample.REF_SP_NAME)["connectionreferencedisplayname"] == "SharePoint ContosoConnections"


def test_references_read_without_their_etag_stop_the_plan_naming_the_url(admin_app: Any, session: EnvSession) -> None:
    """A reference row answered without ``@odata.etag`` could only be written with ``If-Match: *``, over a
    portal edit made after the plan (docs/dataverse.md §3.4): the read is a malformed answer, not a plan."""
    refs = in_sync()
    refs[Sample.REF_OUTLOOK_NAME] = ref(Sample.REF_OUTLOOK_NAME, Sample.OUTLOOK, "Outlook (renamed)")
    config = sample_config(admin_app.url, refs)
    admin_app.app.faults.add("malformed", "/api/data/v9.2/connectionreferences", shape="missing_field",
                             key_path="value[]/@odata.etag")
    with pytest.raises(MalformedResponseError) as info:
        plan(session, config)
    assert info.value.url is not None and "/api/data/v9.2/connectionreferences" in info.value.url
    assert "value[0].@odata.etag: missing" in str(info.value)
    assert admin_app.app.log.count_writes("/api/data/v9.2/$batch") == 0


@pytest.mark.parametrize("etag", [None, ""])
def test_an_update_without_an_etag_is_refused_before_anything_is_sent(
    admin_app: Any, session: EnvSession, etag: str | None
) -> None:
    """Sent, it would carry ``If-Match: *`` and overwrite whatever the portal changed since the row was read."""
    refs = in_sync()
    refs[Sample.REF_OUTLOOK_NAME] = ref(Sample.REF_OUTLOOK_NAME, Sample.OUTLOOK, "Outlook (renamed)")
    env_plan = plan(session, sample_config(admin_app.url, refs))
    (update,) = env_plan.ops
    assert isinstance(update, UpdateReference) and update.etag
    # Edited in the portal meanwhile.
    before = row(admin_app, Sample.REF_OUTLOOK_NAME)
    session.dataverse.execute_batch([update_op("connectionreferences", Sample.REF_OUTLOOK,
                                               {"description": "edited in the portal"},
                                               etag=f'W/"{before["versionnumber"]}"')])
    admin_app.app.log.clear()
    with pytest.raises(ApplyError, match=r"no ETag for dev\.\S+.*nothing was written; run 'connref plan' again"):
        apply_environment(session.dataverse, partial(read_reference_rows, session.reader),
                          dataclasses.replace(env_plan, ops=(dataclasses.replace(update, etag=etag),)))
    assert admin_app.app.log.count_writes("/api/data/v9.2/$batch") == 0
    after = row(admin_app, Sample.REF_OUTLOOK_NAME)
    assert after["description"] == "edited in the portal"
    assert after["connectionreferencedisplayname"] == before["connectionreferencedisplayname"]
