"""Random worlds for the convergence property tests (tests/test_convergence.py): emulator data and a
config drawn together, an independent oracle of what connref must do with them, and a driver that
runs the real pipeline (live reader, planner, applier, state record, drift) against the emulator
in-process.

A ``World`` is plain data: connections of several owners, connectors and statuses, shared or not;
connection references in and out of the solution, with null, empty or written descriptions, some
named per developer (``contoso_sharedsharepointonline_8f4b0``); and a config declaring some of them
(logical names sometimes in another case than live), others new, bound by connection name (in any
case) or by selector ``{owner, display_name}``, with or without a service account. ``data(world)``
is the emulator's data file for it and ``config_text(world)`` the YAML.

The oracle (``refusals``, ``expected_rows``, ``expected_drift``) restates the documented rules from
scratch, in the plainest form, from the world alone: it never calls the code it checks.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from hypothesis import strategies as st

from reconciler.api.session import EnvSession, open_environment
from reconciler.config.loader import load_config_text
from reconciler.domain.model import Config
from reconciler.emulator import jwt
from reconciler.emulator.app import EmulatorApp
from reconciler.emulator.factory import (
    add_application,
    add_connection,
    add_flow,
    add_reference,
    add_solution,
    add_solution_component,
    add_user,
)
from reconciler.emulator.store import EnvironmentStore, new_environment_data

URL = "https://contoso-dev.crm4.dynamics.com"
ENVIRONMENT_ID = "6f1c2a3b-0c4d-4e5f-8a9b-0c1d2e3f4a5b"
TENANT_ID = "11111111-2222-3333-4444-555555555555"
SOLUTION = "ContosoConnections"
SOLUTION_ID = "50000000-0000-4000-8000-000000000001"
COMPONENT_TYPE = 10150
PREFIX = "/providers/Microsoft.PowerApps/apis/"


# --------------------------------------------------------------------------- the people


@dataclass(frozen=True)
class Person:
    key: str
    upn: str
    object_id: str
    systemuserid: str
    fullname: str
    client_id: str | None = None  # an application user
    disabled: bool = False


APP_CLIENT_ID = "22222222-3333-4444-5555-666666666666"
APP = Person("app", f"{APP_CLIENT_ID}@application", "a0000000-0000-4000-8000-00000000000a",
             "a0000000-0000-4000-8000-0000000000a1", "connref pipeline", client_id=APP_CLIENT_ID)
SVC = Person("svc", "svc-flows@contoso.com", "b0000000-0000-4000-8000-00000000000b",
             "b0000000-0000-4000-8000-0000000000b1", "Flows Service Account")
ALICE = Person("alice", "alice@contoso.com", "c0000000-0000-4000-8000-00000000000c",
               "c0000000-0000-4000-8000-0000000000c1", "Alice Maker")
BOB = Person("bob", "bob@contoso.com", "c0000000-0000-4000-8000-00000000000d",
             "c0000000-0000-4000-8000-0000000000d1", "Bob Maker")
LEAVER = Person("leaver", "leaver@contoso.com", "d0000000-0000-4000-8000-00000000000d",
                "d0000000-0000-4000-8000-0000000000d1", "Former Employee", disabled=True)
PEOPLE = {p.key: p for p in (APP, SVC, ALICE, BOB, LEAVER)}
# Who owns rows and connections in the generated data (the leaver too: people leave).
OWNERS = ("svc", "alice", "bob", "app", "leaver")


def person_named(account: str) -> Person | None:
    """The person a config's ``service_account`` names: by UPN or by Entra object id (docs/config.md)."""
    return next((p for p in PEOPLE.values() if account.lower() in (p.upn.lower(), p.object_id)), None)


# --------------------------------------------------------------------------- the world


@dataclass(frozen=True)
class Conn:
    name: str  # 32 hex, as the connections API names them
    connector: str  # shared_x
    owner: str  # a PEOPLE key
    status: str
    display_name: str
    shared_with: tuple[str, ...] = ()  # PEOPLE keys holding CanView


@dataclass(frozen=True)
class Row:
    """A connection reference row in the environment before the apply."""

    logical_name: str
    connector: str
    display_name: str
    description: str | None  # None, "" or text: Dataverse gives an empty column either way
    connection: str | None  # a connection name (maybe of a connection that no longer exists)
    owner: str
    in_solution: bool
    id: str | None = None  # None: row_id(i) for the i-th row


