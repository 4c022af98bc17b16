"""Renderers: exact text, JSON and markdown for hand-built plans (no planner, no HTTP)."""

from __future__ import annotations

import json
import re

from builders import C_MAKER, C_SVC, MAKER1, PLANNING, SP_REF

from reconciler.domain.model import connector_id
from reconciler.domain.rules import problem
from reconciler.errors import PlanError
from reconciler.plan.ops import (
    AddToSolution,
    ConnectionInfo,
    CreateReference,
    DeleteReference,
    EnvironmentPlan,
    FieldChange,
    FlowInfo,
    OwnerInfo,
    Plan,
    UpdateReference,
)
from reconciler.plan.planner import PlanProblems, plan
from reconciler.plan.render import (
    GITHUB_COMMENT_LIMIT,
    MARKDOWN_LIMIT,
    PLAN_MARKER,
    render_json,
    render_json_error,
    render_markdown,
    render_markdown_error,
    render_text,
)

SP = connector_id("shared_sharepointonline")
SVC_CONN = ConnectionInfo(
    "c0ffee01c0ffee01c0ffee01c0ffee01", "SharePoint svc", "svc-flows@contoso.com", "Connected"
)
MAKER_CONN = ConnectionInfo(
    "beef0002beef0002beef0002beef0002", "SharePoint maker1", "maker1@contoso.com", "Connected"
)

CREATE = CreateReference(
    environment="dev",
    logical_name="contoso_Outlook",
    reason="declared in the config and not found in environment dev",
    after={"logical_name": "contoso_Outlook", "connection": None},
    solution="ContosoConnections",
    connector=connector_id("shared_office365"),
    display_name="Outlook ContosoConnections",
    description="Mail for invoices",
    owner=OwnerInfo("u-svc", "svc-flows@contoso.com"),
)
UPDATE = UpdateReference(
    environment="dev",
    logical_name="contoso_SharePoint",
    reference_id="id-sp",
    etag='W/"7"',
    reason="the config binds another connection (named in the config); owned by maker1@contoso.com, "
    "not the service account",
    before={"display_name": "SP", "connection": MAKER_CONN.name, "owner": "maker1@contoso.com"},
    after={"display_name": "SharePoint", "connection": SVC_CONN.name, "owner": "svc-flows@contoso.com"},
    changes=(
        FieldChange("display_name", "SP", "SharePoint"),
        FieldChange("connection", MAKER_CONN.name, SVC_CONN.name),
        FieldChange("owner", "maker1@contoso.com", "svc-flows@contoso.com"),
    ),
    old_connection=MAKER_CONN,
    new_connection=SVC_CONN,
    old_owner=OwnerInfo("u-maker1", "maker1@contoso.com"),
    new_owner=OwnerInfo("u-svc", "svc-flows@contoso.com"),
)
ADD = AddToSolution(
    environment="dev",
    logical_name="contoso_Teams",
    reference_id="id-teams",
    etag='W/"9"',
    reason="declared in the config and found in environment dev outside solution ContosoConnections",
    before={"in_solution": False},
    after={"in_solution": True},
    solution="ContosoConnections",
)
DELETE = DeleteReference(
    environment="prod",
    logical_name="contoso_Old",
    reference_id="id-old",
    etag='W/"3"',
    reason="managed by connref, no longer declared in the config, and prune is on",
    before={"display_name": "Old | one", "connection": None},
    flows=(FlowInfo("f1", "Nightly sync"),),
)

PLAN = Plan(
    environments=(
        EnvironmentPlan(
            "dev",
            (UPDATE, ADD, CREATE),
            ("dev: contoso_SharePoint is contoso_sharepoint in the environment",),
            "sha256:aa",
        ),
        EnvironmentPlan("prod", (DELETE,), (), "sha256:bb"),
        EnvironmentPlan("test", (), (), "sha256:cc"),
    ),
    solution="ContosoConnections",
    created_at="2026-03-04T10:15:00Z",
    config_digest="sha256:cfg",
)
EMPTY = Plan(
    (EnvironmentPlan("dev", (), (), "sha256:aa"),), "ContosoConnections", "2026-03-04T10:15:00Z", "sha256:c"
)

