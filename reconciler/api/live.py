"""The live reader: everything the planner needs about one environment, read in bulk and in parallel.

It is given a ``LiveSource``: the environment's Dataverse and connections clients seen through
read-only protocols (``DataverseReader``, ``ConnectionsReader``), so it cannot write; only the applier
is handed what sends a ``$batch``. ``EnvSession.reader`` is such a source.

``read_environment(source, config, env)`` makes a fixed number of requests whatever the number of
references (a page holds 5000 rows): two rounds of independent reads run in parallel threads
(``httpx.Client`` is thread-safe).

Round 1: ``WhoAmI``; the org-specific component type of ``connectionreference``
(``solutioncomponentdefinitions``, docs/dataverse.md §2.1); the solution by ``uniquename``; every
connection reference of the environment (one paged query with ``$select``); the cloud flows
(``workflows``, category 5); the solutions each flow belongs to (every ``solutioncomponents`` row of
componenttype 29, Workflow, and every solution's ``uniquename``: two requests whatever the number of
flows, joined here rather than one request per flow); the connections (admin scope first, then the
caller's scope on a 403: one extra request when the caller is no admin).

Round 2: the solution's components of that type (membership, docs/dataverse.md §2.2: never
``connectionreference.solutionid``); the users needed (the caller, the service account in any form the
config allows: by ``domainname`` for a UPN, or for a GUID by ``systemuserid``, Entra object id and
``applicationid``; reference and connection owners) in ONE query with an ``or`` chain; and, when writes
impersonate a service account, whether the caller holds ``prvActOnBehalfOfAnotherUser``. Which user is
the writer is the rules layer's call (``reconciler.domain.rules.pick_writer``).

Why the whole reference collection rather than a filter on the declared names: membership of
undeclared references in the solution (drift, prune, lint) needs their rows too, and reading the
collection is one request up to 5000 references (docs/dataverse.md §3.5), while a filter on ids would grow
with the solution.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Protocol, TypeVar

from reconciler.api.client import MAX_PAGE_SIZE, QueryArgs, WhoAmI
from reconciler.api.odata_filter import Filter, Guid, any_of, either, eq
from reconciler.api.rows import REFERENCE_COLUMNS, reference_from_row
from reconciler.domain import flowdef, rules
from reconciler.domain.model import (
    Config,
    EnvironmentConfig,
    LiveConnection,
    LiveDependent,
    LiveEnvironment,
    LiveFlow,
    LiveReference,
    LiveSolution,
    LiveUser,
    Permission,
    frozen_map,
)
from reconciler.domain.patterns import is_guid
from reconciler.errors import (
    ApiError,
    AuthError,
    AuthUnavailableError,
    MalformedResponseError,
    PlanError,
)

log = logging.getLogger(__name__)


class DataverseReader(Protocol):
    """What the live reader may ask Dataverse: queries, WhoAmI, the component type, a privilege check."""

    def get_all(self, entity_set: str, *, select: Sequence[str] | None = None, filter: Filter | None = None,
                orderby: str | None = None, expand: str | None = None, page_size: int = MAX_PAGE_SIZE,
                first_page: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]: ...

    def query(self, entity_set: str, *, select: Sequence[str] | None = None, filter: Filter | None = None,
              orderby: str | None = None, expand: str | None = None,
              page_size: int = MAX_PAGE_SIZE) -> tuple[str, dict[str, str]]: ...

    def prefetch(self, reads: Sequence[tuple[str, Mapping[str, str]]]) -> int: ...

    def forget_prefetched(self) -> None: ...

    def who_am_i_url(self) -> str: ...

    def privilege_url(self, systemuserid: str, privilege: str) -> str: ...

    def component_type_query(self, entity: str) -> QueryArgs: ...

    def who_am_i(self) -> WhoAmI: ...

    def component_type_for(self, entity: str) -> int: ...

    def get_batch(self, requests: Sequence[tuple[str, Mapping[str, object] | None]]) -> list[tuple[int, Any]]: ...

    def user_has_privilege(self, systemuserid: str, privilege: str) -> bool | None: ...


class ConnectionsReader(Protocol):
    """What the live reader may ask the connections API: the two lists, and one connection's shares."""

    @property
    def environment_id(self) -> str | None: ...

    def list_connections(self) -> list[dict[str, Any]]: ...

    def list_connections_admin(self) -> list[dict[str, Any]]: ...

    def list_permissions(self, connector: str, name: str) -> list[dict[str, Any]]: ...

    def list_permissions_admin(self, connector: str, name: str) -> list[dict[str, Any]]: ...


class GraphReader(Protocol):
    """What the live reader may ask Microsoft Graph: which of some groups a principal belongs to."""

    def member_groups(self, object_id: str, group_ids: Sequence[str]) -> set[str]: ...


class LiveSource(Protocol):
    """One environment as the live reader sees it: its name and config, and read-only clients."""

    @property
    def name(self) -> str: ...

    @property
    def env(self) -> EnvironmentConfig: ...

    @property
    def dataverse(self) -> DataverseReader: ...

    @property
    def connections(self) -> ConnectionsReader | None: ...

    @property
    def graph(self) -> GraphReader | None: ...


T = TypeVar("T")

#: What writing as another user needs (docs/dataverse.md §3.10), read with
#: RetrieveUserPrivilegeByPrivilegeName (docs/dataverse.md §3.11).
IMPERSONATION_PRIVILEGE = "prvActOnBehalfOfAnotherUser"
#: Cloud flows are workflows of category 5 ("Modern Flow"; docs/dataverse.md §5.1).
FLOW_CATEGORY = 5
#: Solution component type of a workflow (cloud flows included): the ``componenttype`` option set of
#: ``solutioncomponent`` (docs/dataverse.md §2.1; Learn: solutioncomponent EntityType reference). Membership
#: is read as for references (docs/dataverse.md §2.2): ``solutioncomponents`` by ``componenttype``.
WORKFLOW_COMPONENT_TYPE = 29
#: Above this many keys the users are read as a collection rather than with an ``or`` chain, to stay
#: far below URL length limits; either way it is one request (per 5000 users).
MAX_USER_KEYS = 60

