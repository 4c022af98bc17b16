"""The quickstart's emulator data (``dev.json``, ``test.json``, ``prod.json``), made deterministically.

    python examples/quickstart/make_data.py            # rewrite the files
    python examples/quickstart/make_data.py --check    # exit 1 if the files differ from what it makes

The data is in the format of ``docs/emulator-data.md`` and messy the way real environments are:
two makers each added their own SharePoint reference to the same unmanaged solution (random
five-hex suffixes, display names like ``SharePoint Solution1-30e7d``), flows use different
references for the same connector, one reference's connection is broken, one reference (made
outside the solution) is unbound, and connections belong to the makers as well as to the service
account. prod is tidier.

test is what a pipeline leaves after importing the solution *managed* (``pac solution import``, docs/
dataverse.md §2.6): the solution and its references and flows are managed, the references are unbound and
owned by the pipeline's application user, and the flows are off, among them a parent flow that runs a child
flow (docs/dataverse.md §5.5). connref binds the references, makes the service account their owner and
switches the flows on, the child first. A canvas app uses one of the references there too.

Every id comes from a seeded random generator, so running this again gives the same files. The one
exception is the emulator's token-signing key: it is generated once and then kept from the existing
file (it is the emulator's own key, not a user secret).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import secrets
import sys
import uuid
from pathlib import Path
from typing import Any

APIS = "/providers/Microsoft.PowerApps/apis/"
TYPE_CONNREF = {"dev": 10150, "test": 10077, "prod": 10063}  # org-specific on purpose: read it at run time
CANVAS_APP = 300  # solutioncomponent componenttype "Canvas App" (docs/dataverse.md §2.5)
COMPONENT_WORKFLOW = 29

SHAREPOINT = "shared_sharepointonline"
OUTLOOK = "shared_office365"
DATAVERSE = "shared_commondataserviceforapps"
TEAMS = "shared_teams"

# People and apps of the tenant (same object ids in every environment of the tenant).
MAKER1 = ("maker1@contoso.com", "Megan Bowen")
MAKER2 = ("maker2@contoso.com", "Alex Wilber")
SVC = ("svc-flows@contoso.com", "Flows Service Account")
APP_NAME = "connref pipeline"


class Ids:
    """Deterministic GUIDs and connection names from one seed."""

    def __init__(self, seed: str) -> None:
        self.rng = random.Random(seed)

    def guid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def hex32(self) -> str:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4).hex

    def legacy(self, api: str) -> str:
        # The older connection name form: shared-<api name cut to 13 characters>-<guid>,
        # e.g. shared-commondataser-<guid> (docs/dataverse.md §4.4).
        short = api.removeprefix("shared_")[:13]
        return f"shared-{short}-{self.guid()}"


TENANT = Ids("contoso-tenant")
TENANT_ID = TENANT.guid()
APP_CLIENT_ID = TENANT.guid()
APP_OBJECT_ID = TENANT.guid()
OBJECT_IDS = {upn: TENANT.guid() for upn, _ in (MAKER1, MAKER2, SVC)}


def demo_secret(directory: Path) -> str:
    return (directory / ".demo-secret").read_text(encoding="utf-8").strip()


class EnvBuilder:
    """Builds one environment's data; rows keep the Web API's column names."""

    def __init__(self, name: str, url: str, people: list[tuple[str, str]], *, managed: bool = False,
                 settings: dict[str, Any] | None = None) -> None:
        self.name = name
        self.managed = managed
        self.settings = dict(settings or {})
        self.ids = Ids(f"contoso-{name}")
        self.version = 1200
        self.clock = 0
        self.environment_id = self.ids.guid()
        self.env = {
            "name": name,
            "environment_id": self.environment_id,
            "url": url,
            "tenant_id": TENANT_ID,
            "organization_id": self.ids.guid(),
            "business_unit_id": self.ids.guid(),
            "connectionreference_componenttype": TYPE_CONNREF[name],
        }
        self.users: dict[str, dict[str, Any]] = {}
        for upn, full in people:
            self.users[upn] = {
                "systemuserid": self.ids.guid(),
                "azureactivedirectoryobjectid": OBJECT_IDS[upn],
                "domainname": upn,
                "fullname": full,
                "applicationid": None,
                "isdisabled": False,
                "privileges": [],
            }
        # The application user of the pipeline's app registration; it may impersonate (CallerObjectId).
        self.app_user = {
            "systemuserid": self.ids.guid(),
            "azureactivedirectoryobjectid": APP_OBJECT_ID,
            "domainname": f"{APP_CLIENT_ID}@contoso.onmicrosoft.com",
            "fullname": f"# {APP_NAME}",
            "applicationid": APP_CLIENT_ID,
            "isdisabled": False,
            "privileges": ["prvActOnBehalfOfAnotherUser"],
        }
        self.solution = {
            "solutionid": SOLUTION_ID,
            "uniquename": "ContosoFlows",
            "friendlyname": "Contoso Flows",
            "ismanaged": managed,
            "publisher_prefix": "contoso",
        }
        self.connections: list[dict[str, Any]] = []
        self.references: list[dict[str, Any]] = []
        self.components: list[dict[str, Any]] = []
        self.workflows: list[dict[str, Any]] = []
        self.canvasapps: list[dict[str, Any]] = []

    def next_version(self) -> int:
        self.version += 7
        return self.version

    def when(self, day: int, hour: int) -> str:
        return f"2026-02-{day:02d}T{hour:02d}:{(self.clock * 13) % 60:02d}:00Z"

    def connection(self, api: str, owner: str, *, legacy: bool = False, broken: bool = False, day: int = 2) -> str:
        name = self.ids.legacy(api) if legacy else self.ids.hex32()
        self.clock += 1
        oid = OBJECT_IDS[owner]
        full = self.users[owner]["fullname"]
        conn_id = f"{APIS}{api}/connections/{name}"
        status: dict[str, Any] = {"status": "Connected"}
        if broken:
            # The shape API Hub reports for an expired sign-in (docs/dataverse.md §4.4).
            status = {
                "status": "Error",
                "target": "token",
                "error": {"code": "Unauthenticated", "message": "This connection is not authenticated."},
            }
        self.connections.append(
            {
                "name": name,
                "id": conn_id,
                "type": "Microsoft.PowerApps/apis/connections",
                "properties": {
                    "apiId": f"{APIS}{api}",
                    "displayName": owner,
                    "statuses": [status],
                    "createdBy": {"id": oid, "displayName": full, "userPrincipalName": owner, "type": "User"},
                    "createdTime": self.when(day, 9),
                    "environment": {
                        "id": f"/providers/Microsoft.PowerApps/environments/{self.environment_id}",
                        "name": self.environment_id,
                    },
                    "permissions": [self.permission(conn_id, oid, "Owner")],
                    "accountName": owner,
                    "allowSharing": False,
                },
            }
        )
        return name

    @staticmethod
    def permission(conn_id: str, oid: str, role: str) -> dict[str, Any]:
        return {
            "name": oid,
            "id": f"{conn_id}/permissions/{oid}",
            "properties": {"roleName": role, "principal": {"id": oid, "type": "User"}},
        }

    def share(self, conn_name: str, upn: str, role: str) -> None:
        conn = next(c for c in self.connections if c["name"] == conn_name)
        conn["properties"]["permissions"].append(self.permission(conn["id"], OBJECT_IDS[upn], role))

    def reference(
        self,
        ref_id: str,
        logical: str,
        display: str,
        api: str,
        connection: str | None,
        owner: str,
        day: int,
        in_solution: bool = True,
    ) -> None:
        uid = self.owner_id(owner)
        self.clock += 1
        stamp = self.when(day, 10)
        self.references.append(
            {
                "connectionreferenceid": ref_id,
                "connectionreferencelogicalname": logical,
                "connectionreferencedisplayname": display,
                "connectorid": f"{APIS}{api}",
                "connectionid": connection,
                "description": None,
                "statecode": 0,
                "statuscode": 1,
                "ismanaged": self.managed and in_solution,
                "promptingbehavior": 0,
                "_ownerid_value": uid,
                "_createdby_value": uid,
                "_modifiedby_value": uid,
                "_createdonbehalfby_value": None,
                "_modifiedonbehalfby_value": None,
                "createdon": stamp,
                "modifiedon": stamp,
                "versionnumber": self.next_version(),
            }
        )
        if in_solution:
            self.component(ref_id, TYPE_CONNREF[self.name])

    def owner_id(self, owner: str) -> str:
        """A person's systemuserid, or the application user's for ``APP_NAME`` (what an import leaves)."""
        return str(self.app_user["systemuserid"] if owner == APP_NAME else self.users[owner]["systemuserid"])

    def component(self, object_id: str, componenttype: int) -> None:
        self.components.append(
            {
                "solutioncomponentid": self.ids.guid(),
                "_solutionid_value": SOLUTION_ID,
                "objectid": object_id,
                "componenttype": componenttype,
            }
        )

    def flow(
        self,
        flow_id: str,
        name: str,
        owner: str,
        uses: list[tuple[str, str, str]],
        on: bool,
        in_solution: bool = True,
        children: tuple[str, ...] = (),
        child: bool = False,
        manual: bool = False,
    ) -> None:
        """``uses``: (clientdata key, connector, reference logical name); keys are shared_x, shared_x-1...
        ``children``: the workflow ids it runs ("Run a Child Flow"); ``child``: it is one (a manual trigger);
        ``manual``: an instant flow (a manual trigger, a button) rather than an automated one."""
        row: dict[str, Any] = {
            "workflowid": flow_id,
            "name": name,
            "category": 5,
            "type": 1,
            "statecode": 1 if on else 0,
            "statuscode": 2 if on else 1,
            "ismanaged": self.managed and in_solution,
            "_ownerid_value": self.owner_id(owner),
            "clientdata": clientdata(uses, children=children, child=child or manual),
            "versionnumber": self.next_version(),
        }
        if on:
            row["published_once"] = True
        self.workflows.append(row)
        if in_solution:
            self.component(flow_id, COMPONENT_WORKFLOW)

    def canvas_app(self, app_id: str, name: str, owner: str, uses: list[str]) -> None:
        """A canvas app of the solution that uses these references (docs/dataverse.md §2.5)."""
        self.canvasapps.append({
            "canvasappid": app_id,
            "name": "contoso_" + "".join(ch for ch in name.lower() if ch.isalnum()),
            "displayname": name,
            "ismanaged": self.managed,
            "_ownerid_value": self.owner_id(owner),
            "versionnumber": self.next_version(),
            "connection_references": uses,
        })
        self.component(app_id, CANVAS_APP)

    def build(self, signing_key_pem: str, secret: str) -> dict[str, Any]:
        return {
            "format": "connref-emulator/1",
            "environment": self.env,
            "settings": {
                "enforce_connection_access": True,
                "enforce_duplicate_logical_name": True,
                "logical_name_immutable": True,
                "delete_in_use_status": 400,
                "page_size_default": 5000,
                **self.settings,
            },
            "signing_key_pem": signing_key_pem,
            "applications": [
                {
                    "client_id": APP_CLIENT_ID,
                    "object_id": APP_OBJECT_ID,
                    "display_name": APP_NAME,
                    "client_secret_sha256": [hashlib.sha256(secret.encode("utf-8")).hexdigest()],
                    "certificates": [],
                    "federated_credentials": [],
                    "managed_identity": False,
                    "management_app": True,
                }
            ],
            "systemusers": [*self.users.values(), self.app_user],
            "solutions": [self.solution],
            "connectionreferences": self.references,
            "solutioncomponents": self.components,
            "workflows": self.workflows,
            "canvasapps": self.canvasapps,
            "bots": [],
            "asyncoperations": [],
            "connections": self.connections,
            "next_versionnumber": self.version + 1000,
        }


def clientdata(uses: list[tuple[str, str, str]], *, children: tuple[str, ...] = (), child: bool = False) -> str:
    """A flow definition in the solution-aware clientdata shape (docs/dataverse.md §5.2): an automated trigger
    on its first connector, or a manual one for a child flow; ``children`` are run with the "Run a Child
    Flow" action (``"type": "Workflow"``, ``inputs.host.workflowReferenceName``, docs/dataverse.md §5.5)."""
    refs = {
        key: {
            "runtimeSource": "embedded",
            "connection": {"connectionReferenceLogicalName": logical},
            "api": {"name": api},
        }
        for key, api, logical in uses
    }
    first_key, first_api, _ = uses[0]
    actions: dict[str, Any] = {}
    for i, (key, api, _) in enumerate(uses if child else uses[1:], start=1):
        actions[f"Step_{i}_{api.removeprefix('shared_')}"] = {
            "type": "OpenApiConnection",
            "inputs": {
                "host": {"apiId": f"{APIS}{api}", "connectionName": key, "operationId": OPERATIONS[api]},
                "authentication": "@parameters('$authentication')",
            },
            "runAfter": {},
        }
    definition = {
        "$schema": "https://schema.management.azure.com/providers/Microsoft.Logic/schemas/2016-06-01/workflowdefinition.json#",
        "contentVersion": "1.0.0.0",
        "parameters": {
            "$connections": {"defaultValue": {}, "type": "Object"},
            "$authentication": {"defaultValue": {}, "type": "SecureObject"},
        },
        "triggers": {
            "When_an_item_is_created": {
                "type": "OpenApiConnectionNotification",
                "inputs": {
                    "host": {
                        "apiId": f"{APIS}{first_api}",
                        "connectionName": first_key,
                        "operationId": TRIGGERS.get(first_api, "GetOnNewItems"),
                    },
                    "authentication": "@parameters('$authentication')",
                },
            }
        } if not child else {"manual": {"type": "Request", "kind": "Button", "inputs": {"schema": {}}}},
        "actions": actions,
    }
    for n, child_id in enumerate(children, start=1):
        actions[f"Run_a_Child_Flow_{n}"] = {
            "type": "Workflow",
            "inputs": {"host": {"workflowReferenceName": child_id}, "body": {}},
            "runAfter": {},
        }
    return json.dumps(
        {"properties": {"connectionReferences": refs, "definition": definition}, "schemaVersion": "1.0.0.0"},
        separators=(",", ":"),
    )


