"""The operations a plan is made of: typed, frozen, serialisable.

The planner produces them, the renderers and the applier interpret them, and saved plans write them to
files, so every class round-trips exactly through ``to_dict()`` / ``from_dict()`` (plain JSON data).

Each operation names one connection reference in one environment and carries:
- ``actions``: Terraform's vocabulary (``["create"]``, ``["update"]``, ``["delete"]``), so a consumer can
  scan for ``"delete"`` without knowing every kind;
- ``before`` / ``after``: the reference as read and as it will be (plain JSON values; ``connection`` is the
  connection name, ``owner`` the owner's UPN);
- ``etag``: the ETag read when planning, sent back as ``If-Match`` so a row changed since is never
  overwritten (https://learn.microsoft.com/power-apps/developer/data-platform/webapi/perform-conditional-operations-using-web-api);
- ``reason``: one human sentence saying why.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

from reconciler.domain.rules import connection_label

FORMAT_VERSION = "1.0"

JsonMap = Mapping[str, Any]


def _frozen(d: Mapping[str, Any] | None) -> JsonMap:
    return MappingProxyType(dict(d or {}))


def _empty() -> JsonMap:
    return _frozen(None)


# --------------------------------------------------------------------------- value objects


@dataclass(frozen=True)
class ConnectionInfo:
    """A connection as a person recognises it: display name and owner, beside the opaque name (id)."""

    name: str
    display_name: str | None = None
    owner: str | None = None
    status: str | None = None

    def describe(self) -> str:
        """``"SharePoint svc" (owner svc-flows@contoso.com, 0f3a…)``: readable first, the id to copy last."""
        return connection_label(self.name, self.display_name, self.owner)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "display_name": self.display_name,
            "owner": self.owner,
            "status": self.status,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ConnectionInfo:
        return cls(d["name"], d.get("display_name"), d.get("owner"), d.get("status"))


@dataclass(frozen=True)
class OwnerInfo:
    """A Dataverse user that owns (or will own) a reference: the id to write, the UPN to show."""

    systemuserid: str
    upn: str | None = None

    def describe(self) -> str:
        return self.upn or self.systemuserid

    def to_dict(self) -> dict[str, Any]:
        return {"systemuserid": self.systemuserid, "upn": self.upn}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OwnerInfo:
        return cls(systemuserid=d["systemuserid"], upn=d.get("upn"))


@dataclass(frozen=True)
class FlowInfo:
    """A component that uses a reference, as a plan names it: a cloud flow (``kind`` "flow"), a canvas app
    ("canvas_app") or a Copilot Studio agent ("bot"), with its state and owner (UPN) when known."""

    id: str
    name: str
    kind: str = "flow"
    state: str | None = None
    owner: str | None = None

    def describe(self) -> str:
        """``flow "Invoice approval" (On, owner svc-flows@contoso.com)``."""
        label = {"flow": "flow", "canvas_app": "canvas app", "bot": "agent"}.get(self.kind, self.kind)
        facts = [f for f in (self.state, f"owner {self.owner}" if self.owner else None) if f]
        return f'{label} "{self.name}"' + (f" ({', '.join(facts)})" if facts else "")

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "kind": self.kind, "state": self.state, "owner": self.owner}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FlowInfo:
        return cls(id=d["id"], name=d["name"], kind=d.get("kind") or "flow", state=d.get("state"),
                   owner=d.get("owner"))


@dataclass(frozen=True)
class FieldChange:
    """One field of a reference that changes. For ``connection`` the values are connection names, for
    ``owner`` UPNs (the typed ``UpdateReference`` fields hold what apply writes)."""

    field: str
    before: str | None
    after: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"field": self.field, "before": self.before, "after": self.after}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FieldChange:
        return cls(field=d["field"], before=d.get("before"), after=d.get("after"))


def _opt(cls: Any, d: Any) -> Any:
    return None if d is None else cls.from_dict(d)


def _opt_dict(x: Any) -> Any:
    return None if x is None else x.to_dict()


# --------------------------------------------------------------------------- operations


@dataclass(frozen=True, kw_only=True)
class Operation:
    """What every operation has. Subclasses set ``kind`` and ``actions``."""

    kind: ClassVar[str] = ""
    actions: ClassVar[tuple[str, ...]] = ()

    environment: str
    logical_name: str
    reference_id: str | None = None
    etag: str | None = None
    reason: str = ""
    # Read-only mappings: not hashable, so left out of the dataclass hash.
    before: JsonMap = field(default_factory=_empty, hash=False)
    after: JsonMap = field(default_factory=_empty, hash=False)

    def __post_init__(self) -> None:
        # Freeze the snapshots (a caller may pass plain dicts).
        object.__setattr__(self, "before", _frozen(self.before))
        object.__setattr__(self, "after", _frozen(self.after))

    @property
    def address(self) -> str:
        """Stable name of the thing changed: ``ENV.logical_name``."""
        return f"{self.environment}.{self.logical_name}"

    def _base_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "actions": list(self.actions),
            "environment": self.environment,
            "logical_name": self.logical_name,
            "reference_id": self.reference_id,
            "etag": self.etag,
            "reason": self.reason,
            "before": dict(self.before),
            "after": dict(self.after),
        }

    @staticmethod
    def _base_kwargs(d: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "environment": d["environment"],
            "logical_name": d["logical_name"],
            "reference_id": d.get("reference_id"),
            "etag": d.get("etag"),
            "reason": d.get("reason", ""),
            "before": d.get("before") or {},
            "after": d.get("after") or {},
        }

    def to_dict(self) -> dict[str, Any]:
        return self._base_dict()


@dataclass(frozen=True, kw_only=True)
class CreateReference(Operation):
    """Create a declared reference inside the solution, bound to ``connection`` when the config binds it,
    owned by ``owner`` (the service account) when one is configured. ``reference_id`` is the row id the
    create carries, decided when planning (``planner.create_id``), so a create sent twice makes one row
    (docs/dataverse.md §3.12)."""

    kind: ClassVar[str] = "create"
    actions: ClassVar[tuple[str, ...]] = ("create",)

    solution: str
    connector: str
    display_name: str
    description: str | None = None
    connection: ConnectionInfo | None = None
    owner: OwnerInfo | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            **self._base_dict(),
            "solution": self.solution,
            "connector": self.connector,
            "display_name": self.display_name,
            "description": self.description,
            "connection": _opt_dict(self.connection),
            "owner": _opt_dict(self.owner),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CreateReference:
        return cls(
            **cls._base_kwargs(d),
            solution=d["solution"],
            connector=d["connector"],
            display_name=d["display_name"],
            description=d.get("description"),
            connection=_opt(ConnectionInfo, d.get("connection")),
            owner=_opt(OwnerInfo, d.get("owner")),
        )


@dataclass(frozen=True, kw_only=True)
class UpdateReference(Operation):
    """Change fields of an existing reference in place: rename, description, rebind, owner."""

    kind: ClassVar[str] = "update"
    actions: ClassVar[tuple[str, ...]] = ("update",)

    changes: tuple[FieldChange, ...]
    old_connection: ConnectionInfo | None = None
    new_connection: ConnectionInfo | None = None
    old_owner: OwnerInfo | None = None
    new_owner: OwnerInfo | None = None
    # What uses the reference (flows, apps, agents): a rebind reaches them all.
    dependents: tuple[FlowInfo, ...] = ()

    @property
    def rebinds(self) -> bool:
        return self.change("connection") is not None

    def change(self, name: str) -> FieldChange | None:
        return next((c for c in self.changes if c.field == name), None)

    def new_values(self) -> dict[str, str | None]:
        """What to write, by field: ``connection`` as the connection name, ``owner`` as a systemuserid."""
        out: dict[str, str | None] = {}
        for c in self.changes:
            if c.field == "connection":
                out[c.field] = self.new_connection.name if self.new_connection else c.after
            elif c.field == "owner":
                out[c.field] = self.new_owner.systemuserid if self.new_owner else c.after
            else:
                out[c.field] = c.after
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            **self._base_dict(),
            "changes": [c.to_dict() for c in self.changes],
            "old_connection": _opt_dict(self.old_connection),
            "new_connection": _opt_dict(self.new_connection),
            "old_owner": _opt_dict(self.old_owner),
            "new_owner": _opt_dict(self.new_owner),
            "dependents": [f.to_dict() for f in self.dependents],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UpdateReference:
        return cls(
            **cls._base_kwargs(d),
            changes=tuple(FieldChange.from_dict(c) for c in d.get("changes", ())),
            old_connection=_opt(ConnectionInfo, d.get("old_connection")),
            new_connection=_opt(ConnectionInfo, d.get("new_connection")),
            old_owner=_opt(OwnerInfo, d.get("old_owner")),
            new_owner=_opt(OwnerInfo, d.get("new_owner")),
            dependents=tuple(FlowInfo.from_dict(f) for f in d.get("dependents", ())),
        )


@dataclass(frozen=True, kw_only=True)
class AddToSolution(Operation):
    """Add a declared reference that exists outside the solution to it (a solution component)."""

    kind: ClassVar[str] = "add_to_solution"
    actions: ClassVar[tuple[str, ...]] = ("update",)

    solution: str

    def to_dict(self) -> dict[str, Any]:
        return {**self._base_dict(), "solution": self.solution}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AddToSolution:
        return cls(**cls._base_kwargs(d), solution=d["solution"])


@dataclass(frozen=True, kw_only=True)
class DeleteReference(Operation):
    """Delete a reference connref manages that the config no longer declares (prune). ``flows`` are the
    flows that used it when planning, so a plan and its apply can name them."""

    kind: ClassVar[str] = "delete"
    actions: ClassVar[tuple[str, ...]] = ("delete",)

    flows: tuple[FlowInfo, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**self._base_dict(), "flows": [f.to_dict() for f in self.flows]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DeleteReference:
        return cls(**cls._base_kwargs(d), flows=tuple(FlowInfo.from_dict(f) for f in d.get("flows", ())))


@dataclass(frozen=True, kw_only=True)
class ShareConnection(Operation):
    """Share the connection a binding resolves to with the identity that writes, before binding it
    (``grant_access``), through the connections API's admin route (docs/dataverse.md §4.8, §4.9).
    ``logical_name`` is the reference whose binding needs it; one share serves every reference bound to the
    same connection."""

    kind: ClassVar[str] = "share"
    actions: ClassVar[tuple[str, ...]] = ("create",)

    connection: ConnectionInfo
    connector: str
    principal_id: str
    principal_type: str
    principal: str
    role: str = "CanView"

    @property
    def address(self) -> str:
        return f"{self.environment}.share.{self.connection.name}.{self.principal_id}"

    def describe(self) -> str:
        """``share "SharePoint svc" (owner ..., 0f3a…) with svc-flows@contoso.com (CanView)``."""
        return f"share {self.connection.describe()} with {self.principal} ({self.role})"

    def to_dict(self) -> dict[str, Any]:
        return {**self._base_dict(), "connection": self.connection.to_dict(), "connector": self.connector,
                "principal_id": self.principal_id, "principal_type": self.principal_type,
                "principal": self.principal, "role": self.role}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ShareConnection:
        return cls(**cls._base_kwargs(d), connection=ConnectionInfo.from_dict(d["connection"]),
                   connector=d["connector"], principal_id=d["principal_id"], principal_type=d["principal_type"],
                   principal=d["principal"], role=d.get("role", "CanView"))



@dataclass(frozen=True, kw_only=True)
class ActivateFlow(Operation):
    """Switch on a flow of the solution that is off, once every reference it uses is bound (docs/dataverse.md
    §5.6, §5.8). ``logical_name`` holds the flow's name (what a person reads); ``flow_id`` is what apply
    writes to; ``pass_number`` orders the switching: children in earlier passes than their parents;
    ``references`` and ``children`` are what the flow needs; ``etag`` is the flow's row as read."""

    kind: ClassVar[str] = "activate_flow"
    actions: ClassVar[tuple[str, ...]] = ("update",)

    flow_id: str
    pass_number: int = 1
    owner: str | None = None
    references: tuple[str, ...] = ()
    children: tuple[str, ...] = ()

    @property
    def address(self) -> str:
        return f"{self.environment}.flows.{self.logical_name}"

    def to_dict(self) -> dict[str, Any]:
        return {**self._base_dict(), "flow_id": self.flow_id, "pass_number": self.pass_number,
                "owner": self.owner, "references": list(self.references), "children": list(self.children)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ActivateFlow:
        return cls(**cls._base_kwargs(d), flow_id=d["flow_id"], pass_number=int(d.get("pass_number", 1)),
                   owner=d.get("owner"), references=tuple(d.get("references", ())),
                   children=tuple(d.get("children", ())))



@dataclass(frozen=True, kw_only=True)
class RepointFlow(Operation):
    """Move a flow off the references the config replaces: its definition (``clientdata``) rewritten so each
    entry naming a replaced reference names the kept one (docs/dataverse.md §5.2, §5.9, §5.10).
    ``logical_name`` is the flow's name, ``flow_id`` what apply writes to, ``etag`` the flow's row as read
    (If-Match on the first write, each later write the ETag the one before returned), ``clientdata`` the whole
    new definition, ``moves`` each (replaced, kept) logical name. A flow that is on is switched off first
    (``switch_off``); the plan's ``ActivateFlow`` for it switches it on again after the edit."""

    kind: ClassVar[str] = "repoint_flow"
    actions: ClassVar[tuple[str, ...]] = ("update",)

    flow_id: str
    clientdata: str
    moves: tuple[tuple[str, str], ...] = ()
    switch_off: bool = False
    owner: str | None = None

    @property
    def address(self) -> str:
        return f"{self.environment}.flows.{self.logical_name}"

    def to_dict(self) -> dict[str, Any]:
        return {**self._base_dict(), "flow_id": self.flow_id, "clientdata": self.clientdata,
                "moves": [list(m) for m in self.moves], "switch_off": self.switch_off,
                "owner": self.owner}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RepointFlow:
        return cls(**cls._base_kwargs(d), flow_id=d["flow_id"], clientdata=d["clientdata"],
                   moves=tuple((str(a), str(b)) for a, b in d.get("moves", ())),
                   switch_off=bool(d.get("switch_off")), owner=d.get("owner"))


@dataclass(frozen=True, kw_only=True)
class RetireReference(DeleteReference):
    """Delete a reference the config replaces (``replaced_by``), once nothing uses it: after the flows that
    used it (``flows``) are moved onto the kept one. Apply sends it after those flows, and not at all when
    one of them was not moved."""

    kind: ClassVar[str] = "retire"
    actions: ClassVar[tuple[str, ...]] = ("delete",)

    replaced_by: str

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "replaced_by": self.replaced_by}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RetireReference:
        return cls(**cls._base_kwargs(d), flows=tuple(FlowInfo.from_dict(f) for f in d.get("flows", ())),
                   replaced_by=d["replaced_by"])