USER_COLUMNS = ("systemuserid", "azureactivedirectoryobjectid", "domainname", "fullname", "isdisabled",
                "applicationid")
FLOW_COLUMNS = ("workflowid", "name", "statecode", "statuscode", "ismanaged", "_ownerid_value", "clientdata")
SOLUTION_COLUMNS = ("solutionid", "uniquename", "friendlyname", "ismanaged")


def _guids(values: Iterable[str | None]) -> list[Guid]:
    """The GUIDs among ``values``, lower case, each once, in first-seen order (thousands of references
    name a handful of owners: each distinct value is checked once)."""
    seen: dict[str, Guid] = {}
    tried: set[str] = set()
    for v in values:
        if not v or v in tried:
            continue
        tried.add(v)
        key = v.lower()
        if key not in seen and is_guid(v):
            seen[key] = Guid(key)
    return list(seen.values())


# --------------------------------------------------------------------------- row -> model


def user_from_row(row: Mapping[str, Any]) -> LiveUser:
    return LiveUser(
        systemuserid=str(row["systemuserid"]).lower(),
        object_id=(str(row["azureactivedirectoryobjectid"]).lower()
                   if row.get("azureactivedirectoryobjectid") else None),
        upn=row.get("domainname") or None,
        fullname=row.get("fullname"),
        disabled=bool(row.get("isdisabled")),
        application_id=row.get("applicationid"),
    )


def share_from_item(item: Mapping[str, Any]) -> Permission:
    """One share as the permissions route serves it (docs/dataverse.md §4.8)."""
    props = item.get("properties") or {}
    principal = props.get("principal") or {}
    return Permission(principal_id=str(principal.get("id") or item.get("name") or ""),
                      role=str(props.get("roleName") or ""), principal_type=principal.get("type"),
                      id=item.get("id"), display_name=principal.get("displayName"))


def connection_from_item(item: Mapping[str, Any]) -> LiveConnection:
    """A connection in the shape both connections APIs return (docs/dataverse.md §4.4)."""
    props = item.get("properties") or {}
    statuses = props.get("statuses") or []
    status = str(statuses[0].get("status")) if statuses and isinstance(statuses[0], dict) else "Unknown"
    created_by = props.get("createdBy") or {}
    permissions = []
    for p in props.get("permissions") or []:
        pp = p.get("properties") or {}
        principal = pp.get("principal") or {}
        pid = principal.get("id") or p.get("name")
        if pid:
            permissions.append(Permission(principal_id=str(pid), role=str(pp.get("roleName") or ""),
                                          principal_type=principal.get("type")))
    owner_oid = created_by.get("id")
    if not owner_oid:
        owner_oid = next((p.principal_id for p in permissions if p.role == "Owner"), None)
    return LiveConnection(
        name=str(item.get("name") or ""),
        connector=str(props.get("apiId") or ""),
        display_name=props.get("displayName"),
        status=status,
        owner_object_id=owner_oid,
        owner_name=(created_by.get("userPrincipalName") or created_by.get("email")
                    or created_by.get("displayName")),
        permissions=tuple(permissions),
    )


def flow_from_row(row: Mapping[str, Any], solutions: tuple[str, ...] = ()) -> LiveFlow:
    raw = row.get("clientdata")
    clientdata = raw if isinstance(raw, str) else None
    status = row.get("statuscode")
    return LiveFlow(
        id=str(row["workflowid"]).lower(),
        name=str(row.get("name") or ""),
        state=int(row.get("statecode") or 0),
        owner_id=row.get("_ownerid_value"),
        references=flowdef.flow_references(clientdata),
        solutions=solutions,
        children=flowdef.flow_children(clientdata),
        trigger=flowdef.flow_trigger(clientdata),
        managed=bool(row.get("ismanaged")),
        status=int(status) if isinstance(status, int) else None,
        etag=str(row["@odata.etag"]),  # every flow row carries it (shapes.WORKFLOW)
        connections=flowdef.connections(clientdata),
        trigger_name=flowdef.trigger_name(clientdata),
        clientdata=clientdata,
        definition_readable=flowdef.readable(clientdata),
    )


def flow_solutions(component_rows: Iterable[Mapping[str, Any]],
                   solution_rows: Iterable[Mapping[str, Any]]) -> dict[str, tuple[str, ...]]:
    """Workflow id (lower case) -> the unique names of the solutions it is a component of, sorted
    without case. ``component_rows`` are ``solutioncomponents`` rows (``objectid``,
    ``_solutionid_value``), ``solution_rows`` are ``solutions`` rows (``solutionid``, ``uniquename``);
    a component of a solution not among them is left out. System solutions (Default, Active) stay:
    lint decides what to ignore."""
    names = {str(r.get("solutionid") or "").lower(): str(r.get("uniquename") or "") for r in solution_rows}
    found: dict[str, set[str]] = {}
    for row in component_rows:
        name = names.get(str(row.get("_solutionid_value") or "").lower())
        if name:
            found.setdefault(str(row.get("objectid") or "").lower(), set()).add(name)
    return {flow: tuple(sorted(sols, key=lambda n: (n.lower(), n))) for flow, sols in found.items()}


# --------------------------------------------------------------------------- reads


def read_connections(source: LiveSource, *, admin: bool = True) -> tuple[list[dict[str, Any]], str]:
    """Every connection the writer could bind: the admin-scope list when the caller may read it,
    else (403: no Power Platform admin role / no management app registration, docs/dataverse.md §4.3)
    the caller-scoped list. That fallback costs one extra request. Returns the items and the scope
    they came from ("admin" or "user")."""
    client = source.connections
    if client is None:
        raise PlanError(
            f"environment '{source.name}': connref cannot read connections without environment_id "
            "or connections_url; add one of them to the environment"
        )
    items, scope, _ = read_connections_explained(source, admin=admin)
    return items, scope