OPERATIONS = {
    SHAREPOINT: "PatchItem",
    OUTLOOK: "SendEmailV2",
    DATAVERSE: "CreateRecord",
    TEAMS: "PostMessageToConversation",
}
TRIGGERS = {SHAREPOINT: "GetOnNewItems", DATAVERSE: "SubscribeWebhookTrigger", TEAMS: "OnNewChannelMessage"}

# Rows that keep their id across environments: solution import preserves the ids of the solution,
# its connection references and its flows.
_SHARED = Ids("contoso-solution")
SOLUTION_ID = _SHARED.guid()
REF_SP_30E7D = _SHARED.guid()
REF_SP_8F4B0 = _SHARED.guid()
REF_OUTLOOK = _SHARED.guid()
REF_DATAVERSE = _SHARED.guid()
REF_TEAMS = _SHARED.guid()
FLOW_INTAKE = _SHARED.guid()
FLOW_APPROVAL = _SHARED.guid()
FLOW_NOTIFY = _SHARED.guid()
# Shipped with the solution's newer version that test has (made in dev by the quickstart's first apply).
FLOW_POST = _SHARED.guid()
APP_TRACKER = _SHARED.guid()
REF_TEAMS_NEW = _SHARED.guid()
FLOW_REQUEST = _SHARED.guid()
FLOW_ARCHIVE = _SHARED.guid()

