"""connref's benchmark (``make bench``): request counts, round trips, wall time, CPU and memory at
10 / 1,000 / 5,000 / 10,000 references and 1 / 20 environments, against the emulator with latency
injected on every request (token endpoint included), next to a per-record baseline script
(``benchmarks/baseline.py``) run against the same emulator in the same run. Prints one table with
every figure, its goal, the ratio to the goal and to the baseline, and PASS/FAIL per goal.

How each figure is taken:
- connref runs as a child process (``python -m reconciler``, with bytecode, as installed), as a user
  runs it; wall time is the child's whole life (interpreter start-up included), CPU its user + system
  time (from ``os.wait4``), peak RSS its own high-water mark (``VmHWM``, written by a small wrapper at
  exit: ``ru_maxrss`` would also count the benchmark process it was forked from). Each plan runs three
  times and the fastest run is shown (the one least disturbed by whatever else the machine runs); an
  apply runs once. The two sides of each "20 environments vs 1" ratio are planned by turns, four times
  each, the fastest of each kept: a shared host's speed drifts by tens of per cent within minutes, and
  runs taken minutes apart would measure the drift as much as connref.
- The emulator (in this process, over loopback https with a throw-away CA, so MSAL talks to its
  token endpoint for real) logs when it received and answered each request. ``requests`` counts
  them. ``depth`` is the critical path of round trips: the longest chain of requests in which each
  was received after the previous one was answered. ``network`` is the time from the first request
  received to the last one answered.
- The round-trip lower bound of a plan is (tenant discovery + token + per environment the longest of three
  chains: the connection lists or the first read ``$batch``, whichever is longer, + the second read
  ``$batch`` that carries the users + the shares of the bound connections when they are read + the writer's
  group membership from Graph when it is asked; the first read ``$batch`` + the further pages of references
  + the users only those pages name, when read; the two read ``$batch``es + the further pages of the
  solution's members) x latency; of an apply, that plus one round trip per ``$batch`` that writes. The
  round-trip goals compare ``network`` with it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.emulator import factory
from reconciler.emulator.app import EmulatorApp
from reconciler.emulator.factory import Sample
from reconciler.emulator.faults import Faults
from reconciler.emulator.requestlog import LogEntry
from reconciler.emulator.server import serve
from reconciler.emulator.store import EnvironmentStore
from reconciler.emulator.tls import make_test_ca

ROOT = Path(__file__).resolve().parents[1]
SECRET_ENV = "CONNREF_BENCH_SECRET"
PREFIX = "contoso_Bench"
TOKEN_PATH = "/oauth2/v2.0/token"
DISCOVERY_PATH = "/.well-known/openid-configuration"
REFERENCE_PAGE = 5000
# Runs a module or script and, at exit, writes its peak resident memory (VmHWM, which exec resets:
# ru_maxrss would also count the benchmark process the child was forked from) to $CONNREF_BENCH_RSS.
RSS_WRAPPER = """\
import atexit, os, runpy, sys
def _peak():
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    with open(os.environ["CONNREF_BENCH_RSS"], "w") as f:
        f.write(str(kb))
