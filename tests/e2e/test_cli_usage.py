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


# An empty path is what an unset variable gives (``apply --auto-approve "$PLANFILE"``): every option and
# argument that takes a path refuses it as a usage error naming it, never reads it as "not given".
EMPTY_PATHS = [
    (["apply", "--auto-approve", "{}"], "argument PLANFILE"),
    (["apply", "-e", "dev", "--auto-approve", "--", "{}"], "argument PLANFILE"),
    (["plan", "-e", "dev", "--out", "{}"], "argument --out"),
    (["plan", "-e", "dev", "--markdown", "{}"], "argument --markdown"),
    (["drift", "-e", "dev", "--markdown", "{}"], "argument --markdown"),
    (["show", "{}"], "argument PLANFILE"),
    (["show", "plan.json", "--markdown", "{}"], "argument --markdown"),
    (["validate", "-c", "{}"], "argument -c/--config"),
    (["-c", "{}", "validate"], "argument -c/--config"),
    (["import", "-e", "dev", "-o", "{}"], "argument -o/--output"),
    (["import", "-e", "dev", "--from-settings", "{}"], "argument --from-settings"),
    (["settings", "-e", "dev", "-o", "{}"], "argument -o/--output"),
    (["schema", "-o", "{}"], "argument -o/--output"),
    (["state", "migrate", "--to", "local", "--dir", "{}"], "argument --dir"),
    (["init", "{}"], "argument DIR"),
    (["emulator", "--data", "{}"], "argument --data"),
    (["emulator", "--faults", "{}"], "argument --faults"),
    (["emulator", "--tls-cert", "{}", "--tls-key", "k.pem"], "argument --tls-cert"),
    (["emulator", "--tls-cert", "c.pem", "--tls-key", "{}"], "argument --tls-key"),
]


@pytest.mark.parametrize("empty", ["", " ", "\t"])
@pytest.mark.parametrize(("argv", "named"), EMPTY_PATHS)
def test_an_empty_path_is_a_usage_error_naming_the_option(
    quickstart: Workspace, monkeypatch: pytest.MonkeyPatch, argv: list[str], named: str, empty: str
) -> None:
    monkeypatch.chdir(quickstart.dir)  # the quickstart's connref.yaml is the config when -c is not given
    before = {p.name: p.read_bytes() for p in quickstart.dir.iterdir() if p.is_file()}
    r = run_cli(*[a.replace("{}", empty) for a in argv])
    assert r.code == 1, r.out + r.err
    assert r.err.startswith("usage: connref " + ("[" if argv[0].startswith("-") else argv[0])), r.err
    assert f"{named}: expected a path, got {empty!r}" in r.err, r.err
    assert "Traceback" not in r.err
    assert r.out == ""
    # Nothing was applied, saved or written: every file of the workspace is as it was, and none was added.
    assert {p.name: p.read_bytes() for p in quickstart.dir.iterdir() if p.is_file()} == before


def test_every_path_option_refuses_an_empty_path() -> None:
    """A path option added later without ``type=path_arg`` would bring the empty-path trap back."""
    import argparse

    from reconciler.cli import build_parser, path_arg

    def walk(parser: argparse.ArgumentParser) -> list[argparse.Action]:
        found: list[argparse.Action] = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    found += walk(sub)
            else:
                found.append(action)
        return found

    path_metavars = {"FILE", "PATH", "PLANFILE", "DIR", "PEM"}
    paths = [a for a in walk(build_parser()) if a.metavar in path_metavars]
    assert len(paths) >= 15  # the walk reached the commands' options, not only the top level
    assert [a.option_strings or a.dest for a in paths if a.type is not path_arg] == []


def test_a_saved_plan_variable_left_unset_applies_nothing(quickstart: Workspace) -> None:
    """The pipeline mistake itself: ``connref apply --auto-approve "$PLANFILE"`` with PLANFILE unset."""
    dev, prod = quickstart.data("dev"), quickstart.data("prod")
    r = quickstart.run("apply", "--auto-approve", "")
    assert r.code == 1
    assert "Apply complete" not in r.out and r.out == ""
    assert quickstart.data("dev") == dev and quickstart.data("prod") == prod
    assert not (quickstart.dir / "state").exists()
