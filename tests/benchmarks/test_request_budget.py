"""Request budgets, asserted by counting the emulator's request log (never wall-clock time):

- planning one environment takes the same number of requests with 3 references as with 3,000;
- applying N changes takes ceil(N/1000) ``$batch`` requests (plus the reads);
- planning 20 environments of one tenant takes each environment's own four requests (two of them read
  ``$batch``es) and one token request per (authority, client, scope): 20 Dataverse scopes, the Power Platform
  API's and the Power Apps admin API's, after one discovery of the tenant (22 token requests); a binding adds
  one read per environment, the bound connection's shares (as a management app: 2 Dataverse requests, the
  admin list and that one share read; 21 token requests, the Power Platform API's never being needed).

Wall time, CPU and round trips are measured by ``make bench`` (benchmarks/bench.py), not here.
"""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from builders import EmulatorTokens, sample_config

from reconciler import cli
from reconciler.api.live import read_environment, read_reference_rows
from reconciler.api.session import open_environment
from reconciler.apply.applier import FLOWS_PER_SWITCH_BATCH, apply_environment
from reconciler.domain.model import Config, DesiredReference, connector_id
from reconciler.emulator import factory
from reconciler.emulator.app import EmulatorApp
from reconciler.emulator.factory import Sample
from reconciler.emulator.server import serve
from reconciler.emulator.store import EnvironmentStore
from reconciler.emulator.tls import make_test_ca
from reconciler.plan.planner import plan_environment

pytestmark = pytest.mark.emulator_only


def add_bulk(emulator: Any, start: int, count: int, display: str = "Bulk {i}") -> None:
    data = emulator.store.data
    svc = emulator.store.user(Sample.SVC_USER_ID)
    sol = emulator.store.solution(Sample.SOLUTION)
    with emulator.store.lock:
        for i in range(start, start + count):
            factory.add_reference(data, f"contoso_Bulk{i:04d}", Sample.SP, owner=svc,
                                  display_name=display.format(i=i), connection=Sample.CONN_SP_SVC,
                                  solution=sol)


def config_for(emulator: Any, count: int, display: str = "Bulk {i}") -> Config:
    refs = {
        f"contoso_Bulk{i:04d}": DesiredReference(f"contoso_Bulk{i:04d}", connector_id(Sample.SP),
                                                 display.format(i=i))
        for i in range(count)
    }
    return sample_config(emulator.url, refs)


def plan_requests(emulator: Any, config: Config) -> tuple[int, int]:
    emulator.app.log.clear()
    with open_environment(config, "dev", token_provider=EmulatorTokens(emulator),
                          http=httpx.Client(timeout=30)) as s:
        live = read_environment(s, config, "dev")
        env_plan = plan_environment(config, config.environments["dev"], live)
    return len(emulator.app.log), len(env_plan.ops)


def test_planning_3_or_3000_references_takes_the_same_requests(emulator: Any) -> None:
    add_bulk(emulator, 0, 3)
    small, small_ops = plan_requests(emulator, config_for(emulator, 3))
    add_bulk(emulator, 3, 2997)
    large, large_ops = plan_requests(emulator, config_for(emulator, 3000))
    assert small_ops == large_ops == 0  # in sync: nothing to do either way
    assert large == small
    # A fixed four: round 1 the connections (admin list 403, then the caller's list) and one read $batch of
    # the references, the flows, the flows' solution memberships and every solution's name (since flows
    # carry their solutions, for lint CR208; not one per flow), the solution, the component type and
    # WhoAmI; round 2 one read $batch of the solution's members, the impersonation privilege and the
    # users. 3,000 references fit in the batch's first page (5,000 a page).
    assert small == 4