LN_SP_30E7D = "contoso_sharedsharepointonline_30e7d"
LN_SP_8F4B0 = "contoso_sharedsharepointonline_8f4b0"
LN_OUTLOOK = "contoso_sharedoffice365_d4c61"
LN_DATAVERSE = "contoso_sharedcommondataserviceforapps_7b2e9"
LN_TEAMS = "contoso_sharedteams_c93f2"
LN_TEAMS_NEW = "contoso_Teams"  # declared in the config: created in dev, shipped to test in the solution


# dev and prod answer a rebind's asynchronous update of the flows at once; test takes a second, as the
# platform does (docs/dataverse.md §5.7), so the demo shows connref waiting for it.
AT_ONCE = {"rebind_propagation_seconds": 0}


def make_dev() -> EnvBuilder:
    b = EnvBuilder("dev", "https://contoso-dev.crm4.dynamics.com", [MAKER1, MAKER2, SVC], settings=AT_ONCE)
    sp_m1 = b.connection(SHAREPOINT, MAKER1[0], day=2)
    sp_m2 = b.connection(SHAREPOINT, MAKER2[0], day=3)
    b.connection(SHAREPOINT, SVC[0], day=5)
    outlook_m1 = b.connection(OUTLOOK, MAKER1[0], broken=True, day=2)
    b.connection(OUTLOOK, SVC[0], day=5)
    dataverse_svc = b.connection(DATAVERSE, SVC[0], legacy=True, day=1)
    b.connection(TEAMS, MAKER2[0], day=3)
    b.connection(TEAMS, SVC[0], day=5)
    b.share(sp_m1, MAKER2[0], "CanView")  # maker1 shared a site connection with maker2, by hand

    b.reference(REF_SP_30E7D, LN_SP_30E7D, "SharePoint Solution1-30e7d", SHAREPOINT, sp_m1, MAKER1[0], 2)
    b.reference(REF_SP_8F4B0, LN_SP_8F4B0, "SharePoint Solution1-8f4b0", SHAREPOINT, sp_m2, MAKER2[0], 3)
    b.reference(REF_OUTLOOK, LN_OUTLOOK, "Office 365 Outlook Solution1-d4c61", OUTLOOK, outlook_m1, MAKER1[0], 2)
    b.reference(REF_DATAVERSE, LN_DATAVERSE, "Microsoft Dataverse ContosoFlows", DATAVERSE, dataverse_svc, SVC[0], 1)
    # maker2 started a Teams flow outside the solution (in the default solution) and never bound
    # its reference: it stays unbound, and off.
    b.reference(REF_TEAMS, LN_TEAMS, "Microsoft Teams Solution1-c93f2", TEAMS, None, MAKER2[0], 3, in_solution=False)

    b.flow(
        FLOW_INTAKE,
        "Invoice intake",
        MAKER1[0],
        [(SHAREPOINT, SHAREPOINT, LN_SP_30E7D), (OUTLOOK, OUTLOOK, LN_OUTLOOK)],
        on=True,
    )
    b.flow(
        FLOW_APPROVAL,
        "Invoice approval",
        MAKER2[0],
        [
            (SHAREPOINT, SHAREPOINT, LN_SP_8F4B0),
            (f"{SHAREPOINT}-1", SHAREPOINT, LN_SP_30E7D),
            (DATAVERSE, DATAVERSE, LN_DATAVERSE),
        ],
        on=True,
    )
    b.flow(
        FLOW_NOTIFY,
        "Notify finance channel",
        MAKER2[0],
        [(TEAMS, TEAMS, LN_TEAMS)],
        on=False,
        in_solution=False,
    )
    # Instant flows (a button) on each maker's SharePoint reference, beside the automated ones above: what a
    # consolidation moves (docs/adoption.md, "Consolidating per-developer references").
    b.flow(FLOW_REQUEST, "Request invoice approval", MAKER2[0], [(SHAREPOINT, SHAREPOINT, LN_SP_8F4B0)], on=True,
           manual=True)
    b.flow(FLOW_ARCHIVE, "Archive invoice", MAKER1[0], [(SHAREPOINT, SHAREPOINT, LN_SP_30E7D)], on=True, manual=True)
    return b


