"""Deployment settings: written from the config's bindings (selectors resolved), read back with the
case-insensitive keys other tools use, bad files named with the file and the entry; and bindings from a
settings file merged into a config without losing its comments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from builders import (
    ADOPTION,
    ALICE,
    C_ALICE_SP,
    C_SVC_OUTLOOK,
    C_SVC_SP,
    OUTLOOK,
    SA,
    desired,
)

from reconciler.adoption.bindings_merge import bindings_from_settings, merge_bindings, settings_bindings
from reconciler.adoption.settings import (
    deployment_settings,
    merge_into_existing,
    parse_settings,
    parse_settings_file,
    render_settings_json,
)
from reconciler.config.loader import load_config
from reconciler.domain import rules
from reconciler.domain.model import Config, Selector
from reconciler.errors import ConfigError, PlanError

config, conn, live = ADOPTION.config, ADOPTION.conn, ADOPTION.live
SP_REF = desired("contoso_SharePoint", "SharePoint ContosoFlows")
OUTLOOK_REF = desired("contoso_Outlook", "Office 365 Outlook ContosoFlows", connector=OUTLOOK)
ENV = live([], [C_SVC_SP, C_ALICE_SP, C_SVC_OUTLOOK])

# ------------------------------------------------------------------- writing


def test_settings_from_bindings_sorted_and_resolved() -> None:
    cfg = config(
        [SP_REF, OUTLOOK_REF, desired("contoso_approvals", "Approvals", connector="shared_approvals")],
        {"contoso_SharePoint": C_SVC_SP.name, "contoso_Outlook": Selector(SA)},
    )
    doc = deployment_settings(cfg, "dev", ENV)
    assert doc == {
        "EnvironmentVariables": [],
        "ConnectionReferences": [
            {
                "LogicalName": "contoso_approvals",
                "ConnectionId": "",
                "ConnectorId": "/providers/Microsoft.PowerApps/apis/shared_approvals",
            },
            {
                "LogicalName": "contoso_Outlook",
                "ConnectionId": C_SVC_OUTLOOK.name,
                "ConnectorId": "/providers/Microsoft.PowerApps/apis/shared_office365",
            },
            {
                "LogicalName": "contoso_SharePoint",
                "ConnectionId": C_SVC_SP.name,
                "ConnectorId": "/providers/Microsoft.PowerApps/apis/shared_sharepointonline",
            },
        ],
    }
    text = render_settings_json(doc)
    assert text.endswith("}\n") and json.loads(text) == doc
    # what we write, we read
    back = parse_settings(json.loads(text), "s.json")
    assert [(r.logical_name, r.connection_id) for r in back.connection_references] == [
        ("contoso_approvals", None),
        ("contoso_Outlook", C_SVC_OUTLOOK.name),
        ("contoso_SharePoint", C_SVC_SP.name),
    ]


def test_strict_refuses_unbound() -> None:
    cfg = config([SP_REF, OUTLOOK_REF], {"contoso_SharePoint": C_SVC_SP.name})
    with pytest.raises(PlanError, match="no binding in environment dev for: contoso_Outlook"):
        deployment_settings(cfg, "dev", ENV, strict=True)


@pytest.mark.parametrize(
    ("binding", "message"),
    [
        (
            Selector("nobody@contoso.com"),
            "matches no sharepointonline connection|matches no shared_sharepointonline",
        ),
        ("missing0000", "connection missing0000 not found in environment dev"),
        (C_SVC_OUTLOOK.name, "is for connector shared_office365, but the reference is for shared_sharepointonline"),
    ],
)
def test_bad_bindings_are_plan_errors(binding: str | Selector, message: str) -> None:
    cfg = config([SP_REF], {"contoso_SharePoint": binding})
    with pytest.raises(PlanError, match=message):
        deployment_settings(cfg, "dev", ENV)


def test_ambiguous_selector_lists_the_candidates() -> None:
    second = conn("ffff0000ffff0000ffff0000ffff0000", "SharePoint 2")
    env = live([], [C_SVC_SP, second])
    cfg = config([SP_REF], {"contoso_SharePoint": Selector(SA)})
    with pytest.raises(PlanError, match="matches 2 shared_sharepointonline connections") as e:
        deployment_settings(cfg, "dev", env)
    assert C_SVC_SP.name in str(e.value) and second.name in str(e.value)
    cfg = config([SP_REF], {"contoso_SharePoint": Selector(SA, "sharepoint 2")})
    assert deployment_settings(cfg, "dev", env)["ConnectionReferences"][0]["ConnectionId"] == second.name


def test_without_live_names_pass_through_and_selectors_fail() -> None:
    cfg = config([SP_REF], {"contoso_SharePoint": "abc"})
    assert deployment_settings(cfg, "dev", None)["ConnectionReferences"][0]["ConnectionId"] == "abc"
    cfg2 = config([SP_REF], {"contoso_SharePoint": Selector(SA)})
    with pytest.raises(PlanError, match="needs the live environment dev"):
        deployment_settings(cfg2, "dev", None)


def test_unknown_environment() -> None:
    with pytest.raises(ConfigError, match="environment 'qa' is not in the config"):
        deployment_settings(config([SP_REF]), "qa", None)


def test_merge_into_existing_keeps_environment_variables() -> None:
    existing = {
        "environmentvariables": [{"SchemaName": "contoso_Url", "Value": "https://x"}],
        "connectionreferences": [{"LogicalName": "old", "ConnectionId": "x", "ConnectorId": "y"}],
    }
    generated = deployment_settings(config([SP_REF], {"contoso_SharePoint": "abc"}), "dev", None)
    merged = merge_into_existing(existing, generated)
    assert merged["environmentvariables"] == existing["environmentvariables"]
    assert merged["connectionreferences"] == generated["ConnectionReferences"]
    assert "EnvironmentVariables" not in merged and "ConnectionReferences" not in merged


# ------------------------------------------------------------------- reading


def write(tmp_path: Path, content: str | bytes, name: str = "settings.json") -> Path:
    p = tmp_path / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    return p


def test_parse_case_insensitive_with_bom_and_extra_keys(tmp_path: Path) -> None:
    doc = {
        "environmentVariables": [
            {"schemaname": "contoso_Url", "value": "https://x"},
            {"SchemaName": "e", "Value": None},
        ],
        "connectionreferences": [
            {
                "logicalname": "contoso_SharePoint",
                "connectionid": "abc",
                "connectorid": "/providers/Microsoft.PowerApps/apis/shared_sharepointonline",
                "ConnectionOwner": "svc-flows@contoso.com",
            },
            {
                "LogicalName": "contoso_Outlook",
                "ConnectionId": "",
                "ConnectorId": "/providers/Microsoft.PowerApps/apis/shared_office365",
            },
        ],
    }
    path = write(tmp_path, b"\xef\xbb\xbf" + json.dumps(doc).encode())
    parsed = parse_settings_file(path)
    assert [(r.logical_name, r.connection_id, r.connector_id) for r in parsed.connection_references] == [
        ("contoso_SharePoint", "abc", "/providers/Microsoft.PowerApps/apis/shared_sharepointonline"),
        ("contoso_Outlook", None, "/providers/Microsoft.PowerApps/apis/shared_office365"),
    ]
    assert [(v.schema_name, v.value) for v in parsed.environment_variables] == [
        ("contoso_Url", "https://x"),
        ("e", None),
    ]
    assert bindings_from_settings(doc, source=str(path)) == {"contoso_SharePoint": "abc"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[]", "settings.json: the top level must be a JSON object"),
        ("{}", "settings.json: no ConnectionReferences list"),
        ('{"ConnectionReferences": {}}', "ConnectionReferences must be a list"),
        ('{"ConnectionReferences": ["x"]}', r"ConnectionReferences\[0\]: each entry must be an object"),
        (
            '{"ConnectionReferences": [{"ConnectionId": "a"}]}',
            r"ConnectionReferences\[0\]: LogicalName is missing",
        ),
        (
            '{"ConnectionReferences": [{"LogicalName": " "}]}',
            r"ConnectionReferences\[0\]: LogicalName is empty",
        ),
        (
            '{"ConnectionReferences": [{"LogicalName": "a_b", "ConnectionId": 5}]}',
            r"ConnectionReferences\[0\] \(a_b\): ConnectionId must be a string, not int",
        ),
        (
            '{"ConnectionReferences": [{"LogicalName": "a_b", "ConnectorId": "/apis/x"}]}',
            r"ConnectionReferences\[0\] \(a_b\): ConnectorId '/apis/x' is not of the form",
        ),
        (
            '{"ConnectionReferences": [{"LogicalName": "a_b"}, {"logicalname": "A_B"}]}',
            r"ConnectionReferences\[1\] \(A_B\): LogicalName A_B appears twice "
            r"\(also at ConnectionReferences\[0\]\)",
        ),
        (
            '{"ConnectionReferences": [], "EnvironmentVariables": [{"Value": "x"}]}',
            r"EnvironmentVariables\[0\]: SchemaName is missing",
        ),
    ],
)
def test_bad_files_name_the_file_and_entry(tmp_path: Path, content: str, message: str) -> None:
    path = write(tmp_path, content)
    with pytest.raises(ConfigError, match=message) as e:
        parse_settings_file(path)
    assert str(path) in str(e.value)


def test_invalid_json_has_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, '{\n  "ConnectionReferences": [\n    {"LogicalName": "a_b",}\n  ]\n}')
    with pytest.raises(ConfigError) as e:
        parse_settings_file(path)
    assert e.value.location is not None
    assert (e.value.location.file, e.value.location.line) == (str(path), 3)
    assert str(e.value).startswith(f"{path}:3:")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such settings file"):
        parse_settings_file(tmp_path / "nope.json")


def test_bindings_from_settings_errors_name_the_source() -> None:
    with pytest.raises(ConfigError, match=r"prod\.json: ConnectionReferences\[0\]: LogicalName is missing"):
        bindings_from_settings({"ConnectionReferences": [{}]}, source="prod.json")


# An Entra client secret, a JWT and a PEM block: what a settings file must never carry into the config.
ENTRA_SECRET = "Abc8Q~xK2pLm9Nv4Bt7Rz1KwHs5Jx3Ty6Ua0OeQr"
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJvaWQiOiJ4In0.c2lnbmF0dXJl"
PEM = "-----BEGIN PRIVATE KEY-----MIIEvQIBADANBgkqhkiG9w0BAQEFAASC-----END PRIVATE KEY-----"


@pytest.mark.parametrize(
    ("connection_id", "problem"),
    [
        ("my connection", "is not a connection name: a connection name has no spaces"),
        ("abc\ndef", "is not a connection name: a connection name has no spaces"),
        ("abc\u3000def", "is not a connection name: a connection name has no spaces"),
        ("/providers/Microsoft.PowerApps/apis/shared_office365/connections/8ee5a024897742cc86f3aea206fe2e92",
         "is not a connection name: expected the connection name (the last segment of the connection id), not a path"),
        (ENTRA_SECRET, "looks like a client secret, not a connection name"),
        (JWT, "looks like a token (JWT), not a connection name"),
        (PEM, "looks like a PEM block (key or certificate), not a connection name"),
        (f"the secret is {ENTRA_SECRET}", "looks like a client secret"),
    ],
)
def test_a_connection_id_the_config_would_refuse_is_an_error(connection_id: str, problem: str) -> None:
    """Each ConnectionId is judged by the config's own binding checks before anything is merged; the
    error names the file, the entry and the problem, and never repeats a secret."""
    settings = parse_settings({"ConnectionReferences": [
        {"LogicalName": "contoso_Good", "ConnectionId": "0123456789abcdef0123456789abcdef"},
        {"LogicalName": "contoso_Bad", "ConnectionId": connection_id},
    ]}, "prod.json")
    with pytest.raises(ConfigError) as e:
        settings_bindings(settings, source="prod.json")
    message = str(e.value)
    assert message.startswith("prod.json: ConnectionReferences[1] (contoso_Bad): ConnectionId " + problem), message
    assert message.endswith("; nothing was written")
    for secret in (ENTRA_SECRET, JWT, PEM, "MIIEvQ", "eyJ", "Q~"):
        assert secret not in message
    with pytest.raises(ConfigError):
        bindings_from_settings({"ConnectionReferences": [{"LogicalName": "contoso_Bad",
                                                          "ConnectionId": connection_id}]})


def test_every_refused_connection_id_is_listed() -> None:
    settings = parse_settings({"ConnectionReferences": [
        {"LogicalName": "contoso_A", "ConnectionId": "a b"},
        {"LogicalName": "contoso_B", "ConnectionId": ""},
        {"LogicalName": "contoso_C", "ConnectionId": JWT},
    ]}, "prod.json")
    with pytest.raises(ConfigError) as e:
        settings_bindings(settings, source="prod.json")
    assert str(e.value).splitlines() == [
        "prod.json: 2 entries cannot be bindings, so nothing was written:",
        "  prod.json: ConnectionReferences[0] (contoso_A): ConnectionId is not a connection name: a connection "
        "name has no spaces; to pick a connection by display name use {owner: ..., display_name: ...}",
        "  prod.json: ConnectionReferences[2] (contoso_C): ConnectionId looks like a token (JWT), not a connection "
        "name, and secrets must not be written in the config (the value is not shown); put the connection's "
        "name there, and if it is a real secret, treat it as leaked",
    ]


def test_good_connection_ids_still_bind() -> None:
    settings = parse_settings({"ConnectionReferences": [
        {"LogicalName": "contoso_A", "ConnectionId": "0123456789abcdef0123456789abcdef"},
        {"LogicalName": "contoso_B", "ConnectionId": "shared-commondataser-02b6ee82-a4ff-46ec-8360-751ab6c28b1b"},
        {"LogicalName": "contoso_C", "ConnectionId": ""},
    ]}, "prod.json")
    bindings, notes = settings_bindings(settings, source="prod.json")
    assert bindings == {"contoso_A": "0123456789abcdef0123456789abcdef",
                        "contoso_B": "shared-commondataser-02b6ee82-a4ff-46ec-8360-751ab6c28b1b"}
    assert [n.split(":")[0] for n in notes] == ["skipped contoso_C"]


# ------------------------------------------------------------------- merging into a config

CONFIG = """\
# Team config.
version: 1
solution: ContosoFlows
references:
  contoso_SharePoint:
    connector: shared_sharepointonline
    display_name: SharePoint ContosoFlows
  contoso_Outlook:
    connector: shared_office365
    display_name: Office 365 Outlook ContosoFlows
  contoso_Teams:
    connector: shared_teams
    display_name: Microsoft Teams ContosoFlows
