"""A saved plan cannot be steered (docs/pipelines.md): ``apply PLANFILE`` checks the file against its schema
first, then makes the plan again from the config (whose digest the file records) and the environments as
read, and refuses the file unless its operations are exactly those. Every case through the real CLI on the
quickstart: refused with a clear message, exit 1, no traceback, nothing written (data files, state, locks).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from e2e.e2e_support import Workspace
from reconciler.plan.ops import OPERATION_KINDS
from reconciler.schemas import load_schema

pytestmark = pytest.mark.emulator_only

APPROVALS = "contoso_sharedsharepointonline_8f4b0"
INVOICES = "contoso_sharedsharepointonline_30e7d"
UNMANAGED = "contoso_sharedteams_c93f2"  # in dev's solution, not declared: connref never managed it
MAKER2_SHAREPOINT = "a9f6f27419d644e1b15e991a285112d7"
APPROVALS_DEV = "7c84991c04914d13b9fa2b331a3ad4b8"  # the connection dev's binding names
MAKER1 = ("a2881f1a-3590-4174-84df-af76cbfbfba0", "maker1@contoso.com")
MAKER1_OBJECT_ID = "90499898-993d-43a4-88fb-3356cbb42f82"  # maker1's Entra object id

Doc = dict[str, Any]


def saved_plan(ws: Workspace) -> Path:
    path = ws.dir / "plan.json"
    r = ws.run("plan", "--out", str(path))
    assert r.code == 0, r.out + r.err
    return path


def op(doc: Doc, env: str, kind: str, logical_name: str) -> Doc:
    env_plan = next(e for e in doc["plan"]["environments"] if e["environment"] == env)
    found: Doc = next(o for o in env_plan["ops"] if o["kind"] == kind and o["logical_name"] == logical_name)
    return found


def row(ws: Workspace, env: str, logical_name: str) -> Doc:
    return ws.reference(env, logical_name)


def change(o: Doc, field: str, after: str | None) -> None:
    c = next(c for c in o["changes"] if c["field"] == field)
    c["after"] = after
    o["after"][field] = after


def another_connection(ws: Workspace, doc: Doc) -> None:
    o = op(doc, "dev", "update", APPROVALS)
    o["new_connection"]["name"] = MAKER2_SHAREPOINT
    change(o, "connection", MAKER2_SHAREPOINT)


def a_maker_as_owner(ws: Workspace, doc: Doc) -> None:
    o = op(doc, "dev", "update", INVOICES)
    o["new_owner"] = {"systemuserid": MAKER1[0], "upn": MAKER1[1]}
    change(o, "owner", MAKER1[1])


def delete_what_connref_never_managed(ws: Workspace, doc: Doc) -> None:
    target = row(ws, "dev", UNMANAGED)
    env_plan = next(e for e in doc["plan"]["environments"] if e["environment"] == "dev")
    env_plan["ops"].append({
        "kind": "delete", "actions": ["delete"], "environment": "dev", "logical_name": UNMANAGED,
        "reference_id": target["connectionreferenceid"], "etag": f'W/"{target["versionnumber"]}"',
        "reason": "managed by connref, no longer declared in the config, and prune is on",
        "before": {}, "after": {}, "flows": [],
    })


def an_update_at_another_row(ws: Workspace, doc: Doc) -> None:
    target = row(ws, "dev", UNMANAGED)
    o = op(doc, "dev", "update", APPROVALS)
    o["reference_id"] = target["connectionreferenceid"]
    o["etag"] = f'W/"{target["versionnumber"]}"'


def fewer_operations(ws: Workspace, doc: Doc) -> None:
    env_plan = next(e for e in doc["plan"]["environments"] if e["environment"] == "dev")
    env_plan["ops"] = [o for o in env_plan["ops"] if o["logical_name"] != INVOICES]


def a_create_of_another_id(ws: Workspace, doc: Doc) -> None:
    op(doc, "dev", "create", "contoso_Teams")["reference_id"] = row(ws, "dev", UNMANAGED)["connectionreferenceid"]


def writes_acting_as_a_maker(ws: Workspace, doc: Doc) -> None:
    env_plan = next(e for e in doc["plan"]["environments"] if e["environment"] == "dev")
    env_plan["apply_facts"]["writer_object_id"] = MAKER1_OBJECT_ID  # CallerObjectId: every write as maker1


STEERED: list[tuple[str, Callable[[Workspace, Doc], None], str]] = [
    ("binds another connection", another_connection,
     f'dev: update {APPROVALS}: new_connection.name is "{MAKER2_SHAREPOINT}" in the file; '
     f'the config implies "{APPROVALS_DEV}"'),
    ("makes a maker the owner", a_maker_as_owner, f'dev: update {INVOICES}: new_owner.systemuserid is '
     f'"{MAKER1[0]}" in the file'),
    ("deletes a reference connref never managed", delete_what_connref_never_managed,
     f"dev: the file deletes {UNMANAGED}"),
    ("points an update at another row", an_update_at_another_row, f"dev: update {APPROVALS}: reference_id is"),
    ("leaves an operation out", fewer_operations, f"dev: the file lacks update {INVOICES}, which the config implies"),
    ("creates under another row's id", a_create_of_another_id, "dev: create contoso_Teams: reference_id is"),
    ("writes acting as a maker", writes_acting_as_a_maker,
     f'dev: apply_facts.writer_object_id is "{MAKER1_OBJECT_ID}" in the file'),
]


def snapshot(ws: Workspace) -> dict[str, bytes]:
    files = [ws.dir / "dev.json", ws.dir / "prod.json"]
    if (ws.dir / "state").exists():
        files += sorted((ws.dir / "state").iterdir())
    return {str(p): p.read_bytes() for p in files if p.is_file()}


def refused(ws: Workspace, path: Path) -> str:
    before = snapshot(ws)
    r = ws.run("apply", str(path))
    assert r.code == 1, r.out + r.err
    assert "Traceback" not in r.err
    assert snapshot(ws) == before, "a refused plan wrote something"
    assert not list((ws.dir / "state").glob("*.lock")) if (ws.dir / "state").exists() else True
    return r.err


def test_a_saved_plan_as_written_is_applied(quickstart: Workspace) -> None:
    path = saved_plan(quickstart)
    r = quickstart.run("apply", str(path))
    assert r.code == 0, r.out + r.err
    assert "Apply complete! Changes: 2 added, 13 changed, 0 destroyed." in r.out


@pytest.mark.parametrize(("name", "edit", "said"), STEERED, ids=[s[0] for s in STEERED])
def test_an_edited_plan_is_refused(quickstart: Workspace, name: str, edit: Callable[[Workspace, Doc], None],
                                   said: str) -> None:
    path = saved_plan(quickstart)
    doc = json.loads(path.read_text())
    edit(quickstart, doc)
    path.write_text(json.dumps(doc))
    err = refused(quickstart, path)
    assert "was refused; nothing was applied: its operations are not what the config" in err
    assert said in err, err


def test_a_plan_acting_outside_its_freshness_block_is_refused_before_anything(quickstart: Workspace) -> None:
    path = saved_plan(quickstart)
    doc = json.loads(path.read_text())
    del doc["environments"]["prod"]  # prod's operations stay, what prod looked like goes
    path.write_text(json.dumps(doc))
    err = refused(quickstart, path)
    assert "names environment(s) its freshness block does not record: prod; nothing was applied" in err


@pytest.mark.parametrize(("name", "edit", "said"), [
    ("an operation of an unknown kind", lambda d: op(d, "dev", "create", "contoso_Teams").update(kind="activate"),
     "/plan/environments/0/ops/3/kind: 'activate' is not one of"),
    ("operations that are not a list", lambda d: d["plan"]["environments"][0].update(ops={"kind": "create"}),
     "/plan/environments/0/ops: {'kind': 'create'} is not of type array"),
    ("a create without its connector", lambda d: op(d, "dev", "create", "contoso_Teams").pop("connector"),
     "plan file"),
    ("a serial that is not a number", lambda d: d["environments"]["dev"].update(state={"serial": "7"}),
     "/environments/dev/state"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_a_malformed_plan_is_a_clear_error_before_anything(
    quickstart: Workspace, name: str, edit: Callable[[Doc], Any], said: str
) -> None:
    path = saved_plan(quickstart)
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    err = refused(quickstart, path)
    assert err.startswith("Error: plan file ") and said in err, err
    r = quickstart.run("show", str(path))  # the reviewer's view says the same
    assert r.code == 1 and "Traceback" not in r.err and said in r.err


def test_every_operation_kind_is_in_the_saved_plan_schema() -> None:
    # A new operation kind needs its place in saved-plan-1.json: apply validates the file against it first.
    schema = load_schema("saved-plan")
    assert set(schema["$defs"]["op"]["properties"]["kind"]["enum"]) == set(OPERATION_KINDS)
