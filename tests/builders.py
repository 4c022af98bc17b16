"""Hand-made live environments, configs and token providers shared by the tests (no tests here).

Tests import it as ``from builders import ...``: pytest's default ("prepend") import mode puts the
directory of the root ``conftest.py`` (``tests/``) on ``sys.path``.

Three families of pure tests build the same objects with different defaults, and each family is a
``World`` below, so every difference between them is a named field and the building is written once:

* ``ADOPTION`` (lint, import, settings): the ``ContosoFlows`` solution; connections carry their owner's
  name, as the admin connections list gives it. ``messy_live()`` is what adoption meets: per-developer
  references with random suffixes, personal and broken connections, an unbound reference, an unused one.
* ``PLANNING`` (planner, render): the ``ContosoConnections`` solution, makers instead of Alice and Bob,
  and an unknown caller unless a test names one.
* ``DRIFT`` (drift, saved plans): every reference stamped with who last modified it, the config pointing
  at an https environment URL. ``drift_live()`` / ``drift_config()`` are the in-sync starting point.

The emulator-backed tests share ``EmulatorTokens`` and ``sample_config`` (the config for the
emulator's sample environment, ``factory.Sample``).
"""

from __future__ import annotations

import dataclasses
import enum
import threading
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from reconciler.domain.model import (
    Binding,
    Config,
    DesiredReference,
    EnvironmentConfig,
    LiveConnection,
    LiveEnvironment,
    LiveFlow,
    LiveReference,
    LiveSolution,
    LiveUser,
    Permission,
    Selector,
    connector_id,
    frozen_map,
)
from reconciler.emulator.factory import Sample
from reconciler.state.model import EnvState
from reconciler.state.record import record_apply

SVC = LiveUser("u-svc", "oid-svc", "svc-flows@contoso.com", "Flows Service Account")
ALICE = LiveUser("u-alice", "oid-alice", "alice@contoso.com", "Alice Maker")
BOB = LiveUser("u-bob", "oid-bob", "bob@contoso.com", "Bob Maker")
MAKER1 = LiveUser("u-maker1", "oid-maker1", "maker1@contoso.com", "Maker One")
MAKER2 = LiveUser("u-maker2", "oid-maker2", "maker2@contoso.com", "Maker Two")
SA = "svc-flows@contoso.com"
SP = "shared_sharepointonline"
OUTLOOK = "shared_office365"
TEAMS = "shared_teams"


class _Default(enum.Enum):
    """Marks an argument left to the world's default (``None`` is a value tests pass on purpose)."""

    WORLD = "world"


WORLD = _Default.WORLD