EXPECTED_TEXT = """\
Environment dev (solution ContosoConnections, unmanaged):

  # contoso_SharePoint will be updated in place
  ~ contoso_SharePoint
      ~ display_name: "SP" -> "SharePoint"
      ~ connection: "SharePoint maker1" (owner maker1@contoso.com, beef0002beef0002beef0002beef0002) \
-> "SharePoint svc" (owner svc-flows@contoso.com, c0ffee01c0ffee01c0ffee01c0ffee01)
      ~ owner: maker1@contoso.com -> svc-flows@contoso.com
      reason: the config binds another connection (named in the config); owned by maker1@contoso.com, \
not the service account

  # contoso_Teams will be added to solution ContosoConnections
  ~ contoso_Teams
      ~ solution: (none) -> ContosoConnections
      reason: declared in the config and found in environment dev outside solution ContosoConnections

  # contoso_Outlook will be created
  + contoso_Outlook
      connector: shared_office365
      display_name: "Outlook ContosoConnections"
      description: "Mail for invoices"
      connection: (unbound)
      owner: svc-flows@contoso.com
      reason: declared in the config and not found in environment dev

  Warning: dev: contoso_SharePoint is contoso_sharepoint in the environment

Environment prod (solution ContosoConnections, unmanaged):

  # contoso_Old will be destroyed
  - contoso_Old
      display_name: "Old | one"
      connection: (unbound)
      used by: flow "Nightly sync"
      reason: managed by connref, no longer declared in the config, and prune is on

Environment test (solution ContosoConnections, unmanaged):
  No changes.

Plan: 1 to add, 2 to change, 1 to destroy.
"""


def test_text_exact() -> None:
    assert render_text(PLAN, color=False) == EXPECTED_TEXT


def test_text_no_changes() -> None:
    assert render_text(EMPTY, color=False) == (
        "Environment dev (solution ContosoConnections, unmanaged):\n"
        "  No changes.\n"
        "\n"
        "No changes. The connection references match the configuration.\n"
    )


def test_colour_only_when_asked() -> None:
    coloured = render_text(PLAN, color=True)
    assert "\x1b[32m+\x1b[0m contoso_Outlook" in coloured
    assert "\x1b[33m~\x1b[0m contoso_SharePoint" in coloured
    assert "\x1b[31m-\x1b[0m contoso_Old" in coloured
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == EXPECTED_TEXT
    assert "\x1b" not in render_text(PLAN, color=False)


def test_json_document() -> None:
    doc = render_json(PLAN)
    json.dumps(doc)  # plain JSON data only
    assert doc["format_version"] == "1.0"
    assert (doc["applyable"], doc["errored"], doc["errors"]) == (True, False, [])
    assert doc["summary"] == {"add": 1, "change": 2, "destroy": 1}
    assert [e["name"] for e in doc["environments"]] == ["dev", "prod", "test"]
    assert doc["environments"][0]["fingerprint"] == "sha256:aa"
    assert [(c["address"], c["actions"]) for c in doc["changes"]] == [
        ("dev.contoso_SharePoint", ["update"]),
        ("dev.contoso_Teams", ["update"]),
        ("dev.contoso_Outlook", ["create"]),
        ("prod.contoso_Old", ["delete"]),
    ]
    update, _, create, delete = doc["changes"]
    assert update["environment"] == "dev" and update["etag"] == 'W/"7"'
    assert (
        update["before"]["connection"] == MAKER_CONN.name and update["after"]["connection"] == SVC_CONN.name
    )
    assert update["new_connection"] == {
        "name": SVC_CONN.name,
        "display_name": "SharePoint svc",
        "owner": "svc-flows@contoso.com",
        "status": "Connected",
    }
    assert update["changes"][2] == {
        "field": "owner",
        "before": "maker1@contoso.com",
        "after": "svc-flows@contoso.com",
    }
    assert create["before"] is None and create["after"]["logical_name"] == "contoso_Outlook"
    assert delete["after"] is None and delete["flows"] == [
        {"id": "f1", "name": "Nightly sync", "kind": "flow", "state": None, "owner": None}]
    assert delete["reason"] == "managed by connref, no longer declared in the config, and prune is on"
    assert doc["warnings"] == ["dev: contoso_SharePoint is contoso_sharepoint in the environment"]