def make_test() -> EnvBuilder:
    """After ``pac solution import`` of the managed solution: references unbound and owned by the pipeline's
    application user, flows off; the service account's connections exist (it signed in once)."""
    b = EnvBuilder("test", "https://contoso-test.crm4.dynamics.com", [MAKER2, SVC], managed=True,
                   settings={"rebind_propagation_seconds": 1})
    b.connection(SHAREPOINT, SVC[0], day=20)
    b.connection(OUTLOOK, SVC[0], day=20)
    b.connection(DATAVERSE, SVC[0], day=20)
    b.connection(TEAMS, SVC[0], day=20)
    b.connection(SHAREPOINT, MAKER2[0], day=21)  # a tester's own, never to be bound

    b.reference(REF_SP_30E7D, LN_SP_30E7D, "SharePoint ContosoFlows", SHAREPOINT, None, APP_NAME, 19)
    b.reference(REF_SP_8F4B0, LN_SP_8F4B0, "SharePoint ContosoFlows Approvals", SHAREPOINT, None, APP_NAME, 19)
    b.reference(REF_OUTLOOK, LN_OUTLOOK, "Office 365 Outlook ContosoFlows", OUTLOOK, None, APP_NAME, 19)
    b.reference(REF_DATAVERSE, LN_DATAVERSE, "Microsoft Dataverse ContosoFlows", DATAVERSE, None, APP_NAME, 19)
    b.reference(REF_TEAMS_NEW, LN_TEAMS_NEW, "Microsoft Teams ContosoFlows", TEAMS, None, APP_NAME, 19)
    b.references[-1]["description"] = "Posts to the finance channel"
    b.references[0]["description"] = "Invoice library and approvals list"
    b.flow(
        FLOW_INTAKE,
        "Invoice intake",
        APP_NAME,
        [(SHAREPOINT, SHAREPOINT, LN_SP_30E7D), (OUTLOOK, OUTLOOK, LN_OUTLOOK)],
        on=False,
    )
    b.flow(
        FLOW_POST,
        "Post to finance channel",
        APP_NAME,
        [(TEAMS, TEAMS, LN_TEAMS_NEW)],
        on=False,
        child=True,
    )
    b.flow(
        FLOW_APPROVAL,
        "Invoice approval",
        APP_NAME,
        [
            (SHAREPOINT, SHAREPOINT, LN_SP_8F4B0),
            (f"{SHAREPOINT}-1", SHAREPOINT, LN_SP_30E7D),
            (DATAVERSE, DATAVERSE, LN_DATAVERSE),
        ],
        on=False,
        children=(FLOW_POST,),
    )
    b.canvas_app(APP_TRACKER, "Invoice tracker", APP_NAME, [LN_SP_30E7D])
    return b


