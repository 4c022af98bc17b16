"""Where connref writes what it is asked to write (``plan --out``, ``--markdown``, ``-o``), through the real CLI
on the quickstart: a path it cannot write is an error naming it (exit 1, no traceback); a saved plan goes
through a symbolic link to the file it leads to and is never put in place of a directory, a pipe or a
device; and no output overwrites the config in use or the data file of a ``local:`` environment."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from e2e.e2e_support import Result, Workspace, run_cli

pytestmark = pytest.mark.emulator_only


def files(directory: Path) -> dict[str, tuple[str, bytes | str]]:
    """Every entry under ``directory``: its kind and its bytes (a link: where it leads)."""
    found: dict[str, tuple[str, bytes | str]] = {}
    for p in sorted(directory.rglob("*")):
        name = str(p.relative_to(directory))
        if p.is_symlink():
            found[name] = ("link", os.readlink(p))
        elif p.is_fifo():
            found[name] = ("fifo", b"")
        elif p.is_dir():
            found[name] = ("dir", b"")
        else:
            found[name] = ("file", p.read_bytes())
    return found


def refused(r: Result, message: str) -> None:
    assert r.code == 1, r.out + r.err
    assert "Error: " in r.err and message in r.err, r.err
    assert "Traceback" not in r.err
    assert "Saved the plan" not in r.out + r.err


# --------------------------------------------------------------------------- plan --out: paths that cannot hold a plan


def test_plan_out_a_directory_is_an_error_naming_it(quickstart: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(quickstart.dir)
    (quickstart.dir / "plans").mkdir()
    before = files(quickstart.dir)
    refused(quickstart.run("plan", "-e", "dev", "--out", "plans"), "cannot write plans: Is a directory")
    assert files(quickstart.dir) == before  # no temporary file left behind either


def test_plan_out_under_a_file_is_an_error_naming_it(quickstart: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(quickstart.dir)
    before = files(quickstart.dir)
    for path in ("dev.json/plan.json", "dev.json/deeper/plan.json"):
        refused(quickstart.run("plan", "-e", "dev", "--out", path), f"cannot write {path}: Not a directory")
    refused(quickstart.run("plan", "-e", "dev", "--markdown", "dev.json/plan.md"),
            "cannot write dev.json/plan.md: Not a directory")
    assert files(quickstart.dir) == before


def test_plan_out_a_named_pipe_is_refused_and_left_as_it_is(
    quickstart: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stands for any file that is not a regular one (as root, ``--out /dev/full`` replaced the device)."""
    monkeypatch.chdir(quickstart.dir)
    os.mkfifo(quickstart.dir / "pipe")
    before = files(quickstart.dir)
    refused(quickstart.run("plan", "-e", "dev", "--out", "pipe"),
            "cannot write pipe: it is a named pipe (FIFO), not a regular file")
    assert stat.S_ISFIFO(os.lstat(quickstart.dir / "pipe").st_mode)
    assert files(quickstart.dir) == before


def test_plan_out_through_a_link_writes_the_file_it_leads_to(
    quickstart: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(quickstart.dir)
    (quickstart.dir / "plans").mkdir()
    target = quickstart.dir / "plans" / "current.json"
    target.write_text("an older plan\n")
    (quickstart.dir / "plan.json").symlink_to(Path("plans") / "current.json")
    r = quickstart.run("plan", "-e", "dev", "--out", "plan.json")
    assert r.code == 0, r.out + r.err
    assert "Saved the plan to plan.json." in r.out
    assert os.readlink(quickstart.dir / "plan.json") == str(Path("plans") / "current.json")  # still the link
    assert json.loads(target.read_text())["kind"] == "connref-saved-plan"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in (quickstart.dir / "plans").iterdir()) == ["current.json"]
    r = quickstart.run("apply", "plan.json")
    assert r.code == 0, r.out + r.err
    assert "Apply complete!" in r.out


