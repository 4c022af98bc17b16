"""Drift detection over hand-built live environments and states (pure: no HTTP), and its renderers."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import pytest
from builders import (
    ALICE,
    DRIFT,
    DRIFT_CONNS,
    OUTLOOK,
    SP,
    SPN,
    desired,
    drift_config,
    drift_live,
    replace_ref,
    state_of,
)

from reconciler.domain.model import DesiredReference, LiveEnvironment, Selector, connector_id, frozen_map
from reconciler.drift import detect as dr
from reconciler.drift.render import render_json, render_markdown, render_text
from reconciler.state.model import EnvState, ManagedReference

conn, ref = DRIFT.conn, DRIFT.ref
live, config = drift_live, drift_config
WHEN = "2024-06-03T09:15:00Z"


def drop_ref(env: LiveEnvironment, logical: str) -> LiveEnvironment:
    return dataclasses.replace(env, references=tuple(r for r in env.references if r.logical_name != logical))


def with_conn_status(env: LiveEnvironment, name: str, status: str) -> LiveEnvironment:
    conns = tuple(dataclasses.replace(c, status=status) if c.name == name else c for c in env.connections)
    return dataclasses.replace(env, connections=conns)


BY_ALICE: dict[str, Any] = {"modified_by": "u-alice", "modified_on": WHEN}

# ------------------------------------------------------------------ table: live vs last applied state

# (id, how the portal changed live, expected {logical name: kinds})
CASES: list[tuple[str, Callable[[LiveEnvironment], LiveEnvironment], dict[str, tuple[str, ...]]]] = [
    ("no-drift", lambda e: e, {}),
    ("rebind", lambda e: replace_ref(e, SPN, connection="c-sp-alice", **BY_ALICE), {SPN: (dr.REBOUND,)}),
    ("unbind", lambda e: replace_ref(e, SPN, connection=None, **BY_ALICE), {SPN: (dr.REBOUND,)}),
    ("rename", lambda e: replace_ref(e, SPN, display_name="My SharePoint", **BY_ALICE), {SPN: (dr.RENAMED,)}),
    (
        "description",
        lambda e: replace_ref(e, SPN, description="Other", **BY_ALICE),
        {SPN: (dr.DESCRIPTION_CHANGED,)},
    ),
    ("deleted", lambda e: drop_ref(e, SPN), {SPN: (dr.DELETED,)}),
    ("owner", lambda e: replace_ref(e, SPN, owner_id="u-alice", **BY_ALICE), {SPN: (dr.OWNER_CHANGED,)}),
    ("broken", lambda e: with_conn_status(e, "c-sp-svc", "Error"), {SPN: (dr.CONNECTION_BROKEN,)}),
    (
        "connection-gone",
        lambda e: dataclasses.replace(e, connections=tuple(c for c in e.connections if c.name != "c-ol-svc")),
        {"contoso_Outlook": (dr.CONNECTION_BROKEN,)},
    ),
    ("left-solution", lambda e: replace_ref(e, SPN, in_solution=False), {SPN: (dr.REMOVED_FROM_SOLUTION,)}),
    (
        "unmanaged-appeared",
        lambda e: dataclasses.replace(
            e,
            references=(
                *e.references,
                ref(
                    "contoso_sharedoffice365_8f4b0",
                    "Office 365 Outlook-8f4b0",
                    connector=OUTLOOK,
                    connection="c-ol-svc",
                    created_by="u-bob",
                    created_on=WHEN,
                ),
            ),
        ),
        {"contoso_sharedoffice365_8f4b0": (dr.UNMANAGED,)},
    ),
    (
        "unmanaged-outside-solution-ignored",
        lambda e: dataclasses.replace(
            e, references=(*e.references, ref("contoso_other", "Other", in_solution=False))
        ),
        {},
    ),
    (
        "rename-and-rebind",
        lambda e: replace_ref(e, SPN, display_name="X", connection="c-sp-alice", **BY_ALICE),
        {SPN: (dr.REBOUND, dr.RENAMED)},
    ),
    (
        "rebound-to-a-broken-connection",
        lambda e: with_conn_status(replace_ref(e, SPN, connection="c-sp-alice"), "c-sp-alice", "Error"),
        {SPN: (dr.REBOUND, dr.CONNECTION_BROKEN)},
    ),
    (
        "normalised-equal-is-no-drift",
        # Case of a connection name, "" vs null description, short vs full connector id: the same values.
        lambda e: replace_ref(
            replace_ref(e, SPN, connection="C-SP-SVC"),
            "contoso_Outlook",
            description="",
            connector="/providers/Microsoft.PowerApps/apis/SHARED_OFFICE365",
        ),
        {},
    ),
    ("etag-only-is-no-drift", lambda e: replace_ref(e, SPN, etag='W/"999"', **BY_ALICE), {}),
]


@pytest.mark.parametrize(("change", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_drift_against_state(
    change: Callable[[LiveEnvironment], LiveEnvironment], expected: dict[str, tuple[str, ...]]
) -> None:
    base = live()
    report = dr.detect_drift(config(), "dev", change(base), state_of(base))
    assert {r.logical_name: r.kinds for r in report.references} == expected
    assert report.has_drift == bool(expected)
    assert dr.exit_code([report]) == (2 if expected else 0)


def test_rebind_says_from_which_to_which_by_whom_and_when() -> None:
    base = live()
    now = replace_ref(base, SPN, connection="c-sp-alice", **BY_ALICE)
    rd = dr.detect_drift(config(), "dev", now, state_of(base)).reference(SPN)
    assert rd is not None and rd.baseline == dr.STATE
    assert (rd.changed_by, rd.changed_on) == ("alice@contoso.com", WHEN)
    item = rd.item(dr.REBOUND)
    assert item is not None and (item.before, item.after) == ("c-sp-svc", "c-sp-alice")
    assert item.before_label == '"SharePoint svc" (owner svc-flows@contoso.com, c-sp-svc)'
    assert item.after_label == '"SharePoint Alice" (owner alice@contoso.com, c-sp-alice)'
    assert item.message.startswith('from "SharePoint svc"') and "(last applied)" in item.message
    # The field-level difference comes from DeepDiff over the normalised fields.
    assert dict(rd.field_diff) == {"connection": {"before": "c-sp-svc", "after": "c-sp-alice"}}


def test_rename_and_owner_change_carry_values() -> None:
    base = live()
    now = replace_ref(base, SPN, display_name="My SharePoint", owner_id="u-alice", **BY_ALICE)
    rd = dr.detect_drift(config(), "dev", now, state_of(base)).reference(SPN)
    assert rd is not None
    renamed, owner = rd.item(dr.RENAMED), rd.item(dr.OWNER_CHANGED)
    assert renamed is not None and (renamed.before, renamed.after) == ("SharePoint Contoso", "My SharePoint")
    assert owner is not None and (owner.before_label, owner.after_label) == (
        "svc-flows@contoso.com",
        "alice@contoso.com",
    )
    assert set(rd.field_diff) == {"display_name", "owner"}


def test_unknown_modifier_is_shown_by_id() -> None:
    base = live()
    now = replace_ref(base, SPN, display_name="Y", modified_by="u-someone-gone", modified_on=WHEN)
    rd = dr.detect_drift(config(), "dev", now, state_of(base)).reference(SPN)
    assert rd is not None and rd.changed_by == "u-someone-gone"


def test_unmanaged_names_creator() -> None:
    base = live()
    extra = ref(
        "contoso_sharedoffice365_8f4b0", "O-8f4b0", connector=OUTLOOK, created_by="u-bob", created_on=WHEN
    )
    report = dr.detect_drift(
        config(), "dev", dataclasses.replace(base, references=(*base.references, extra)), state_of(base)
    )
    rd = report.reference("contoso_sharedoffice365_8f4b0")
    assert rd is not None and (rd.changed_by, rd.changed_on, rd.baseline) == ("bob@contoso.com", WHEN, "none")
    assert "ContosoConnections" in rd.items[0].message


def test_config_change_not_applied_yet_is_not_drift() -> None:
    base = live()
    cfg = config(
        (
            DesiredReference(SPN, connector_id(SP), "Renamed in the config", "Sites"),
            DesiredReference("contoso_Outlook", connector_id(OUTLOOK), "Outlook Contoso"),
        ),
        {SPN: "c-sp-alice", "contoso_Outlook": Selector(owner="svc-flows@contoso.com")},
    )
    report = dr.detect_drift(cfg, "dev", base, state_of(base))
    assert not report.has_drift


def test_managed_but_no_longer_declared_is_still_watched() -> None:
    base = live()
    cfg = config((DesiredReference("contoso_Outlook", connector_id(OUTLOOK), "Outlook Contoso"),))
    report = dr.detect_drift(cfg, "dev", base, state_of(base))
    assert not report.has_drift
    assert any("contoso_SharePoint is managed by connref but no longer declared" in n for n in report.notes)
    changed = replace_ref(base, SPN, connection="c-sp-alice")
    assert dr.detect_drift(cfg, "dev", changed, state_of(base)).reference(SPN) is not None


# --------------------------------------------------------------------------- no state: live vs config

NO_STATE_CASES: list[tuple[str, Callable[[LiveEnvironment], LiveEnvironment], dict[str, tuple[str, ...]]]] = [
    ("matches-config", lambda e: e, {}),
    (
        "bound-elsewhere",
        lambda e: replace_ref(e, SPN, connection="c-sp-alice", **BY_ALICE),
        {SPN: (dr.REBOUND,)},
    ),
    ("renamed", lambda e: replace_ref(e, SPN, display_name="Z"), {SPN: (dr.RENAMED,)}),
    (
        "owner-not-service-account",
        lambda e: replace_ref(e, SPN, owner_id="u-bob"),
        {SPN: (dr.OWNER_CHANGED,)},
    ),
    (
        "selector-not-matched",
        lambda e: replace_ref(
            dataclasses.replace(
                e,
                connections=(*e.connections, conn("c-ol-alice", "Outlook A", connector=OUTLOOK, owner=ALICE)),
            ),
            "contoso_Outlook",
            connection="c-ol-alice",
        ),
        {"contoso_Outlook": (dr.REBOUND,)},
    ),
    ("not-created-yet", lambda e: drop_ref(e, SPN), {}),
]


@pytest.mark.parametrize(
    ("change", "expected"), [c[1:] for c in NO_STATE_CASES], ids=[c[0] for c in NO_STATE_CASES]
)
def test_drift_against_config_without_state(
    change: Callable[[LiveEnvironment], LiveEnvironment], expected: dict[str, tuple[str, ...]]
) -> None:
    report = dr.detect_drift(config(), "dev", change(live()), None)
    assert {r.logical_name: r.kinds for r in report.references} == expected
    assert all(r.baseline == dr.CONFIG for r in report.references)
    assert report.state_serial is None


def test_selector_mismatch_names_the_selector() -> None:
    e = dataclasses.replace(
        live(), connections=(*DRIFT_CONNS, conn("c-ol-alice", "Outlook A", connector=OUTLOOK, owner=ALICE))
    )
    e = replace_ref(e, "contoso_Outlook", connection="c-ol-alice", **BY_ALICE)
    rd = dr.detect_drift(config(), "dev", e, None).reference("contoso_Outlook")
    assert rd is not None
    item = rd.item(dr.REBOUND)
    assert (
        item is not None
        and "{owner: svc-flows@contoso.com}" in item.message
        and "alice@contoso.com" in item.message
    )
    assert (rd.changed_by, rd.changed_on) == ("alice@contoso.com", WHEN)


def test_not_created_yet_is_a_note() -> None:
    report = dr.detect_drift(config(), "dev", drop_ref(live(), SPN), None)
    assert any(SPN in n and "not in the environment yet" in n for n in report.notes)


# --------------------------------------------------------------------------- renderers


def _drifted() -> list[dr.DriftReport]:
    base = live()
    extra = ref("contoso_x_8f4b0", "Pipe | name", connector=OUTLOOK, created_by="u-bob", created_on=WHEN)
    now = replace_ref(base, SPN, connection="c-sp-alice", display_name="My | SharePoint", **BY_ALICE)
    now = drop_ref(now, "contoso_Outlook")
    now = dataclasses.replace(now, references=(*now.references, extra))
    dev = dr.detect_drift(config(), "dev", now, state_of(base))
    test = dr.detect_drift(config(), "dev", base, state_of(base))
    test = dataclasses.replace(test, environment="test")
    return [dev, test]


def test_text_report() -> None:
    text = render_text(_drifted())
    assert (
        "Environment dev (state serial 1, last apply 2024-06-01T08:00:00Z): 3 of 3 references changed" in text
    )
    assert (
        "~ contoso_SharePoint [compared with the state] "
        "(last modified by alice@contoso.com on 2024-06-03T09:15:00Z)" in text
    )
    assert 'rebound: from "SharePoint svc" (owner svc-flows@contoso.com, c-sp-svc) (last applied) to' in text
    assert "- contoso_Outlook" in text and "deleted:" in text
    assert "+ contoso_x_8f4b0" in text and "unmanaged:" in text
    assert "Environment test" in text and "no drift" in text
    assert text.rstrip().endswith("Drift: 3 references changed outside connref in 1 environment (dev).")
    assert render_text([_drifted()[1]]).rstrip().endswith("No drift in 1 environment.")


def test_json_report_is_versioned_and_complete() -> None:
    doc = json.loads(render_json(_drifted()))
    assert doc["format_version"] == dr.FORMAT_VERSION and doc["has_drift"] is True
    dev = doc["environments"][0]
    assert dev["counts"] == {"deleted": 1, "rebound": 1, "renamed": 1, "unmanaged": 1}
    sp = next(r for r in dev["references"] if r["logical_name"] == SPN)
    assert sp["kinds"] == ["rebound", "renamed"] and sp["changed_by"] == "alice@contoso.com"
    assert sp["field_diff"]["connection"] == {"before": "c-sp-svc", "after": "c-sp-alice"}
    assert doc["environments"][1]["has_drift"] is False


def test_markdown_report_escapes_cells() -> None:
    md = render_markdown(_drifted())
    assert md.startswith("<!-- connref:drift -->\n## connref drift: drift found")
    assert "| Reference | Change | Expected | Live | By | When |" in md
    assert "My \\| SharePoint" in md  # a pipe in a value does not break the table
    row = next(line for line in md.splitlines() if line.startswith(f"| `{SPN}` | rebound"))
    assert "alice@&#8203;contoso.com | 2024-06-03T09:15:00Z |" in row  # no mailto link made of it
    assert row.count(" | ") == 5  # six cells
    assert "### test: no drift" in md
    assert render_markdown([_drifted()[1]]).startswith("<!-- connref:drift -->\n## connref drift: no drift")


def test_state_reference_type_is_what_drift_reads() -> None:
    # A state written by an earlier connref may lack owner_upn etc.: drift only needs the core fields.
    m = ManagedReference(
        SPN, "id-contoso_sharepoint", "SharePoint Contoso", connector_id(SP), "c-sp-svc", "Sites", "u-svc"
    )
    st = EnvState("dev", "5f0a3c56-8a47-4b1f-9a43-6c3f3f8f0a11", 3, frozen_map({SPN: m}))
    report = dr.detect_drift(config(), "dev", live(), st)
    assert not report.has_drift and report.state_serial == 3


# ------------------------------------------------------------------ a managed (downstream) environment


def managed_live() -> LiveEnvironment:
    """``live()`` as a pipeline's managed import leaves it: the solution and its references managed."""
    base = live()
    sol = dataclasses.replace(base.solution, managed=True) if base.solution else None
    return dataclasses.replace(base, solution=sol,
                               references=tuple(dataclasses.replace(r, managed=True) for r in base.references))


