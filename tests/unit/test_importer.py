"""Import: the YAML written for a live environment parses, has the right structure, carries a comment
for each suspicious kind, is deterministic, keeps the user's existing config, is accepted by the config
loader, and plans no changes against the environment it came from."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml
from builders import (
    ADOPTION,
    ALICE,
    BOB,
    C_ALICE_SP,
    C_SVC_OUTLOOK,
    C_SVC_SP,
    SA,
    SVC,
    flow,
    messy_live,
    reversed_order,
)

from reconciler.adoption.import_generate import import_environment
from reconciler.adoption.yamledit import yaml_scalar
from reconciler.config.loader import load_config
from reconciler.domain.model import LiveEnvironment
from reconciler.errors import ConnrefError
from reconciler.plan.planner import plan_environment

conn, live, ref = ADOPTION.conn, ADOPTION.live, ADOPTION.ref
ENV_ID = "6f1c2a3b-0c4d-4e5f-8a9b-0c1d2e3f4a5b"


def do_import(env: LiveEnvironment, existing: str | None = None, *, service_account: str | None = None) -> str:
    return import_environment(
        env,
        solution="ContosoFlows",
        env_name="dev",
        env_url="local:dev.json",
        environment_id=ENV_ID,
        existing_config_text=existing,
        service_account=service_account,
    )


def comments_above(text: str, key: str) -> str:
    """The comment lines directly above the line that declares ``key`` (a mapping key)."""
    lines = text.splitlines()
    idx = next(i for i, line in enumerate(lines) if re.match(rf"\s*{re.escape(key)}:", line))
    out: list[str] = []
    i = idx - 1
    while i >= 0 and lines[i].lstrip().startswith("#"):
        out.insert(0, lines[i].strip())
        i -= 1
    return "\n".join(out)


def prose(comments: str) -> str:
    """Comment lines as one sentence: without the ``#`` marks and the wrapping."""
    return " ".join(comments.replace("#", " ").split())


def owned_by_svc(env: LiveEnvironment) -> LiveEnvironment:
    """``env`` with every reference owned by the service account (so import keeps service_account)."""
    return dataclasses.replace(
        env, references=tuple(dataclasses.replace(r, owner_id=SVC.systemuserid) for r in env.references)
    )


def write_config(tmp_path: Path, text: str) -> Path:
    for name in ("dev.json", "prod.json"):
        (tmp_path / name).write_text("{}", encoding="utf-8")  # local: only needs the file to exist here
    path = tmp_path / "connref.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------- structure


def test_fresh_import_structure() -> None:
    data = yaml.safe_load(do_import(messy_live(), service_account=SA))
    assert data["version"] == 1
    assert data["solution"] == "ContosoFlows"
    assert list(data["references"]) == [
        "contoso_Approvals",
        "contoso_Outlook",
        "contoso_sharedsharepointonline_30e7d",
        "contoso_sharedsharepointonline_8f4b0",
        "contoso_Spare",
        "contoso_Teams",
    ]  # the reference outside the solution is not imported; order ignores case
    assert data["references"]["contoso_sharedsharepointonline_30e7d"] == {
        "connector": "shared_sharepointonline",
        "display_name": "SharePoint ContosoFlows-30e7d",
        "description": "Invoice library",
    }
    assert data["references"]["contoso_Outlook"] == {
        "connector": "shared_office365",
        "display_name": "Office 365 Outlook ContosoFlows",
    }
    env = data["environments"]["dev"]
    assert env["url"] == "local:dev.json"
    assert env["environment_id"] == ENV_ID
    # only bindings plan accepts as they are: the connection exists, is Connected and the writer may use it
    assert env["bindings"] == {
        "contoso_Outlook": C_SVC_OUTLOOK.name,
        "contoso_sharedsharepointonline_8f4b0": C_ALICE_SP.name,  # Alice's, but shared with the writer
        "contoso_Spare": C_SVC_SP.name,
    }
    assert set(data) == {"version", "solution", "references", "environments"}


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (
            "contoso_sharedsharepointonline_8f4b0",
            [
                "CR102 random-suffix: the logical name",
                "CR102 random-suffix: the display name",
                "CR103 duplicate-connector: one of 3 references for SharePoint",
                "owned by alice@contoso.com",
            ],
        ),
        ("contoso_Spare", ["CR103 duplicate-connector", "CR207 unused-reference"]),
        ("contoso_Outlook", []),
    ],
)
def test_reference_comments(key: str, expected: list[str]) -> None:
    text = do_import(messy_live(), service_account=SA)
    above = comments_above(text.split("environments:")[0], key)
    for piece in expected:
        assert piece in above
    if not expected:
        assert above == ""


