"""Drift detection: what changed in an environment behind connref's back. Pure: no I/O.

``detect_drift`` compares the live environment with two baselines, per reference:

- a reference connref manages (it is in the state) is compared with the values connref last applied: a
  change there was made by someone else (Terraform's "Objects have changed outside of Terraform");
- a declared reference connref has no record of (never applied, or its apply failed) is compared with
  the config, the only baseline there is;
- a reference in the solution that is neither declared nor in the state "appeared unmanaged" (a maker
  added it, typically with a per-developer suffix).

A difference between the config and the state while live still equals the state is not drift: it is a
change the team made in the config and not applied yet, which ``plan`` shows. Nor is connref's own
convergent write: a field of a declared reference that differs from the state but is what the config
declares, last written by the identity connref writes as (``rules.writer``), is an apply whose answer or
state record was lost; it is noted ("the next apply records it", state/README.md), not reported. And a
managed reference no longer declared and already gone from the environment has nothing left to drift
from: the next apply forgets it, which a note says.

Per reference it reports: rebound (from which connection to which), renamed, description changed,
connector changed, owner changed, deleted, removed from the solution, connection now broken (not
``Connected``: docs/dataverse.md §4.4 ``statuses``), and unmanaged. Who and when come from the row's
``modifiedby`` / ``modifiedon`` (docs/dataverse.md §1.3), the user resolved to a UPN through
``live.users``. Field-level differences are the rules layer's (``reconciler.domain.rules.differences``,
the comparison plan makes too), so an empty description and a null one, or two casings of a connection
name, are not drift; a broken connection is the rules layer's Problem (CR203, CR204), as in lint and plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.domain import rules
from reconciler.domain.model import (
    Config,
    EnvironmentConfig,
    LiveEnvironment,
    LiveReference,
    Selector,
    frozen_map,
)
from reconciler.domain.rules import Problem
from reconciler.state.model import EnvState, ManagedReference

FORMAT_VERSION = "1.0"

# Kinds, in the order a reader wants them.
DELETED = "deleted"
REMOVED_FROM_SOLUTION = "removed_from_solution"
REBOUND = "rebound"
RENAMED = "renamed"
DESCRIPTION_CHANGED = "description_changed"
CONNECTOR_CHANGED = "connector_changed"
OWNER_CHANGED = "owner_changed"
CONNECTION_BROKEN = "connection_broken"
CUSTOMIZED = "customized"
UNMANAGED = "unmanaged"
KIND_ORDER = (
    DELETED,
    REMOVED_FROM_SOLUTION,
    REBOUND,
    RENAMED,
    DESCRIPTION_CHANGED,
    CONNECTOR_CHANGED,
    OWNER_CHANGED,
    CUSTOMIZED,
    CONNECTION_BROKEN,
    UNMANAGED,
)
_FIELD_KIND = {
    "connection": REBOUND,
    "display_name": RENAMED,
    "description": DESCRIPTION_CHANGED,
    "connector": CONNECTOR_CHANGED,
    "owner": OWNER_CHANGED,
}

_ITEM_ORDER = ("connection", "display_name", "description", "connector", "owner")

STATE = "state"  # baseline: the values connref last applied
CONFIG = "config"  # baseline: the config (no state for the reference)


# --------------------------------------------------------------------------- report types


@dataclass(frozen=True)
class DriftItem:
    """One change to one reference. ``before`` is the baseline value (state or config), ``after`` the live
    one; ``before_label`` / ``after_label`` are readable versions (a connection with its owner)."""

    kind: str
    message: str
    field: str | None = None
    before: str | None = None
    after: str | None = None
    before_label: str | None = None
    after_label: str | None = None
    problem: Problem | None = None  # for a broken connection: the rules layer's verdict (code, fix)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "message": self.message,
            "field": self.field,
            "before": self.before,
            "after": self.after,
            "before_label": self.before_label,
            "after_label": self.after_label,
        }
        if self.problem is not None:
            out["code"] = self.problem.code
            out["fix"] = self.problem.fix
        return out


@dataclass(frozen=True)
class ReferenceDrift:
    """Every change found on one reference, with who last modified it and when."""

    logical_name: str
    baseline: str  # STATE, CONFIG, or "none" for an unmanaged reference
    items: tuple[DriftItem, ...]
    changed_by: str | None = None
    changed_on: str | None = None
    field_diff: Mapping[str, Any] = field(default_factory=frozen_map, hash=False)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(i.kind for i in self.items)

    def item(self, kind: str) -> DriftItem | None:
        return next((i for i in self.items if i.kind == kind), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "logical_name": self.logical_name,
            "baseline": self.baseline,
            "changed_by": self.changed_by,
            "changed_on": self.changed_on,
            "kinds": list(self.kinds),
            "items": [i.to_dict() for i in self.items],
            "field_diff": {k: dict(v) for k, v in sorted(self.field_diff.items())},
        }


@dataclass(frozen=True)
class DriftReport:
    """The drift of one environment. ``has_drift`` decides the exit code (0 none, 2 drift)."""

    environment: str
    solution: str | None
    references: tuple[ReferenceDrift, ...]
    checked: int  # references compared
    state_serial: int | None = None
    last_apply: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def has_drift(self) -> bool:
        return bool(self.references)

    def reference(self, logical_name: str) -> ReferenceDrift | None:
        key = logical_name.lower()
        return next((r for r in self.references if r.logical_name.lower() == key), None)

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.references:
            for k in r.kinds:
                out[k] = out.get(k, 0) + 1
        return {k: out[k] for k in KIND_ORDER if k in out}

    def to_dict(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "solution": self.solution,
            "has_drift": self.has_drift,
            "checked": self.checked,
            "state_serial": self.state_serial,
            "last_apply": self.last_apply,
            "counts": self.counts,
            "references": [r.to_dict() for r in self.references],
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------- comparing


def _fields_of_state(ref: ManagedReference) -> dict[str, str | None]:
    return {
        "display_name": ref.display_name,
        "description": ref.description,
        "connector": ref.connector,
        "connection": ref.connection,
        "owner": ref.owner,
    }


def _fields_of_live(ref: LiveReference) -> dict[str, str | None]:
    return {
        "display_name": ref.display_name,
        "description": ref.description,
        "connector": ref.connector,
        "connection": ref.connection,
        "owner": ref.owner_id,
    }


def _changed_fields(expected: Mapping[str, str | None], actual: Mapping[str, str | None]) -> dict[str, dict[str, Any]]:
    """{field: {"before": ..., "after": ...}} (normalised values) for the fields of ``expected`` whose
    actual value differs (``rules.differences``)."""
    out: dict[str, dict[str, Any]] = {}
    for d in rules.differences(expected, actual):
        before, after = d.normalised()
        out[d.field] = {"before": before, "after": after}
    return out


# --------------------------------------------------------------------------- describing


class _Describer:
    def __init__(self, live: LiveEnvironment) -> None:
        self.live = live

    def user(self, systemuserid: str | None) -> str | None:
        if not systemuserid:
            return None
        u = self.live.user(systemuserid)
        return u.describe() if u else systemuserid

    def connection(self, name: str | None) -> str:
        if not name:
            return "(unbound)"
        conn = self.live.connection(name)
        if conn is None:
            return f"{name} (not found)"
        return rules.describe_connection(conn, self.live)


def _by_when(ref: LiveReference, d: _Describer) -> tuple[str | None, str | None]:
    return d.user(ref.modified_by), ref.modified_on


def _suffix(by: str | None, on: str | None) -> str:
    parts = []
    if by:
        parts.append(f"by {by}")
    if on:
        parts.append(f"on {on}")
    return (" " + " ".join(parts)) if parts else ""


def _field_item(fieldname: str, before: Any, after: Any, d: _Describer, baseline: str) -> DriftItem:
    kind = _FIELD_KIND[fieldname]
    src = "last applied" if baseline == STATE else "declared"
    if fieldname == "connection":
        bl, al = d.connection(before), d.connection(after)
        msg = f"from {bl} ({src}) to {al}" if after else f"was bound to {bl} ({src}), now unbound"
        return DriftItem(kind, msg, fieldname, before, after, bl, al)
    if fieldname == "owner":
        bl = d.user(before) or "(none)"
        al = d.user(after) or "(none)"
        return DriftItem(kind, f"from {bl} ({src}) to {al}", fieldname, before, after, bl, al)
    bl = f'"{before}"' if before is not None else "(empty)"
    al = f'"{after}"' if after is not None else "(empty)"
    return DriftItem(kind, f"from {bl} ({src}) to {al}", fieldname, before, after, bl, al)


def _health(ref: LiveReference, d: _Describer) -> DriftItem | None:
    """A bound connection that is missing or not Connected (``rules.connection_health``): flows using the
    reference will fail."""
    found = rules.connection_health(ref.connection, d.live, subject=ref.logical_name)
    if found is None and ref.connection:
        return _access_lost(ref, d)
    if found is None or not ref.connection:
        return None
    conn = d.live.connection(ref.connection)
    if conn is None:
        return DriftItem(CONNECTION_BROKEN, found.text(), "connection", ref.connection, None, ref.connection,
                         "(not found)", problem=found)
    status = f"status {conn.status or 'unknown'}"
    return DriftItem(CONNECTION_BROKEN, found.text(), "connection", conn.name, conn.status,
                     d.connection(conn.name), status, problem=found)


def _access_lost(ref: LiveReference, d: _Describer) -> DriftItem | None:
    """A bound connection whose shares were read and no longer let the writer use it (a share removed):
    flows using the reference fail when switched on again (``rules.access``; docs/dataverse.md §4.8)."""
    conn = d.live.connection(ref.connection or "")
    writer = d.live.writer
    if conn is None or conn.shares is None or writer is None:
        return None
    found = rules.access_problem(conn, writer, d.live, service_account=None, subject=ref.logical_name)
    if found is None or found.code != "CR210":
        return None
    return DriftItem(CONNECTION_BROKEN, f"no longer shared with {writer.describe()}: {found.text()}", "connection",
                     conn.name, conn.name, d.connection(conn.name), f"not usable by {writer.describe()}",
                     problem=found)


# --------------------------------------------------------------------------- detection


def _against_state(
    m: ManagedReference, live_ref: LiveReference | None, d: _Describer,
    own: Mapping[str, str | None] | None = None,
) -> ReferenceDrift | None:
    """``live_ref`` against what connref last applied (``m``). ``own``: for a declared reference last written
    by connref's writer, the values the config declares; a field changed to that value is connref's own write
    (not drift, ``_own_writes``)."""
    if live_ref is None:
        return ReferenceDrift(
            m.logical_name,
            STATE,
            (
                DriftItem(
                    DELETED,
                    f"connref last applied it at {m.applied_at or 'an unknown time'} (id {m.id}); it is gone "
                    "from the environment (a deleted row does not record who deleted it: see the Dataverse "
                    "audit log)",
                    before=m.id,
                    before_label=f"applied {m.applied_at or '?'} (id {m.id})",
                    after_label="(gone)",
                ),
            ),
        )
    expected, actual = _fields_of_state(m), _fields_of_live(live_ref)
    changed = _changed_fields(expected, actual)
    for f in _own_writes(changed, actual, own):
        del changed[f]
    # Report original (not normalised) values, in a fixed field order.
    items = [_field_item(f, expected[f], actual[f], d, STATE) for f in _ITEM_ORDER if f in changed]
    if not live_ref.in_solution:
        items.append(
            DriftItem(
                REMOVED_FROM_SOLUTION,
                "the row still exists, outside the solution",
                before_label="in the solution",
                after_label="outside the solution",
            )
        )
    return _drift_of(live_ref, d, STATE, items, changed)


def _own_writes(changed: Mapping[str, Any], actual: Mapping[str, str | None],
                own: Mapping[str, str | None] | None) -> list[str]:
    """The changed fields whose live value is what the config declares (``own``, given when connref's writer
    made the last change): connref's own writes, not drift."""
    if not own:
        return []
    return [f for f in changed if f in own and rules.same(f, own[f], actual.get(f))]