@dataclass(frozen=True)
class Flow:
    """A cloud flow using references by logical name (in whatever case its clientdata spells them)."""

    name: str
    references: tuple[str, ...]


@dataclass(frozen=True)
class Declared:
    logical_name: str
    connector: str
    display_name: str
    description: str | None = None


@dataclass(frozen=True)
class Sel:
    owner: str  # a UPN, as written in the config (any case)
    display_name: str | None = None


Bind = str | Sel


@dataclass(frozen=True)
class World:
    conns: tuple[Conn, ...] = ()
    rows: tuple[Row, ...] = ()
    declared: tuple[Declared, ...] = ()
    bindings: tuple[tuple[str, Bind], ...] = ()  # (declared logical name as written, binding)
    service_account: str | None = SVC.upn
    # The pipeline application is a registered management app (it sees every connection) ...
    admin_list: bool = True
    # ... and holds prvActOnBehalfOfAnotherUser (it may write as the service account).
    may_impersonate: bool = True
    flows: tuple[Flow, ...] = ()
    # What connref manages here (the state's logical names) and whether the config prunes.
    managed: tuple[str, ...] = ()
    prune: bool = False

    def ids(self) -> list[str]:
        return [r.id or row_id(i) for i, r in enumerate(self.rows)]

    def declares(self, logical_name: str) -> bool:
        return any(d.logical_name.lower() == logical_name.lower() for d in self.declared)

    def used_by_flows(self, logical_name: str) -> bool:
        return any(n.lower() == logical_name.lower() for f in self.flows for n in f.references)

    def manages(self, logical_name: str) -> bool:
        return logical_name.lower() in {m.lower() for m in self.managed}

    def pruned(self, logical_name: str) -> bool:
        """The apply deletes it: managed, no longer declared, pruning, and no flow uses it."""
        return (self.prune and self.manages(logical_name) and not self.declares(logical_name)
                and not self.used_by_flows(logical_name))

    def kept_for_flows(self, logical_name: str) -> bool:
        """Pruning would delete it, but flows use it: the plan keeps it and says why."""
        return (self.prune and self.manages(logical_name) and not self.declares(logical_name)
                and self.used_by_flows(logical_name))

    def binding(self, logical_name: str) -> Bind | None:
        return next((b for n, b in self.bindings if n.lower() == logical_name.lower()), None)

    def row(self, logical_name: str) -> Row | None:
        return next((r for r in self.rows if r.logical_name.lower() == logical_name.lower()), None)

    def conn(self, name: str) -> Conn | None:
        return next((c for c in self.conns if c.name.lower() == name.lower()), None)


def row_id(i: int) -> str:
    return f"e0000000-0000-4000-8000-{i:012x}"


# --------------------------------------------------------------------------- world -> data and config


def data(world: World, signing_key_pem: str) -> dict[str, Any]:
    """The emulator data of ``world``: users, the solution, connections, then the reference rows in
    order (row ``i`` gets id ``row_id(i)``)."""
    d = new_environment_data(
        name="dev", url=URL, environment_id=ENVIRONMENT_ID, tenant_id=TENANT_ID,
        organization_id="0a0a0a0a-0000-4000-8000-000000000001",
        business_unit_id="0b0b0b0b-0000-4000-8000-000000000001",
        componenttype=COMPONENT_TYPE, signing_key_pem=signing_key_pem,
    )
    add_application(d, display_name=APP.fullname, client_id=APP_CLIENT_ID, object_id=APP.object_id,
                    management_app=world.admin_list)
    users: dict[str, dict[str, Any]] = {}
    for p in PEOPLE.values():
        privileges = ["prvActOnBehalfOfAnotherUser"] if p is APP and world.may_impersonate else []
        users[p.key] = add_user(d, domainname=p.upn, fullname=p.fullname, object_id=p.object_id,
                                application_id=p.client_id, privileges=privileges, disabled=p.disabled,
                                systemuserid=p.systemuserid)
    sol = add_solution(d, SOLUTION, publisher_prefix="contoso", solutionid=SOLUTION_ID)
    for c in world.conns:
        add_connection(d, c.connector, owner=users[c.owner], name=c.name, display_name=c.display_name,
                       status=c.status, created="2026-03-01T09:00:00Z",
                       shared_with=[(PEOPLE[k].object_id, "CanView") for k in c.shared_with])
    for rid, r in zip(world.ids(), world.rows, strict=True):
        row = add_reference(d, r.logical_name, r.connector, owner=users[r.owner], display_name=r.display_name,
                            connection=r.connection, connectionreferenceid=rid)
        row["description"] = r.description  # add_reference keeps None; "" must stay ""
        if r.in_solution:
            add_solution_component(d, sol, rid, COMPONENT_TYPE)
    for i, f in enumerate(world.flows):
        add_flow(d, f.name, [(n, "shared_sharepointonline") for n in f.references], owner=users["svc"],
                 solution=sol if i % 2 == 0 else None, workflowid=f"f0000000-0000-4000-8000-{i:012x}")
    return d


