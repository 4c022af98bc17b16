"""Where pipelines run connref: the GitHub action and the Azure DevOps step template run here step by step
with the inputs a workflow passes (tests/e2e/ci_harness.py), on the quickstart; the container image
definition; and the wheel, built and installed into a fresh virtual environment outside the repository,
running the quickstart from there.

The action and the template install connref once per session from this checkout into a virtual environment
(as they would once per job): the first test that needs it pays for the install.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from azure_devops_support import serve_threads
from schema_support import check

from e2e.ci_harness import ROOT, TEMPLATE, run_action, run_template, template_steps
from e2e.e2e_support import QUICKSTART

pytestmark = [pytest.mark.emulator_only, pytest.mark.slow]

INSTALL_TIMEOUT = 900


@pytest.fixture(scope="module")
def runner_temp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RUNNER_TEMP / Agent.TempDirectory shared by the module: the connref venv is installed into it once."""
    return tmp_path_factory.mktemp("runner-temp")


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """The repository a workflow checks out: the quickstart (local: environments, no tenant needed)."""
    target = tmp_path / "flows-config"
    shutil.copytree(QUICKSTART, target, ignore=shutil.ignore_patterns("demo.py", "make_data.py", "__pycache__"))
    return target


@pytest.fixture(autouse=True)
def _plain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    for name in ("GITHUB_ACTIONS", "TF_BUILD", "GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY"):
        monkeypatch.delenv(name, raising=False)


# --------------------------------------------------------------------------- the GitHub action


def test_action_plans_with_the_summary_and_outputs_then_applies_the_saved_plan(workspace: Path,
                                                                               runner_temp: Path) -> None:
    run = run_action({"command": "plan", "args": "--out plan.json"}, workspace=workspace, runner_temp=runner_temp)
    assert run.code == 0, run.stdout + run.stderr  # changes (exit 2) are a result, not a failure
    assert re.search(r"^connref \d", run.steps[1].stdout, re.M), "the install step shows the version installed"
    assert run.outputs["exit-code"] == "2" and run.outputs["changes"] == "true"
    assert run.outputs["markdown"].endswith("connref-plan.md")
    assert run.summary.startswith("<!-- connref:plan -->\n### connref plan")
    assert "**Plan: 2 to add, 13 to change, 0 to destroy.**" in run.summary
    assert (workspace / "plan.json").is_file()
    # connref's own output is passed through with workflow commands switched off around it.
    assert re.search(r"^::stop-commands::(\w+)$.*^::\1::$", run.stdout, re.M | re.S)

    applied = run_action({"command": "apply", "args": "plan.json"}, workspace=workspace, runner_temp=runner_temp)
    assert applied.code == 0, applied.stdout + applied.stderr
    assert "Apply complete! Changes: 2 added, 13 changed, 0 destroyed." in applied.stdout
    assert applied.outputs["exit-code"] == "0" and applied.outputs["markdown"] == ""

    again = run_action({"command": "plan", "environments": "dev"}, workspace=workspace, runner_temp=runner_temp)
    assert again.code == 0 and again.outputs["changes"] == "false"
    assert "No changes." in again.summary.split("<!-- connref:plan -->")[-1]
    assert "Environment `prod`" not in again.summary.split("<!-- connref:plan -->")[-1]


def test_action_reports_config_errors_as_annotations_on_their_lines(workspace: Path, runner_temp: Path) -> None:
    config = workspace / "connref.yaml"
    config.write_text(config.read_text().replace("solution: ContosoFlows", "solution: ContosoFlows\nbogus: 1"))
    line = config.read_text().splitlines().index("bogus: 1") + 1
    run = run_action({"command": "plan"}, workspace=workspace, runner_temp=runner_temp)
    assert run.code == 1
    assert f"::error file=connref.yaml,line={line},col=1,title=connref::bogus: unknown key" in run.stdout
    assert run.outputs["exit-code"] == "1" and run.outputs["changes"] == "false"
    # The plan that failed still gives the pull request its markdown, saying why.
    assert "The plan could not be made" in run.summary and "bogus: unknown key" in run.summary