def _declared_values(config: Config, env: EnvironmentConfig, live: LiveEnvironment,
                     live_ref: LiveReference) -> dict[str, str | None]:
    """What the config declares for ``live_ref``'s fields it sets: display name, description, connector, the
    connection a binding names, the owner when the config names a service account (and it is found)."""
    desired = config.reference(live_ref.logical_name)
    assert desired is not None
    expected: dict[str, str | None] = {
        "display_name": desired.display_name,
        "description": desired.description,
        "connector": desired.connector,
    }
    binding = rules.BindingIndex.of(env).get(live_ref.logical_name)
    if isinstance(binding, str):
        expected["connection"] = binding
    elif isinstance(binding, Selector) and live_ref.connection:
        bound = live.connection(live_ref.connection)
        if bound is not None and rules.selects(binding, bound, desired.connector, live):
            expected["connection"] = live_ref.connection
    # Only a config that names an owner (service_account) and a writer found live give an owner to expect.
    writer = rules.writer(env.service_account, live) if env.service_account else None
    if writer is not None:
        expected["owner"] = writer.systemuserid
    return expected


def _against_config(
    config: Config, env: EnvironmentConfig, live: LiveEnvironment, live_ref: LiveReference, d: _Describer
) -> ReferenceDrift | None:
    expected = _declared_values(config, env, live, live_ref)
    expected.pop("connection", None)
    actual = _fields_of_live(live_ref)
    binding = rules.BindingIndex.of(env).get(live_ref.logical_name)
    if isinstance(binding, str):
        expected["connection"] = binding
    changed = _changed_fields(expected, actual)
    items: list[DriftItem] = []
    bound = live.connection(live_ref.connection) if live_ref.connection else None
    if isinstance(binding, Selector) and (
        bound is None or not rules.selects(binding, bound, str(expected["connector"]), live)
    ):
        al = d.connection(live_ref.connection)
        items.append(
            DriftItem(
                REBOUND,
                f"to {al}, which does not match the declared selector {binding.describe()}",
                "connection",
                binding.describe(),
                live_ref.connection,
                binding.describe(),
                al,
            )
        )
        changed["connection"] = {"before": binding.describe(), "after": rules.id_value(live_ref.connection)}
    for f in _ITEM_ORDER:
        if f in changed and not (f == "connection" and isinstance(binding, Selector)):
            items.append(_field_item(f, expected.get(f), actual[f], d, CONFIG))
    return _drift_of(live_ref, d, CONFIG, items, changed)


