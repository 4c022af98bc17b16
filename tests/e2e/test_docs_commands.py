"""Every connref command line the README and the docs show, run as written and checked for its exit code.

The lines are read from the Markdown: in a ``sh``/``bash``/``console`` block, each line that starts with
``connref`` (or ``$ connref``), and ``$ connref`` lines in any block. A block right after an HTML comment
``<!-- not-run: why -->`` is left out (it serves until interrupted, or writes into the user's shell set-up);
any other line must belong to a page of ``PAGES`` below, so a new page with commands fails here until it
says how to run them.

Each page runs in a scratch folder set up as the page says (a copy of the quickstart, and what the page
does to it), one line after another, through ``bash -c`` in that folder with the ``connref`` of this
``.venv`` first on ``PATH``: the README's tour as a user runs it after ``make demo`` and
``export PATH="$PWD/.venv/bin:$PATH"``. ``/tmp/qs`` and ``/tmp/adopt`` in a line mean the scratch folder.
Where a page shows what a ``$ connref`` line prints (the lines after it in its block), the output must be
that (a line ``…`` stands for lines left out).

The second half checks the README's table of commands against ``connref --help``: every command is in
the table, every option the table gives exists, and every option a command has is documented.
"""

from __future__ import annotations

import argparse
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from e2e.e2e_support import QUICKSTART, add_explain_flows
from reconciler.cli import build_parser

pytestmark = pytest.mark.emulator_only

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SHELL_LANGS = {"sh", "bash", "shell", "console"}
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*\S.*-->$")
COMMAND = re.compile(r"^(\$ )?connref\s")
SCRATCH = ("/tmp/qs", "/tmp/adopt")


@dataclass(frozen=True)
class Line:
    page: str  # relative to the repository root
    number: int
    text: str  # as written, without a leading "$ "
    shown: tuple[str, ...] | None = None  # after a "$ " line, the output the page shows (to the next "$ ")

    def __str__(self) -> str:
        return f"{self.page}:{self.number}: {self.text}"


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").rglob("*.md")),
            ROOT / "state" / "README.md"]


def command_lines(path: Path) -> tuple[list[Line], list[Line]]:
    """The command lines of one page: (to run, marked not-run). A ``$ connref`` line carries the lines
    the page shows after it, up to the next ``$`` line or the end of the block, as its output."""
    found: list[tuple[Line, bool, list[str] | None]] = []
    lang: str | None = None
    not_run = False
    previous = ""
    output: list[str] | None = None  # the output lines of the last "$ " line of this block
    page = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("```"):
            if lang is None:
                lang = stripped[3:].strip()
                not_run = bool(NOT_RUN.match(previous))
            else:
                lang = None
            previous, output = stripped, None
            continue
        if stripped:
            previous = stripped
        if lang is None:
            continue
        if stripped.startswith("$ "):
            output = None
        if not COMMAND.match(stripped) or (lang not in SHELL_LANGS and not stripped.startswith("$ ")):
            if output is not None:
                output.append(raw.rstrip())
            continue  # output, or a line that quotes a command (an error message naming the fix)
        output = [] if stripped.startswith("$ ") else None
        found.append((Line(page, number, stripped.removeprefix("$ ")), not_run, output))
    lines = [Line(line.page, line.number, line.text, tuple(shown) if shown else None) if shown is not None else line
             for line, _, shown in found]
    run = [line for line, (_, skipped, _) in zip(lines, found, strict=True) if not skipped]
    return run, [line for line, (_, skipped, _) in zip(lines, found, strict=True) if skipped]


def shows(expected: Sequence[str], actual: Sequence[str]) -> bool:
    """Whether ``actual`` lines are what a page shows: equal, where a line ``…`` stands for any lines."""
    if not expected:
        return not actual
    if expected[0] in ("…", "..."):
        return any(shows(expected[1:], actual[i:]) for i in range(len(actual) + 1))
    return bool(actual) and actual[0] == expected[0] and shows(expected[1:], actual[1:])


# --------------------------------------------------------------------------- how each page runs


@dataclass
class Page:
    """How to run one page's lines: the folder it starts from, what happens before some lines (keyed by
    the line's text and, for a text that recurs, its occurrence from 1), the exit code of each line
    (0 unless said), and the lines a person answers at a terminal."""

    setup: Callable[[Path], None]
    before: dict[tuple[str, int], Callable[[Path], None]] = field(default_factory=dict)
    exit_codes: dict[str, int] = field(default_factory=dict)
    answered: dict[str, str] = field(default_factory=dict)


def _quickstart(folder: Path) -> None:
    shutil.copytree(QUICKSTART, folder, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("demo.py", "make_data.py", "__pycache__"))


