"""Fault soak: seeded runs of ``apply`` through the real CLI against the quickstart served over loopback
https, with faults drawn at random on every write and every read-back: a ``$batch`` committed whose answer
is dropped, replaced by a 500, 502, 503, 504 or a CDN's 524, by a 2xx connref cannot read, or by one that
calls the change set both written and refused; a ``$batch`` refused (504,
dropped, throttled) before it commits; reads throttled; a read-back that cannot be read; and, in some
runs, the CLI killed between its write and its state record. Each run applies the quickstart config,
then an edited one (a rename and a reference removed with ``--prune``), retrying until an apply without
faults succeeds, and asserts:

- no apply ends in a traceback, and one that fails says what happened (an unknown outcome says to plan
  again, never "not written" for a change set the environment holds);
- the environments end exactly as an apply without faults leaves them (every row, every field that is not
  a version or a timestamp), with one reference per logical name;
- after convergence ``drift`` reports nothing and ``plan`` has nothing to do.

``make test`` runs a few seeded runs (bounded: a fixed number of runs and attempts); ``make soak`` runs many
(``SOAK_RUNS``, ``SOAK_KILLS``, ``SOAK_SEED``).
"""

from __future__ import annotations

import copy
import json
import os
import random
import re
import shutil
import signal
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from e2e.e2e_support import TIMEOUT, Served, cli_in_child, gate_commits, wait_for
from reconciler.emulator.app import EmulatorApp
from reconciler.emulator.store import EnvironmentStore
from reconciler.state.lock import read_lock

pytestmark = pytest.mark.emulator_only

SEED = int(os.environ.get("SOAK_SEED", "16"))
RUNS = int(os.environ.get("SOAK_RUNS", "2"))
KILLS = int(os.environ.get("SOAK_KILLS", "1"))
#: Applies with faults before the one without: each may fail, none may do harm.
ATTEMPTS = 3

BATCH = "/api/data/v9.2/$batch"
REFERENCES = "/api/data/v9.2/connectionreferences"
#: Row fields that change with every write, whoever makes it: not part of "the same data".
VOLATILE = frozenset({"versionnumber", "modifiedon", "createdon", "overriddencreatedon", "solutioncomponentid"})

#: What can happen to a write: name -> (fault kind, options). Each fires at most once per attempt.
WRITE_FAULTS: dict[str, tuple[str, dict[str, Any]]] = {
    "committed, connection dropped": ("drop", {"after_commit": True}),
    "committed, 500": ("error", {"status": 500, "after_commit": True}),
    "committed, 502 from a gateway": ("error", {"status": 502, "after_commit": True, "error_body": "html"}),
    "committed, 504 from a gateway": ("error", {"status": 504, "after_commit": True, "error_body": "html"}),
    "committed, 200 with an HTML page": ("malformed", {"shape": "html"}),
    "committed, 200 cut in half": ("malformed", {"shape": "truncated"}),
    "committed, 200 with no body": ("malformed", {"shape": "empty"}),
    "committed, 503 from a gateway": ("error", {"status": 503, "after_commit": True, "error_body": "html"}),
    "committed, 524 from a CDN": ("error", {"status": 524, "after_commit": True, "error_body": "html"}),
    "committed, a 2xx part and a 412 part": ("malformed", {"shape": "part_status", "part": 2, "status": 412}),
    "not committed, 504": ("error", {"status": 504, "error_body": "html"}),
    "not committed, connection dropped": ("drop", {}),
    "not committed, throttled (429)": ("throttle", {"retry_after": 0}),
}
#: What can happen to a read of the references after the plan's own (the read-back of a lost answer).
READ_BACK_FAULTS: dict[str, tuple[str, dict[str, Any]]] = {
    "read-back answered with an HTML page": ("malformed", {"shape": "html"}),
}

EDITS = (
    ("display_name: Microsoft Dataverse ContosoFlows", "display_name: Microsoft Dataverse ContosoFlows (soak)"),
    ("    description: Invoice library and approvals list\n", "    description: Invoices (soak)\n"),
)