def test_applying_2500_changes_takes_3_batches(emulator: Any) -> None:
    n = 2500
    add_bulk(emulator, 0, n, display="Old {i}")
    config = config_for(emulator, n, display="New {i}")
    with open_environment(config, "dev", token_provider=EmulatorTokens(emulator),
                          http=httpx.Client(timeout=60)) as s:
        live = read_environment(s, config, "dev")
        env_plan = plan_environment(config, config.environments["dev"], live)
        assert len(env_plan.ops) == n
        emulator.app.log.clear()
        seen: list[int] = []
        result = apply_environment(s.dataverse, partial(read_reference_rows, s.reader),
            env_plan, progress=lambda p: seen.append(p.done))
    batches = [e for e in emulator.app.log if e.path.endswith("/$batch")]
    assert len(batches) == math.ceil(n / 1000) == 3
    assert [e.batch_count for e in batches] == [1000, 1000, 500]
    assert len(emulator.app.log) == len(batches)  # nothing read again: the plan carried ids and ETags
    assert seen == [1000, 2000, 2500]
    assert len(result.written) == n
    # Idempotent: planning again finds nothing to do.
    _, ops = plan_requests(emulator, config)
    assert ops == 0


def served_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int,
                  display: str = "SharePoint ContosoConnections",
                  bind: str | None = None, management_app: bool = False) -> tuple[Path, list[EmulatorApp], Any]:
    """``count`` sample environments of one tenant served over loopback https (MSAL talks to the first
    one's token endpoint for real) and a config declaring the sample's SharePoint reference."""
    tls = make_test_ca(str(tmp_path / "tls"))
    monkeypatch.setenv("SSL_CERT_FILE", tls.ca_pem)
    monkeypatch.setenv("CONNREF_BENCH_SECRET", Sample.APP_SECRET)
    first = factory.sample_environment()
    datas = [first] + [factory.sample_environment(signing_key_pem=first["signing_key_pem"])
                       for _ in range(count - 1)]  # one tenant: every environment trusts the same signing key
    for data in datas:
        for application in data["applications"]:
            application["management_app"] = management_app
    apps = [EmulatorApp(EnvironmentStore.from_dict(data)) for data in datas]
    servers = serve(apps, ssl_context=tls.server_context())
    lines = ["version: 1", f"solution: {Sample.SOLUTION}", "references:",
             f"  {Sample.REF_SP_NAME}:", f"    connector: {Sample.SP}", f"    display_name: {display}",
             "environments:"]
    for i, server in enumerate(servers):
        lines += [f"  env{i:02d}:", f"    url: {server.url}", f"    connections_url: {server.url}",
                  f"    environment_id: {Sample.ENVIRONMENT_ID}", "    auth: pipeline",
                  f"    service_account: {Sample.SVC_UPN}"]
        if bind:
            lines += ["    bindings:", f"      {Sample.REF_SP_NAME}: {bind}"]
    lines += ["auth:", "  pipeline:", "    method: client_secret", f"    tenant_id: {Sample.TENANT_ID}",
              f"    client_id: {Sample.APP_CLIENT_ID}", "    client_secret_env: CONNREF_BENCH_SECRET",
              f"    authority_host: {servers[0].url}"]
    config = tmp_path / "connref.yaml"
    config.write_text("\n".join(lines) + "\n")
    return config, apps, servers