@dataclasses.dataclass(frozen=True)
class World:
    """The defaults one family of tests builds with."""

    solution: LiveSolution
    users: tuple[LiveUser, ...]
    # The identity the environment was read as, unless a test names one.
    caller: LiveUser | None
    # Connections carry their owner's full name (the admin list gives it; some tests rely on its absence).
    owner_names: bool = False
    # Who last modified every reference, and when (drift is judged against these).
    modified_by: str | None = None
    modified_on: str | None = None
    # ``{env}`` is replaced by the environment's name.
    url: str = "local:{env}.json"
    path: str = "connref.yaml"

    def conn(
        self,
        name: str,
        display: str | None = None,
        *,
        connector: str = SP,
        owner: LiveUser = SVC,
        status: str = "Connected",
        shared_with: Sequence[LiveUser] = (),
    ) -> LiveConnection:
        perms = (
            Permission(owner.object_id or "", "Owner"),
            *(Permission(u.object_id or "", "CanView") for u in shared_with),
        )
        owner_name = owner.fullname if self.owner_names else None
        return LiveConnection(
            name, connector_id(connector), display or name, status, owner.object_id, owner_name, perms
        )

    def ref(
        self,
        logical: str,
        display: str | None = None,
        *,
        connector: str = SP,
        connection: str | None = None,
        description: str | None = None,
        owner: LiveUser = SVC,
        in_solution: bool = True,
        etag: str = 'W/"100"',
        created_by: str | None = None,
        created_on: str | None = None,
    ) -> LiveReference:
        return LiveReference(
            id=f"id-{logical.lower()}",
            logical_name=logical,
            display_name=display if display is not None else logical,
            connector=connector_id(connector),
            connection=connection,
            description=description,
            owner_id=owner.systemuserid,
            etag=etag,
            in_solution=in_solution,
            modified_by=self.modified_by,
            modified_on=self.modified_on,
            created_by=created_by,
            created_on=created_on,
        )

    def live(
        self,
        refs: Sequence[LiveReference] = (),
        conns: Sequence[LiveConnection] = (),
        *,
        name: str = "dev",
        flows: Sequence[LiveFlow] = (),
        writer: LiveUser | None = SVC,
        caller: LiveUser | _Default | None = WORLD,
        solution: LiveSolution | _Default | None = WORLD,
    ) -> LiveEnvironment:
        return LiveEnvironment(
            name=name,
            solution=self.solution if solution is WORLD else solution,
            component_type=10150,
            references=tuple(refs),
            connections=tuple(conns),
            users=self.users,
            flows=tuple(flows),
            caller=self.caller if caller is WORLD else caller,
            writer=writer,
        )

    def config(
        self,
        refs: Sequence[DesiredReference] = (),
        bindings: Mapping[str, Binding] | None = None,
        *,
        service_account: str | None = SA,
        envs: Sequence[str] = ("dev",),
        naming: str | None = None,
        lint_ignore: Sequence[str] = (),
        prune: bool = False,
    ) -> Config:
        environments = {
            e: EnvironmentConfig(
                name=e,
                url=self.url.format(env=e),
                service_account=service_account,
                bindings=frozen_map(bindings or {}),
            )
            for e in envs
        }
        return Config(
            path=self.path,
            version=1,
            solution=self.solution.unique_name,
            references=frozen_map({r.logical_name: r for r in refs}),
            environments=frozen_map(environments),
            prune=prune,
            naming=naming,
            lint_ignore=tuple(lint_ignore),
        )


CONTOSO_CONNECTIONS = LiveSolution("sol-1", "ContosoConnections")

ADOPTION = World(
    solution=LiveSolution("sol-1", "ContosoFlows", prefix="contoso"),
    users=(SVC, ALICE, BOB),
    caller=SVC,
    owner_names=True,
)
PLANNING = World(solution=CONTOSO_CONNECTIONS, users=(SVC, MAKER1, MAKER2), caller=None)
DRIFT = World(
    solution=CONTOSO_CONNECTIONS,
    users=(SVC, ALICE, BOB),
    caller=SVC,
    modified_by="u-svc",
    modified_on="2024-06-01T08:00:00Z",
    url="https://contoso-dev.crm4.dynamics.com",
    path="/tmp/connref.yaml",
)


def desired(
    logical: str, display: str, *, connector: str = SP, description: str | None = None
) -> DesiredReference:
    return DesiredReference(logical, connector_id(connector), display, description)


def flow(name: str, *refs: str, solutions: Sequence[str] = ("ContosoFlows",)) -> LiveFlow:
    return LiveFlow(
        f"wf-{name.lower().replace(' ', '-')}", name, 1, SVC.systemuserid, tuple(refs), tuple(solutions)
    )


def reversed_order(env: LiveEnvironment) -> LiveEnvironment:
    """The same environment with its references, connections and flows listed backwards."""
    return dataclasses.replace(
        env,
        references=tuple(reversed(env.references)),
        connections=tuple(reversed(env.connections)),
        flows=tuple(reversed(env.flows)),
    )


def replace_ref(env: LiveEnvironment, logical: str, **changes: Any) -> LiveEnvironment:
    refs = tuple(
        dataclasses.replace(r, **changes) if r.logical_name == logical else r for r in env.references
    )
    return dataclasses.replace(env, references=refs)


def state_of(env: LiveEnvironment, names: Sequence[str] | None = None) -> EnvState:
    """The state an apply that left ``env`` as it is would have recorded."""
    names = names if names is not None else [r.logical_name for r in env.references]
    return record_apply(None, "dev", env, declared=names, user="runner", at="2024-06-01T08:00:00Z")


