"""Builders of hand-made live environments and configs for the lint, import and settings tests (no
tests here). The messy environment mirrors what adoption meets: per-developer references with random
suffixes, personal and broken connections, an unbound reference, an unused one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from reconciler.model import (
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
    connector_id,
    frozen_map,
)

SVC = LiveUser("u-svc", "oid-svc", "svc-flows@contoso.com", "Flows Service Account")
ALICE = LiveUser("u-alice", "oid-alice", "alice@contoso.com", "Alice Maker")
BOB = LiveUser("u-bob", "oid-bob", "bob@contoso.com", "Bob Maker")
SOLUTION = LiveSolution("sol-1", "ContosoFlows", prefix="contoso")
SP = "shared_sharepointonline"
OUTLOOK = "shared_office365"
TEAMS = "shared_teams"
SA = "svc-flows@contoso.com"


def conn(
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
    return LiveConnection(
        name, connector_id(connector), display or name, status, owner.object_id, owner.fullname, perms
    )


def ref(
    logical: str,
    display: str | None = None,
    *,
    connector: str = SP,
    connection: str | None = None,
    description: str | None = None,
    owner: LiveUser = SVC,
    in_solution: bool = True,
) -> LiveReference:
    return LiveReference(
        id=f"id-{logical.lower()}",
        logical_name=logical,
        display_name=display if display is not None else logical,
        connector=connector_id(connector),
        connection=connection,
        description=description,
        owner_id=owner.systemuserid,
        etag='W/"100"',
        in_solution=in_solution,
    )


def flow(name: str, *refs: str, solutions: Sequence[str] = ("ContosoFlows",)) -> LiveFlow:
    return LiveFlow(
        f"wf-{name.lower().replace(' ', '-')}", name, 1, SVC.systemuserid, tuple(refs), tuple(solutions)
    )


def live(
    refs: Sequence[LiveReference] = (),
    conns: Sequence[LiveConnection] = (),
    *,
    name: str = "dev",
    flows: Sequence[LiveFlow] = (),
    writer: LiveUser | None = SVC,
    solution: LiveSolution | None = SOLUTION,
) -> LiveEnvironment:
    return LiveEnvironment(
        name=name,
        solution=solution,
        component_type=10150,
        references=tuple(refs),
        connections=tuple(conns),
        users=(SVC, ALICE, BOB),
        flows=tuple(flows),
        caller=writer,
        writer=writer,
    )


def desired(
    logical: str, display: str, *, connector: str = SP, description: str | None = None
) -> DesiredReference:
    return DesiredReference(logical, connector_id(connector), display, description)


def config(
    refs: Sequence[DesiredReference] = (),
    bindings: Mapping[str, Binding] | None = None,
    *,
    service_account: str | None = SA,
    envs: Sequence[str] = ("dev",),
    naming: str | None = None,
    lint_ignore: Sequence[str] = (),
    solution: str = "ContosoFlows",
) -> Config:
    environments = {
        e: EnvironmentConfig(
            name=e,
            url=f"local:{e}.json",
            service_account=service_account,
            bindings=frozen_map(bindings or {}),
        )
        for e in envs
    }
    return Config(
        path="connref.yaml",
        version=1,
        solution=solution,
        references=frozen_map({r.logical_name: r for r in refs}),
        environments=frozen_map(environments),
        naming=naming,
        lint_ignore=tuple(lint_ignore),
    )


# --------------------------------------------------------------------------- the messy environment

C_SVC_SP = conn("a1b2c3d4e5f60718293a4b5c6d7e8f90", "SharePoint svc", owner=SVC)
C_ALICE_SP = conn("0f3a9e0c6d2b4e1f9a8b7c6d5e4f3a2b", "SharePoint alice", owner=ALICE, shared_with=[SVC])
C_BOB_SP = conn("b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0", "SharePoint bob", owner=BOB)
C_SVC_OUTLOOK = conn("5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e", "Outlook svc", connector=OUTLOOK, owner=SVC)
C_BROKEN_TEAMS = conn(
    "dead0000dead0000dead0000dead0000", "Teams svc", connector=TEAMS, owner=SVC, status="Error"
)


def messy_live(name: str = "dev") -> LiveEnvironment:
    """Two makers' SharePoint references (random suffixes, personal connections), an Outlook one
    bound well, a Teams one on a broken connection, an unbound one, an unused one, and one outside
    the solution."""
    return live(
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
