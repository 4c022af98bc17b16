"""The CLI against two environments served over loopback https (a test CA), signing in through MSAL
with a client secret at the emulator's token endpoint, as it would against a tenant. Request counts
come from the emulator's request log.
"""

from __future__ import annotations

import pytest

from e2e.e2e_support import Served
from reconciler.emulator import jwt

pytestmark = pytest.mark.emulator_only


def _writes(served: Served, env: str) -> int:
    return sum(1 for e in served.apps[env].log if e.is_write and "/oauth2/" not in e.path)


def test_multi_environment_plan_apply_replan(served: Served) -> None:
    r = served.run("plan", "--detailed-exitcode")
    assert r.code == 2, r.out + r.err
    assert "Environment dev" in r.out and "Environment prod" in r.out
    assert _writes(served, "dev") == 0 and _writes(served, "prod") == 0, "plan wrote something"

    r = served.run("apply", "--auto-approve")
    assert r.code == 0, r.out + r.err
    for env in ("dev", "prod"):
        # Reads batched before the plan (what uses each reference rebound) are not writes.
        batches = [e for e in served.apps[env].log.matching("POST", "*/$batch") if e.is_write]
        assert len(batches) == 1, f"{env}: all changes go in one $batch"
        assert batches[0].status == 200
        # the batch acted as the service account (impersonation), and every row it wrote shows it
        svc = next(u for u in served.apps[env].store.data["systemusers"]
                   if u["domainname"] == "svc-flows@contoso.com")
        assert batches[0].effective_user_id == svc["systemuserid"]
        assert batches[0].caller_object_id != svc["azureactivedirectoryobjectid"]
        assert all(p.status < 300 for p in batches[0].parts)

    before = {env: len(served.apps[env].log) for env in ("dev", "prod")}
    r = served.run("plan", "--detailed-exitcode")
    assert r.code == 0, r.out + r.err
    assert "No changes." in r.out
    r = served.run("apply", "--auto-approve")
    assert r.code == 0
    for env in ("dev", "prod"):
        new = served.apps[env].log[before[env]:]
        assert not [e for e in new if e.is_write and "/oauth2/" not in e.path], f"{env}: a second apply wrote"


def test_access_token_method_with_a_token_per_api(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    store = served.apps["dev"].store
    app = next(a for a in store.data["applications"] if a.get("client_secret_sha256"))
    app["management_app"] = True  # registered: the admin routes answer it
    env = store.data["environment"]
    base = served.servers["dev"].base_url
    mint = {"tenant_id": env["tenant_id"], "object_id": app["object_id"], "app_id": app["client_id"]}
    key = store.data["signing_key_pem"]
    monkeypatch.setenv("CONNREF_DV_TOKEN", jwt.mint(key, audience=base, **mint))
    monkeypatch.setenv("CONNREF_PP_TOKEN", jwt.mint(key, audience="https://api.powerplatform.com", **mint))
    monkeypatch.setenv("CONNREF_PA_TOKEN", jwt.mint(key, audience="https://service.powerapps.com", **mint))
    text = served.config.read_text()
    start = text.index("  demo:")
    text = text[:start] + ("  demo:\n    method: access_token\n    access_token_env: CONNREF_DV_TOKEN\n"
                           "    powerplatform_access_token_env: CONNREF_PP_TOKEN\n"
                           "    powerapps_access_token_env: CONNREF_PA_TOKEN\n")
    served.config.write_text(text)
    log = served.apps["dev"].log
    log.clear()
    r = served.run("plan", "-e", "dev", "--detailed-exitcode")
    assert r.code == 2, r.out + r.err
    assert "+ contoso_Teams" in r.out
    assert "admin list was refused" not in r.err
    # Every connection listed in the admin scope, with the admin API's own token.
    admin = log.matching("GET", "/providers/Microsoft.PowerApps/scopes/admin/environments/*/connections")
    assert [e.status for e in admin] == [200]
    assert not log.matching("GET", "/connectivity/connections")

    # Without the admin API's token: the caller's list, and the plan says why and what it may hide.
    served.config.write_text(text.replace("    powerapps_access_token_env: CONNREF_PA_TOKEN\n", ""))
    r = served.run("plan", "-e", "dev")
    assert "set powerapps_access_token_env" in r.err and "hidden" in r.err

    # Only the Dataverse token: every connections route is refused, and the error names each refusal.
    served.config.write_text(text.replace("    powerapps_access_token_env: CONNREF_PA_TOKEN\n", "")
                             .replace("    powerplatform_access_token_env: CONNREF_PP_TOKEN\n", ""))
    r = served.run("plan", "-e", "dev")
    assert r.code == 1
    assert "every connections route was refused" in r.err
    assert "powerapps_access_token_env" in r.err and "powerplatform_access_token_env" in r.err
    assert "New-PowerAppManagementApp" in r.err
    assert "eyJ" not in r.err