def read_connections_explained(source: LiveSource, *,
                               admin: bool = True) -> tuple[list[dict[str, Any]], str, tuple[str, ...]]:
    """``read_connections``, with why the admin list was not used (each refusal, as text). When the caller's
    list is refused too, the error names every refusal and what fixes each (docs/dataverse.md §4.3)."""
    client = source.connections
    if client is None:
        raise PlanError(
            f"environment '{source.name}': connref cannot read connections without environment_id "
            "or connections_url; add one of them to the environment"
        )
    refusals: list[str] = []
    if admin and client.environment_id:
        # Only a refusal means "not an admin": a failure (the service or the token endpoint down or
        # throttled past the retries, an unreadable answer) is an error, or the plan would be made from
        # the caller's partial list and give the wrong advice.
        try:
            return client.list_connections_admin(), "admin", ()
        except (ApiError, AuthError) as exc:
            why = _refusal(exc)
            if why is None or (isinstance(exc, ApiError) and exc.status == 404):
                raise
            refusals.append(why)
            log.info("%s: admin connection list refused; using the caller's scope", source.name)
    try:
        return client.list_connections(), "user", tuple(refusals)
    except (ApiError, AuthError) as exc:
        why = _refusal(exc)
        if why is None:
            raise
        refusals.append(why)
        raise PlanError(
            f"environment '{source.name}': every connections route was refused: "
            + "; ".join(refusals)
            + ". To list every connection, register the application as a Power Platform management app "
            "(New-PowerAppManagementApp) or sign in as a Power Platform administrator (the admin route wants a "
            "token for https://service.powerapps.com); to list the caller's own, it needs a token for "
            "https://api.powerplatform.com and a user in the environment (docs/service-account.md)"
        ) from None


def _refusal(exc: BaseException) -> str | None:
    """A refusal worth reporting and working around (401/403/404, or no token for that API), as text;
    None for a failure that must stop the run."""
    if isinstance(exc, AuthUnavailableError):
        return None
    if isinstance(exc, AuthError):
        return str(exc)
    if isinstance(exc, ApiError) and not isinstance(exc, MalformedResponseError) and exc.status in (401, 403, 404):
        return str(exc)
    return None


#: Shares of bound connections read at once (one request each; docs/dataverse.md §4.8).
SHARES_IN_PARALLEL = 8


def _read_shares(source: LiveSource, conn: LiveConnection, scope: str) -> LiveConnection:
    """``conn`` with its shares: through the admin route when the connections were listed as an admin, else
    the caller's route; a refusal leaves them unread with the reason."""
    client = source.connections
    assert client is not None
    api = conn.connector.rstrip("/").rsplit("/", 1)[-1]
    try:
        items = (client.list_permissions_admin(api, conn.name) if scope == "admin"
                 else client.list_permissions(api, conn.name))
    except (ApiError, AuthError) as exc:
        why = _refusal(exc)
        if why is None:
            raise
        return replace(conn, shares_refused=why)
    return replace(conn, shares=tuple(share_from_item(i) for i in items))


def _memberships(source: LiveSource, writer: LiveUser | None,
                 conns: Iterable[LiveConnection]) -> tuple[dict[str, bool], str | None]:
    """The writer's membership of the groups bound connections are shared with, from Microsoft Graph
    (docs/dataverse.md §4.10), and why it could not be read (None when it was, or was not needed)."""
    groups = sorted({p.principal_id.lower() for c in conns for p in (c.shares or ())
                     if p.principal_type == "Group" and p.principal_id})
    oid = writer.object_id if writer is not None else None
    if not groups or not oid:
        return {}, None
    if source.graph is None:
        return {}, "no Microsoft Graph client"
    try:
        found = source.graph.member_groups(oid, groups)
    except (ApiError, AuthError) as exc:
        why = _refusal(exc)
        if why is None:
            raise
        return {}, why
    return {g: g in found for g in groups}, None


@dataclass(frozen=True)
class _Access:
    """What ``read_access`` learns: the bound connections with their shares (by lower-case name), and the
    writer's membership of the groups they are shared with (and why it could not be read)."""

    shared: Mapping[str, LiveConnection]
    membership: Mapping[str, bool]
    why: str | None

    def onto(self, live: LiveEnvironment) -> LiveEnvironment:
        if not self.shared:
            return live
        return replace(live, connections=tuple(self.shared.get(c.name.lower(), c) for c in live.connections),
                       group_membership=frozen_map(self.membership), group_check=self.why)


def _access(source: LiveSource, envc: EnvironmentConfig, config: Config, live: LiveEnvironment) -> _Access:
    """The shares of the connections the bindings resolve to in ``live`` (which needs its connections,
    users and writer, not its references), and the writer's groups."""
    bound = rules.bound_connections(config.references, rules.BindingIndex.of(envc), live)
    if not bound or source.connections is None:
        return _Access({}, {}, None)
    if len(bound) == 1:  # one read: no thread of its own
        read = [_read_shares(source, bound[0], live.connections_scope)]
    else:
        workers = min(SHARES_IN_PARALLEL, len(bound))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"shares-{envc.name}") as pool:
            read = list(pool.map(lambda c: _read_shares(source, c, live.connections_scope), bound))
    membership, why = _memberships(source, live.writer, read)
    return _Access({c.name.lower(): c for c in read}, membership, why)


def read_access(source: LiveSource, envc: EnvironmentConfig, config: Config,
                live: LiveEnvironment) -> LiveEnvironment:
    """``live`` with the shares of the connections the bindings resolve to (only those: one request each, in
    parallel) and the writer's membership of the groups they are shared with (docs/dataverse.md §4.8-§4.10)."""
    return _access(source, envc, config, live).onto(live)


