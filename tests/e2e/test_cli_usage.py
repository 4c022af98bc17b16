"""The command line as people type it: global options before or after the command, usage errors that
exit 1 (2 means changes, drift or findings) with the command's own usage and a did-you-mean, ``-e`` with
one or several environments, and ``CONNREF_CONFIG``."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e.e2e_support import Workspace, run_cli


def test_global_options_after_the_command(quickstart: Workspace) -> None:
    before = run_cli("-c", str(quickstart.config), "--no-color", "validate")
    after = run_cli("validate", "-c", str(quickstart.config), "--no-color")
    assert before.code == after.code == 0
    assert before.out == after.out and "The configuration is valid" in after.out


def test_drift_accepts_no_color_after_the_command(quickstart: Workspace) -> None:
    r = run_cli("drift", "--no-color", "-c", str(quickstart.config), "-e", "dev")
    assert r.code == 2, r.err  # the quickstart's dev has drifted from the config: that is not a usage error
    assert "Drift: " in r.out
    assert "\x1b[" not in r.out


def test_state_subcommand_takes_global_options_last(quickstart: Workspace) -> None:
    r = run_cli("state", "list", "-c", str(quickstart.config))
    assert r.code == 0, r.err


def test_config_after_the_command_wins_over_one_before(quickstart: Workspace, tmp_path: Path) -> None:
    r = run_cli("-c", str(tmp_path / "missing.yaml"), "validate", "-c", str(quickstart.config))
    assert r.code == 0, r.err


@pytest.mark.parametrize(
    ("argv", "usage", "hint"),
    [
        (["plna"], "usage: connref [", "Did you mean 'plan'?"),
        (["plan", "--no-colour"], "usage: connref plan ", "Did you mean '--no-color'"),
        (["drift", "--jsn"], "usage: connref drift ", "Did you mean '--json'"),
        (["state", "shwo"], "usage: connref state ", "Did you mean 'show'?"),
        (["state", "show"], "usage: connref state show ", "required: ENV"),
        (["plan", "--lock-timeout", "3"], "usage: connref plan ", "unrecognized arguments"),
        (["apply", "--lock-timeout", "soon"], "usage: connref apply ", "invalid float value"),
    ],
)
def test_usage_errors_exit_1_with_the_commands_usage(argv: list[str], usage: str, hint: str) -> None:
    r = run_cli(*argv)
    assert r.code == 1
    assert r.err.startswith(usage), r.err
    assert hint in r.err
    assert r.out == ""


def test_help_exits_0() -> None:
    r = run_cli("plan", "--help")
    assert r.code == 0
    assert "--detailed-exitcode" in r.out and "--no-color" in r.out


def _plan_envs(r_out: str) -> list[str]:
    return [line.split()[1] for line in r_out.splitlines() if line.startswith("Environment ")]


@pytest.mark.parametrize(
    "env_args",
    [["-e", "dev", "prod"], ["-e", "dev,prod"], ["-e", "dev", "-e", "prod"], ["--env", "prod,dev"]],
)
def test_several_environments_however_written(quickstart: Workspace, env_args: list[str]) -> None:
    r = quickstart.run("plan", *env_args)
    assert r.code == 0, r.err
    assert _plan_envs(r.out) == ["dev", "prod"]  # config order


def test_one_environment(quickstart: Workspace) -> None:
    r = quickstart.run("plan", "-e", "prod")
    assert r.code == 0, r.err
    assert _plan_envs(r.out) == ["prod"]


@pytest.mark.parametrize("command", ["import", "settings", "whoami"])
@pytest.mark.parametrize("env_args", [["-e", "dev", "prod"], ["-e", "dev,prod"], ["-e", "dev", "-e", "prod"]])
def test_single_environment_commands_refuse_several(
    quickstart: Workspace, command: str, env_args: list[str]
) -> None:
    r = quickstart.run(command, *env_args)
    assert r.code == 1
    assert f"usage: connref {command} " in r.err
    assert f"{command} works on one environment at a time; got 2: dev, prod" in r.err
    assert r.out == ""


def test_an_empty_environment_name_is_a_usage_error(quickstart: Workspace) -> None:
    r = quickstart.run("plan", "-e", "dev,")
    assert r.code == 1 and "empty environment name" in r.err


def test_a_mistyped_environment_gets_a_suggestion(quickstart: Workspace) -> None:
    r = quickstart.run("plan", "-e", "prdo")
    assert r.code == 1
    assert "unknown environment 'prdo'" in r.err and "did you mean 'prod'?" in r.err
    r = quickstart.run("whoami", "-e", "deb")
    assert r.code == 1 and "did you mean 'dev'?" in r.err


def test_connref_config_names_the_config(
    quickstart: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert run_cli("validate").code == 1  # no connref.yaml here
    monkeypatch.setenv("CONNREF_CONFIG", str(quickstart.config))
    r = run_cli("validate")
    assert r.code == 0, r.err
    # -c still wins over the variable.
    r = run_cli("validate", "-c", str(elsewhere / "other.yaml"))
    assert r.code == 1 and "other.yaml" in r.err


def test_a_bug_ends_in_one_line_that_says_so_and_its_traceback_only_with_v(
        quickstart: Workspace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from reconciler import commands
    from reconciler.cli import run

    def broken(*args: object, **kwargs: object) -> int:
        raise KeyError("display_name\x1b[2J")

    monkeypatch.setattr(commands, "dispatch", broken)
    assert run(["-c", str(quickstart.config), "plan"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "\x1b" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("Error: connref failed unexpectedly (KeyError: 'display_name\\x1b[2J'). This is a bug")
    assert run(["-c", str(quickstart.config), "-v", "plan"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err
