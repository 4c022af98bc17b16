"""Run one connref command inside a CI job and tell the CI system about it: the step behind the GitHub action
(``action.yml``) and the Azure DevOps step template (``integrations/azure-devops/connref.yml``).

Inputs come from environment variables (the action and the template set them from their inputs):

    CONNREF_COMMAND       plan, apply, drift, validate, lint, show, state list, ... (required)
    CONNREF_CONFIG        the config file (default connref.yaml)
    CONNREF_ENVIRONMENTS  environments, separated by commas, spaces or new lines (default: all)
    CONNREF_ARGS          more arguments, split as a shell would (quotes kept together)
    CONNREF_BIN           the connref executable (default: the one next to this Python, else on PATH)
    CONNREF_CI            github or azure-devops (default: github when GITHUB_ACTIONS is set)
    CONNREF_OUTPUT_DIR    where the markdown goes (default: RUNNER_TEMP / AGENT_TEMPDIRECTORY / the cwd)

What it does:

- ``plan`` gets ``--detailed-exitcode`` and ``--markdown FILE``, ``drift`` and ``show`` get ``--markdown
  FILE`` (unless the arguments already give one: ``--markdown FILE``, ``--markdown=FILE``), and the markdown
  becomes the job's summary (``$GITHUB_STEP_SUMMARY``; ``##vso[task.uploadsummary]``), but only a file this
  run wrote: one left by an earlier step (this run stopped before writing) is neither summarised nor given
  as the ``markdown`` output;
- exit code 2 of ``plan`` (changes) and ``drift`` (drift) is a result, not a failure: the step succeeds and
  says so in its outputs (``changes`` / ``drift``); every other non-zero code fails the step;
- each config error (``file:line:column: field: message``) becomes an error annotation on that line
  (``::error file=...,line=...,col=...::``; ``##vso[task.logissue type=error;sourcepath=...]``), any other
  error (``Error: ...``, or a usage error: ``connref plan: error: ...``) one annotation without a place;
- outputs: ``exit-code``, ``changes``, ``drift``, ``markdown`` (``$GITHUB_OUTPUT``;
  ``##vso[task.setvariable ...;isoutput=true]`` as connrefExitCode, connrefChanges, connrefDrift,
  connrefMarkdown).

connref's own output is passed through with workflow commands switched off around it (GitHub's
``::stop-commands::``; ``##vso[`` defused for Azure DevOps), so a name in the config or an answer from the
service can never act as a command. Standard library only: it runs before anything else is known to work.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

COMMANDS = ("validate", "plan", "apply", "drift", "lint", "show", "state", "whoami", "settings", "import",
            "schema")
RESULT_CODES = {"plan": "changes", "drift": "drift"}  # commands whose exit code 2 is a result
MARKDOWN_COMMANDS = ("plan", "drift", "show")
_LOCATED = re.compile(r"^(?:Error:\s*)?\s*(?P<file>[^\s:][^:]*?):(?P<line>\d+):(?P<col>\d+): (?P<msg>.+)$")
# connref's argument parser: ``usage: ...`` lines, then ``connref plan: error: ...`` (then maybe a did-you-mean,
# then ``Run 'connref plan --help' ...``).
_USAGE_ERROR = re.compile(r"^(?P<prog>connref(?: [\w-]+)*): error: (?P<msg>.+)$")
_MARKDOWN = "--markdown"

#: What tells one version of a file from another: a rewrite in place changes its times, a replacement its
#: inode.
Signature = tuple[int, int, int, int]


class InputError(Exception):
    """An input of the action or template is unusable."""


@dataclass
class Run:
    """What one step runs, decided from the inputs."""

    argv: list[str]
    command: str
    markdown: Path | None
    ci: str
    workspace: Path
    annotations: list[tuple[str | None, int | None, int | None, str]] = field(default_factory=list)
    #: Whether ``markdown`` is the file this script names (in the output folder), not one the arguments give.
    own_markdown: bool = False
    #: ``markdown`` as it was before connref ran (None: there was none), to tell a file connref wrote from
    #: one an earlier step left there.
    markdown_before: Signature | None = None


def default_bin() -> str:
    """The connref of the environment this script runs in (the action's venv), else the one on PATH."""
    here = Path(sys.executable).parent / ("connref.exe" if os.name == "nt" else "connref")
    return str(here) if here.is_file() else "connref"


def split_environments(value: str) -> list[str]:
    return [e for e in re.split(r"[\s,]+", value.strip()) if e]


def given_markdown(extra: Sequence[str]) -> tuple[bool, Path | None]:
    """Whether the arguments give ``--markdown``, and the file they give (None if the value is missing).

    argparse takes ``--markdown FILE``, ``--markdown=FILE`` and any unambiguous prefix of the option
    (``--mark FILE``; no other option of plan, drift or show starts with ``--m``); the last one wins, and
    nothing after ``--`` is an option."""
    given, path = False, None
    for i, word in enumerate(extra):
        if word == "--":
            break
        name, eq, value = word.partition("=")
        if len(name) < 3 or not _MARKDOWN.startswith(name):
            continue
        given = True
        if not eq:
            value = extra[i + 1] if i + 1 < len(extra) else ""
        path = Path(value) if value else None
    return given, path


def plan_run(env: dict[str, str]) -> Run:
    """The command line and what to report, from the environment variables (``InputError`` if unusable)."""
    words = env.get("CONNREF_COMMAND", "").split()
    if not words or words[0] not in COMMANDS:
        raise InputError(f"command must be one of: {', '.join(COMMANDS)} (got {' '.join(words) or 'nothing'!r})")
    command = words[0]
    config = env.get("CONNREF_CONFIG", "").strip() or "connref.yaml"
    try:
        extra = shlex.split(env.get("CONNREF_ARGS", ""))
    except ValueError as e:
        raise InputError(f"args: {e}") from None
    argv = [env.get("CONNREF_BIN", "").strip() or default_bin(), "-c", config, *words]
    for name in split_environments(env.get("CONNREF_ENVIRONMENTS", "")):
        argv += ["-e", name]
    ci = env.get("CONNREF_CI") or ("azure-devops" if env.get("TF_BUILD") else "github")
    if ci not in ("github", "azure-devops"):
        raise InputError(f"CONNREF_CI must be github or azure-devops (got {ci!r})")
    out_dir = Path(env.get("CONNREF_OUTPUT_DIR") or env.get("RUNNER_TEMP") or env.get("AGENT_TEMPDIRECTORY") or ".")
    markdown: Path | None = None
    own = False
    if command in MARKDOWN_COMMANDS:
        given, markdown = given_markdown(extra)
        if not given:
            markdown, own = out_dir / f"connref-{command}.md", True
            argv += [_MARKDOWN, str(markdown)]
    if command == "plan" and "--detailed-exitcode" not in extra:
        argv.append("--detailed-exitcode")
    argv += extra
    workspace = Path(env.get("GITHUB_WORKSPACE") or env.get("BUILD_SOURCESDIRECTORY") or os.getcwd())
    return Run(argv, command, markdown, ci, workspace, own_markdown=own)


# --------------------------------------------------------------------------- CI commands


def _gh_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_property(text: str) -> str:
    return _gh_data(text).replace(":", "%3A").replace(",", "%2C")


def _vso_value(text: str) -> str:
    # Azure DevOps logging commands: the message ends the line; its properties are ';'-separated.
    return text.replace("\r", " ").replace("\n", " ").replace("]", ")").replace(";", ",")


def annotation(ci: str, file: str | None, line: int | None, col: int | None, message: str) -> str:
    """One error annotation as the CI system's logging command."""
    if ci == "github":
        props = [f"file={_gh_property(file)}", f"line={line}", f"col={col}"] if file else []
        props.append("title=connref")
        return f"::error {','.join(props)}::{_gh_data(message)}"
    where = f";sourcepath={_vso_value(file)};linenumber={line};columnnumber={col}" if file else ""
    return f"##vso[task.logissue type=error{where}]{message.replace(chr(13), ' ').replace(chr(10), ' ')}"


def _relative(path: str, workspace: Path) -> str:
    """``path`` (as connref printed it, relative to where it ran) relative to the repository root, which is
    what annotations are placed by."""
    p = Path(path) if Path(path).is_absolute() else Path.cwd() / path
    try:
        return p.resolve().relative_to(workspace.resolve()).as_posix()
    except ValueError:
        return Path(path).as_posix()


def annotations_from(stderr: str, run: Run) -> list[tuple[str | None, int | None, int | None, str]]:
    """Config errors with their place; any other error line (``Error: ...``, or a usage error with its
    did-you-mean) without one."""
    found: list[tuple[str | None, int | None, int | None, str]] = []
    lines = stderr.splitlines()
    usage = False
    for i, raw in enumerate(lines):
        m = _LOCATED.match(raw)
        u = _USAGE_ERROR.match(raw) if usage else None
        if m and not m["file"].startswith(("http", "Error")):
            found.append((_relative(m["file"], run.workspace), int(m["line"]), int(m["col"]), m["msg"].strip()))
        elif raw.startswith("Error: ") and not re.match(r"Error: \d+ problems in the config", raw):
            found.append((None, None, None, raw.removeprefix("Error: ").strip()))
        elif raw.startswith("usage: "):
            # Only after the usage lines: elsewhere "<something>: error: " could be a name from the config.
            usage = True
        elif u:
            more = []
            for after in lines[i + 1:]:
                if not after.strip() or after.startswith("Run '"):
                    break
                more.append(after.strip())
            found.append((None, None, None, " ".join([f"{u['prog']}: {u['msg'].strip()}", *more])))
            usage = False
    return found


# --------------------------------------------------------------------------- running


def signature(path: Path) -> Signature | None:
    """``path``'s inode, size and times (through a link), or None when it is not a regular file."""
    try:
        st = path.stat()
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def before_running(run: Run) -> None:
    """Make sure a markdown file left by an earlier step is not taken for this run's.

    The file this script names is its own: it is removed, so whatever is there afterwards connref wrote. A
    file the arguments name is the user's (perhaps one in their checkout) and is left alone: it counts only
    if connref changed it (``run.markdown_before``)."""
    if run.markdown is None:
        return
    if run.own_markdown:
        # Not there; or it stays (no permission), and is told apart by its signature below.
        with contextlib.suppress(OSError):
            run.markdown.unlink()
    run.markdown_before = signature(run.markdown)


def fresh_markdown(run: Run) -> Path | None:
    """The markdown file, if this run wrote it."""
    if run.markdown is None:
        return None
    now = signature(run.markdown)
    return run.markdown if now is not None and now != run.markdown_before else None


def _pump(source: IO[str], sink: IO[str], keep: list[str] | None, defuse: Callable[[str], str]) -> None:
    for line in source:
        if keep is not None:
            keep.append(line)
        sink.write(defuse(line))
        sink.flush()


def execute(run: Run, out: IO[str], err: IO[str]) -> tuple[int, str]:
    """Run connref, passing its output through (commands switched off), and return (code, its stderr)."""
    token = uuid.uuid4().hex
    if run.ci == "github":
        out.write(f"::stop-commands::{token}\n")
        out.flush()

    def defuse(line: str) -> str:
        return line.replace("##vso[", "##vso [") if run.ci == "azure-devops" else line

    print(f"$ {shlex.join(run.argv)}", file=err, flush=True)
    before_running(run)
    try:
        proc = subprocess.Popen(run.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except OSError as e:
        if run.ci == "github":
            out.write(f"::{token}::\n")
        return 1, f"Error: cannot run {run.argv[0]}: {e.strerror or e}\n"
    captured: list[str] = []
    assert proc.stdout is not None and proc.stderr is not None
    pumps = [threading.Thread(target=_pump, args=(proc.stdout, out, None, defuse)),
             threading.Thread(target=_pump, args=(proc.stderr, err, captured, defuse))]
    for t in pumps:
        t.start()
    for t in pumps:
        t.join()
    code = proc.wait()
    if run.ci == "github":
        out.write(f"::{token}::\n")
        out.flush()
    return code, "".join(captured)


def report(run: Run, code: int, stderr: str, env: dict[str, str], out: IO[str]) -> int:
    """Summary, annotations and outputs; the step's exit code."""
    result = RESULT_CODES.get(run.command)
    ok = code == 0 or (code == 2 and result is not None)
    outputs = {"exit-code": str(code), "changes": "false", "drift": "false",
               "markdown": str(fresh_markdown(run) or "")}
    if result is not None and code in (0, 2):
        outputs[result] = "true" if code == 2 else "false"
    if not ok:
        for file, line, col, message in annotations_from(stderr, run):
            out.write(annotation(run.ci, file, line, col, message) + "\n")
    markdown = outputs["markdown"]
    if run.ci == "github":
        summary = env.get("GITHUB_STEP_SUMMARY")
        if markdown and summary:
            with open(summary, "a", encoding="utf-8") as f:
                f.write(Path(markdown).read_text(encoding="utf-8").rstrip("\n") + "\n")
        target = env.get("GITHUB_OUTPUT")
        if target:
            with open(target, "a", encoding="utf-8") as f:
                for key, value in outputs.items():
                    f.write(f"{key}={value}\n")
    else:
        if markdown:
            out.write(f"##vso[task.uploadsummary]{markdown}\n")
        names = {"exit-code": "connrefExitCode", "changes": "connrefChanges", "drift": "connrefDrift",
                 "markdown": "connrefMarkdown"}
        for key, value in outputs.items():
            out.write(f"##vso[task.setvariable variable={names[key]};isoutput=true]{value}\n")
    out.flush()
    return 0 if ok else (code or 1)


def main(argv: Sequence[str] | None = None, env: dict[str, str] | None = None) -> int:
    environ = dict(os.environ if env is None else env)
    try:
        run = plan_run(environ)
    except InputError as e:
        ci = environ.get("CONNREF_CI") or ("azure-devops" if environ.get("TF_BUILD") else "github")
        print(annotation(ci if ci in ("github", "azure-devops") else "github", None, None, None,
                         f"connref: {e}"), flush=True)
        return 1
    code, stderr = execute(run, sys.stdout, sys.stderr)
    return report(run, code, stderr, environ, sys.stdout)


if __name__ == "__main__":
    raise SystemExit(main())
