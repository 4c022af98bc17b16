"""Each way the writer may have access to a bound connection, through plan, whoami and apply, against the
emulator (a local: environment: the real CLI, client and live reader, in process): owner, direct share,
tenant, group with membership readable, group unverifiable, no access; and granting (grant_access)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from reconciler import cli
from reconciler.emulator import jwt
from reconciler.emulator.app import EmulatorApp
from reconciler.emulator.factory import Sample as S
from reconciler.emulator.factory import add_connection, add_group, sample_environment
from reconciler.emulator.store import EnvironmentStore

SP = "shared_sharepointonline"
PATHS = ("owner", "direct", "tenant", "group", "none")


def _world(tmp_path: Path, *, graph: bool, grant: bool = False, management_app: bool = False) -> dict[str, str]:
    """A data file whose writer (the pipeline's application user) reaches one SharePoint connection per
    access path, and a config binding one reference to each."""
    data: dict[str, Any] = sample_environment()
    users = {u["azureactivedirectoryobjectid"]: u for u in data["systemusers"]}
    app_user, svc = users[S.APP_OBJECT_ID], users[S.SVC_OBJECT_ID]
    for a in data["applications"]:
        if a["client_id"] == S.APP_CLIENT_ID:
            a["graph_permissions"] = ["GroupMember.Read.All"] if graph else []
            a["management_app"] = management_app
    group = add_group(data, "Pipelines", [add_group(data, "Inner", [S.APP_OBJECT_ID])["id"]])
    conns = {
        "owner": add_connection(data, SP, owner=app_user, display_name="SP owner"),
        "direct": add_connection(data, SP, owner=svc, display_name="SP direct",
                                 shared_with=[(S.APP_OBJECT_ID, "CanView", "ServicePrincipal")]),
        "tenant": add_connection(data, SP, owner=svc, display_name="SP tenant",
                                 shared_with=[(S.TENANT_ID, "CanView", "Tenant")]),
        "group": add_connection(data, SP, owner=svc, display_name="SP group",
                                shared_with=[(group["id"], "CanEdit", "Group")]),
        "none": add_connection(data, SP, owner=svc, display_name="SP none"),
    }
    (tmp_path / "dev.json").write_text(json.dumps(data))
    refs = "".join(f"  contoso_{p}:\n    connector: {SP}\n    display_name: SharePoint {p}\n" for p in PATHS)
    binds = "".join(
        f"      contoso_{p}: " + (f"{{name: {c['name']}, grant_access: true}}" if grant and p == "none" else c["name"])
        + "\n" for p, c in conns.items())
    (tmp_path / "connref.yaml").write_text(
        f"version: 1\nsolution: {S.SOLUTION}\nreferences:\n{refs}environments:\n  dev:\n    url: local:dev.json\n"
        f"    bindings:\n{binds}")
    return {p: c["name"] for p, c in conns.items()}


def mint_for(data: dict[str, Any], object_id: str, audience: str) -> str:
    """A token of ``data``'s tenant for ``object_id`` (a signed-in person)."""
    return jwt.mint(data["signing_key_pem"], tenant_id=S.TENANT_ID, object_id=object_id, audience=audience)


def _run(tmp_path: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.run(["-c", str(tmp_path / "connref.yaml"), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _whoami_lines(out: str) -> dict[str, str]:
    return {p: next(line for line in out.splitlines() if f"contoso_{p}:" in line) for p in PATHS}


def test_each_access_path_through_whoami_and_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _world(tmp_path, graph=True, management_app=True)
    code, out, err = _run(tmp_path, capsys, "whoami", "-e", "dev")
    lines = _whoami_lines(out)
    assert "access: owner" in lines["owner"]
    assert "access: direct share (CanView)" in lines["direct"]
    assert "access: tenant (CanView)" in lines["tenant"]
    assert "access: group Pipelines" in lines["group"] and "(CanEdit)" in lines["group"]
    assert "✗" in lines["none"] and "CR210" in lines["none"]
    # The advice is one the platform allows: the writer is a service principal's user, so share with it.
    assert "share it with" in lines["none"] and "grant_access" in lines["none"]
    code, out, err = _run(tmp_path, capsys, "plan", "-e", "dev")
    assert code == 1
    assert "contoso_none" in err and "CR210" not in out
    assert all(f"contoso_{p}:" not in err for p in ("owner", "direct", "tenant", "group"))


def test_a_group_share_without_graph_permission_is_allowed_with_a_warning(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _world(tmp_path, graph=False)
    code, out, err = _run(tmp_path, capsys, "whoami", "-e", "dev")
    group = _whoami_lines(out)["group"]
    assert "membership not verified" in group and "Authorization_RequestDenied" in group
    assert "CR213" in out and "GroupMember.Read.All" in out
    # Plan binds it (with the warning), and refuses only the connection with no access.
    (tmp_path / "connref.yaml").write_text((tmp_path / "connref.yaml").read_text().replace(
        "  contoso_none:\n    connector", "  contoso_zz:\n    connector").replace("      contoso_none:", "#"))
    code, out, err = _run(tmp_path, capsys, "plan", "-e", "dev")
    assert code == 0, err
    assert "could not check that" in out and "GroupMember.Read.All" in out
    code, out, err = _run(tmp_path, capsys, "apply", "-e", "dev", "--auto-approve")
    assert code == 0, err


def test_grant_access_plans_a_share_applies_it_and_converges(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    names = _world(tmp_path, graph=True, grant=True, management_app=True)
    code, out, err = _run(tmp_path, capsys, "plan", "-e", "dev")
    assert code == 0, err
    share = [line for line in out.splitlines() if line.strip().startswith("+ share")]
    assert len(share) == 1 and names["none"] in share[0] and "(CanView)" in share[0], out
    code, out, err = _run(tmp_path, capsys, "apply", "-e", "dev", "--auto-approve")
    assert code == 0, err
    data = json.loads((tmp_path / "dev.json").read_text())
    conn = next(c for c in data["connections"] if c["name"] == names["none"])
    assert any(p["properties"]["principal"]["id"] == S.APP_OBJECT_ID for p in conn["properties"]["permissions"])
    code, out, err = _run(tmp_path, capsys, "plan", "-e", "dev")
    assert code == 0 and "No changes." in out, out + err
    code, out, err = _run(tmp_path, capsys, "whoami", "-e", "dev")
    assert "access: direct share (CanView)" in _whoami_lines(out)["none"]


def test_granting_without_an_admin_fails_with_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _world(tmp_path, graph=True, grant=True, management_app=False)
    code, out, err = _run(tmp_path, capsys, "apply", "-e", "dev", "--auto-approve")
    assert code == 1
    assert "New-PowerAppManagementApp" in out + err


def _without_none(tmp_path: Path) -> None:
    """The config without the reference bound to the connection the writer has no access to."""
    cfg = tmp_path / "connref.yaml"
    cfg.write_text(cfg.read_text().replace("  contoso_none:\n    connector", "  contoso_zz:\n    connector")
                   .replace("      contoso_none:", "#"))


def test_each_allowed_access_path_applies_and_converges(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    names = _world(tmp_path, graph=True, management_app=True)
    _without_none(tmp_path)
    code, out, err = _run(tmp_path, capsys, "apply", "-e", "dev", "--auto-approve")
    assert code == 0, out + err
    data = json.loads((tmp_path / "dev.json").read_text())
    bound = {r["connectionreferencelogicalname"]: r.get("connectionid") for r in data["connectionreferences"]}
    for path in ("owner", "direct", "tenant", "group"):
        assert bound[f"contoso_{path}"] == names[path], path
    code, out, err = _run(tmp_path, capsys, "plan", "-e", "dev")
    assert code == 0 and "No changes." in out, out + err


def test_no_access_is_refused_by_apply_before_anything_is_written(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    _world(tmp_path, graph=True, management_app=True)
    before = json.loads((tmp_path / "dev.json").read_text())["connectionreferences"]
    code, _out, err = _run(tmp_path, capsys, "apply", "-e", "dev", "--auto-approve")
    assert code == 1
    assert "contoso_none" in err and "not shared with" in err
    assert json.loads((tmp_path / "dev.json").read_text())["connectionreferences"] == before


def test_following_the_advice_lets_the_binding_through(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The advice for the pipeline's application user (share it, CanView) is one the emulator's sharing rules
    accept, and once followed the plan binds the connection (docs/dataverse.md §4.9)."""
    names = _world(tmp_path, graph=True, management_app=True)
    data = json.loads((tmp_path / "dev.json").read_text())
    conn = next(c for c in data["connections"] if c["name"] == names["none"])
    owner_token = mint_for(data, conn["properties"]["createdBy"]["id"], "https://api.powerplatform.com")
    app = EmulatorApp(EnvironmentStore.from_dict(data))
    body = {"put": [{"properties": {"roleName": "CanView",
                                    "principal": {"id": S.APP_OBJECT_ID, "type": "ServicePrincipal"}}}],
            "delete": []}
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="https://emulator.local") as http:
        r = http.post(f"/connectivity/connectors/{SP}/connections/{names['none']}/modifyPermissions",
                      params={"api-version": "1"}, json=body, headers={"Authorization": f"Bearer {owner_token}"})
        assert r.status_code == 200, r.text
        # The advice never given: sharing with a person directly is refused (explicit_share_targets).
        person = {"put": [{"properties": {"roleName": "CanView", "principal": {"id": S.MAKER_OBJECT_ID,
                                                                               "type": "User"}}}], "delete": []}
        r = http.post(f"/connectivity/connectors/{SP}/connections/{names['none']}/modifyPermissions",
                      params={"api-version": "1"}, json=person, headers={"Authorization": f"Bearer {owner_token}"})
        assert r.status_code == 400 and "service principal" in r.text
    (tmp_path / "dev.json").write_text(json.dumps(app.store.data))
    code, out, err = _run(tmp_path, capsys, "whoami", "-e", "dev")
    assert "access: direct share (CanView)" in _whoami_lines(out)["none"]
    code, out, err = _run(tmp_path, capsys, "plan", "-e", "dev")
    assert code == 0, err


def test_drift_reports_a_share_removed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    names = _world(tmp_path, graph=True, grant=True, management_app=True)
    code, out, err = _run(tmp_path, capsys, "apply", "-e", "dev", "--auto-approve")
    assert code == 0, err
    code, out, err = _run(tmp_path, capsys, "drift", "-e", "dev")
    assert "no longer shared" not in out
    data = json.loads((tmp_path / "dev.json").read_text())
    conn = next(c for c in data["connections"] if c["name"] == names["none"])
    conn["properties"]["permissions"] = [p for p in conn["properties"]["permissions"]
                                         if p["properties"]["principal"]["id"] != S.APP_OBJECT_ID]
    (tmp_path / "dev.json").write_text(json.dumps(data))
    code, out, err = _run(tmp_path, capsys, "drift", "-e", "dev")
    assert "no longer shared" in out and names["none"] in out, out + err
