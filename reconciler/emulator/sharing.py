"""Who holds which role on a connection, as the connections service decides it: the creator is the Owner;
a share names a user or service principal (by Entra object id), a security group (its members, nested groups
included, hold the role) or the whole tenant (every principal of the tenant holds it).

Sources (docs/dataverse.md §4.5, §4.8, §4.9): principal types User / Group / Tenant and roles CanView /
CanViewWithShare / CanEdit / Owner in ``Set-AdminPowerAppConnectionRoleAssignment`` (a tenant share is
CanView only; its principal id is the tenant id); shares of type ``ServicePrincipal`` in the Terraform
provider's ``get_connection_shares.json``.

Groups live in the data's ``groups`` list: ``{"id", "displayName", "members": [object ids]}``; a member may be
another group (membership is transitive, as Graph's ``checkMemberGroups`` evaluates it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ROLES = ("CanView", "CanViewWithShare", "CanEdit", "Owner")
RANK = {"CanView": 1, "CanViewWithShare": 2, "CanEdit": 3, "Owner": 4}
PRINCIPAL_TYPES = ("User", "ServicePrincipal", "Group", "Tenant")


def permissions(conn: dict[str, Any]) -> list[dict[str, Any]]:
    perms: list[dict[str, Any]] = conn.setdefault("properties", {}).setdefault("permissions", [])
    return perms


def principal_of(permission: Mapping[str, Any]) -> Mapping[str, Any]:
    props = permission.get("properties") or {}
    principal = props.get("principal") or {}
    return principal if isinstance(principal, dict) else {}


def groups(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    found = data.get("groups") or []
    return [g for g in found if isinstance(g, dict)]


def group(data: Mapping[str, Any], group_id: str) -> dict[str, Any] | None:
    want = group_id.lower()
    return next((g for g in groups(data) if str(g.get("id", "")).lower() == want), None)


def member_of(data: Mapping[str, Any], object_id: str) -> set[str]:
    """The ids (lower case) of every group ``object_id`` belongs to, directly or through nested groups."""
    want = object_id.lower()
    direct: dict[str, set[str]] = {}
    for g in groups(data):
        for m in g.get("members") or []:
            direct.setdefault(str(m).lower(), set()).add(str(g.get("id", "")).lower())
    found: set[str] = set()
    todo = list(direct.get(want, ()))
    while todo:
        gid = todo.pop()
        if gid in found:
            continue
        found.add(gid)
        todo.extend(direct.get(gid, ()))
    return found


def tenant_id(data: Mapping[str, Any]) -> str:
    return str((data.get("environment") or {}).get("tenant_id") or "").lower()


def role_of(data: Mapping[str, Any], conn: Mapping[str, Any], object_id: str | None) -> str | None:
    """The strongest role ``object_id`` holds on ``conn``: as its creator, through a share naming it, a share
    with a group it belongs to, or a share with its tenant."""
    if not object_id:
        return None
    oid = object_id.lower()
    props = conn.get("properties") or {}
    best: str | None = None
    if str((props.get("createdBy") or {}).get("id", "")).lower() == oid:
        best = "Owner"
    memberships: set[str] | None = None
    for p in props.get("permissions") or []:
        principal = principal_of(p)
        pid = str(principal.get("id", "")).lower()
        kind = str(principal.get("type") or "")
        if kind == "Group":
            if memberships is None:
                memberships = member_of(data, oid)
            holds = pid in memberships
        elif kind == "Tenant":
            holds = bool(pid) and pid == tenant_id(data)
        else:
            holds = pid == oid
        role = str((p.get("properties") or {}).get("roleName", ""))
        if holds and role in RANK and (best is None or RANK[role] > RANK[best]):
            best = role
    return best


def is_service_principal(data: Mapping[str, Any], object_id: str) -> bool:
    """Whether ``object_id`` is an application's service principal (an application user of the environment,
    or a registered application)."""
    want = object_id.lower()
    for u in data.get("systemusers") or []:
        if str(u.get("azureactivedirectoryobjectid") or "").lower() == want and u.get("applicationid"):
            return True
    return any(str(a.get("object_id") or a.get("service_principal_id") or "").lower() == want
               for a in data.get("applications") or [])