def test_plan_out_a_regular_file_is_replaced_whole(quickstart: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(quickstart.dir)
    (quickstart.dir / "plan.json").write_text("an older plan\n")
    r = quickstart.run("plan", "-e", "dev", "--out", "plan.json")
    assert r.code == 0, r.out + r.err
    assert json.loads((quickstart.dir / "plan.json").read_text())["kind"] == "connref-saved-plan"
    assert not [p.name for p in quickstart.dir.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- outputs never overwrite what a run reads

CONFIG = "it is the config file in use"
DEV_DATA = "it is the data file of environment dev (local:dev.json)"

OVERWRITES = [
    (["plan", "-e", "dev", "--out", "connref.yaml"], f"refusing to write --out connref.yaml: {CONFIG}"),
    (["plan", "-e", "dev", "--out", "./sub/../connref.yaml"], f"--out ./sub/../connref.yaml: {CONFIG}"),
    (["plan", "-e", "dev", "--markdown", "connref.yaml"], f"refusing to write --markdown connref.yaml: {CONFIG}"),
    (["plan", "-e", "dev", "--markdown", "dev.json"], f"refusing to write --markdown dev.json: {DEV_DATA}"),
    (["plan", "-e", "prod", "--out", "dev.json"], f"refusing to write --out dev.json: {DEV_DATA}"),
    (["plan", "--json", "--markdown", "dev.json"], f"refusing to write --markdown dev.json: {DEV_DATA}"),
    (["plan", "--markdown", "link-to-dev.json"], f"refusing to write --markdown link-to-dev.json: {DEV_DATA}"),
    (["plan", "--markdown", "hard-link-to-dev.json"], f"--markdown hard-link-to-dev.json: {DEV_DATA}"),
    (["plan", "--out", "p.json", "--markdown", "p.json"], "--out and --markdown name the same file (p.json)"),
    (["drift", "-e", "dev", "--markdown", "dev.json"], f"refusing to write --markdown dev.json: {DEV_DATA}"),
    (["drift", "--markdown", "connref.yaml"], f"refusing to write --markdown connref.yaml: {CONFIG}"),
    (["settings", "-e", "dev", "-o", "connref.yaml"], f"refusing to write -o connref.yaml: {CONFIG}"),
    (["settings", "-e", "prod", "-o", "dev.json"], f"refusing to write -o dev.json: {DEV_DATA}"),
    (["import", "-e", "dev", "-o", "dev.json"], f"refusing to write -o dev.json: {DEV_DATA}"),
    (["import", "-e", "dev", "--from-settings", "s.json", "-o", "s.json"],
     "refusing to write -o s.json: it is the settings file read"),
    (["schema", "-o", "connref.yaml"], f"refusing to write -o connref.yaml: {CONFIG}"),
    (["schema", "-o", "dev.json"], f"refusing to write -o dev.json: {DEV_DATA}"),
    (["show", "saved.json", "--markdown", "dev.json"], f"refusing to write --markdown dev.json: {DEV_DATA}"),
    (["show", "saved.json", "--markdown", "saved.json"], "refusing to write --markdown saved.json: it is the plan "
     "file shown"),
]


@pytest.mark.parametrize(("argv", "message"), OVERWRITES)
def test_no_output_overwrites_the_config_or_a_local_data_file(
    quickstart: Workspace, monkeypatch: pytest.MonkeyPatch, argv: list[str], message: str
) -> None:
    monkeypatch.chdir(quickstart.dir)
    r = quickstart.run("plan", "-e", "dev", "--out", "saved.json")
    assert r.code == 0, r.out + r.err
    (quickstart.dir / "s.json").write_text('{"ConnectionReferences": []}\n')
    (quickstart.dir / "link-to-dev.json").symlink_to("dev.json")
    os.link(quickstart.dir / "dev.json", quickstart.dir / "hard-link-to-dev.json")
    (quickstart.dir / "sub").mkdir()
    before = files(quickstart.dir)
    r = run_cli(*argv)  # the config is ./connref.yaml, found as a user would have it found
    refused(r, message)
    assert "nothing was written" in r.err
    assert files(quickstart.dir) == before
    if "--json" in argv:  # stdout still holds one JSON document, saying why
        assert json.loads(r.out)["errored"] is True


def test_the_config_named_with_c_is_protected_wherever_it_is(
    quickstart: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check compares files, not the words of the paths: -c absolute, --markdown relative to elsewhere."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    before = files(quickstart.dir)
    relative = os.path.relpath(quickstart.config, elsewhere)
    monkeypatch.chdir(elsewhere)
    r = quickstart.run("drift", "--markdown", relative)
    refused(r, f"refusing to write --markdown {relative}: {CONFIG}")
    assert files(quickstart.dir) == before


def test_a_config_that_does_not_load_is_not_overwritten_by_the_error_markdown(tmp_path: Path) -> None:
    broken = tmp_path / "connref.yaml"
    broken.write_text("version: 1\nreferences: [\n")
    for argv in (["plan", "--markdown", str(broken)], ["drift", "--markdown", str(broken)]):
        r = run_cli("-c", str(broken), *argv)
        refused(r, f"refusing to write --markdown {broken}: {CONFIG}")
        assert broken.read_text() == "version: 1\nreferences: [\n"


def test_import_may_still_rewrite_the_config_in_place(quickstart: Workspace) -> None:
    """``connref import -e dev -o connref.yaml`` is how docs/adoption.md adopts an environment: import writes a
    config, so its -o may name the config (only the data files are refused)."""
    before = quickstart.config.read_text()
    r = quickstart.run("import", "-e", "dev", "-o", str(quickstart.config))
    assert r.code == 0, r.out + r.err
    assert f"Wrote {quickstart.config}." in r.err
    assert quickstart.config.read_text() != before
    assert run_cli("-c", str(quickstart.config), "validate").code == 0
