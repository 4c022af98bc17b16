"""Each way the writer may have access to a bound connection, through plan, whoami and apply, against the
emulator (a local: environment: the real CLI, client and live reader, in process): owner, direct share,
tenant, group with membership readable, group unverifiable, no access; and granting (grant_access)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from reconciler import cli
from reconciler.emulator.factory import Sample as S
from reconciler.emulator.factory import add_connection, add_group, sample_environment

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