def test_duplicate_comment_lists_the_flows_of_each() -> None:
    text = do_import(messy_live(), service_account=SA)
    above = prose(comments_above(text.split("environments:")[0], "contoso_Spare"))
    assert "contoso_sharedsharepointonline_8f4b0 (Invoice approval)" in above
    assert "contoso_sharedsharepointonline_30e7d (Leave request)" in above
    assert "contoso_Spare (no flow)" in above


def test_binding_comments_for_each_suspicious_kind() -> None:
    gone = ref(
        "contoso_Gone",
        "Gone ContosoFlows",
        connector="shared_sql",
        connection="0000aaaa0000aaaa0000aaaa0000aaaa",
    )
    env = dataclasses.replace(
        messy_live(),
        references=(*messy_live().references, gone),
        flows=(*messy_live().flows, flow("Sync", "contoso_Gone")),
    )
    # the service account owns every reference, so it stays and personal connections are flagged
    text = do_import(owned_by_svc(env), service_account=SA)
    bindings = text.split("environments:")[1]
    # unbound: a commented example binding to the service account
    assert "# CR202 unbound: not bound to any connection in dev (used by: Leave request)" in bindings
    assert "# contoso_Approvals: {owner: svc-flows@contoso.com}" in bindings
    # personal, shared with the writer: kept, flagged
    above = comments_above(bindings, "contoso_sharedsharepointonline_8f4b0")
    assert "CR201 personal-connection" in above and "alice@contoso.com" in above
    # personal, not usable by the writer: flagged and commented out (plan would refuse it)
    assert 'CR201 personal-connection: bound to "SharePoint bob"' in bindings
    assert ("plan would refuse this binding (CR210 connection-not-usable: share it with a security group "
            "svc-flows@contoso.com belongs to") in (
        " ".join(line.lstrip(" #") for line in bindings.splitlines()))
    assert (
        "# contoso_sharedsharepointonline_30e7d: b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0"
        "  # SharePoint bob (bob@contoso.com)" in bindings
    )
    # broken: flagged and commented out
    assert "CR203 connection-not-connected" in bindings and "has status Error, not Connected" in bindings
    assert "# contoso_Teams: dead0000dead0000dead0000dead0000" in bindings
    # missing connection
    assert "CR204 connection-not-found: bound to connection 0000aaaa0000aaaa0000aaaa0000aaaa" in bindings
    assert "# contoso_Gone: 0000aaaa0000aaaa0000aaaa0000aaaa" in bindings


def test_no_service_account_says_personal_connections_are_not_flagged() -> None:
    text = do_import(messy_live())
    assert "CR201" not in text
    assert "no service_account for this environment" in text
    assert "plan assigns it" not in text


def test_references_outside_the_solution_are_listed_not_imported() -> None:
    text = do_import(messy_live())
    assert "#   contoso_sharedoffice365_77aa1 (shared_office365, Outlook elsewhere)" in text
    assert "contoso_sharedoffice365_77aa1" not in yaml.safe_load(text)["references"]


def test_empty_solution() -> None:
    data = yaml.safe_load(do_import(live([], [])))
    assert data["references"] == {}
    assert data["environments"]["dev"]["bindings"] == {}


def test_missing_solution_is_an_error() -> None:
    with pytest.raises(ConnrefError, match="solution 'ContosoFlows' does not exist in environment dev"):
        do_import(live([], [], solution=None))


def test_deterministic() -> None:
    env = messy_live()
    shuffled = reversed_order(env)
    assert do_import(env, service_account=SA) == do_import(shuffled, service_account=SA)


@pytest.mark.parametrize(
    "value",
    [
        "plain",
        "yes",
        "No",
        "on",
        "1.0",
        "0x1f",
        "12",
        "a: b",
        "x #y",
        "",
        " lead",
        "trail ",
        "multi\nline",
        "'quote",
        '"dq',
        "null",
        "~",
        "@at",
        "émoji 😀",
        "-dash",
        "[x]",
        "{x}",
        "tab\there",
        "*star",
        "&anchor",
        "!tag",
        "%pct",
        "`tick",
        "a\u2028b",
    ],
)
def test_yaml_scalar_round_trips(value: str) -> None:
    assert yaml.safe_load(f"k: {yaml_scalar(value)}\n") == {"k": value}