def _yaml_block_after(page: str, heading: str) -> str:
    """The first yaml block after ``heading`` in ``page``."""
    text = (ROOT / page).read_text(encoding="utf-8")
    rest = text[text.index(heading):]
    m = re.search(r"^```yaml\n(.*?)^```", rest, re.M | re.S)
    assert m, f"{page}: no yaml block after {heading!r}"
    return m.group(1)


def _adoption_start(folder: Path) -> None:
    _quickstart(folder)
    (folder / "connref.yaml").write_text(
        _yaml_block_after("docs/adoption.md", "## 1. Start from a config"), encoding="utf-8")


def _quickstart_config_back(folder: Path) -> None:
    # docs/adoption.md, section 4: the edits end where the quickstart's own connref.yaml is.
    shutil.copy(QUICKSTART / "connref.yaml", folder / "connref.yaml")


def _docs_example_config(folder: Path) -> None:
    shutil.copy(ROOT / "tests" / "config_corpus" / "docs_example.yaml", folder / "connref.yaml")


def _explain_flows(folder: Path) -> None:
    _quickstart(folder)
    add_explain_flows(folder)


PAGES: dict[str, Page] = {
    "README.md": Page(_quickstart),
    "docs/adoption.md": Page(
        _adoption_start,
        before={("connref plan -e dev", 1): _quickstart_config_back},
        # The imported config keeps the makers' broken Outlook connection: CR203, an error.
        exit_codes={"connref lint -e dev": 2, "connref lint -e dev --json": 2},
        answered={"connref apply -e dev": "yes"},
    ),
    "docs/concepts.md": Page(_explain_flows),
    "docs/config.md": Page(
        _quickstart,
        before={("connref validate", 2): _docs_example_config},
        exit_codes={"connref validate#2": 1},
    ),
    "docs/promotion.md": Page(_quickstart),
    "docs/service-account.md": Page(_quickstart),
}


def _command(text: str, folder: Path) -> str:
    for scratch in SCRATCH:
        text = text.replace(scratch, str(folder))
    return text


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CONNREF_CONFIG", "CONNREF_LOG", "FORCE_COLOR", "PYTHONPATH")}
    # CONNREF_LOG=warning: the output a person sees at a terminal, less the live status line.
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", NO_COLOR="1", HOME=str(home), CONNREF_LOG="warning")
    return env