atexit.register(_peak)
target, sys.argv = sys.argv[1], sys.argv[1:]
if target == "-m":
    sys.argv = sys.argv[1:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    runpy.run_path(target, run_name="__main__")
"""


# --------------------------------------------------------------------------- environments


def environment_data(n: int, signing_key: str | None, *, display: str, stale: int) -> dict[str, Any]:
    """The sample environment plus ``n`` references in the solution, bound to the service account's
    SharePoint connection, and n/20 more connections of a maker (a realistic connection list). The
    first ``stale`` references have another display name than the config's."""
    data = factory.sample_environment(signing_key_pem=signing_key)
    # The recommended set-up: the pipeline's application is a registered management app, so one list
    # holds every connection of the environment (docs/service-account.md).
    data["applications"][0]["management_app"] = True
    svc = next(u for u in data["systemusers"] if u["systemuserid"] == Sample.SVC_USER_ID)
    maker = next(u for u in data["systemusers"] if u["systemuserid"] == Sample.MAKER_USER_ID)
    sol = next(s for s in data["solutions"] if s["uniquename"] == Sample.SOLUTION)
    for i in range(n):
        shown = ("Old " if i < stale else display) + str(i)
        factory.add_reference(data, f"{PREFIX}{i:05d}", Sample.SP, owner=svc, display_name=shown,
                              connection=Sample.CONN_SP_SVC, solution=sol)
    for _ in range(n // 20):
        factory.add_connection(data, Sample.OUTLOOK, owner=maker)
    return data


def config_text(n: int, urls: Sequence[str], authority: str, *, display: str) -> str:
    """A config declaring ``n`` references, bound half by connection name, half by owner selector."""
    lines = ["version: 1", f"solution: {Sample.SOLUTION}", "references:"]
    for i in range(n):
        lines += [f"  {PREFIX}{i:05d}:", f"    connector: {Sample.SP}", f"    display_name: {display}{i}"]
    lines.append("environments:")
    for e, url in enumerate(urls):
        lines += [f"  env{e:02d}:", f"    url: {url}", f"    connections_url: {url}",
                  f"    environment_id: {Sample.ENVIRONMENT_ID}", "    auth: pipeline",
                  f"    service_account: {Sample.SVC_UPN}", "    bindings:" if n else "    bindings: {}"]
        for i in range(n):
            binding = Sample.CONN_SP_SVC if i % 2 == 0 else "{owner: " + Sample.SVC_UPN + "}"
            lines.append(f"      {PREFIX}{i:05d}: {binding}")
    lines += ["auth:", "  pipeline:", "    method: client_secret", f"    tenant_id: {Sample.TENANT_ID}",
              f"    client_id: {Sample.APP_CLIENT_ID}", f"    client_secret_env: {SECRET_ENV}",
              f"    authority_host: {authority}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- measuring


def is_shares(e: LogEntry) -> bool:
    """A read of one connection's shares (its ``/permissions``), which waits for the connections and users."""
    return e.method == "GET" and "/connections/" in e.path and e.path.endswith("/permissions")


def is_connection_list(e: LogEntry) -> bool:
    return e.method == "GET" and "/connections" in e.path and not is_shares(e)


def is_read_batch(e: LogEntry) -> bool:
    """A ``$batch`` of GETs only: reads sent as one request (the live reader's small reads, the solution's
    members with the writer's privilege). It waits for nothing but its own round of reads."""
    return e.path.endswith("/$batch") and e.batch_count is not None and not e.is_write


def is_write_batch(e: LogEntry) -> bool:
    return e.path.endswith("/$batch") and not is_read_batch(e)


def is_member_page(e: LogEntry) -> bool:
    """A page of the solution's members (``solutioncomponents`` of one solution), read after the small reads."""
    return e.method == "GET" and e.path.endswith("/solutioncomponents") and "_solutionid_value" in e.query


def carries_users(e: LogEntry) -> bool:
    """The users read: on its own, or in the second read ``$batch`` (with the members and the privilege)."""
    if is_read_batch(e):
        return any(p.path.split("?")[0].endswith("systemusers") for p in e.parts)
    return e.method == "GET" and e.path.endswith("/systemusers")


def is_graph(e: LogEntry) -> bool:
    """The writer's group membership from Microsoft Graph (``checkMemberGroups``)."""
    return e.path.endswith("/checkMemberGroups")


@dataclass
class Run:
    """One measured child process and what the emulator saw of it."""

    name: str
    wall: float
    cpu: float
    rss_mb: float
    entries: list[LogEntry]
    code: int
    refs: int = 0
    envs: int = 1
    by_env: list[list[LogEntry]] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return len(self.entries)

    @property
    def token_requests(self) -> int:
        return sum(1 for e in self.entries if e.path.endswith(TOKEN_PATH))

    @property
    def discovery_requests(self) -> int:
        return sum(1 for e in self.entries if e.path.endswith(DISCOVERY_PATH))

    @property
    def batches(self) -> int:
        """The ``$batch`` requests that write (a read ``$batch`` of GETs is one of the reads)."""
        return sum(1 for e in self.entries if is_write_batch(e))

    @property
    def depth(self) -> int:
        """The longest chain of requests, each received after the previous one was answered."""
        items = sorted(self.entries, key=lambda e: e.started)
        depth: list[int] = []
        for i, e in enumerate(items):
            best = 0
            for j in range(i):
                if items[j].finished <= e.started and depth[j] > best:
                    best = depth[j]
            depth.append(best + 1)
        return max(depth, default=0)

    @property
    def network(self) -> float:
        if not self.entries:
            return 0.0
        return max(e.finished for e in self.entries) - min(e.started for e in self.entries)

    def tokens_overlap(self) -> bool:
        """Whether the token requests for different scopes were in flight at the same time."""
        toks = sorted((e for e in self.entries if e.path.endswith(TOKEN_PATH)), key=lambda e: e.started)
        return len(toks) > 1 and toks[1].started < toks[0].finished

    def env_round_trips(self, log: list[LogEntry]) -> int:
        """The round trips one environment's reads must take one after the other, the longest of three chains:
        the first read ``$batch`` (the small reads and the first page of references) or the connection lists
        (two when the admin list is refused), whichever is longer, then the second read ``$batch`` that
        carries the users (they need the connections' owners and the first page's), then the shares of the
        bound connections and the writer's groups (when read); the first read ``$batch`` then the further
        pages of references, then the users only they name (when read); the two read ``$batch``es (the
        second, with the solution's members and the writer's privilege, needs the first) and the members'
        further pages."""
        pages = sum(1 for e in log if e.method == "GET" and e.path.endswith("/connectionreferences"))
        lists = sum(1 for e in log if is_connection_list(e))
        read_batches = sum(1 for e in log if is_read_batch(e))
        batch_users = 1 if any(carries_users(e) and is_read_batch(e) for e in log) else 0
        late_users = 1 if any(carries_users(e) and not is_read_batch(e) for e in log) else 0
        shares = 1 if any(is_shares(e) for e in log) else 0
        graph = 1 if any(is_graph(e) for e in log) else 0
        first = min(read_batches, 1)
        to_shares = max(lists, first, 1) + batch_users + shares + graph
        to_pages = first + pages + late_users
        beside = read_batches + sum(1 for e in log if is_member_page(e))  # its first page is in a batch
        return max(to_shares, to_pages, beside)

    def bound_round_trips(self) -> int:
        """Tenant discovery and token, then the slowest environment's reads (``env_round_trips``), then one
        round trip per ``$batch`` that writes."""
        envs = self.by_env or [self.entries]
        return 2 + max(self.env_round_trips(log) for log in envs) + self.batches

    def bound_seconds(self) -> float:
        """The shortest network time the requests made allow, given what must wait for what: tenant
        discovery, then the slowest token, then per environment the longest of three chains (as
        ``env_round_trips`` counts them): (1) the longest of its independent first reads (the connection
        lists one after the other, the first read ``$batch``, any small read sent alone), then the second read
        ``$batch`` that carries the users, then the shares of the bound connections and the writer's groups;
        (2) the first read ``$batch``, then the further pages of references (or of flows, the longer), then
        the users only they name; (3) the first read ``$batch``, then the later ones and the members' further
        pages; then its write ``$batch``es one after the other; the slowest environment counts. Each request
        counts for as long as the emulator took to answer it (latency plus its own work), so the bound moves
        with the service's speed and the ratio measures only how well connref overlaps and how much it adds
        between."""
        def took(e: LogEntry) -> float:
            return e.finished - e.started

        def longest(items: list[LogEntry]) -> float:
            return max((took(e) for e in items), default=0.0)

        start = longest([e for e in self.entries if e.path.endswith(DISCOVERY_PATH)])
        start += longest([e for e in self.entries if e.path.endswith(TOKEN_PATH)])
        slowest = 0.0
        for log in self.by_env:
            reads = [e for e in log if e.method == "GET" and not e.path.endswith((DISCOVERY_PATH, TOKEN_PATH))]
            read_batches = sorted((e for e in log if is_read_batch(e)), key=lambda e: e.started)
            first = took(read_batches[0]) if read_batches else 0.0
            pages = sum(took(e) for e in reads if e.path.endswith("/connectionreferences"))
            lists = sum(took(e) for e in reads if is_connection_list(e))
            flows = sum(took(e) for e in reads if e.path.endswith("/workflows"))
            batch_users = [e for e in log if carries_users(e) and is_read_batch(e)]
            late_users = [e for e in log if carries_users(e) and not is_read_batch(e)]
            others = [e for e in reads if not carries_users(e) and not is_member_page(e) and not is_shares(e)
                      and not e.path.endswith(("/connectionreferences", "/workflows")) and "/connections" not in e.path]
            to_shares = max(lists, first, longest(others)) + longest(batch_users)
            to_shares += longest([e for e in reads if is_shares(e)]) + longest([e for e in log if is_graph(e)])
            to_pages = first + max(pages, flows) + longest(late_users)
            member_pages = [e for e in reads if is_member_page(e)]
            beside = first + sum(took(e) for e in read_batches[1:]) + sum(took(e) for e in member_pages)
            env = max(to_shares, to_pages, beside) + sum(took(e) for e in log if is_write_batch(e))
            slowest = max(slowest, env)
        return start + slowest


class Bench:
    def __init__(self, work: Path, latency_ms: int) -> None:
        self.work = work
        self.latency_ms = latency_ms
        self.tls = make_test_ca(str(work / "tls"))
        self.env = dict(os.environ, SSL_CERT_FILE=self.tls.ca_pem, NO_COLOR="1", PYTHONPATH=str(ROOT))
        self.env[SECRET_ENV] = Sample.APP_SECRET
        # As installed: with bytecode (an environment that forbids writing it would make every run
        # compile connref from source, which no installed copy does).
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "reconciler")], check=True,
                       env=self.env, stdout=subprocess.DEVNULL)
        self.signing_key: str | None = None
        self.runs: list[Run] = []

    def serve(self, datas: Sequence[dict[str, Any]]) -> tuple[list[EmulatorApp], Any]:
        apps = [EmulatorApp(EnvironmentStore.from_dict(d), faults=Faults(latency_ms=self.latency_ms)) for d in datas]
        servers = serve(apps, ssl_context=self.tls.server_context())
        return apps, servers

    def child(self, name: str, argv: Sequence[str], apps: Sequence[EmulatorApp], *, refs: int = 0,
              envs: int = 1, cwd: Path | None = None) -> Run:
        for app in apps:
            app.log.clear()
        rss_file = self.work / "rss.txt"
        rss_file.unlink(missing_ok=True)
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", RSS_WRAPPER, *argv], cwd=cwd or self.work,
                                env=dict(self.env, CONNREF_BENCH_RSS=str(rss_file)),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out_box: dict[str, bytes] = {}

        def drain() -> None:
            assert proc.stdout is not None and proc.stderr is not None
            out_box["out"] = proc.stdout.read()
            out_box["err"] = proc.stderr.read()

        reader = threading.Thread(target=drain)
        reader.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        reader.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        by_env = [list(app.log) for app in apps]
        entries = [e for log in by_env for e in log]
        peak_kb = int(rss_file.read_text()) if rss_file.exists() else usage.ru_maxrss
        run = Run(name, wall, usage.ru_utime + usage.ru_stime, peak_kb / 1024, entries,
                  proc.returncode, refs, envs, by_env)
        if proc.returncode not in (0, 2):
            sys.stderr.write(out_box.get("err", b"").decode(errors="replace")[-3000:])
            raise SystemExit(f"{name}: exit code {proc.returncode}")
        return run

    def workspace(self, name: str, n: int, envs: int, *, stale: int, display: str = "Bench ",
                  data_display: str = "Bench ") -> tuple[Path, list[EmulatorApp], Any]:
        datas = [environment_data(n, self.signing_key, display=data_display, stale=stale) for _ in range(envs)]
        if self.signing_key is None:
            self.signing_key = datas[0]["signing_key_pem"]
        for d in datas:  # one tenant: every environment trusts the same signing key
            d["signing_key_pem"] = self.signing_key
        apps, servers = self.serve(datas)
        folder = self.work / name
        folder.mkdir()
        urls = [s.url for s in servers]
        (folder / "connref.yaml").write_text(config_text(n, urls, urls[0], display=display))
        return folder, apps, servers

    # ------------------------------------------------------------------ scenarios

    def plan(self, n: int, envs: int, repeat: int = 3) -> Run:
        """The fastest of ``repeat`` plans (the run least disturbed by whatever else the machine does)."""
        folder, apps, servers = self.workspace(f"plan-{n}-{envs}", n, envs, stale=min(10, n))
        try:
            runs = [self.child(f"plan {n:,} refs x {envs} env", ["-m", "reconciler", "-c", "connref.yaml", "plan"],
                               apps, refs=n, envs=envs, cwd=folder) for _ in range(repeat)]
        finally:
            servers.shutdown()
        best = min(runs, key=lambda r: r.wall)
        self.runs.append(best)
        return best

    def plan_pair(self, n: int, envs: int, repeat: int = 4) -> tuple[Run, Run]:
        """One environment and ``envs`` environments of ``n`` references each, planned by turns (one, many,
        one, many...) and the fastest of ``repeat`` kept for each: the two sides of a ratio measured at the
        same moments, so a machine whose speed drifts during the run (a shared host's does, by tens of per
        cent) moves both alike."""
        one_folder, one_apps, one_servers = self.workspace(f"plan-{n}-1", n, 1, stale=min(10, n))
        many_folder, many_apps, many_servers = self.workspace(f"plan-{n}-{envs}", n, envs, stale=min(10, n))
        argv = ["-m", "reconciler", "-c", "connref.yaml", "plan"]
        ones: list[Run] = []
        manys: list[Run] = []
        try:
            for _ in range(repeat):
                ones.append(self.child(f"plan {n:,} refs x 1 env", argv, one_apps, refs=n, envs=1, cwd=one_folder))
                manys.append(self.child(f"plan {n:,} refs x {envs} env", argv, many_apps, refs=n, envs=envs,
                                        cwd=many_folder))
        finally:
            one_servers.shutdown()
            many_servers.shutdown()
        best = (min(ones, key=lambda r: r.wall), min(manys, key=lambda r: r.wall))
        self.runs.extend(best)
        return best

    def apply(self, n: int) -> tuple[Run, Run]:
        folder, apps, servers = self.workspace(f"apply-{n}", n, 1, stale=0, display="New ", data_display="Old ")
        try:
            before = apps[0].store.snapshot()
            run = self.child(f"apply {n:,} changes", ["-m", "reconciler", "-c", "connref.yaml", "apply",
                                                      "--auto-approve"], apps, refs=n, cwd=folder)
            self.runs.append(run)
            changed = sum(1 for r in apps[0].store.rows("connectionreferences")
                          if str(r["connectionreferencedisplayname"]).startswith("New "))
            if changed != n:
                raise SystemExit(f"apply wrote {changed} of {n} changes")
            apps[0].store.restore(before)
            names = folder / "names.json"
            names.write_text(json.dumps({f"{PREFIX}{i:05d}": f"New {i}" for i in range(n)}))
            base = self.child(f"baseline {n:,} changes", [
                str(ROOT / "benchmarks" / "baseline.py"), "--url", servers[0].url, "--authority", servers[0].url,
                "--tenant", Sample.TENANT_ID, "--client-id", Sample.APP_CLIENT_ID, "--secret-env", SECRET_ENV,
                "--names", str(names)], apps, refs=n, cwd=folder)
            self.runs.append(base)
            return run, base
        finally:
            servers.shutdown()

    def validate_seconds(self, repeat: int = 7) -> tuple[float, float]:
        """Median wall time of ``connref validate`` on a small config, start to finish, and its CPU."""
        folder, _apps, servers = self.workspace("validate", 3, 1, stale=0)
        servers.shutdown()
        times, cpus = [], []
        for _ in range(repeat):
            start = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-m", "reconciler", "-c", "connref.yaml", "validate"],
                                    cwd=folder, env=self.env, stdout=subprocess.DEVNULL)
            _, status, usage = os.wait4(proc.pid, 0)
            times.append(time.perf_counter() - start)
            cpus.append(usage.ru_utime + usage.ru_stime)
            if os.waitstatus_to_exitcode(status) != 0:
                raise SystemExit("validate failed")
        return statistics.median(times), statistics.median(cpus)

    def config_load_seconds(self, lines: int = 20_000, repeat: int = 5) -> tuple[int, float, float]:
        """Best wall time and best CPU time of ``load_config`` on a generated file of ``lines`` lines."""
        n = lines // 4  # three lines per reference, one per binding
        path = self.work / "big.yaml"
        path.write_text(config_text(n, ["https://contoso.crm4.dynamics.com"], "https://login.microsoftonline.com",
                                    display="Bench "))
        code = ("import sys, time\nfrom reconciler.config.loader import load_config\nwall = cpu = 9e9\n"
                f"for _ in range({repeat}):\n"
                "    t, c = time.perf_counter(), time.process_time(); load_config(sys.argv[1])\n"
                "    wall, cpu = min(wall, time.perf_counter() - t), min(cpu, time.process_time() - c)\n"
                "print(wall, cpu)\n")
        out = subprocess.run([sys.executable, "-c", code, str(path)], env=self.env, check=True,
                             capture_output=True, text=True).stdout
        wall, cpu = (float(x) for x in out.split())
        return len(path.read_text().splitlines()), wall, cpu