def test_action_drift_is_a_result_with_its_report_in_the_summary(workspace: Path, runner_temp: Path) -> None:
    assert run_action({"command": "apply", "args": "--auto-approve"}, workspace=workspace,
                      runner_temp=runner_temp).code == 0
    data = json.loads((workspace / "dev.json").read_text())
    row = next(r for r in data["connectionreferences"]
               if r["connectionreferencelogicalname"] == "contoso_sharedoffice365_d4c61")
    row["connectionreferencedisplayname"] = "Renamed in the portal"
    (workspace / "dev.json").write_text(json.dumps(data))
    run = run_action({"command": "drift", "args": "--json"}, workspace=workspace, runner_temp=runner_temp)
    assert run.code == 0, run.stdout + run.stderr
    assert run.outputs["drift"] == "true" and run.outputs["exit-code"] == "2"
    assert run.summary.startswith("<!-- connref:drift -->\n## connref drift: drift found")
    document = run.steps[-1].stdout.split("::stop-commands::", 1)[1].split("\n", 1)[1].rsplit("\n::", 1)[0]
    check("drift", json.loads(document))


def test_action_refuses_an_unknown_command_as_an_annotation(workspace: Path, runner_temp: Path) -> None:
    run = run_action({"command": "destroy"}, workspace=workspace, runner_temp=runner_temp)
    assert run.code == 1
    assert "::error title=connref::connref: command must be one of: validate, plan" in run.stdout


def test_action_reports_only_markdown_this_run_wrote(workspace: Path, runner_temp: Path) -> None:
    first = run_action({"command": "plan", "environments": "dev"}, workspace=workspace, runner_temp=runner_temp)
    assert first.code == 0 and first.outputs["markdown"].endswith("connref-plan.md")
    assert Path(first.outputs["markdown"]).is_file()

    # A later step in the same job stops at a usage error before writing: the plan the first step left in
    # RUNNER_TEMP is not this run's, so a comment step must not post it for this failed run.
    failed = run_action({"command": "plan", "args": "--bogus"}, workspace=workspace, runner_temp=runner_temp)
    assert failed.code == 1 and failed.outputs["exit-code"] == "1"
    assert failed.outputs["markdown"] == "" and failed.summary == ""
    assert "::error title=connref::connref plan: unrecognized arguments: --bogus" in failed.stdout


def test_action_honours_markdown_given_as_one_argument_and_leaves_it_alone(workspace: Path,
                                                                           runner_temp: Path) -> None:
    run = run_action({"command": "plan", "environments": "dev", "args": "--markdown=mine.md"},
                     workspace=workspace, runner_temp=runner_temp)
    assert run.code == 0, run.stdout + run.stderr
    assert run.outputs["markdown"] == "mine.md"  # connref runs in the workspace: relative to it
    assert run.steps[-1].stderr.count("--markdown") == 1  # the action added no second --markdown
    written = (workspace / "mine.md").read_text(encoding="utf-8")
    assert written.startswith("<!-- connref:plan -->") and run.summary.strip() == written.strip()

    # The user's file is not removed when a run does not write it, nor reported as this run's.
    again = run_action({"command": "plan", "args": "--markdown=mine.md --markdwn x"}, workspace=workspace,
                       runner_temp=runner_temp)
    assert again.code == 1 and again.outputs["markdown"] == "" and again.summary == ""
    assert (workspace / "mine.md").read_text(encoding="utf-8") == written
    assert ("::error title=connref::connref plan: unrecognized arguments: --markdwn x "
            "Did you mean '--markdown' (for '--markdwn')?") in again.stdout


# --------------------------------------------------------------------------- the Azure DevOps template


def _macros(workspace: Path, runner_temp: Path) -> dict[str, str]:
    return {"Agent.TempDirectory": str(runner_temp), "Build.SourcesDirectory": str(workspace.parent)}


def test_template_plans_with_summary_and_output_variables(workspace: Path, runner_temp: Path) -> None:
    params = {"command": "plan", "workingDirectory": str(workspace), "connrefPath": str(ROOT),
              "environments": "dev,prod", "args": "--out plan.json"}
    run = run_template(params, macros=_macros(workspace, runner_temp))
    assert run.code == 0, run.stdout + "".join(s.stderr for s in run.steps)
    assert run.variables["connref.connrefChanges"] == "true"
    assert run.variables["connref.connrefExitCode"] == "2"
    (summary,) = run.summaries
    assert Path(summary).read_text().startswith("<!-- connref:plan -->")
    assert (workspace / "plan.json").is_file()