def _run_at_terminal(command: str, folder: Path, env: dict[str, str], answer: str) -> tuple[int, str]:
    """Run ``command`` with a pseudo-terminal for stdin and stdout, answering its prompt."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(["bash", "-c", command], cwd=folder, stdin=slave, stdout=slave, stderr=slave,
                            env=env, close_fds=True)
    os.close(slave)
    out = b""
    answered = False
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
                if not answered and b"Enter a value:" in out:
                    os.write(master, answer.encode() + b"\n")
                    answered = True
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return code, out.decode("utf-8", "replace")


def _run(line: Line, folder: Path, env: dict[str, str], page: Page) -> tuple[int, str]:
    command = _command(line.text, folder)
    if line.text in page.answered:
        return _run_at_terminal(command, folder, env, page.answered[line.text])
    r = subprocess.run(["bash", "-c", command], cwd=folder, env=env, capture_output=True, text=True,
                       timeout=120, stdin=subprocess.DEVNULL)
    return r.returncode, r.stdout + r.stderr


def _bare(text: str) -> str:
    """A line without its trailing comment (``connref plan   # what would change`` -> ``connref plan``)."""
    return re.sub(r"\s+#.*$", "", text).strip()


@pytest.mark.parametrize("page", sorted(PAGES))
def test_every_command_line_of_the_page_runs_as_written(page: str, tmp_path: Path) -> None:
    lines, _ = command_lines(ROOT / page)
    assert lines, f"{page} has no command line to run"
    spec = PAGES[page]
    folder = tmp_path / "work"
    folder.mkdir()
    spec.setup(folder)
    env = _env(tmp_path)
    seen: dict[str, int] = {}
    failures = []
    for line in lines:
        bare = _bare(line.text)
        seen[bare] = seen.get(bare, 0) + 1
        hook = spec.before.get((bare, seen[bare]))
        if hook is not None:
            hook(folder)
        expected = spec.exit_codes.get(f"{bare}#{seen[bare]}", spec.exit_codes.get(bare, 0))
        code, output = _run(line, folder, env, spec)
        if code != expected:
            failures.append(f"{line}\n  exit {code}, expected {expected}\n{output[-3000:]}")
        actual = [x.rstrip() for x in output.rstrip().splitlines()]
        if line.shown is not None and not shows([x for x in line.shown if x], [x for x in actual if x]):
            failures.append(f"{line}\n  prints:\n" + "\n".join(actual) + "\n  the page shows:\n"
                            + "\n".join(line.shown))
    assert not failures, "\n\n".join(failures)


def test_every_page_with_command_lines_says_how_to_run_them() -> None:
    pages = {str(p.relative_to(ROOT)) for p in _pages() if p.exists() and command_lines(p)[0]}
    assert pages == set(PAGES), "a page's command lines are not run (add it to PAGES, or mark the block not-run)"
    for page in PAGES:
        texts = {_bare(line.text) for line in command_lines(ROOT / page)[0]}
        keys = {k.split("#")[0] for k in PAGES[page].exit_codes} | set(PAGES[page].answered)
        keys |= {text for text, _ in PAGES[page].before}
        assert keys <= texts, f"{page}: PAGES names lines the page no longer has: {sorted(keys - texts)}"


def test_the_readme_tour_is_what_a_user_runs_after_make_demo() -> None:
    """The tour uses ``connref`` from PATH; the README says how to get it there, and .venv has it."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert 'export PATH="$PWD/.venv/bin:$PATH"' in readme and "make install" in readme
    assert (BIN / "connref").exists(), f"{BIN} has no connref console script"
    tour, _ = command_lines(ROOT / "README.md")
    assert [line.text.split()[1] for line in tour][:3] == ["validate", "plan", "plan"]


def test_command_lines_are_found_and_not_run_blocks_left_out(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text(
        "```sh\nconnref plan   # x\necho connref\n```\n\n"
        "<!-- not-run: serves forever -->\n```sh\nconnref emulator\n```\n\n"
        "```text\n$ connref whoami -e dev\nconnref state unlock dev 1\n```\n"
        "```\nconnref.yaml:1:1: bad\n```\n",
        encoding="utf-8",
    )
    run, skipped = command_lines(page)
    assert [(line.number, line.text) for line in run] == [(2, "connref plan   # x"), (12, "connref whoami -e dev")]
    assert [line.text for line in skipped] == ["connref emulator"]


# --------------------------------------------------------------------------- the README's table and --help


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


GLOBAL = {"-h", "--help", "-c", "--config", "--no-color", "-v", "--verbose"}


def _options(parser: argparse.ArgumentParser) -> list[tuple[str, ...]]:
    """Each documented option of a command, with its other spellings (``("-e", "--env")``)."""
    return [tuple(a.option_strings) for a in parser._actions
            if a.option_strings and a.help != argparse.SUPPRESS and not set(a.option_strings) & GLOBAL]


def _readme_rows() -> dict[str, str]:
    """The README's "Commands and exit codes" table: command name -> its first cell."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("## Commands and exit codes"):]
    rows: dict[str, str] = {}
    for row in re.findall(r"^\| `(connref [^`]*)` \|", table, re.M):
        rows.setdefault(row.split()[1], row)
    return rows


def test_the_readme_table_has_every_command_of_connref_help() -> None:
    help_text = subprocess.run([str(BIN / "connref"), "--help"], capture_output=True, text=True, timeout=60).stdout
    listed = set(re.findall(r"^    ([a-z]+)  ", help_text, re.M))  # the COMMAND list, one a line
    assert listed == set(_subcommands(build_parser()))
    assert set(_readme_rows()) == listed


@pytest.mark.parametrize("command", sorted(_subcommands(build_parser())))
def test_the_readme_row_of_each_command_matches_its_options(command: str) -> None:
    sub = _subcommands(build_parser())[command]
    row = _readme_rows()[command]
    written = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", row))
    if command == "state":
        subs = _subcommands(sub)
        assert set(re.findall(r"(?:state |\|)([a-z]+)", row)) >= set(subs), row
        actions = [o for p in subs.values() for o in _options(p)]
        # The state subcommands' options are documented where the backends are (docs/pipelines.md).
        docs = "\n".join(p.read_text(encoding="utf-8") for p in _pages() if p.exists())
        shown = set(written) | {o for spellings in actions for o in spellings
                                if re.search(rf"connref state \w+[^\n`]*(?<![\w-]){re.escape(o)}\b", docs)}
    else:
        actions = _options(sub)
        shown = written
    known = {o for spellings in actions for o in spellings}
    assert written <= known, f"README names options 'connref {command}' does not have: {sorted(written - known)}"
    missing = [spellings for spellings in actions if not set(spellings) & shown]
    assert not missing, f"options of 'connref {command}' the docs do not show: {missing}"
