"""The quickstart end to end through the real CLI: plan, apply, re-plan, idempotence, saved plans,
drift after a portal change, import round trip, lint, settings and whoami.

These run on ``local:`` environments (the in-process emulator, writing back into the JSON files), the
same way ``make demo`` does.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from e2e.e2e_support import Workspace, run_cli
from reconciler.emulator import jwt
from reconciler.emulator.app import EmulatorApp
from reconciler.emulator.store import EnvironmentStore

pytestmark = pytest.mark.emulator_only


def test_first_plan_shows_create_rename_and_rebind(quickstart: Workspace) -> None:
    r = quickstart.run("plan", "-e", "dev", "--detailed-exitcode")
    assert r.code == 2, r.err
    assert "+ contoso_Teams" in r.out
    assert '~ display_name: "SharePoint Solution1-30e7d" -> "SharePoint ContosoFlows"' in r.out
    assert "~ connection:" in r.out and "-> \"svc-flows@contoso.com\"" in r.out
    assert "~ owner: maker2@contoso.com -> svc-flows@contoso.com" in r.out
    # the Dataverse reference is already as declared: it is not in the plan
    assert "contoso_sharedcommondataserviceforapps_7b2e9" not in r.out
    assert r.out.rstrip().endswith("Plan: 1 to add, 3 to change, 0 to destroy.")


def test_apply_then_plan_is_clean_and_second_apply_writes_nothing(quickstart: Workspace) -> None:
    before = quickstart.reference("dev", "contoso_sharedsharepointonline_8f4b0")
    r = quickstart.run("apply", "--auto-approve")
    assert r.code == 0, r.out + r.err
    # dev and prod: 2 created, 5 updated; test: 5 references bound and 3 flows switched on.
    assert "Apply complete! Changes: 2 added, 13 changed, 0 destroyed." in r.out

    after = quickstart.reference("dev", "contoso_sharedsharepointonline_8f4b0")
    assert after["connectionreferencedisplayname"] == "SharePoint ContosoFlows Approvals"
    assert after["connectionid"] == "7c84991c04914d13b9fa2b331a3ad4b8"
    assert after["versionnumber"] > before["versionnumber"]
    svc = next(u for u in quickstart.data("dev")["systemusers"] if u["domainname"] == "svc-flows@contoso.com")
    assert after["_ownerid_value"] == svc["systemuserid"]
    # written as the service account, on behalf of the pipeline's application user
    assert after["_modifiedby_value"] == svc["systemuserid"]
    assert after["_modifiedonbehalfby_value"] not in (None, svc["systemuserid"])
    teams = quickstart.reference("dev", "contoso_Teams")
    assert teams["_ownerid_value"] == svc["systemuserid"]
    members = {c["objectid"] for c in quickstart.data("dev")["solutioncomponents"]}
    assert teams["connectionreferenceid"] in members

    r = quickstart.run("plan", "--detailed-exitcode")
    assert r.code == 0, r.out + r.err
    assert "No changes." in r.out

    files = {env: (quickstart.dir / f"{env}.json").read_bytes() for env in ("dev", "test", "prod")}
    r = quickstart.run("apply", "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert "No changes" in r.out
    for env, content in files.items():
        assert (quickstart.dir / f"{env}.json").read_bytes() == content, f"{env} was written again"


def test_state_records_the_apply(quickstart: Workspace) -> None:
    assert quickstart.run("apply", "--auto-approve").code == 0
    r = quickstart.run("state", "show", "dev", "--json")
    assert r.code == 0, r.err
    shown = json.loads(r.out)
    assert shown["serial"] == 1
    names = {n.lower() for n in shown["references"]}
    assert "contoso_teams" in names and "contoso_sharedoffice365_d4c61" in names
    assert quickstart.run("state", "list").code == 0


def test_saved_plan_applies_exactly_and_refuses_when_stale(quickstart: Workspace) -> None:
    plan_path = quickstart.dir / "plan.json"
    r = quickstart.run("plan", "-e", "dev", "--out", str(plan_path))
    assert r.code == 0, r.err
    # Someone renames a reference in the portal after the plan was made: its ETag moves.
    store = EnvironmentStore.from_file(str(quickstart.dir / "dev.json"))
    with store.lock:
        row = next(x for x in store.data["connectionreferences"]
                   if x["connectionreferencelogicalname"] == "contoso_sharedoffice365_d4c61")
        row["connectionreferencedisplayname"] = "Outlook (renamed in the portal)"
        row["versionnumber"] = store.next_version()
        store.save()
    before = (quickstart.dir / "dev.json").read_bytes()
    r = quickstart.run("apply", str(plan_path))
    assert r.code == 1
    assert "contoso_sharedoffice365_d4c61" in r.err and "plan" in r.err.lower()
    assert (quickstart.dir / "dev.json").read_bytes() == before, "a stale plan wrote something"

    # A fresh plan saved and applied as is works, without a prompt (the file is the approval).
    r = quickstart.run("plan", "-e", "dev", "--out", str(plan_path))
    assert r.code == 0
    r = quickstart.run("apply", str(plan_path))
    assert r.code == 0, r.out + r.err
    assert quickstart.reference("dev", "contoso_sharedoffice365_d4c61")["connectionreferencedisplayname"] == (
        "Office 365 Outlook ContosoFlows")


def test_saved_plan_rejects_planning_flags(quickstart: Workspace) -> None:
    plan_path = quickstart.dir / "plan.json"
    assert quickstart.run("plan", "--out", str(plan_path)).code == 0
    r = quickstart.run("apply", "-e", "dev", str(plan_path))
    assert r.code == 1 and "not allowed with PLANFILE" in r.err


def test_apply_without_terminal_or_approval_fails_closed(quickstart: Workspace) -> None:
    before = (quickstart.dir / "dev.json").read_bytes()
    p = subprocess.run(
        [sys.executable, "-m", "reconciler", "-c", str(quickstart.config), "apply", "-e", "dev"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False,
    )
    assert p.returncode == 1
    assert "--auto-approve" in p.stderr
    assert (quickstart.dir / "dev.json").read_bytes() == before


def test_drift_reports_a_portal_rebind_with_who_and_when(quickstart: Workspace) -> None:
    assert quickstart.run("apply", "--auto-approve").code == 0
    # maker2 rebinds a managed reference to their own connection in the portal.
    store = EnvironmentStore.from_file(str(quickstart.dir / "dev.json"))
    app = EmulatorApp(store, persist=True)
    maker2 = next(u for u in store.data["systemusers"] if u["domainname"] == "maker2@contoso.com")
    conn = next(c for c in store.data["connections"]
                if c["properties"]["apiId"].endswith("shared_sharepointonline")
                and c["properties"]["createdBy"]["id"] == maker2["azureactivedirectoryobjectid"])
    env = store.data["environment"]
    token = jwt.mint(store.data["signing_key_pem"], tenant_id=env["tenant_id"],
                     object_id=maker2["azureactivedirectoryobjectid"], audience=env["url"],
                     upn="maker2@contoso.com")
    row = next(x for x in store.data["connectionreferences"]
               if x["connectionreferencelogicalname"] == "contoso_sharedsharepointonline_8f4b0")
    transport = httpx.WSGITransport(app=app)
    with httpx.Client(transport=transport, base_url="https://dev.local/api/data/v9.2/") as c:
        resp = c.patch(f"connectionreferences({row['connectionreferenceid']})",
                       json={"connectionid": conn["name"], "connectionreferencedisplayname": "SP mine"},
                       headers={"Authorization": f"Bearer {token}", "If-Match": "*"})
        assert resp.status_code == 204, resp.text

    r = quickstart.run("drift", "-e", "dev", "--json")
    assert r.code == 2, r.err
    report = json.loads(r.out)
    text = json.dumps(report)
    assert "contoso_sharedsharepointonline_8f4b0" in text
    assert "maker2@contoso.com" in text
    r = quickstart.run("drift", "-e", "dev", "--markdown", str(quickstart.dir / "drift.md"))
    assert r.code == 2
    md = (quickstart.dir / "drift.md").read_text()
    assert "contoso_sharedsharepointonline_8f4b0" in md and "maker2@&#8203;contoso.com" in md
    assert "rebound" in r.out.lower() and "renamed" in r.out.lower()


def test_import_round_trip_plans_no_changes(quickstart: Workspace) -> None:
    out = quickstart.dir / "imported.yaml"
    r = quickstart.run("import", "-e", "dev", "-o", str(out))
    assert r.code == 0, r.err
    text = out.read_text()
    assert "contoso_sharedsharepointonline_30e7d" in text
    assert "#" in text  # suspicious items are commented
    r = run_cli("-c", str(out), "plan", "-e", "dev", "--detailed-exitcode")
    assert r.code == 0, r.out + r.err
    assert "No changes." in r.out


def test_lint_finds_the_mess_an_import_adopts(quickstart: Workspace) -> None:
    imported = quickstart.dir / "imported.yaml"
    assert quickstart.run("import", "-e", "dev", "-o", str(imported)).code == 0
    r = run_cli("-c", str(imported), "lint", "-e", "dev", "--json")
    assert r.code == 2, r.out + r.err
    doc = json.loads(r.out)
    by_code: dict[str, list[dict[str, str]]] = {}
    for f in doc["findings"]:
        by_code.setdefault(f["code"], []).append(f)
    # the broken Outlook connection is an error; two makers' SharePoint references are the
    # per-developer pattern; random suffixes break the naming policy
    assert any("contoso_sharedoffice365_d4c61" in f["subject"] for f in by_code["CR203"])
    assert {f["subject"] for f in by_code["CR102"]} >= {"contoso_sharedsharepointonline_30e7d",
                                                        "contoso_sharedsharepointonline_8f4b0"}
    assert doc["exit_code"] == 2

    # The clean quickstart config has fixed all of that by its bindings: no error-severity finding.
    r = quickstart.run("lint", "-e", "dev")
    assert r.code == 0, r.out + r.err


def test_lint_of_the_config_alone_right_after_import_passes(quickstart: Workspace) -> None:
    """import leaves out the bindings it cannot vouch for (docs/config.md: a reference left out keeps what it
    has live); the config alone has nothing wrong with that, so lint without -e exits 0."""
    imported = quickstart.dir / "imported.yaml"
    assert quickstart.run("import", "-e", "dev", "-o", str(imported)).code == 0
    r = run_cli("-c", str(imported), "lint", "--json")
    assert r.code == 0, r.out + r.err
    doc = json.loads(r.out)
    assert not [f for f in doc["findings"] if f["severity"] == "error"], doc["findings"]
    assert {f["code"] for f in doc["findings"]} >= {"CR102"}  # the names are still judged


def test_settings_resolves_bindings(quickstart: Workspace) -> None:
    r = quickstart.run("settings", "-e", "dev")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    by_name = {x["LogicalName"]: x for x in doc["ConnectionReferences"]}
    bound = by_name["contoso_sharedsharepointonline_8f4b0"]["ConnectionId"]
    assert bound == "7c84991c04914d13b9fa2b331a3ad4b8"
    assert by_name["contoso_Teams"]["ConnectorId"] == "/providers/Microsoft.PowerApps/apis/shared_teams"


def test_whoami_shows_identity_and_usable_bindings(quickstart: Workspace) -> None:
    r = quickstart.run("whoami", "-e", "dev")
    assert r.code == 0, r.out + r.err
    assert "svc-flows@contoso.com" in r.out
    assert "may write as the service account: yes" in r.out
    assert r.out.count("✓") == 5 and "✗" not in r.out


def _edit_data(ws: Workspace, env: str, edit: Callable[[dict[str, Any]], None]) -> None:
    path = ws.dir / f"{env}.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))


def test_missing_delegate_privilege_is_a_plan_time_error(quickstart: Workspace) -> None:
    def revoke(data: dict[str, Any]) -> None:
        for u in data["systemusers"]:
            if u.get("applicationid"):
                u["privileges"] = []

    _edit_data(quickstart, "dev", revoke)
    before = (quickstart.dir / "dev.json").read_bytes()
    r = quickstart.run("plan", "-e", "dev")
    assert r.code == 1
    assert "prvActOnBehalfOfAnotherUser" in r.err or "Delegate" in r.err
    r = quickstart.run("apply", "-e", "dev", "--auto-approve")
    assert r.code == 1
    assert (quickstart.dir / "dev.json").read_bytes() == before, "nothing may be written"
    r = quickstart.run("whoami", "-e", "dev")
    assert "may write as the service account: NO" in r.out


def test_disabled_or_unknown_service_account_is_a_plan_time_error(quickstart: Workspace) -> None:
    def disable(data: dict[str, Any]) -> None:
        for u in data["systemusers"]:
            if u["domainname"] == "svc-flows@contoso.com":
                u["isdisabled"] = True

    _edit_data(quickstart, "dev", disable)
    r = quickstart.run("plan", "-e", "dev")
    assert r.code == 1 and "svc-flows@contoso.com" in r.err and "disabled" in r.err.lower()

    quickstart.config.write_text(quickstart.config.read_text().replace(
        "service_account: svc-flows@contoso.com", "service_account: nobody@contoso.com", 1))
    r = quickstart.run("plan", "-e", "dev")
    assert r.code == 1 and "nobody@contoso.com" in r.err


def test_binding_to_a_connection_the_writer_may_not_use_names_owner_and_fix(quickstart: Workspace) -> None:
    # Bind the Teams reference to maker2's personal Teams connection, which svc-flows cannot use.
    data = quickstart.data("dev")
    maker2 = next(u for u in data["systemusers"] if u["domainname"] == "maker2@contoso.com")
    personal = next(c for c in data["connections"]
                    if c["properties"]["createdBy"]["id"] == maker2["azureactivedirectoryobjectid"]
                    and c["properties"]["apiId"].endswith("shared_teams"))
    text = quickstart.config.read_text()
    quickstart.config.write_text(text.replace("contoso_Teams: 8f70942eabcb416e8a0f9861272ee570",
                                              f"contoso_Teams: {personal['name']}", 1))
    r = quickstart.run("plan", "-e", "dev")
    assert r.code == 1
    assert personal["name"] in r.err and "maker2@contoso.com" in r.err and "CanView" in r.err


def test_an_output_file_gets_its_folder_or_a_clear_error(quickstart: Workspace) -> None:
    """``-o settings/prod.json`` in a checkout without that folder (docs/adoption.md) makes it; a path that
    cannot be written is an error naming it, never a traceback."""
    target = quickstart.dir / "settings" / "prod.json"
    r = quickstart.run("settings", "-e", "prod", "-o", str(target))
    assert r.code == 0, r.err
    assert json.loads(target.read_text())["ConnectionReferences"]
    blocked = quickstart.dir / "a-file"
    blocked.write_text("")
    r = quickstart.run("settings", "-e", "prod", "-o", str(blocked / "prod.json"))
    assert r.code == 1
    assert r.err.startswith(f"Error: cannot write {blocked / 'prod.json'}: ") and "Traceback" not in r.err


def test_settings_file_round_trips_into_config_bindings(quickstart: Workspace) -> None:
    settings = quickstart.dir / "settings.dev.json"
    assert quickstart.run("settings", "-e", "dev", "-o", str(settings)).code == 0
    doc = json.loads(settings.read_text())
    # Someone edits the settings file by hand, as pipelines do, pointing Teams at another connection.
    other = next(c["name"] for c in quickstart.data("dev")["connections"]
                 if c["properties"]["apiId"].endswith("shared_teams")
                 and c["name"] != "8f70942eabcb416e8a0f9861272ee570")
    for entry in doc["ConnectionReferences"]:
        if entry["LogicalName"] == "contoso_Teams":
            entry["ConnectionId"] = other
    settings.write_text(json.dumps(doc))
    merged = quickstart.dir / "merged.yaml"
    r = quickstart.run("import", "-e", "dev", "--from-settings", str(settings), "-o", str(merged))
    assert r.code == 0, r.err
    text = merged.read_text()
    assert f"contoso_Teams: {other}" in text
    assert "# The quickstart" in text, "the user's comments are kept"
    # the selectors that still resolve to the same connections are replaced by names or kept: either
    # way the merged config loads and names the same references
    assert run_cli("-c", str(merged), "validate").code == 0


def test_every_skipped_settings_entry_is_printed(quickstart: Workspace) -> None:
    """An empty ConnectionId (what pac solution create-settings writes) and an undeclared reference each
    get a line on stderr; the entry that binds is merged."""
    settings = quickstart.dir / "pac.json"
    settings.write_text(json.dumps({"ConnectionReferences": [
        {"LogicalName": "contoso_Teams", "ConnectionId": "",
         "ConnectorId": "/providers/Microsoft.PowerApps/apis/shared_teams"},
        {"LogicalName": "contoso_sharedoffice365_d4c61", "ConnectionId": "8ee5a024897742cc86f3aea206fe2e92"},
        {"LogicalName": "contoso_Unknown", "ConnectionId": "0123456789abcdef0123456789abcdef"},
    ]}))
    merged = quickstart.dir / "merged.yaml"
    r = quickstart.run("import", "-e", "dev", "--from-settings", str(settings), "-o", str(merged))
    assert r.code == 0, r.err
    assert re.search(r"^skipped contoso_Teams: its ConnectionId is empty in \S*pac\.json "
                     r"\(ConnectionReferences\[0\]\)", r.err, re.M), r.err
    assert re.search(r"^skipped contoso_Unknown: not declared under references", r.err, re.M), r.err
    assert re.search(r"^contoso_sharedoffice365_d4c61: .* -> 8ee5a024897742cc86f3aea206fe2e92$", r.err, re.M), r.err
    text = merged.read_text()
    assert "contoso_sharedoffice365_d4c61: 8ee5a024897742cc86f3aea206fe2e92" in text
    assert "contoso_Teams: 8f70942eabcb416e8a0f9861272ee570" in text  # the skipped entry left the binding alone


def test_bad_settings_file_names_file_and_entry(quickstart: Workspace) -> None:
    bad = quickstart.dir / "bad.json"
    bad.write_text('{"ConnectionReferences": [{"LogicalName": 5, "ConnectionId": "x"}]}')
    r = quickstart.run("import", "-e", "dev", "--from-settings", str(bad))
    assert r.code == 1
    assert "bad.json" in r.err and "LogicalName" in r.err


def test_without_management_app_connref_says_why_connections_are_missing(quickstart: Workspace) -> None:
    def not_admin(data: dict[str, Any]) -> None:
        for a in data["applications"]:
            a["management_app"] = False

    _edit_data(quickstart, "dev", not_admin)
    r = quickstart.run("plan", "-e", "dev")
    assert r.code == 1
    assert "New-PowerAppManagementApp" in r.err
    # Each problem says the list was the caller's only, and why (a plan made says it among its warnings).
    assert "because the admin list was refused (GET" in r.err and "HTTP 403" in r.err
    r = quickstart.run("whoami", "-e", "dev")
    assert r.code == 2 and "New-PowerAppManagementApp" in r.out


def test_missing_application_user_is_explained(quickstart: Workspace) -> None:
    def drop_app_user(data: dict[str, Any]) -> None:
        data["systemusers"] = [u for u in data["systemusers"] if not u.get("applicationid")]

    _edit_data(quickstart, "dev", drop_app_user)
    r = quickstart.run("plan", "-e", "dev")
    assert r.code == 1
    assert "application user" in r.err and "security role" in r.err


def test_whoami_is_honest_about_a_disabled_service_account(quickstart: Workspace) -> None:
    def disable(data: dict[str, Any]) -> None:
        for u in data["systemusers"]:
            if u["domainname"] == "svc-flows@contoso.com":
                u["isdisabled"] = True

    _edit_data(quickstart, "dev", disable)
    r = quickstart.run("whoami", "-e", "dev")
    assert r.code == 2
    assert "is disabled" in r.out
