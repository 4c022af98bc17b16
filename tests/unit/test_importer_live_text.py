"""Import and live text it cannot write as it is: a line break in a name quoted by a comment stays on the
comment's line (no line that reads as a binding import commented out, re-import stable); a blank display
name or description is taken as none; a reference whose logical name the config cannot declare is left
out with a comment saying why. Whatever the live data, the config written is one the loader accepts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from builders import ADOPTION, BOB, C_ALICE_SP, C_BOB_SP, SA, flow, messy_live, replace_ref

from reconciler.adoption.import_generate import import_environment, unfit_references
from reconciler.adoption.yamledit import comment_lines
from reconciler.config.loader import load_config
from reconciler.domain.model import LiveEnvironment, LiveUser
from unit.test_importer import EXISTING, do_import, prose, write_config

# What a maker can type into a connection's display name: a line that reads as a binding, commented out.
FORGED = "contoso_sharedsharepointonline_8f4b0: 216696a069a2447b9b88c8f1bed3c86d #"


def comment_texts(text: str) -> list[str]:
    """Each comment line of ``text``, without its indentation."""
    return [line.strip() for line in text.splitlines() if line.lstrip().startswith("#")]


def test_a_comment_is_the_lines_connref_meant() -> None:
    text = f"contoso_x: abc  # Megan's\n{FORGED}\r\u2028x"
    shown = "contoso_x: abc  # Megan's\\n" + FORGED + "\\r\\u2028x"
    # Commented-out YAML: one line, exactly.
    assert comment_lines(text, "  ", wrap=False) == [f"  # {shown}"]
    # Prose: wrapped at spaces only, every line after the first marked as a continuation.
    wrapped = comment_lines(text * 3, "  ")
    assert len(wrapped) > 1
    assert wrapped[0].startswith("  # ") and all(line.startswith("  #   ") for line in wrapped[1:])
    assert prose("\n".join(wrapped)) == prose(shown * 3)


def test_a_line_break_in_a_connection_name_forges_no_binding() -> None:
    # Bob's connection: plan would refuse it (the service account may not use it), so import writes the
    # binding commented out, labelled with the connection's display name.
    bob = dataclasses.replace(C_BOB_SP, display_name=f"Megan's SharePoint\n{FORGED}")
    env = messy_live()
    env = dataclasses.replace(env, connections=tuple(bob if c.name == bob.name else c for c in env.connections))
    text = do_import(env, service_account=SA)
    assert f"# contoso_sharedsharepointonline_30e7d: {C_BOB_SP.name}  # Megan's SharePoint\\n{FORGED}" in text
    assert all(not c.startswith(f"# {FORGED}") for c in comment_texts(text)), text


def test_a_line_break_in_a_flow_name_stays_in_its_comment() -> None:
    env = messy_live()
    odd = flow(f"Intake\n{FORGED}", "contoso_sharedsharepointonline_30e7d")
    env = dataclasses.replace(env, flows=(*env.flows, odd))
    text = do_import(env, service_account=SA)
    assert prose(f"Intake\\n{FORGED}") in prose(text)
    assert all(not c.startswith(f"# {FORGED}") for c in comment_texts(text)), text


def owner_with_a_line_break() -> LiveEnvironment:
    """The messy environment where Bob, who owns a reference, has no UPN and a full name with a line
    break that reads as YAML."""
    odd = LiveUser(BOB.systemuserid, BOB.object_id, None, "Megan\nprune: true")
    env = messy_live()
    return dataclasses.replace(env, users=tuple(odd if u.systemuserid == BOB.systemuserid else u for u in env.users))


def test_a_line_break_in_an_owner_name_keeps_reimport_stable(tmp_path: Path) -> None:
    env = owner_with_a_line_break()
    first = do_import(env, EXISTING)
    assert "owned by Megan\\nprune: true: with service_account set" in first
    assert not any(c.startswith("# prune: true") for c in comment_texts(first)), first
    assert do_import(env, first) == first
    load_config(str(write_config(tmp_path, first)))


@pytest.mark.parametrize("blank", [" ", "\t", "\u3000", "\x85", "\x0c", "\n", " \r\n "])
def test_blank_display_names_and_descriptions_are_taken_as_none(tmp_path: Path, blank: str) -> None:
    env = replace_ref(messy_live(), "contoso_Outlook", display_name=blank, description=blank)
    text = do_import(env, service_account=SA)
    config = load_config(str(write_config(tmp_path, text)))
    outlook = config.references["contoso_Outlook"]
    assert (outlook.display_name, outlook.description) == ("contoso_Outlook", None)
    assert "no display name today: plan will set this one" in prose(text)
    assert "no description today, only blank space: plan will clear it" in prose(text)
    assert do_import(env, text) == text


@pytest.mark.parametrize("name", ["contoso_a b", "contoso_ünï", "contoso_a: b", "contoso_a\nb: c", "nounderscore"])
def test_a_logical_name_the_config_cannot_declare_is_left_out_with_why(tmp_path: Path, name: str) -> None:
    env = messy_live()
    env = dataclasses.replace(env, references=(
        *env.references, ADOPTION.ref(name, "Odd one", connection=C_ALICE_SP.name)))
    assert [r.logical_name for r, _ in unfit_references(env.references)] == [name]
    text = do_import(env, EXISTING)
    config = load_config(str(write_config(tmp_path, text)))
    assert name not in config.references
    assert set(config.references) == {r.logical_name for r in messy_live().references if r.in_solution}
    assert "has an invalid logical name: " in prose(text)
    assert "the config cannot declare it, so plan and apply leave it as it is" in prose(text)
    assert do_import(env, text) == text
    # Nothing of it but the comment: no key, no binding.
    assert all(name.split("\n")[0] not in line for line in text.splitlines() if not line.lstrip().startswith("#"))


def test_only_references_the_config_cannot_declare() -> None:
    text = import_environment(
        ADOPTION.live([ADOPTION.ref("contoso_a b", "A b")]), solution="ContosoFlows", env_name="dev",
        env_url="local:dev.json", environment_id=None)
    assert yaml.safe_load(text)["references"] == {}
    assert "not imported: 'contoso_a b' (in solution ContosoFlows)" in prose(text)
