"""Who a cloud flow runs as, and why: the verdict, decided once (pure; docs/dataverse.md §5.4).

A flow's triggers and actions call connectors through the entries of its definition (``clientdata``,
docs/dataverse.md §5.2). For each entry:

- an **instant** flow (a ``Request`` trigger: a button, Power Apps, Copilot Studio) whose entry says
  ``runtimeSource: invoker`` uses the connection of **whoever runs it** (the "run-only users" setting);
- otherwise, and always for **automated** and **scheduled** flows, it uses the connection bound to the
  entry's reference, so it acts as **the owner of that connection**, whoever built or owns the flow;
- an entry of an older flow that binds a connection directly acts as that connection's owner too;
- an unbound reference, or one bound to a connection that does not exist, runs as nobody: the flow fails.

``explain_flow`` answers this per entry, with the flow's trigger kind, owner and state, and flags an
automated or scheduled flow that acts as a personal account (CR211): an owner who is not the service
account, or, with no service account configured, a person rather than an application user. That flow
stops when the person's sign-in expires or they leave.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.domain.model import FlowConnection, LiveConnection, LiveEnvironment, LiveFlow, LiveUser
from reconciler.domain.rules import Problem, describe_connection, is_owner, owner_label, owner_user, problem

#: Trigger kinds as explain names them: LiveFlow.trigger says ``recurrence`` for scheduled.
TRIGGERS = {"manual": "manual", "recurrence": "scheduled", "scheduled": "scheduled", "automated": "automated"}
TRIGGER_WORDS = {"manual": "manual (instant)", "scheduled": "scheduled", "automated": "automated",
                 "unknown": "unknown (no trigger in the definition)"}

INVOKER = "invoker"  # whoever runs the flow
OWNER = "connection_owner"  # the owner of the bound connection
UNBOUND = "unbound"  # the reference has no connection: nobody
MISSING = "missing"  # the reference or its connection does not exist: nobody


@dataclass(frozen=True)
class Identity:
    """Who the triggers and actions using one entry of the definition act as (``kind``: ``invoker``,
    ``connection_owner``, ``unbound`` or ``missing``), through which reference and connection, and why.
    ``personal``: the principal is a person's account rather than the service account or an application
    (None when it cannot be told, or nobody acts)."""

    entry: FlowConnection
    kind: str
    why: str
    reference: str | None = None
    connection: LiveConnection | None = None
    connection_label: str | None = None
    principal: str | None = None
    personal: bool | None = None


@dataclass(frozen=True)
class FlowRunAs:
    """One flow explained: its trigger kind, owner and state, who each entry acts as, and the problems."""

    flow: LiveFlow
    trigger: str
    owner: str | None
    identities: tuple[Identity, ...]
    problems: tuple[Problem, ...]

    @property
    def principals(self) -> tuple[str, ...]:
        """Everyone the flow acts as, each once (``the person who runs it`` for invoker entries)."""
        seen: dict[str, str] = {}
        for i in self.identities:
            who = i.principal if i.kind == OWNER else ("the person who runs it" if i.kind == INVOKER else None)
            if who:
                seen.setdefault(who.lower(), who)
        return tuple(seen.values())


def trigger_of(flow: LiveFlow) -> str:
    """``manual``, ``scheduled``, ``automated`` or ``unknown``."""
    return TRIGGERS.get(flow.trigger or "", "unknown")


def _personal(conn: LiveConnection, live: LiveEnvironment, service_account: str | None) -> bool | None:
    if service_account:
        return not is_owner(service_account, conn, live)
    user: LiveUser | None = owner_user(conn, live)
    if user is None:
        return None
    return not user.application_id


def _bound(entry: FlowConnection, live: LiveEnvironment) -> tuple[str | None, str | None, str]:
    """(reference logical name, connection name, what is missing: "" / "reference" / "binding")."""
    if entry.logical_name is None:
        return None, entry.connection_name, ""
    ref = next((r for r in live.references if r.logical_name.lower() == entry.logical_name.lower()), None)
    if ref is None:
        return entry.logical_name, None, "reference"
    return ref.logical_name, ref.connection, "" if ref.connection else "binding"


def identity(entry: FlowConnection, trigger: str, live: LiveEnvironment, service_account: str | None) -> Identity:
    """Who the operations using ``entry`` act as, in a flow with this ``trigger`` kind."""
    reference, connection_name, missing = _bound(entry, live)
    source = f"the connection reference {reference} is bound to" if reference else "the connection it names directly"
    if entry.runtime_source == INVOKER and trigger == "manual":
        what = f"reference {reference}" if reference else "connection"
        return Identity(entry, INVOKER, reference=reference,
                        why=f"an instant flow whose {what} is set to the connection of whoever runs it (run-only "
                            "users): each run acts as the person who starts it")
    if missing == "reference":
        return Identity(entry, MISSING, reference=reference,
                        why=f"reference {reference} is not in this environment: the flow cannot run")
    if missing == "binding":
        return Identity(entry, UNBOUND, reference=reference,
                        why=f"reference {reference} is not bound to a connection: the flow cannot run")
    conn = live.connection(connection_name) if connection_name else None
    if conn is None:
        where = f"reference {reference} is" if reference else "the flow is"
        return Identity(entry, MISSING, reference=reference,
                        why=f"{where} bound to connection {connection_name}, which does not exist here: the flow "
                            "cannot run")
    if trigger == "manual":
        why = f"an instant flow using a connection embedded in it acts as the owner of {source}"
    else:
        kind = {"scheduled": "a scheduled", "automated": "an automated"}.get(trigger, "a")
        why = f"{kind} flow acts as the owner of {source}, whoever built or owns the flow"
        if entry.runtime_source == INVOKER:
            why += " (its entry asks for the invoker's connection, which only instant flows honour)"
    return Identity(entry, OWNER, why=why, reference=reference, connection=conn,
                    connection_label=describe_connection(conn, live), principal=owner_label(conn, live),
                    personal=_personal(conn, live, service_account))


def explain_flow(flow: LiveFlow, live: LiveEnvironment, *, service_account: str | None = None,
                 environment: str | None = None) -> FlowRunAs:
    """Who ``flow`` runs as in ``live`` and why, with CR211 for an automated or scheduled flow that acts as a
    personal account."""
    trigger = trigger_of(flow)
    identities = tuple(identity(e, trigger, live, service_account) for e in flow.connections)
    owner = live.user(flow.owner_id)
    problems: list[Problem] = []
    if trigger in ("automated", "scheduled"):
        for i in identities:
            if i.kind != OWNER or not i.personal:
                continue
            problems.append(problem(
                "CR211",
                f"the {trigger} flow \"{flow.name}\" acts as {i.principal}, a personal account: the owner of "
                f"connection {i.connection_label}, which {i.reference or 'the flow'} is bound to; it stops working "
                "when that sign-in expires or the person leaves",
                f"bind {i.reference} to a connection the service account owns"
                if i.reference else "move the flow onto a connection reference bound to the service account's "
                                    "connection",
                environment=environment, subject=flow.name))
    return FlowRunAs(flow, trigger, owner.describe() if owner else flow.owner_id, identities, tuple(problems))