def _own_write_note(m: ManagedReference, live_ref: LiveReference, own: Mapping[str, str | None],
                    writer: Any) -> str | None:
    """The note for fields connref's writer changed to what the config declares but the state does not
    record (an apply whose answer or state record was lost), or None."""
    changed = _changed_fields(_fields_of_state(m), _fields_of_live(live_ref))
    fields = [f for f in _ITEM_ORDER if f in _own_writes(changed, _fields_of_live(live_ref), own)]
    if not fields:
        return None
    what = ", ".join(f.replace("_", " ") for f in fields)
    return (f"{live_ref.logical_name}: {what} written by connref ({writer.describe()}) as the config declares, "
            "not yet in the state (an apply's answer or state record was lost): the next apply records it")


def _drift_of(live_ref: LiveReference, d: _Describer, baseline: str, items: list[DriftItem],
              changed: dict[str, Any]) -> ReferenceDrift | None:
    """The drift of one reference: the field items found against ``baseline`` plus its connection's
    health, with who changed the row last and when; None when nothing differs."""
    health = _health(live_ref, d)
    if health:
        items.append(health)
    if not items:
        return None
    by, on = _by_when(live_ref, d)
    return ReferenceDrift(live_ref.logical_name, baseline, _sorted(items), by, on, frozen_map(changed))