def test_twenty_environments_take_one_token_per_scope(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    config, apps, servers = served_config(tmp_path, monkeypatch, 20)
    try:
        assert cli.run(["-c", str(config), "plan"]) == 0, capsys.readouterr().err
    finally:
        servers.shutdown()
    assert capsys.readouterr().out.count("  No changes.\n") == 20
    tokens = apps[0].log.matching("POST", "*/oauth2/v2.0/token")
    # 20 environments' Dataverse scopes + the Power Platform API's + the Power Apps admin API's, each once
    assert len(tokens) == 22
    assert apps[0].log.count_requests("GET", "*/.well-known/openid-configuration") == 1
    assert all(app.log.count_requests(path="/api/data/*") + app.log.count_requests(path="/connectivity/*")
               + app.log.count_requests(path="/providers/*") == 4 for app in apps)  # see the 3-or-3,000 test
    assert all(e.status == 200 for app in apps for e in app.log.matching(path="/api/data/*"))


def test_twenty_environments_read_the_shares_of_bound_connections_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A binding costs one more request per environment: the bound connection's shares, through the admin
    permissions route (docs/dataverse.md §4.8); never one per connection listed. No group share, so no
    Graph request and no Graph token."""
    config, apps, servers = served_config(tmp_path, monkeypatch, 20, bind=Sample.CONN_SP_SVC, management_app=True)
    try:
        assert cli.run(["-c", str(config), "plan"]) == 0, capsys.readouterr().err
    finally:
        servers.shutdown()
    assert capsys.readouterr().out.count("  No changes.\n") == 20
    # 20 Dataverse scopes + the Power Apps admin API's, each once: a management app lists and reads shares
    # through the admin routes only, so the Power Platform API's token is never asked for.
    assert len(apps[0].log.matching("POST", "*/oauth2/v2.0/token")) == 21
    for app in apps:
        shares = app.log.matching("GET", "/providers/Microsoft.PowerApps/scopes/admin/environments/*/apis/*/"
                                  "connections/*/permissions")
        assert [e.status for e in shares] == [200]
        assert Sample.CONN_SP_SVC in shares[0].path
        # 2 Dataverse requests (two read batches), the admin list and the bound connection's shares
        assert app.log.count_requests(path="/api/data/*") == 2
        assert app.log.count_requests(path="/connectivity/*") == 0
        assert app.log.count_requests(path="/providers/*") == 2
        assert app.log.count_requests(path="/v1.0/*") == 0


def test_apply_reads_back_nothing_after_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The written rows come back inside the $batch (return=representation): the state records their
    new ETags with no read after the write."""
    config, apps, servers = served_config(tmp_path, monkeypatch, 1, display="SharePoint Renamed")
    (app,) = apps
    try:
        assert cli.run(["-c", str(config), "apply", "--auto-approve"]) == 0, capsys.readouterr().err
    finally:
        servers.shutdown()
    log = list(app.log)
    first_batch = next(i for i, e in enumerate(log) if e.path.endswith("/$batch") and e.is_write)
    assert [e for e in log[first_batch:] if e.method == "GET"] == []
    assert log.count(log[first_batch]) == 1 and len(log) == first_batch + 1
    row = app.store.reference(Sample.REF_SP)
    assert row is not None and row["connectionreferencedisplayname"] == "SharePoint Renamed"
    state = json.loads((tmp_path / "state" / "env00.json").read_text())
    recorded = state["references"][Sample.REF_SP_NAME]
    assert recorded["display_name"] == "SharePoint Renamed"
    assert recorded["etag"] == f'W/"{row["versionnumber"]}"'  # the ETag the write produced


def test_rows_not_sent_back_are_read_in_one_filtered_query(emulator: Any) -> None:
    """Should the service answer a write without the row, only the written rows are read again."""
    from dataclasses import replace

    from reconciler.apply.applier import live_after_apply

    n = 30
    add_bulk(emulator, 0, n, display="Old {i}")
    config = config_for(emulator, n, display="New {i}")
    with open_environment(config, "dev", token_provider=EmulatorTokens(emulator),
                          http=httpx.Client(timeout=60)) as s:
        live = read_environment(s, config, "dev")
        result = apply_environment(s.dataverse, partial(read_reference_rows, s.reader),
            plan_environment(config, config.environments["dev"], live))
        stripped = replace(result, results=tuple(replace(r, row=None) for r in result.results))
        emulator.app.log.clear()
        after = live_after_apply(live, stripped, partial(read_reference_rows, s.reader))
    (read,) = emulator.app.log
    assert read.method == "GET" and "connectionreferenceid" in read.query
    fresh = {r.logical_name: r for r in after.references}
    for i in range(n):
        ref = fresh[f"contoso_Bulk{i:04d}"]
        assert ref.display_name == f"New {i}" and ref.in_solution
        row = emulator.store.reference(ref.id)
        assert ref.etag == f'W/"{row["versionnumber"]}"'


def managed_downstream(emulator: Any, refs: int, flows: int) -> Config:
    """The sample made downstream: its solution managed, ``refs`` managed references left unbound by the
    import, the first ``flows`` of them each used by a flow that is off; a config binding them all."""
    data = emulator.store.data
    svc = emulator.store.user(Sample.SVC_USER_ID)
    sol = emulator.store.solution(Sample.SOLUTION)
    with emulator.store.lock:
        sol["ismanaged"] = True
        for app in data["applications"]:
            app["management_app"] = True  # it lists every connection (the service account's among them)
        for i in range(refs):
            factory.add_reference(data, f"contoso_Down{i:04d}", Sample.SP, owner=svc, display_name=f"Down {i}",
                                  solution=sol)
        for i in range(flows):
            factory.add_flow(data, f"Flow {i:04d}", [(f"contoso_Down{i:04d}", Sample.SP)], owner=svc, active=False,
                             solution=sol)
    desired = {f"contoso_Down{i:04d}": DesiredReference(f"contoso_Down{i:04d}", connector_id(Sample.SP), f"Down {i}")
               for i in range(refs)}
    return sample_config(emulator.url, desired, {name: Sample.CONN_SP_SVC for name in desired})


def downstream_requests(emulator: Any, config: Config) -> tuple[int, int, int]:
    """(requests to plan, requests to apply, activations) in a managed environment, as ``connref apply``
    makes them: the live read, what uses each reference to be bound, the plan; then the apply."""
    from functools import partial

    from reconciler.api.live import read_dependents, read_reference_rows
    from reconciler.apply.applier import FlowWatch
    from reconciler.plan.planner import dependency_candidates

    emulator.app.log.clear()
    with open_environment(config, "dev", token_provider=EmulatorTokens(emulator),
                          http=httpx.Client(timeout=60)) as s:
        live = read_environment(s.reader, config, "dev")
        live = read_dependents(s.reader, live, dependency_candidates(config, {"dev": live}).get("dev", ()))
        env_plan = plan_environment(config, config.environments["dev"], live)
        planned = len(emulator.app.log)
        emulator.app.log.clear()
        result = apply_environment(s.dataverse, partial(read_reference_rows, s.reader), env_plan,
                                   flows=FlowWatch(s.reader.dataverse, wait_seconds=30))
    assert result.ok and not result.failing_flows
    return planned, len(emulator.app.log), len(env_plan.activations)


def test_a_managed_environment_costs_two_batched_reads_per_1000_references_and_one_write_per_ten_flows(
        emulator: Any) -> None:
    """Downstream, planning adds to the fixed reads one ``$batch`` of layer queries and one of
    ``RetrieveDependenciesForDelete`` per 1000 references; applying binds them in ceil(N/1000) change sets,
    reads the flows' system jobs before and after (one query per 50 flows), switches the flows on ten to a
    ``$batch``, each in a part of its own outside any change set (so each gets its own verdict), and reads
    them back (one query per 50)."""
    n, f = 1200, 60
    planned, applied, activations = downstream_requests(emulator, managed_downstream(emulator, n, f))
    assert activations == f
    # The fixed reads (three here: the admin list of connections answers at once, and two read batches, the
    # second with the users), the shares of the one connection they are bound to, then the two batches.
    assert planned == 3 + 1 + 2 * math.ceil(n / 1000) == 8
    jobs = math.ceil(f / 50)
    switches = math.ceil(f / FLOWS_PER_SWITCH_BATCH)
    assert applied == math.ceil(n / 1000) + jobs + jobs + switches + jobs == 14
    batches = [e for e in emulator.app.log if e.path.endswith("/$batch")]
    bound = [e for e in batches if not any("workflows(" in p.path for p in e.parts)]
    assert [e.batch_count for e in bound] == [1000, 200]
    switched = [e for e in batches if any("workflows(" in p.path for p in e.parts)]
    assert [e.batch_count for e in switched] == [FLOWS_PER_SWITCH_BATCH] * switches
    # Every flow once, each part answered on its own (no change set: one refusal would not undo the others).
    paths = [p.path for e in switched for p in e.parts]
    assert len(set(paths)) == f and all(p.status < 300 for e in switched for p in e.parts)
    assert all(w["statecode"] == 1 for w in emulator.store.data["workflows"] if w["name"].startswith("Flow "))