def delete_rows(d: dict[str, Any], ids: Collection[str]) -> None:
    """Delete reference rows from emulator data, with their solution membership (as the portal does)."""
    gone = {i.lower() for i in ids}
    d["connectionreferences"] = [r for r in d["connectionreferences"]
                                 if str(r["connectionreferenceid"]).lower() not in gone]
    d["solutioncomponents"] = [c for c in d["solutioncomponents"] if str(c["objectid"]).lower() not in gone]


def rows_from_data(d: Mapping[str, Any]) -> tuple[Row, ...]:
    """The reference rows of emulator data, as a world holds them (to plan a next config over them)."""
    members = solution_members(d)
    owner = {p.systemuserid: p.key for p in PEOPLE.values()}
    return tuple(
        Row(logical_name=str(r["connectionreferencelogicalname"]), connector=tail(str(r["connectorid"])),
            display_name=str(r["connectionreferencedisplayname"]), description=r["description"],
            connection=r["connectionid"], owner=owner[str(r["_ownerid_value"])],
            in_solution=str(r["connectionreferenceid"]).lower() in members, id=str(r["connectionreferenceid"]))
        for r in d["connectionreferences"]
    )


def config_document(world: World, *, local: str | None = None) -> dict[str, Any]:
    """The config of ``world``: for the emulator at ``URL`` (an access-token profile; tests hand the
    session its tokens), or for the ``local:`` data file ``local`` (served in-process by the CLI)."""
    refs: dict[str, Any] = {}
    for dr in world.declared:
        body: dict[str, Any] = {"connector": dr.connector, "display_name": dr.display_name}
        if dr.description is not None:
            body["description"] = dr.description
        refs[dr.logical_name] = body
    bindings: dict[str, Any] = {}
    for name, b in world.bindings:
        if isinstance(b, Sel):
            bindings[name] = {"owner": b.owner, **({"display_name": b.display_name} if b.display_name else {})}
        else:
            bindings[name] = b
    env: dict[str, Any] = {"url": f"local:{local}"} if local else {
        "url": URL,
        "environment_id": ENVIRONMENT_ID,
        "connections_url": URL,  # the emulator serves the connections API on the same host
        "auth": "pipeline",
    }
    if world.service_account is not None:
        env["service_account"] = world.service_account
    if bindings:
        env["bindings"] = bindings
    doc: dict[str, Any] = {"version": 1, "solution": SOLUTION, "references": refs, "environments": {"dev": env}}
    if world.prune:
        doc["prune"] = True
    if not local:
        doc["auth"] = {"pipeline": {"method": "access_token", "access_token_env": "CONNREF_CONVERGENCE_TOKEN"}}
    return doc


def config_text(world: World, *, local: str | None = None) -> str:
    return yaml.safe_dump(config_document(world, local=local), sort_keys=False, allow_unicode=True)


def write_local(world: World, directory: Path, signing_key_pem: str) -> Path:
    """``connref.yaml`` and its ``local:`` data file ``dev.json`` for ``world`` in ``directory``."""
    (directory / "dev.json").write_text(json.dumps(data(world, signing_key_pem), indent=2), encoding="utf-8")
    path = directory / "connref.yaml"
    path.write_text(config_text(world, local="dev.json"), encoding="utf-8")
    return path


def load_world_config(world: World) -> Config:
    return load_config_text(config_text(world), "/convergence/connref.yaml")