def _paged(dv: DataverseReader, pool: ThreadPoolExecutor, entity_set: str,
           query: QueryArgs) -> tuple[Future[list[dict[str, Any]]], Future[list[dict[str, Any]]]]:
    """A paged read on ``pool``: its first page (as soon as it is checked) and all its rows."""
    first: Future[list[dict[str, Any]]] = Future()

    def read() -> list[dict[str, Any]]:
        try:
            return dv.get_all(entity_set, **query, first_page=first.set_result)
        except BaseException as exc:
            if not first.done():  # the first page failed: what waits for it fails the same way
                first.set_exception(exc)
            raise
    return first, pool.submit(read)


def _fill(target: Future[T], read: Callable[[], T]) -> None:
    """Complete ``target`` with what ``read`` returns or raises (a read done on the calling thread)."""
    try:
        target.set_result(read())
    except Exception as exc:
        target.set_exception(exc)


@contextlib.contextmanager
def _forgetting(dv: DataverseReader) -> Iterator[None]:
    """Whatever happens to the reads, the batch answers none of them took are dropped on the way out."""
    try:
        yield
    finally:
        dv.forget_prefetched()


def _identities(service_account: str | None, who: WhoAmI,
                users: Sequence[LiveUser]) -> tuple[LiveUser, LiveUser | None]:
    """The caller (as its user row when read) and the identity writes act as (``rules.pick_writer``)."""
    caller = next((u for u in users if u.systemuserid == who.user_id), None)
    if caller is None:
        caller = LiveUser(systemuserid=who.user_id, object_id=None, upn=None)
    return caller, rules.pick_writer(service_account, caller, list(users))


def _who_am_i(source: LiveSource, dv: DataverseReader | None = None) -> Any:
    """WhoAmI (through ``dv``, by default the source's), with a refusal explained: a 403 here means the
    signed-in identity has no usable user in this environment (no application user, or a disabled one),
    which a raw Dataverse error hides."""
    try:
        return (dv or source.dataverse).who_am_i()
    except ApiError as exc:
        if exc.status != 403:
            raise
        raise PlanError(
            f"environment '{source.name}': Dataverse refused the signed-in identity ({exc}). "
            "For a service principal, create an enabled application user for it in this environment "
            "(Power Platform admin center > the environment > Settings > Users + permissions > Application "
            "users) and give it a security role; see docs/service-account.md"
        ) from None