def make_prod() -> EnvBuilder:
    b = EnvBuilder("prod", "https://contoso.crm4.dynamics.com", [MAKER2, SVC], settings=AT_ONCE)
    sp_svc = b.connection(SHAREPOINT, SVC[0], day=10)
    outlook_svc = b.connection(OUTLOOK, SVC[0], day=10)
    dataverse_svc = b.connection(DATAVERSE, SVC[0], day=10)
    b.connection(TEAMS, SVC[0], day=10)
    sp_m2 = b.connection(SHAREPOINT, MAKER2[0], day=11)  # made during a hotfix, never cleaned up

    b.reference(REF_SP_30E7D, LN_SP_30E7D, "SharePoint Solution1-30e7d", SHAREPOINT, sp_svc, SVC[0], 10)
    b.reference(REF_SP_8F4B0, LN_SP_8F4B0, "SharePoint Solution1-8f4b0", SHAREPOINT, sp_m2, MAKER2[0], 11)
    b.reference(REF_OUTLOOK, LN_OUTLOOK, "Office 365 Outlook ContosoFlows", OUTLOOK, outlook_svc, SVC[0], 10)
    b.reference(REF_DATAVERSE, LN_DATAVERSE, "Microsoft Dataverse ContosoFlows", DATAVERSE, dataverse_svc, SVC[0], 10)
    b.flow(
        FLOW_INTAKE,
        "Invoice intake",
        SVC[0],
        [(SHAREPOINT, SHAREPOINT, LN_SP_30E7D), (OUTLOOK, OUTLOOK, LN_OUTLOOK)],
        on=True,
    )
    b.flow(
        FLOW_APPROVAL,
        "Invoice approval",
        SVC[0],
        [
            (SHAREPOINT, SHAREPOINT, LN_SP_8F4B0),
            (f"{SHAREPOINT}-1", SHAREPOINT, LN_SP_30E7D),
            (DATAVERSE, DATAVERSE, LN_DATAVERSE),
        ],
        on=True,
    )
    return b