def applied_state(environment: str, *names: str, prev: EnvState | None = None) -> EnvState:
    """The state after an apply that created ``names`` in ``environment`` on top of ``prev``."""
    # A state records row ids as Dataverse has them, GUIDs (parse_state refuses others).
    refs = [dataclasses.replace(PLANNING.ref(n, connection=f"conn-{n.lower()}"),
                                id=str(uuid.uuid5(uuid.NAMESPACE_URL, n.lower())))
            for n in names]
    live = PLANNING.live(refs, name=environment, caller=SVC)
    ops = [{"kind": "create", "logical_name": n} for n in names]
    return record_apply(prev, environment, live, declared=names, ops=ops, user="runner",
                        commit="abc123", at="2024-06-01T08:00:00Z")


# --------------------------------------------------------------------------- the adoption world's mess

C_SVC_SP = ADOPTION.conn("a1b2c3d4e5f60718293a4b5c6d7e8f90", "SharePoint svc", owner=SVC)
C_ALICE_SP = ADOPTION.conn("0f3a9e0c6d2b4e1f9a8b7c6d5e4f3a2b", "SharePoint alice", owner=ALICE, shared_with=[SVC])
C_BOB_SP = ADOPTION.conn("b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0", "SharePoint bob", owner=BOB)
C_SVC_OUTLOOK = ADOPTION.conn("5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e", "Outlook svc", connector=OUTLOOK, owner=SVC)
C_BROKEN_TEAMS = ADOPTION.conn(
    "dead0000dead0000dead0000dead0000", "Teams svc", connector=TEAMS, owner=SVC, status="Error"
)


def messy_live(name: str = "dev") -> LiveEnvironment:
    """Two makers' SharePoint references (random suffixes, personal connections), an Outlook one
    bound well, a Teams one on a broken connection, an unbound one, an unused one, and one outside
    the solution."""
    ref = ADOPTION.ref
    return ADOPTION.live(
        [
            ref(
                "contoso_sharedsharepointonline_8f4b0",
                "SharePoint ContosoFlows-8f4b0",
                connection=C_ALICE_SP.name,
                owner=ALICE,
            ),
            ref(
                "contoso_sharedsharepointonline_30e7d",
                "SharePoint ContosoFlows-30e7d",
                connection=C_BOB_SP.name,
                owner=BOB,
                description="Invoice library",
            ),
            ref(
                "contoso_Outlook",
                "Office 365 Outlook ContosoFlows",
                connector=OUTLOOK,
                connection=C_SVC_OUTLOOK.name,
            ),
            ref(
                "contoso_Teams",
                "Microsoft Teams ContosoFlows",
                connector=TEAMS,
                connection=C_BROKEN_TEAMS.name,
            ),
            ref("contoso_Approvals", "Approvals ContosoFlows", connector="shared_approvals"),
            ref("contoso_Spare", "SharePoint Spare", connection=C_SVC_SP.name),
            ref("contoso_sharedoffice365_77aa1", "Outlook elsewhere", connector=OUTLOOK, in_solution=False),
        ],
        [C_SVC_SP, C_ALICE_SP, C_BOB_SP, C_SVC_OUTLOOK, C_BROKEN_TEAMS],
        name=name,
        flows=[
            flow("Invoice approval", "contoso_sharedsharepointonline_8f4b0", "contoso_Outlook"),
            flow("Leave request", "contoso_sharedsharepointonline_30e7d", "contoso_Approvals"),
            flow("Post to finance", "contoso_Teams", solutions=("ContosoFlows", "FinanceFlows")),
        ],
    )


# --------------------------------------------------------------------------- the planning world's pieces

C_SVC = PLANNING.conn("c0ffee01c0ffee01c0ffee01c0ffee01", "SharePoint svc")
C_MAKER = PLANNING.conn("beef0002beef0002beef0002beef0002", "SharePoint maker1", owner=MAKER1, shared_with=[SVC])
C_SVC2 = PLANNING.conn("c0ffee03c0ffee03c0ffee03c0ffee03", "SharePoint svc archive")
C_OUTLOOK = PLANNING.conn("0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a", "Outlook svc", connector=OUTLOOK)

