"""``connref import`` never writes a config its own ``validate`` rejects, never carries a secret from a
settings file into the config or onto the terminal, and writes live text into comments only as one
inert line each. Through the real CLI on the quickstart's ``local:`` environments (in-process emulator)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.e2e_support import Workspace, run_cli

pytestmark = pytest.mark.emulator_only

OUTLOOK = "contoso_sharedoffice365_d4c61"
ENTRA_SECRET = "Abc8Q~xK2pLm9Nv4Bt7Rz1KwHs5Jx3Ty6Ua0OeQr"
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJvaWQiOiJ4In0.c2lnbmF0dXJl"
FORGED = "contoso_sharedsharepointonline_8f4b0: 216696a069a2447b9b88c8f1bed3c86d #"


def edit_data(ws: Workspace, env: str, change: Callable[[dict[str, Any]], None]) -> None:
    path = ws.dir / f"{env}.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def validate(config: Path) -> str:
    r = run_cli("-c", str(config), "validate")
    assert r.code == 0, r.err
    return r.out


@pytest.mark.parametrize(
    ("connection_id", "problem"),
    [
        ("my connection", "is not a connection name: a connection name has no spaces"),
        ("abc\ndef", "is not a connection name: a connection name has no spaces"),
        ("/providers/Microsoft.PowerApps/apis/shared_office365/connections/8ee5a024897742cc86f3aea206fe2e92",
         "is not a connection name: expected the connection name"),
        (ENTRA_SECRET, "looks like a client secret, not a connection name"),
        (JWT, "looks like a token (JWT), not a connection name"),
    ],
)
def test_from_settings_refuses_what_validate_would_and_writes_nothing(
    quickstart: Workspace, connection_id: str, problem: str,
) -> None:
    settings = quickstart.dir / "s.json"
    settings.write_text(json.dumps({"ConnectionReferences": [
        {"LogicalName": "contoso_Teams", "ConnectionId": "3e42458eac204f9bb872ce16abfd20ab"},
        {"LogicalName": OUTLOOK, "ConnectionId": connection_id},
    ]}))
    before = quickstart.config.read_bytes()
    r = quickstart.run("import", "-e", "prod", "--from-settings", str(settings), "-o", str(quickstart.config))
    assert r.code == 1, r.err
    assert r.err == (f"Error: {settings}: ConnectionReferences[1] ({OUTLOOK}): ConnectionId {problem}"
                     f"{r.err.split(problem, 1)[1]}")
    assert r.err.rstrip().endswith("; nothing was written") and "Traceback" not in r.err
    assert quickstart.config.read_bytes() == before  # untouched, the good entry included
    for secret in (ENTRA_SECRET, JWT, "Q~", "eyJ"):
        assert secret not in r.out + r.err
    validate(quickstart.config)


def test_from_settings_that_binds_well_still_writes(quickstart: Workspace) -> None:
    settings = quickstart.dir / "s.json"
    settings.write_text(json.dumps({"ConnectionReferences": [
        {"LogicalName": OUTLOOK, "ConnectionId": "8ee5a024897742cc86f3aea206fe2e92"}]}))
    merged = quickstart.dir / "merged.yaml"
    r = quickstart.run("import", "-e", "dev", "--from-settings", str(settings), "-o", str(merged))
    assert r.code == 0, r.err
    assert f"{OUTLOOK}: 8ee5a024897742cc86f3aea206fe2e92" in merged.read_text()
    validate(merged)


def test_live_text_with_line_breaks_stays_in_its_comment_and_reimport_is_stable(quickstart: Workspace) -> None:
    def hostile(data: dict[str, Any]) -> None:
        for c in data["connections"]:
            if c["name"] == "b2bb7685c04840d99f36de148d127549":
                c["properties"]["displayName"] = f"Megan's SharePoint\n{FORGED}"
        for w in data["workflows"]:
            w["name"] = f"{w['name']}\n{FORGED}"
        for u in data["systemusers"]:
            if u["domainname"] == "maker1@contoso.com":
                u["domainname"], u["fullname"] = None, "Megan\nprune: true"

    edit_data(quickstart, "dev", hostile)
    first = quickstart.dir / "first.yaml"
    r = quickstart.run("import", "-e", "dev", "-o", str(first))
    assert r.code == 0, r.err
    text = first.read_text()
    comments = [line.strip() for line in text.splitlines() if line.lstrip().startswith("#")]
    # Every comment line is one connref meant: none reads as a binding or a key of the live text's making.
    assert not [c for c in comments if c.startswith((f"# {FORGED}", "# prune: true"))], text
    assert (f"# contoso_sharedsharepointonline_30e7d: b2bb7685c04840d99f36de148d127549  "
            f"# Megan's SharePoint\\n{FORGED} (Megan\\nprune: true)") in text
    assert "owned by Megan\\nprune: true: with service_account set" in text
    validate(first)
    again = quickstart.dir / "again.yaml"
    r = run_cli("-c", str(first), "import", "-e", "dev", "-o", str(again))
    assert r.code == 0, r.err
    assert again.read_text() == text


@pytest.mark.parametrize("blank", [" ", "\t", "\u3000", "\x85", "\x0c", "\n"])
def test_blank_display_name_and_description_import_as_none(quickstart: Workspace, blank: str) -> None:
    def blank_out(data: dict[str, Any]) -> None:
        for ref in data["connectionreferences"]:
            if ref["connectionreferencelogicalname"] == OUTLOOK:
                ref["connectionreferencedisplayname"] = blank
                ref["description"] = blank

    edit_data(quickstart, "dev", blank_out)
    r = quickstart.run("import", "-e", "dev", "-o", str(quickstart.config))
    assert r.code == 0, r.err
    validate(quickstart.config)
    text = quickstart.config.read_text()
    assert f"    # no display name today: plan will set this one\n    display_name: {OUTLOOK}\n" in text
    assert "    # no description today, only blank space: plan will clear it\n" in text


def test_a_logical_name_the_config_cannot_declare_is_left_out_with_a_warning(quickstart: Workspace) -> None:
    names = ["contoso_a b", "contoso_ünï", "contoso_a: b"]

    def rename(data: dict[str, Any]) -> None:
        for ref, name in zip(data["connectionreferences"], names, strict=False):
            ref["connectionreferencelogicalname"] = name

    edit_data(quickstart, "dev", rename)
    r = quickstart.run("import", "-e", "dev", "-o", str(quickstart.config))
    assert r.code == 0, r.err
    validate(quickstart.config)
    text = quickstart.config.read_text()
    assert not set(names) & set(yaml.safe_load(text)["references"])
    for name in names:
        assert f"warning: not imported: '{name}' (in solution ContosoFlows) has an invalid logical name" in r.err
        assert f"  # not imported: '{name}' (in solution ContosoFlows) has an invalid logical name" in text


def test_import_refuses_to_write_a_config_validate_rejects(quickstart: Workspace) -> None:
    """The last check before writing: a reference of another publisher in the solution makes a config
    the loader refuses (one prefix per solution), so nothing is written and the error says why."""
    def other_publisher(data: dict[str, Any]) -> None:
        data["connectionreferences"][0]["connectionreferencelogicalname"] = "fabrikam_x"

    edit_data(quickstart, "dev", other_publisher)
    before = quickstart.config.read_bytes()
    r = quickstart.run("import", "-e", "dev", "-o", str(quickstart.config))
    assert r.code == 1
    lines = r.err.splitlines()
    assert lines[0] == "Error: the config imported from dev would not pass connref validate, so nothing was written:"
    assert lines[1].startswith("  line ") and "references.fabrikam_x: publisher prefix 'fabrikam' differs" in lines[1]
    assert quickstart.config.read_bytes() == before
    r = quickstart.run("import", "-e", "dev")
    assert r.code == 1 and r.out == ""