# The quickstart's config, after its first line (``# yaml-language-server: $schema=...``, which depends on
# where the schema is). examples/quickstart/connref.yaml is this with the repository's schema path.
CONFIG_BODY = """\
# The quickstart: one clean set of connection references for the ContosoFlows solution, bound in
# each environment to connections owned by the flows service account. The three environments are
# served by connref's built-in emulator from the JSON files next to this one (no tenant needed);
# `apply` writes back into those files, so try it on a copy (`make demo` does).
#   dev   the makers' environment: the solution is unmanaged, connref creates, renames and rebinds.
#   test  the solution was imported managed by the pipeline: connref binds the references, makes the
#         service account their owner and switches the flows on (child flows first).
#   prod  an older, unmanaged install, tidied up.
version: 1
solution: ContosoFlows

references:
  # Logical names are immutable: keep the ones the makers' flows already use, tidy the rest.
  contoso_sharedsharepointonline_30e7d:
    connector: shared_sharepointonline
    display_name: SharePoint ContosoFlows
    description: Invoice library and approvals list
  contoso_sharedsharepointonline_8f4b0:
    connector: shared_sharepointonline
    display_name: SharePoint ContosoFlows Approvals
  contoso_sharedoffice365_d4c61:
    connector: shared_office365
    display_name: Office 365 Outlook ContosoFlows
  contoso_sharedcommondataserviceforapps_7b2e9:
    connector: /providers/Microsoft.PowerApps/apis/shared_commondataserviceforapps
    display_name: Microsoft Dataverse ContosoFlows
  # New: not in any environment yet, so the first apply creates it inside the solution.
  contoso_Teams:
    connector: shared_teams
    display_name: Microsoft Teams ContosoFlows
    description: Posts to the finance channel

environments:
  dev:
    url: local:dev.json
    auth: demo
    service_account: svc-flows@contoso.com
    bindings:
      contoso_sharedsharepointonline_30e7d: {owner: svc-flows@contoso.com}
      contoso_sharedsharepointonline_8f4b0: 7c84991c04914d13b9fa2b331a3ad4b8
      contoso_sharedoffice365_d4c61: {owner: svc-flows@contoso.com}
      contoso_sharedcommondataserviceforapps_7b2e9: shared-commondataser-02b6ee82-a4ff-46ec-8360-751ab6c28b1b
      contoso_Teams: 8f70942eabcb416e8a0f9861272ee570
  test:
    url: local:test.json
    auth: demo
    service_account: svc-flows@contoso.com
    bindings:
      contoso_sharedsharepointonline_30e7d: {owner: svc-flows@contoso.com}
      contoso_sharedsharepointonline_8f4b0: {owner: svc-flows@contoso.com}
      contoso_sharedoffice365_d4c61: {owner: svc-flows@contoso.com}
      contoso_sharedcommondataserviceforapps_7b2e9: {owner: svc-flows@contoso.com}
      contoso_Teams: {owner: svc-flows@contoso.com}
    flows:
      activate: true        # the default: switch on the solution's flows once their references are bound
      wait_seconds: 120     # how long apply waits for the platform to update the flows after a rebind
  prod:
    url: local:prod.json
    auth: demo
    service_account: svc-flows@contoso.com
    bindings:
      contoso_sharedsharepointonline_30e7d: 014bbff826f84ec390f6953d109919d5
      contoso_sharedsharepointonline_8f4b0: 014bbff826f84ec390f6953d109919d5
      contoso_sharedoffice365_d4c61: 8ee5a024897742cc86f3aea206fe2e92
      contoso_sharedcommondataserviceforapps_7b2e9: d6f3c5bb44574352a780f54d27314721
      contoso_Teams: 3e42458eac204f9bb872ce16abfd20ab

auth:
  demo:
    # The "connref pipeline" app registration of the emulated tenant. Its secret is in a file
    # (a demo value, accepted only by the emulator); in a pipeline use client_secret_env instead.
    method: client_secret
    tenant_id: df76c6b8-fbdd-4bb3-b003-b292f5ad38a3
    client_id: b60019b8-637b-4318-b461-ea6796113c58
    client_secret_file: .demo-secret
"""