# --------------------------------------------------------------------------- the oracle


def writer(world: World) -> Person | None:
    """Who writes: the service account when the config names one (None when it has no user), else
    the signed-in pipeline application."""
    if world.service_account is None:
        return APP
    return person_named(world.service_account)


def visible(world: World, conn: Conn) -> bool:
    """The application lists every connection as a management app, else only those it owns or that
    are shared with it."""
    return world.admin_list or conn.owner == "app" or "app" in conn.shared_with


def usable_by(conn: Conn, who: Person) -> bool:
    return conn.owner == who.key or who.key in conn.shared_with


def tail(connector: str) -> str:
    return connector.rsplit("/", 1)[-1].lower()


def selected(world: World, sel: Sel, connector: str) -> list[Conn]:
    return [
        c for c in world.conns
        if visible(world, c) and tail(c.connector) == tail(connector)
        and PEOPLE[c.owner].upn.lower() == sel.owner.lower()
        and (sel.display_name is None or c.display_name.lower() == sel.display_name.lower())
    ]


# Why a plan is refused: one word per rule of the planner (and the message text that says it).
REFUSAL_PATTERNS: dict[str, str] = {
    "connector_changed": "the connector of a reference can't change",
    "connection_not_found": r"connection \S+ not found in environment",
    "wrong_connector": r"is for connector \S+, but the reference is for",
    "not_connected": "not Connected",
    "not_usable": "and not shared with",
    "selector_none": r"matches no \S+ connection",
    "selector_many": r"matches \d+ \S+ connections",
    "account_not_found": r"service account \S+ not found among the users",
    "account_disabled": r"service account \S+ is disabled",
    "cannot_impersonate": "may not act as",
}


def target_of(world: World, dr: Declared) -> tuple[Conn | None, set[str]]:
    """The connection a declared reference's binding resolves to, and the refusals it earns."""
    b = world.binding(dr.logical_name)
    if b is None:
        return None, set()
    if isinstance(b, Sel):
        found = selected(world, b, dr.connector)
        if len(found) != 1:
            return None, {"selector_none" if not found else "selector_many"}
        conn = found[0]
    else:
        hit = world.conn(b)
        if hit is None or not visible(world, hit):
            return None, {"connection_not_found"}
        conn = hit
    why: set[str] = set()
    if tail(conn.connector) != tail(dr.connector):
        why.add("wrong_connector")
    if conn.status.lower() != "connected":
        why.add("not_connected")
    w = writer(world)
    if w is not None and not usable_by(conn, w):
        why.add("not_usable")
    return (None if why else conn), why


def refusals(world: World) -> set[tuple[str | None, str]]:
    """Every (declared logical name in lower case, or None for the environment; rule) the planner must
    refuse the world's plan for. Empty: the plan must be made."""
    out: set[tuple[str | None, str]] = set()
    w = writer(world)
    if world.service_account is not None:
        if w is None:
            out.add((None, "account_not_found"))
        else:
            if w.disabled:
                out.add((None, "account_disabled"))
            if w is not APP and not world.may_impersonate:
                out.add((None, "cannot_impersonate"))
    for dr in world.declared:
        _, why = target_of(world, dr)
        out |= {(dr.logical_name.lower(), r) for r in why}
        live = world.row(dr.logical_name)
        if live is not None and tail(live.connector) != tail(dr.connector):
            out.add((dr.logical_name.lower(), "connector_changed"))
    return out


@dataclass(frozen=True)
class ExpectedRow:
    logical_name: str
    connector: str
    display_name: str
    description: str | None  # compared with "" and None as one value
    connection: str | None
    owner: str  # systemuserid
    in_solution: bool
    id: str | None = None  # None: a new row


