"""integrations/run.py without running connref: which ``--markdown`` the arguments give, and which errors in
connref's stderr become annotations. (tests/e2e/test_integrations.py runs it through the action and the
template.)"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from reconciler.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("connref_ci_run", ROOT / "integrations" / "run.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses looks its module up
    spec.loader.exec_module(module)
    return module


run_py = _load()


@pytest.mark.parametrize(("args", "given", "path"), [
    ("--out plan.json", False, None),
    ("--markdown mine.md", True, "mine.md"),
    ("--markdown=/x/mine.md", True, "/x/mine.md"),
    ("--mark mine.md --json", True, "mine.md"),  # argparse takes an unambiguous prefix
    ("--markdown a.md --markdown=b.md", True, "b.md"),  # the last one wins
    ("--markdown", True, None),  # connref refuses it: nothing to report
    ("--markdown=", True, None),
    ("-- --markdown x.md", False, None),  # after --, not an option
])
def test_markdown_given_in_the_arguments(args: str, given: bool, path: str | None) -> None:
    assert run_py.given_markdown(args.split()) == (given, Path(path) if path else None)


def test_a_given_markdown_replaces_the_scripts_own() -> None:
    run = run_py.plan_run({"CONNREF_COMMAND": "plan", "CONNREF_ARGS": "--markdown=/x/mine.md",
                           "CONNREF_BIN": "connref", "RUNNER_TEMP": "/tmp/rt"})
    assert run.markdown == Path("/x/mine.md") and not run.own_markdown
    assert [a for a in run.argv if a.startswith("--m")] == ["--markdown=/x/mine.md"]
    own = run_py.plan_run({"CONNREF_COMMAND": "drift", "CONNREF_BIN": "connref", "RUNNER_TEMP": "/tmp/rt"})
    assert own.markdown == Path("/tmp/rt/connref-drift.md") and own.own_markdown


@pytest.mark.parametrize("command", ["plan", "drift", "show"])
def test_only_markdown_starts_with_dash_dash_m(command: str) -> None:
    # given_markdown takes any prefix of --markdown from --m on: true while no other option starts so.
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    parser = sub.choices[command]  # type: ignore[index]
    options = {o for a in parser._actions for o in a.option_strings if o.startswith("--m")}
    assert options == {"--markdown"}


def test_a_usage_error_is_annotated_with_its_did_you_mean() -> None:
    stderr = ("usage: connref plan [-h] [-c PATH]\n"
              "                    [--markdown FILE]\n"
              "connref plan: error: unrecognized arguments: --markdwn x\n"
              "Did you mean '--markdown' (for '--markdwn')?\n"
              "Run 'connref plan --help' for the options of this command.\n")
    run = run_py.plan_run({"CONNREF_COMMAND": "plan", "CONNREF_BIN": "connref"})
    assert run_py.annotations_from(stderr, run) == [
        (None, None, None, "connref plan: unrecognized arguments: --markdwn x Did you mean '--markdown' "
                           "(for '--markdwn')?")]
    # Without the usage lines before it, such a line is not taken for connref's own.
    assert run_py.annotations_from("connref plan: error: x\n", run) == []


def test_markdown_counts_only_when_this_run_wrote_it(tmp_path: Path) -> None:
    mine = tmp_path / "mine.md"
    mine.write_text("an earlier step's plan\n")
    run = run_py.plan_run({"CONNREF_COMMAND": "plan", "CONNREF_ARGS": f"--markdown {mine}", "CONNREF_BIN": "connref"})
    run_py.before_running(run)
    assert mine.is_file() and run_py.fresh_markdown(run) is None  # the user's file stays, and is not this run's
    mine.write_text("this run's plan, longer\n")
    assert run_py.fresh_markdown(run) == mine

    own = run_py.plan_run({"CONNREF_COMMAND": "plan", "CONNREF_BIN": "connref", "CONNREF_OUTPUT_DIR": str(tmp_path)})
    assert own.markdown is not None
    own.markdown.write_text("an earlier step's plan\n")
    run_py.before_running(own)
    assert not own.markdown.exists() and run_py.fresh_markdown(own) is None