def test_managed_names_come_with_the_solution_and_are_noted_not_drift() -> None:
    base = managed_live()
    # A new version of the solution renamed it: no drift of connref's; the config's name differs: a note.
    now = replace_ref(base, SPN, display_name="SharePoint (v2)", description="Sites v2", **BY_ALICE)
    report = dr.detect_drift(config(), "dev", now, state_of(base))
    assert not report.has_drift and dr.exit_code([report]) == 0
    noted = [n for n in report.notes if "CR320" in n or "change it in development" in n]
    assert len(noted) == 2 and all(SPN in n for n in noted)
    # Never applied (compared with the config): the same.
    report = dr.detect_drift(config(), "dev", now, None)
    assert report.reference(SPN) is None


def test_an_unmanaged_layer_over_a_managed_reference_is_drift() -> None:
    base = managed_live()
    sp = next(r for r in base.references if r.logical_name == SPN)
    now = dataclasses.replace(replace_ref(base, SPN, display_name="Edited in prod", **BY_ALICE),
                              layers=frozen_map({sp.id.lower(): ("connectionreferencedisplayname",)}))
    report = dr.detect_drift(config(), "dev", now, state_of(base))
    rd = report.reference(SPN)
    assert rd is not None and rd.kinds == (dr.CUSTOMIZED,) and rd.changed_by == "alice@contoso.com"
    item = rd.item(dr.CUSTOMIZED)
    assert item is not None and item.problem is not None and item.problem.code == "CR321"
    assert "display name" in item.message and "Remove active customizations" in item.problem.fix
    assert dr.exit_code([report]) == 2
    doc = json.loads(render_json([report]))
    assert doc["environments"][0]["references"][0]["items"][0]["code"] == "CR321"
    assert "customized (unmanaged layer)" in render_text([report])
    # A layer that only holds the binding and the owner is what binding leaves: no drift.
    bound = dataclasses.replace(base, layers=frozen_map({sp.id.lower(): ("connectionid", "_ownerid_value")}))
    assert not dr.detect_drift(config(), "dev", bound, state_of(base)).has_drift


