"""Per-developer references and their consolidation: the verdicts, decided once (pure).

When several makers edit one solution, each adds a reference of their own for a connector (logical names
ending in the portal's random suffix, docs/dataverse.md §1.8), bound to their own connection. A team either
consolidates them (the config's ``replaces:``: flows move onto one kept reference, the others are deleted)
or declares the pattern intended (one reference per developer, all bound to one shared connection): the
lint policy ``per_developer_references`` says which, and this module answers:

- ``flows_using``: which flows use a reference (their ``clientdata`` names it, docs/dataverse.md §5.2);
- ``per_developer_severity``: how a per-developer reference is reported under the team's policy;
- ``duplicate_groups`` / ``kept_reference``: which references share a connector, and which of a group to
  keep (the one import suggests ``replaces:`` on);
- ``still_used``: what keeps a replaced reference from being deleted once its flows are moved.

Lint, import and the planner interpret these answers; none of them decides anew.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

from reconciler.domain.model import DesiredReference, LiveEnvironment, LiveFlow, LiveReference, connector_name
from reconciler.domain.naming import random_suffix
from reconciler.domain.rules import ERROR, WARNING, is_owner

#: ``lint: per_developer_references:`` values. ``allow``: the team keeps one reference per developer on
#: purpose (the pattern of one shared service-principal connection bound to every developer's reference);
#: ``warn`` (the default): reported as the mess adoption cleans up; ``error``: reported as breaking the
#: team's policy (lint exits 2).
PER_DEVELOPER_POLICIES = ("allow", "warn", "error")
DEFAULT_PER_DEVELOPER_POLICY = "warn"


def per_developer_severity(policy: str | None) -> str | None:
    """The severity of a per-developer finding (several references for one connector, a logical name with
    the portal's random suffix) under ``policy``; None when the policy allows them (not reported)."""
    chosen = policy or DEFAULT_PER_DEVELOPER_POLICY
    if chosen not in PER_DEVELOPER_POLICIES:
        raise ValueError(f"unknown per-developer policy {chosen!r} (one of {', '.join(PER_DEVELOPER_POLICIES)})")
    return {"allow": None, "warn": WARNING, "error": ERROR}[chosen]


def flows_using(live: LiveEnvironment, logical_name: str) -> list[LiveFlow]:
    """The flows whose definition names the reference (compared without case), by name."""
    key = logical_name.lower()
    return sorted(
        (f for f in live.flows if any(r.lower() == key for r in f.references)),
        key=lambda f: (f.name.lower(), f.id),
    )


def duplicate_groups(refs: Iterable[LiveReference]) -> dict[str, list[LiveReference]]:
    """Connector name -> its references, for the connectors that have more than one, each group sorted by
    logical name."""
    groups: dict[str, list[LiveReference]] = {}
    for r in refs:
        groups.setdefault(connector_name(r.connector), []).append(r)
    return {k: sorted(v, key=lambda r: (r.logical_name.lower(), r.id)) for k, v in sorted(groups.items())
            if len(v) > 1}


def kept_reference(group: Sequence[LiveReference], live: LiveEnvironment,
                   service_account: str | None = None) -> LiveReference:
    """Which reference of a per-developer group to keep: the one whose logical name has no random suffix
    (a name someone chose), then the one more flows use (fewer flows to move), then the one bound to a
    connection the service account owns, then the first by logical name."""
    if not group:
        raise ValueError("an empty group has nothing to keep")

    def rank(r: LiveReference) -> tuple[bool, int, bool, str]:
        conn = live.connection(r.connection) if r.connection else None
        service_owned = bool(service_account and conn is not None and is_owner(service_account, conn, live))
        return (random_suffix(r.logical_name) is not None, -len(flows_using(live, r.logical_name)),
                not service_owned, r.logical_name.lower())

    return min(group, key=rank)


def connector_label(ref: LiveReference | DesiredReference) -> str:
    """``shared_sharepointonline``: the connector as a message names it."""
    return connector_name(ref.connector)


_KIND_WORDS = {"flow": "flow", "canvas_app": "canvas app", "bot": "agent"}


def still_used(live: LiveEnvironment, ref: LiveReference, moved: Collection[str]) -> list[str]:
    """What keeps a replaced reference from being deleted once the flows ``moved`` (ids) are moved off it:
    the other flows whose definition names it, and whatever ``RetrieveDependenciesForDelete`` reported
    (canvas apps, agents, other components; docs/dataverse.md §2.7), each as a person reads it."""
    gone = {m.lower() for m in moved}
    out: dict[str, str] = {}
    for f in flows_using(live, ref.logical_name):
        if f.id.lower() not in gone:
            out[f.id.lower()] = f'flow "{f.name}"'
    for d in live.dependents.get(ref.id.lower(), ()):
        if d.id.lower() in gone or d.id.lower() in out:
            continue
        out[d.id.lower()] = f'{_KIND_WORDS.get(d.kind, d.kind)} "{d.name}"'
    return sorted(out.values(), key=str.lower)