environments:
  dev:
    url: local:dev.json
    bindings:
      # the team picked this one
      contoso_SharePoint: {owner: svc-flows@contoso.com}
      contoso_Outlook: 1111aaaa1111aaaa1111aaaa1111aaaa   # old
  prod:
    url: local:prod.json   # production
"""


def load(tmp_path: Path, text: str) -> Config:
    for name in ("dev.json", "prod.json"):
        (tmp_path / name).write_text("{}", encoding="utf-8")
    p = tmp_path / "connref.yaml"
    p.write_text(text, encoding="utf-8")
    return load_config(str(p))


def test_merge_replaces_adds_and_keeps_comments(tmp_path: Path) -> None:
    result = merge_bindings(
        CONFIG,
        "dev",
        {
            "contoso_outlook": "2222bbbb",
            "contoso_Teams": "3333cccc",
            "contoso_SharePoint": "4444dddd",
            "contoso_Unknown": "5555eeee",
        },
    )
    data = yaml.safe_load(result.text)
    assert data["environments"]["dev"]["bindings"] == {
        "contoso_SharePoint": "4444dddd",
        "contoso_Outlook": "2222bbbb",
        "contoso_Teams": "3333cccc",
    }
    assert "# Team config." in result.text and "# the team picked this one" in result.text
    assert "url: local:prod.json   # production" in result.text
    assert "# old" not in result.text  # the replaced line goes with its comment
    assert result.notes == [
        "contoso_Outlook: 1111aaaa1111aaaa1111aaaa1111aaaa -> 2222bbbb",
        "contoso_SharePoint: {owner: svc-flows@contoso.com} -> 4444dddd",
        "contoso_Teams: bound to 3333cccc",
        "skipped contoso_Unknown: not declared under references in connref.yaml",
    ]
    assert not result.rewritten
    cfg = load(tmp_path, result.text)
    assert dict(cfg.environments["dev"].bindings)["contoso_Outlook"] == "2222bbbb"


def test_merge_into_environment_without_bindings(tmp_path: Path) -> None:
    result = merge_bindings(CONFIG, "prod", {"contoso_Teams": "3333cccc"})
    assert (
        "  prod:\n    url: local:prod.json   # production\n    bindings:\n      contoso_Teams: 3333cccc\n"
        in result.text
    )
    load(tmp_path, result.text)


def test_merge_into_empty_flow_mapping(tmp_path: Path) -> None:
    text = CONFIG.replace(
        "    url: local:prod.json   # production\n", "    url: local:prod.json\n    bindings: {}\n"
    )
    result = merge_bindings(text, "prod", {"contoso_Teams": "3333cccc"})
    assert yaml.safe_load(result.text)["environments"]["prod"]["bindings"] == {"contoso_Teams": "3333cccc"}
    assert not result.rewritten
    load(tmp_path, result.text)


def test_merge_nothing_to_change() -> None:
    result = merge_bindings(CONFIG, "dev", {"contoso_Outlook": "1111aaaa1111aaaa1111aaaa1111aaaa"})
    assert result.text == CONFIG
    assert result.notes == ["bindings of dev already match"]


def test_merge_flow_style_is_rewritten_and_says_so(tmp_path: Path) -> None:
    text = CONFIG.replace(
        "    bindings:\n      # the team picked this one\n"
        "      contoso_SharePoint: {owner: svc-flows@contoso.com}\n"
        "      contoso_Outlook: 1111aaaa1111aaaa1111aaaa1111aaaa   # old\n",
        "    bindings: {contoso_Outlook: '1111ffff'}\n",
    )
    result = merge_bindings(text, "dev", {"contoso_Teams": "3333cccc"})
    assert result.rewritten
    assert "without its comments" in result.notes[-1]
    assert yaml.safe_load(result.text)["environments"]["dev"]["bindings"] == {
        "contoso_Outlook": "1111ffff",
        "contoso_Teams": "3333cccc",
    }
    load(tmp_path, result.text)


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        (CONFIG, "qa", "environment 'qa' is not in the config"),
        ("- a\n- b\n", "dev", "not a connref config"),
        ("a: [\n", "dev", "not valid YAML"),
    ],
)
def test_merge_errors(text: str, env: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        merge_bindings(text, env, {"contoso_Teams": "3333cccc"})


def test_selector_owner_matching_is_the_planners() -> None:
    # a selector names the owner by UPN; a connection owned by someone else never matches
    env = live([], [C_ALICE_SP])
    assert rules.find_connection(Selector(ALICE.upn or ""), "shared_sharepointonline", env).connection == C_ALICE_SP
    (refused,) = rules.find_connection(Selector(SA), "shared_sharepointonline", env).problems
    assert refused.code == "CR206"