def config_text(schema_path: str) -> str:
    """The quickstart's connref.yaml, naming ``schema_path`` for editors."""
    return f"# yaml-language-server: $schema={schema_path}\n" + CONFIG_BODY


def new_demo_secret() -> str:
    """A fresh client secret for the emulated app registration (the data keeps only its SHA-256)."""
    return secrets.token_urlsafe(24)


def quickstart_files(*, schema_path: str) -> dict[str, str]:
    """The quickstart as file name -> content: the config, every environment's data with fresh signing keys,
    and a fresh demo secret (``connref init --emulator`` writes them)."""
    from .jwt import new_signing_key_pem

    secret = new_demo_secret()
    files = {"connref.yaml": config_text(schema_path), ".demo-secret": secret + "\n"}
    for name, make in (("dev.json", make_dev), ("test.json", make_test), ("prod.json", make_prod)):
        files[name] = dumps(make().build(new_signing_key_pem(), secret))
    return files


def dumps(data: dict[str, Any]) -> str:
    # Same layout as the emulator's store writes back, so an apply on a copy diffs cleanly.
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def existing_key(path: Path) -> str | None:
    try:
        key = json.loads(path.read_text(encoding="utf-8")).get("signing_key_pem")
    except (OSError, ValueError):
        return None
    return key if isinstance(key, str) and key else None


def build_all(out_dir: Path) -> dict[str, str]:
    """File name -> content. Keys come from the existing files; missing ones are generated."""
    out: dict[str, str] = {}
    secret = demo_secret(out_dir)
    for name, make in (("dev.json", make_dev), ("test.json", make_test), ("prod.json", make_prod)):
        key = existing_key(out_dir / name)
        if key is None:
            from .jwt import new_signing_key_pem

            key = new_signing_key_pem()
        out[name] = dumps(make().build(key, secret))
    return out


def main(argv: list[str] | None = None, *, default_dir: Path) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if the files are not what this script makes")
    parser.add_argument("--out", type=Path, default=default_dir, help="folder to write to (default: the quickstart)")
    args = parser.parse_args(argv)
    files = build_all(args.out)
    stale = [n for n, text in files.items() if not (args.out / n).exists() or (args.out / n).read_text() != text]
    if args.check:
        for n in stale:
            print(f"{n} is out of date: run python examples/quickstart/make_data.py", file=sys.stderr)
        return 1 if stale else 0
    for n, text in files.items():
        (args.out / n).write_text(text, encoding="utf-8")
        print(f"wrote {args.out / n}")
    return 0

