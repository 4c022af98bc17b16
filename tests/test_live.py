"""The live reader against the emulator's realistic sample environment over loopback, plus the
``local:`` session (in-process emulator) and the clientdata shapes it understands.

In remote mode (docs/emulator.md) every test here that reads an environment is skipped with its
reason: ``read_environment`` always reads connections through the connections API, another host and
token audience than Dataverse, and a remote run holds only the application's Dataverse token. The
tests that need no environment run as usual."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from builders import EmulatorTokens, sample_config

from reconciler.api.live import read_environment
from reconciler.api.session import EnvSession, open_environment
from reconciler.domain import rules
from reconciler.domain.flowdef import flow_references
from reconciler.domain.model import Config, DesiredReference, LiveUser, connector_id
from reconciler.emulator import factory
from reconciler.emulator.factory import Sample
from reconciler.errors import ConfigError

API = "/api/data/v9.2/"
# Why tests are emulator_only (shown by `pytest -rs` in remote mode).
READS_CONNECTIONS = ("read_environment reads connections through the connections API (another host and "
                     "audience); remote mode holds only the application's Dataverse token")


def desired(name: str, connector: str, display: str | None = None) -> DesiredReference:
    return DesiredReference(logical_name=name, connector=connector_id(connector),
                            display_name=display or name)


def make_config(
    url: str,
    references: dict[str, DesiredReference] | None = None,
    *,
    service_account: str | None = Sample.SVC_UPN,
    local_path: str | None = None,
) -> Config:
    refs = references if references is not None else {
        Sample.REF_SP_NAME: desired(Sample.REF_SP_NAME, Sample.SP, "SharePoint ContosoConnections"),
        Sample.REF_OUTLOOK_NAME: desired(Sample.REF_OUTLOOK_NAME, Sample.OUTLOOK),
        "contoso_NotYet": desired("contoso_NotYet", Sample.DATAVERSE),
    }
    return sample_config(url, refs, service_account=service_account, local_path=local_path)


@pytest.fixture
def session(emulator: Any) -> Iterator[EnvSession]:
    config = make_config(emulator.url)
    with open_environment(config, "dev", token_provider=EmulatorTokens(emulator),
                          http=httpx.Client(timeout=10)) as s:
        yield s


@pytest.mark.emulator_only(reason=READS_CONNECTIONS + "; and it checks the sample's flows, references and "
                            "connections, which the fixture file does not name")
def test_reads_the_sample_environment(emulator: Any, session: EnvSession) -> None:
    config = make_config(emulator.url)
    live = read_environment(session, config, "dev")
    assert live.solution is not None
    assert live.solution.unique_name == Sample.SOLUTION
    assert live.solution.prefix == "contoso"
    assert live.component_type == Sample.COMPONENT_TYPE
    by_name = {r.logical_name: r for r in live.references}
    # The solution's three references; the maker's per-developer one is neither declared nor a member.
    assert set(by_name) == {Sample.REF_SP_NAME, Sample.REF_OUTLOOK_NAME, Sample.REF_DV_NAME}
    assert all(r.in_solution for r in live.references)
    sp = by_name[Sample.REF_SP_NAME]
    assert sp.connection == Sample.CONN_SP_SVC
    assert sp.owner_id == Sample.SVC_USER_ID
    assert sp.etag.startswith('W/"')
    assert by_name[Sample.REF_DV_NAME].connection is None
    # Identity: the caller is the pipeline's application user, writes act as the service account.
    assert live.caller is not None and live.caller.systemuserid == Sample.APP_USER_ID
    assert live.writer is not None and live.writer.upn == Sample.SVC_UPN
    assert live.writer.object_id == Sample.SVC_OBJECT_ID
    assert rules.impersonated_object_id(Sample.SVC_UPN, live) == Sample.SVC_OBJECT_ID
    # Flows, from clientdata.
    flows = {f.name: f for f in live.flows}
    assert set(flows["Invoice approval"].references) == {Sample.REF_SP_NAME, Sample.REF_OUTLOOK_NAME}
    assert flows["Invoice approval"].state == 1


@pytest.mark.emulator_only(reason=READS_CONNECTIONS)
def test_declared_reference_outside_the_solution_is_read(emulator: Any, session: EnvSession) -> None:
    refs = {Sample.REF_MAKER_NAME.upper(): desired(Sample.REF_MAKER_NAME.upper(), Sample.SP)}
    live = read_environment(session, make_config(emulator.url, refs), "dev")
    maker = [r for r in live.references if r.id == Sample.REF_MAKER]
    assert len(maker) == 1 and not maker[0].in_solution  # matched case-insensitively
    assert live.user(Sample.MAKER_USER_ID) is not None  # its owner is among the users read


@pytest.mark.emulator_only(reason=READS_CONNECTIONS + "; and it reads the request log and edits the data")
def test_connections_admin_scope_then_fallback(emulator: Any, session: EnvSession) -> None:
    config = make_config(emulator.url)
    live = read_environment(session, config, "dev")
    # Not a management app: 403 on the admin list, then the caller's own scope (one extra request).
    assert [c.name for c in live.connections] == [Sample.CONN_DV_SVC]
    paths = [e.path for e in emulator.app.log if "connections" in e.path]
    statuses = [e.status for e in emulator.app.log if "connections" in e.path]
    assert statuses == [403, 200]
    assert paths[0].startswith("/providers/Microsoft.PowerApps/scopes/admin/")
    for app in emulator.store.data["applications"]:
        app["management_app"] = True
    emulator.app.log.clear()
    live = read_environment(session, config, "dev")
    conns = {c.name: c for c in live.connections}
    assert set(conns) == {Sample.CONN_SP_SVC, Sample.CONN_OUTLOOK_SVC, Sample.CONN_DV_SVC,
                          Sample.CONN_SP_MAKER}
    assert conns[Sample.CONN_SP_SVC].owner_object_id == Sample.SVC_OBJECT_ID
    assert conns[Sample.CONN_SP_SVC].status == "Connected"
    app, svc = LiveUser("app", Sample.APP_OBJECT_ID, None), LiveUser("svc", Sample.SVC_OBJECT_ID, None)
    # The list carries only the Owner (docs/dataverse.md §4.8): the share with the app is on the permissions
    # route, read only for bound connections.
    assert [p.role for p in conns[Sample.CONN_DV_SVC].permissions] == ["Owner"]
    assert app.object_id and not rules.can_use(app, replace(conns[Sample.CONN_DV_SVC], shares=None))
    assert not rules.can_use(svc, conns[Sample.CONN_SP_MAKER])
    assert len([e for e in emulator.app.log if "connections" in e.path]) == 1
    # Connection owners are among the users read (one query for all of them).
    assert live.user_by_object_id(Sample.MAKER_OBJECT_ID) is not None


@pytest.mark.emulator_only(reason="adds a user with an apostrophe to the emulator's data (tests create no users)")
def test_service_account_with_an_apostrophe_is_escaped(emulator: Any) -> None:
    upn = "o'neil-svc@contoso.com"
    with emulator.store.lock:
        factory.add_user(emulator.store.data, domainname=upn, fullname="O'Neil service")
    config = make_config(emulator.url, service_account=upn)
    with open_environment(config, "dev", token_provider=EmulatorTokens(emulator),
                          http=httpx.Client(timeout=10)) as s:
        live = read_environment(s, config, "dev")
    assert live.writer is not None and live.writer.upn == upn


@pytest.mark.emulator_only(reason=READS_CONNECTIONS)
def test_unknown_service_account_leaves_no_writer(emulator: Any, session: EnvSession) -> None:
    config = make_config(emulator.url, service_account="nobody@contoso.com")
    live = read_environment(session, config, "dev")
    assert live.writer is None


@pytest.mark.emulator_only(reason=READS_CONNECTIONS)
def test_without_service_account_the_writer_is_the_caller(emulator: Any, session: EnvSession) -> None:
    config = make_config(emulator.url, service_account=None)
    live = read_environment(session, config, "dev")
    assert live.writer == live.caller
    assert rules.impersonated_object_id(None, live) is None


@pytest.mark.emulator_only(reason="the local: session is the in-process emulator on a data file")
def test_local_session_reads_and_writes_back_to_the_file(
    emulator_data: dict[str, Any], tmp_path: Any
) -> None:
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(emulator_data))
    config = make_config("local:dev.json", local_path=str(path))
    with open_environment(config, "dev") as s:
        assert s.is_local
        live = read_environment(s, config, "dev")
        assert live.solution is not None
        assert live.caller is not None and live.caller.systemuserid == Sample.APP_USER_ID
        from reconciler.api.batch_format import update_op

        sp = next(r for r in live.references if r.logical_name == Sample.REF_SP_NAME)
        results = s.dataverse.execute_batch(
            [update_op("connectionreferences", sp.id, {"description": "written locally"}, etag=sp.etag)]
        )
        assert results[0].ok
        assert len(s.emulator.log) > 0  # the in-process app's request log is exposed
    saved = json.loads(path.read_text())
    row = next(r for r in saved["connectionreferences"] if r["connectionreferenceid"] == Sample.REF_SP)
    assert row["description"] == "written locally"


def test_local_session_missing_file_is_a_config_error(tmp_path: Any) -> None:
    config = make_config("local:missing.json", local_path=str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="does not exist"):
        open_environment(config, "dev")


def test_unknown_environment_is_a_config_error(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="unknown environment 'prod'"):
        open_environment(make_config("https://x.crm.dynamics.com"), "prod")


# --------------------------------------------------------------------------- clientdata shapes


def test_flow_references_current_shape_from_the_factory() -> None:
    data = factory.flow_clientdata([("contoso_A", Sample.SP), ("contoso_B", Sample.SP)])
    assert flow_references(data) == ("contoso_A", "contoso_B")


@pytest.mark.parametrize(
    ("clientdata", "expected"),
    [
        # flattened form without the properties wrapper
        (json.dumps({"connectionReferences": {"shared_sql": {"connectionReferenceLogicalName": "p_Sql"}}}),
         ("p_Sql",)),
        # legacy entries bind a connection directly: no reference
        (json.dumps({"properties": {"connectionReferences": {"shared_sql": {
            "connectionName": "shared-sql-1234", "source": "Embedded", "id": "/providers/x"}}}}), ()),
        ("not json", ()),
        (None, ()),
    ],
)
def test_flow_references_other_shapes(clientdata: str | None, expected: tuple[str, ...]) -> None:
    assert flow_references(clientdata) == expected



@pytest.mark.emulator_only(reason=READS_CONNECTIONS + "; and it counts requests in the emulator's log")
@pytest.mark.parametrize("form", ["upn", "object_id", "systemuserid", "application_id"])
def test_the_service_account_in_any_form_is_read_in_the_same_single_users_query(
        emulator: Any, session: EnvSession, form: str) -> None:
    app = next(u for u in emulator.store.data["systemusers"] if u.get("applicationid"))
    given = {"upn": Sample.SVC_UPN, "object_id": Sample.SVC_OBJECT_ID.upper(), "systemuserid": Sample.SVC_USER_ID,
             "application_id": str(app["applicationid"])}[form]
    emulator.app.log.clear()
    live = read_environment(session, make_config(emulator.url, service_account=given), "dev")
    # One query, in the second read $batch (or on its own if that batch failed).
    user_queries = [e.path for e in emulator.app.log if e.path == API + "systemusers"]
    user_queries += [p.path for p in emulator.app.log.inner_requests() if p.path.split("?")[0].endswith("systemusers")]
    assert len(user_queries) == 1
    want = str(app["systemuserid"]) if form == "application_id" else Sample.SVC_USER_ID
    assert live.writer is not None and live.writer.systemuserid == want
    assert rules.writer(given, live) == live.writer


# --------------------------------------------------------------------------- read batches


BATCH = API + "$batch"


@pytest.mark.emulator_only(reason=READS_CONNECTIONS + "; and it injects faults and counts the emulator's requests")
@pytest.mark.parametrize(("kind", "options"), [
    ("error", {"status": 500}),  # the batch refused as a whole
    ("malformed", {"shape": "html"}),  # answered 200 with a body that is no multipart
    ("drop", {}),  # the connection dropped
], ids=["refused", "unreadable", "dropped"])
def test_a_read_batch_that_fails_is_read_one_by_one_with_the_same_result(
        emulator: Any, session: EnvSession, kind: str, options: dict[str, Any]) -> None:
    config = make_config(emulator.url)
    emulator.app.log.clear()
    batched = read_environment(session, config, "dev")
    batches = emulator.app.log.matching("POST", BATCH)
    assert len(batches) == 2 and not any(e.is_write for e in batches)
    assert all(e.status == 200 for e in emulator.app.log.matching(path=API + "*"))
    emulator.app.faults.add(kind, BATCH, methods=["POST"], times=1, **options)  # the first read batch only
    emulator.app.log.clear()
    alone = read_environment(session, config, "dev")
    assert alone == batched
    # The seven reads the first batch carried went on their own (each once), the second batch as before.
    for path in ("connectionreferences", "workflows", "solutions", "solutioncomponentdefinitions", "WhoAmI"):
        assert emulator.app.log.count_requests("GET", API + path) >= 1, path
    assert emulator.app.log.count_requests("GET", API + "solutions") == 2  # the solution, every solution's name
    assert emulator.app.log.count_requests("POST", BATCH) == 2


@pytest.mark.emulator_only(reason=READS_CONNECTIONS + "; and it injects faults and counts the emulator's requests")
def test_a_throttled_read_batch_is_sent_again_not_read_one_by_one(emulator: Any, session: EnvSession) -> None:
    """A 429 on the first read batch asks for a pause (Retry-After 0 here, so the test does not wait): the
    batch goes again, and none of its seven reads bursts out on its own inside the throttling window."""
    config = make_config(emulator.url)
    batched = read_environment(session, config, "dev")
    emulator.app.faults.throttle(BATCH, retry_after=0, methods=["POST"], times=1)
    emulator.app.log.clear()
    assert read_environment(session, config, "dev") == batched
    assert [e.status for e in emulator.app.log.matching("POST", BATCH)] == [429, 200, 200]
    assert emulator.app.log.matching("GET", API + "*") == []


@pytest.mark.emulator_only(reason=READS_CONNECTIONS + "; and it injects faults and counts the emulator's requests")
@pytest.mark.parametrize(("kind", "options"), [
    ("error", {"status": 500}),
    ("malformed", {"shape": "html"}),
    ("drop", {}),
], ids=["refused", "unreadable", "dropped"])
def test_a_second_read_batch_that_fails_is_read_one_by_one_with_the_same_result(
        emulator: Any, session: EnvSession, kind: str, options: dict[str, Any]) -> None:
    """The second batch carries the solution's members, the writer's privilege and the users: each is then
    read on its own, once, and the environment is the same."""
    config = make_config(emulator.url, service_account=Sample.SVC_UPN)
    emulator.app.log.clear()
    batched = read_environment(session, config, "dev")
    second = emulator.app.log.matching("POST", BATCH)[1]
    carried = sorted(p.path.split("?")[0] for p in second.parts)
    assert len(carried) == 3
    assert carried[0].endswith("/solutioncomponents") and carried[1].endswith("/systemusers")
    assert "RetrieveUserPrivilegeByPrivilegeName" in carried[2]
    emulator.app.faults.add(kind, BATCH, methods=["POST"], after=1, times=1, **options)  # the second only
    emulator.app.log.clear()
    alone = read_environment(session, config, "dev")
    assert alone == batched
    assert emulator.app.log.count_requests("GET", API + "systemusers") == 1
    assert emulator.app.log.count_requests("GET", API + "solutioncomponents") == 1  # the members
    assert emulator.app.log.count_requests("POST", BATCH) == 2


@pytest.mark.emulator_only(reason=READS_CONNECTIONS + "; and it injects faults and counts the emulator's requests")
def test_after_a_read_fails_for_good_the_reads_not_yet_started_are_not_started(emulator: Any) -> None:
    """A storm of 503s on Dataverse: the first reads (sent one by one, the batch refused) each give up after
    their retries, and the reads that would have started after them (the flows' memberships and the solution
    names, the users) are never sent, so the plan fails once, not after a second full retry cycle."""
    from reconciler.errors import TransientError

    config = make_config(emulator.url)
    with open_environment(config, "dev", token_provider=EmulatorTokens(emulator), http=httpx.Client(timeout=10),
                          max_retries=1) as session:
        emulator.app.faults.add("unavailable", API + "*")
        emulator.app.log.clear()
        with pytest.raises(TransientError, match="HTTP 503"):
            read_environment(session, config, "dev")
    log = emulator.app.log
    for path in ("connectionreferences", "workflows", "WhoAmI", "solutioncomponentdefinitions", "solutions"):
        assert log.count_requests("GET", API + path) == 2, path  # the one read of each, and its one retry
    assert log.count_requests("GET", API + "solutioncomponents") == 0
    assert log.count_requests("GET", API + "systemusers") == 0
    assert log.count_requests("POST", API + "$batch") == 1


@pytest.mark.emulator_only(reason=READS_CONNECTIONS + "; and it injects faults")
def test_a_part_refused_inside_the_read_batch_is_read_again_with_its_own_error(
        emulator: Any, session: EnvSession) -> None:
    """A part answered 403 is not used: its read is sent on its own, and fails with the service's own error
    for that URL (here WhoAmI's, which connref explains), as if no batch had carried it."""
    from reconciler.errors import PlanError

    emulator.app.faults.add("error", API + "WhoAmI", methods=["GET"], status=403)
    with pytest.raises(PlanError, match="Dataverse refused the signed-in identity"):
        read_environment(session, make_config(emulator.url), "dev")
    parts = [p for p in emulator.app.log.inner_requests() if "WhoAmI" in p.path]
    assert [p.status for p in parts] == [403]  # the batch's part met the rule too
    assert emulator.app.log.count_requests("GET", API + "WhoAmI") == 1


@pytest.mark.emulator_only(reason=READS_CONNECTIONS + "; and it injects faults")
def test_an_answer_no_read_took_is_not_kept_for_a_later_read(emulator: Any, session: EnvSession) -> None:
    """The second batch carries the solution's members and the writer's privilege; when the members' part
    cannot be read the reader stops before asking for the privilege, whose answer must not wait in the
    client for whatever reads that URL next."""
    from reconciler.errors import MalformedResponseError

    # The first solutioncomponents GET is the flows' memberships (first batch), the second the members.
    emulator.app.faults.add("malformed", API + "solutioncomponents", methods=["GET"], shape="html", after=1,
                            times=1)
    with pytest.raises(MalformedResponseError, match="solutioncomponents"):
        read_environment(session, make_config(emulator.url), "dev")
    assert any("RetrieveUserPrivilegeByPrivilegeName" in p.path and p.status == 200
               for p in emulator.app.log.inner_requests())  # its answer came in the batch
    assert session.dataverse._prefetched == {}
