"""Output is inert: hostile display names, connection names, flow names, descriptions and user names in
the emulator's data go through plan, apply, drift, lint, whoami, import and error messages (text and
markdown) without one raw control character, escape sequence, bidi control or lone surrogate reaching
stdout, stderr or a markdown report; markdown carries no markup made of data; and the YAML ``import``
writes parses back to exactly the live strings.

Runs on the quickstart's ``local:`` environments (the in-process emulator) through the real CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.e2e_support import Workspace
from reconciler.domain.text import inert

pytestmark = pytest.mark.emulator_only

# A title-setting OSC, BEL, a screen clear, a CSI colour, a C1 CSI, a right-to-left override and an
# isolate, a carriage return and a line break, a lone surrogate; and markdown: code, a link, an image,
# HTML, a mention, a table pipe, a heading.
HOSTILE = ("Evil\x1b]0;pwned\x07\x1b[2J\x1b[31mred\x9b0m \u202etxt.exe\u2066x\u2069 back\rover\nline "
           "\ud800 `code` [link](https://evil.example/a) ![img](https://evil.example/i.png) "
           "<img src=x onerror=alert(1)> @admin a|b")
# Everything inert shows escaped, plus the Unicode line separators YAML also breaks on.
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
                 "\ufeff\ud800-\udfff]")
VISIBLE = inert("\x1b]0;pwned\x07")  # what the value looks like once shown: \x1b]0;pwned\x07


def poison(path: Path) -> dict[str, Any]:
    """Hostile text in every live name and description the commands show."""
    data: dict[str, Any] = json.loads(path.read_text())
    for i, ref in enumerate(data["connectionreferences"]):
        ref["connectionreferencedisplayname"] = f"{HOSTILE} {i}"
        ref["description"] = f"{HOSTILE} description {i}"
    for c in data["connections"]:
        c["properties"]["displayName"] = f"{HOSTILE} {c['name'][:6]}"
    for w in data["workflows"]:
        w["name"] = f"{HOSTILE} flow"
    for u in data["systemusers"]:
        u["fullname"] = f"{HOSTILE} user"
    path.write_text(json.dumps(data, indent=2))
    return data


def assert_inert(*texts: str) -> None:
    for text in texts:
        found = RAW.search(text)
        if found is not None:
            around = text[max(0, found.start() - 60):found.end() + 20]
            raise AssertionError(f"raw {found.group(0)!r} in the output: ...{around!r}")


def assert_markdown_inert(text: str) -> None:
    assert_inert(text)
    for markup in ("`code`", "[link](", "![img](", "<img", "@admin", "https://evil", "a|b"):
        assert markup not in text, markup


@pytest.fixture
def hostile(quickstart: Workspace) -> Workspace:
    for env in ("dev", "prod"):
        poison(quickstart.dir / f"{env}.json")
    return quickstart


def test_plan_text_and_markdown(hostile: Workspace) -> None:
    md_path = hostile.dir / "plan.md"
    r = hostile.run("plan", "--markdown", str(md_path))
    assert r.code == 0, r.err
    assert_inert(r.out, r.err)
    assert VISIBLE in r.out  # shown, escaped, not dropped
    assert "\\u202e" in r.out and "\\ud800" in r.out and "\\r" in r.out
    md = md_path.read_text()
    assert_markdown_inert(md)
    assert "\\[link\\]" in md and "@&#8203;admin" in md and "&lt;img" in md and "a\\|b" in md


def test_apply_text(hostile: Workspace) -> None:
    r = hostile.run("apply", "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert_inert(r.out, r.err)
    assert "Apply complete!" in r.out


def test_drift_text_and_markdown(hostile: Workspace) -> None:
    assert hostile.run("apply", "--auto-approve").code == 0
    # Behind connref's back: a hostile display name, description and another connection.
    data = json.loads((hostile.dir / "dev.json").read_text())
    ref = next(r for r in data["connectionreferences"]
               if r["connectionreferencelogicalname"] == "contoso_sharedsharepointonline_8f4b0")
    ref["connectionreferencedisplayname"] = HOSTILE
    ref["description"] = HOSTILE
    ref["connectionid"] = "b2bb7685c04840d99f36de148d127549"
    ref["versionnumber"] = ref.get("versionnumber", 0) + 1000
    (hostile.dir / "dev.json").write_text(json.dumps(data, indent=2))
    md_path = hostile.dir / "drift.md"
    r = hostile.run("drift", "--markdown", str(md_path))
    assert r.code == 2, r.out + r.err
    assert_inert(r.out, r.err)
    assert VISIBLE in r.out
    md = md_path.read_text()
    assert_markdown_inert(md)
    assert "rebound" in md


def test_lint_text(hostile: Workspace) -> None:
    r = hostile.run("lint", "-e", "dev")
    assert r.code in (0, 2), r.err
    assert_inert(r.out, r.err)
    assert VISIBLE in r.out  # the flows' names are quoted


def test_whoami_text(hostile: Workspace) -> None:
    r = hostile.run("whoami", "-e", "dev")
    assert r.code in (0, 2), r.err
    assert_inert(r.out, r.err)
    assert VISIBLE in r.out


def test_import_yaml_round_trips_the_live_strings(hostile: Workspace) -> None:
    r = hostile.run("import", "-e", "dev")
    assert r.code == 0, r.err
    assert_inert(r.out, r.err)  # no raw character in the YAML either: escaped in quotes, or in comments
    doc = yaml.safe_load(r.out)
    live = {ref["connectionreferencelogicalname"]: ref
            for ref in json.loads((hostile.dir / "dev.json").read_text())["connectionreferences"]}
    imported = doc["references"]
    assert imported
    for name, declared in imported.items():
        assert declared["display_name"] == live[name]["connectionreferencedisplayname"]
        assert declared["description"] == live[name]["description"]
    # And the file it writes is a config connref reads back.
    out = hostile.dir / "imported.yaml"
    assert hostile.run("import", "-e", "dev", "-o", str(out)).code == 0
    assert yaml.safe_load(out.read_text(encoding="utf-8")) == doc


def test_error_messages_quoting_live_values(hostile: Workspace) -> None:
    config = hostile.config.read_text()
    # A selector no connection matches: the error lists the connections it saw, by their (hostile) names.
    config = config.replace("contoso_sharedoffice365_d4c61: {owner: svc-flows@contoso.com}\n",
                            "contoso_sharedoffice365_d4c61: {owner: svc-flows@contoso.com, display_name: Nope}\n", 1)
    hostile.config.write_text(config)
    r = hostile.run("plan", "-e", "dev")
    assert r.code == 1
    assert "Traceback" not in r.err
    assert_inert(r.out, r.err)


def test_hostile_text_in_the_config_is_shown_inert(quickstart: Workspace) -> None:
    config = quickstart.config.read_text().replace(
        "description: Posts to the finance channel",
        'description: "Posts \\e]0;pwned\\a to \\u202Efinance"', 1)
    quickstart.config.write_text(config)
    md_path = quickstart.dir / "plan.md"
    r = quickstart.run("plan", "-e", "dev", "--markdown", str(md_path))
    if r.code == 1:  # the config refuses control characters outright: also inert
        assert_inert(r.out, r.err)
        return
    assert_inert(r.out, r.err, md_path.read_text())
    assert "pwned" in r.out  # shown (as a JSON-quoted value, its controls escaped)


# What a newline in data tries: to print a line that reads as connref's own (an error of its own, a bullet).
FORGED = "\n  - prod: nothing to fix, this plan was approved by the security team"


def test_a_newline_in_live_text_forges_no_line_of_an_error(quickstart: Workspace) -> None:
    path = quickstart.dir / "dev.json"
    data = json.loads(path.read_text())
    (conn,) = [c for c in data["connections"] if c["name"] == "3d6a16d6f6474c67b3e2bca7ae4530db"]
    conn["properties"]["displayName"] = "Megan's Outlook" + FORGED
    for w in data["workflows"]:
        w["name"] += FORGED
    path.write_text(json.dumps(data, indent=2))
    quickstart.config.write_text(quickstart.config.read_text().replace(
        "contoso_sharedoffice365_d4c61: {owner: svc-flows@contoso.com}\n",
        "contoso_sharedoffice365_d4c61: 3d6a16d6f6474c67b3e2bca7ae4530db\n", 1))
    r = quickstart.run("plan", "-e", "dev")
    assert r.code == 1, r.out + r.err
    head = re.search(r"The plan cannot be made: (\d+) problems? to fix first:", r.err)
    assert head, r.err
    bullets = [line for line in r.err.splitlines() if line.startswith("  - ")]
    assert len(bullets) == int(head.group(1)), r.err
    assert not any(line.startswith("  - prod:") for line in r.err.splitlines())
    assert "Megan's Outlook\\n  - prod" in r.err  # shown, escaped, on its problem's line
    # The flows' names listed when a flow is not found: one line.
    r = quickstart.run("explain", "-e", "dev", "no such flow")
    assert r.code == 1 and "its cloud flows" in r.err, r.err
    assert not any(line.startswith("  - prod:") for line in r.err.splitlines()), r.err


def test_a_newline_in_a_config_key_or_file_name_forges_no_config_error(quickstart: Workspace) -> None:
    config = quickstart.config.read_text().replace(
        "  contoso_Teams:\n",
        '  "contoso_x\\nconnref.yaml:1:1: version: injected problem":\n    connector: shared_teams\n'
        "  contoso_Teams:\n", 1)
    quickstart.config.write_text(config)
    r = quickstart.run("validate")
    assert r.code == 1
    head = re.search(r"(\d+) problems in the config:", r.err)
    assert head, r.err
    located = [line for line in r.err.splitlines() if re.match(r"\s*\S+\.yaml:\d+:\d+: ", line)]
    assert len(located) == int(head.group(1)), r.err
    assert not any(line.lstrip().startswith("connref.yaml:1:1") for line in r.err.splitlines())
    r = quickstart.run("-c", "missing\nconnref.yaml:1:1: version: injected", "validate")
    assert r.code == 1 and len(r.err.strip().splitlines()) == 1, r.err


def test_a_lone_surrogate_in_the_config_goes_through_plan_apply_and_a_saved_plan(quickstart: Workspace) -> None:
    # import writes a live lone surrogate back as its \u escape, so a config can hold one: every command
    # that digests, saves or shows the config must take it (a digest used to raise UnicodeEncodeError).
    quickstart.config.write_text(quickstart.config.read_text().replace(
        "    display_name: SharePoint ContosoFlows\n", '    display_name: "SharePoint \\uD800 ContosoFlows"\n', 1))
    assert quickstart.run("validate").code == 0
    r = quickstart.run("plan", "-e", "dev", "--json")
    assert r.code == 0 and "Traceback" not in r.err, r.err
    assert json.loads(r.out)["format_version"]
    assert_inert(r.out, r.err)
    md_path = quickstart.dir / "plan.md"
    r = quickstart.run("plan", "-e", "dev", "--out", str(quickstart.dir / "plan.json"), "--markdown", str(md_path))
    assert r.code == 0, r.err
    assert_inert(r.out, md_path.read_text(encoding="utf-8"))
    assert "\\ud800" in r.out
    r = quickstart.run("apply", str(quickstart.dir / "plan.json"))
    assert r.code == 0, r.out + r.err
    (live,) = [ref for ref in quickstart.data("dev")["connectionreferences"]
               if ref["connectionreferencelogicalname"] == "contoso_sharedsharepointonline_30e7d"]
    assert live["connectionreferencedisplayname"] == "SharePoint \ud800 ContosoFlows"
    assert quickstart.run("plan", "-e", "dev", "--detailed-exitcode").code == 0


def test_the_saved_plan_is_safe_to_print_and_keeps_readable_names(quickstart: Workspace) -> None:
    path = quickstart.dir / "dev.json"
    data = json.loads(path.read_text())
    data["connectionreferences"][0]["connectionreferencedisplayname"] = "Caf\u00e9 \u202etxt.exe\x85 \U0001F600"
    path.write_text(json.dumps(data, indent=2))
    saved = quickstart.dir / "plan.json"
    assert quickstart.run("plan", "-e", "dev", "--out", str(saved)).code == 0
    text = saved.read_text(encoding="utf-8")
    assert_inert(text)
    assert "Caf\u00e9 \\u202etxt.exe\\u0085 \U0001F600" in text  # only what acts on a terminal is escaped
    r = quickstart.run("apply", str(saved))
    assert r.code == 0, r.out + r.err