Op = CreateReference | UpdateReference | AddToSolution | DeleteReference | ShareConnection | ActivateFlow | RepointFlow

_KINDS: dict[str, Any] = {
    cls.kind: cls
    for cls in (CreateReference, UpdateReference, AddToSolution, DeleteReference, ShareConnection, ActivateFlow,
                RepointFlow, RetireReference)
}
#: Every operation kind a plan may hold (a saved plan's schema lists the same, saved-plan-1.json).
OPERATION_KINDS: tuple[str, ...] = tuple(_KINDS)


@dataclass(frozen=True)
class FlowNote:
    """A flow of the solution that stays off, and why: ``kind`` "held" (it cannot be switched on: a
    reference unbound, a connection the writer may not use, a child that stays off), "kept_off" (the
    config keeps it off, or flow activation is off for the environment) or "suspended"."""

    flow_id: str
    name: str
    kind: str
    reasons: tuple[str, ...] = ()
    state: str | None = None
    owner: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"flow_id": self.flow_id, "name": self.name, "kind": self.kind, "reasons": list(self.reasons),
                "state": self.state, "owner": self.owner}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FlowNote:
        return cls(flow_id=d["flow_id"], name=d["name"], kind=d["kind"], reasons=tuple(d.get("reasons", ())),
                   state=d.get("state"), owner=d.get("owner"))