def test_awkward_names_survive() -> None:
    env = live(
        [
            ref(
                "contoso_x",
                "Yes: #1 'quoted' \"name\"",
                connection=C_SVC_SP.name,
                description="line one\nline two",
            )
        ],
        [C_SVC_SP],
        flows=[flow("F", "contoso_x")],
    )
    data = yaml.safe_load(do_import(env))
    assert data["references"]["contoso_x"]["display_name"] == "Yes: #1 'quoted' \"name\""
    assert data["references"]["contoso_x"]["description"] == "line one\nline two"


# ------------------------------------------------------------------- loader and planner round trip


def test_fresh_import_is_accepted_by_the_loader(tmp_path: Path) -> None:
    cfg = load_config(str(write_config(tmp_path, do_import(messy_live(), service_account=SA))))
    assert cfg.solution == "ContosoFlows"
    assert (
        cfg.references["contoso_Outlook"].connector == "/providers/Microsoft.PowerApps/apis/shared_office365"
    )
    assert dict(cfg.environments["dev"].bindings) == {
        "contoso_Outlook": C_SVC_OUTLOOK.name,
        "contoso_sharedsharepointonline_8f4b0": C_ALICE_SP.name,
        "contoso_Spare": C_SVC_SP.name,
    }


def test_plan_after_import_has_no_changes(tmp_path: Path) -> None:
    env = messy_live()
    cfg = load_config(str(write_config(tmp_path, do_import(env))))
    assert plan_environment(cfg, cfg.environments["dev"], env).ops == ()


EXISTING = """\
# Team config: keep this comment.
version: 1
solution: ContosoFlows
naming: "{connector} {solution}"

references:
  # Planned: the common Dataverse reference.
  contoso_Dataverse:
    connector: shared_commondataserviceforapps
    display_name: Microsoft Dataverse ContosoFlows

environments:
  dev:
    url: local:old.json   # will be replaced
    service_account: svc-flows@contoso.com
    bindings:
      contoso_Spare: {owner: svc-flows@contoso.com, display_name: SharePoint svc}  # the team's choice
      contoso_Outlook: 0123456789abcdef0123456789abcdef
  prod:
    # Production: do not touch.
    url: local:prod.json
    bindings:
      contoso_Dataverse: d6f3c5bb44574352a780f54d27314721

lint:
  ignore: [CR207]   # the spare is on purpose
"""


def test_import_into_an_existing_config_keeps_the_rest(tmp_path: Path) -> None:
    text = do_import(owned_by_svc(messy_live()), EXISTING)
    # everything outside references and dev's url/environment_id/bindings is kept, comments included
    for kept in (
        "# Team config: keep this comment.",
        'naming: "{connector} {solution}"',
        "# Production: do not touch.",
        "  ignore: [CR207]   # the spare is on purpose",
        "    service_account: svc-flows@contoso.com",
    ):
        assert kept in text
    assert "local:old.json" not in text
    data = yaml.safe_load(text)
    dev = data["environments"]["dev"]
    assert dev["url"] == "local:dev.json" and dev["environment_id"] == ENV_ID
    # the selector still resolves to the connection the reference has now: kept as the team wrote it
    assert dev["bindings"]["contoso_Spare"] == {"owner": SA, "display_name": "SharePoint svc"}
    assert "# the team's choice" in text
    # the name binding no longer matches live: replaced by the current connection
    assert dev["bindings"]["contoso_Outlook"] == C_SVC_OUTLOOK.name
    # a declared reference dev lacks is parked (plan would create it), and so are its bindings elsewhere
    assert "contoso_Dataverse" not in data["references"]
    assert "  #| contoso_Dataverse:\n  #|   connector: shared_commondataserviceforapps\n" in text
    assert "parked: contoso_Dataverse is not in solution ContosoFlows in dev" in prose(text)
    assert "      #| contoso_Dataverse: d6f3c5bb44574352a780f54d27314721\n" in text
    # the service account comes from the existing config: personal connections are flagged
    assert "CR201 personal-connection" in text
    # naming from the existing config is applied to the comments
    assert "CR101 naming-policy: rename the display name to 'SharePoint ContosoFlows'" in prose(text)
    assert data["environments"]["prod"] == {"url": "local:prod.json", "bindings": None}
    assert list(data) == ["version", "solution", "naming", "references", "environments", "lint"]
    cfg = load_config(str(write_config(tmp_path, text)))
    assert set(cfg.environments) == {"dev", "prod"}


