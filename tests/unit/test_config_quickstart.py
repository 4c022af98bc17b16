"""The quickstart example: its config is valid, its data is what the generator makes, the data is
realistic and messy in the documented ways, and the clean config fits it (every binding resolves to
a Connected connection of the right connector owned by the service account; the first plan against
dev has a create, a rename and a rebind)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from reconciler.config.loader import load_config
from reconciler.domain.model import Config, Selector, connector_name

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"
GUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
CONN_NAME_RE = re.compile(r"[0-9a-f]{32}|shared-[a-z0-9]{1,13}-" + GUID_RE.pattern)
SUFFIX_RE = re.compile(r"contoso_shared[a-z0-9]+_[0-9a-f]{5}")
TOP_KEYS = {
    "format", "environment", "settings", "signing_key_pem", "applications", "systemusers", "solutions",
    "connectionreferences", "solutioncomponents", "workflows", "connections", "next_versionnumber",
    "canvasapps", "bots", "asyncoperations",
}  # fmt: skip
ENVS = ("dev", "test", "prod")


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(str(QUICKSTART / "connref.yaml"))


def data(env: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((QUICKSTART / f"{env}.json").read_text(encoding="utf-8"))
    return loaded


def generator() -> ModuleType:
    from reconciler.emulator import quickstart

    return quickstart


def owner_upn(conn: dict[str, Any]) -> str:
    return str(conn["properties"]["createdBy"]["userPrincipalName"])


def resolve(d: dict[str, Any], connector: str, binding: str | Selector) -> list[dict[str, Any]]:
    """What a binding matches in the data (by name, or by owner and display name for the connector)."""
    conns = d["connections"]
    if isinstance(binding, str):
        return [c for c in conns if c["name"] == binding]
    return [
        c
        for c in conns
        if connector_name(c["properties"]["apiId"]) == connector_name(connector)
        and owner_upn(c).lower() == binding.owner.lower()
        and (binding.display_name is None or c["properties"]["displayName"] == binding.display_name)
    ]


def test_config_is_valid_and_uses_both_binding_forms(config: Config) -> None:
    assert config.solution == "ContosoFlows"
    assert set(config.environments) == set(ENVS)
    for env in config.environments.values():
        assert env.is_local and env.local_path == str(QUICKSTART / f"{env.name}.json")
        assert env.service_account == "svc-flows@contoso.com"
        assert env.auth == "demo"
    assert any(isinstance(b, Selector) for b in config.environments["dev"].bindings.values())
    assert all(isinstance(b, str) for b in config.environments["prod"].bindings.values())
    demo = config.auth["demo"]
    assert demo.method == "client_secret"
    assert demo.options["client_secret_file"] == str(QUICKSTART / ".demo-secret")


def test_data_is_what_the_generator_makes() -> None:
    files = generator().build_all(QUICKSTART)
    assert set(files) == {f"{e}.json" for e in ENVS}
    for name, text in files.items():
        assert (QUICKSTART / name).read_text(encoding="utf-8") == text, "run examples/quickstart/make_data.py"


@pytest.mark.parametrize("env", ENVS)
def test_data_follows_the_documented_format(env: str) -> None:
    d = data(env)
    assert set(d) == TOP_KEYS
    assert d["format"] == "connref-emulator/1"
    assert d["environment"]["name"] == env
    assert d["signing_key_pem"].startswith("-----BEGIN PRIVATE KEY-----")
    ids = [d["environment"][k] for k in ("environment_id", "tenant_id", "organization_id", "business_unit_id")]
    ids += [u["systemuserid"] for u in d["systemusers"]] + [u["azureactivedirectoryobjectid"] for u in d["systemusers"]]
    ids += [r["connectionreferenceid"] for r in d["connectionreferences"]] + [w["workflowid"] for w in d["workflows"]]
    ids += [c["solutioncomponentid"] for c in d["solutioncomponents"]] + [s["solutionid"] for s in d["solutions"]]
    assert all(GUID_RE.fullmatch(i) for i in ids), [i for i in ids if not GUID_RE.fullmatch(i)]
    versions = [r["versionnumber"] for r in d["connectionreferences"] + d["workflows"]]
    assert len(set(versions)) == len(versions) and max(versions) < d["next_versionnumber"]
    connector_ids = {
        "/providers/Microsoft.PowerApps/apis/" + c
        for c in (
            "shared_sharepointonline",
            "shared_office365",
            "shared_commondataserviceforapps",
            "shared_teams",
        )
    }
    for conn in d["connections"]:
        assert CONN_NAME_RE.fullmatch(conn["name"]), conn["name"]
        props = conn["properties"]
        assert props["apiId"] in connector_ids
        assert conn["id"] == f"{props['apiId']}/connections/{conn['name']}"
        assert props["environment"]["name"] == d["environment"]["environment_id"]
        owners = [p for p in props["permissions"] if p["properties"]["roleName"] == "Owner"]
        assert [p["properties"]["principal"]["id"] for p in owners] == [props["createdBy"]["id"]]
    users_by_oid = {u["azureactivedirectoryobjectid"]: u for u in d["systemusers"]}
    for conn in d["connections"]:
        assert users_by_oid[conn["properties"]["createdBy"]["id"]]["domainname"] == owner_upn(conn)
    comp_type = d["environment"]["connectionreference_componenttype"]
    in_solution = {c["objectid"] for c in d["solutioncomponents"] if c["componenttype"] == comp_type}
    names = {c["name"] for c in d["connections"]}
    outside = []
    for ref in d["connectionreferences"]:
        assert ref["connectorid"] in connector_ids
        assert ref["connectionid"] is None or ref["connectionid"] in names
        if ref["connectionreferenceid"] not in in_solution:
            outside.append(ref["connectionreferencelogicalname"])
    # Only the maker's unbound Teams reference lives outside the solution.
    assert outside == (["contoso_sharedteams_c93f2"] if env == "dev" else [])
    logical = {r["connectionreferencelogicalname"] for r in d["connectionreferences"]}
    for flow in d["workflows"]:
        assert flow["category"] == 5
        refs = json.loads(flow["clientdata"])["properties"]["connectionReferences"]
        for key, entry in refs.items():
            assert entry["connection"]["connectionReferenceLogicalName"] in logical
            assert re.fullmatch(re.escape(entry["api"]["name"]) + r"(-\d+)?", key)


def test_the_application_and_its_secret() -> None:
    secret = (QUICKSTART / ".demo-secret").read_text(encoding="utf-8").strip()
    for env in ENVS:
        d = data(env)
        (app,) = d["applications"]
        assert app["display_name"] == "connref pipeline" and app["management_app"] is True
        assert app["client_secret_sha256"] == [hashlib.sha256(secret.encode()).hexdigest()]
        assert secret not in json.dumps(d)
        (app_user,) = [u for u in d["systemusers"] if u["applicationid"]]
        assert app_user["applicationid"] == app["client_id"]
        assert app_user["azureactivedirectoryobjectid"] == app["object_id"]
        assert app_user["privileges"] == ["prvActOnBehalfOfAnotherUser"]


def test_auth_profile_matches_the_tenant_and_app(config: Config) -> None:
    demo = config.auth["demo"]
    for env in ENVS:
        d = data(env)
        assert demo.tenant_id == d["environment"]["tenant_id"]
        assert demo.client_id == d["applications"][0]["client_id"]


def test_dev_is_messy_the_way_the_field_describes() -> None:
    d = data("dev")
    (solution,) = d["solutions"]
    assert solution["uniquename"] == "ContosoFlows" and solution["ismanaged"] is False
    assert solution["publisher_prefix"] == "contoso"
    refs = {r["connectionreferencelogicalname"]: r for r in d["connectionreferences"]}
    conns = {c["name"]: c for c in d["connections"]}
    users = {u["systemuserid"]: u["domainname"] for u in d["systemusers"]}
    sharepoint = [r for r in refs.values() if r["connectorid"].endswith("/shared_sharepointonline")]
    # Two makers, each with their own SharePoint reference with a random five-hex suffix.
    assert len(sharepoint) == 2 and all(SUFFIX_RE.fullmatch(r["connectionreferencelogicalname"]) for r in sharepoint)
    assert {users[r["_ownerid_value"]] for r in sharepoint} == {"maker1@contoso.com", "maker2@contoso.com"}
    assert {r["connectionreferencedisplayname"] for r in sharepoint} == {
        "SharePoint Solution1-30e7d",
        "SharePoint Solution1-8f4b0",
    }
    # One reference unbound, one bound to a broken connection.
    assert [r for r in refs.values() if r["connectionid"] is None]
    broken = [
        r
        for r in refs.values()
        if r["connectionid"] and conns[r["connectionid"]]["properties"]["statuses"][0]["status"] == "Error"
    ]
    assert len(broken) == 1
    # Connections owned by makers and by the service account; one legacy name.
    assert {owner_upn(c) for c in conns.values()} == {
        "maker1@contoso.com",
        "maker2@contoso.com",
        "svc-flows@contoso.com",
    }
    assert any(name.startswith("shared-") for name in conns)
    # Flows use different references for the same connector (shared_x and shared_x-1 in one flow).
    used: dict[str, set[str]] = {}
    for flow in d["workflows"]:
        for key, entry in json.loads(flow["clientdata"])["properties"]["connectionReferences"].items():
            used.setdefault(entry["api"]["name"], set()).add(entry["connection"]["connectionReferenceLogicalName"])
            if key.endswith("-1"):
                assert key == "shared_sharepointonline-1"
    assert len(used["shared_sharepointonline"]) == 2


def test_test_is_what_a_managed_import_leaves(config: Config) -> None:
    """The pipeline imported the solution managed (docs/dataverse.md §2.6): every declared reference is in it,
    managed, unbound and owned by the importing application's user; the flows are managed and off, one of
    them runs a child flow (docs/dataverse.md §5.5); a canvas app uses a reference."""
    d = data("test")
    (solution,) = d["solutions"]
    assert solution["uniquename"] == config.solution and solution["ismanaged"] is True
    app_user = next(u for u in d["systemusers"] if u["applicationid"])
    refs = {r["connectionreferencelogicalname"]: r for r in d["connectionreferences"]}
    assert set(refs) == set(config.references)
    for name, row in refs.items():
        assert row["ismanaged"] is True and row["connectionid"] is None
        assert row["_ownerid_value"] == app_user["systemuserid"]
        assert row["connectionreferencedisplayname"] == config.references[name].display_name
    flows = {w["name"]: w for w in d["workflows"]}
    assert all(w["ismanaged"] and w["statecode"] == 0 for w in flows.values())
    children = {name: [a["inputs"]["host"]["workflowReferenceName"]
                       for a in json.loads(w["clientdata"])["properties"]["definition"]["actions"].values()
                       if a["type"] == "Workflow"] for name, w in flows.items()}
    assert children["Invoice approval"] == [flows["Post to finance channel"]["workflowid"]]
    assert d["settings"]["rebind_propagation_seconds"] > 0  # the asynchronous update takes a moment here
    (app,) = d["canvasapps"]
    assert app["connection_references"] == ["contoso_sharedsharepointonline_30e7d"]


@pytest.mark.parametrize("env", ENVS)
def test_every_binding_resolves_to_a_usable_service_account_connection(config: Config, env: str) -> None:
    d = data(env)
    envc = config.environments[env]
    assert set(envc.bindings) == set(config.references)
    for logical, binding in envc.bindings.items():
        ref = config.references[logical]
        matches = resolve(d, ref.connector, binding)
        assert len(matches) == 1, (env, logical, binding)
        conn = matches[0]["properties"]
        assert connector_name(conn["apiId"]) == connector_name(ref.connector)
        assert conn["statuses"][0]["status"] == "Connected"
        assert owner_upn(matches[0]) == envc.service_account


def test_first_dev_plan_needs_a_create_a_rename_and_a_rebind(config: Config) -> None:
    d = data("dev")
    live = {r["connectionreferencelogicalname"].lower(): r for r in d["connectionreferences"]}
    conns = {c["name"]: c for c in d["connections"]}
    envc = config.environments["dev"]
    creates = [n for n in config.references if n.lower() not in live]
    renames = [
        n
        for n, ref in config.references.items()
        if n.lower() in live and live[n.lower()]["connectionreferencedisplayname"] != ref.display_name
    ]
    rebinds = []
    for n, ref in config.references.items():
        row = live.get(n.lower())
        if row and row["connectionid"]:
            target = resolve(d, ref.connector, envc.bindings[n])[0]["name"]
            if target != row["connectionid"] and owner_upn(conns[row["connectionid"]]).startswith("maker"):
                rebinds.append(n)
    assert creates and renames and rebinds
    # The unbound maker reference (outside the solution) is left alone: unbound is allowed.
    assert live["contoso_sharedteams_c93f2"]["connectionid"] is None
    assert "contoso_sharedteams_c93f2" not in config.references