class _StopAfterFailure:
    """The reads of one environment, stopped once one of them has failed for good: every read raises what it
    met only after its own retries, and the plan cannot go on without it, so a read not yet started is not
    started (it would spend a retry cycle of its own on a service that just gave up on another, as in a storm
    of 5xx, or add to a throttling window) and raises that first failure instead. Reads in flight finish."""

    def __init__(self, dv: DataverseReader) -> None:
        self._dv = dv
        self._failure: Exception | None = None
        self._lock = threading.Lock()

    def record(self, exc: Exception) -> None:
        with self._lock:
            if self._failure is None:  # the first failure stays: it is the one said
                self._failure = exc

    def record_failure(self, future: Future[Any]) -> None:
        """``record`` what a read done elsewhere (the connections) failed with, as a future's callback."""
        exc = None if future.cancelled() else future.exception()
        if isinstance(exc, Exception):
            self.record(exc)

    def _start(self) -> None:
        failure = self._failure
        if failure is not None:
            raise failure

    def _read(self, call: Callable[[], T]) -> T:
        self._start()
        try:
            return call()
        except Exception as exc:
            self.record(exc)
            raise

    # The reads: started only while no read has failed.
    def get_all(self, entity_set: str, *, select: Sequence[str] | None = None, filter: Filter | None = None,
                orderby: str | None = None, expand: str | None = None, page_size: int = MAX_PAGE_SIZE,
                first_page: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
        return self._read(lambda: self._dv.get_all(entity_set, select=select, filter=filter, orderby=orderby,
                                                   expand=expand, page_size=page_size, first_page=first_page))

    def prefetch(self, reads: Sequence[tuple[str, Mapping[str, str]]]) -> int:
        # A batch only saves requests: after a failure there is nothing left to save them for.
        return 0 if self._failure is not None else self._dv.prefetch(reads)

    def who_am_i(self) -> WhoAmI:
        return self._read(self._dv.who_am_i)

    def component_type_for(self, entity: str) -> int:
        return self._read(lambda: self._dv.component_type_for(entity))

    def get_batch(self, requests: Sequence[tuple[str, Mapping[str, object] | None]]) -> list[tuple[int, Any]]:
        return self._read(lambda: self._dv.get_batch(requests))

    def user_has_privilege(self, systemuserid: str, privilege: str) -> bool | None:
        return self._read(lambda: self._dv.user_has_privilege(systemuserid, privilege))

    # What sends nothing.
    def query(self, entity_set: str, *, select: Sequence[str] | None = None, filter: Filter | None = None,
              orderby: str | None = None, expand: str | None = None,
              page_size: int = MAX_PAGE_SIZE) -> tuple[str, dict[str, str]]:
        return self._dv.query(entity_set, select=select, filter=filter, orderby=orderby, expand=expand,
                              page_size=page_size)

    def forget_prefetched(self) -> None:
        self._dv.forget_prefetched()

    def who_am_i_url(self) -> str:
        return self._dv.who_am_i_url()

    def privilege_url(self, systemuserid: str, privilege: str) -> str:
        return self._dv.privilege_url(systemuserid, privilege)

    def component_type_query(self, entity: str) -> QueryArgs:
        return self._dv.component_type_query(entity)


def _env(config: Config, env: EnvironmentConfig | str | None, source: LiveSource) -> EnvironmentConfig:
    if isinstance(env, EnvironmentConfig):
        return env
    name = env or source.name
    found = config.environments.get(name)
    return found if found is not None else source.env


#: Threads reading one environment beside its own: the connections, the references and the flows (each may
#: page), round 2 (the second batch, then the users, then the shares), and the caller, the component type and
#: the solution when the first read $batch failed and they are sent on their own. Usually two or three
#: requests are in flight per environment; at most 11 (with the environment's own thread and the shares of
#: up to 8 bound connections), far below the 52 concurrent requests Dataverse allows per user and web server
#: (docs/dataverse.md §3.8).
READS_PER_ENVIRONMENT = 7
#: Environments read at the same time. Each is its own Dataverse web server (its own per-user limit);
#: what they share is the connections API, which each reads with one list (two when the admin list is
#: refused). 32 environments at once is a few hundred threads at most (mostly waiting), still small for one process.
MAX_PARALLEL_ENVIRONMENTS = 32


def read_environment(
    source: LiveSource,
    config: Config,
    env: EnvironmentConfig | str | None = None,
    *,
    all_references: bool = False,
    admin_connections: bool = True,
    max_workers: int = READS_PER_ENVIRONMENT,
    managed: Collection[str] = (),
) -> LiveEnvironment:
    """Read one environment for planning. ``references`` holds the solution's references and any
    declared or ``managed`` (logical names the state records) reference outside it, so prune finds a
    managed reference someone moved out of the solution (all of the environment's with ``all_references``).

    Round trips: the connections (two requests when the admin list is refused) beside one read ``$batch``
    of every first Dataverse read (the references page at 5000 rows, the further pages follow), then one
    second read ``$batch`` of the solution's members, the writer's privilege and the users, then the
    shares of the bound connections once the connections and users are known."""
    envc = _env(config, env, source)
    # Once a read has failed for good the environment cannot be planned: the reads not yet started are not
    # (the connections' failure counts too), and the first failure is what they raise.
    dv = _StopAfterFailure(source.dataverse)
    service_account = envc.service_account

    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=f"live-{envc.name}") as pool, \
            _forgetting(dv):
        def run(fn: Callable[[], T]) -> Future[T]:
            return pool.submit(fn)

        # Round 1: the connections (their own service; two lists when the admin list is refused), and the
        # seven first reads of Dataverse in ONE read $batch (docs/dataverse.md §3.7): one request on one
        # connection instead of seven on seven; its parts run one after the other, so the small reads come
        # back with the first page of references. Each read then runs as usual, answered from its part
        # (further pages follow their links), or sent on its own when the batch or its part failed.
        f_conns = run(lambda: read_connections_explained(source, admin=admin_connections))
        f_conns.add_done_callback(dv.record_failure)
        refs_query = QueryArgs(select=REFERENCE_COLUMNS)
        flows_query = QueryArgs(select=FLOW_COLUMNS, filter=eq("category", FLOW_CATEGORY))
        # Which solutions the flows belong to (lint CR208): every workflow membership and every
        # solution name, in two reads rather than one per flow.
        flow_members_query = QueryArgs(select=("objectid", "_solutionid_value"),
                                       filter=eq("componenttype", WORKFLOW_COMPONENT_TYPE))
        solution_names_query = QueryArgs(select=("solutionid", "uniquename"))
        # The publisher prefix comes with the solution through its publisherid navigation property.
        solution_query = QueryArgs(select=SOLUTION_COLUMNS, filter=eq("uniquename", config.solution),
                                   expand="publisherid($select=customizationprefix)")
        type_query = dv.component_type_query("connectionreference")
        first_reads = [
            dv.query("solutions", **solution_query), dv.query("solutioncomponentdefinitions", **type_query),
            (dv.who_am_i_url(), {}), dv.query("solutioncomponents", **flow_members_query),
            dv.query("solutions", **solution_names_query),
            dv.query("connectionreferences", **refs_query), dv.query("workflows", **flows_query),
        ]
        kept = dv.prefetch(first_reads)

        first_refs, f_refs = _paged(dv, pool, "connectionreferences", refs_query)
        first_flows, f_flows = _paged(dv, pool, "workflows", flows_query)
        # The caller, the component type and the solution, one row each. When the batch kept every answer
        # they are read here, on this thread: a thread each costs more than the read (at 20 environments,
        # threads were a tenth of the CPU the reads took). Else each is sent at once on a thread of its own.
        f_who: Future[Any] = Future()
        f_type: Future[int] = Future()
        f_solution: Future[LiveSolution | None] = Future()

        def small(target: Future[T], read: Callable[[], T]) -> None:
            if kept == len(first_reads):
                _fill(target, read)
            else:
                run(partial(_fill, target, read))

        small(f_who, lambda: _who_am_i(source, dv))
        small(f_type, lambda: dv.component_type_for("connectionreference"))
        small(f_solution, lambda: _solution(dv.get_all("solutions", **solution_query)))

        # Round 2: once round 1 has answered, its reads go as ONE read $batch: the solution's members and the
        # writer's privilege (they need the solution, the component type and the caller) and the users (the
        # caller, the service account, the connections' owners, and the owners on the first page of
        # references and of flows). It does not wait for further pages of references: at 10,000 references
        # they are read beside it, and the shares, which need only the connections and these users, follow
        # it. Owners first seen on a later page are read once every page is in (``_UsersRead.more``).
        def second_batch() -> tuple[_UsersRead, QueryArgs | None, tuple[LiveConnection, ...]]:
            solution, component_type, who = f_solution.result(), f_type.result(), f_who.result()
            # Reference and flow owners: explain and plan name who owns each flow.
            owner_ids = [r.get("_ownerid_value") for r in (*first_refs.result(), *first_flows.result())]
            connections = tuple(connection_from_item(c) for c in f_conns.result()[0])
            owner_oids = [c.owner_object_id for c in connections]
            users = _UsersRead(who.user_id, service_account, owner_ids, owner_oids)
            member_query = None
            if solution is not None:
                member_query = QueryArgs(select=("objectid",), filter=eq("_solutionid_value", Guid(solution.id))
                                         & eq("componenttype", component_type))
            ahead = [dv.query("solutioncomponents", **member_query)] if member_query else []
            if service_account:
                ahead.append((dv.privilege_url(who.user_id, IMPERSONATION_PRIVILEGE), {}))
            ahead.append(dv.query("systemusers", **users.query))
            if len(ahead) > 1:  # a batch of one read would be one request either way
                dv.prefetch(ahead)
            return users, member_query, connections

        # Each read then takes its answer from the batch (or, when the batch failed, is sent on its own, the
        # users beside the members and the privilege: the shares wait for the users only).
        def members_and_privilege() -> tuple[set[str], bool | None]:
            _, member_query, _ = f_second.result()
            members = ({str(m.get("objectid", "")).lower() for m in dv.get_all("solutioncomponents", **member_query)}
                       if member_query else set())
            who = f_who.result()
            allowed = dv.user_has_privilege(who.user_id, IMPERSONATION_PRIVILEGE) if service_account else None
            return members, allowed

        def who_and_what() -> LiveEnvironment:
            # The connections, the users and who reads and writes: all the shares of the bound connections
            # need (owner selectors resolve through the users), so they are read as soon as those arrive,
            # while the rest of round 2 may still run. The environment is this, completed below.
            _, scope, refusals = f_conns.result()
            found = f_users.result()
            caller, writer = _identities(service_account, f_who.result(), found)
            return LiveEnvironment(name=envc.name, solution=None, component_type=None, references=(),
                                   connections=f_second.result()[2],
                                   users=tuple(found), caller=caller, writer=writer, connections_scope=scope,
                                   connections_refusals=refusals)

        def every_user() -> tuple[LiveUser, ...]:
            # The round-2 users and the owners later pages brought (none when there was one page of each).
            later = [r.get("_ownerid_value") for r in (*f_refs.result(), *f_flows.result())]
            return (*f_users.result(), *f_second.result()[0].more(dv, later))

        f_second: Future[tuple[_UsersRead, QueryArgs | None, tuple[LiveConnection, ...]]] = Future()
        f_users: Future[list[LiveUser]] = Future()
        f_seen: Future[LiveEnvironment] = Future()
        f_access: Future[_Access] = Future()

        def round_two() -> None:
            # Each of these needs the one before (a failure reaches every one after it); the members and the
            # privilege, which may page, and the owners of later pages go beside them.
            _fill(f_second, second_batch)
            _fill(f_users, lambda: f_second.result()[0].read(dv))
            _fill(f_seen, who_and_what)
            _fill(f_access, lambda: _access(source, envc, config, f_seen.result()))

        run(round_two)
        # What only the finished environment needs is read here, on this thread, while round 2 runs: the
        # members and the privilege (paged at 10,000 references; the shares do not wait for them), which
        # solution each flow is in (paged in a big tenant), and the owners later pages brought. A failure is
        # kept for its turn below, so the error said is the same whichever read finished first.
        f_members_priv: Future[tuple[set[str], bool | None]] = Future()
        f_flow_solutions: Future[dict[str, tuple[str, ...]]] = Future()
        f_every_user: Future[tuple[LiveUser, ...]] = Future()
        _fill(f_members_priv, members_and_privilege)
        _fill(f_flow_solutions, lambda: flow_solutions(dv.get_all("solutioncomponents", **flow_members_query),
                                                       dv.get_all("solutions", **solution_names_query)))
        _fill(f_every_user, every_user)

        f_who.result()  # first: an identity Dataverse refuses is the error to say, before any other
        component_type = f_type.result()
        solution = f_solution.result()
        ref_rows = f_refs.result()
        seen = f_seen.result()
        users = f_every_user.result()
        members_ids, can_impersonate = f_members_priv.result()
        access = f_access.result()
        by_flow = f_flow_solutions.result()
        flows = tuple(flow_from_row(r, by_flow.get(str(r["workflowid"]).lower(), ()))
                      for r in f_flows.result())

    # Declared references, those connref manages (from state), and those the config replaces (consolidation
    # reads them wherever they are).
    declared = ({name.lower() for name in config.references} | {name.lower() for name in managed}
                | set(config.replacements))
    chosen: list[LiveReference] = []
    for row in ref_rows:
        member = str(row["connectionreferenceid"]).lower() in members_ids
        if member or all_references or str(row.get("connectionreferencelogicalname") or "").lower() in declared:
            chosen.append(reference_from_row(row, member))
    references = tuple(chosen)

    impersonating = bool(service_account) and rules.acts_as_other(seen.caller, seen.writer)
    # When the service cannot say whether the caller may impersonate, leave it to the apply: the
    # write then fails with Dataverse's own CannotActOnBehalfOfAnotherUser error.
    caller_can_impersonate = impersonating if can_impersonate is None else can_impersonate

    # A managed solution's references may carry unmanaged layers (docs/dataverse.md §2.6): read those of the
    # managed references connref manages, one batched GET per 1000 (none in an unmanaged environment).
    layers: dict[str, tuple[str, ...]] = {}
    if solution is not None and solution.managed:
        layers = read_layers(source, [r.id for r in references if r.managed and
                                       (r.in_solution or r.logical_name.lower() in declared)])

    live = replace(seen, solution=solution, component_type=component_type, references=references, flows=flows,
                   users=users, caller_can_impersonate=caller_can_impersonate, layers=frozen_map(layers))
    return access.onto(live)


