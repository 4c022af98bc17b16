"""Lint over hand-built configs and live environments: every code fires when it should and only then,
silencing works, output is stable, and the exit code follows the severities."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping

import pytest
from builders import (
    ADOPTION,
    C_ALICE_SP,
    C_BOB_SP,
    C_SVC_OUTLOOK,
    C_SVC_SP,
    OUTLOOK,
    SA,
    SVC,
    TEAMS,
    desired,
    flow,
    messy_live,
    reversed_order,
)

from reconciler.adoption.lint import (
    RULES,
    Finding,
    exit_code,
    lint,
    render_findings_json,
    render_findings_text,
)
from reconciler.domain.model import Config, LiveConnection, LiveEnvironment, Selector
from reconciler.domain.naming import NamingTemplate, random_suffix

config, conn, live, ref = ADOPTION.config, ADOPTION.conn, ADOPTION.live, ADOPTION.ref


def codes(findings: list[Finding]) -> set[tuple[str, str | None, str | None]]:
    return {(f.code, f.environment, f.subject) for f in findings}


def run(cfg: Config, lives: Mapping[str, LiveEnvironment] | None = None) -> set[tuple[str, str | None, str | None]]:
    return codes(lint(cfg, lives))


GOOD_SP = desired("contoso_SharePoint", "SharePoint ContosoFlows")
GOOD_OUTLOOK = desired("contoso_Outlook", "Office 365 Outlook ContosoFlows", connector=OUTLOOK)

# ------------------------------------------------------------------- config only

CONFIG_CASES = [
    pytest.param(
        config(
            [GOOD_SP, GOOD_OUTLOOK],
            {"contoso_SharePoint": "c1", "contoso_Outlook": Selector(SA)},
            naming="{connector} {solution}",
        ),
        set(),
        id="clean",
    ),
    pytest.param(
        config(
            [desired("contoso_SharePoint", "SP stuff")],
            {"contoso_SharePoint": "c1"},
            naming="{connector} {solution}",
        ),
        {("CR101", None, "contoso_SharePoint")},
        id="naming-policy",
    ),
    pytest.param(
        config(
            [desired("contoso_SharePoint", "SharePoint ContosoFlows Invoices")],
            {"contoso_SharePoint": "c1"},
            naming="{connector} {solution} {purpose}",
        ),
        set(),
        id="naming-purpose-ok",
    ),
    pytest.param(
        config([GOOD_SP], {"contoso_SharePoint": "c1"}, naming="{connector} {solution} {purpose}"),
        {("CR101", None, "contoso_SharePoint")},
        id="naming-purpose-missing",
    ),
    pytest.param(
        config(
            [desired("contoso_SharePoint", "contoso SharePoint")],
            {"contoso_SharePoint": "c1"},
            naming="{prefix} {connector}",
        ),
        set(),
        id="naming-prefix",
    ),
    pytest.param(
        config([GOOD_SP], {"contoso_SharePoint": "c1"}, naming="{connector} {team}"),
        {("CR100", None, "naming")},
        id="naming-unknown-placeholder",
    ),
    pytest.param(
        config([GOOD_SP], {"contoso_SharePoint": "c1"}, naming="{connector"),
        {("CR100", None, "naming")},
        id="naming-unbalanced",
    ),
    pytest.param(
        config(
            [desired("contoso_sharedsharepointonline_8f4b0", "SharePoint ContosoFlows")],
            {"contoso_sharedsharepointonline_8f4b0": "c1"},
        ),
        {("CR102", None, "contoso_sharedsharepointonline_8f4b0")},
        id="suffix-logical",
    ),
    pytest.param(
        config(
            [desired("contoso_SharePoint", "SharePoint ContosoFlows-f0a68")], {"contoso_SharePoint": "c1"}
        ),
        {("CR102", None, "contoso_SharePoint")},
        id="suffix-display",
    ),
    pytest.param(
        config([desired("contoso_decaf", "Decaf faced", connector="shared_sql")], {"contoso_decaf": "c1"}),
        set(),
        id="hex-word-not-a-suffix",
    ),
    pytest.param(
        config(
            [GOOD_SP, desired("contoso_SharePoint2", "SharePoint Two")],
            {"contoso_SharePoint": "c1", "contoso_SharePoint2": "c2"},
        ),
        {("CR103", None, "contoso_SharePoint"), ("CR103", None, "contoso_SharePoint2")},
        id="duplicate-connector",
    ),
    pytest.param(
        config([GOOD_SP, GOOD_OUTLOOK], {"contoso_SharePoint": "c1"}, envs=("dev", "prod")),
        set(),  # a binding left out keeps what the reference has live: only the environment can tell
        id="binding-left-out-of-config",
    ),
]


@pytest.mark.parametrize(("cfg", "expected"), CONFIG_CASES)
def test_config_only(cfg: Config, expected: set[tuple[str, str | None, str]]) -> None:
    assert run(cfg) == expected


def test_a_binding_left_out_is_judged_against_the_environment_only() -> None:
    """docs/config.md lets a config leave a reference out of bindings (it keeps its live connection):
    the config alone has nothing to report, the environment says CR202 only when there is no connection."""
    cfg = config([GOOD_SP], {}, envs=("dev", "prod"))
    assert lint(cfg) == []
    bound = live([ref("contoso_SharePoint", "SharePoint ContosoFlows", connection=C_SVC_SP.name)], [C_SVC_SP],
                 flows=[flow("F", "contoso_SharePoint")])
    unbound = live([ref("contoso_SharePoint", "SharePoint ContosoFlows")], [C_SVC_SP],
                   flows=[flow("F", "contoso_SharePoint")])
    assert "CR202" not in {f.code for f in lint(cfg, {"dev": bound})}
    found = [f for f in lint(cfg, {"dev": unbound}) if f.code == "CR202"]
    assert [(f.environment, f.subject, f.severity) for f in found] == [("dev", "contoso_SharePoint", "error")]
    assert "environments.dev.bindings" in found[0].fix


def test_naming_hint_gives_the_expected_name() -> None:
    cfg = config(
        [desired("contoso_SharePoint", "SP stuff")],
        {"contoso_SharePoint": "c1"},
        naming="{connector} {solution}",
    )
    (f,) = lint(cfg)
    assert f.hint == "rename the display name to 'SharePoint ContosoFlows'"
    assert f.severity == "error"


def test_naming_template_placeholders() -> None:
    t = NamingTemplate("{connector_name}-{solution}")
    assert t.check("sharepointonline-Contoso", "contoso_x", "shared_sharepointonline", "Contoso") is None
    assert t.check("sharepoint-Contoso", "contoso_x", "shared_sharepointonline", "Contoso") is not None
    # unknown connectors fall back to their name without shared_
    t2 = NamingTemplate("{connector} {solution}")
    assert (
        t2.check("salesforce S", "p_x", "/providers/Microsoft.PowerApps/apis/shared_salesforce", "S") is None
    )
    # literal braces
    assert (
        NamingTemplate("{{{connector}}}").check("{SharePoint}", "p_x", "shared_sharepointonline", "S") is None
    )


@pytest.mark.parametrize(
    ("name", "suffix"),
    [
        ("crdcb_sharedcommondataserviceforapps_109ea", "109ea"),
        ("Microsoft To-Do (Business) Solution-f0a68", "f0a68"),
        ("SharePoint 8f4b0", "8f4b0"),
        ("contoso_SharePoint", None),
        ("contoso_faced", None),  # hex letters only: a word, not a random suffix
        ("contoso_abc12x", None),
        ("contoso_1a2b3c", None),  # six characters
        ("", None),
        (None, None),
    ],
)
def test_random_suffix(name: str | None, suffix: str | None) -> None:
    assert random_suffix(name) == suffix


# ------------------------------------------------------------------- with live environments


def test_messy_environment_every_finding() -> None:
    found = lint(config(), {"dev": messy_live()})
    assert codes(found) == {
        ("CR102", "dev", "contoso_sharedsharepointonline_8f4b0"),
        ("CR102", "dev", "contoso_sharedsharepointonline_30e7d"),
        ("CR103", "dev", "contoso_sharedsharepointonline_8f4b0"),
        ("CR103", "dev", "contoso_sharedsharepointonline_30e7d"),
        ("CR103", "dev", "contoso_Spare"),
        ("CR201", "dev", "contoso_sharedsharepointonline_8f4b0"),
        ("CR201", "dev", "contoso_sharedsharepointonline_30e7d"),
        ("CR203", "dev", "contoso_Teams"),
        ("CR202", "dev", "contoso_Approvals"),
        ("CR207", "dev", "contoso_Spare"),
        ("CR208", "dev", "contoso_Teams"),
    }
    # one finding per reference, naming both its logical and its display name
    suffixed = next(f for f in found if f.code == "CR102" and (f.subject or "").endswith("8f4b0"))
    assert "logical name 'contoso_sharedsharepointonline_8f4b0' ends with '8f4b0'" in suffixed.message
    assert "display name 'SharePoint ContosoFlows-8f4b0' ends with '8f4b0'" in suffixed.message
    # the reference outside the solution is not linted
    assert not any(f.subject == "contoso_sharedoffice365_77aa1" for f in found)
    assert exit_code(found) == 2


def test_duplicate_message_lists_the_flows_using_each() -> None:
    found = lint(config(), {"dev": messy_live()})
    dup = next(f for f in found if f.code == "CR103" and f.subject == "contoso_Spare")
    assert "one of 3 references for SharePoint" in dup.message
    assert "contoso_sharedsharepointonline_8f4b0: Invoice approval" in dup.message
    assert "contoso_sharedsharepointonline_30e7d: Leave request" in dup.message
    assert "contoso_Spare: no flow" in dup.message


def test_personal_connection_message_says_whether_shared() -> None:
    found = {f.subject: f for f in lint(config(), {"dev": messy_live()}) if f.code == "CR201"}
    alice = found["contoso_sharedsharepointonline_8f4b0"]
    bob = found["contoso_sharedsharepointonline_30e7d"]
    assert "alice@contoso.com" in alice.message and "shared with the service account" in alice.message
    assert "bob@contoso.com" in bob.message and "cannot even use it" in bob.message
    assert SA in bob.hint


def test_declared_binding_is_checked_instead_of_the_live_one() -> None:
    # The team rebinds the per-developer reference to the service account's connection in the config:
    # lint judges the binding the config asks for, not the personal one live still has.
    cfg = config(
        [desired("contoso_sharedsharepointonline_8f4b0", "SharePoint ContosoFlows")],
        {"contoso_sharedsharepointonline_8f4b0": Selector(SA, "SharePoint svc")},
    )
    found = lint(cfg, {"dev": messy_live()})
    assert ("CR201", "dev", "contoso_sharedsharepointonline_8f4b0") not in codes(found)
    # the problem it has live is still reported, as context: apply fixes it
    pending = next(f for f in found if f.code == "CR209")
    assert (pending.severity, pending.subject) == ("info", "contoso_sharedsharepointonline_8f4b0")
    assert "CR201 personal-connection" in pending.message and "SharePoint svc" in pending.message
    # ...and its config-level name finding has no environment
    assert ("CR102", None, "contoso_sharedsharepointonline_8f4b0") in codes(found)


@pytest.mark.parametrize(
    ("binding", "connections", "expected"),
    [
        pytest.param(Selector(SA), [C_ALICE_SP], {"CR206"}, id="selector-none"),
        pytest.param(
            Selector(SA),
            [C_SVC_SP, conn("ffff0000ffff0000ffff0000ffff0000", "SharePoint 2")],
            {"CR206"},
            id="selector-several",
        ),
        pytest.param("nosuchconnection", [C_SVC_SP], {"CR204"}, id="name-not-found"),
        pytest.param(C_SVC_OUTLOOK.name, [C_SVC_OUTLOOK], {"CR205"}, id="connector-mismatch"),
        pytest.param(C_ALICE_SP.name, [C_ALICE_SP], {"CR201"}, id="personal-shared-with-the-writer"),
        # plan would refuse it: the service account, which writes, may not use Bob's connection
        pytest.param(C_BOB_SP.name, [C_BOB_SP], {"CR201", "CR210"}, id="personal-not-usable"),
        pytest.param("c-broken", [conn("c-broken", status="Error")], {"CR203"}, id="not-connected"),
        pytest.param(C_SVC_SP.name, [C_SVC_SP], set(), id="good-name"),
        pytest.param(Selector(SA.upper()), [C_SVC_SP, C_ALICE_SP], set(), id="good-selector"),
        pytest.param(Selector(SA, "sharepoint SVC"), [C_SVC_SP], set(), id="selector-display-name-any-case"),
    ],
)
def test_declared_binding_checks(
    binding: str | Selector, connections: list[LiveConnection], expected: set[str]
) -> None:
    cfg = config([GOOD_SP], {"contoso_SharePoint": binding})
    env = live(
        [ref("contoso_SharePoint", "SharePoint ContosoFlows")],
        connections,
        flows=[flow("F", "contoso_SharePoint")],
    )
    found = {f.code for f in lint(cfg, {"dev": env})}
    assert found == expected


def test_live_reference_bound_to_a_missing_connection() -> None:
    env = live(
        [ref("contoso_SharePoint", "SharePoint ContosoFlows", connection="gone")],
        [C_SVC_SP],
        flows=[flow("F", "contoso_SharePoint")],
    )
    (f,) = lint(config(), {"dev": env})
    assert (f.code, f.subject, f.severity) == ("CR204", "contoso_SharePoint", "error")
    assert "gone" in f.message


def test_declared_not_yet_live_is_only_checked_for_its_binding() -> None:
    cfg = config([GOOD_SP], {"contoso_SharePoint": C_SVC_SP.name})
    assert lint(cfg, {"dev": live([], [C_SVC_SP])}) == []  # no CR207: it does not exist yet
    cfg2 = config([GOOD_SP], {})
    assert run(cfg2, {"dev": live([], [C_SVC_SP])}) == {("CR202", "dev", "contoso_SharePoint")}


def test_no_service_account_is_reported_once_and_skips_owner_checks() -> None:
    found = lint(config(service_account=None), {"dev": messy_live()})
    assert ("CR200", "dev", "dev") in codes(found)
    assert sum(f.code == "CR200" for f in found) == 1
    assert not any(f.code == "CR201" for f in found)
    assert next(f for f in found if f.code == "CR200").severity == "info"


def test_service_account_given_as_object_id() -> None:
    found = lint(config(service_account=SVC.object_id), {"dev": messy_live()})
    assert {f.subject for f in found if f.code == "CR201"} == {
        "contoso_sharedsharepointonline_8f4b0",
        "contoso_sharedsharepointonline_30e7d",
    }


def test_system_solutions_do_not_count_as_a_second_solution() -> None:
    env = live(
        [ref("contoso_SharePoint", "SharePoint ContosoFlows", connection=C_SVC_SP.name)],
        [C_SVC_SP],
        flows=[flow("F", "contoso_sharepoint", solutions=("ContosoFlows", "Default", "Active"))],
    )
    assert lint(config(), {"dev": env}) == []  # also: flow references match without case


def test_environment_missing_from_config_still_lints_live() -> None:
    found = lint(config(envs=("prod",)), {"dev": messy_live()})
    assert ("CR203", "dev", "contoso_Teams") in codes(found)
    assert ("CR200", "dev", "dev") in codes(found)


# ------------------------------------------------------------------- silencing


@pytest.mark.parametrize(
    "ignore", [["CR102", "CR103"], ["random-suffix", "duplicate-connector"], ["cr102", "Duplicate-Connector"]]
)
def test_silencing(ignore: list[str]) -> None:
    base = lint(config(), {"dev": messy_live()})
    quiet = lint(config(lint_ignore=ignore), {"dev": messy_live()})
    assert any(f.code in ("CR102", "CR103") for f in base)
    assert not any(f.code in ("CR102", "CR103") for f in quiet)
    assert [f for f in base if f.code not in ("CR102", "CR103")] == quiet


def test_silencing_every_error_code_gives_exit_0() -> None:
    errors = [code for code, rule in RULES.items() if rule.severity == "error"]
    found = lint(config(lint_ignore=errors), {"dev": messy_live()})
    assert found and exit_code(found) == 0


# ------------------------------------------------------------------- output


def test_rules_are_stable() -> None:
    assert {c: (r.name, r.severity) for c, r in RULES.items()} == {
        "CR100": ("naming-template", "error"),
        "CR101": ("naming-policy", "error"),
        "CR102": ("random-suffix", "warning"),
        "CR103": ("duplicate-connector", "warning"),
        "CR104": ("replaced-reference", "info"),
        "CR200": ("no-service-account", "info"),
        "CR201": ("personal-connection", "warning"),
        "CR202": ("unbound", "error"),
        "CR203": ("connection-not-connected", "error"),
        "CR204": ("connection-not-found", "error"),
        "CR205": ("connector-mismatch", "error"),
        "CR206": ("binding-unresolved", "error"),
        "CR207": ("unused-reference", "warning"),
        "CR208": ("multi-solution-reference", "info"),
        "CR209": ("fixed-by-apply", "info"),
        "CR210": ("connection-not-usable", "error"),
    }


def test_every_code_is_documented() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "adoption.md").read_text(encoding="utf-8")
    for code, rule in RULES.items():
        assert code in doc and rule.name in doc, code


def test_order_is_deterministic() -> None:
    env = messy_live()
    shuffled = reversed_order(env)
    a = lint(config(), {"dev": env})
    b = lint(config(), {"dev": shuffled})
    assert render_findings_text(a) == render_findings_text(b)
    # config-level findings first, then by environment and severity
    mixed = lint(config([desired("contoso_x_8f4b0", "X")], {}), {"dev": messy_live()})
    envs = [f.environment for f in mixed]
    assert envs[0] is None and None not in envs[1:]
    ranks = [{"error": 0, "warning": 1, "info": 2}[f.severity] for f in mixed if f.environment == "dev"]
    assert ranks == sorted(ranks)


def test_render_text() -> None:
    found = lint(
        config(),
        {
            "dev": live(
                [ref("contoso_Teams", "T", connector=TEAMS, connection="x")],
                [conn("x", "Teams svc", connector=TEAMS, status="Error")],
                flows=[flow("F", "contoso_Teams")],
            )
        },
    )
    text = render_findings_text(found)
    assert text.splitlines()[0] == "error   CR203 connection-not-connected  dev: contoso_Teams"
    assert "has status Error, not Connected" in text
    assert "        fix: repair it (sign in again)" in text
    assert text.endswith("1 finding: 1 error, 0 warnings, 0 info.\n")
    assert render_findings_text([]) == "No findings.\n"


def test_render_json() -> None:
    found = lint(config(), {"dev": messy_live()})
    doc = json.loads(render_findings_json(found))
    assert doc["format_version"] == "1.0"
    assert doc["exit_code"] == 2
    assert doc["summary"] == {
        "error": sum(f.severity == "error" for f in found),
        "warning": sum(f.severity == "warning" for f in found),
        "info": sum(f.severity == "info" for f in found),
    }
    first = doc["findings"][0]
    assert set(first) == {"code", "name", "severity", "environment", "subject", "message", "fix", "hint"}
    assert first["hint"] == first["fix"]  # the first format's name for the fix, kept for its consumers
    assert [d["code"] for d in doc["findings"]] == [f.code for f in found]
    assert json.loads(render_findings_json([]))["exit_code"] == 0


def test_exit_code_follows_severity() -> None:
    warn = Finding("CR102", "warning", "m", "h", None, "x")
    info = Finding("CR208", "info", "m", "h", "dev", "x")
    err = Finding("CR202", "error", "m", "h", "dev", "x")
    assert exit_code([]) == 0
    assert exit_code([warn, info]) == 0
    assert exit_code([warn, err]) == 2


# ------------------------------------------------------------------- per-developer references: the policy

SP_8F4B0, SP_30E7D = "contoso_sharedsharepointonline_8f4b0", "contoso_sharedsharepointonline_30e7d"


def per_developer_config(policy: str, *, replaces: tuple[str, ...] = ()) -> Config:
    kept = dataclasses.replace(desired(SP_30E7D, "SharePoint ContosoFlows"), replaces=replaces)
    refs = [kept] if replaces else [kept, desired(SP_8F4B0, "SharePoint ContosoFlows Approvals")]
    bound = {r.logical_name: C_SVC_SP.name for r in refs}
    return dataclasses.replace(config(refs, bound), per_developer_policy=policy)


def per_developer(findings: list[Finding]) -> dict[tuple[str, str | None, str | None], str]:
    """The per-developer findings (CR103, and CR102 on a logical name) with their severities."""
    return {(f.code, f.environment, f.subject): f.severity for f in findings
            if f.code == "CR103" or (f.code == "CR102" and "logical name" in f.message)}


@pytest.mark.parametrize(("policy", "severity"), [("warn", "warning"), ("error", "error"), ("allow", None)])
def test_the_per_developer_policy_sets_how_duplicates_are_reported(policy: str, severity: str | None) -> None:
    found = lint(per_developer_config(policy), {"dev": messy_live()})
    expected = {("CR102", None, SP_8F4B0), ("CR102", None, SP_30E7D), ("CR103", "dev", SP_8F4B0),
                ("CR103", "dev", SP_30E7D), ("CR103", "dev", "contoso_Spare")}
    assert per_developer(found) == ({} if severity is None else dict.fromkeys(expected, severity))
    others_fail = any(f.severity == "error" for f in found if (f.code, f.environment, f.subject) not in expected)
    assert exit_code(found) == (2 if policy == "error" or others_fail else 0)


def test_allow_still_tidies_a_display_name_suffix() -> None:
    cfg = dataclasses.replace(
        config([desired(SP_8F4B0, "SharePoint ContosoFlows-8f4b0")], {SP_8F4B0: "c1"}), per_developer_policy="allow")
    (finding,) = [f for f in lint(cfg) if f.code == "CR102"]
    assert "display name" in finding.message and "logical name" not in finding.message
    assert finding.severity == "warning"


def test_cr103_points_at_replaces() -> None:
    found = [f for f in lint(per_developer_config("warn"), {"dev": messy_live()}) if f.code == "CR103"]
    assert found and all("replaces:" in f.fix and "per_developer_references: allow" in f.fix for f in found)


def test_a_replaced_reference_still_there_is_cr104_not_a_duplicate() -> None:
    found = lint(per_developer_config("warn", replaces=(SP_8F4B0,)), {"dev": messy_live()})
    assert ("CR104", "dev", SP_8F4B0) in codes(found)
    assert not {c for c in codes(found) if c[0] in {"CR102", "CR103"} and c[2] == SP_8F4B0}
    # Nor binding advice the config could not follow (it may not bind a name it replaces): CR104 is all.
    assert [c for c in codes(found) if c[2] == SP_8F4B0] == [("CR104", "dev", SP_8F4B0)]
    (cr104,) = [f for f in found if f.code == "CR104"]
    assert cr104.severity == "info"
    assert "replaced by contoso_sharedsharepointonline_30e7d" in cr104.message
    assert "Invoice approval" in cr104.message  # the flow that still uses it
    assert "connref apply -e dev" in cr104.fix


def test_cr104_in_a_managed_environment_says_the_solution_removes_it() -> None:
    env = messy_live()
    managed = dataclasses.replace(env, solution=dataclasses.replace(env.solution, managed=True)
                                  if env.solution else None)
    (cr104,) = [f for f in lint(per_developer_config("warn", replaces=(SP_8F4B0,)), {"dev": managed})
                if f.code == "CR104"]
    assert "managed solution" in cr104.fix and "apply" not in cr104.fix


def test_cr102_on_the_kept_reference_does_not_tell_it_to_be_replaced() -> None:
    found = lint(per_developer_config("warn", replaces=(SP_8F4B0,)), {"dev": messy_live()})
    (kept,) = [f for f in found if f.code == "CR102" and f.subject == SP_30E7D and "logical name" in f.message]
    assert "it is the reference the others are consolidated onto" in kept.fix
    assert not kept.fix.startswith("consolidate the flows")