SP_REF = desired("contoso_SharePoint", "SharePoint ContosoConnections")
OL_REF = desired("contoso_Outlook", "Outlook ContosoConnections", connector=OUTLOOK)


# --------------------------------------------------------------------------- the drift world, in sync

SPN = "contoso_SharePoint"
DRIFT_CONNS = (
    DRIFT.conn("c-sp-svc", "SharePoint svc"),
    DRIFT.conn("c-sp-alice", "SharePoint Alice", owner=ALICE),
    DRIFT.conn("c-ol-svc", "Outlook svc", connector=OUTLOOK),
)
DRIFT_REFS = (
    DRIFT.ref(SPN, "SharePoint Contoso", connection="c-sp-svc", description="Sites"),
    DRIFT.ref("contoso_Outlook", "Outlook Contoso", connector=OUTLOOK, connection="c-ol-svc"),
)


def drift_live(
    refs: Sequence[LiveReference] = DRIFT_REFS, conns: Sequence[LiveConnection] = DRIFT_CONNS
) -> LiveEnvironment:
    return DRIFT.live(refs, conns)


def drift_config(
    refs: Sequence[DesiredReference] | None = None,
    bindings: Mapping[str, Binding] | None = None,
    *,
    service_account: str | None = SA,
) -> Config:
    """The config ``drift_live()`` is in sync with, unless other references or bindings are given."""
    if refs is None:
        refs = (desired(SPN, "SharePoint Contoso", description="Sites"),
                desired("contoso_Outlook", "Outlook Contoso", connector=OUTLOOK))
    if bindings is None:
        bindings = {SPN: "c-sp-svc", "contoso_Outlook": Selector(owner=SA)}
    return DRIFT.config(refs, bindings, service_account=service_account)


# --------------------------------------------------------------------------- emulator-backed tests


class EmulatorTokens:
    """Real tokens signed with the emulator's key, for the pipeline application, per scope."""

    def __init__(self, emulator: Any) -> None:
        self.emulator = emulator
        self._lock = threading.Lock()
        self._cache: dict[str, str] = {}

    def get_token(self, scope: str) -> str:
        # Cached per scope, as real providers do (minting signs with RSA each time).
        with self._lock:
            if scope not in self._cache:
                self._cache[scope] = str(self.emulator.token(audience=scope.removesuffix("/.default")))
            return self._cache[scope]


def sample_config(
    url: str,
    refs: Mapping[str, DesiredReference],
    bindings: Mapping[str, Binding] | None = None,
    *,
    service_account: str | None = Sample.SVC_UPN,
    local_path: str | None = None,
) -> Config:
    """A config for the emulator's sample environment at ``url`` (or the ``local:`` file at
    ``local_path``, served in-process: it has no separate connections URL)."""
    env = EnvironmentConfig(
        name="dev",
        url=url,
        environment_id=Sample.ENVIRONMENT_ID,
        service_account=service_account,
        bindings=frozen_map(bindings),
        connections_url=None if local_path else url,
        local_path=local_path,
    )
    return Config(path="connref.yaml", version=1, solution=Sample.SOLUTION, references=frozen_map(refs),
                  environments=frozen_map({"dev": env}))


def host_keys(node: Any) -> list[str]:
    """Every ``inputs.host.connectionName`` in a flow definition, in document order: the keys its actions
    name their connections by (written here from the definition's shape, not from reconciler.domain.flowdef,
    so tests of flowdef check it against an independent reading)."""
    out: list[str] = []
    if isinstance(node, dict):
        inputs = node.get("inputs")
        host = inputs.get("host") if isinstance(inputs, dict) else None
        if isinstance(host, dict) and "connectionName" in host:
            out.append(host["connectionName"])
        for v in node.values():
            out += host_keys(v)
    elif isinstance(node, list):
        for v in node:
            out += host_keys(v)
    return out