@dataclass
class Soak:
    served: Served
    rng: random.Random
    seen: Counter[str] = field(default_factory=Counter)
    pristine: dict[str, dict[str, Any]] = field(default_factory=dict)

    def reset(self) -> None:
        """Both environments as the quickstart ships them, no state."""
        for env in self.served.apps:
            store = EnvironmentStore(copy.deepcopy(self.pristine[env]))
            self.served.apps[env] = EmulatorApp(store)
            self.served.servers[env].server.set_app(self.served.apps[env])
        shutil.rmtree(self.served.dir / "state", ignore_errors=True)

    def draw_faults(self) -> list[str]:
        """Faults for one apply: in each environment at most one write fault, sometimes on the second
        write, sometimes a few reads throttled, and sometimes a read-back that cannot be read."""
        drawn = []
        for env, app in self.served.apps.items():
            app.faults.clear()
            app.faults.reseed(self.rng.randrange(1 << 30))
            if self.rng.random() < 0.8:
                name = self.rng.choice(sorted(WRITE_FAULTS))
                kind, options = WRITE_FAULTS[name]
                app.faults.add(kind, BATCH, methods=["POST"], times=1, after=self.rng.choice((0, 0, 1)),
                               **options)
                drawn.append(f"{env}: {name}")
                if self.rng.random() < 0.3:  # reads throttled, then served (retried after Retry-After: 0)
                    app.faults.add("throttle", "/api/data/v9.2/*", methods=["GET"], retry_after=0,
                                   times=self.rng.randint(1, 3))
                    drawn.append(f"{env}: reads throttled (429)")
                if self.rng.random() < 0.25:
                    rname = self.rng.choice(sorted(READ_BACK_FAULTS))
                    rkind, roptions = READ_BACK_FAULTS[rname]
                    # after=1: the plan's read of the references goes through; the next is the read-back.
                    app.faults.add(rkind, REFERENCES, methods=["GET"], times=1, after=1, **roptions)
                    drawn.append(f"{env}: {rname}")
        self.seen.update(drawn)
        return drawn

    def rows(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(environment, logical name) -> its reference row, as the emulator holds it now."""
        return {(env, str(r["connectionreferencelogicalname"]).lower()): copy.deepcopy(r)
                for env, app in self.served.apps.items() for r in app.store.data["connectionreferences"]}

    def apply(self, *extra: str) -> tuple[int, str]:
        before = self.rows()
        r = self.served.run("apply", "--auto-approve", *extra)
        said = r.out + r.err
        assert "Traceback" not in said, said
        assert r.code in (0, 1), said
        if "outcome unknown" in r.out:
            assert "plan again" in said, said
        # What apply calls not written (or failed) was not written: the row is as it was.
        after = self.rows()
        for env, name in claimed_unwritten(r.out):
            key = (env, name.lower())
            assert before.get(key) == after.get(key), f"{env}: {name} reported not written, but it was:\n{said}"
            self.seen["a write reported not written, checked"] += 1
        self.seen[f"apply exit {r.code}" + (", outcome unknown" if "outcome unknown" in r.out else "")] += 1
        return r.code, said

    def killed_apply(self, *extra: str) -> None:
        """apply -e dev in a child process, SIGKILLed once its $batch is committed (before its state record);
        then its lock is released as the next run would be told to."""
        gate = gate_commits(self.served, "dev")
        child = subprocess.Popen(
            cli_in_child("-c", str(self.served.config), "apply", "-e", "dev", "--auto-approve", *extra),
            env=dict(os.environ), cwd=self.served.dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(gate.committed, "the apply's $batch is committed", child)
            os.kill(child.pid, signal.SIGKILL)
            child.communicate(timeout=TIMEOUT)
        finally:
            gate.release()
            self.served.servers["dev"].server.set_app(self.served.apps["dev"])
        lock = read_lock(self.served.dir / "state", "dev")
        assert lock is not None, "a killed apply leaves its lock"
        assert self.served.run("state", "unlock", "dev", lock.id).code == 0
        self.seen["dev: killed between its write and its state record"] += 1

    def converge(self, kill: bool, *extra: str) -> None:
        """Applies with faults (the first killed when ``kill``), then one without, which must succeed."""
        for attempt in range(ATTEMPTS):
            if kill and attempt == 0:  # first, while dev has something to write
                for app in self.served.apps.values():
                    app.faults.clear()
                self.killed_apply(*extra)
                continue
            self.draw_faults()
            self.apply(*extra)
        for app in self.served.apps.values():
            app.faults.clear()
        code, said = self.apply(*extra)
        assert code == 0, said

    def tables(self) -> dict[str, dict[str, Any]]:
        """Every environment's references and solution components, without versions and timestamps."""
        out: dict[str, dict[str, Any]] = {}
        for env, app in self.served.apps.items():
            rows = app.store.data["connectionreferences"]
            names = Counter(str(r["connectionreferencelogicalname"]).lower() for r in rows)
            assert all(n == 1 for n in names.values()), f"{env}: more than one reference with one logical name"
            out[env] = {
                "references": {r["connectionreferenceid"]: {k: v for k, v in r.items() if k not in VOLATILE}
                               for r in rows},
                "components": sorted(json.dumps({k: v for k, v in c.items() if k not in VOLATILE}, sort_keys=True)
                                     for c in app.store.data.get("solutioncomponents", [])),
            }
        return out

    def clean(self) -> None:
        """Nothing drifted, nothing left to do."""
        r = self.served.run("drift", "--json")
        assert r.code == 0, r.out + r.err
        assert all(not e["references"] for e in json.loads(r.out)["environments"]), r.out
        r = self.served.run("plan", "--detailed-exitcode")
        assert r.code == 0, r.out + r.err


_OUTCOME = re.compile(r"^  \S (create|update|add_to_solution|delete) (\S+) \((not written|failed)\)")


def claimed_unwritten(out: str) -> list[tuple[str, str]]:
    """(environment, logical name) of every write the apply summary calls not written or failed."""
    found, env = [], ""
    for line in out.splitlines():
        if line.endswith(":") and not line.startswith(" ") and " " not in line:
            env = line[:-1]
        m = _OUTCOME.match(line)
        if m:
            found.append((env, m.group(2)))
    return found


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two JSON-like values differ, one path each (for the failure message)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in differences(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{path}/{k}")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def edit(served: Served, prune: bool) -> None:
    text = served.config.read_text()
    for old, new in EDITS:
        assert old in text, old
        text = text.replace(old, new, 1)
    if prune:  # contoso_Teams is no longer declared: prune deletes it
        start = text.index("  contoso_Teams:\n")
        end = text.index("\nenvironments:")
        text = text[:start] + text[end + 1:]
        text = "\n".join(line for line in text.splitlines() if not line.strip().startswith("contoso_Teams:")) + "\n"
    served.config.write_text(text)


def test_fault_soak(served: Served) -> None:
    original = served.config.read_text()
    soak = Soak(served, random.Random(SEED))
    soak.pristine = {env: copy.deepcopy(app.store.data) for env, app in served.apps.items()}

    # What an apply without faults makes of each phase: the data every faulty run must end with.
    expected = []
    for phase in range(2):
        if phase == 0:
            soak.reset()
        else:
            edit(served, prune=True)
        code, said = soak.apply(*(("--prune",) if phase else ()))
        assert code == 0, said
        expected.append(soak.tables())
    served.config.write_text(original)

    kills = set(random.Random(SEED + 1).sample(range(RUNS), min(KILLS, RUNS)))
    for run in range(RUNS):
        soak.reset()
        served.config.write_text(original)
        soak.converge(run in kills)
        assert soak.tables() == expected[0], (run, differences(soak.tables(), expected[0]), soak.seen)
        soak.clean()
        edit(served, prune=True)
        soak.converge(False, "--prune")
        assert soak.tables() == expected[1], (run, differences(soak.tables(), expected[1]), soak.seen)
        soak.clean()
    print(f"\nfault soak, seed {SEED}, {RUNS} run(s):")
    for what, n in sorted(soak.seen.items()):
        print(f"  {n:4d}  {what}")
    # The soak met what it is for: answers lost after the commit, and (when asked) kills.
    assert any(": committed," in k for k in soak.seen), soak.seen
    if KILLS:
        assert soak.seen["dev: killed between its write and its state record"] == min(KILLS, RUNS)
