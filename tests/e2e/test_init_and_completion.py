"""Getting started without the repository: ``connref init`` (a starter config, or with ``--emulator`` the
quickstart, ready to plan), and shell completion (``connref completion bash|zsh|fish``), the bash one run
for real with ``compgen``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from e2e.e2e_support import QUICKSTART, Workspace, run_cli
from reconciler.config.loader import load_config
from reconciler.config.schema import render_schema

BIN = Path(sys.executable).parent  # where the connref script of this environment is


# --------------------------------------------------------------------------- init


def _without_keys(doc: dict[str, Any]) -> dict[str, Any]:
    """The data with what init makes fresh (signing key, the demo secret's hash) taken out."""
    doc = json.loads(json.dumps(doc))
    doc.pop("signing_key_pem")
    for app in doc["applications"]:
        app.pop("client_secret_sha256")
    return doc


def test_init_emulator_writes_the_quickstart_ready_to_plan(tmp_path: Path) -> None:
    target = tmp_path / "try"
    r = run_cli("init", "--emulator", str(target))
    assert r.code == 0, r.err
    assert {p.name for p in target.iterdir()} == {"connref.yaml", "dev.json", "test.json", "prod.json",
                                                  ".demo-secret", "connref.schema.json"}
    assert f"cd {target} && connref plan" in r.out
    for env in ("dev", "test", "prod"):
        made = json.loads((target / f"{env}.json").read_text())
        assert _without_keys(made) == _without_keys(json.loads((QUICKSTART / f"{env}.json").read_text()))
    config = (target / "connref.yaml").read_text()
    assert config.splitlines()[0] == "# yaml-language-server: $schema=connref.schema.json"
    assert config.split("\n", 1)[1] == (QUICKSTART / "connref.yaml").read_text().split("\n", 1)[1]
    assert (target / ".demo-secret").stat().st_mode & 0o077 == 0
    # It works: MSAL signs in with the fresh secret, plan shows the quickstart's changes, apply converges.
    ws = Workspace(target, target / "connref.yaml")
    r = ws.run("plan", "--detailed-exitcode")
    assert r.code == 2, r.err
    assert "Plan: 2 to add, 13 to change, 0 to destroy." in r.out
    assert ws.run("apply", "--auto-approve").code == 0
    assert ws.run("plan", "--detailed-exitcode").code == 0


def test_init_writes_a_valid_starter_and_its_schema(tmp_path: Path) -> None:
    r = run_cli("init", str(tmp_path))
    assert r.code == 0, r.err
    config = load_config(str(tmp_path / "connref.yaml"))
    assert list(config.environments) == ["dev"]
    assert (tmp_path / "connref.schema.json").read_text() == render_schema()
    text = (tmp_path / "connref.yaml").read_text()
    assert text.startswith("# yaml-language-server: $schema=connref.schema.json\n")
    assert "<-" in text  # the values to replace are marked


def test_init_never_overwrites_without_force(tmp_path: Path) -> None:
    (tmp_path / "connref.yaml").write_text("mine\n")
    r = run_cli("init", str(tmp_path))
    assert r.code == 1
    assert "already has connref.yaml" in r.err and "--force" in r.err
    assert (tmp_path / "connref.yaml").read_text() == "mine\n"
    assert not (tmp_path / "connref.schema.json").exists()  # nothing at all was written
    assert run_cli("init", str(tmp_path), "--force").code == 0
    assert (tmp_path / "connref.yaml").read_text() != "mine\n"


def test_init_in_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = run_cli("init")
    assert r.code == 0 and "then connref validate" in r.out
    assert run_cli("validate").code == 0


# --------------------------------------------------------------------------- completion


def _complete(line: str, cwd: Path, env: dict[str, str] | None = None) -> list[str]:
    """What bash offers for ``line`` (completing its last word; a trailing space starts a new word), with
    the script ``connref completion bash`` prints."""
    script = run_cli("completion", "bash")
    assert script.code == 0
    words = line.split() + ([""] if line.endswith(" ") else [])
    probe = (
        f"{script.out}\n"
        f"COMP_WORDS=({' '.join(_bash_quote(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        "_connref\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    full_env = {k: v for k, v in os.environ.items() if k != "CONNREF_CONFIG"}
    full_env.update({"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **(env or {})})
    p = subprocess.run(["bash", "--norc", "--noprofile", "-c", probe], cwd=cwd, env=full_env, capture_output=True,
                       text=True, timeout=120, check=False)
    assert p.returncode == 0, p.stderr
    return sorted(x for x in p.stdout.splitlines() if x)


def _bash_quote(word: str) -> str:
    return "'" + word.replace("'", "'\\''") + "'"


needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


@needs_bash
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("connref pl", ["plan"]),
        ("connref ", ["apply", "completion", "drift", "emulator", "import", "init", "lint", "plan", "schema",
                      "settings", "state", "validate", "whoami"]),
        ("connref plan --no-c", ["--no-color"]),
        ("connref drift --j", ["--json"]),
        ("connref -c x.yaml state s", ["show"]),
        ("connref completion ", ["bash", "fish", "zsh"]),
        ("connref apply --auto", ["--auto-approve"]),
    ],
)
def test_bash_completes_commands_and_options(tmp_path: Path, line: str, expected: list[str]) -> None:
    got = _complete(line, tmp_path)
    assert all(e in got for e in expected), got
    if line != "connref ":
        assert got == expected


@needs_bash
def test_bash_completes_environment_names_from_the_config(quickstart: Workspace, tmp_path: Path) -> None:
    cfg = str(quickstart.config)
    assert _complete(f"connref plan -c {cfg} -e ", tmp_path) == ["dev", "prod", "test"]
    assert _complete(f"connref -c {cfg} lint --env p", tmp_path) == ["prod"]
    assert _complete(f"connref -c {cfg} state show ", tmp_path) == ["dev", "prod", "test"]
    # Without -c: $CONNREF_CONFIG, else connref.yaml here.
    assert _complete("connref whoami -e ", quickstart.dir) == ["dev", "prod", "test"]
    assert _complete("connref whoami -e ", tmp_path, env={"CONNREF_CONFIG": cfg}) == ["dev", "prod", "test"]
    assert _complete("connref whoami -e ", tmp_path) == []  # no config: nothing, and no error


@needs_bash
def test_bash_completes_file_names_where_a_file_goes(tmp_path: Path) -> None:
    (tmp_path / "plan.json").write_text("{}")
    (tmp_path / "planned.md").write_text("")
    assert _complete("connref apply pl", tmp_path) == ["plan.json", "planned.md"]
    assert _complete("connref plan --out pl", tmp_path) == ["plan.json", "planned.md"]


def test_list_environments(quickstart: Workspace, tmp_path: Path) -> None:
    r = run_cli("completion", "--list-environments", "-c", str(quickstart.config))
    assert (r.code, r.out) == (0, "dev\ntest\nprod\n")
    r = run_cli("completion", "--list-environments", "-c", str(tmp_path / "missing.yaml"))
    assert (r.code, r.out, r.err) == (0, "", "")


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_every_shell_gets_every_command(shell: str) -> None:
    r = run_cli("completion", shell)
    assert r.code == 0
    for command in ("validate", "plan", "apply", "drift", "import", "lint", "settings", "whoami", "state",
                    "emulator", "init", "completion", "schema"):
        assert command in r.out
    assert "--list-environments" in r.out  # environment names come from the config at completion time
    if shell == "bash" and shutil.which("bash"):
        assert subprocess.run(["bash", "-n"], input=r.out, text=True, check=False).returncode == 0


def test_completion_needs_a_shell() -> None:
    r = run_cli("completion")
    assert r.code == 1 and "SHELL" in r.err
    r = run_cli("completion", "tcsh")
    assert r.code == 1 and "invalid choice" in r.err
