"""The pure planner: given live X and desired Y, expect operations Z (no HTTP: live data built by hand)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
from builders import (
    C_MAKER,
    C_OUTLOOK,
    C_SVC,
    C_SVC2,
    MAKER1,
    MAKER2,
    OL_REF,
    OUTLOOK,
    PLANNING,
    SP,
    SP_REF,
    SVC,
    desired,
)

from reconciler.domain.model import (
    Config,
    LiveConnection,
    LiveEnvironment,
    LiveFlow,
    LiveUser,
    Permission,
    Selector,
    connector_id,
)
from reconciler.domain.patterns import is_guid
from reconciler.errors import PlanError
from reconciler.plan import render
from reconciler.plan.ops import (
    AddToSolution,
    ApplyFacts,
    ConnectionInfo,
    CreateReference,
    DeleteReference,
    EnvironmentPlan,
    FieldChange,
    FlowInfo,
    OwnerInfo,
    Plan,
    ShareConnection,
    UpdateReference,
)
from reconciler.plan.planner import PlanProblems, create_id, live_fingerprint, plan, plan_environment

conn, ref, live, config = PLANNING.conn, PLANNING.ref, PLANNING.live, PLANNING.config


def plan_dev(cfg: Config, lv: LiveEnvironment, **kw: Any) -> Any:
    return plan_environment(cfg, cfg.environments["dev"], lv, **kw)


def summary(ops: Sequence[Any]) -> list[tuple[Any, ...]]:
    """A compact, comparable view of ops: (kind, name, {field: (before, after)}) for updates."""
    out: list[tuple[Any, ...]] = []
    for op in ops:
        if isinstance(op, UpdateReference):
            out.append((op.kind, op.logical_name, {c.field: (c.before, c.after) for c in op.changes}))
        elif isinstance(op, CreateReference):
            out.append((op.kind, op.logical_name, op.connection.name if op.connection else None))
        else:
            out.append((op.kind, op.logical_name))
    return out


# --------------------------------------------------------------------------- table: expected operations

CASES: list[tuple[str, Config, LiveEnvironment, list[tuple[Any, ...]]]] = [
    (
        "create bound by name",
        config([SP_REF], {"contoso_SharePoint": C_SVC.name}),
        live([], [C_SVC]),
        [("create", "contoso_SharePoint", C_SVC.name)],
    ),
    (
        "create unbound",
        config([SP_REF]),
        live([], [C_SVC]),
        [("create", "contoso_SharePoint", None)],
    ),
    (
        "rename",
        config([SP_REF]),
        live([ref("contoso_SharePoint", "SharePoint old")]),
        [
            (
                "update",
                "contoso_SharePoint",
                {"display_name": ("SharePoint old", "SharePoint ContosoConnections")},
            )
        ],
    ),
    (
        "description update",
        config([desired("contoso_SharePoint", "SharePoint ContosoConnections", description="Invoices")]),
        live([ref("contoso_SharePoint", "SharePoint ContosoConnections", description="old text")]),
        [("update", "contoso_SharePoint", {"description": ("old text", "Invoices")})],
    ),
    (
        "null and empty description are equal",
        config([SP_REF]),
        live([ref("contoso_SharePoint", "SharePoint ContosoConnections", description="")]),
        [],
    ),
    (
        "rebind by name",
        config([SP_REF], {"contoso_SharePoint": C_SVC.name}),
        live(
            [ref("contoso_SharePoint", "SharePoint ContosoConnections", connection=C_MAKER.name)],
            [C_SVC, C_MAKER],
        ),
        [("update", "contoso_SharePoint", {"connection": (C_MAKER.name, C_SVC.name)})],
    ),
    (
        "rebind by selector on owner",
        config([SP_REF], {"contoso_SharePoint": Selector(owner="SVC-Flows@contoso.com")}),
        live(
            [ref("contoso_SharePoint", "SharePoint ContosoConnections", connection=C_MAKER.name)],
            [C_SVC, C_MAKER],
        ),
        [("update", "contoso_SharePoint", {"connection": (C_MAKER.name, C_SVC.name)})],
    ),
    (
        "selector with display_name picks one of the owner's connections",
        config(
            [SP_REF],
            {"contoso_SharePoint": Selector(owner="svc-flows@contoso.com", display_name="sharepoint svc")},
        ),
        live([ref("contoso_SharePoint", "SharePoint ContosoConnections")], [C_SVC, C_SVC2]),
        [("update", "contoso_SharePoint", {"connection": (None, C_SVC.name)})],
    ),
    (
        "no changes",
        config([SP_REF, OL_REF], {"contoso_SharePoint": C_SVC.name, "contoso_Outlook": C_OUTLOOK.name}),
        live(
            [
                ref("contoso_SharePoint", "SharePoint ContosoConnections", connection=C_SVC.name),
                ref(
                    "contoso_Outlook",
                    "Outlook ContosoConnections",
                    connector=OUTLOOK,
                    connection=C_OUTLOOK.name,
                ),
            ],
            [C_SVC, C_OUTLOOK],
        ),
        [],
    ),
    (
        "connector compared by its tail, ignoring case",
        config(
            [
                desired(
                    "contoso_SharePoint", "SharePoint ContosoConnections", connector="shared_SharePointOnline"
                )
            ]
        ),
        live([ref("contoso_SharePoint", "SharePoint ContosoConnections")]),
        [],
    ),
    (
        "connection name compared ignoring case",
        config([SP_REF], {"contoso_SharePoint": C_SVC.name.upper()}),
        live([ref("contoso_SharePoint", "SharePoint ContosoConnections", connection=C_SVC.name)], [C_SVC]),
        [],
    ),
    (
        "add to solution",
        config([SP_REF]),
        live([ref("contoso_SharePoint", "SharePoint ContosoConnections", in_solution=False)]),
        [("add_to_solution", "contoso_SharePoint")],
    ),
    (
        "add to solution and rename",
        config([SP_REF]),
        live([ref("contoso_SharePoint", "Old", in_solution=False)]),
        [
            ("add_to_solution", "contoso_SharePoint"),
            ("update", "contoso_SharePoint", {"display_name": ("Old", "SharePoint ContosoConnections")}),
        ],
    ),
    (
        "ownership change to the service account",
        config([SP_REF]),
        live([ref("contoso_SharePoint", "SharePoint ContosoConnections", owner=MAKER1)]),
        [("update", "contoso_SharePoint", {"owner": ("maker1@contoso.com", "svc-flows@contoso.com")})],
    ),
    (
        "no service account: owner left alone",
        config([SP_REF], service_account=None),
        live(
            [ref("contoso_SharePoint", "SharePoint ContosoConnections", owner=MAKER1)],
            writer=None,
            caller=MAKER1,
        ),
        [],
    ),
    (
        "unbound in the config: the live binding is left alone",
        config([SP_REF]),
        live(
            [ref("contoso_SharePoint", "SharePoint ContosoConnections", connection=C_MAKER.name)], [C_MAKER]
        ),
        [],
    ),
    (
        "undeclared live references are left alone",
        config([SP_REF]),
        live(
            [
                ref("contoso_SharePoint", "SharePoint ContosoConnections"),
                ref("contoso_sharedsharepointonline_8f4b0", "SharePoint maker-8f4b0", owner=MAKER1),
            ]
        ),
        [],
    ),
    (
        "ops ordered by logical name",
        config(
            [desired("contoso_Zeta", "Z"), desired("contoso_alpha", "A"), desired("contoso_Mid", "M")],
        ),
        live([ref("contoso_Mid", "old")]),
        [
            ("create", "contoso_alpha", None),
            ("update", "contoso_Mid", {"display_name": ("old", "M")}),
            ("create", "contoso_Zeta", None),
        ],
    ),
]


@pytest.mark.parametrize(("cfg", "lv", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_plan_environment(cfg: Config, lv: LiveEnvironment, expected: list[tuple[Any, ...]]) -> None:
    assert summary(plan_dev(cfg, lv).ops) == expected


# --------------------------------------------------------------------------- full operations


def test_create_carries_binding_owner_and_snapshot() -> None:
    cfg = config([SP_REF], {"contoso_SharePoint": C_SVC.name})
    ep = plan_dev(cfg, live([], [C_SVC]))
    assert ep.ops == (
        CreateReference(
            environment="dev",
            logical_name="contoso_SharePoint",
            reference_id=create_id(cfg.environments["dev"].url, "contoso_SharePoint", ep.fingerprint),
            reason="declared in the config and not found in environment dev",
            after={
                "logical_name": "contoso_SharePoint",
                "connector": connector_id(SP),
                "display_name": "SharePoint ContosoConnections",
                "description": None,
                "connection": C_SVC.name,
                "owner": "svc-flows@contoso.com",
                "in_solution": True,
            },
            solution="ContosoConnections",
            connector=connector_id(SP),
            display_name="SharePoint ContosoConnections",
            connection=ConnectionInfo(C_SVC.name, "SharePoint svc", "svc-flows@contoso.com", "Connected"),
            owner=OwnerInfo("u-svc", "svc-flows@contoso.com"),
        ),
    )
    assert ep.ops[0].actions == ("create",)
    assert ep.ops[0].etag is None
    assert ep.counts.to_dict() == {"add": 1, "change": 0, "destroy": 0}


def test_rebind_describes_old_and_new_connection_and_carries_etag() -> None:
    cfg = config([SP_REF], {"contoso_SharePoint": Selector(owner="svc-flows@contoso.com")})
    lref = ref(
        "contoso_SharePoint", "SharePoint ContosoConnections", connection=C_MAKER.name, etag='W/"4242"'
    )
    (op,) = plan_dev(cfg, live([lref], [C_SVC, C_MAKER])).ops
    assert isinstance(op, UpdateReference)
    assert op.reference_id == "id-contoso_sharepoint"
    assert op.etag == 'W/"4242"'
    assert op.old_connection == ConnectionInfo(
        C_MAKER.name, "SharePoint maker1", "maker1@contoso.com", "Connected"
    )
    assert op.new_connection == ConnectionInfo(
        C_SVC.name, "SharePoint svc", "svc-flows@contoso.com", "Connected"
    )
    assert op.before["connection"] == C_MAKER.name and op.after["connection"] == C_SVC.name
    assert op.new_values() == {"connection": C_SVC.name}
    assert op.reason == "the config binds another connection (selected by {owner: svc-flows@contoso.com})"


def test_rebind_from_a_connection_that_no_longer_exists() -> None:
    cfg = config([SP_REF], {"contoso_SharePoint": C_SVC.name})
    (op,) = plan_dev(
        cfg, live([ref("contoso_SharePoint", SP_REF.display_name, connection="gone")], [C_SVC])
    ).ops
    assert isinstance(op, UpdateReference)
    assert op.old_connection == ConnectionInfo("gone", status="not found")


def test_owner_change_writes_the_service_account_systemuserid() -> None:
    lref = ref("contoso_SharePoint", "Old name", owner=MAKER1)
    (op,) = plan_dev(config([SP_REF]), live([lref])).ops
    assert isinstance(op, UpdateReference)
    assert op.changes == (
        FieldChange("display_name", "Old name", "SharePoint ContosoConnections"),
        FieldChange("owner", "maker1@contoso.com", "svc-flows@contoso.com"),
    )
    assert op.old_owner == OwnerInfo("u-maker1", "maker1@contoso.com")
    assert op.new_owner == OwnerInfo("u-svc", "svc-flows@contoso.com")
    assert op.new_values() == {"display_name": "SharePoint ContosoConnections", "owner": "u-svc"}
    assert op.after["owner"] == "svc-flows@contoso.com" and op.before["owner"] == "maker1@contoso.com"


def test_case_mismatch_keeps_live_name_and_warns() -> None:
    cfg = config([desired("contoso_SharePoint", "New")])
    ep = plan_dev(cfg, live([ref("contoso_sharepoint", "Old")]))
    (op,) = ep.ops
    assert op.logical_name == "contoso_sharepoint"
    assert ep.warnings == (
        "dev: contoso_SharePoint is contoso_sharepoint in the environment; logical names can't change, "
        "so contoso_sharepoint is kept (spell it so in the config)",
    )


def test_add_to_solution_is_one_change() -> None:
    ep = plan_dev(config([SP_REF]), live([ref("contoso_SharePoint", "Old", in_solution=False)]))
    add = ep.ops[0]
    assert isinstance(add, AddToSolution)
    assert add.actions == ("update",)
    assert add.solution == "ContosoConnections"
    assert add.before["in_solution"] is False and add.after["in_solution"] is True
    assert ep.counts.to_dict() == {"add": 0, "change": 1, "destroy": 0}


def test_writer_falls_back_to_the_caller_without_service_account() -> None:
    cfg = config([SP_REF], {"contoso_SharePoint": C_MAKER.name}, service_account=None)
    ep = plan_dev(cfg, live([], [C_MAKER], writer=None, caller=MAKER1))
    (op,) = ep.ops
    assert isinstance(op, CreateReference)
    assert op.owner is None  # the caller owns what it creates; no assignment needed


# --------------------------------------------------------------------------- prune


FLOW = LiveFlow("flow-1", "Invoice approval", 1, "u-maker1", ("contoso_Old",))


def test_prune_deletes_managed_undeclared_unused_references_only() -> None:
    lv = live(
        [
            ref("contoso_SharePoint", SP_REF.display_name),
            ref("contoso_Gone", "Gone", connection="x1"),
            ref("contoso_Old", "Old"),
            ref("contoso_NeverManaged", "Someone else's"),
        ],
        flows=[FLOW],
    )
    managed = {"contoso_sharepoint", "contoso_gone", "contoso_old"}
    ep = plan_dev(config([SP_REF]), lv, prune=True, managed=managed)
    (op,) = ep.ops
    assert isinstance(op, DeleteReference)
    assert (op.logical_name, op.reference_id, op.etag, op.flows) == (
        "contoso_Gone",
        "id-contoso_gone",
        'W/"100"',
        (),
    )
    assert op.actions == ("delete",) and op.before["connection"] == "x1"
    assert ep.warnings == (
        'dev: contoso_Old: no longer declared but not deleted: flow "Invoice approval" (On, owner '
        'maker1@contoso.com) uses it; bind them to another reference, or remove them, before pruning it',
    )
    assert ep.counts.to_dict() == {"add": 0, "change": 0, "destroy": 1}


def test_prune_off_by_default() -> None:
    lv = live([ref("contoso_Gone", "Gone")])
    assert plan_dev(config([]), lv, managed={"contoso_gone"}).ops == ()


def test_plan_uses_config_prune_and_managed_sets() -> None:
    lv = live([ref("contoso_Gone", "Gone")])
    p = plan(config([], prune=True), {"dev": lv}, managed={"dev": ["contoso_Gone"]})
    assert summary(p.ops) == [("delete", "contoso_Gone")]
    assert plan(config([], prune=True), {"dev": lv}, prune=False, managed={"dev": ["contoso_Gone"]}).ops == ()


def test_flow_info_is_carried() -> None:
    assert FlowInfo("flow-1", "Invoice approval").to_dict() == {
        "id": "flow-1", "name": "Invoice approval", "kind": "flow", "state": None, "owner": None}


# --------------------------------------------------------------------------- errors


def problems_of(cfg: Config, lv: LiveEnvironment) -> list[str]:
    with pytest.raises(PlanError) as info:
        plan_dev(cfg, lv)
    assert isinstance(info.value, PlanProblems)
    return info.value.problems


def test_missing_connection() -> None:
    cfg = config([SP_REF], {"contoso_SharePoint": "deadbeef"})
    assert problems_of(cfg, live([], [C_SVC])) == [
        "dev: contoso_SharePoint: connection deadbeef not found in environment dev; bind it to an existing "
        "connection (connref import shows the current ones) or create the connection first"
    ]


def test_missing_connection_when_only_the_callers_connections_were_listed() -> None:
    cfg = config([SP_REF], {"contoso_SharePoint": "deadbeef"})
    lv = replace(live([], [C_SVC]), connections_scope="user")
    (problem,) = problems_of(cfg, lv)
    assert problem.startswith("dev: contoso_SharePoint: connection deadbeef not found in environment dev (")
    assert "New-PowerAppManagementApp" in problem


def test_connection_for_another_connector() -> None:
    cfg = config([SP_REF], {"contoso_SharePoint": C_OUTLOOK.name})
    assert problems_of(cfg, live([], [C_OUTLOOK])) == [
        f'dev: contoso_SharePoint: connection "Outlook svc" (owner svc-flows@contoso.com, {C_OUTLOOK.name}) '
        "is for connector shared_office365, but the reference is for shared_sharepointonline; bind it to a "
        "shared_sharepointonline connection"
    ]


def test_broken_connection() -> None:
    broken = conn("e" * 32, "SharePoint expired", status="Error")
    cfg = config([SP_REF], {"contoso_SharePoint": broken.name})
    assert problems_of(cfg, live([ref("contoso_SharePoint", SP_REF.display_name)], [broken])) == [
        'dev: contoso_SharePoint: connection "SharePoint expired" (owner svc-flows@contoso.com, '
        f"{broken.name}) has status Error, not Connected; repair it (sign in again) in the maker portal or "
        "bind another connection"
    ]


def test_ambiguous_selector_lists_candidates() -> None:
    cfg = config([SP_REF], {"contoso_SharePoint": Selector(owner="svc-flows@contoso.com")})
    (line,) = problems_of(cfg, live([], [C_SVC, C_SVC2, C_MAKER]))
    assert line == (
        "dev: contoso_SharePoint: selector {owner: svc-flows@contoso.com} matches 2 shared_sharepointonline "
        "connections; add display_name to pick one, or bind by name. Candidates: "
        f'"SharePoint svc" (owner svc-flows@contoso.com, {C_SVC.name}); '
        f'"SharePoint svc archive" (owner svc-flows@contoso.com, {C_SVC2.name})'
    )


def test_empty_selector_match_lists_the_connectors_connections() -> None:
    cfg = config([SP_REF], {"contoso_SharePoint": Selector(owner="nobody@contoso.com", display_name="X")})
    (line,) = problems_of(cfg, live([], [C_MAKER, C_OUTLOOK]))
    assert line == (
        "dev: contoso_SharePoint: selector {owner: nobody@contoso.com, display_name: X} matches no "
        "shared_sharepointonline connection in environment dev. "
        f'shared_sharepointonline connections: "SharePoint maker1" (owner maker1@contoso.com, {C_MAKER.name}); '
        "change the selector, or bind by connection name"
    )


def test_selector_owner_from_connection_owner_name_when_user_unknown() -> None:
    stranger = LiveConnection(
        "f" * 32,
        connector_id(SP),
        "SP ext",
        "Connected",
        "oid-ext",
        "ext@fabrikam.com",
        (Permission("oid-svc", "CanView"),),
    )
    cfg = config([SP_REF], {"contoso_SharePoint": Selector(owner="EXT@fabrikam.com")})
    (op,) = plan_dev(cfg, live([], [stranger])).ops
    assert isinstance(op, CreateReference) and op.connection is not None
    assert op.connection.owner == "ext@fabrikam.com"


def test_connection_not_usable_by_the_writer() -> None:
    private = conn("a" * 32, "SharePoint maker2", owner=MAKER2)
    cfg = config([SP_REF], {"contoso_SharePoint": private.name})
    assert problems_of(cfg, live([], [private])) == [
        f'dev: contoso_SharePoint: connection "SharePoint maker2" (owner maker2@contoso.com, {private.name}) '
        "is owned by maker2@contoso.com and not shared with svc-flows@contoso.com, which writes the binding; "
        "share it with a security group svc-flows@contoso.com belongs to (CanView), or sign in as "
        "svc-flows@contoso.com and create the connection, then bind that one (connections can be explicitly shared "
        "with users only when they represent a service principal; docs/service-account.md)"
    ]


def test_connector_of_a_reference_cannot_change() -> None:
    cfg = config([desired("contoso_SharePoint", "SP", connector=OUTLOOK)])
    assert problems_of(cfg, live([ref("contoso_SharePoint", "SP")])) == [
        "dev: contoso_SharePoint: the live reference is for connector shared_sharepointonline but the config "
        "declares shared_office365; the connector of a reference can't change: declare a new logical name "
        "for the new connector"
    ]


def test_every_problem_is_reported_at_once() -> None:
    broken = conn("e" * 32, "SharePoint expired", status="Error", owner=MAKER2)
    cfg = config(
        [SP_REF, OL_REF, desired("contoso_Teams", "Teams", connector="shared_teams")],
        {
            "contoso_SharePoint": broken.name,
            "contoso_Outlook": "missing",
            "contoso_Teams": Selector(owner="x@y"),
        },
    )
    lines = problems_of(cfg, live([], [broken]))
    # Sorted by reference in config order; the broken connection gives two problems (status and access).
    assert [line.split(": ")[1] for line in lines] == [
        "contoso_SharePoint",
        "contoso_SharePoint",
        "contoso_Outlook",
        "contoso_Teams",
    ]
    assert all(line.startswith("dev: ") for line in lines)


def test_plan_collects_problems_across_environments() -> None:
    cfg = config([SP_REF], {"contoso_SharePoint": "missing"}, envs=("dev", "prod"))
    with pytest.raises(PlanProblems) as info:
        plan(cfg, {"dev": live([], []), "prod": live([], [], name="prod")})
    assert [p.split(":")[0] for p in info.value.problems] == ["dev", "prod"]
    assert str(info.value).startswith("The plan cannot be made: 2 problems to fix first:\n  - dev: ")


def test_service_account_not_found_or_disabled() -> None:
    # The binding is usable by the caller, but writes must not silently fall back to it.
    cfg = config([SP_REF], {"contoso_SharePoint": C_MAKER.name})
    assert problems_of(cfg, live([], [C_MAKER], writer=None, caller=MAKER1)) == [
        "dev: service account svc-flows@contoso.com not found among the users of environment dev; add it as "
        "a user (application users for service principals) or fix service_account"
    ]
    disabled = LiveUser("u-svc", "oid-svc", "svc-flows@contoso.com", disabled=True)
    assert problems_of(config([SP_REF]), live([], writer=disabled)) == [
        "dev: service account svc-flows@contoso.com is disabled in environment dev; enable the user in this "
        "environment, or fix service_account"
    ]


def test_solution_missing() -> None:
    assert problems_of(config([SP_REF]), live([], solution=None)) == [
        "dev: solution ContosoConnections not found in environment dev; create it, or fix solution: in the "
        "config (its unique name, not its display name)"
    ]


def test_duplicate_live_names_ignoring_case() -> None:
    lv = live([ref("contoso_SharePoint", "a"), ref("contoso_sharepoint", "b")])
    assert problems_of(config([SP_REF]), lv) == [
        "dev: contoso_SharePoint: several live references match it ignoring case "
        "(contoso_SharePoint, contoso_sharepoint); remove the extras"
    ]


def test_plan_rejects_unknown_environment() -> None:
    with pytest.raises(PlanError, match="not in the config: qa"):
        plan(config([SP_REF]), {"qa": live(name="qa")})


# --------------------------------------------------------------------------- plan and fingerprints


def test_plan_in_config_order_with_digest_and_time() -> None:
    cfg = config([SP_REF], envs=("dev", "prod"))
    p = plan(cfg, {"prod": live(name="prod"), "dev": live()}, created_at="2026-03-04T10:15:00Z")
    assert [e.environment for e in p.environments] == ["dev", "prod"]
    assert p.created_at == "2026-03-04T10:15:00Z"
    assert p.config_digest.startswith("sha256:")
    assert p.counts.to_dict() == {"add": 2, "change": 0, "destroy": 0}
    again = plan(cfg, {"prod": live(name="prod"), "dev": live()}, created_at="2026-03-04T10:15:00Z")
    assert again == p
    other = plan(config([desired("contoso_SharePoint", "changed")], envs=("dev", "prod")), {"dev": live()})
    assert other.config_digest != p.config_digest


def test_fingerprint_moves_with_etags_and_ignores_order() -> None:
    a = ref("contoso_A", "A", etag='W/"1"')
    b = ref("contoso_B", "B", etag='W/"2"')
    assert live_fingerprint(live([a, b], [C_SVC])) == live_fingerprint(live([b, a], [C_SVC]))
    moved = ref("contoso_B", "B", etag='W/"3"')
    assert live_fingerprint(live([a, moved], [C_SVC])) != live_fingerprint(live([a, b], [C_SVC]))
    broken = conn(C_SVC.name, "SharePoint svc", status="Error")
    assert live_fingerprint(live([a, b], [broken])) != live_fingerprint(live([a, b], [C_SVC]))


def test_caller_needs_the_delegate_privilege_to_act_as_the_service_account() -> None:
    lv = live([ref("contoso_SharePoint", SP_REF.display_name)], caller=MAKER1)
    assert problems_of(config([SP_REF]), lv) == [
        "dev: maker1@contoso.com may not act as svc-flows@contoso.com; give it the Delegate security role "
        "(privilege prvActOnBehalfOfAnotherUser) in environment dev"
    ]
    allowed = dataclasses.replace(lv, caller_can_impersonate=True)
    assert plan_dev(config([SP_REF]), allowed).ops == ()
    # Signed in as the service account itself: nothing to impersonate.
    assert plan_dev(config([SP_REF]), dataclasses.replace(lv, caller=SVC)).ops == ()


def test_a_create_carries_a_row_id_decided_by_the_environment_the_name_and_what_was_read() -> None:
    """docs/dataverse.md §3.12: the same world plans the same id (a saved plan re-derived at apply time
    names the same row); another name, another environment or anything read that moved gives another."""
    cfg = config([SP_REF], {"contoso_SharePoint": C_SVC.name})
    first = plan_dev(cfg, live([], [C_SVC])).ops[0]
    assert first.reference_id is not None and is_guid(first.reference_id)
    assert plan_dev(cfg, live([], [C_SVC])).ops[0].reference_id == first.reference_id
    other = replace(C_SVC, status="Error")
    moved = plan_dev(config([SP_REF], {}), live([], [C_SVC, replace(other, name="c-other")]))
    assert moved.ops[0].reference_id != first.reference_id
    assert create_id("https://a.crm.dynamics.com", "contoso_X", "sha256:1") != create_id(
        "https://b.crm.dynamics.com", "contoso_X", "sha256:1")
    assert create_id("https://a.crm.dynamics.com/", "CONTOSO_x", "sha256:1") == create_id(
        "https://A.crm.dynamics.com", "contoso_X", "sha256:1")


def test_the_plan_carries_what_apply_needs() -> None:
    # Writing as the service account on behalf of the signed-in maker: its object id goes with the plan,
    # with the environment's component type, so apply reads nothing to decide what to write.
    lv = replace(live([ref("contoso_SharePoint", "old")], caller=MAKER1), caller_can_impersonate=True)
    assert plan_dev(config([SP_REF]), lv).facts == ApplyFacts(writer_object_id="oid-svc", component_type=10150)
    # Signed in as the service account itself, or no service account: nobody to impersonate.
    assert plan_dev(config([SP_REF]), replace(lv, caller=SVC)).facts == ApplyFacts(None, 10150)
    no_sa = replace(lv, writer=MAKER1)
    assert plan_dev(config([SP_REF], service_account=None), no_sa).facts == ApplyFacts(None, 10150)


# --------------------------------------------------------------------------- access (docs/dataverse.md §4.8-§4.10)


def test_a_caller_scope_listing_is_said_in_the_plan() -> None:
    cfg = config([SP_REF], {"contoso_SharePoint": C_SVC.name})
    lv = replace(live([], [C_SVC]), connections_scope="user",
                 connections_refusals=("GET .../scopes/admin/...: HTTP 403 Forbidden",))
    env_plan = plan_dev(cfg, lv)
    assert [op.kind for op in env_plan.ops] == ["create"]
    (warning,) = env_plan.warnings
    assert warning.startswith("dev: connref could list only the connections")
    assert "HTTP 403 Forbidden" in warning and "hidden" in warning and "New-PowerAppManagementApp" in warning
    assert plan_dev(cfg, live([], [C_SVC])).warnings == ()
    # The header of the environment says it too, in every rendering, and a saved plan keeps it.
    assert env_plan.connections_scope == "user"
    assert plan_dev(cfg, live([], [C_SVC])).connections_scope == "admin"
    whole = Plan(environments=(env_plan,), solution="ContosoConnections", created_at="2026-12-02T00:00:00Z",
                 config_digest="")
    header = render.render_text(whole, color=False).splitlines()[:2]
    assert header[1].startswith("  Connections: listed in the caller's scope only"), header
    assert "**Connections:** listed in the caller's scope only" in render.render_markdown(whole)
    assert render.render_json(whole)["environments"][0]["connections_scope"] == "user"
    assert EnvironmentPlan.from_dict(env_plan.to_dict()).connections_scope == "user"
    assert EnvironmentPlan.from_dict({**env_plan.to_dict(), "connections_scope": None}).connections_scope == "admin"


def test_grant_access_plans_one_share_per_connection_before_the_binding() -> None:
    private = replace(conn("a" * 32, "SharePoint maker2", owner=MAKER2), shares=())
    two = [SP_REF, desired("contoso_SharePoint2", "SP two")]
    cfg = config(two, {"contoso_SharePoint": private.name, "contoso_SharePoint2": private.name})
    cfg = replace(cfg, environments={"dev": replace(cfg.environments["dev"], grant_access=True)})
    env_plan = plan_dev(cfg, live([], [private]))
    assert [op.kind for op in env_plan.ops] == ["share", "create", "create"]
    share = env_plan.ops[0]
    assert isinstance(share, ShareConnection)
    assert (share.connection.name, share.principal_id, share.principal_type, share.role) == (
        private.name, "oid-svc", "User", "CanView")
    assert share.describe().startswith('share "SharePoint maker2"') and share.describe().endswith("(CanView)")
    # The writer is a person: the plan warns the platform may refuse (docs/dataverse.md §4.9).
    assert any("is a person" in w for w in env_plan.warnings)
    # Without grant_access the same binding is refused (CR210).
    no_grant = config(two, {"contoso_SharePoint": private.name, "contoso_SharePoint2": private.name})
    assert len(problems_of(no_grant, live([], [private]))) == 2


def test_grant_access_on_one_binding_only() -> None:
    private = replace(conn("a" * 32, "SharePoint maker2", owner=MAKER2), shares=())
    cfg = config([SP_REF], {"contoso_SharePoint": private.name})
    cfg = replace(cfg, environments={"dev": replace(cfg.environments["dev"],
                                                    grant_bindings=frozenset({"contoso_sharepoint"}))})
    assert [op.kind for op in plan_dev(cfg, live([], [private])).ops] == ["share", "create"]
    # Access already there (shared with the writer): nothing to grant.
    usable = replace(private, shares=(Permission("oid-svc", "CanView", "User"),))
    assert [op.kind for op in plan_dev(cfg, live([], [usable])).ops] == ["create"]