#: The unmanaged layer of a component (docs/dataverse.md §2.6).
ACTIVE_LAYER = "Active"
#: ``msdyn_solutioncomponentname`` of a connection reference (UNCONFIRMED: docs/dataverse.md §2.6).
REFERENCE_LAYER_NAME = "connectionreference"
LAYER_COLUMNS = ("msdyn_componentid", "msdyn_solutionname", "msdyn_order", "msdyn_changes")


def layer_columns(changes: str | None) -> tuple[str, ...]:
    """The columns an unmanaged layer changes, from its ``msdyn_changes`` (``{"Attributes": [{"Key": ...}]}``;
    the shape is UNCONFIRMED, docs/dataverse.md §2.6). Unreadable: ``("(unknown)",)``, so the layer is still
    reported."""
    try:
        doc = json.loads(changes or "")
    except (TypeError, ValueError):
        return ("(unknown)",)
    attrs = doc.get("Attributes") if isinstance(doc, dict) else None
    if not isinstance(attrs, list):
        return ("(unknown)",)
    return tuple(sorted({str(a.get("Key")) for a in attrs if isinstance(a, dict) and a.get("Key")}))


def read_layers(source: LiveSource, reference_ids: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Reference id -> the columns its unmanaged ("Active") layer changes (empty: none). The layers table
    is queried one component at a time (a virtual table may refuse more, docs/dataverse.md §2.6); the
    queries go in ``$batch`` requests of 1000."""
    ids = [g.value for g in _guids(reference_ids)]
    if not ids:
        return {}
    requests: list[tuple[str, Mapping[str, object] | None]] = [
        ("msdyn_componentlayers", {
            "$select": ",".join(LAYER_COLUMNS),
            "$filter": eq("msdyn_componentid", rid) & eq("msdyn_solutioncomponentname", REFERENCE_LAYER_NAME),
        })
        for rid in ids
    ]
    out: dict[str, tuple[str, ...]] = {}
    for rid, (status, body) in zip(ids, source.dataverse.get_batch(requests), strict=True):
        if status >= 400 or not isinstance(body, dict):
            log.info("%s: the layers of reference %s could not be read (HTTP %s)", source.name, rid, status)
            continue
        active = [r for r in body.get("value") or [] if str(r.get("msdyn_solutionname") or "") == ACTIVE_LAYER]
        cols: set[str] = set()
        for row in active:
            cols.update(layer_columns(row.get("msdyn_changes")))
        out[rid] = tuple(sorted(cols))
    return out


#: Component types of what may use a reference (docs/dataverse.md §2.5): 29 Workflow, 300 Canvas App; a
#: bot's type is the organization's own (read from ``solutioncomponentdefinitions``).
DEPENDENT_KINDS = {WORKFLOW_COMPONENT_TYPE: "flow", 300: "canvas_app"}
BOT_STATES = {0: "Active", 1: "Inactive"}


def read_dependents(source: LiveSource, live: LiveEnvironment,
                    reference_ids: Iterable[str]) -> LiveEnvironment:
    """``live`` with what uses each of these references (``RetrieveDependenciesForDelete``, docs/dataverse.md
    §2.7): flows, canvas apps and Copilot Studio agents, with names, state and owner. One batched request per
    1000 references, then one read of the apps and one of the agents they name (only when they name any)."""
    ids = [g.value for g in _guids(reference_ids) if g.value not in live.dependents]
    if not ids or live.component_type is None:
        return live
    dv = source.dataverse
    requests: list[tuple[str, Mapping[str, object] | None]] = [
        (f"RetrieveDependenciesForDelete(ObjectId={rid},ComponentType={int(live.component_type)})", None)
        for rid in ids
    ]
    rows: dict[str, list[dict[str, Any]]] = {}
    for rid, (status, body) in zip(ids, dv.get_batch(requests), strict=True):
        if status >= 400 or not isinstance(body, dict):
            raise ApiError(f"environment '{source.name}': RetrieveDependenciesForDelete of reference {rid} "
                           f"answered HTTP {status}", status=status)
        rows[rid] = [d for d in body.get("value") or [] if isinstance(d, dict)]
    all_deps = [d for deps in rows.values() for d in deps]
    types = {int(d.get("dependentcomponenttype") or -1) for d in all_deps}
    bot_type = dv.component_type_for("bot") if types - set(DEPENDENT_KINDS) else None
    apps = _rows_by_id(source, "canvasapps", "canvasappid",
                       ("canvasappid", "displayname", "name", "_ownerid_value"),
                       [d for d in all_deps if d.get("dependentcomponenttype") == 300])
    bots = _rows_by_id(source, "bots", "botid", ("botid", "name", "statecode", "_ownerid_value"),
                       [d for d in all_deps if bot_type is not None and d.get("dependentcomponenttype") == bot_type])
    found: dict[str, tuple[LiveDependent, ...]] = dict(live.dependents)
    for rid, deps in rows.items():
        out: list[LiveDependent] = []
        for d in deps:
            oid = str(d.get("dependentcomponentobjectid") or "").lower()
            ctype = int(d.get("dependentcomponenttype") or -1)
            if ctype == WORKFLOW_COMPONENT_TYPE:
                flow = live.flow(oid)
                out.append(LiveDependent("flow", oid, flow.name if flow else oid, ctype,
                                         flow.state_name if flow else None, flow.owner_id if flow else None))
            elif ctype == 300:
                app = apps.get(oid, {})
                out.append(LiveDependent("canvas_app", oid, str(app.get("displayname") or app.get("name") or oid),
                                         ctype, None, app.get("_ownerid_value")))
            elif bot_type is not None and ctype == bot_type:
                bot = bots.get(oid, {})
                state = bot.get("statecode")
                out.append(LiveDependent("bot", oid, str(bot.get("name") or oid), ctype,
                                         BOT_STATES.get(state) if isinstance(state, int) else None,
                                         bot.get("_ownerid_value")))
            else:
                out.append(LiveDependent("component", oid, f"component {oid} (type {ctype})", ctype))
        found[rid] = tuple(sorted(out, key=lambda x: (x.kind, x.name.lower(), x.id)))
    owners = [d.owner_id for deps in found.values() for d in deps if d.owner_id and live.user(d.owner_id) is None]
    users = live.users
    if owners:
        extra = _read_users(source, owners[0], None, owners, ())
        users = (*users, *(u for u in extra if live.user(u.systemuserid) is None))
    return replace(live, dependents=frozen_map(found), users=tuple(users))


def _rows_by_id(source: LiveSource, entity_set: str, key: str, select: Sequence[str],
                deps: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    ids = _guids(str(d.get("dependentcomponentobjectid") or "") for d in deps)
    out: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), IDS_PER_READ):
        chunk = ids[start:start + IDS_PER_READ]
        for row in source.dataverse.get_all(entity_set, select=select, filter=any_of(key, chunk)):
            out[str(row.get(key) or "").lower()] = row
    return out


def _solution(rows: list[dict[str, Any]]) -> LiveSolution | None:
    if not rows:
        return None
    s = rows[0]
    raw = s.get("publisherid")
    publisher: dict[str, Any] = raw if isinstance(raw, dict) else {}
    return LiveSolution(id=str(s["solutionid"]).lower(), unique_name=str(s.get("uniquename")),
                        managed=bool(s.get("ismanaged")), prefix=publisher.get("customizationprefix") or None)


def _read_users(
    source: LiveSource,
    caller_id: str,
    service_account: str | None,
    owner_ids: Iterable[str | None],
    owner_object_ids: Iterable[str | None],
) -> list[LiveUser]:
    """The users the plan names, in one request: the caller, the owners of references and of
    connections, and the service account in every form ``rules.resolve_principal`` accepts (``_UsersRead``)."""
    return _UsersRead(caller_id, service_account, owner_ids, owner_object_ids).read(source.dataverse)


class _UsersRead:
    """The read of the users the plan names: the caller, the owners of references and of connections,
    and the service account in every form ``rules.resolve_principal`` accepts: a UPN by ``domainname``
    (escaped: a UPN may hold an apostrophe), a GUID as a systemuserid, an Entra object id or an
    application (client) id. One filtered query; every user when the keys would make the URL too long.
    Its ``query`` can travel in a read ``$batch`` before ``read`` takes its answer."""

    def __init__(self, caller_id: str, service_account: str | None, owner_ids: Iterable[str | None],
                 owner_object_ids: Iterable[str | None]) -> None:
        self.sa = (service_account or "").strip()
        sa_guid = self.sa.lower() if is_guid(self.sa) else None
        ids = _guids([caller_id, *owner_ids, sa_guid])
        oids = _guids([*owner_object_ids, sa_guid])
        self.wanted_ids = {g.value for g in ids}
        self.wanted_oids = {g.value for g in oids}
        self.everyone = len(ids) + len(oids) > MAX_USER_KEYS
        clauses: list[Filter] = []
        if ids:
            clauses.append(any_of("systemuserid", ids))
        if oids:
            clauses.append(any_of("azureactivedirectoryobjectid", oids))
        if sa_guid:
            clauses.append(eq("applicationid", Guid(sa_guid)))
        elif self.sa:
            clauses.append(eq("domainname", self.sa))
        self.query = (QueryArgs(select=USER_COLUMNS) if self.everyone
                      else QueryArgs(select=USER_COLUMNS, filter=either(*clauses)))
        self.answered: list[LiveUser] = []  # what ``read`` was answered
        self.found: set[str] = set()  # the systemuserids ``read`` returned

    def read(self, dv: DataverseReader) -> list[LiveUser]:
        users = [user_from_row(r) for r in dv.get_all("systemusers", **self.query)]
        self.answered = users
        if self.everyone:
            sa = self.sa.lower()
            users = [u for u in users
                     if u.systemuserid in self.wanted_ids or (u.object_id or "") in self.wanted_oids
                     or (sa and sa in rules.principal_keys(u))]
        self.found = {u.systemuserid for u in users}
        return users

    def more(self, dv: DataverseReader, owner_ids: Iterable[str | None]) -> list[LiveUser]:
        """The users among ``owner_ids`` (owners on pages read after this read was built) that it did not
        ask for: none and no request when every one was asked for (one page of references, or the same
        owners throughout); else one more filtered read (every user when they are too many for a URL),
        or, when this read took every user, picked from its answer. Call after ``read``."""
        missing = [g for g in _guids(owner_ids) if g.value not in self.wanted_ids and g.value not in self.found]
        if not missing:
            return []
        wanted = {g.value for g in missing}
        if self.everyone:
            rows: Iterable[LiveUser] = self.answered
        elif len(missing) > MAX_USER_KEYS:
            rows = (user_from_row(r) for r in dv.get_all("systemusers", select=USER_COLUMNS))
        else:
            rows = (user_from_row(r) for r in dv.get_all("systemusers", select=USER_COLUMNS,
                                                         filter=any_of("systemuserid", missing)))
        return [u for u in rows if u.systemuserid in wanted]


#: Ids per filtered read of references, to keep the URL short.
IDS_PER_READ = 50


def read_reference_rows(source: LiveSource, ids: Iterable[str]) -> list[dict[str, Any]]:
    """The rows (as the service answers them, ETag included) of the references with these ids that
    exist, in one filtered request per 50 ids."""
    guids = _guids(ids)
    rows: list[dict[str, Any]] = []
    for start in range(0, len(guids), IDS_PER_READ):
        rows.extend(source.dataverse.get_all(
            "connectionreferences", select=REFERENCE_COLUMNS,
            filter=any_of("connectionreferenceid", guids[start:start + IDS_PER_READ])))
    return rows


def read_references(source: LiveSource, ids: Iterable[str]) -> list[LiveReference]:
    """The reference rows with these ids (``in_solution`` left False for the caller to set), in one
    filtered request per 50 ids."""
    return [reference_from_row(row, False) for row in read_reference_rows(source, ids)]
