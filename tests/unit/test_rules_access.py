"""The rules layer's access verdict on its own (``rules.access`` and the problems built on it): how the writer
may use a connection from the shares the permissions route served (owner, direct share, tenant, group verified
through Graph, group unverifiable, unreadable shares, none), the advice the platform allows, and when apply must
grant access. Pure: hand-built live data (docs/dataverse.md §4.8-§4.10)."""

from __future__ import annotations

from dataclasses import replace

from builders import MAKER1, PLANNING, SVC

from reconciler.domain import rules
from reconciler.domain.model import LiveConnection, LiveEnvironment, LiveUser, Permission

APP = LiveUser("u-app", "oid-app", "b60019b8@contoso.onmicrosoft.com", "pipeline", application_id="app-id")
TENANT = "tenant-1"
GROUP = "grp-pipelines"


def shared(*shares: Permission, refused: str | None = None) -> LiveConnection:
    """A connection of maker1's whose shares were read (``shares``) or refused (``refused``)."""
    conn = PLANNING.conn("c" * 32, "SharePoint maker1", owner=MAKER1)
    if refused is not None:
        return replace(conn, shares_refused=refused)
    return replace(conn, shares=(Permission(MAKER1.object_id or "", "Owner", "User"), *shares))


def env(conn: LiveConnection, *, writer: LiveUser = APP, membership: dict[str, bool] | None = None,
        group_check: str | None = None) -> LiveEnvironment:
    lv = PLANNING.live([], [conn], writer=writer)
    return replace(lv, group_membership=membership or {}, group_check=group_check)


def verdict(conn: LiveConnection, writer: LiveUser = APP, **kw: object) -> rules.Access:
    return rules.access(conn, writer, env(conn, writer=writer, **kw))  # type: ignore[arg-type]


def test_the_owner_may_use_it() -> None:
    conn = shared()
    assert verdict(conn, MAKER1) == rules.Access(rules.OWNER, "Owner")


def test_a_direct_share_with_the_writers_object_id_any_role() -> None:
    for role in ("CanView", "CanViewWithShare", "CanEdit"):
        found = verdict(shared(Permission("OID-APP", role, "ServicePrincipal")))
        assert (found.how, found.role, found.granted) == (rules.DIRECT, role, True)
    # An Owner share names an owner, whoever created it.
    assert verdict(shared(Permission("oid-app", "Owner", "User"))).how == rules.OWNER


def test_a_tenant_share_lets_everyone_use_it() -> None:
    found = verdict(shared(Permission(TENANT, "CanView", "Tenant")))
    assert (found.how, found.role, found.granted) == (rules.TENANT, "CanView", True)
    assert found.describe() == "tenant (CanView)"


def test_a_group_share_counts_when_graph_says_the_writer_is_a_member() -> None:
    conn = shared(Permission(GROUP, "CanEdit", "Group", display_name="Pipelines"))
    found = verdict(conn, membership={GROUP: True})
    assert (found.how, found.granted) == (rules.GROUP, True)
    assert found.describe() == f"group Pipelines ({GROUP}) (CanEdit)"
    # Graph said: not a member. No access, and no warning either.
    assert verdict(conn, membership={GROUP: False}).how == rules.NO_ACCESS


def test_a_group_share_whose_membership_could_not_be_read_is_allowed_unverified() -> None:
    conn = shared(Permission(GROUP, "CanView", "Group", display_name="Pipelines"))
    found = verdict(conn, group_check="HTTP 403 Authorization_RequestDenied")
    assert (found.how, found.allowed, found.granted) == (rules.GROUP_UNVERIFIED, True, False)
    assert "Pipelines" in found.describe() and "Authorization_RequestDenied" in found.describe()


def test_a_share_with_another_principal_or_group_of_the_same_id_is_not_the_writers() -> None:
    # A group whose id happens to be the writer's object id is a group share, not a direct one.
    assert verdict(shared(Permission("oid-app", "CanView", "Group")), membership={"oid-app": False}).how == \
        rules.NO_ACCESS
    assert verdict(shared(Permission("oid-someone", "CanView", "User"))).how == rules.NO_ACCESS


def test_shares_that_could_not_be_read_leave_access_unverified() -> None:
    found = verdict(shared(refused="HTTP 403 Forbidden"))
    assert (found.how, found.allowed, found.reason) == (rules.UNVERIFIED, True, "HTTP 403 Forbidden")


