"""Through the real CLI on the quickstart: a service account given in any form docs/config.md allows
resolves to the same user in every command, and plan and apply count changes the same way."""

from __future__ import annotations

import json
import re

import pytest

from e2e.e2e_support import Workspace

pytestmark = pytest.mark.emulator_only

SVC_UPN = "svc-flows@contoso.com"


def _user(ws: Workspace, env: str, upn: str) -> dict[str, str]:
    return next(u for u in ws.data(env)["systemusers"] if u["domainname"] == upn)


def _service_account_as(ws: Workspace, env: str, value: str) -> None:
    text = ws.config.read_text()
    section = text.index(f"  {env}:\n")
    at = text.index(f"service_account: {SVC_UPN}", section)
    ws.config.write_text(text[:at] + f"service_account: {value}" + text[at + len(f"service_account: {SVC_UPN}"):])


def test_service_account_given_as_object_id_plans_applies_and_whoami_like_the_upn(quickstart: Workspace) -> None:
    by_upn = quickstart.run("plan", "-e", "dev", "--detailed-exitcode")
    assert by_upn.code == 2, by_upn.err
    svc = _user(quickstart, "dev", SVC_UPN)
    _service_account_as(quickstart, "dev", svc["azureactivedirectoryobjectid"].upper())

    assert quickstart.run("validate").code == 0
    r = quickstart.run("plan", "-e", "dev", "--detailed-exitcode")
    assert r.code == 2, r.out + r.err
    assert "CR300" not in r.err and "service account" not in r.err
    assert r.out == by_upn.out  # the same writer, so the same plan
    assert f"~ owner: maker2@contoso.com -> {SVC_UPN}" in r.out

    r = quickstart.run("whoami", "-e", "dev")
    assert r.code == 0, r.out + r.err
    assert f"service account:  {SVC_UPN}" in r.out
    assert f"writes act as:    {SVC_UPN}" in r.out

    r = quickstart.run("apply", "-e", "dev", "--auto-approve")
    assert r.code == 0, r.out + r.err
    teams = quickstart.reference("dev", "contoso_Teams")
    assert teams["_ownerid_value"] == svc["systemuserid"]
    assert teams["_createdby_value"] == svc["systemuserid"]  # written as the service account
    assert quickstart.run("plan", "-e", "dev", "--detailed-exitcode").code == 0


def test_service_account_given_as_application_id_is_the_pipeline_app_itself(quickstart: Workspace) -> None:
    app = next(u for u in quickstart.data("dev")["systemusers"] if u.get("applicationid"))
    _service_account_as(quickstart, "dev", app["applicationid"])
    r = quickstart.run("whoami", "-e", "dev")
    assert "CR300" not in r.out, r.out
    assert f"writes act as:    {app['domainname']}" in r.out
    # The caller is the service account: nothing to impersonate.
    assert "may write as the service account" not in r.out


def test_add_to_solution_and_update_count_once_in_plan_and_in_apply(quickstart: Workspace) -> None:
    name = "contoso_sharedsharepointonline_8f4b0"
    path = quickstart.dir / "dev.json"
    data = json.loads(path.read_text())
    ref_id = quickstart.reference("dev", name)["connectionreferenceid"]
    data["solutioncomponents"] = [c for c in data["solutioncomponents"] if c["objectid"] != ref_id]
    path.write_text(json.dumps(data, indent=2))

    r = quickstart.run("plan", "-e", "dev")
    assert r.code == 0, r.out + r.err
    assert f"{name} will be added to solution" in r.out and f"{name} will be updated in place" in r.out
    planned = re.search(r"Plan: (\d+) to add, (\d+) to change, (\d+) to destroy\.", r.out)
    assert planned is not None

    r = quickstart.run("apply", "-e", "dev", "--auto-approve")
    assert r.code == 0, r.out + r.err
    applied = re.search(r"Apply complete! Changes: (\d+) added, (\d+) changed, (\d+) destroyed\.", r.out)
    assert applied is not None
    assert applied.groups() == planned.groups()


def test_a_plan_saved_without_the_facts_apply_needs_is_refused_with_plan_again(quickstart: Workspace) -> None:
    plan_path = quickstart.dir / "plan.json"
    assert quickstart.run("plan", "-e", "dev", "--out", str(plan_path)).code == 0
    doc = json.loads(plan_path.read_text())
    (env_plan,) = doc["plan"]["environments"]
    svc = _user(quickstart, "dev", SVC_UPN)
    assert env_plan["apply_facts"] == {"writer_object_id": svc["azureactivedirectoryobjectid"],
                                       "component_type": 10150}
    # What a plan saved by an earlier connref looks like: the same, without the facts.
    del env_plan["apply_facts"]
    plan_path.write_text(json.dumps(doc))
    before = (quickstart.dir / "dev.json").read_bytes()
    r = quickstart.run("apply", str(plan_path))
    assert r.code == 1
    assert "earlier connref" in r.err and "connref plan --out FILE" in r.err
    assert (quickstart.dir / "dev.json").read_bytes() == before, "nothing may be written"
    assert quickstart.run("show", str(plan_path)).code == 0  # still readable for a reviewer