def test_template_reports_config_errors_with_logissue(workspace: Path, runner_temp: Path) -> None:
    config = workspace / "connref.yaml"
    config.write_text(config.read_text().replace("version: 1", "version: 7"))
    line = config.read_text().splitlines().index("version: 7") + 1
    params = {"command": "validate", "workingDirectory": str(workspace), "connrefPath": str(ROOT)}
    run = run_template(params, macros=_macros(workspace, runner_temp))
    assert run.code == 1
    # The path is relative to $(Build.SourcesDirectory), under which each checkout has its folder.
    assert run.issues == [
        f"##vso[task.logissue type=error;sourcepath=flows-config/connref.yaml;linenumber={line};columnnumber=10]"
        "version: unsupported version 7; this connref reads version 1"
    ]
    assert run.variables["connref.connrefExitCode"] == "1"


def test_template_posts_the_plan_on_the_pull_request_even_when_connref_fails(workspace: Path,
                                                                           runner_temp: Path) -> None:
    params = {"command": "plan", "workingDirectory": str(workspace), "connrefPath": str(ROOT),
              "pullRequestComment": True}
    with serve_threads() as (fake, env):
        macros = {**_macros(workspace, runner_temp), "System.AccessToken": env.pop("SYSTEM_ACCESSTOKEN"),
                  "Build.Reason": "PullRequest"}
        run = run_template(params, macros=macros, env=env)
        assert run.code == 0, run.stdout + "".join(s.stderr for s in run.steps)
        (thread,) = fake.threads
        posted = thread["comments"][0]["content"]
        assert posted == Path(run.variables["connref.connrefMarkdown"]).read_text(encoding="utf-8")
        assert posted.startswith("<!-- connref:plan -->") and "**Plan: 2 to add" in posted

        # The next push breaks the config: connref fails, and the comment says why instead of the old plan.
        config = workspace / "connref.yaml"
        config.write_text(config.read_text().replace("version: 1", "version: 7"))
        run = run_template(params, macros=macros, env=env)
        assert [s.code for s in run.steps][-2:] == [1, 0]  # connref failed; the comment step still ran
        assert "updated the comment posted before" in run.steps[-1].stdout
        assert len(fake.threads) == 1 and "unsupported version 7" in thread["comments"][0]["content"]

        # Outside a pull request build the step does not run.
        requests = len(fake.requests)
        run = run_template(params, macros={**macros, "Build.Reason": "IndividualCI"}, env=env)
        assert len(fake.requests) == requests
        assert not [s for s in run.steps if s.name.startswith("Post the plan")]


def test_template_does_not_post_markdown_an_earlier_step_left(workspace: Path, runner_temp: Path) -> None:
    macros = _macros(workspace, runner_temp)
    params = {"command": "drift", "workingDirectory": str(workspace), "connrefPath": str(ROOT)}
    first = run_template(params, macros=macros)
    assert first.code == 0 and len(first.summaries) == 1
    run = run_template({**params, "args": "--bogus"}, macros=macros)
    assert run.code == 1 and run.summaries == []
    assert run.variables["connref.connrefMarkdown"] == ""
    assert run.issues == ["##vso[task.logissue type=error]connref drift: unrecognized arguments: --bogus"]


def test_template_with_a_service_connection_runs_the_same_step_signed_in_to_azure() -> None:
    plain = template_steps({"command": "drift", "env": {"SYSTEM_ACCESSTOKEN": "$(System.AccessToken)"}})
    signed_in = template_steps({"command": "drift", "azureSubscription": "connref-reader",
                                "env": {"SYSTEM_ACCESSTOKEN": "$(System.AccessToken)"}})
    (bash,) = [s for s in plain if s.get("name") == "connref"]
    (cli,) = [s for s in signed_in if s.get("name") == "connref"]
    assert cli["task"] == "AzureCLI@2" and cli["inputs"]["azureSubscription"] == "connref-reader"
    assert cli["inputs"]["inlineScript"] == bash["bash"]
    assert cli["env"] == bash["env"] and bash["env"]["SYSTEM_ACCESSTOKEN"] == "$(System.AccessToken)"
    assert not [s for s in plain if s.get("task") == "AzureCLI@2"]


