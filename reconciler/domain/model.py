"""Plain, frozen data that flows between the steps: what the config declares (Desired) and what an
environment has (Live). No I/O here; the config loader builds the first, the live reader the second,
and the pure planner compares them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from types import MappingProxyType
from typing import Any

from reconciler.errors import Location

CONNECTOR_PREFIX = "/providers/Microsoft.PowerApps/apis/"


def connector_id(name_or_id: str) -> str:
    """Normalise a connector to its full id: ``shared_x`` -> ``/providers/Microsoft.PowerApps/apis/shared_x``."""
    if name_or_id.startswith("/"):
        return name_or_id
    return CONNECTOR_PREFIX + name_or_id


@lru_cache(maxsize=1024)
def connector_name(name_or_id: str) -> str:
    """The last path segment of a connector id (``shared_sharepointonline``), lower-cased for comparison.
    Remembered: an environment names a handful of connectors, asked for once or twice per reference."""
    return name_or_id.rstrip("/").rsplit("/", 1)[-1].lower()


def frozen_map(d: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(d or {}))


# --------------------------------------------------------------------------- desired (config)


@dataclass(frozen=True)
class Selector:
    """A binding given by properties rather than by name, resolved at plan time to exactly one connection."""

    owner: str
    display_name: str | None = None

    def describe(self) -> str:
        extra = f", display_name: {self.display_name}" if self.display_name else ""
        return f"{{owner: {self.owner}{extra}}}"


Binding = str | Selector


@dataclass(frozen=True)
class DesiredReference:
    """One declared connection reference. ``connector`` is always the full connector id. ``replaces``: the
    logical names of the references it replaces (per-developer duplicates of the same connector): in an
    unmanaged environment their flows are moved onto this one and they are deleted."""

    logical_name: str
    connector: str
    display_name: str
    description: str | None = None
    location: Location | None = field(default=None, compare=False)
    replaces: tuple[str, ...] = ()


@dataclass(frozen=True)
class AuthProfile:
    """An auth profile under ``auth:``. ``options`` holds the method's keys (names of env vars and
    files, never secret values)."""

    name: str
    method: str
    tenant_id: str | None = None
    client_id: str | None = None
    options: Mapping[str, Any] = field(default_factory=frozen_map)
    location: Location | None = field(default=None, compare=False)


DEFAULT_FLOW_WAIT_SECONDS = 300


@dataclass(frozen=True)
class FlowSettings:
    """An environment's ``flows:``: whether apply switches on the solution's flows that are off once
    their references are bound (``activate``), the flows it never switches on (``keep_off``: names or
    workflow ids, compared without case), and how long apply waits for the platform's asynchronous
    update after a rebind (``wait_seconds``, docs/dataverse.md §5.7)."""

    activate: bool = True
    keep_off: tuple[str, ...] = ()
    wait_seconds: int = DEFAULT_FLOW_WAIT_SECONDS
    location: Location | None = field(default=None, compare=False)

    def keeps_off(self, flow_id: str, flow_name: str) -> bool:
        keys = {k.lower() for k in self.keep_off}
        return flow_id.lower() in keys or flow_name.lower() in keys

    def keep_off_unmatched(self, flows: Iterable[tuple[str, str]]) -> list[str]:
        """The ``keep_off`` entries that name none of ``flows`` ((id, name) pairs), as ``keeps_off`` matches."""
        known = {key.lower() for pair in flows for key in pair}
        return [entry for entry in self.keep_off if entry.lower() not in known]


@dataclass(frozen=True)
class EnvironmentConfig:
    """One environment under ``environments:``.

    ``url`` is an https URL, a loopback http URL, or ``local:PATH`` (``local_path`` is then the
    absolute path of the emulator data file)."""

    name: str
    url: str
    environment_id: str | None = None
    auth: str | None = None
    service_account: str | None = None
    bindings: Mapping[str, Binding] = field(default_factory=frozen_map)
    connections_url: str | None = None
    cloud: str = "public"
    local_path: str | None = None
    location: Location | None = field(default=None, compare=False)
    # grant_access: apply shares each bound connection with the identity that writes when it has no access
    # (the whole environment, or the bindings named here, lower case; docs/dataverse.md §4.8).
    grant_access: bool = False
    grant_bindings: frozenset[str] = frozenset()
    flows: FlowSettings = field(default_factory=FlowSettings)

    def grants(self, logical_name: str) -> bool:
        """Whether apply may share the connection ``logical_name`` is bound to with the writer."""
        return self.grant_access or logical_name.lower() in self.grant_bindings

    @property
    def is_local(self) -> bool:
        return self.local_path is not None


@dataclass(frozen=True)
class AzureStateConfig:
    """``state: {backend: azurerm, ...}``: state kept in Azure Blob storage, one blob per environment
    (``<key_prefix><env>.json`` in ``container``), locked with a blob lease. It authenticates with the auth
    profile ``auth`` (a token for Azure Storage) or, for the Azurite emulator, with the connection string
    in the environment variable ``connection_string_env``."""

    container: str
    key_prefix: str = ""
    account_url: str | None = None
    auth: str | None = None
    connection_string_env: str | None = None
    lease_duration: int = 60
    location: Location | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Config:
    """The whole validated config. ``state_dir`` is the local backend's directory; ``remote_state``, when
    set, keeps the state in Azure Blob storage instead."""

    path: str
    version: int
    solution: str
    references: Mapping[str, DesiredReference]
    environments: Mapping[str, EnvironmentConfig]
    auth: Mapping[str, AuthProfile] = field(default_factory=frozen_map)
    prune: bool = False
    naming: str | None = None
    lint_ignore: tuple[str, ...] = ()
    # lint's verdict on per-developer references: allow, warn or error (reconciler.domain.consolidation).
    per_developer_policy: str = "warn"
    state_dir: str | None = None
    remote_state: AzureStateConfig | None = None

    @cached_property
    def _by_lower_name(self) -> Mapping[str, DesiredReference]:
        # Built once: the planner and lint look references up per live row, and a scan per lookup made
        # a plan of 10,000 references quadratic.
        out: dict[str, DesiredReference] = {}
        for name, ref in self.references.items():
            out.setdefault(name.lower(), ref)  # the loader refuses names equal but for case
        return MappingProxyType(out)

    def reference(self, logical_name: str) -> DesiredReference | None:
        """Look a declared reference up case-insensitively."""
        return self._by_lower_name.get(logical_name.lower())

    def replaced_by(self, logical_name: str) -> DesiredReference | None:
        """The declared reference that replaces ``logical_name`` (compared without case), or None."""
        return self.replacements.get(logical_name.lower())

    @cached_property
    def replacements(self) -> Mapping[str, DesiredReference]:
        """Replaced logical name (lower case) -> the declared reference that replaces it. The loader
        refuses a name replaced twice; were it not, the first declared would win, as a scan would find it."""
        out: dict[str, DesiredReference] = {}
        for ref in self.references.values():
            for r in ref.replaces:
                out.setdefault(r.lower(), ref)
        return MappingProxyType(out)


# --------------------------------------------------------------------------- live (Dataverse + connections)


@dataclass(frozen=True)
class LiveUser:
    """A ``systemusers`` row: a person or an application user."""

    systemuserid: str
    object_id: str | None
    upn: str | None
    fullname: str | None = None
    disabled: bool = False
    application_id: str | None = None

    def describe(self) -> str:
        return self.upn or self.fullname or self.systemuserid


@dataclass(frozen=True)
class LiveReference:
    """A ``connectionreferences`` row as read, with the ETag to send back on write."""

    id: str
    logical_name: str
    display_name: str | None
    connector: str
    connection: str | None
    description: str | None
    owner_id: str | None
    etag: str
    in_solution: bool
    managed: bool = False
    modified_by: str | None = None
    modified_on: str | None = None
    created_by: str | None = None
    created_on: str | None = None


@dataclass(frozen=True)
class Permission:
    """A role a principal holds on a connection (``Owner``, ``CanView``, ``CanViewWithShare``, ``CanEdit``).
    ``principal_type`` is ``User``, ``ServicePrincipal``, ``Group`` or ``Tenant`` (docs/dataverse.md §4.8);
    ``id`` is the permission's own id (what a removal names), ``display_name`` the principal's."""

    principal_id: str
    role: str
    principal_type: str | None = None
    id: str | None = None
    display_name: str | None = None


@dataclass(frozen=True)
class LiveConnection:
    """A connection from the connections API."""

    name: str
    connector: str
    display_name: str | None
    status: str
    owner_object_id: str | None
    owner_name: str | None = None
    permissions: tuple[Permission, ...] = ()
    # The shares read from the connection's permissions route (docs/dataverse.md §4.8); None when they were
    # not read (the connection is bound by no binding) or could not be (``shares_refused`` says why).
    shares: tuple[Permission, ...] | None = None
    shares_refused: str | None = None


@dataclass(frozen=True)
class FlowConnection:
    """One entry of a flow's ``connectionReferences`` (docs/dataverse.md §5.2): the ``key`` its triggers and
    actions name, the reference's ``logical_name`` (None for an older entry binding ``connection_name``
    directly), the ``connector`` (``shared_x``) and ``runtime_source`` (``embedded`` or ``invoker``,
    docs/dataverse.md §5.4)."""

    key: str
    logical_name: str | None
    connector: str | None
    runtime_source: str = "embedded"
    connection_name: str | None = None


FLOW_OFF, FLOW_ON, FLOW_SUSPENDED = 0, 1, 2  # workflow statecode (docs/dataverse.md §5.1)
FLOW_STATES = {FLOW_OFF: "Off", FLOW_ON: "On", FLOW_SUSPENDED: "Suspended"}


@dataclass(frozen=True)
class LiveFlow:
    """A cloud flow (``workflows`` row, category 5): its state, owner, the reference logical names its
    clientdata uses, the child flows it runs (their ``workflowid``, docs/dataverse.md §5.5), its trigger's
    kind, whether it is managed, the solutions it belongs to, and the ETag to send back on a write."""

    id: str
    name: str
    state: int
    owner_id: str | None
    references: tuple[str, ...]
    solutions: tuple[str, ...] = ()
    children: tuple[str, ...] = ()
    trigger: str | None = None  # "manual", "recurrence", "automated" (from the definition's first trigger)
    managed: bool = False
    status: int | None = None
    etag: str = ""
    # The definition's entries (reconciler.domain.flowdef.connections), its first trigger's name, and the
    # definition itself: what a consolidation rewrites (docs/dataverse.md §5.9).
    connections: tuple[FlowConnection, ...] = ()
    trigger_name: str | None = None
    clientdata: str | None = field(default=None, compare=False, repr=False)
    # False when the definition read says nothing of what the flow uses (reconciler.domain.flowdef.readable):
    # then no one can tell that every reference it needs is bound.
    definition_readable: bool = True

    @property
    def is_on(self) -> bool:
        return self.state == FLOW_ON

    @property
    def state_name(self) -> str:
        return FLOW_STATES.get(self.state, str(self.state))


@dataclass(frozen=True)
class LiveDependent:
    """A component that uses a connection reference, from ``RetrieveDependenciesForDelete``
    (docs/dataverse.md §2.5, §2.7): ``kind`` "flow", "canvas_app", "bot", or "component" (another type,
    named by its number); ``state`` as people read it ("On", "Off"...), when known."""

    kind: str
    id: str
    name: str
    component_type: int
    state: str | None = None
    owner_id: str | None = None


@dataclass(frozen=True)
class LiveSolution:
    id: str
    unique_name: str
    managed: bool = False
    prefix: str | None = None


@dataclass(frozen=True)
class LiveEnvironment:
    """Everything the planner needs about one environment, read in bulk before planning.

    ``caller`` is the authenticated identity; ``writer`` is the identity writes act as (the
    service account when one is configured, else the caller: ``reconciler.domain.rules.pick_writer``)."""

    name: str
    solution: LiveSolution | None
    component_type: int | None
    references: tuple[LiveReference, ...]
    connections: tuple[LiveConnection, ...]
    users: tuple[LiveUser, ...]
    flows: tuple[LiveFlow, ...] = ()
    caller: LiveUser | None = None
    writer: LiveUser | None = None
    caller_can_impersonate: bool = False
    # "admin": every connection of the environment was listed; "user": only those the caller owns or
    # has been shared (the admin list was refused), so a missing connection may just be invisible.
    connections_scope: str = "admin"
    # Why the admin list was not used ("GET ...: HTTP 403 ..."), when it was not.
    connections_refusals: tuple[str, ...] = ()
    # The writer's membership of the groups bound connections are shared with (group id, lower case ->
    # member), as Microsoft Graph answered; ``group_check`` says why it could not be checked (None: it was,
    # or no group share needed it). docs/dataverse.md §4.10.
    group_membership: Mapping[str, bool] = field(default_factory=frozen_map)
    group_check: str | None = None
    # Reference id -> what uses it, for the references whose dependents were read (docs/dataverse.md §2.7).
    dependents: Mapping[str, tuple[LiveDependent, ...]] = field(default_factory=frozen_map)
    # Reference id -> the columns its unmanaged ("Active") layer changes, for the managed references whose
    # layers were read (empty: no unmanaged layer; docs/dataverse.md §2.6).
    layers: Mapping[str, tuple[str, ...]] = field(default_factory=frozen_map)

    @property
    def managed(self) -> bool:
        """The environment's mode follows its solution: managed downstream, unmanaged in development."""
        return bool(self.solution and self.solution.managed)

    def flow(self, flow_id: str) -> LiveFlow | None:
        key = flow_id.lower()
        return next((f for f in self.flows if f.id.lower() == key), None)

    def connections_visibility_note(self) -> str | None:
        """Why a connection may be missing from ``connections`` although it exists, or None."""
        if self.connections_scope == "admin":
            return None
        who = self.caller.describe() if self.caller else "the signed-in identity"
        why = f" ({'; '.join(self.connections_refusals)})" if self.connections_refusals else ""
        return (f"connref could list only the connections {who} owns or has been shared, because the "
                f"admin list was refused{why}; other owners' connections, and who else they are shared "
                "with, are hidden from it: register the application as a Power Platform management app "
                "(New-PowerAppManagementApp), or sign in as a Power Platform administrator, so connref "
                f"sees every connection, or share the connections with {who}")

    # Lookups by key, without case, through indexes built on first use (the data is frozen).

    @cached_property
    def _connections_by_name(self) -> Mapping[str, LiveConnection]:
        index: dict[str, LiveConnection] = {}
        for c in self.connections:
            index.setdefault(c.name.lower(), c)
        return index

    @cached_property
    def _users_by_id(self) -> Mapping[str, LiveUser]:
        index: dict[str, LiveUser] = {}
        for u in self.users:
            index.setdefault(u.systemuserid.lower(), u)
        return index

    @cached_property
    def _users_by_object_id(self) -> Mapping[str, LiveUser]:
        index: dict[str, LiveUser] = {}
        for u in self.users:
            if u.object_id:
                index.setdefault(u.object_id.lower(), u)
        return index

    @cached_property
    def _connections_by_connector(self) -> Mapping[str, tuple[LiveConnection, ...]]:
        index: dict[str, list[LiveConnection]] = {}
        for c in self.connections:
            index.setdefault(connector_name(c.connector), []).append(c)
        return {k: tuple(v) for k, v in index.items()}

    @cached_property
    def selector_memo(self) -> dict[tuple[str, ...], list[LiveConnection]]:
        """What each selector matched, so a selector shared by many references is resolved once
        (the rules layer fills it; the data it derives from is frozen)."""
        return {}

    def connection(self, name: str) -> LiveConnection | None:
        return self._connections_by_name.get(name.lower())

    def connections_of(self, connector: str) -> tuple[LiveConnection, ...]:
        """The connections of one connector (``shared_x`` or its full id, any case), in list order."""
        return self._connections_by_connector.get(connector_name(connector), ())

    def user(self, systemuserid: str | None) -> LiveUser | None:
        return self._users_by_id.get(systemuserid.lower()) if systemuserid else None

    def user_by_object_id(self, object_id: str | None) -> LiveUser | None:
        return self._users_by_object_id.get(object_id.lower()) if object_id else None