def test_the_shares_read_win_over_the_lists_inline_permissions() -> None:
    # The list carried a permission for the writer, the permissions route (read later) no longer does.
    conn = replace(shared(), permissions=(Permission("oid-app", "CanView", "User"),))
    assert verdict(conn).how == rules.NO_ACCESS
    # Shares not read: the list's own permissions are all there is.
    assert verdict(replace(conn, shares=None)).how == rules.DIRECT


def test_access_problem_codes_and_severities() -> None:
    group = shared(Permission(GROUP, "CanView", "Group", display_name="Pipelines"))
    cr213 = rules.access_problem(group, APP, env(group, group_check="HTTP 403"), service_account=None)
    assert cr213 is not None and (cr213.code, cr213.severity) == ("CR213", rules.WARNING)
    assert "Pipelines" in cr213.message and rules.GRAPH_PERMISSION in cr213.fix
    unread = shared(refused="HTTP 403")
    cr214 = rules.access_problem(unread, APP, env(unread), service_account=None)
    assert cr214 is not None and (cr214.code, cr214.severity) == ("CR214", rules.WARNING)
    assert "New-PowerAppManagementApp" in cr214.fix
    none = shared()
    cr210 = rules.access_problem(none, APP, env(none), service_account=None)
    assert cr210 is not None and (cr210.code, cr210.severity) == ("CR210", rules.ERROR)
    # With grant_access apply shares it: no problem.
    assert rules.access_problem(none, APP, env(none), service_account=None, grant=True) is None
    tenant = shared(Permission(TENANT, "CanView", "Tenant"))
    assert rules.access_problem(tenant, APP, env(tenant), service_account=None) is None


def test_the_advice_is_one_the_platform_allows() -> None:
    # A service principal's application user may be shared with directly (docs/dataverse.md §4.9) ...
    sp_advice = rules.share_advice(APP)
    assert "share it with" in sp_advice and "grant_access: true" in sp_advice and "CanView" in sp_advice
    # ... a person may not: a group they belong to, or their own connection.
    person = rules.share_advice(SVC)
    assert "security group" in person and "create the connection" in person
    assert not person.startswith(f"share it with {SVC.describe()}")


def test_judge_binding_keeps_unverified_access_as_a_warning() -> None:
    conn = shared(Permission(GROUP, "CanView", "Group"))
    lv = env(conn, group_check="no Microsoft Graph client")
    found = rules.judge_binding(conn.name, "shared_sharepointonline", APP, lv, service_account=None)
    assert found.usable == conn and found.problems == ()
    assert [p.code for p in found.warnings] == ["CR213"]
    refused = rules.judge_binding(shared().name, "shared_sharepointonline", APP, env(shared()), service_account=None)
    assert refused.usable is None and [p.code for p in refused.problems] == ["CR210"]


def test_needs_grant_only_without_any_access() -> None:
    none, tenant = shared(), shared(Permission(TENANT, "CanView", "Tenant"))
    assert rules.needs_grant(none, APP, env(none))
    assert not rules.needs_grant(tenant, APP, env(tenant))
    assert not rules.needs_grant(none, None, env(none))
    unread = shared(refused="HTTP 403")
    assert not rules.needs_grant(unread, APP, env(unread))  # unverified: not known to lack access


def test_the_new_codes_are_registered() -> None:
    assert rules.CODES["CR213"].severity == rules.WARNING and rules.CODES["CR213"].name == "group-share-unverified"
    assert rules.CODES["CR214"].severity == rules.WARNING and rules.CODES["CR214"].name == "shares-unreadable"


def test_lint_does_not_say_the_service_account_cannot_use_a_connection_whose_group_share_is_unverified() -> None:
    from reconciler.adoption.lint import connection_findings

    conn = shared(Permission(GROUP, "CanView", "Group", display_name="Pipelines"))
    live = replace(env(conn, group_check="no Graph token"), users=(APP, MAKER1, SVC))
    (cr201,) = [f for f in connection_findings("dev", "contoso_x", conn.connector, conn, live, APP.upn or "")
                if f.code == "CR201"]
    assert "could not be checked" in cr201.message and "cannot even use it" not in cr201.message
    denied = replace(live, group_membership={GROUP: False}, group_check=None)
    (cr201,) = [f for f in connection_findings("dev", "contoso_x", conn.connector, conn, denied, APP.upn or "")
                if f.code == "CR201"]
    assert "cannot even use it" in cr201.message