def _sorted(items: list[DriftItem]) -> tuple[DriftItem, ...]:
    return tuple(sorted(items, key=lambda i: KIND_ORDER.index(i.kind)))


def _managed_view(rd: ReferenceDrift | None, live_ref: LiveReference, config: Config, env: str,
                  live: LiveEnvironment, d: _Describer, notes: list[str]) -> ReferenceDrift | None:
    """A managed reference's drift (docs/dataverse.md §2.6): its display name and description come with the
    solution, so a difference there is no drift of connref's (a difference with the config is noted:
    CR320); an unmanaged layer that customizes it is (CR321)."""
    desired = config.reference(live_ref.logical_name)
    if desired is not None:
        notes.extend(p.line() for p in rules.managed_field_problems(
            live_ref, display_name=desired.display_name, description=desired.description,
            solution=config.solution, environment=env))
    items = [i for i in (rd.items if rd else ()) if i.field not in rules.SOLUTION_FIELDS]
    changed = {k: v for k, v in (rd.field_diff if rd else {}).items() if k not in rules.SOLUTION_FIELDS}
    layer = rules.unmanaged_layer_problem(live_ref, live.layers.get(live_ref.id.lower(), ()), environment=env)
    if layer is not None:
        items.append(DriftItem(CUSTOMIZED, layer.message, before_label="as the managed solution ships it",
                               after_label="customized in this environment", problem=layer))
    if not items:
        return None
    by, on = (rd.changed_by, rd.changed_on) if rd else _by_when(live_ref, d)
    return ReferenceDrift(live_ref.logical_name, rd.baseline if rd else STATE, _sorted(items), by, on,
                          frozen_map(changed))