def test_parked_declarations_plan_no_changes_and_can_be_restored(tmp_path: Path) -> None:
    env = messy_live()
    text = do_import(env, EXISTING.replace("    service_account: svc-flows@contoso.com\n", ""))
    cfg = load_config(str(write_config(tmp_path, text)))
    assert plan_environment(cfg, cfg.environments["dev"], env).ops == ()
    # deleting the marks declares the reference and its prod binding again
    restored = load_config(str(write_config(tmp_path, text.replace("#| ", ""))))
    assert restored.references["contoso_Dataverse"].display_name == "Microsoft Dataverse ContosoFlows"
    assert dict(restored.environments["prod"].bindings) == {
        "contoso_Dataverse": "d6f3c5bb44574352a780f54d27314721"
    }


def test_parked_reference_is_declared_again_once_it_exists() -> None:
    first = do_import(messy_live(), EXISTING)
    dataverse = ref(
        "contoso_Dataverse", "Microsoft Dataverse ContosoFlows", connector="shared_commondataserviceforapps"
    )
    env = dataclasses.replace(messy_live(), references=(*messy_live().references, dataverse))
    second = do_import(env, first)
    assert "#| contoso_Dataverse:\n" not in second.split("environments:")[0]
    assert (
        yaml.safe_load(second)["references"]["contoso_Dataverse"]["connector"]
        == "shared_commondataserviceforapps"
    )


def test_import_adds_a_missing_environment_and_keeps_indentation(tmp_path: Path) -> None:
    existing = (
        "version: 1\nsolution: ContosoFlows\nreferences: {}\nenvironments:\n"
        "    prod:\n        url: local:prod.json\n"
    )
    text = do_import(
        live(
            [ref("contoso_SharePoint", "SharePoint ContosoFlows", connection=C_SVC_SP.name)],
            [C_SVC_SP],
            flows=[flow("F", "contoso_SharePoint")],
        ),
        existing,
    )
    data = yaml.safe_load(text)
    assert data["environments"]["prod"] == {"url": "local:prod.json"}
    assert data["environments"]["dev"]["bindings"] == {"contoso_SharePoint": C_SVC_SP.name}
    assert "    dev:\n        url: local:dev.json" in text  # the file's four-space indentation
    load_config(str(write_config(tmp_path, text)))


def test_import_adds_missing_sections() -> None:
    text = do_import(live([], []), "# just a comment\nprune: false\n")
    data = yaml.safe_load(text)
    assert data["version"] == 1 and data["solution"] == "ContosoFlows" and data["prune"] is False
    assert data["environments"]["dev"]["url"] == "local:dev.json"
    assert text.startswith("# just a comment\nversion: 1\n")


def test_flow_style_environments_are_rewritten(tmp_path: Path) -> None:
    existing = (
        "version: 1\nsolution: ContosoFlows\nreferences: {}\nenvironments: {prod: {url: 'local:prod.json'}}\n"
    )
    text = do_import(live([], []), existing)
    data = yaml.safe_load(text)
    assert data["environments"]["prod"] == {"url": "local:prod.json"}
    assert data["environments"]["dev"]["url"] == "local:dev.json"
    load_config(str(write_config(tmp_path, text)))


def test_reimport_is_stable(tmp_path: Path) -> None:
    env = messy_live()
    first = do_import(env, EXISTING)
    assert do_import(env, first) == first


def test_plan_refusal_is_judged_for_the_writer() -> None:
    # The same personal connection is kept when the writer may use it and commented out when not.
    shared = conn("cafe0000cafe0000cafe0000cafe0000", "SharePoint bob", owner=BOB, shared_with=[SVC])
    env = live(
        [ref("contoso_SharePoint", "SharePoint ContosoFlows", connection=shared.name, owner=BOB)],
        [shared],
        flows=[flow("F", "contoso_SharePoint")],
    )
    assert yaml.safe_load(do_import(env))["environments"]["dev"]["bindings"] == {
        "contoso_SharePoint": shared.name
    }
    as_alice = dataclasses.replace(env, writer=ALICE, caller=ALICE)
    assert yaml.safe_load(do_import(as_alice))["environments"]["dev"]["bindings"] == {}


# --------------------------------------------------------------------------- consolidation: replaces


