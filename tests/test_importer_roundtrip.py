"""End to end through the CLI on a copy of the quickstart, whose service account does not own every
reference in either environment (dev: the makers own three, prod: one): import, then plan the imported
config: no changes, and importing again gives the same file."""

from __future__ import annotations

import io
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml

from reconciler import cli

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart"


def connref(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.run(list(argv))
    return code, out.getvalue() + err.getvalue()


@pytest.mark.parametrize(
    ("env", "owners"),
    [
        ("dev", "3 references are owned by maker1@contoso.com, maker2@contoso.com today."),
        ("prod", "1 reference is owned by maker2@contoso.com today."),
    ],
)
def test_import_then_plan_has_no_changes(tmp_path: Path, env: str, owners: str) -> None:
    work = tmp_path / "quickstart"
    shutil.copytree(QUICKSTART, work)
    imported = work / "imported.yaml"
    code, text = connref("-c", str(work / "connref.yaml"), "import", "-e", env, "-o", str(imported))
    assert code == 0, text
    written = imported.read_text(encoding="utf-8")
    section = yaml.safe_load(written)["environments"][env]
    # plan with the line would make the service account their owner: it is commented out, with why
    assert "service_account" not in section
    assert "    # service_account: svc-flows@contoso.com\n" in written
    assert owners in " ".join(written.replace("#", " ").split())

    code, text = connref("-c", str(imported), "plan", "-e", env, "--detailed-exitcode")
    assert code == 0, text
    assert "No changes." in text and "~ owner" not in text

    again = work / "again.yaml"
    code, text = connref("-c", str(imported), "import", "-e", env, "-o", str(again))
    assert code == 0, text
    assert again.read_text(encoding="utf-8") == written