def test_json_no_changes_is_not_applyable() -> None:
    doc = render_json(EMPTY)
    assert (doc["applyable"], doc["changes"], doc["summary"]) == (
        False,
        [],
        {"add": 0, "change": 0, "destroy": 0},
    )


def test_json_for_a_failed_plan() -> None:
    problems = [problem("CR204", "x", "fix x", environment="dev", subject="a"),
                problem("CR310", "y", "fix y", environment="prod")]
    doc = render_json_error(PlanProblems(problems))
    assert (doc["errored"], doc["applyable"], doc["errors"]) == (True, False, ["dev: a: x; fix x", "prod: y; fix y"])
    assert [(d["code"], d["severity"], d["environment"], d["subject"], d["fix"]) for d in doc["diagnostics"]] == [
        ("CR204", "error", "dev", "a", "fix x"), ("CR310", "error", "prod", None, "fix y")]
    assert render_json_error(PlanError("solution missing"))["errors"] == ["solution missing"]
    assert render_json_error(PlanError("solution missing"))["diagnostics"] == []


def test_markdown_exact() -> None:
    small = Plan(
        (EnvironmentPlan("prod", (DELETE,), ("prod: a <b> warning",), "sha256:bb"),),
        "ContosoConnections",
        "2026-03-04T10:15:00Z",
        "sha256:c",
    )
    assert render_markdown(small) == (
        "<!-- connref:plan -->\n"
        "### connref plan\n"
        "\n"
        "**Plan: 0 to add, 0 to change, 1 to destroy.**\n"
        "\n"
        "#### Environment `prod` (solution `ContosoConnections`, unmanaged)\n"
        "\n"
        "| | Reference | Changes | Reason |\n"
        "|---|---|---|---|\n"
        '| `-` delete | `contoso_Old` | display_name: "Old \\| one"<br>connection: (unbound)'
        '<br>used by: flow "Nightly sync" | managed by connref, no longer declared in the config, '
        "and prune is on |\n"
        "\n"
        "> **Warning:** prod: a &lt;b&gt; warning\n"
    )


def test_markdown_update_and_no_changes() -> None:
    md = render_markdown(PLAN)
    assert (
        '| `~` update | `contoso_SharePoint` | display_name: "SP" → "SharePoint"<br>connection: '
        '"SharePoint maker1" (owner maker1@&#8203;contoso.com, beef0002beef0002beef0002beef0002) → '
        '"SharePoint svc" (owner svc-flows@&#8203;contoso.com, c0ffee01c0ffee01c0ffee01c0ffee01)<br>owner: '
        "maker1@&#8203;contoso.com → svc-flows@&#8203;contoso.com |" in md
    )
    assert "#### Environment `test` (solution `ContosoConnections`, unmanaged)\n\nNo changes.\n" in md
    assert render_markdown(EMPTY).startswith(
        "<!-- connref:plan -->\n### connref plan\n\n"
        "**No changes. The connection references match the configuration.**\n"
    )


def test_planned_rebind_renders_by_display_name_and_owner() -> None:
    """The planner's output goes through the text renderer: connections are named for people."""
    cfg = PLANNING.config([SP_REF], {"contoso_SharePoint": C_SVC.name})
    lv = PLANNING.live(
        [PLANNING.ref("contoso_SharePoint", SP_REF.display_name, connection=C_MAKER.name, owner=MAKER1)],
        [C_SVC, C_MAKER],
    )
    text = render_text(plan(cfg, {"dev": lv}), color=False)
    assert (
        '      ~ connection: "SharePoint maker1" (owner maker1@contoso.com, '
        'beef0002beef0002beef0002beef0002) -> "SharePoint svc" (owner svc-flows@contoso.com, '
        "c0ffee01c0ffee01c0ffee01c0ffee01)\n"
    ) in text
    assert "      ~ owner: maker1@contoso.com -> svc-flows@contoso.com\n" in text
    assert text.endswith("Plan: 0 to add, 1 to change, 0 to destroy.\n")


