"""Writes whose answer is lost, through the applier against the emulator over loopback.

A create carries the row id decided when planning, so a create sent twice makes one row at most. When the
answer to a ``$batch`` is lost (the connection dropped after sending, any 5xx or a 408 without the ``$batch``
answer, the client gave up waiting, a 2xx whose body cannot be read, a change set answered both written and
refused), the applier never sends it again blindly: it
reads back the rows of the change set and decides from them. Committed: recorded as written. Not
committed: sent once more. Neither can be told: reported as unknown ("run plan again"), never as not
written. Both readings of duplicate logical names (the platform's rule is UNCONFIRMED, docs/dataverse.md
§1.5) are run.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import partial
from typing import Any

import httpx
import pytest
from builders import EmulatorTokens, sample_config

from reconciler.api.client import RetryPolicy
from reconciler.api.live import read_environment, read_reference_rows
from reconciler.api.session import EnvSession, open_environment
from reconciler.apply.applier import ApplyResult, apply_environment
from reconciler.domain.model import Binding, Config, DesiredReference, connector_id
from reconciler.domain.patterns import is_guid
from reconciler.emulator.factory import Sample
from reconciler.errors import ApplyError
from reconciler.plan.ops import CreateReference, EnvironmentPlan
from reconciler.plan.planner import plan_environment

pytestmark = pytest.mark.emulator_only(reason="fault injection and the request log are the emulator's controls")

BATCH = "/api/data/v9.2/$batch"
NEW = "contoso_Sql"


def ref(name: str, connector: str, display: str, description: str | None = None) -> DesiredReference:
    return DesiredReference(name, connector_id(connector), display, description)


def in_sync() -> dict[str, DesiredReference]:
    return {
        Sample.REF_SP_NAME: ref(Sample.REF_SP_NAME, Sample.SP, "SharePoint ContosoConnections"),
        Sample.REF_OUTLOOK_NAME: ref(Sample.REF_OUTLOOK_NAME, Sample.OUTLOOK, "Office 365 Outlook ContosoConnections"),
        Sample.REF_DV_NAME: ref(Sample.REF_DV_NAME, Sample.DATAVERSE, "Dataverse ContosoConnections"),
    }


def changed_config(url: str) -> Config:
    """One create (bound, owned by the service account), one rename, one rebind: three writes."""
    refs = in_sync()
    refs[Sample.REF_SP_NAME] = ref(Sample.REF_SP_NAME, Sample.SP, "SharePoint (renamed)")
    refs[NEW] = ref(NEW, Sample.DATAVERSE, "Dataverse second", "created by apply")
    bindings: dict[str, Binding] = {Sample.REF_DV_NAME: Sample.CONN_DV_SVC, NEW: Sample.CONN_DV_SVC}
    return sample_config(url, refs, bindings)


@pytest.fixture
def admin_app(emulator: Any) -> Any:
    for app in emulator.store.data["applications"]:
        app["management_app"] = True
    return emulator


def open_session(emulator: Any, timeout: float = 10.0) -> EnvSession:
    session = open_environment(changed_config(emulator.url), "dev", token_provider=EmulatorTokens(emulator),
                               http=httpx.Client(timeout=timeout))
    # Retries of reads count waits instead of waiting.
    session.dataverse.retry = RetryPolicy(max_retries=2, sleep=lambda _: None, jitter=lambda: 0.0)
    return session


@pytest.fixture
def session(admin_app: Any) -> Iterator[EnvSession]:
    with open_session(admin_app) as s:
        yield s


def plan(session: EnvSession, config: Config) -> EnvironmentPlan:
    return plan_environment(config, config.environments["dev"], read_environment(session, config, "dev"))


def rows_named(emulator: Any, logical_name: str) -> list[dict[str, Any]]:
    return [dict(r) for r in emulator.store.data["connectionreferences"]
            if str(r["connectionreferencelogicalname"]).lower() == logical_name.lower()]


def create_of(env_plan: EnvironmentPlan) -> CreateReference:
    op = next(op for op in env_plan.ops if isinstance(op, CreateReference))
    assert isinstance(op, CreateReference)
    return op


def read_backs(emulator: Any) -> list[Any]:
    """The filtered reads of connectionreferences by id (``$filter`` on connectionreferenceid)."""
    return [e for e in emulator.app.log.matching("GET", "*/connectionreferences")
            if "connectionreferenceid" in e.query]


def assert_converged(emulator: Any, session: EnvSession, config: Config, create: CreateReference) -> None:
    rows = rows_named(emulator, NEW)
    assert len(rows) == 1, "one reference per logical name"
    assert rows[0]["connectionreferenceid"] == create.reference_id
    assert rows[0]["connectionid"] == Sample.CONN_DV_SVC and rows[0]["_ownerid_value"] == Sample.SVC_USER_ID
    sp = rows_named(emulator, Sample.REF_SP_NAME)
    assert len(sp) == 1 and sp[0]["connectionreferencedisplayname"] == "SharePoint (renamed)"
    assert plan(session, config).ops == ()


# --------------------------------------------------------------------------- the create carries its id


def test_a_create_carries_the_row_id_decided_when_planning(admin_app: Any, session: EnvSession) -> None:
    config = changed_config(admin_app.url)
    first, second = plan(session, config), plan(session, config)
    create = create_of(first)
    assert create.reference_id is not None and is_guid(create.reference_id)
    assert create_of(second).reference_id == create.reference_id  # the same world plans the same id
    assert create.to_dict()["reference_id"] == create.reference_id  # saved with the plan
    result = apply_environment(session.dataverse, partial(read_reference_rows, session.reader), first)
    assert result.ok
    assert rows_named(admin_app, NEW)[0]["connectionreferenceid"] == create.reference_id
    written = next(r for r in result.written if r.op is create)
    assert written.reference_id == create.reference_id


def test_a_replayed_create_never_makes_a_second_row(admin_app: Any, session: EnvSession) -> None:
    # Duplicate logical names accepted by the platform (one reading of docs/dataverse.md §1.5): only the row
    # id can stop a replayed create.
    admin_app.app.settings["enforce_duplicate_logical_name"] = False
    config = changed_config(admin_app.url)
    env_plan = plan(session, config)
    create = create_of(env_plan)
    assert apply_environment(session.dataverse, partial(read_reference_rows, session.reader), env_plan).ok
    replay = EnvironmentPlan("dev", (create,))
    with pytest.raises(ApplyError):
        apply_environment(session.dataverse, partial(read_reference_rows, session.reader),
            replay)  # refused: the id is taken (412 0x80040237), read back: not ours
    assert len(rows_named(admin_app, NEW)) == 1


# --------------------------------------------------------------------------- answers lost after the commit

LOST_AFTER_COMMIT: list[tuple[str, str, dict[str, Any]]] = [
    ("connection dropped", "drop", {"after_commit": True}),
    ("500", "error", {"status": 500, "after_commit": True}),
    ("502 from a gateway", "error", {"status": 502, "after_commit": True, "error_body": "html"}),
    ("504 from a gateway", "error", {"status": 504, "after_commit": True, "error_body": "html"}),
    ("200 with an HTML page", "malformed", {"shape": "html"}),
    ("200 cut in half", "malformed", {"shape": "truncated"}),
    ("200 with no body", "malformed", {"shape": "empty"}),
    # Any 5xx or 408 without the $batch answer: none proves the change set was refused.
    ("503", "error", {"status": 503, "after_commit": True}),
    ("507", "error", {"status": 507, "after_commit": True}),
    ("501 with an HTML page", "error", {"status": 501, "after_commit": True, "error_body": "html"}),
    ("408", "error", {"status": 408, "after_commit": True}),
    ("520 from a CDN", "error", {"status": 520, "after_commit": True, "error_body": "html"}),
    ("524 from a CDN", "error", {"status": 524, "after_commit": True, "error_body": "html"}),
    # An atomic change set answered part written, part refused (412): it cannot be both.
    ("200 with a 2xx part and a 412 part", "malformed", {"shape": "part_status", "part": 2, "status": 412}),
]


@pytest.mark.parametrize("duplicates", ["refused", "accepted"])
@pytest.mark.parametrize(("name", "kind", "options"), LOST_AFTER_COMMIT, ids=[c[0] for c in LOST_AFTER_COMMIT])
def test_a_change_set_committed_whose_answer_is_lost_is_read_back_and_recorded_written(
    admin_app: Any, session: EnvSession, name: str, kind: str, options: dict[str, Any], duplicates: str
) -> None:
    admin_app.app.settings["enforce_duplicate_logical_name"] = duplicates == "refused"
    config = changed_config(admin_app.url)
    env_plan = plan(session, config)
    create = create_of(env_plan)
    admin_app.app.faults.add(kind, BATCH, methods=["POST"], times=1, **options)
    admin_app.app.log.clear()

    result = apply_environment(session.dataverse, partial(read_reference_rows, session.reader), env_plan)

    assert result.ok and len(result.written) == 3
    assert admin_app.app.log.count_writes(BATCH) == 1, "a committed change set is never sent again"
    assert len(read_backs(admin_app)) == 1, "one filtered read of the rows it wrote"
    # The rows read back are what the state records: their new ETags came with them.
    for r in result.written:
        assert r.row is not None and r.row["@odata.etag"]
    assert_converged(admin_app, session, config, create)


def test_a_client_timeout_after_the_commit_is_read_back(admin_app: Any) -> None:
    with open_session(admin_app, timeout=1.0) as session:
        config = changed_config(admin_app.url)
        env_plan = plan(session, config)
        rule = admin_app.app.faults.add("latency", BATCH, methods=["POST"], after_commit=True, latency_ms=5000,
                                        times=1)
        result = apply_environment(session.dataverse, partial(read_reference_rows, session.reader), env_plan)
        assert rule.committed.is_set()
        assert result.ok and len(result.written) == 3
        assert_converged(admin_app, session, config, create_of(env_plan))


# --------------------------------------------------------------------------- lost before the commit

LOST_BEFORE_COMMIT: list[tuple[str, str, dict[str, Any]]] = [
    ("connection dropped", "drop", {}),
    ("500", "error", {"status": 500}),
    ("502 from a gateway", "error", {"status": 502, "error_body": "html"}),
    ("504 from a gateway", "error", {"status": 504, "error_body": "html"}),
    ("503", "error", {"status": 503}),
    ("507", "error", {"status": 507}),
    ("408", "error", {"status": 408}),
    ("524 from a CDN", "error", {"status": 524, "error_body": "html"}),
]


@pytest.mark.parametrize(("name", "kind", "options"), LOST_BEFORE_COMMIT, ids=[c[0] for c in LOST_BEFORE_COMMIT])
def test_a_change_set_not_committed_whose_answer_is_lost_is_sent_once_more(
    admin_app: Any, session: EnvSession, name: str, kind: str, options: dict[str, Any]
) -> None:
    config = changed_config(admin_app.url)
    env_plan = plan(session, config)
    admin_app.app.faults.add(kind, BATCH, methods=["POST"], times=1, **options)
    admin_app.app.log.clear()

    result = apply_environment(session.dataverse, partial(read_reference_rows, session.reader), env_plan)

    assert result.ok and len(result.written) == 3
    assert admin_app.app.log.count_writes(BATCH) == 2, "read back first, then sent once more"
    assert len(read_backs(admin_app)) == 1
    assert_converged(admin_app, session, config, create_of(env_plan))


def test_a_resend_that_is_lost_too_is_read_back_again(admin_app: Any, session: EnvSession) -> None:
    config = changed_config(admin_app.url)
    env_plan = plan(session, config)
    admin_app.app.faults.add("drop", BATCH, methods=["POST"], times=1)  # not committed
    admin_app.app.faults.add("error", BATCH, methods=["POST"], times=1, status=504, after_commit=True)
    admin_app.app.log.clear()
    result = apply_environment(session.dataverse, partial(read_reference_rows, session.reader), env_plan)
    assert result.ok
    assert admin_app.app.log.count_writes(BATCH) == 2
    assert len(read_backs(admin_app)) == 2
    assert_converged(admin_app, session, config, create_of(env_plan))


def test_a_change_set_still_lost_after_one_resend_is_reported_unknown(admin_app: Any, session: EnvSession) -> None:
    config = changed_config(admin_app.url)
    env_plan = plan(session, config)
    admin_app.app.faults.add("drop", BATCH, methods=["POST"], times=2)  # neither attempt committed
    with pytest.raises(ApplyError) as info:
        apply_environment(session.dataverse, partial(read_reference_rows, session.reader), env_plan)
    result = info.value.results
    assert isinstance(result, ApplyResult)
    assert [r.outcome for r in result.results] == ["not_written"] * 3
    assert admin_app.app.log.count_writes(BATCH) == 2  # sent once more, never a third time
    assert rows_named(admin_app, NEW) == []


# --------------------------------------------------------------------------- neither can be told


def test_an_outcome_that_cannot_be_read_back_is_unknown_never_not_written(admin_app: Any, session: EnvSession) -> None:
    config = changed_config(admin_app.url)
    env_plan = plan(session, config)
    admin_app.app.faults.add("error", BATCH, methods=["POST"], times=1, status=504, after_commit=True)
    # The read-back fails too (every read of connectionreferences from now on, past the read retries).
    admin_app.app.faults.add("error", "/api/data/v9.2/connectionreferences", methods=["GET"], status=500)
    with pytest.raises(ApplyError) as info:
        apply_environment(session.dataverse, partial(read_reference_rows, session.reader), env_plan)
    message = str(info.value)
    assert "the outcome of 3 writes is unknown: run plan again; nothing else needed" in message
    assert "not written" not in message and "NOT written" not in message
    result = info.value.results
    assert isinstance(result, ApplyResult)
    assert [r.outcome for r in result.results] == ["unknown"] * 3
    assert admin_app.app.log.count_writes(BATCH) == 1, "never sent again without knowing"
    # It was committed: planning again finds nothing left to do.
    admin_app.app.faults.clear()
    assert len(rows_named(admin_app, NEW)) == 1
    assert plan(session, config).ops == ()


def test_later_batches_are_not_sent_after_an_unknown_outcome(admin_app: Any, session: EnvSession) -> None:
    config = changed_config(admin_app.url)
    env_plan = plan(session, config)
    admin_app.app.faults.add("error", BATCH, methods=["POST"], times=1, status=504, after_commit=True)
    admin_app.app.faults.add("error", "/api/data/v9.2/connectionreferences", methods=["GET"], status=500)
    with pytest.raises(ApplyError) as info:
        apply_environment(session.dataverse, partial(read_reference_rows, session.reader),
            env_plan, batch_size=1)  # one operation per $batch
    result = info.value.results
    assert isinstance(result, ApplyResult)
    assert [r.outcome for r in result.results] == ["unknown", "not_written", "not_written"]
    assert re.search(r"the outcome of 1 write is unknown", str(info.value))
    assert "not sent: an earlier batch" in result.results[1].reason


# --------------------------------------------------------------------------- updates and deletes


def test_an_update_whose_answer_is_lost_is_read_back(admin_app: Any, session: EnvSession) -> None:
    refs = in_sync()
    refs[Sample.REF_OUTLOOK_NAME] = ref(Sample.REF_OUTLOOK_NAME, Sample.OUTLOOK, "Outlook (renamed)")
    config = sample_config(admin_app.url, refs)
    env_plan = plan(session, config)
    assert [op.kind for op in env_plan.ops] == ["update"]
    version = rows_named(admin_app, Sample.REF_OUTLOOK_NAME)[0]["versionnumber"]
    admin_app.app.faults.add("drop", BATCH, methods=["POST"], times=1, after_commit=True)
    result = apply_environment(session.dataverse, partial(read_reference_rows, session.reader), env_plan)
    assert result.ok
    row = rows_named(admin_app, Sample.REF_OUTLOOK_NAME)[0]
    assert row["connectionreferencedisplayname"] == "Outlook (renamed)"
    assert row["versionnumber"] > version and admin_app.app.log.count_writes(BATCH) == 1
    assert plan(session, config).ops == ()


def test_a_delete_whose_answer_is_lost_is_read_back(admin_app: Any, session: EnvSession) -> None:
    refs = in_sync()
    del refs[Sample.REF_DV_NAME]  # no flow uses it
    config = sample_config(admin_app.url, refs)
    live = read_environment(session, config, "dev")
    env_plan = plan_environment(config, config.environments["dev"], live, prune=True,
                                managed=[Sample.REF_DV_NAME])
    assert [op.kind for op in env_plan.ops] == ["delete"]
    admin_app.app.faults.add("error", BATCH, methods=["POST"], times=1, status=502, after_commit=True)
    result = apply_environment(session.dataverse, partial(read_reference_rows, session.reader), env_plan)
    assert result.ok and rows_named(admin_app, Sample.REF_DV_NAME) == []
    assert admin_app.app.log.count_writes(BATCH) == 1
