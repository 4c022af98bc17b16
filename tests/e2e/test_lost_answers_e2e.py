"""Lost answers through the real CLI: two environments served over loopback https, the emulator committing
a ``$batch`` and then losing its answer. The apply reads back what it wrote and records it; when even that
cannot tell, it says the outcome is unknown and to plan again (never "not written"), and the next run
converges with nothing else done (docs/pipelines.md)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from e2e.e2e_support import Served
from reconciler.state.local import load_state

pytestmark = pytest.mark.emulator_only

BATCH = "/api/data/v9.2/$batch"
REFERENCES = "/api/data/v9.2/connectionreferences"
# The faults below aim at dev's first $batch that writes (its change set): the read batches before it (the
# live reader's, RetrieveDependenciesForDelete's) only read, so ``writes_only`` lets them pass.
DECLARED = {"contoso_sharedsharepointonline_30e7d", "contoso_sharedsharepointonline_8f4b0",
            "contoso_sharedoffice365_d4c61", "contoso_sharedcommondataserviceforapps_7b2e9", "contoso_Teams"}


def teams_rows(served: Served, env: str) -> list[dict[str, object]]:
    return [r for r in served.apps[env].store.data["connectionreferences"]
            if str(r["connectionreferencelogicalname"]).lower() == "contoso_teams"]


def managed(served: Served, env: str) -> set[str]:
    state = load_state(served.dir / "state", env)
    return set(state.references) if state else set()


@pytest.mark.parametrize("duplicates", ["refused", "accepted"])
def test_a_batch_committed_whose_answer_is_a_504_is_read_back_and_recorded(served: Served, duplicates: str) -> None:
    served.apps["dev"].settings["enforce_duplicate_logical_name"] = duplicates == "refused"
    served.apps["dev"].faults.add("error", BATCH, methods=["POST"], status=504, error_body="html",
                                  after_commit=True, times=1, writes_only=True)
    r = served.run("apply", "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert "Apply complete! Changes: 2 added, 13 changed, 0 destroyed." in r.out
    assert served.apps["dev"].log.count_writes(BATCH) == 1  # never sent twice
    assert len(teams_rows(served, "dev")) == 1
    assert managed(served, "dev") == DECLARED
    r = served.run("drift", "--json")
    assert r.code == 0, r.out
    assert not any(env["has_drift"] for env in json.loads(r.out)["environments"])
    assert served.run("plan", "--detailed-exitcode").code == 0


@pytest.mark.parametrize("shape", ["html", "truncated", "empty"])
def test_a_batch_answered_2xx_with_a_body_connref_cannot_read_is_read_back_and_recorded(
    served: Served, shape: str
) -> None:
    # The $batch is committed, then answered 200 with an HTML page, half its body, or nothing.
    served.apps["dev"].faults.add("malformed", BATCH, methods=["POST"], shape=shape, times=1, writes_only=True)
    r = served.run("apply", "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert "Apply complete! Changes: 2 added, 13 changed, 0 destroyed." in r.out
    assert "not written" not in (r.out + r.err).lower()
    assert served.apps["dev"].log.count_writes(BATCH) == 1  # read back, not sent again
    assert len(teams_rows(served, "dev")) == 1
    assert managed(served, "dev") == DECLARED
    assert served.run("drift").code == 0
    assert served.run("plan", "--detailed-exitcode").code == 0


COMMITTED_BUT_ANSWERED: dict[str, tuple[str, dict[str, Any]]] = {
    "507": ("error", {"status": 507, "after_commit": True}),
    "524 from a CDN": ("error", {"status": 524, "after_commit": True, "error_body": "html"}),
    "200 with a 2xx part and a 412 part": ("malformed", {"shape": "part_status", "part": 2, "status": 412}),
}


@pytest.mark.parametrize("answer", sorted(COMMITTED_BUT_ANSWERED))
def test_a_committed_batch_answered_as_if_refused_is_read_back_and_recorded(served: Served, answer: str) -> None:
    """Neither a 5xx without the $batch answer nor a change set answered part written, part refused proves the
    change set was refused: it is read back, and found written."""
    kind, options = COMMITTED_BUT_ANSWERED[answer]
    served.apps["dev"].faults.add(kind, BATCH, methods=["POST"], times=1, writes_only=True, **options)
    r = served.run("apply", "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert "Apply complete! Changes: 2 added, 13 changed, 0 destroyed." in r.out
    assert "not written" not in (r.out + r.err).lower()
    assert served.apps["dev"].log.count_writes(BATCH) == 1  # read back, not sent again
    assert managed(served, "dev") == DECLARED
    assert served.run("plan", "--detailed-exitcode").code == 0


def test_references_read_without_their_etag_are_refused_and_nothing_is_written(served: Served) -> None:
    """Without ETags the plan could only be applied with If-Match: *, over edits made in the portal meanwhile."""
    served.apps["dev"].faults.add("malformed", REFERENCES, methods=["GET"], shape="missing_field",
                                  key_path="value[]/@odata.etag")
    plan_file = served.dir / "etagless.plan.json"
    r = served.run("plan", "--out", str(plan_file))
    assert r.code == 1, r.out + r.err
    assert "Traceback" not in r.err
    assert "/api/data/v9.2/connectionreferences" in r.err and "@odata.etag: missing" in r.err
    assert not plan_file.exists()
    r = served.run("apply", "--auto-approve")
    assert r.code == 1, r.out + r.err
    assert "@odata.etag: missing" in r.err
    assert served.apps["dev"].log.count_writes(BATCH) == 0


LOST: dict[str, tuple[str, dict[str, Any]]] = {
    "dropped after the commit": ("drop", {"after_commit": True}),
    "answered 200 with an HTML page": ("malformed", {"shape": "html"}),
}


@pytest.mark.parametrize("lost", sorted(LOST))
def test_an_unknown_outcome_says_plan_again_and_the_next_run_converges(served: Served, lost: str) -> None:
    dev = served.apps["dev"].faults
    kind, options = LOST[lost]
    dev.add(kind, BATCH, methods=["POST"], times=1, writes_only=True, **options)
    # The read-back (the second read of the references: the first is the plan's) cannot be read either.
    dev.add("malformed", REFERENCES, methods=["GET"], shape="html", after=1, times=1)
    r = served.run("apply", "--auto-approve")
    assert r.code == 1, r.out + r.err
    assert "Traceback" not in r.err
    said = "the outcome of 4 writes is unknown: run plan again; nothing else needed"
    assert said in r.err and said in r.out
    assert "Apply complete!" not in r.out
    assert "not written" not in (r.out + r.err).lower()
    assert "(outcome unknown)" in r.out
    assert served.apps["dev"].log.count_writes(BATCH) == 1
    # prod was applied and recorded; dev's writes were committed but the state does not say so yet.
    assert managed(served, "prod") == DECLARED
    assert len(teams_rows(served, "dev")) == 1

    # What the message says: plan again. It finds dev converged, and nothing else is needed.
    r = served.run("plan", "--detailed-exitcode")
    assert r.code == 0, r.out + r.err
    r = served.run("apply", "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert managed(served, "dev") == DECLARED
    r = served.run("drift")
    assert r.code == 0, r.out + r.err
    assert len(teams_rows(served, "dev")) == 1
