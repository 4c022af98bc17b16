"""docs/pipelines.md uses only things that exist: every YAML block parses and is one of a connref config (it
loads), a GitHub workflow (connref through action.yml with its real inputs and outputs, other actions with
the inputs they have) or an Azure DevOps pipeline (connref through the step template with its real
parameters and output variables); every connref command line in it, in YAML or in a shell block, is
accepted by connref's own argument parser.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.cli import build_parser
from reconciler.config.loader import load_config_text

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "pipelines.md"
ACTION = yaml.safe_load((ROOT / "action.yml").read_text(encoding="utf-8"))
TEMPLATE_PATH = "integrations/azure-devops/connref.yml"
TEMPLATE = yaml.safe_load((ROOT / TEMPLATE_PATH).read_text(encoding="utf-8"))
TEMPLATE_PARAMETERS = {p["name"] for p in TEMPLATE["parameters"]}
TEMPLATE_OUTPUTS = {"connrefExitCode", "connrefChanges", "connrefDrift", "connrefMarkdown"}
CONNREF_ACTION = re.compile(r"^[\w.-]+/connref@[\w.-]+$")
# The other actions the workflows use, and the inputs each has (their action.yml, at these major versions).
OTHER_ACTIONS = {
    "actions/checkout@v4": {"repository", "ref", "token", "path", "fetch-depth"},
    "actions/upload-artifact@v4": {"name", "path", "retention-days", "if-no-files-found"},
    "actions/download-artifact@v4": {"name", "path", "pattern"},
    "azure/login@v2": {"client-id", "tenant-id", "subscription-id", "allow-no-subscriptions", "creds"},
}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)


def blocks(language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(DOC.read_text(encoding="utf-8")) if lang == language]


def check_cli(argv: list[str], where: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``argv`` (after ``connref``) is accepted by connref's argument parser."""
    try:
        build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: connref {shlex.join(argv)} is refused: {capsys.readouterr().err}")


def check_connref_step(command: str, args: str, where: str, capsys: pytest.CaptureFixture[str]) -> None:
    check_cli([*command.split(), *shlex.split(args)], where, capsys)


# --------------------------------------------------------------------------- GitHub


def _workflow_steps(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for job_name, job in doc["jobs"].items():
        for step in job.get("steps", []):
            yield job_name, step


def check_workflow(doc: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    action_inputs = set(ACTION["inputs"])
    action_outputs = set(ACTION["outputs"])
    connref_ids: set[str] = set()
    for job, step in _workflow_steps(doc):
        uses = step.get("uses")
        where = f"job {job}, step {step.get('name') or uses or step.get('run', '')[:40]!r}"
        if uses is None:
            assert "run" in step, where
            continue
        if CONNREF_ACTION.match(uses):
            given = set(step.get("with", {}))
            assert given <= action_inputs, f"{where}: action.yml has no inputs {sorted(given - action_inputs)}"
            required = {k for k, v in ACTION["inputs"].items() if v.get("required")}
            assert required <= given, f"{where}: required inputs missing: {sorted(required - given)}"
            check_connref_step(str(step["with"]["command"]), str(step["with"].get("args", "")), where, capsys)
            if "id" in step:
                connref_ids.add(step["id"])
        else:
            assert uses in OTHER_ACTIONS, f"{where}: {uses} is not an action these docs know the inputs of"
            given = set(step.get("with", {}))
            assert given <= OTHER_ACTIONS[uses], f"{where}: {uses} has no inputs {sorted(given - OTHER_ACTIONS[uses])}"
    text = yaml.safe_dump(doc)
    for step_id, output in re.findall(r"steps\.([\w-]+)\.outputs\.([\w-]+)", text):
        if step_id in connref_ids:
            assert output in action_outputs, f"action.yml has no output {output!r}"


# --------------------------------------------------------------------------- Azure DevOps


def _ado_steps(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "steps" and isinstance(value, list):
                yield from (s for s in value if isinstance(s, dict))
            else:
                yield from _ado_steps(value)
    elif isinstance(node, list):
        for item in node:
            yield from _ado_steps(item)


def check_ado_pipeline(doc: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    repos = {r["repository"]: r for r in doc.get("resources", {}).get("repositories", [])}
    steps = list(_ado_steps(doc))
    assert steps
    for step in steps:
        if "template" in step:
            path, _, alias = step["template"].partition("@")
            assert path == TEMPLATE_PATH and (ROOT / path).is_file(), step["template"]
            assert alias in repos, f"the pipeline declares no repository resource {alias!r}"
            params = step.get("parameters", {})
            assert set(params) <= TEMPLATE_PARAMETERS, sorted(set(params) - TEMPLATE_PARAMETERS)
            check_connref_step(str(params.get("command", "plan")), str(params.get("args", "")),
                               f"template call {params}", capsys)
        elif "checkout" in step:
            assert step["checkout"] == "self" or step["checkout"] in repos, step
        else:
            assert {"bash", "publish"} & set(step), f"unexpected step kind: {step}"
    for name in re.findall(r"variables\['connref\.(\w+)'\]", yaml.safe_dump(doc)):
        assert name in TEMPLATE_OUTPUTS, f"the template sets no output variable {name!r}"


# --------------------------------------------------------------------------- the tests


YAML_BLOCKS = blocks("yaml")


def test_the_doc_has_its_pipelines() -> None:
    kinds = [_kind(yaml.safe_load(b)) for b in YAML_BLOCKS]
    assert kinds.count("github") == 3 and kinds.count("azure-devops") == 3 and kinds.count("config") == 1


def _kind(doc: Any) -> str:
    assert isinstance(doc, dict), "every YAML block is a mapping"
    if "version" in doc and "environments" in doc:
        return "config"
    if "jobs" in doc and (True in doc or "on" in doc):  # YAML 1.1 reads the key `on` as true
        return "github"
    if "trigger" in doc or "pr" in doc:
        return "azure-devops"
    raise AssertionError(f"a YAML block the test cannot place: {sorted(map(str, doc))}")


@pytest.mark.parametrize("index", range(len(YAML_BLOCKS)))
def test_every_yaml_block_is_valid_for_what_it_is(index: int, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    text = YAML_BLOCKS[index]
    doc = yaml.safe_load(text)
    kind = _kind(doc)
    if kind == "config":
        config = load_config_text(text, str(tmp_path / "connref.yaml"))
        assert config.remote_state is not None and config.remote_state.auth in config.auth
    elif kind == "github":
        check_workflow(doc, capsys)
    else:
        check_ado_pipeline(doc, capsys)


def test_every_connref_command_line_in_the_shell_blocks_is_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    lines = [line for block in blocks("sh") for line in block.replace("\\\n", " ").splitlines()]
    checked = 0
    for line in lines:
        words = shlex.split(line, comments=True)
        image_run = words[:2] == ["docker", "run"]  # docker run ... IMAGE ARGS: the image runs connref
        for i, word in enumerate(words):
            if word == "connref" or word.endswith("/bin/connref") or (image_run and word.startswith("connref:")):
                check_cli(words[i + 1:], line, capsys)
                checked += 1
                break
    assert checked >= 4


def test_the_state_branch_recipe_and_package_index_install_are_gone() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert "'*.json.backup'" not in text and "pip install connref" not in text
    assert "connref-state branch" not in text.replace("`connref-state` branch", "")