# --------------------------------------------------------------------------- markdown size


def _long_plan(n: int, description: str = "d" * 1500) -> Plan:
    """``n`` creates in dev and in prod, each with a long description, and a long warning."""
    envs = []
    for env in ("dev", "prod"):
        ops = tuple(
            CreateReference(
                environment=env,
                logical_name=f"contoso_Ref{i:05d}",
                reason="declared in the config and not found in environment " + env,
                solution="ContosoConnections",
                connector=SP,
                display_name=f"SharePoint <{i}> | ContosoConnections",
                description=description,
            )
            for i in range(n)
        )
        envs.append(EnvironmentPlan(env, ops, (f"{env}: " + "w" * 5000,), "sha256:aa"))
    return Plan(tuple(envs), "ContosoConnections", "2026-03-04T10:15:00Z", "sha256:c")


def test_long_plan_markdown_is_folded_under_githubs_comment_limit() -> None:
    md = render_markdown(_long_plan(3000), full_plan_hint="connref show plan.json")
    assert len(md) < GITHUB_COMMENT_LIMIT
    assert md.startswith(PLAN_MARKER + "\n### connref plan\n\n**Plan: 6000 to add, 0 to change, 0 to destroy.**")
    assert "| `dev` | 3000 to add, 0 to change, 0 to destroy |" in md
    assert md.count("<details><summary>") == 2 and md.count("</details>") == 2
    hidden = [int(m) for m in re.findall(r"… and (\d+) more changes in `(?:dev|prod)`", md)]
    shown = len(re.findall(r"^\| `\+` create \| `contoso_Ref\d{5}`", md, flags=re.M))
    assert shown > 10 and shown + sum(hidden) == 6000  # every change is either shown or counted
    assert "connref show plan.json" in md
    # Clipped cells never leave a broken entity or tag behind.
    for row in md.splitlines():
        if row.startswith("| `+` create"):
            assert row.endswith(" |")
            assert "&" not in row.replace("&amp;", "").replace("&lt;", "").replace("&gt;", "")
            assert "<" not in row.replace("<br>", "")


def test_folded_plan_without_a_saved_plan_points_to_what_exists() -> None:
    # plan --markdown without --out: no plan file was saved, so the markdown must not send the reader to one.
    md = render_markdown(_long_plan(3000))
    assert len(md) < GITHUB_COMMENT_LIMIT and "<details>" in md
    assert "saved plan file" not in md
    assert "The full plan is in the output of the `connref plan` run that wrote this (e.g. the job log)" in md
    assert "`connref plan --out FILE` saves it for `connref show FILE`" in md
    hidden = re.findall(r"… and \d+ more changes in `(?:dev|prod)` not shown here\. The full plan is in the output", md)
    assert len(hidden) == 2


def test_a_plan_that_fits_is_not_folded() -> None:
    md = render_markdown(_long_plan(5, description="short"))
    assert len(md) < MARKDOWN_LIMIT and "<details>" not in md and "more change" not in md
    assert md.count("| `+` create |") == 10


def test_failed_plan_markdown_lists_every_problem_with_the_marker() -> None:
    md = render_markdown_error(PlanProblems([problem("CR204", "<bad> | x", "f", environment="dev", subject="a"),
                                             problem("CR310", "y", "g", environment="prod", subject="b")]))
    assert md.startswith(PLAN_MARKER + "\n### connref plan\n\n**The plan could not be made.**")
    assert "- dev: a: &lt;bad&gt; \\| x; f\n- prod: b: y; g\n" in md
    huge = render_markdown_error(PlanProblems([problem("CR204", "x" * 3000, "f", environment="dev", subject=f"r{i}")
                                               for i in range(100)]))
    assert len(huge) < GITHUB_COMMENT_LIMIT and "more." in huge