# --------------------------------------------------------------------------- report


@dataclass
class Goal:
    what: str
    measured: float
    limit: float
    unit: str
    lower_is_better: bool = True
    baseline: str = ""
    note: str = ""

    @property
    def ratio(self) -> float:
        if self.lower_is_better:
            return self.measured / self.limit if self.limit else math.inf
        return self.limit / self.measured if self.measured else math.inf

    @property
    def ok(self) -> bool:
        return self.measured <= self.limit if self.lower_is_better else self.measured >= self.limit


@dataclass
class Report:
    latency_ms: int
    runs: list[Run]
    goals: list[Goal] = field(default_factory=list)

    def table(self) -> str:
        head = ("| run | requests | tokens | depth (min) | network s (bound s) | wall s | CPU s | peak RSS MB |"
                " vs baseline |")
        out = [head, "|" + "---|" * 9]
        base = {r.refs: r for r in self.runs if r.name.startswith("baseline")}
        for r in self.runs:
            bound = r.bound_round_trips() if not r.name.startswith("baseline") else None
            depth = f"{r.depth}" + (f" ({bound})" if bound else "")
            net = f"{r.network:.2f}" + (f" ({r.bound_seconds():.2f})" if bound else "")
            vs = ""
            b = base.get(r.refs)
            if b is not None and r.name.startswith("apply"):
                vs = f"{b.requests / r.requests:.0f}x fewer requests, {b.wall / r.wall:.0f}x faster"
            out.append(f"| {r.name} | {r.requests:,} | {r.token_requests} | {depth} | {net} | {r.wall:.2f} | "
                       f"{r.cpu:.2f} | {r.rss_mb:.0f} | {vs} |")
        out += ["", "| goal | measured | goal | ratio to goal | vs baseline | verdict |", "|" + "---|" * 6]
        for g in self.goals:
            cmp = "<=" if g.lower_is_better else ">="
            out.append(f"| {g.what} | {g.measured:.2f}{g.unit} | {cmp} {g.limit:g}{g.unit} | {g.ratio:.2f} | "
                       f"{g.baseline} | {'PASS' if g.ok else 'FAIL'}{(' (' + g.note + ')') if g.note else ''} |")
        return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--latency-ms", type=int, default=50)
    p.add_argument("--sizes", default="10,1000,5000,10000", help="references per environment, 1 environment")
    p.add_argument("--multi-sizes", default="10,100,1000", help="references per environment, with --envs environments")
    p.add_argument("--envs", type=int, default=20)
    p.add_argument("--apply-sizes", default="10,1000")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = p.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",") if x]
    multi = [int(x) for x in args.multi_sizes.split(",") if x]
    apply_sizes = [int(x) for x in args.apply_sizes.split(",") if x]
    lat = args.latency_ms / 1000

    work = Path(tempfile.mkdtemp(prefix="connref-bench-"))
    try:
        bench = Bench(work, args.latency_ms)
        single: dict[int, Run] = {}
        many: dict[int, Run] = {}
        applied: dict[int, tuple[Run, Run]] = {}
        for n in sizes:
            if n not in multi:
                single[n] = bench.plan(n, 1)
                print(f"  measured {single[n].name}: {single[n].wall:.2f}s", file=sys.stderr, flush=True)
        for n in multi:  # each with its one-environment run, by turns (``plan_pair``)
            single[n], many[n] = bench.plan_pair(n, args.envs)
            print(f"  measured {single[n].name} and {many[n].name}: {single[n].wall:.2f}s, {many[n].wall:.2f}s",
                  file=sys.stderr, flush=True)
        for n in apply_sizes:
            applied[n] = bench.apply(n)
            print(f"  measured {applied[n][0].name} and its baseline: {applied[n][1].wall:.2f}s",
                  file=sys.stderr, flush=True)
        validate, validate_cpu = bench.validate_seconds()
        lines, load, load_cpu = bench.config_load_seconds()
        report = Report(args.latency_ms, bench.runs)
        g = report.goals
        for n, r in many.items():
            g.append(Goal(f"{args.envs} environments plan vs 1 ({n:,} refs each), wall", r.wall / single[n].wall,
                          1.5, "x"))
        for n, r in many.items():
            g.append(Goal(f"token requests, {args.envs} environments ({n:,} refs): one per scope "
                          f"({args.envs + 1} scopes)", r.token_requests / (args.envs + 1), 1.0, "x",
                          note=f"{r.token_requests} token + {r.discovery_requests} discovery"))
        first = single[min(single)]
        g.append(Goal("token fetches for different scopes concurrent (1 = yes)", float(first.tokens_overlap()), 1.0,
                      "", lower_is_better=False))
        def bound_note(r: Run) -> str:
            return (f"bound {r.bound_seconds():.2f}s: {r.bound_round_trips()} round trips, "
                    f"{r.bound_round_trips() * lat:.2f}s of latency alone")

        for n, r in sorted(single.items()):
            g.append(Goal(f"plan {n:,} refs: network time vs round-trip bound", r.network / r.bound_seconds(),
                          1.5, "x", note=bound_note(r)))
        for n, r in sorted(many.items()):
            g.append(Goal(f"plan {n:,} refs x {args.envs} env: network time vs bound",
                          r.network / r.bound_seconds(), 1.5, "x", note=bound_note(r)))
        for n, (r, b) in sorted(applied.items()):
            g.append(Goal(f"apply {n:,} changes: network time vs round-trip bound",
                          r.network / r.bound_seconds(), 1.5, "x",
                          baseline=f"baseline {b.network:.1f}s", note=bound_note(r)))
            reads_after = sum(1 for e in r.entries if (e.method == "GET" or is_read_batch(e))
                              and e.started > min(x.started for x in r.entries if is_write_batch(x)))
            g.append(Goal(f"apply {n:,} changes: reads after the first $batch", reads_after, 0, ""))
        if 1000 in applied:
            r, b = applied[1000]
            g.append(Goal("apply 1,000 changes: requests, baseline / connref", b.requests / r.requests, 100, "x",
                          lower_is_better=False, baseline=f"{b.requests:,} vs {r.requests}"))
        if 5000 in single and 10000 in single:
            g.append(Goal("plan CPU 10,000 / 5,000 refs", single[10000].cpu / single[5000].cpu, 2.2, "x"))
            g.append(Goal("plan CPU at 10,000 refs", single[10000].cpu, 2.0, " s"))
            g.append(Goal("peak RSS at 10,000 refs", single[10000].rss_mb, 250, " MB"))
            if 1000 in single:
                early = (single[5000].rss_mb - single[1000].rss_mb) / 4000
                late = (single[10000].rss_mb - single[5000].rss_mb) / 5000
                g.append(Goal("RSS per reference, 5k-10k vs 1k-5k (linear growth)", late / early if early > 0 else 0,
                              1.25, "x", note=f"{late * 1024:.1f} vs {early * 1024:.1f} KB/ref"))
        g.append(Goal(f"config load, {lines:,}-line file (CPU; best of 5)", load_cpu, 0.2, " s",
                      note=f"wall {load:.2f}s"))
        g.append(Goal("connref validate, small config, start to finish (wall; median of 7)", validate, 0.25, " s",
                      note=f"CPU {validate_cpu:.2f}s"))
        print(f"connref benchmark: {args.latency_ms} ms latency on every request (token endpoint included); "
              f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} at the end\n")
        print(report.table())
        print("\nrequests/tokens/depth/network: seen by the emulator (tokens = token-endpoint POSTs; depth = "
              "longest chain of requests each received after the previous was answered; min = the round "
              "trips that must follow one another: tenant discovery, token, then the longest of: the "
              "connection lists or the first read $batch, the second read $batch that carries the users, the "
              "shares of the bound connections when read; the first read $batch, the further reference "
              "pages, the users only they name when read; the two read $batches and the solution's further "
              "member pages; then one per $batch that writes). bound = the same chain with "
              "each request counted for as long as the emulator took to answer it (latency + its own work; "
              "the slowest environment). wall/CPU/RSS: the connref process, start-up included.")
        failed = [x for x in g if not x.ok]
        print(f"\n{len(g) - len(failed)} of {len(g)} goals met.")
        return 1 if failed else 0
    finally:
        if args.keep:
            print(f"scratch folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