def operation_from_dict(d: Mapping[str, Any]) -> Op:
    """Rebuild an operation from ``to_dict()`` output, dispatching on ``kind``."""
    try:
        cls = _KINDS[d["kind"]]
    except KeyError as e:
        raise ValueError(f"unknown operation kind {d.get('kind')!r}") from e
    op: Op = cls.from_dict(d)
    return op


# --------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class Counts:
    add: int = 0
    change: int = 0
    destroy: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.add + other.add, self.change + other.change, self.destroy + other.destroy)

    def to_dict(self) -> dict[str, int]:
        return {"add": self.add, "change": self.change, "destroy": self.destroy}

    @classmethod
    def of(cls, ops: Iterable[Op]) -> Counts:
        """Counted per resource, as Terraform counts: adding a reference to the solution and renaming it is
        one change; switching a flow on is a change of that flow. The plan's summary and the apply's (over
        the operations written) both count this way, so an apply reports what its plan announced."""
        ops = list(ops)
        changed = {op.address.lower() for op in ops if op.actions == ("update",)}
        return cls(
            add=sum(1 for op in ops if "create" in op.actions),
            change=len(changed),
            destroy=sum(1 for op in ops if "delete" in op.actions),
        )


@dataclass(frozen=True)
class ApplyFacts:
    """What apply needs besides the operations, which only a read of the environment tells, taken from
    it when planning so the applier never reads to decide what to write:

    - ``writer_object_id``: the Entra object id writes act as (``CallerObjectId``, docs/dataverse.md
      §3.10), or None when the signed-in identity writes as itself;
    - ``component_type``: the solution component type of ``connectionreference`` in this environment,
      for ``AddSolutionComponent`` (it varies per environment: docs/dataverse.md §2.1)."""

    writer_object_id: str | None = None
    component_type: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"writer_object_id": self.writer_object_id, "component_type": self.component_type}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ApplyFacts:
        ctype = d.get("component_type")
        return cls(writer_object_id=d.get("writer_object_id"), component_type=None if ctype is None else int(ctype))