def expected_rows(world: World) -> list[ExpectedRow]:
    """Every reference row after the apply of an accepted plan: declared ones as the config says,
    the rest exactly as they were."""
    w = writer(world)
    assert w is not None
    out: list[ExpectedRow] = []
    declared = {dr.logical_name.lower(): dr for dr in world.declared}
    for rid, r in zip(world.ids(), world.rows, strict=True):
        dr = declared.get(r.logical_name.lower())
        if dr is None:
            if not world.pruned(r.logical_name):
                out.append(ExpectedRow(r.logical_name, tail(r.connector), r.display_name, r.description,
                                       r.connection, PEOPLE[r.owner].systemuserid, r.in_solution, rid))
            continue
        conn, _ = target_of(world, dr)
        out.append(ExpectedRow(
            r.logical_name,  # logical names never change: the live spelling stays
            tail(r.connector),
            dr.display_name,
            dr.description if (dr.description or "") != (r.description or "") else r.description,
            conn.name if conn is not None else r.connection,
            w.systemuserid if world.service_account else PEOPLE[r.owner].systemuserid,
            True,
            rid,
        ))
    for dr in world.declared:
        if world.row(dr.logical_name) is None:
            conn, _ = target_of(world, dr)
            out.append(ExpectedRow(dr.logical_name, tail(dr.connector), dr.display_name, dr.description,
                                   conn.name if conn is not None else None, w.systemuserid, True))
    return out


def broken(world: World, connection: str | None) -> bool:
    """A reference bound to this connection fails at run time: missing, invisible or not Connected."""
    if not connection:
        return False
    conn = world.conn(connection)
    return conn is None or not visible(world, conn) or conn.status.lower() != "connected"


def expected_drift(world: World) -> set[tuple[str, str]]:
    """(logical name in lower case, kind) of what drift must still report after the apply: references
    in the solution nobody declared or manages (unmanaged), and references whose binding the apply left
    alone (declared without a binding, or managed and no longer declared) on a broken connection.
    Nothing else."""
    out: set[tuple[str, str]] = set()
    for r in world.rows:
        key = r.logical_name.lower()
        if world.pruned(key):
            continue
        if not world.declares(key) and not world.manages(key):
            if r.in_solution:
                out.add((key, "unmanaged"))
            continue
        if (not world.declares(key) or world.binding(key) is None) and broken(world, r.connection):
            out.add((key, "connection_broken"))
    return out


# --------------------------------------------------------------------------- strategies

CONNECTORS = ("shared_sharepointonline", "shared_office365", "shared_teams")
BASE_NAMES = ("contoso_SharePoint", "contoso_Outlook", "contoso_Teams", "contoso_Invoices.v2-eu")
DISPLAY_NAMES = ("SharePoint ContosoConnections", "Outlook", "Teams ContosoFlows", "SharePoint Solution1-8f4b0")
DESCRIPTIONS = ("Sites and lists used by the invoice flows", "Invoices", "ünïcødé ✓")
CONN_DISPLAY = ("Main", "main", "Backup")
STATUSES = ("Connected", "Error", "Unauthenticated")


def case_variant(draw: st.DrawFn, name: str) -> str:
    how = draw(st.sampled_from(("same", "lower", "upper", "swap")))
    if how == "lower":
        return name.lower()
    if how == "upper":
        return name.upper()
    if how == "swap":
        return name.swapcase()
    return name


def developer_name(draw: st.DrawFn, connector: str) -> str:
    """A per-developer logical name: ``contoso_shared<connector>_<five hex>``, as the designer makes."""
    suffix = draw(st.text("0123456789abcdef", min_size=5, max_size=5))
    return f"contoso_{connector.replace('_', '')}_{suffix}"


@st.composite
def conns(draw: st.DrawFn) -> tuple[Conn, ...]:
    names = draw(st.lists(st.integers(1, 2**128 - 1).map(lambda n: f"{n:032x}"), max_size=6, unique=True))
    out: list[Conn] = []
    for name in names:
        if draw(st.booleans()) if out else False:
            # Another connection of someone's for the same connector ("Main" and "Backup"): what makes a
            # selector without display_name ambiguous.
            like = draw(st.sampled_from(out))
            owner, connector = like.owner, like.connector
        else:
            owner, connector = draw(st.sampled_from(OWNERS)), draw(st.sampled_from(CONNECTORS))
        out.append(Conn(
            name=name,
            connector=connector,
            owner=owner,
            status=draw(st.sampled_from(STATUSES)),
            display_name=draw(st.sampled_from(CONN_DISPLAY) | st.just(PEOPLE[owner].upn)),
            shared_with=tuple(draw(st.lists(st.sampled_from(("svc", "app", "alice")), unique=True, max_size=2))),
        ))
    return tuple(out)