def test_a_rebind_in_a_managed_environment_is_still_drift() -> None:
    base = managed_live()
    now = replace_ref(base, SPN, connection="c-sp-alice", **BY_ALICE)
    rd = dr.detect_drift(config(), "dev", now, state_of(base)).reference(SPN)
    assert rd is not None and rd.kinds == (dr.REBOUND,)


def test_an_undeclared_reference_of_the_managed_solution_says_to_declare_it() -> None:
    base = managed_live()
    extra = dataclasses.replace(ref("contoso_sharedoffice365_8f4b0", "O-8f4b0", connector=OUTLOOK), managed=True)
    report = dr.detect_drift(config(), "dev", dataclasses.replace(base, references=(*base.references, extra)),
                             state_of(base))
    rd = report.reference("contoso_sharedoffice365_8f4b0")
    assert rd is not None and rd.kinds == (dr.UNMANAGED,)
    assert rd.items[0].message.startswith("came with the managed solution") and "declare it" in rd.items[0].message


def test_a_reference_the_config_replaces_is_a_note_not_drift() -> None:
    base = live()
    dev_copy = ref("contoso_sharedoffice365_8f4b0", "Office 365 Outlook-8f4b0", connector=OUTLOOK,
                   connection="c-ol-svc", created_by="u-bob", created_on=WHEN)
    env = dataclasses.replace(base, references=(*base.references, dev_copy))
    kept = dataclasses.replace(desired("contoso_Outlook", "Outlook Contoso", connector=OUTLOOK),
                               replaces=("contoso_sharedoffice365_8f4b0",))
    cfg = config((desired(SPN, "SharePoint Contoso", description="Sites"), kept))
    report = dr.detect_drift(cfg, "dev", env, state_of(base))
    assert not report.has_drift and dr.exit_code([report]) == 0
    assert any(n.startswith("contoso_sharedoffice365_8f4b0 is replaced by contoso_Outlook") for n in report.notes)
    # Without the replaces: it appeared.
    assert dr.detect_drift(config(), "dev", env, state_of(base)).reference("contoso_sharedoffice365_8f4b0")


def test_a_managed_reference_in_an_unmanaged_solution_came_with_another_solution() -> None:
    base = live()
    assert base.solution is not None and not base.solution.managed
    extra = dataclasses.replace(ref("contoso_sharedoffice365_8f4b0", "O-8f4b0", connector=OUTLOOK), managed=True)
    report = dr.detect_drift(config(), "dev", dataclasses.replace(base, references=(*base.references, extra)),
                             state_of(base))
    rd = report.reference("contoso_sharedoffice365_8f4b0")
    assert rd is not None
    assert rd.items[0].message.startswith("came with a managed solution (it is in ")
