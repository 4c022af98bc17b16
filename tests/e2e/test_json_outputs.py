"""The documents a pipeline or a reviewer reads, through the real CLI on the quickstart: every ``--json``
output and the saved plan validate against their schemas (``reconciler/schemas``), stdout holds exactly
one JSON document whatever other flags are given, ``connref show`` prints a saved plan, a plan that fails
still writes its markdown (with the errors), and the markdown carries the marker a pipeline looks for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from schema_support import check

from e2e.e2e_support import Workspace
from reconciler.schemas import SCHEMAS, load_schema

pytestmark = pytest.mark.emulator_only

PLAN_MARKER = "<!-- connref:plan -->"
DRIFT_MARKER = "<!-- connref:drift -->"


def _one_document(stdout: str) -> Any:
    """stdout parsed as exactly one JSON document (json.loads refuses anything after it)."""
    try:
        return json.loads(stdout)
    except json.JSONDecodeError as e:
        pytest.fail(f"stdout is not exactly one JSON document ({e}):\n{stdout[-2000:]}")


def _rename_in_portal(ws: Workspace, env: str, logical_name: str, new_name: str) -> None:
    path = ws.dir / f"{env}.json"
    data = json.loads(path.read_text())
    row = next(r for r in data["connectionreferences"] if r["connectionreferencelogicalname"] == logical_name)
    row["connectionreferencedisplayname"] = new_name
    path.write_text(json.dumps(data, indent=2))


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_every_schema_is_a_valid_draft_2020_12_schema(kind: str) -> None:
    schema = load_schema(kind)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(":1") and "title" in schema


@pytest.mark.parametrize(
    "flags",
    [
        [],
        ["--detailed-exitcode"],
        ["--out", "plan.json"],
        ["--out", "plan.json", "--markdown", "plan.md", "--detailed-exitcode"],
        ["-e", "dev", "--out", "plan.json"],
    ],
    ids=["plain", "detailed-exitcode", "out", "out-markdown-detailed", "one-env-out"],
)
def test_plan_json_is_one_valid_document_whatever_the_flags(quickstart: Workspace, flags: list[str]) -> None:
    argv = [a if not a.endswith((".json", ".md")) else str(quickstart.dir / a) for a in flags]
    r = quickstart.run("plan", "--json", *argv)
    assert r.code == (2 if "--detailed-exitcode" in flags else 0), r.err
    doc = _one_document(r.out)
    check("plan", doc)
    assert doc["applyable"] is True and doc["errored"] is False
    assert doc["summary"]["add"] >= 1
    if "--out" in flags:
        assert "Saved the plan to" in r.err  # said on stderr, so stdout stays one document
        saved = json.loads((quickstart.dir / "plan.json").read_text())
        check("saved-plan", saved)


def test_show_prints_a_saved_plan_as_text_and_as_the_plan_document(quickstart: Workspace) -> None:
    plan_path = quickstart.dir / "plan.json"
    r = quickstart.run("plan", "--out", str(plan_path), "--json")
    planned = _one_document(r.out)

    shown = quickstart.run("show", str(plan_path))
    assert shown.code == 0, shown.err
    assert f"Saved plan {plan_path}" in shown.out and "dev: made against no state yet" in shown.out
    assert "+ contoso_Teams" in shown.out and "Plan: 2 to add, 13 to change, 0 to destroy." in shown.out

    js = quickstart.run("show", str(plan_path), "--json", "--markdown", str(quickstart.dir / "show.md"))
    doc = _one_document(js.out)
    check("plan", doc)
    assert doc["changes"] == planned["changes"] and doc["summary"] == planned["summary"]
    assert doc["saved_plan"]["environments"]["dev"] == {"state_serial": None, "state_lineage": None}
    md = (quickstart.dir / "show.md").read_text()
    assert md.startswith(PLAN_MARKER + "\n") and "Plan: 2 to add, 13 to change, 0 to destroy." in md

    assert quickstart.run("apply", "--auto-approve").code == 0
    quickstart.run("plan", "--out", str(plan_path))
    after = quickstart.run("show", str(plan_path))
    assert "dev: made against state serial 1" in after.out and "No changes." in after.out


def test_show_refuses_a_file_that_is_not_a_plan(quickstart: Workspace) -> None:
    (quickstart.dir / "x.json").write_text('{"hello": 1}')
    r = quickstart.run("show", str(quickstart.dir / "x.json"))
    assert r.code == 1 and "is not a connref plan file" in r.err
    js = quickstart.run("show", str(quickstart.dir / "x.json"), "--json")
    doc = _one_document(js.out)
    check("plan", doc)
    assert js.code == 1 and doc["errored"] is True and "is not a connref plan file" in doc["errors"][0]


def test_lint_json_that_cannot_run_is_one_errored_document(quickstart: Workspace) -> None:
    quickstart.config.write_text(quickstart.config.read_text().replace("version: 1", "version: 7"))
    r = quickstart.run("lint", "--json")
    doc = _one_document(r.out)
    check("lint", doc)
    assert r.code == 1 and doc["errored"] is True and doc["exit_code"] == 1
    assert "unsupported version 7" in doc["errors"][0] and doc["findings"] == []


def test_a_plan_that_fails_writes_its_errors_as_json_and_markdown(quickstart: Workspace) -> None:
    config = quickstart.config
    text = config.read_text()
    # A binding to a connection that does not exist: planning refuses it.
    config.write_text(text.replace("contoso_Teams: 8f70942eabcb416e8a0f9861272ee570",
                                   "contoso_Teams: feedfacefeedfacefeedfacefeedface"))
    md = quickstart.dir / "plan.md"
    r = quickstart.run("plan", "--json", "--markdown", str(md), "--out", str(quickstart.dir / "plan.json"))
    assert r.code == 1
    doc = _one_document(r.out)
    check("plan", doc)
    assert doc["errored"] is True and doc["applyable"] is False
    assert any("feedfacefeedfacefeedfacefeedface" in e for e in doc["errors"])
    body = md.read_text()
    assert body.startswith(PLAN_MARKER + "\n") and "The plan could not be made" in body
    assert "feedfacefeedfacefeedfacefeedface" in body
    assert not (quickstart.dir / "plan.json").exists()


def test_a_config_error_is_an_errored_plan_document_with_file_line_column(quickstart: Workspace) -> None:
    config = quickstart.config
    config.write_text(config.read_text().replace("solution: ContosoFlows", "solution: ContosoFlows\nbogus: 1"))
    line = config.read_text().splitlines().index("bogus: 1") + 1
    md = quickstart.dir / "plan.md"
    r = quickstart.run("plan", "--json", "--markdown", str(md))
    assert r.code == 1
    doc = _one_document(r.out)
    check("plan", doc)
    assert doc["errored"] is True and doc["errors"][0].startswith(f"{config}:{line}:1: bogus: unknown key")
    assert f"{config}:{line}:1: bogus: unknown key" in md.read_text()


def test_drift_json_clean_drifted_and_errored_documents(quickstart: Workspace) -> None:
    md = quickstart.dir / "drift.md"
    assert quickstart.run("apply", "--auto-approve").code == 0
    clean = quickstart.run("drift", "--json", "--markdown", str(md))
    assert clean.code == 0, clean.err
    check("drift", _one_document(clean.out))
    assert md.read_text().startswith(DRIFT_MARKER + "\n## connref drift: no drift")

    _rename_in_portal(quickstart, "dev", "contoso_sharedoffice365_d4c61", "Renamed in the portal")
    drifted = quickstart.run("drift", "--json", "--markdown", str(md))
    assert drifted.code == 2, drifted.err
    doc = _one_document(drifted.out)
    check("drift", doc)
    assert doc["has_drift"] is True
    assert md.read_text().startswith(DRIFT_MARKER + "\n## connref drift: drift found")

    quickstart.config.write_text(quickstart.config.read_text().replace("version: 1", "version: 7"))
    failed = quickstart.run("drift", "--json", "--markdown", str(md))
    assert failed.code == 1
    doc = _one_document(failed.out)
    check("drift", doc)
    assert doc["errored"] is True and "unsupported version 7" in doc["errors"][0]
    assert "unsupported version 7" in md.read_text()


def test_lint_and_state_documents_match_their_schemas(quickstart: Workspace) -> None:
    r = quickstart.run("lint", "-e", "dev", "--json")
    doc = _one_document(r.out)
    check("lint", doc)
    assert doc["findings"] and r.code == doc["exit_code"]

    assert quickstart.run("apply", "--auto-approve").code == 0
    shown = quickstart.run("state", "show", "dev", "--json")
    doc = _one_document(shown.out)
    check("state", doc)
    assert doc["serial"] == 1 and doc["path"].endswith("dev.json")
    check("state", json.loads(Path(doc["path"]).read_text()))  # the file itself is a state document


def test_every_document_says_the_same_format_version(quickstart: Workspace) -> None:
    """plan, show, drift, lint, explain and state documents all write ``format_version`` as MAJOR.MINOR."""
    plan_path = str(quickstart.dir / "plan.json")
    assert quickstart.run("plan", "--out", plan_path).code == 0
    runs = {
        "plan": quickstart.run("plan", "--json"),
        "show": quickstart.run("show", plan_path, "--json"),
        "lint": quickstart.run("lint", "-e", "dev", "--json"),
        "explain": quickstart.run("explain", "-e", "dev", "--json"),
    }
    assert quickstart.run("apply", "--auto-approve", "-e", "dev").code == 0
    runs["drift"] = quickstart.run("drift", "-e", "dev", "--json")
    runs["state"] = quickstart.run("state", "show", "dev", "--json")
    versions = {kind: _one_document(r.out)["format_version"] for kind, r in runs.items()}
    assert versions == dict.fromkeys(runs, "1.0")