@st.composite
def rows(draw: st.DrawFn, connections: Sequence[Conn]) -> tuple[Row, ...]:
    out: list[Row] = []
    taken: set[str] = set()
    # Connectors people have connections for come up more often (as in a real environment).
    connectors = sorted({*CONNECTORS, *(c.connector for c in connections)}) + [c.connector for c in connections]
    for _ in range(draw(st.integers(0, 6))):
        connector = draw(st.sampled_from(connectors))
        if draw(st.booleans()):
            name = case_variant(draw, draw(st.sampled_from(BASE_NAMES)))
        else:
            name = developer_name(draw, connector)
        if name.lower() in taken:
            continue  # Dataverse keeps logical names unique, whatever their case
        taken.add(name.lower())
        same = [c.name for c in connections if c.connector == connector]
        # Rows were bound when they were made (so to a connection of their connector), or to one that
        # has been deleted since.
        connection = draw(st.none() | (st.sampled_from(same) if same else st.nothing())
                          | st.just("deadbeefdeadbeefdeadbeefdeadbeef"))
        out.append(Row(
            logical_name=name,
            connector=connector,
            display_name=draw(st.sampled_from(DISPLAY_NAMES)),
            description=draw(st.none() | st.just("") | st.sampled_from(DESCRIPTIONS)),
            connection=connection,
            owner=draw(st.sampled_from(OWNERS)),
            in_solution=draw(st.booleans()),
        ))
    return tuple(out)


@st.composite
def binding(draw: st.DrawFn, world: World, dr: Declared) -> Bind:
    """A binding as people write them: a connection of the reference's connector by name (in any case),
    a selector, any connection by name (maybe of another connector), or a name nothing has."""
    same = [c for c in world.conns if tail(c.connector) == tail(dr.connector)]
    kind = draw(st.sampled_from(("name", "selector", "any_name", "missing")))
    if kind == "selector":
        # After a connection that exists (its owner's UPN and maybe its display name, in any case), which
        # several may match, or (none of the connector's is a person's) after anyone.
        people = [c for c in same if c.owner != "app"]
        if people:
            c = draw(st.sampled_from(people))
            owner = c.owner
            display = draw(st.sampled_from((None, c.display_name, c.display_name, *CONN_DISPLAY[:1])))
        else:
            owner = draw(st.sampled_from(("svc", "alice", "bob")))
            display = draw(st.none() | st.sampled_from(CONN_DISPLAY))
        return Sel(case_variant(draw, PEOPLE[owner].upn), None if display is None else case_variant(draw, display))
    if kind == "missing" or not world.conns:
        return "0123456789abcdef0123456789abcdef"  # a connection that does not exist
    if kind == "name" and same:
        return case_variant(draw, draw(st.sampled_from(same)).name)
    return draw(st.sampled_from(world.conns)).name


@st.composite
def flows(draw: st.DrawFn, live_rows: Sequence[Row]) -> tuple[Flow, ...]:
    names = [r.logical_name for r in live_rows] + list(BASE_NAMES)
    out = []
    for i in range(draw(st.integers(0, 2))):
        used = draw(st.lists(st.sampled_from(names), min_size=1, max_size=2, unique_by=str.lower))
        out.append(Flow(f"Flow {i}", tuple(case_variant(draw, n) for n in used)))
    return tuple(out)


@st.composite
def worlds(draw: st.DrawFn, accepted: bool = False) -> World:
    """A random world. ``accepted``: the bindings and identity the oracle refuses are dropped, so the
    planner must accept the world (the rest stays random)."""
    connections = draw(conns())
    live_rows = draw(rows(connections))
    base = World(
        conns=connections,
        rows=live_rows,
        admin_list=draw(st.booleans()),
        may_impersonate=draw(st.booleans()),
        flows=draw(flows(live_rows)),
    )
    world = draw(declarations(base))
    return accepted_part(world, data_fixed=False) if accepted else world