SP_8F4B0, SP_30E7D = "contoso_sharedsharepointonline_8f4b0", "contoso_sharedsharepointonline_30e7d"


def uncommented(text: str, kept: str, replaced: str) -> str:
    """``text`` with its suggested ``replaces:`` uncommented and the replaced reference's declaration and
    binding removed: what docs/adoption.md tells the user to do."""
    lines = text.splitlines()
    out: list[str] = []
    skip_indent: int | None = None
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if skip_indent is not None:
            if line.strip() and indent > skip_indent:
                continue
            skip_indent = None
        if line.strip() == f"{replaced}:":
            skip_indent = indent
            continue
        if line.lstrip().startswith(f"{replaced}:"):
            continue  # its binding
        if line.strip() in ("# replaces:", f"#   - {replaced}"):
            line = line.replace("# ", "", 1)
        out.append(line)
    return "\n".join(out) + "\n"


def test_import_suggests_replaces_on_the_reference_it_would_keep(tmp_path: Path) -> None:
    env = owned_by_svc(messy_live())
    text = do_import(env)
    # 30e7d and 8f4b0 both have random suffixes and one flow each; contoso_Spare has no suffix: it is kept.
    block = text[text.index("  contoso_Spare:"):]
    assert "# replaces:" in block
    assert f"#   - {SP_30E7D}" in block and f"#   - {SP_8F4B0}" in block
    said = prose(block[:block.index("# replaces:")])
    assert "uncomment the lines below and remove" in said and "Flows to move:" in said
    assert "Invoice approval" in said and "Leave request" in said
    # The suggestion is only a comment: the config loads and declares no replaces.
    config = load_config(str(write_config(tmp_path, text)))
    assert all(not r.replaces for r in config.references.values())


def test_accepting_the_suggestion_gives_a_valid_config_that_consolidates(tmp_path: Path) -> None:
    env = owned_by_svc(dataclasses.replace(messy_live(), references=tuple(
        r for r in messy_live().references if r.logical_name != "contoso_Spare")))
    text = do_import(env)
    assert f"#   - {SP_8F4B0}" in text[text.index(f"  {SP_30E7D}:"):]  # 30e7d is first by name
    accepted = uncommented(text, SP_30E7D, SP_8F4B0)
    config = load_config(str(write_config(tmp_path, accepted)))
    assert config.references[SP_30E7D].replaces == (SP_8F4B0,)
    assert SP_8F4B0 not in config.references


def test_reimport_keeps_an_accepted_replaces_and_does_not_declare_the_replaced(tmp_path: Path) -> None:
    env = owned_by_svc(dataclasses.replace(messy_live(), references=tuple(
        r for r in messy_live().references if r.logical_name != "contoso_Spare")))
    accepted = uncommented(do_import(env), SP_30E7D, SP_8F4B0)
    again = do_import(env, accepted)
    config = load_config(str(write_config(tmp_path, again)))
    assert config.references[SP_30E7D].replaces == (SP_8F4B0,)
    assert SP_8F4B0 not in config.references
    assert SP_8F4B0 not in config.environments["dev"].bindings
    assert f"{SP_8F4B0} is replaced by {SP_30E7D}" in prose(again)
    assert do_import(env, again) == again  # stable


def test_no_suggestion_when_the_policy_allows_per_developer_references() -> None:
    existing = do_import(owned_by_svc(messy_live())).replace(
        "version: 1\n", "version: 1\nlint:\n  per_developer_references: allow\n", 1)
    assert "# replaces:" not in do_import(owned_by_svc(messy_live()), existing)


def test_the_replaced_references_comment_says_what_the_plan_does_with_it() -> None:
    env = owned_by_svc(dataclasses.replace(messy_live(), references=tuple(
        r for r in messy_live().references if r.logical_name != "contoso_Spare")))
    accepted = uncommented(do_import(env), SP_30E7D, SP_8F4B0)
    assert "and deletes it" in prose(do_import(env, accepted))
    managed = dataclasses.replace(env, solution=dataclasses.replace(env.solution, managed=True)
                                  if env.solution else None)
    said = prose(do_import(managed, accepted))
    assert "the next import of the solution" in said and "deletes it" not in said
    one_managed = dataclasses.replace(env, references=tuple(
        dataclasses.replace(r, managed=True) if r.logical_name == SP_8F4B0 else r for r in env.references))
    said = prose(do_import(one_managed, accepted))
    assert "it is managed, so it stays" in said and "deletes it" not in said