def _appeared(live_ref: LiveReference, config: Config, live: LiveEnvironment, d: _Describer) -> ReferenceDrift:
    """A reference of the solution neither declared nor in the state: a maker added it (unmanaged), or it came
    with the managed solution and the config does not declare it, so nothing binds it here."""
    by, on = d.user(live_ref.created_by or live_ref.modified_by), live_ref.created_on or live_ref.modified_on
    bound = d.connection(live_ref.connection)
    sol = live.solution.unique_name if live.solution else config.solution
    # A managed reference in an unmanaged solution came with another, managed, solution.
    came_with = f"the managed solution {sol}" if live.solution is None or live.solution.managed else \
        f"a managed solution (it is in {sol}, which is unmanaged here)"
    how = (f"came with {came_with} (not declared, not in state), bound to {bound}; declare it so "
           "connref binds it here (connref import shows the YAML)" if live_ref.managed else
           f"appeared in solution {sol} (not declared, not in state), bound to {bound}; "
           "declare it (connref import shows the YAML) or remove it")
    item = DriftItem(UNMANAGED, how, after=live_ref.connection, before_label="(not declared)",
                     after_label=f"bound to {bound}")
    return ReferenceDrift(live_ref.logical_name, "none", (item,), by, on)


def _appeared_all(undeclared: list[LiveReference], config: Config, live: LiveEnvironment, d: _Describer,
                  notes: list[str]) -> list[ReferenceDrift]:
    """The solution's references neither declared nor in the state, as drift; those the config replaces are
    known (being consolidated: lint's CR104), so each is a note instead."""
    out: list[ReferenceDrift] = []
    for r in undeclared:
        kept = config.replaced_by(r.logical_name)
        if kept is None:
            out.append(_appeared(r, config, live, d))
        else:
            notes.append(f"{r.logical_name} is replaced by {kept.logical_name} (replaces:): being consolidated, not "
                         "drift (lint reports it as CR104, with what becomes of it, until it is gone)")
    return out


def detect_drift(config: Config, env: str, live: LiveEnvironment, state: EnvState | None) -> DriftReport:
    """The drift of environment ``env``: ``live`` as read now, ``state`` as last applied (None: never)."""
    env_cfg = config.environments[env]
    d = _Describer(live)
    live_by_key: dict[str, LiveReference] = {}
    for r in live.references:
        # Several rows differing only by case: prefer the one in the solution (the planner refuses them).
        key = r.logical_name.lower()
        if key not in live_by_key or (r.in_solution and not live_by_key[key].in_solution):
            live_by_key[key] = r
    declared = {n.lower() for n in config.references}
    managed = {n.lower(): m for n, m in (state.references.items() if state else ())}

    found: list[ReferenceDrift] = []
    notes: list[str] = []
    checked = 0
    writer = rules.writer(env_cfg.service_account, live)
    for key, m in sorted(managed.items()):
        checked += 1
        live_ref = live_by_key.get(key)
        if key not in declared:
            if live_ref is None:
                notes.append(f"{m.logical_name} is managed by connref, no longer declared, and already gone from "
                             "the environment: the next apply forgets it (nothing is left to prune)")
                continue
            notes.append(
                f"{m.logical_name} is managed by connref but no longer declared in the config "
                "(plan with prune to delete it, or declare it again)"
            )
        own = None
        if key in declared and live_ref is not None and writer is not None and rules.same(
                "owner", live_ref.modified_by, writer.systemuserid):
            own = _declared_values(config, env_cfg, live, live_ref)
            note = _own_write_note(m, live_ref, own, writer)
            if note:
                notes.append(note)
        rd = _against_state(m, live_ref, d, own)
        if live_ref is not None and live_ref.managed:
            rd = _managed_view(rd, live_ref, config, env, live, d, notes)
        if rd:
            found.append(rd)
    for name in sorted(config.references, key=str.lower):
        key = name.lower()
        if key in managed:
            continue
        live_ref = live_by_key.get(key)
        if live_ref is None:
            notes.append(f"{name} is declared but not in the environment yet (plan and apply create it)")
            continue
        checked += 1
        rd = _against_config(config, env_cfg, live, live_ref, d)
        if live_ref.managed:
            rd = _managed_view(rd, live_ref, config, env, live, d, notes)
        if rd:
            found.append(rd)
    undeclared = [r for k, r in sorted(live_by_key.items()) if k not in declared and k not in managed and r.in_solution]
    appeared = _appeared_all(undeclared, config, live, d, notes)
    checked += len(appeared)
    found.extend(appeared)
    found.sort(key=lambda r: r.logical_name.lower())
    last = state.last_apply if state else None
    return DriftReport(
        environment=env,
        solution=live.solution.unique_name if live.solution else config.solution,
        references=tuple(found),
        checked=checked,
        state_serial=state.serial if state else None,
        last_apply=last.at if last else None,
        notes=tuple(notes),
    )


def exit_code(reports: list[DriftReport] | tuple[DriftReport, ...]) -> int:
    """0 when no environment drifted, 2 when one did (errors are the CLI's exit 1)."""
    return 2 if any(r.has_drift for r in reports) else 0