def test_template_parses_and_names_only_real_tasks() -> None:
    doc = yaml.safe_load(TEMPLATE.read_text())
    assert [p["name"] for p in doc["parameters"]][:4] == ["command", "config", "environments", "args"]
    tasks = {s["task"] for s in template_steps({"azureSubscription": "x"}) if "task" in s}
    assert tasks == {"UsePythonVersion@0", "AzureCLI@2"}


# --------------------------------------------------------------------------- the container image


def test_dockerfile_runs_connref_as_an_unprivileged_user_from_pinned_images() -> None:
    text = (ROOT / "Dockerfile").read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms and all(re.fullmatch(r"python:3\.\d+-slim-\w+(?:@sha256:[0-9a-f]{64})?", f.split(" ")[0])
                         for f in froms), froms
    final = text.rsplit("\nFROM ", 1)[1]
    users = re.findall(r"^USER (\S+)", final, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root"), users
    assert re.search(r'^ENTRYPOINT \["connref"\]$', final, re.M)
    assert not re.search(r"^ADD ", text, re.M)
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[1] == "*" and "!reconciler/" in ignore  # only what the image is built from


def _docker_can_build() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=60, check=False).returncode == 0


@pytest.mark.skipif(not _docker_can_build(), reason="no Docker daemon on this machine")
def test_the_image_builds_and_runs_as_uid_10001(tmp_path: Path) -> None:
    tag = "connref-test:latest"
    build = subprocess.run(["docker", "build", "-t", tag, str(ROOT)], capture_output=True, text=True,
                           timeout=INSTALL_TIMEOUT, check=False)
    assert build.returncode == 0, build.stdout + build.stderr
    run = subprocess.run(["docker", "run", "--rm", "--entrypoint", "sh", tag, "-c", "id -u && connref --version"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0 and run.stdout.split() [0] == "10001", run.stdout + run.stderr


# --------------------------------------------------------------------------- the wheel, from a fresh venv


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``connref`` installed from a wheel of this checkout into a new virtual environment outside it."""
    src = tmp_path_factory.mktemp("wheel-src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "reconciler", src / "reconciler", ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta as b; "
                            "print(b.build_wheel(sys.argv[1]))", str(src / "dist")],
                           cwd=src, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    wheel = src / "dist" / built.stdout.strip().splitlines()[-1]
    home = tmp_path_factory.mktemp("fresh-venv")
    assert ROOT not in home.parents
    venv.create(home, with_pip=True)
    pip = subprocess.run([str(home / "bin" / "python"), "-m", "pip", "install", "--quiet",
                          "--disable-pip-version-check", str(wheel)],
                         capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    yield home / "bin" / "connref"


def test_the_wheel_in_a_fresh_venv_runs_the_quickstart(installed_wheel: Path, workspace: Path) -> None:
    def connref(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(installed_wheel), *argv], cwd=workspace, capture_output=True, text=True,
                              timeout=300, check=False, env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1",
                                                             "HOME": str(workspace)})

    # From outside the repository: the installed package, not this checkout, answers.
    where = subprocess.run([str(installed_wheel.parent / "python"), "-c",
                            "import reconciler, sys; print(reconciler.__file__)"],
                           cwd=workspace, capture_output=True, text=True, timeout=60, check=False)
    assert str(installed_wheel.parents[1]) in where.stdout and str(ROOT) not in where.stdout
    assert connref("validate").returncode == 0
    planned = connref("plan", "--detailed-exitcode", "--out", "plan.json")
    assert planned.returncode == 2, planned.stdout + planned.stderr
    shown = connref("show", "plan.json", "--json")
    assert shown.returncode == 0
    check("plan", json.loads(shown.stdout))  # the schemas ship in the wheel too
    applied = connref("apply", "plan.json")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert connref("plan", "--detailed-exitcode").returncode == 0
    assert connref("drift").returncode == 0