@st.composite
def declarations(draw: st.DrawFn, base: World, accepted: bool = False) -> World:
    """A config over ``base``'s data: references declared (live ones, maybe in another case, and new
    ones), bindings, the service account; the data (rows, connections, flows) stays as it is.
    ``accepted``: only what the planner must accept, for data that can no longer change."""
    candidates = sorted({*(r.logical_name for r in base.rows), *BASE_NAMES}, key=str.lower)
    connectors = sorted({*CONNECTORS, *(c.connector for c in base.conns)}) + [c.connector for c in base.conns]
    names = draw(st.lists(st.sampled_from(candidates), unique_by=str.lower, max_size=5))
    declared: list[Declared] = []
    for name in names:
        live = base.row(name)
        written = case_variant(draw, name) if live is not None else name
        keep_connector = live is not None and draw(st.integers(0, 9)) > 0
        declared.append(Declared(
            logical_name=written,
            connector=live.connector if live is not None and keep_connector else draw(st.sampled_from(connectors)),
            display_name=draw(st.sampled_from(DISPLAY_NAMES)),
            description=draw(st.none() | st.sampled_from(DESCRIPTIONS)),
        ))
    accounts = (SVC.upn, SVC.upn.upper(), SVC.object_id.upper(), ALICE.upn, ALICE.object_id, LEAVER.upn,
                "nobody@contoso.com")
    world = dataclasses.replace(base, declared=tuple(declared), bindings=(),
                                service_account=draw(st.sampled_from(accounts) | st.none()))
    chosen: list[tuple[str, Bind]] = []
    for dr in declared:
        if draw(st.booleans()):
            chosen.append((dr.logical_name, draw(binding(world, dr))))
    world = dataclasses.replace(world, bindings=tuple(chosen))
    return accepted_part(world, data_fixed=True) if accepted else world


def accepted_part(world: World, *, data_fixed: bool) -> World:
    """The world with what the oracle refuses taken out: an identity that can write, declared
    references on their live connector, and only bindings that resolve. ``data_fixed``: the
    environment's data is already written, so a refused identity falls back to no service account
    (the pipeline application writes) rather than to a service account it may act as."""
    if {r for n, r in refusals(world) if n is None}:
        if data_fixed:
            world = dataclasses.replace(world, service_account=None)
        else:
            world = dataclasses.replace(world, service_account=SVC.upn, may_impersonate=True)
    declared = tuple(
        dataclasses.replace(dr, connector=live.connector) if (live := world.row(dr.logical_name)) else dr
        for dr in world.declared
    )
    world = dataclasses.replace(world, declared=declared)
    keep = tuple((n, b) for n, b in world.bindings
                 if not target_of(world, next(d for d in declared if d.logical_name == n))[1])
    return dataclasses.replace(world, bindings=keep)


# --------------------------------------------------------------------------- running it


class Tokens:
    """Tokens for the pipeline application signed with the emulator's key, per scope."""

    def __init__(self, signing_key_pem: str) -> None:
        self._key = signing_key_pem
        self._cache: dict[str, str] = {}
        self._lock = threading.Lock()

    def get_token(self, scope: str) -> str:
        with self._lock:
            if scope not in self._cache:
                self._cache[scope] = jwt.mint(self._key, tenant_id=TENANT_ID, object_id=APP.object_id,
                                              audience=scope.removesuffix("/.default"), app_id=APP_CLIENT_ID)
            return self._cache[scope]


@dataclass
class Running:
    """A world served in-process: the emulator app, its store, and an open session to it."""

    app: EmulatorApp
    store: EnvironmentStore
    session: EnvSession
    config: Config

    def ref_rows(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.store.data["connectionreferences"]]

    def members(self) -> set[str]:
        return solution_members(self.store.data)


def solution_members(data: Mapping[str, Any]) -> set[str]:
    """Ids of the references in the solution, from emulator data."""
    return {str(c["objectid"]).lower() for c in data["solutioncomponents"]
            if c["_solutionid_value"] == SOLUTION_ID and int(c["componenttype"]) == COMPONENT_TYPE}


@contextmanager
def running(world: World, tokens: Tokens, signing_key_pem: str) -> Iterator[Running]:
    store = EnvironmentStore.from_dict(data(world, signing_key_pem))
    app = EmulatorApp(store)
    config = load_world_config(world)
    http = httpx.Client(transport=httpx.WSGITransport(app=app), timeout=10)
    try:
        with open_environment(config, "dev", token_provider=tokens, http=http) as session:
            yield Running(app, store, session, config)
    finally:
        http.close()


def described(world: World) -> Mapping[str, Any]:
    """The world as the failing example's note shows it: the config and the rows."""
    return {"config": config_text(world), "rows": world.rows, "connections": world.conns}
