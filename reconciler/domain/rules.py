"""The domain rules: every verdict about principals, connections, bindings and fields, decided once.

Pure: plain data in (``reconciler.domain.model``), answers out; no I/O. The planner, drift, lint, import,
deployment settings, whoami and the live reader ask these functions instead of deciding for themselves,
so the same question gets the same answer, and the same problem the same code, everywhere.

- **Problems.** One ``Problem(code, severity, message, fix)`` type, with where it was found (environment,
  subject). ``CODES`` lists every code; lint findings, plan refusals, drift health findings and whoami
  checks are all ``Problem``s, and one verdict has one code (a connection that is not Connected is
  CR203 in lint, plan, drift, import and whoami alike).
- **Fields.** How values compare: an empty text column is null or "" (the same); ids, names and
  connectors compare without case (docs/dataverse.md §1.7). ``differences`` turns expected
  and actual field maps into the fields that differ: planner updates and drift both use it.
- **Principals.** A principal (service account, selector owner) may be given as a UPN, an Entra object
  id, an application (client) id or a systemuserid, compared without case (``resolve_principal``; the
  ``systemusers`` columns of docs/dataverse.md §3.9 and §6.4).
  Writes act as the service account when one is configured, never silently as the caller; without
  one, the caller writes (``pick_writer`` / ``writer``).
- **Connections.** Who owns a connection (``owner_user``, ``owner_label``, ``is_owner``), whether and how a
  principal may use it: the access verdict (``access``: owner, direct share, tenant, group verified through
  Microsoft Graph, group unverifiable, unreadable shares, none; docs/dataverse.md §4.5, §4.6, §4.8-§4.10),
  with the advice the platform allows (``share_advice``) and whether apply must grant it (``needs_grant``);
  whether it is Connected (docs/dataverse.md §4.4), and one way to show it (``describe_connection``).
- **Bindings.** The binding of a reference (``BindingIndex``: one lookup, case-insensitive), what it
  resolves to (a connection name, or a selector that must match exactly one connection of the
  reference's connector), and whether that connection may be bound (same connector, Connected, usable
  by the writer): ``judge_binding``.
- **Lost answers.** Whether a write whose answer was lost took effect, judged from its row read back
  (``write_landed``), and what that says of its whole change set (``change_set_landed``;
  docs/dataverse.md §3.12).
- **Downstream.** The mode of an environment, from its solution (``environment_mode``); which columns of
  an unmanaged layer are customizations rather than what binding leaves (``layer_customizations``); which
  of the solution's flows can be switched on, in which passes (children first), and why the others stay
  off (``activation_verdict``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.domain.model import (
    FLOW_OFF,
    FLOW_SUSPENDED,
    Binding,
    EnvironmentConfig,
    FlowSettings,
    LiveConnection,
    LiveEnvironment,
    LiveFlow,
    LiveReference,
    LiveSolution,
    LiveUser,
    Permission,
    Selector,
    connector_name,
)

# --------------------------------------------------------------------------- problems

ERROR = "error"
WARNING = "warning"
INFO = "info"
SEVERITIES = (ERROR, WARNING, INFO)
SEVERITY_RANK = {ERROR: 0, WARNING: 1, INFO: 2}


@dataclass(frozen=True)
class Code:
    """One problem code: its short name (usable in ``lint: ignore:`` too), severity and meaning."""

    code: str
    name: str
    severity: str
    summary: str


CODES: Mapping[str, Code] = {
    c.code: c
    for c in (
        # the config's names (lint)
        Code("CR100", "naming-template", ERROR, "the naming template in the config cannot be used"),
        Code("CR101", "naming-policy", ERROR, "display name does not follow the naming template"),
        Code("CR102", "random-suffix", WARNING, "logical or display name ends with a random five-hex suffix"),
        Code("CR103", "duplicate-connector", WARNING, "several references for the same connector in one solution"),
        Code("CR104", "replaced-reference", INFO,
             "a reference the config replaces is still in the environment (apply, or the next managed import, "
             "removes it)"),
        # references, their bindings and connections (lint; plan, drift, import and whoami for the shared ones)
        Code("CR200", "no-service-account", INFO, "no service account configured: owner checks skipped"),
        Code("CR201", "personal-connection", WARNING,
             "bound to a connection owned by someone other than the service account"),
        Code("CR202", "unbound", ERROR, "the reference has no connection in the environment"),
        Code("CR203", "connection-not-connected", ERROR, "bound to a connection whose status is not Connected"),
        Code("CR204", "connection-not-found", ERROR, "bound to a connection that does not exist in the environment"),
        Code("CR205", "connector-mismatch", ERROR, "bound to a connection of another connector"),
        Code("CR206", "binding-unresolved", ERROR, "a selector binding matches no connection or several"),
        Code("CR207", "unused-reference", WARNING, "no flow uses the reference"),
        Code("CR208", "multi-solution-reference", INFO, "flows of more than one solution use the reference"),
        Code("CR209", "fixed-by-apply", INFO,
             "the live binding has problems that the config's binding fixes when applied"),
        Code("CR210", "connection-not-usable", ERROR,
             "the config binds a connection the identity that writes neither owns nor has been shared"),
        Code("CR211", "flow-runs-as-person", WARNING,
             "an automated or scheduled flow acts as a personal account (the owner of a bound connection)"),
        Code("CR213", "group-share-unverified", WARNING,
             "the connection is shared with a group connref may not check the writer's membership of"),
        Code("CR214", "shares-unreadable", WARNING,
             "the connection's shares could not be read, so the writer's access is unverified"),
        # the identity that writes and the environment (plan and whoami)
        Code("CR300", "service-account-not-found", ERROR, "the service account has no user in the environment"),
        Code("CR301", "service-account-disabled", ERROR, "the service account's user is disabled"),
        Code("CR302", "cannot-act-as-service-account", ERROR,
             "the signed-in identity may not act on behalf of the service account"),
        Code("CR303", "writer-unknown", ERROR, "the identity that writes is unknown"),
        Code("CR304", "service-account-without-object-id", ERROR,
             "the service account has no Entra object id, so writes cannot act as it"),
        Code("CR310", "solution-not-found", ERROR, "the config's solution does not exist in the environment"),
        Code("CR311", "case-duplicates", ERROR, "several live references have the declared name, ignoring case"),
        Code("CR312", "connector-changed", ERROR, "the live reference is for another connector than declared"),
        Code("CR314", "replaced-connector-differs", ERROR,
             "a reference the config replaces is for another connector than the one replacing it"),
        Code("CR315", "moved-flow-cannot-restart", ERROR,
             "a flow that is on would have to be switched off to move it, and could not be switched on again"),
        Code("CR316", "flow-definition-unreadable", ERROR,
             "a flow using a replaced reference has a definition connref cannot read to move it"),
        Code("CR317", "keep-off-names-no-flow", ERROR,
             "flows.keep_off names a flow the environment does not have (by name or workflow id)"),
        # managed (downstream) environments, dependents and flows (plan)
        Code("CR313", "not-in-managed-solution", ERROR,
             "a declared reference is not in the environment's managed solution"),
        Code("CR320", "managed-field-differs", WARNING,
             "a managed reference's display name or description differs from the config (not changed downstream)"),
        Code("CR321", "unmanaged-layer", WARNING, "an unmanaged layer customizes a managed reference"),
        Code("CR322", "managed-not-pruned", INFO,
             "an undeclared reference of a managed solution is left to the solution"),
        Code("CR323", "delete-blocked", WARNING, "flows, apps or agents use a reference, so it is not deleted"),
        Code("CR330", "flow-cannot-be-switched-on", WARNING,
             "a flow of the solution stays off: it cannot be switched on"),
        Code("CR331", "flow-kept-off", INFO, "a flow of the solution stays off: the config keeps it off"),
    )
}


@dataclass(frozen=True)
class Problem:
    """One thing wrong, said the same way by every command: a stable ``code`` (``CODES``), its
    ``severity``, what is wrong (``message``) and what to do (``fix``); ``environment`` and ``subject``
    (a reference's logical name, or what else the problem is about) say where."""

    code: str
    severity: str
    message: str
    fix: str
    environment: str | None = None
    subject: str | None = None

    @property
    def name(self) -> str:
        known = CODES.get(self.code)
        return known.name if known else self.code

    @property
    def hint(self) -> str:
        """The same as ``fix`` (the name lint findings used first)."""
        return self.fix

    def text(self) -> str:
        """``message; fix``: the problem in one sentence."""
        return f"{self.message}; {self.fix}" if self.fix else self.message

    def line(self) -> str:
        """``ENV: subject: message; fix``: the readable one-line form plan refusals use."""
        where = "".join(f"{part}: " for part in (self.environment, self.subject) if part)
        return where + self.text()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: ``fix``, and ``hint`` with the same value (the name lint's JSON used first)."""
        return {
            "code": self.code,
            "name": self.name,
            "severity": self.severity,
            "environment": self.environment,
            "subject": self.subject,
            "message": self.message,
            "fix": self.fix,
            "hint": self.fix,
        }


def problem(code: str, message: str, fix: str, *, environment: str | None = None,
            subject: str | None = None) -> Problem:
    """A ``Problem`` with the severity ``CODES`` gives ``code``."""
    return Problem(code, CODES[code].severity, message, fix, environment, subject)


# --------------------------------------------------------------------------- fields

#: The managed fields of a reference, in the order a reader meets them.
FIELDS = ("display_name", "description", "connector", "connection", "owner")
_TEXT_FIELDS = frozenset({"display_name", "description"})


def text_value(value: str | None) -> str | None:
    """Dataverse returns an empty text column as null or as ""; they are the same value."""
    return value if value else None


def id_value(value: str | None) -> str | None:
    """Ids and names (connection names, systemuserids, logical names) compare without case."""
    return value.lower() if value else None


def normalise(field: str, value: str | None) -> str | None:
    """``value`` of ``field`` in the form two values are compared in."""
    if field in _TEXT_FIELDS:
        return text_value(value)
    if field == "connector":
        return connector_name(value) if value else None
    return id_value(value)


def same(field: str, a: str | None, b: str | None) -> bool:
    return normalise(field, a) == normalise(field, b)


def same_connector(a: str, b: str) -> bool:
    """``shared_x`` and ``/providers/Microsoft.PowerApps/apis/shared_x`` are one connector, in any case."""
    return connector_name(a) == connector_name(b)


@dataclass(frozen=True)
class Difference:
    """One field whose actual value differs from the expected one (both as given, not normalised)."""

    field: str
    expected: str | None
    actual: str | None

    def normalised(self) -> tuple[str | None, str | None]:
        return normalise(self.field, self.expected), normalise(self.field, self.actual)


def differences(expected: Mapping[str, str | None], actual: Mapping[str, str | None]) -> list[Difference]:
    """The fields of ``expected`` whose value differs from ``actual``'s once normalised, in
    ``expected``'s order. A field ``expected`` leaves out is not compared."""
    out: list[Difference] = []
    for f, value in expected.items():
        found = actual.get(f)
        # The same value as given is the same once normalised: most fields of most references are unchanged.
        if found != value and not same(f, value, found):
            out.append(Difference(f, value, found))
    return out


# --------------------------------------------------------------------------- principals


def principal_keys(user: LiveUser) -> frozenset[str]:
    """Every form a principal may be given in for ``user``, lower-cased: UPN, Entra object id,
    application (client) id, systemuserid."""
    values = (user.upn, user.object_id, user.application_id, user.systemuserid)
    return frozenset(v.strip().lower() for v in values if v)


def resolve_principal(principal: str | None, users: Iterable[LiveUser]) -> LiveUser | None:
    """The user ``principal`` names (UPN, object id, application id or systemuserid, without case), or
    None. An enabled user wins over a disabled one with the same key."""
    want = (principal or "").strip().lower()
    if not want:
        return None
    found = [u for u in users if want in principal_keys(u)]
    found.sort(key=lambda u: u.disabled)
    return found[0] if found else None


def pick_writer(service_account: str | None, caller: LiveUser | None,
                users: Iterable[LiveUser]) -> LiveUser | None:
    """The identity writes act as: the service account's user when one is configured (None when it is
    not among ``users``: never silently the caller), else the caller."""
    if service_account:
        return resolve_principal(service_account, users)
    return caller


def writer(service_account: str | None, live: LiveEnvironment) -> LiveUser | None:
    """The identity writes act as in ``live`` (the live reader picked it with ``pick_writer``)."""
    if service_account:
        return live.writer
    return live.writer or live.caller


def _same_user(a: LiveUser, b: LiveUser) -> bool:
    return a.systemuserid.lower() == b.systemuserid.lower()


def acts_as_other(caller: LiveUser | None, writer: LiveUser | None) -> bool:
    """Whether ``writer`` is someone other than the signed-in ``caller`` (an unknown caller counts as
    someone else, so writes still name the writer)."""
    if writer is None:
        return False
    return caller is None or not _same_user(caller, writer)


def impersonates(service_account: str | None, live: LiveEnvironment) -> bool:
    """Whether writes act as someone other than the signed-in identity (``CallerObjectId``)."""
    return bool(service_account) and acts_as_other(live.caller, live.writer)


def impersonated_object_id(service_account: str | None, live: LiveEnvironment) -> str | None:
    """The Entra object id writes send as ``CallerObjectId``, or None when the caller writes itself."""
    if not impersonates(service_account, live) or live.writer is None:
        return None
    return id_value(live.writer.object_id)


def identity_problems(env_name: str, service_account: str | None, live: LiveEnvironment) -> list[Problem]:
    """Why writes cannot act as the configured service account: it has no user, the user is disabled,
    the caller may not act on its behalf (prvActOnBehalfOfAnotherUser), or it has no Entra object id to
    send as ``CallerObjectId`` (docs/dataverse.md §3.10). Nothing without a service account."""
    if not service_account:
        return []
    w = live.writer
    if w is None:
        return [problem(
            "CR300",
            f"service account {service_account} not found among the users of environment {env_name}",
            "add it as a user (application users for service principals) or fix service_account",
            environment=env_name,
        )]
    out: list[Problem] = []
    if w.disabled:
        out.append(problem(
            "CR301", f"service account {service_account} is disabled in environment {env_name}",
            "enable the user in this environment, or fix service_account", environment=env_name,
        ))
    caller = live.caller
    if impersonates(service_account, live):
        if caller is not None and not live.caller_can_impersonate:
            out.append(problem(
                "CR302", f"{caller.describe()} may not act as {service_account}",
                "give it the Delegate security role (privilege prvActOnBehalfOfAnotherUser) in environment "
                f"{env_name}",
                environment=env_name,
            ))
        if not w.object_id:
            out.append(problem(
                "CR304", f"service account {service_account} has no Entra object id in environment {env_name}, "
                "so writes cannot act as it",
                "use an account with an Entra identity (a user, or the application user of a service "
                "principal)",
                environment=env_name,
            ))
    return out


# --------------------------------------------------------------------------- connections

CONNECTED = "connected"
#: The role a principal needs on a connection to bind it ("Can use" in the maker portal; docs/dataverse.md §4.5).
SHARE_ROLE = "CanView"


def owner_user(conn: LiveConnection, live: LiveEnvironment) -> LiveUser | None:
    """The Dataverse user who owns ``conn``: the one whose object id created it (``createdBy.id``)."""
    return live.user_by_object_id(conn.owner_object_id)


def owner_label(conn: LiveConnection, live: LiveEnvironment) -> str | None:
    """A connection's owner as people name it (docs/dataverse.md §4.4): the owner's UPN (or full name)
    when the user is known, else the name the connections API gave, else the object id; None when
    nothing is known."""
    user = owner_user(conn, live)
    if user is not None and (user.upn or user.fullname):
        return user.upn or user.fullname
    return conn.owner_name or conn.owner_object_id or None


def is_owner(principal: str, conn: LiveConnection, live: LiveEnvironment) -> bool:
    """True when ``principal`` (any form ``resolve_principal`` takes) names the owner of ``conn``, or
    matches the owner name or object id the connections API gave."""
    want = principal.strip().lower()
    if not want:
        return False
    user = owner_user(conn, live)
    if user is not None and want in principal_keys(user):
        return True
    return want in {(conn.owner_object_id or "").lower(), (conn.owner_name or "").lower()}


def can_use(user: LiveUser | None, conn: LiveConnection, live: LiveEnvironment | None = None) -> bool:
    """The user may use the connection: owner, or shared with it directly, through its tenant or a group it
    is known to belong to (``access``). Without ``live``, only owner and direct shares count."""
    if user is None:
        return False
    if live is None:
        live = LiveEnvironment("", None, None, (), (conn,), ())
    return access(conn, user, live).granted


# How a principal came to use a connection (docs/dataverse.md §4.5, §4.8-§4.10): the access verdict.
OWNER = "owner"
DIRECT = "direct share"
TENANT = "tenant"
GROUP = "group"
GROUP_UNVERIFIED = "unverified group"
UNVERIFIED = "unverified"
NO_ACCESS = "none"
_GRANTED = frozenset({OWNER, DIRECT, TENANT, GROUP})


@dataclass(frozen=True)
class Access:
    """Whether and how ``writer`` may use a connection: ``how`` (one of OWNER, DIRECT, TENANT, GROUP,
    GROUP_UNVERIFIED, UNVERIFIED, NO_ACCESS), the role that gives it, the share it comes through (a group's
    id and name), and for the unverified kinds why connref could not check."""

    how: str
    role: str | None = None
    via: str | None = None
    reason: str | None = None

    @property
    def granted(self) -> bool:
        """Known to be allowed."""
        return self.how in _GRANTED

    @property
    def allowed(self) -> bool:
        """Allowed, or possibly allowed and not checkable (bound with a warning)."""
        return self.how != NO_ACCESS

    def describe(self) -> str:
        """How access was established, for whoami: ``owner``, ``direct share (CanView)``, ..."""
        role = f" ({self.role})" if self.role and self.how != OWNER else ""
        via = f" {self.via}" if self.via else ""
        if self.how == GROUP_UNVERIFIED:
            return f"shared with group{via}{role}; membership not verified ({self.reason})"
        if self.how == UNVERIFIED:
            return f"not verified ({self.reason})"
        if self.how == GROUP:
            return f"group{via}{role}"
        return f"{self.how}{role}"


def _group_label(p: Permission) -> str:
    return f"{p.display_name} ({p.principal_id})" if p.display_name else p.principal_id


def access(conn: LiveConnection, writer: LiveUser, live: LiveEnvironment) -> Access:
    """How ``writer`` may use ``conn``, from the shares the permissions route served (``conn.shares``; the
    list's own permissions when they were not read): owner; a share naming the writer's Entra object id (a
    user or a service principal); a share with the tenant; a share with a group the writer belongs to
    (``live.group_membership``, as Microsoft Graph answered). A group share whose membership could not be
    read is GROUP_UNVERIFIED; shares that could not be read at all are UNVERIFIED; else NO_ACCESS. Any role
    is enough to use a connection (Owner and CanEdit imply CanView)."""
    oid = id_value(writer.object_id)
    if not oid:
        return Access(NO_ACCESS)
    if id_value(conn.owner_object_id) == oid:
        return Access(OWNER, "Owner")
    shares = conn.shares if conn.shares is not None else conn.permissions
    for p in shares:
        if id_value(p.principal_id) == oid and (p.principal_type or "") not in ("Group", "Tenant"):
            return Access(OWNER if p.role == "Owner" else DIRECT, p.role)
    for p in shares:
        if p.principal_type == "Tenant":
            return Access(TENANT, p.role, "the whole tenant")
    groups = [p for p in shares if p.principal_type == "Group"]
    unknown: list[Permission] = []
    for p in groups:
        member = live.group_membership.get(p.principal_id.lower())
        if member:
            return Access(GROUP, p.role, _group_label(p))
        if member is None:
            unknown.append(p)
    if unknown:
        return Access(GROUP_UNVERIFIED, unknown[0].role, ", ".join(_group_label(p) for p in unknown),
                      live.group_check or "membership not read")
    if conn.shares is None and conn.shares_refused:
        return Access(UNVERIFIED, reason=conn.shares_refused)
    return Access(NO_ACCESS)


def is_connected(conn: LiveConnection) -> bool:
    """The connection's first status is Connected (else flows using it fail; docs/dataverse.md §4.4)."""
    return (conn.status or "").strip().lower() == CONNECTED


def connection_label(name: str, display_name: str | None, owner: str | None) -> str:
    """``"SharePoint svc" (owner svc-flows@contoso.com, 0f3a…)``: readable first, the name to copy last."""
    label = f'"{display_name}"' if display_name else name
    return f"{label} (owner {owner or 'unknown'}, {name})"


def describe_connection(conn: LiveConnection, live: LiveEnvironment) -> str:
    return connection_label(conn.name, conn.display_name, owner_label(conn, live))


# --------------------------------------------------------------------------- bindings


class BindingIndex:
    """The bindings of one environment, looked up by logical name without case in one step
    (Dataverse compares logical names without case: docs/dataverse.md §1.7)."""

    def __init__(self, bindings: Mapping[str, Binding] | None = None) -> None:
        self._by_key = {name.lower(): b for name, b in (bindings or {}).items()}

    @classmethod
    def of(cls, env: EnvironmentConfig | None) -> BindingIndex:
        return cls(env.bindings if env is not None else None)

    def get(self, logical_name: str) -> Binding | None:
        return self._by_key.get(logical_name.lower())

    def __contains__(self, logical_name: object) -> bool:
        return isinstance(logical_name, str) and logical_name.lower() in self._by_key


def governed_fields(env: EnvironmentConfig, logical_name: str) -> frozenset[str]:
    """The fields of a declared reference the config sets in ``env`` (an apply brings them to the config):
    display name, description and connector always, the connection when ``env`` binds it, the owner when
    ``env`` names a service account. The others (an unbound reference's connection, the owner without a
    service account) are left as they are, by the planner and by the state's refresh."""
    fields = {"display_name", "description", "connector"}
    if BindingIndex.of(env).get(logical_name) is not None:
        fields.add("connection")
    if env.service_account:
        fields.add("owner")
    return frozenset(fields)


def selects(selector: Selector, conn: LiveConnection, connector: str, live: LiveEnvironment) -> bool:
    """Whether ``selector`` names ``conn`` for a reference of ``connector``: same connector, owned by
    ``selector.owner`` (``is_owner``) and, when given, with that display name (without case)."""
    display = selector.display_name
    return (
        same_connector(conn.connector, connector)
        and is_owner(selector.owner, conn, live)
        and (display is None or (conn.display_name or "").lower() == display.lower())
    )


def selector_matches(selector: Selector, connector: str, live: LiveEnvironment) -> list[LiveConnection]:
    """The connections ``selector`` names (``selects``), sorted by display name, then name. Many
    references share one selector: each is resolved once per environment (``live.selector_memo``)."""
    display = selector.display_name.lower() if selector.display_name is not None else None
    key = (selector.owner.strip().lower(), "" if display is None else "=" + display, connector_name(connector))
    memo = live.selector_memo
    if key not in memo:
        memo[key] = sorted((c for c in live.connections_of(connector) if selects(selector, c, connector, live)),
                           key=_by_display_name)
    return list(memo[key])


def _by_display_name(c: LiveConnection) -> tuple[str, str]:
    return (c.display_name or "").lower(), c.name


@dataclass(frozen=True)
class Resolution:
    """What a binding resolved to: the connection (None when there is none, or no single one) and the
    problems found on the way. ``usable`` is the connection when nothing is wrong."""

    connection: LiveConnection | None
    problems: tuple[Problem, ...] = ()
    warnings: tuple[Problem, ...] = ()

    @property
    def usable(self) -> LiveConnection | None:
        return self.connection if not self.problems else None


def find_connection(binding: Binding, connector: str, live: LiveEnvironment, *,
                    subject: str | None = None) -> Resolution:
    """The one connection ``binding`` names in ``live`` (no checks on it): CR204 when a named
    connection is missing, CR206 when a selector matches none or several."""
    where: dict[str, Any] = {"environment": live.name, "subject": subject}
    if not isinstance(binding, Selector):
        conn = live.connection(binding)
        if conn is not None:
            return Resolution(conn)
        return Resolution(None, (not_found(binding, live, subject=subject),))
    matches = selector_matches(binding, connector, live)
    if len(matches) == 1:
        return Resolution(matches[0])
    want = connector_name(connector)
    if matches:
        listing = "; ".join(describe_connection(c, live) for c in matches)
        found = problem(
            "CR206", f"selector {binding.describe()} matches {len(matches)} {want} connections",
            f"add display_name to pick one, or bind by name. Candidates: {listing}", **where,
        )
    else:
        candidates = sorted(live.connections_of(connector), key=_by_display_name)
        listing = "; ".join(describe_connection(c, live) for c in candidates) or "none"
        note = live.connections_visibility_note()
        found = problem(
            "CR206",
            f"selector {binding.describe()} matches no {want} connection in environment {live.name}"
            + (f" ({note})" if note else "") + f". {want} connections: {listing}",
            "change the selector, or bind by connection name", **where,
        )
    return Resolution(None, (found,))


def not_found(name: str, live: LiveEnvironment, *, subject: str | None = None) -> Problem:
    """CR204: connection ``name`` is not in ``live`` (saying why it may be invisible, when it may be)."""
    note = live.connections_visibility_note()
    return problem(
        "CR204",
        f"connection {name} not found in environment {live.name}" + (f" ({note})" if note else ""),
        "bind it to an existing connection (connref import shows the current ones) or create the "
        "connection first",
        environment=live.name, subject=subject,
    )


def connection_problems(conn: LiveConnection, connector: str, live: LiveEnvironment, *,
                        subject: str | None = None) -> list[Problem]:
    """What makes ``conn`` unfit for a reference of ``connector`` whoever binds it: another connector
    (CR205), a status other than Connected (CR203)."""
    out = [connector_mismatch(conn, connector, live, subject=subject)]
    if not is_connected(conn):
        out.append(not_connected(conn, live, subject=subject))
    return [p for p in out if p is not None]


def connector_mismatch(conn: LiveConnection, connector: str, live: LiveEnvironment, *,
                       subject: str | None = None) -> Problem | None:
    """CR205 when ``conn`` is for another connector than ``connector``, else None."""
    if same_connector(conn.connector, connector):
        return None
    want = connector_name(connector)
    return problem(
        "CR205", f"connection {describe_connection(conn, live)} is for connector "
        f"{connector_name(conn.connector)}, but the reference is for {want}",
        f"bind it to a {want} connection", environment=live.name, subject=subject,
    )


def not_connected(conn: LiveConnection, live: LiveEnvironment, *, subject: str | None = None) -> Problem:
    return problem(
        "CR203", f"connection {describe_connection(conn, live)} has status {conn.status or 'unknown'}, "
        "not Connected",
        "repair it (sign in again) in the maker portal or bind another connection",
        environment=live.name, subject=subject,
    )


#: What lets connref read group membership in Microsoft Graph (docs/dataverse.md §4.10).
GRAPH_PERMISSION = "GroupMember.Read.All (application permission, with admin consent)"


def share_advice(writer: LiveUser) -> str:
    """What the platform allows to give ``writer`` the use of someone's connection (docs/dataverse.md §4.9):
    a service principal's user may be shared with directly (CanView, 'Can use'); a person may not be shared
    with explicitly (on the stricter reading), but a security group they belong to may, or they sign in and
    create their own connection. ``grant_access: true`` makes apply share it."""
    who = writer.describe()
    if writer.application_id:
        return (f"share it with {who} (the application user of service principal {writer.object_id}) with the "
                f"{SHARE_ROLE} ('Can use') permission, or set grant_access: true so apply shares it, or bind a "
                f"connection {who} owns")
    return (f"share it with a security group {who} belongs to ({SHARE_ROLE}), or sign in as {who} and create "
            f"the connection, then bind that one (connections can be explicitly shared with users only when "
            "they represent a service principal; docs/service-account.md)")


def access_problem(conn: LiveConnection, writer: LiveUser | None, live: LiveEnvironment, *,
                   service_account: str | None, subject: str | None = None,
                   grant: bool = False) -> Problem | None:
    """Why ``writer`` may not bind ``conn`` (Dataverse requires the identity that sets ``connectionid``
    to own the connection or have it shared: docs/dataverse.md §4.6, §5.3), from the access verdict
    (``access``): CR210 when it has no access (None with ``grant``: apply shares it), CR213 / CR214 (warnings)
    when access could not be verified, CR303 when the writer is unknown. None when it may, and None when the
    writer is a configured service account that was not found (``identity_problems`` says so once)."""
    if writer is None:
        if service_account:
            return None
        return problem("CR303", "the identity that writes is unknown, so its access can't be checked",
                       "set service_account, or sign in as a user of the environment",
                       environment=live.name, subject=subject)
    verdict = access(conn, writer, live)
    who = writer.describe()
    where: dict[str, Any] = {"environment": live.name, "subject": subject}
    if verdict.how == GROUP_UNVERIFIED:
        return problem(
            "CR213", f"connection {describe_connection(conn, live)} is shared with group {verdict.via}; connref "
            f"could not check that {who}, which writes the binding, is a member ({verdict.reason})",
            f"grant the signed-in application {GRAPH_PERMISSION} in Microsoft Graph so connref can check, or "
            f"share the connection with {who} directly", **where)
    if verdict.how == UNVERIFIED:
        return problem(
            "CR214", f"the shares of connection {describe_connection(conn, live)} could not be read "
            f"({verdict.reason}), so connref could not check that {who} may use it",
            "register the application as a Power Platform management app (New-PowerAppManagementApp) so "
            "connref can read every connection's shares", **where)
    if verdict.allowed or grant:
        return None
    return problem(
        "CR210", f"connection {describe_connection(conn, live)} is owned by "
        f"{owner_label(conn, live) or 'someone else'} and not shared with {who}, which writes the binding",
        share_advice(writer), **where)


def needs_grant(conn: LiveConnection, writer: LiveUser | None, live: LiveEnvironment) -> bool:
    """Whether apply must share ``conn`` with ``writer`` before binding it (``grant_access``): the writer is
    known and has no access (docs/dataverse.md §4.8)."""
    return writer is not None and bool(writer.object_id) and access(conn, writer, live).how == NO_ACCESS


def judge_binding(binding: Binding, connector: str, writer: LiveUser | None, live: LiveEnvironment, *,
                  service_account: str | None, subject: str | None = None, grant: bool = False) -> Resolution:
    """Resolve ``binding`` to one connection and check it as plan does before writing: it exists (or
    the selector matches exactly one), is for ``connector``, is Connected, and ``writer`` may use it (with
    ``grant``, a connection it has no access to is fine: apply shares it). Warnings (access that could not be
    verified) go in ``warnings``; they do not stop the binding."""
    found = find_connection(binding, connector, live, subject=subject)
    if found.connection is None:
        return found
    conn = found.connection
    problems = connection_problems(conn, connector, live, subject=subject)
    warnings: list[Problem] = []
    checked = access_problem(conn, writer, live, service_account=service_account, subject=subject, grant=grant)
    if checked is not None:
        (problems if checked.severity == ERROR else warnings).append(checked)
    return Resolution(conn, tuple(problems), tuple(warnings))


def bound_connections(references: Mapping[str, Any], bindings: BindingIndex,
                      live: LiveEnvironment) -> list[LiveConnection]:
    """The connections the bindings of ``references`` (logical name -> a declared reference with a
    ``connector``) resolve to in ``live``, each once: whose shares the live reader reads (docs/dataverse.md
    §4.8)."""
    found: dict[str, LiveConnection] = {}
    # Many references share a binding (one service-account connection per connector): each binding and
    # connector is looked up once, not once per reference.
    tried: set[tuple[Binding, str]] = set()
    for name, ref in references.items():
        binding = bindings.get(name)
        if binding is None or (binding, ref.connector) in tried:
            continue
        tried.add((binding, ref.connector))
        conn = find_connection(binding, ref.connector, live).connection
        if conn is not None:
            found.setdefault(conn.name.lower(), conn)
    return list(found.values())


def connection_health(name: str | None, live: LiveEnvironment, *, subject: str | None = None) -> Problem | None:
    """What is wrong with the connection a reference is bound to now: missing (CR204) or not
    Connected (CR203); None when unbound or healthy."""
    if not name:
        return None
    conn = live.connection(name)
    if conn is None:
        return not_found(name, live, subject=subject)
    return None if is_connected(conn) else not_connected(conn, live, subject=subject)


def sort_problems(problems: Iterable[Problem]) -> list[Problem]:
    """Problems without an environment first, then by environment, severity, subject and code."""
    return sorted(
        problems,
        key=lambda p: (
            p.environment is not None,
            (p.environment or "").lower(),
            SEVERITY_RANK.get(p.severity, 9),
            (p.subject or "").lower(),
            p.code,
            p.message,
        ),
    )


# --------------------------------------------------------------------------- writes whose answer was lost

WRITTEN = "written"
NOT_WRITTEN = "not_written"
UNKNOWN = "unknown"


def write_landed(action: str, *, logical_name: str, etag: str | None, expected: Mapping[str, str | None],
                 found: LiveReference | None) -> bool | None:
    """Whether one write of a change set whose answer was lost took effect, from its row read back
    (``found``: the row with the write's id, None when there is none; docs/dataverse.md §3.12).

    ``action`` is ``create``, ``update`` or ``delete`` (any other: None); ``etag`` the ETag the write was
    planned with; ``expected`` the fields an update sets (``display_name``, ``description``, ``connection``,
    ``owner`` as a systemuserid). True: it was written (a created row exists; an updated row carries the
    new values under another ETag; a deleted row is gone). False: it was not (no created row; the row is
    still at the planned ETag). None: the row cannot tell (it changed in another way since, or is gone
    after an update)."""
    if action == "create":
        if found is None:
            return False
        return True if same("logical_name", found.logical_name, logical_name) else None
    if action == "delete":
        if found is None:
            return True
        return False if etag and found.etag == etag else None
    if action != "update" or found is None:
        return None
    if etag and found.etag == etag:
        return False
    actual = {"display_name": found.display_name, "description": found.description,
              "connection": found.connection, "owner": found.owner_id}
    return None if differences(expected, actual) else True


def flow_write_landed(*, etag: str | None, expected: Mapping[str, Any],
                      found: Mapping[str, Any] | None) -> bool | None:
    """Whether a write to a flow's row whose answer was lost took effect (its state, or its definition), from
    the row read back (``found``, the service's row with its ``@odata.etag``; None when there is none;
    docs/dataverse.md §3.12). True: the row carries every value the write set (``expected``). False: it does
    not, and is still at the ETag the write was sent with. None: the row cannot tell (gone, or changed in
    another way since)."""
    if found is None:
        return None
    if all(found.get(k) == v for k, v in expected.items()):
        return True
    if etag and found.get("@odata.etag") == etag:
        return False
    return None


def change_set_landed(verdicts: Sequence[bool | None]) -> str:
    """The fate of an atomic change set (docs/dataverse.md §3.7) from what its writes' rows tell
    (``write_landed``): ``WRITTEN`` when some write was written and none not, ``NOT_WRITTEN`` when some was
    not and none was, else ``UNKNOWN`` (nothing tells, or the rows disagree: someone else wrote them since)."""
    told = [v for v in verdicts if v is not None]
    if told and all(told):
        return WRITTEN
    if told and not any(told):
        return NOT_WRITTEN
    return UNKNOWN


# --------------------------------------------------------------------------- environments, dependents, flows
#
# The mode of an environment follows its solution (docs/dataverse.md §2.6): managed downstream (bind, owner,
# switch flows on; everything else reported), unmanaged in development. What blocks a delete is what uses the
# reference (docs/dataverse.md §2.7). A flow of the solution that is off can be switched on when every
# reference it uses is bound to an existing, Connected connection the writer owns or has shared
# (docs/dataverse.md §5.3, §5.8), after its children (docs/dataverse.md §5.6).

UNMANAGED = "unmanaged"
MANAGED = "managed"
#: Columns a downstream environment is expected to set on a managed reference: a layer that changes only
#: these is what binding leaves, not a customization to report (docs/dataverse.md §2.6).
BINDING_COLUMNS = frozenset({"connectionid", "_ownerid_value", "ownerid", "owninguser", "_owninguser_value"})
#: How a person reads the columns an unmanaged layer changes.
COLUMN_LABELS = {"connectionreferencedisplayname": "display name", "description": "description",
                 "connectionid": "connection", "_ownerid_value": "owner", "ownerid": "owner"}


def environment_mode(solution: LiveSolution | None) -> str:
    """The mode follows the solution: managed (downstream: bind, owner, switch flows on; everything else is
    reported) or unmanaged (development: create, rename, add, prune). No solution: unmanaged (planning
    refuses it anyway)."""
    return MANAGED if solution is not None and solution.managed else UNMANAGED


def layer_customizations(columns: Iterable[str]) -> tuple[str, ...]:
    """The columns of an unmanaged layer that are customizations (not the binding or the owner), as people
    read them; empty when the layer only holds what binding a managed reference leaves."""
    out = {COLUMN_LABELS.get(c.lower(), c) for c in columns if c.lower() not in BINDING_COLUMNS}
    return tuple(sorted(out))


#: The fields of a managed reference that come with its solution: connref reports a difference, never writes
#: it downstream (docs/dataverse.md §2.6).
SOLUTION_FIELDS = ("display_name", "description")


def _quoted(value: str | None) -> str:
    """A text value as a report quotes it: ``"SharePoint"``, or ``empty``."""
    return json.dumps(value, ensure_ascii=False) if value else "empty"


def managed_field_problems(ref: LiveReference, *, display_name: str | None, description: str | None,
                           solution: str, environment: str) -> list[Problem]:
    """CR320 for each field of a managed reference (``SOLUTION_FIELDS``) that differs from the config: it comes
    with the solution, so the fix is in development (docs/dataverse.md §2.6)."""
    out = []
    for label, live_value, wanted in (("display name", ref.display_name, display_name),
                                      ("description", ref.description, description)):
        if not same("display_name", live_value, wanted):
            out.append(problem(
                "CR320",
                f"the {label} is {_quoted(live_value)} here but {_quoted(wanted)} in the config; the reference is "
                "part of a managed solution, so connref does not change it here (a change made here would stay "
                "as an unmanaged layer over the solution)",
                f"change it in development and ship it with the next version of {solution}",
                environment=environment, subject=ref.logical_name,
            ))
    return out


def unmanaged_layer_problem(ref: LiveReference, layer_columns: Iterable[str], *, environment: str) -> Problem | None:
    """CR321 when an unmanaged layer over a managed reference customizes more than its binding and owner
    (``layer_customizations``), else None (docs/dataverse.md §2.6)."""
    columns = layer_customizations(layer_columns)
    if not columns:
        return None
    return problem(
        "CR321",
        f"an unmanaged layer over the managed solution changes its {', '.join(columns)} in environment "
        f"{environment}, hiding what the solution ships",
        "remove the active customization (the reference's solution layers: Remove active customizations) and "
        "make the change in development",
        environment=environment, subject=ref.logical_name,
    )


# --------------------------------------------------------------------------- switching flows on


@dataclass(frozen=True)
class Activation:
    """A flow to switch on, in pass ``pass_number`` (its children are on, or switched on in earlier passes)."""

    flow: LiveFlow
    pass_number: int


@dataclass(frozen=True)
class HeldFlow:
    """A flow of the solution that stays off: ``kind`` "held" (``reasons`` say why it cannot be switched on),
    "kept_off" (the config keeps it off) or "suspended"."""

    flow: LiveFlow
    kind: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class ActivationVerdict:
    activations: tuple[Activation, ...]
    held: tuple[HeldFlow, ...]


def activation_verdict(
    solution_flows: Iterable[LiveFlow],
    all_flows: Mapping[str, LiveFlow],
    *,
    bound_after: Mapping[str, str | None],
    connection: Callable[[str], LiveConnection | None],
    describe: Callable[[LiveConnection], str],
    writer: LiveUser | None,
    writer_label: str,
    settings: FlowSettings,
    live: LiveEnvironment | None = None,
    granted: Collection[str] = (),
    restore: Collection[str] = (),
    replaced: Mapping[str, str] | None = None,
) -> ActivationVerdict:
    """Which of the solution's flows that are off can be switched on once the plan's bindings are written,
    in passes (a flow goes in the pass after the last of its children; docs/dataverse.md §5.6), and which
    stay off and why.

    ``restore``: ids of flows connref itself switches off (or an earlier apply switched off) to edit them
    (docs/dataverse.md §5.9): they were on, so they are switched on again whatever ``settings`` say.

    ``bound_after``: lower-case logical name -> the connection name each reference will have after apply
    (None: unbound); a name missing from it is a reference not in the environment. ``all_flows``: every
    flow of the environment by lower-case id (children may live outside the solution). A flow can be
    switched on when every reference it uses is bound to an existing, Connected connection the writer owns
    or has shared (directly, or through the tenant or a group, as ``can_use`` judges it with ``live``; or
    that apply shares with it first: ``granted``, lower-case connection names; docs/dataverse.md §5.3, §5.8,
    §4.8), every child flow is on or switched on before it, and the config does not keep it off.
    ``replaced``: lower-case logical name -> the reference the config replaces it by (``replaces:``), so a
    flow held by an unbound replaced reference is told what will move it, not to bind it."""
    candidates, held = _off_flows(solution_flows, settings, {r.lower() for r in restore})
    blocked: dict[str, tuple[str, ...]] = {}
    for flow in candidates:
        reasons = _reference_reasons(flow, bound_after, connection, describe,
                                     lambda c: c.name.lower() in granted or can_use(writer, c, live), writer_label,
                                     replaced or {})
        if reasons:
            blocked[flow.id] = reasons
    activations, waiting = _passes([f for f in candidates if f.id not in blocked], all_flows)
    on = {fid for fid, f in all_flows.items() if f.state not in (FLOW_OFF, FLOW_SUSPENDED)}
    on |= {a.flow.id.lower() for a in activations}
    for f in waiting:
        names = []
        for child in f.children:
            if child.lower() in on:
                continue
            c = all_flows.get(child.lower())
            names.append(f'runs child flow "{c.name}", which stays off' if c is not None
                         else f"runs child flow {child}, which is not in the environment")
        blocked[f.id] = tuple(names) or ("its child flows run each other in a loop",)
    held += [HeldFlow(f, "held", blocked[f.id]) for f in candidates if f.id in blocked]
    held.sort(key=lambda h: (h.flow.name.lower(), h.flow.id))
    return ActivationVerdict(tuple(activations), tuple(held))


def _off_flows(solution_flows: Iterable[LiveFlow], settings: FlowSettings,
               restore: Collection[str]) -> tuple[list[LiveFlow], list[HeldFlow]]:
    """The solution's flows that are off and may be switched on, and those that stay off whatever the
    bindings: suspended, or kept off by the config (unless connref switched them off: ``restore``)."""
    candidates: list[LiveFlow] = []
    held: list[HeldFlow] = []
    for flow in sorted(solution_flows, key=lambda f: (f.name.lower(), f.id)):
        if flow.state == FLOW_OFF and flow.id.lower() in restore:
            candidates.append(flow)
        elif flow.state == FLOW_SUSPENDED:
            held.append(HeldFlow(flow, "suspended",
                                 ("it is suspended: connref switches on only flows that are off",)))
        elif flow.state != FLOW_OFF:
            continue
        elif not settings.activate:
            held.append(HeldFlow(flow, "kept_off",
                                 ("flow activation is off for this environment (flows.activate)",)))
        elif settings.keeps_off(flow.id, flow.name):
            held.append(HeldFlow(flow, "kept_off", ("the config keeps it off (flows.keep_off)",)))
        elif not flow.definition_readable:
            held.append(HeldFlow(flow, "held", ("its definition could not be read, so which references it uses, "
                                                "and whether they are bound, is unknown: open it in the flow "
                                                "designer, save it, and plan again",)))
        else:
            candidates.append(flow)
    return candidates, held


def _passes(ready_flows: list[LiveFlow], all_flows: Mapping[str, LiveFlow]) -> tuple[list[Activation], list[LiveFlow]]:
    """Passes of flows to switch on: each flow in the pass after the last of its children (children that
    are on already count as done); the flows whose children never come on are returned as waiting."""
    on = {fid for fid, f in all_flows.items() if f.state not in (FLOW_OFF, FLOW_SUSPENDED)}
    waiting = list(ready_flows)
    activations: list[Activation] = []
    number = 0
    while waiting:
        ready = [f for f in waiting if all(c.lower() in on for c in f.children)]
        if not ready:
            break
        number += 1
        activations.extend(Activation(f, number) for f in ready)
        on.update(f.id.lower() for f in ready)
        waiting = [f for f in waiting if f not in ready]
    return activations, waiting


def _reference_reasons(
    flow: LiveFlow,
    bound_after: Mapping[str, str | None],
    connection: Callable[[str], LiveConnection | None],
    describe: Callable[[LiveConnection], str],
    usable: Callable[[LiveConnection], bool],
    writer_label: str,
    replaced: Mapping[str, str],
) -> tuple[str, ...]:
    reasons: list[str] = []
    for ln in flow.references:
        key = ln.lower()
        if key not in bound_after:
            reasons.append(f"it uses reference {ln}, which is not in the environment")
            continue
        name = bound_after[key]
        if not name:
            kept = replaced.get(key)
            reasons.append(f"reference {ln} has no connection: bind it in the config" if kept is None else
                           f"reference {ln} has no connection, and the config replaces it by {kept} (which may not "
                           f"bind it): the flow uses {kept} once it is moved onto it (in development; a managed "
                           "flow comes moved with the next import of the solution)")
            continue
        conn = connection(name)
        if conn is None:
            reasons.append(f"reference {ln} is bound to connection {name}, which is not in the environment")
        elif not is_connected(conn):
            reasons.append(f"connection {describe(conn)} of reference {ln} has status {conn.status or 'unknown'}, "
                           "not Connected")
        elif not usable(conn):
            reasons.append(f"connection {describe(conn)} of reference {ln} is neither owned by nor shared with "
                           f"{writer_label}, which switches flows on: share it with {writer_label} or bind a "
                           f"connection {writer_label} owns")
    return tuple(reasons)
