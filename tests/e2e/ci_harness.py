"""Run the steps of the GitHub action (``action.yml``) and of the Azure DevOps step template
(``integrations/azure-devops/connref.yml``) here, as their runners would, with the inputs a workflow
passes (no tests here).

Only what these two files use is modelled: ``${{ inputs.* }}``, ``${{ github.action_path }}`` and
``${{ steps.<id>.outputs.* }}`` for the action (composite steps, ``shell: bash`` run as the runner does:
``bash --noprofile --norc -eo pipefail``, ``$GITHUB_OUTPUT`` / ``$GITHUB_STEP_SUMMARY`` files, the
action's outputs mapped from its steps); ``${{ parameters.* }}``, ``${{ if eq/ne(...) }}``, ``${{ each }}``
and ``$(Macro)`` variables for the template. ``actions/setup-python`` and ``UsePythonVersion@0`` are stood
in for by this interpreter: the Python they would install.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
ACTION = ROOT / "action.yml"
TEMPLATE = ROOT / "integrations" / "azure-devops" / "connref.yml"
STEP_TIMEOUT = 600

_EXPR = re.compile(r"\$\{\{\s*([^}]*?)\s*\}\}")
_MACRO = re.compile(r"\$\(([A-Za-z_.]+)\)")


@dataclass
class StepResult:
    name: str
    code: int
    stdout: str
    stderr: str
    outputs: dict[str, str] = field(default_factory=dict)


@dataclass
class ActionRun:
    """The action's outcome: each step, the action's outputs, the job summary."""

    steps: list[StepResult]
    outputs: dict[str, str]
    summary: str

    @property
    def code(self) -> int:
        return next((s.code for s in self.steps if s.code != 0), 0)

    @property
    def stdout(self) -> str:
        return "".join(s.stdout for s in self.steps)

    @property
    def stderr(self) -> str:
        return "".join(s.stderr for s in self.steps)


def _bash(script: str, *, env: dict[str, str], cwd: Path, flags: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "--noprofile", "--norc", *flags, "-c", script], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=STEP_TIMEOUT, check=False)


def _read_outputs(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if "=" in line:
                key, value = line.split("=", 1)
                out[key] = value
    return out


def run_action(inputs: dict[str, str], *, workspace: Path, runner_temp: Path, env: dict[str, str] | None = None
               ) -> ActionRun:
    """Run ``action.yml``'s steps as a workflow step ``uses: <this repository>`` with ``with: inputs``."""
    action = yaml.safe_load(ACTION.read_text(encoding="utf-8"))
    declared = action["inputs"]
    unknown = set(inputs) - set(declared)
    assert not unknown, f"the action has no inputs {sorted(unknown)}"
    values = {k: str(inputs.get(k, spec.get("default", ""))) for k, spec in declared.items()}
    for k, spec in declared.items():
        assert not spec.get("required") or values[k], f"input {k} is required"
    runner_temp.mkdir(parents=True, exist_ok=True)
    # Each step gets a summary file of its own (the runner collects them into the job's summary).
    summary = runner_temp / f"step_summary_{uuid.uuid4().hex}.md"
    summary.touch()
    base = {**os.environ, **(env or {}), "GITHUB_ACTIONS": "true", "RUNNER_TEMP": str(runner_temp),
            "GITHUB_WORKSPACE": str(workspace), "GITHUB_ACTION_PATH": str(ROOT), "GITHUB_STEP_SUMMARY": str(summary)}
    steps_out: dict[str, dict[str, str]] = {}

    def expand(text: str) -> str:
        def one(m: re.Match[str]) -> str:
            expr = m.group(1)
            if expr.startswith("inputs."):
                return values[expr.removeprefix("inputs.")]
            if expr == "github.action_path":
                return str(ROOT)
            sm = re.fullmatch(r"steps\.([\w-]+)\.outputs\.([\w-]+)", expr)
            if sm:
                return steps_out.get(sm.group(1), {}).get(sm.group(2), "")
            raise AssertionError(f"the harness does not model the expression {expr!r}")
        return _EXPR.sub(one, text)

    results: list[StepResult] = []
    for i, step in enumerate(action["runs"]["steps"]):
        sid = step.get("id", f"step{i}")
        name = expand(step.get("name", sid))
        if "uses" in step:
            assert step["uses"].startswith("actions/setup-python@"), step["uses"]
            steps_out[sid] = {"python-path": sys.executable, "python-version": sys.version.split()[0]}
            results.append(StepResult(name, 0, "", ""))
            continue
        assert step.get("shell") == "bash", f"step {name}: only bash steps are modelled"
        output_file = runner_temp / f"output-{sid}"
        output_file.write_text("")
        step_env = {**base, "GITHUB_OUTPUT": str(output_file),
                    **{k: expand(str(v)) for k, v in (step.get("env") or {}).items()}}
        cwd = workspace / expand(step.get("working-directory", "."))
        proc = _bash(expand(step["run"]), env=step_env, cwd=cwd, flags=("-eo", "pipefail"))
        steps_out[sid] = _read_outputs(output_file)
        results.append(StepResult(name, proc.returncode, proc.stdout, proc.stderr, steps_out[sid]))
        if proc.returncode != 0:
            break
    outputs = {k: expand(str(spec["value"])) for k, spec in action.get("outputs", {}).items()}
    return ActionRun(results, outputs, summary.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- Azure DevOps


def _param_expr(expr: str, params: dict[str, Any]) -> Any:
    m = re.fullmatch(r"parameters\.(\w+)", expr)
    if m:
        return params[m.group(1)]
    m = re.fullmatch(r"(eq|ne)\(parameters\.(\w+),\s*'([^']*)'\)", expr)
    if m:
        same = str(params[m.group(2)]) == m.group(3)
        return same if m.group(1) == "eq" else not same
    m = re.fullmatch(r"eq\(parameters\.(\w+),\s*(true|false)\)", expr)
    if m:
        value = params[m.group(1)]
        assert isinstance(value, bool), f"parameters.{m.group(1)} is compared with a boolean: declare it boolean"
        return value == (m.group(2) == "true")
    raise AssertionError(f"the harness does not model the template expression {expr!r}")


def _expand_template(node: Any, params: dict[str, Any], scope: dict[str, Any]) -> Any:
    """Template expressions over the parsed YAML: conditional items, ``each`` over a mapping, values."""
    if isinstance(node, list):
        out: list[Any] = []
        for item in node:
            if isinstance(item, dict) and len(item) == 1:
                (key, value), = item.items()
                m = _EXPR.fullmatch(str(key))
                if m and m.group(1).startswith("if "):
                    if _param_expr(m.group(1)[3:].strip(), params):
                        out.extend(_expand_template(value, params, scope))
                    continue
            out.append(_expand_template(item, params, scope))
        return out
    if isinstance(node, dict):
        result: dict[str, Any] = {}
        for key, value in node.items():
            m = _EXPR.fullmatch(str(key))
            if m and m.group(1).startswith("each "):
                em = re.fullmatch(r"each (\w+) in parameters\.(\w+)", m.group(1))
                assert em, m.group(1)
                for k, v in dict(params[em.group(2)]).items():
                    inner = _expand_template(value, params, {**scope, em.group(1): {"key": k, "value": v}})
                    result.update(inner)
                continue
            result[_expand_template(key, params, scope)] = _expand_template(value, params, scope)
        return result
    if isinstance(node, str):
        def one(m: re.Match[str]) -> str:
            expr = m.group(1)
            pm = re.fullmatch(r"(\w+)\.(key|value)", expr)
            if pm and pm.group(1) in scope:
                return str(scope[pm.group(1)][pm.group(2)])
            return str(_param_expr(expr, params))
        return _EXPR.sub(one, node)
    return node


def _split_arguments(text: str) -> list[str]:
    """The top-level, comma-separated arguments of a runtime expression's function call."""
    parts: list[str] = []
    depth, start, quoted = 0, 0, False
    for i, ch in enumerate(text):
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        elif not quoted and ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return parts


def _condition(expr: str, variables: dict[str, str], failed: bool) -> bool:
    """A step's runtime ``condition``: ``always()``, ``succeeded()``, ``failed()``, ``and``/``or``/``not``,
    and ``eq``/``ne`` of ``variables['...']`` with a quoted string (case-insensitive, as the agent compares)."""
    expr = expr.strip()
    m = re.fullmatch(r"(\w+)\((.*)\)", expr, re.S)
    assert m, f"the harness does not model the condition {expr!r}"
    name, inner = m.group(1), m.group(2)
    if name in ("always", "succeeded", "failed"):
        return {"always": True, "succeeded": not failed, "failed": failed}[name]
    args = _split_arguments(inner)
    if name in ("and", "or"):
        values = [_condition(a, variables, failed) for a in args]
        return all(values) if name == "and" else any(values)
    if name == "not":
        return not _condition(args[0], variables, failed)
    if name in ("eq", "ne"):
        vm = re.fullmatch(r"variables\['([\w.]+)'\]", args[0])
        sm = re.fullmatch(r"'([^']*)'", args[1])
        assert vm and sm, f"the harness does not model the comparison {expr!r}"
        same = variables.get(vm.group(1), "").lower() == sm.group(1).lower()
        return same if name == "eq" else not same
    raise AssertionError(f"the harness does not model the condition {expr!r}")


def template_steps(parameters: dict[str, Any]) -> list[dict[str, Any]]:
    """The template's steps for ``parameters`` (defaults filled in), expressions expanded."""
    doc = yaml.safe_load(TEMPLATE.read_text(encoding="utf-8"))
    declared = {p["name"]: p.get("default") for p in doc["parameters"]}
    unknown = set(parameters) - set(declared)
    assert not unknown, f"the template has no parameters {sorted(unknown)}"
    params = {**declared, **parameters}
    steps: list[dict[str, Any]] = _expand_template(doc["steps"], params, {})
    return steps


@dataclass
class TemplateRun:
    steps: list[StepResult]
    variables: dict[str, str]
    issues: list[str]
    summaries: list[str]

    @property
    def code(self) -> int:
        return next((s.code for s in self.steps if s.code != 0), 0)

    @property
    def stdout(self) -> str:
        return "".join(s.stdout for s in self.steps)


def run_template(parameters: dict[str, Any], *, macros: dict[str, str], env: dict[str, str] | None = None
                 ) -> TemplateRun:
    """Run the template's steps as an agent would: ``bash`` steps with macros replaced (``macros``, then the
    output variables of the steps before), ``##vso`` commands read from their output, each step's
    ``condition`` weighed (by default a step runs only while every step before it succeeded)."""
    results: list[StepResult] = []
    variables: dict[str, str] = {}
    issues: list[str] = []
    summaries: list[str] = []

    def macro(text: str) -> str:
        # An agent leaves a macro it does not know as it is.
        return _MACRO.sub(lambda m: macros.get(m.group(1), variables.get(m.group(1), m.group(0))), text)

    base = {**os.environ, **(env or {}), "TF_BUILD": "True",
            "AGENT_TEMPDIRECTORY": macros["Agent.TempDirectory"],
            "BUILD_SOURCESDIRECTORY": macros["Build.SourcesDirectory"]}
    failed = False
    for step in template_steps(parameters):
        if not _condition(step.get("condition", "succeeded()"), {**macros, **variables}, failed):
            continue
        if step.get("task", "").startswith("UsePythonVersion@"):
            results.append(StepResult(step.get("displayName", "python"), 0, "", ""))
            continue
        assert "bash" in step, f"only bash steps run here: {step}"
        step_env = {**base, **{k: macro(str(v)) for k, v in (step.get("env") or {}).items()}}
        cwd = Path(macro(step.get("workingDirectory", macros["Build.SourcesDirectory"])))
        proc = _bash(macro(step["bash"]), env=step_env, cwd=cwd, flags=())
        name = step.get("name") or step.get("displayName", "")
        for line in proc.stdout.splitlines():
            vm = re.match(r"##vso\[task\.setvariable variable=(\w+);isoutput=true\](.*)$", line)
            if vm:
                variables[f"{name}.{vm.group(1)}"] = vm.group(2)
            elif line.startswith("##vso[task.logissue"):
                issues.append(line)
            elif line.startswith("##vso[task.uploadsummary]"):
                summaries.append(line.removeprefix("##vso[task.uploadsummary]"))
        results.append(StepResult(name, proc.returncode, proc.stdout, proc.stderr))
        failed = failed or proc.returncode != 0
    return TemplateRun(results, variables, issues, summaries)