@dataclass(frozen=True)
class EnvironmentPlan:
    """The operations for one environment, the warnings met while planning, a fingerprint of the live
    rows read (a saved plan is stale when the fingerprint moves), the facts apply needs (``facts``;
    None only in a plan saved by a connref that did not record them, which apply refuses) and the scope
    the connections were listed in (``connections_scope``: ``admin``, every connection; ``user``, only the
    caller's, which the plan's header and a warning say: docs/dataverse.md §4.3)."""

    environment: str
    ops: tuple[Op, ...] = ()
    warnings: tuple[str, ...] = ()
    fingerprint: str = ""
    facts: ApplyFacts | None = None
    connections_scope: str = "admin"
    # "unmanaged" (development: create, rename, add, prune) or "managed" (downstream: bind, owner, flows),
    # from the environment's solution (docs/dataverse.md §2.6).
    mode: str = "unmanaged"
    flow_notes: tuple[FlowNote, ...] = ()

    @property
    def reference_ops(self) -> tuple[Op, ...]:
        """What apply writes first, in ``$batch`` change sets: creates, updates, additions and prunes."""
        return tuple(op for op in self.ops if not isinstance(op, ActivateFlow | RepointFlow | RetireReference))

    @property
    def repoints(self) -> tuple[RepointFlow, ...]:
        return tuple(op for op in self.ops if isinstance(op, RepointFlow))

    @property
    def retires(self) -> tuple[RetireReference, ...]:
        return tuple(op for op in self.ops if isinstance(op, RetireReference))

    @property
    def activations(self) -> tuple[ActivateFlow, ...]:
        return tuple(op for op in self.ops if isinstance(op, ActivateFlow))

    @property
    def counts(self) -> Counts:
        return Counts.of(self.ops)

    @property
    def has_changes(self) -> bool:
        return bool(self.ops)

    def to_dict(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "ops": [op.to_dict() for op in self.ops],
            "warnings": list(self.warnings),
            "fingerprint": self.fingerprint,
            "apply_facts": _opt_dict(self.facts),
            "connections_scope": self.connections_scope,
            "mode": self.mode,
            "flow_notes": [n.to_dict() for n in self.flow_notes],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EnvironmentPlan:
        return cls(
            environment=d["environment"],
            ops=tuple(operation_from_dict(o) for o in d.get("ops", ())),
            warnings=tuple(d.get("warnings", ())),
            fingerprint=d.get("fingerprint", ""),
            facts=_opt(ApplyFacts, d.get("apply_facts")),
            connections_scope=str(d.get("connections_scope") or "admin"),
            mode=d.get("mode") or "unmanaged",
            flow_notes=tuple(FlowNote.from_dict(n) for n in d.get("flow_notes", ())),
        )


@dataclass(frozen=True)
class Plan:
    """A whole plan: one ``EnvironmentPlan`` per environment, in the order planned."""

    environments: tuple[EnvironmentPlan, ...]
    solution: str
    created_at: str
    config_digest: str
    format_version: str = FORMAT_VERSION

    @property
    def counts(self) -> Counts:
        total = Counts()
        for env in self.environments:
            total = total + env.counts
        return total

    @property
    def has_changes(self) -> bool:
        return any(env.has_changes for env in self.environments)

    @property
    def ops(self) -> tuple[Op, ...]:
        return tuple(op for env in self.environments for op in env.ops)

    def environment(self, name: str) -> EnvironmentPlan | None:
        return next((e for e in self.environments if e.environment == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "solution": self.solution,
            "created_at": self.created_at,
            "config_digest": self.config_digest,
            "environments": [e.to_dict() for e in self.environments],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Plan:
        version = str(d.get("format_version", ""))
        # Terraform's rule for versioned JSON: a new minor only adds fields; an unknown major is refused.
        if version.split(".")[0] != FORMAT_VERSION.split(".")[0]:
            raise ValueError(
                f"unsupported plan format_version {version!r} (this connref reads {FORMAT_VERSION})"
            )
        return cls(
            environments=tuple(EnvironmentPlan.from_dict(e) for e in d.get("environments", ())),
            solution=d["solution"],
            created_at=d["created_at"],
            config_digest=d["config_digest"],
            format_version=version,
        )
