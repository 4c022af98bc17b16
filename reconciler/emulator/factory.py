"""Builders that add rows to an emulator data dict in the exact shape of ``docs/emulator-data.md``.

Used by test fixtures, by example-data generators and by anyone who needs a populated environment
without writing JSON by hand. Each builder appends to ``data`` and returns the new row.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable
from typing import Any

from .store import new_guid, utc_now

CONNECTOR_PREFIX = "/providers/Microsoft.PowerApps/apis/"


def _next_version(data: dict[str, Any]) -> int:
    v = int(data.get("next_versionnumber", 1000))
    data["next_versionnumber"] = v + 1
    return v


def connector_id(name_or_id: str) -> str:
    return name_or_id if name_or_id.startswith("/") else CONNECTOR_PREFIX + name_or_id


def connector_tail(name_or_id: str) -> str:
    return name_or_id.rstrip("/").rsplit("/", 1)[-1]


def add_application(
    data: dict[str, Any],
    *,
    display_name: str = "connref pipeline",
    client_id: str | None = None,
    object_id: str | None = None,
    secrets: Iterable[str] = (),
    management_app: bool = False,
    managed_identity: bool = False,
    graph_permissions: Iterable[str] = (),
) -> dict[str, Any]:
    """An Entra application (service principal). Secrets are stored only as SHA-256 hex;
    ``graph_permissions`` are the Microsoft Graph application permissions consented to it."""
    app = {
        "client_id": client_id or new_guid(),
        "object_id": object_id or new_guid(),
        "display_name": display_name,
        "client_secret_sha256": [hashlib.sha256(s.encode("utf-8")).hexdigest() for s in secrets],
        "certificates": [],
        "federated_credentials": [],
        "managed_identity": managed_identity,
        "management_app": management_app,
        "graph_permissions": list(graph_permissions),
    }
    data["applications"].append(app)
    return app


def add_user(
    data: dict[str, Any],
    *,
    domainname: str,
    fullname: str | None = None,
    object_id: str | None = None,
    application_id: str | None = None,
    privileges: Iterable[str] = (),
    disabled: bool = False,
    systemuserid: str | None = None,
) -> dict[str, Any]:
    """A ``systemusers`` row; with ``application_id`` it is an application user."""
    user = {
        "systemuserid": systemuserid or new_guid(),
        "azureactivedirectoryobjectid": object_id or new_guid(),
        "domainname": domainname,
        "fullname": fullname or domainname,
        "applicationid": application_id,
        "isdisabled": disabled,
        "privileges": list(privileges),
    }
    data["systemusers"].append(user)
    return user


def add_application_user(
    data: dict[str, Any], app: dict[str, Any], *, privileges: Iterable[str] = ()
) -> dict[str, Any]:
    """The application user of an application (``applicationid`` = client id, object id = the SP's)."""
    return add_user(
        data,
        domainname=f"{app['client_id']}@application",
        fullname=app["display_name"],
        object_id=app["object_id"],
        application_id=app["client_id"],
        privileges=privileges,
    )


def add_solution(
    data: dict[str, Any],
    uniquename: str,
    *,
    friendlyname: str | None = None,
    ismanaged: bool = False,
    publisher_prefix: str = "contoso",
    solutionid: str | None = None,
) -> dict[str, Any]:
    sol = {
        "solutionid": solutionid or new_guid(),
        "uniquename": uniquename,
        "friendlyname": friendlyname or uniquename,
        "ismanaged": ismanaged,
        "publisher_prefix": publisher_prefix,
    }
    data["solutions"].append(sol)
    return sol


def add_solution_component(
    data: dict[str, Any], solution: dict[str, Any], objectid: str, componenttype: int
) -> dict[str, Any]:
    row = {
        "solutioncomponentid": new_guid(),
        "_solutionid_value": solution["solutionid"],
        "objectid": objectid,
        "componenttype": componenttype,
    }
    data["solutioncomponents"].append(row)
    return row


def add_reference(
    data: dict[str, Any],
    logical_name: str,
    connector: str,
    *,
    owner: dict[str, Any],
    display_name: str | None = None,
    connection: str | None = None,
    description: str | None = None,
    solution: dict[str, Any] | None = None,
    connectionreferenceid: str | None = None,
    managed: bool | None = None,
) -> dict[str, Any]:
    """A ``connectionreferences`` row owned by ``owner`` (a systemusers row); with ``solution`` it is
    also a component of that solution, managed when the solution is (or when ``managed`` says so)."""
    is_managed = bool(solution and solution.get("ismanaged")) if managed is None else managed
    now = utc_now()
    row = {
        "connectionreferenceid": connectionreferenceid or new_guid(),
        "connectionreferencelogicalname": logical_name,
        "connectionreferencedisplayname": display_name or logical_name,
        "connectorid": connector_id(connector),
        "connectionid": connection,
        "description": description,
        "statecode": 0,
        "statuscode": 1,
        "ismanaged": is_managed,
        "promptingbehavior": 0,
        "_ownerid_value": owner["systemuserid"],
        "_createdby_value": owner["systemuserid"],
        "_modifiedby_value": owner["systemuserid"],
        "_createdonbehalfby_value": None,
        "_modifiedonbehalfby_value": None,
        "createdon": now,
        "modifiedon": now,
        "versionnumber": _next_version(data),
    }
    data["connectionreferences"].append(row)
    if solution is not None:
        add_solution_component(
            data,
            solution,
            row["connectionreferenceid"],
            int(data["environment"].get("connectionreference_componenttype", 10150)),
        )
    return row


def new_connection_name() -> str:
    """The current connection-name form: 32 lower-case hex characters."""
    return uuid.uuid4().hex


def add_connection(
    data: dict[str, Any],
    connector: str,
    *,
    owner: dict[str, Any],
    name: str | None = None,
    display_name: str | None = None,
    shared_with: Iterable[tuple[str, str] | tuple[str, str, str]] = (),
    status: str = "Connected",
    created: str | None = None,
) -> dict[str, Any]:
    """A connection (connections API shape) created by ``owner`` (a systemusers row), optionally
    shared with ``(object_id, role)`` pairs (roles CanView, CanViewWithShare, CanEdit) or
    ``(object_id, role, principal type)`` (User, ServicePrincipal, Group, Tenant: docs/dataverse.md §4.8)."""
    api = connector_id(connector)
    name = name or new_connection_name()
    cid = f"{api}/connections/{name}"
    env_id = data["environment"].get("environment_id", "")
    upn = owner.get("domainname")
    is_app = bool(owner.get("applicationid"))
    perms = [
        {
            "name": owner["azureactivedirectoryobjectid"],
            "id": f"{cid}/permissions/{owner['azureactivedirectoryobjectid']}",
            "properties": {
                "roleName": "Owner",
                "principal": {
                    "id": owner["azureactivedirectoryobjectid"],
                    "type": "ServicePrincipal" if is_app else "User",
                },
            },
        }
    ]
    for share in shared_with:
        oid, role = share[0], share[1]
        kind = share[2] if len(share) > 2 else "User"
        perms.append(
            {
                "name": oid,
                "id": f"{cid}/permissions/{oid}",
                "properties": {"roleName": role, "principal": {"id": oid, "type": kind}},
            }
        )
    conn = {
        "name": name,
        "id": cid,
        "type": "Microsoft.PowerApps/apis/connections",
        "properties": {
            "apiId": api,
            "displayName": display_name or upn or name,
            "statuses": [{"status": status}],
            "createdBy": {
                "id": owner["azureactivedirectoryobjectid"],
                "displayName": owner.get("fullname"),
                "userPrincipalName": upn,
                "type": "ServicePrincipal" if is_app else "User",
            },
            "createdTime": created or utc_now(),
            "environment": {"id": f"/providers/Microsoft.PowerApps/environments/{env_id}", "name": env_id},
            "permissions": perms,
            "accountName": upn,
            "allowSharing": False,
        },
    }
    data["connections"].append(conn)
    return conn


def add_group(
    data: dict[str, Any], display_name: str, members: Iterable[str] = (), *, group_id: str | None = None
) -> dict[str, Any]:
    """An Entra security group; ``members`` are object ids of users, service principals or other groups
    (membership is transitive: docs/dataverse.md §4.10)."""
    group = {"id": group_id or new_guid(), "displayName": display_name, "members": list(members)}
    data.setdefault("groups", []).append(group)
    return group


def flow_clientdata(
    references: Iterable[tuple[str, str]], *, children: Iterable[str] = (), trigger: str = "manual",
    runtime_source: str = "embedded",
) -> str:
    """A solution-aware flow's ``clientdata`` using ``(logical_name, connector)`` pairs, keyed the way
    the designer keys them (``shared_x``, ``shared_x-1`` for a second reference to one connector), and
    running the flows whose ``workflowid`` is in ``children`` with the "Run a Child Flow" action (type
    ``Workflow``, docs/dataverse.md §5.5). ``trigger``: ``manual`` (a button; what a child flow has),
    ``recurrence`` (a scheduled flow) or ``automated`` (the first reference's connector's event);
    ``runtime_source``: ``embedded`` or ``invoker`` for every entry (docs/dataverse.md §5.4)."""
    conn_refs: dict[str, Any] = {}
    actions: dict[str, Any] = {}
    first_key: str | None = None
    for logical, connector in references:
        api = connector_tail(connector)
        key = api
        n = 0
        while key in conn_refs:
            n += 1
            key = f"{api}-{n}"
        first_key = first_key or key
        conn_refs[key] = {
            "runtimeSource": runtime_source,
            "connection": {"connectionReferenceLogicalName": logical},
            "api": {"name": api},
        }
        actions[f"Action_{len(actions) + 1}"] = {
            "type": "OpenApiConnection",
            "inputs": {"host": {"apiId": connector_id(connector), "connectionName": key, "operationId": "Op"}},
        }
    for child in children:
        actions[f"Run_a_Child_Flow_{len(actions) + 1}"] = {
            "type": "Workflow",
            "inputs": {"host": {"workflowReferenceName": child}, "body": {}},
        }
    triggers: dict[str, Any] = {"manual": {"type": "Request", "kind": "Button"}}
    if trigger == "recurrence":
        triggers = {"Recurrence": {"type": "Recurrence", "recurrence": {"frequency": "Day", "interval": 1}}}
    elif trigger == "automated" and first_key is not None:
        first_api = conn_refs[first_key]["api"]["name"]
        triggers = {"When_an_item_is_created": {
            "type": "OpenApiConnectionNotification",
            "inputs": {"host": {"apiId": connector_id(first_api), "connectionName": first_key,
                                "operationId": "GetOnNewItems"}},
        }}
    doc = {
        "properties": {
            "connectionReferences": conn_refs,
            "definition": {
                "$schema": "https://schema.management.azure.com/providers/Microsoft.Logic/schemas/2016-06-01/workflowdefinition.json#",
                "triggers": triggers,
                "actions": actions,
            },
        },
        "schemaVersion": "1.0.0.0",
    }
    return json.dumps(doc, separators=(",", ":"))


def add_flow(
    data: dict[str, Any],
    name: str,
    references: Iterable[tuple[str, str]],
    *,
    owner: dict[str, Any],
    active: bool = True,
    solution: dict[str, Any] | None = None,
    workflowid: str | None = None,
    children: Iterable[str] = (),
    trigger: str = "manual",
    managed: bool | None = None,
    runtime_source: str = "embedded",
) -> dict[str, Any]:
    """A cloud flow (category 5, type 1) whose clientdata uses the given references and runs the given
    child flows (their ``workflowid``); managed when its solution is (or ``managed`` says so)."""
    is_managed = bool(solution and solution.get("ismanaged")) if managed is None else managed
    now = utc_now()
    row = {
        "workflowid": workflowid or new_guid(),
        "name": name,
        "category": 5,
        "type": 1,
        "primaryentity": "none",
        "statecode": 1 if active else 0,
        "statuscode": 2 if active else 1,
        "ismanaged": is_managed,
        "_ownerid_value": owner["systemuserid"],
        "_createdby_value": owner["systemuserid"],
        "_modifiedby_value": owner["systemuserid"],
        "createdon": now,
        "modifiedon": now,
        "clientdata": flow_clientdata(references, children=children, trigger=trigger,
                                      runtime_source=runtime_source),
        "versionnumber": _next_version(data),
    }
    if active:
        row["published_once"] = True
    data["workflows"].append(row)
    if solution is not None:
        add_solution_component(data, solution, row["workflowid"], 29)
    return row


def fail_flow_update(data: dict[str, Any], workflowid: str, message: str) -> None:
    """Fault injection: the next asynchronous update of this flow (after a rebind, docs/dataverse.md §5.7)
    fails with ``message`` and leaves the flow on its old connection."""
    for row in data["workflows"]:
        if str(row["workflowid"]).lower() == workflowid.lower():
            row["update_failure"] = message
            return
    raise KeyError(workflowid)


def add_canvas_app(
    data: dict[str, Any],
    name: str,
    references: Iterable[str],
    *,
    owner: dict[str, Any],
    solution: dict[str, Any] | None = None,
    canvasappid: str | None = None,
) -> dict[str, Any]:
    """A canvas app (``canvasapps``) that uses the given references (logical names; the emulator keeps
    them in the emulator-only ``connection_references`` key: the platform records the dependency,
    docs/dataverse.md §2.5). A component of ``solution`` (type 300) when given."""
    now = utc_now()
    row = {
        "canvasappid": canvasappid or new_guid(),
        "name": name.lower().replace(" ", "_"),
        "displayname": name,
        "ismanaged": bool(solution and solution.get("ismanaged")),
        "_ownerid_value": owner["systemuserid"],
        "createdon": now,
        "modifiedon": now,
        "versionnumber": _next_version(data),
        "connection_references": list(references),
    }
    data["canvasapps"].append(row)
    if solution is not None:
        add_solution_component(data, solution, row["canvasappid"], 300)
    return row


def add_bot(
    data: dict[str, Any],
    name: str,
    references: Iterable[str],
    *,
    owner: dict[str, Any],
    solution: dict[str, Any] | None = None,
    botid: str | None = None,
    active: bool = True,
) -> dict[str, Any]:
    """A Copilot Studio agent (``bots``) that uses the given references (emulator-only
    ``connection_references``, docs/dataverse.md §2.5); its component type is the org's bot type."""
    now = utc_now()
    row = {
        "botid": botid or new_guid(),
        "name": name,
        "schemaname": "contoso_" + "".join(ch for ch in name.title() if ch.isalnum()),
        "statecode": 0 if active else 1,
        "statuscode": 1 if active else 2,
        "ismanaged": bool(solution and solution.get("ismanaged")),
        "_ownerid_value": owner["systemuserid"],
        "createdon": now,
        "modifiedon": now,
        "versionnumber": _next_version(data),
        "connection_references": list(references),
    }
    data["bots"].append(row)
    if solution is not None:
        add_solution_component(
            data, solution, row["botid"], int(data["environment"].get("bot_componenttype", 10191))
        )
    return row


# --------------------------------------------------------------------------- a populated sample environment


class Sample:
    """Fixed names and ids of :func:`sample_environment`, so tests and examples can refer to them."""

    TENANT_ID = "11111111-2222-3333-4444-555555555555"
    ENVIRONMENT_ID = "6f1c2a3b-0c4d-4e5f-8a9b-0c1d2e3f4a5b"
    URL = "https://contoso-dev.crm4.dynamics.com"
    COMPONENT_TYPE = 10150
    SOLUTION = "ContosoConnections"
    MANAGED_SOLUTION = "ContosoManaged"
    # the pipeline's application (client credentials) and its application user (may impersonate)
    APP_CLIENT_ID = "22222222-3333-4444-5555-666666666666"
    APP_OBJECT_ID = "a0000000-0000-4000-8000-00000000000a"
    APP_USER_ID = "a0000000-0000-4000-8000-0000000000a1"
    APP_SECRET = "emulator-test-secret"  # only its SHA-256 is stored
    # the service account that owns the shared connections
    SVC_UPN = "svc-flows@contoso.com"
    SVC_OBJECT_ID = "b0000000-0000-4000-8000-00000000000b"
    SVC_USER_ID = "b0000000-0000-4000-8000-0000000000b1"
    # a maker with a personal connection
    MAKER_UPN = "maker@contoso.com"
    MAKER_OBJECT_ID = "c0000000-0000-4000-8000-00000000000c"
    MAKER_USER_ID = "c0000000-0000-4000-8000-0000000000c1"
    # a disabled user
    DISABLED_UPN = "leaver@contoso.com"
    DISABLED_OBJECT_ID = "d0000000-0000-4000-8000-00000000000d"
    DISABLED_USER_ID = "d0000000-0000-4000-8000-0000000000d1"
    # connections (names) and references (ids / logical names)
    CONN_SP_SVC = "0f3a9e0c6d2b4e1f9a8b7c6d5e4f3a2b"
    CONN_OUTLOOK_SVC = "1e2d3c4b5a697887a6b5c4d3e2f10a1b"
    CONN_DV_SVC = "2a2b2c2d2e2f40418283848586878889"
    CONN_SP_MAKER = "3c3c3c3c3c3c4c4c8c8c9c9cacacbcbc"
    REF_SP = "e0000000-0000-4000-8000-0000000000e1"
    REF_OUTLOOK = "e0000000-0000-4000-8000-0000000000e2"
    REF_DV = "e0000000-0000-4000-8000-0000000000e3"
    REF_MAKER = "e0000000-0000-4000-8000-0000000000e4"
    REF_SP_NAME = "contoso_SharePoint"
    REF_OUTLOOK_NAME = "contoso_Outlook"
    REF_DV_NAME = "contoso_Dataverse"
    REF_MAKER_NAME = "contoso_sharedsharepointonline_8f4b0"
    SP = "shared_sharepointonline"
    OUTLOOK = "shared_office365"
    DATAVERSE = "shared_commondataserviceforapps"
    FLOW_ACTIVE = "f0000000-0000-4000-8000-0000000000f1"
    FLOW_DRAFT = "f0000000-0000-4000-8000-0000000000f2"


def sample_environment(signing_key_pem: str | None = None) -> dict[str, Any]:
    """A small, realistic environment: a pipeline application user that may impersonate, a service
    account owning SharePoint/Outlook/Dataverse connections (the Dataverse one shared with the
    application), a maker with a personal SharePoint connection, a disabled user, an unmanaged and a
    managed solution, four references (one unbound, one per-developer) and two flows (one on)."""
    from .store import new_environment_data

    s = Sample
    data = new_environment_data(
        name="dev",
        url=s.URL,
        environment_id=s.ENVIRONMENT_ID,
        tenant_id=s.TENANT_ID,
        organization_id="0a0a0a0a-0000-4000-8000-000000000001",
        business_unit_id="0b0b0b0b-0000-4000-8000-000000000001",
        componenttype=s.COMPONENT_TYPE,
        signing_key_pem=signing_key_pem,
        # Tests see a rebind reach the flows at once; tests of the delay set their own.
        settings={"rebind_propagation_seconds": 0},
    )
    app = add_application(
        data,
        display_name="connref pipeline",
        client_id=s.APP_CLIENT_ID,
        object_id=s.APP_OBJECT_ID,
        secrets=[s.APP_SECRET],
    )
    add_user(
        data,
        domainname=f"{app['client_id']}@application",
        fullname=app["display_name"],
        object_id=s.APP_OBJECT_ID,
        application_id=s.APP_CLIENT_ID,
        privileges=["prvActOnBehalfOfAnotherUser"],
        systemuserid=s.APP_USER_ID,
    )
    svc = add_user(
        data,
        domainname=s.SVC_UPN,
        fullname="Flows Service Account",
        object_id=s.SVC_OBJECT_ID,
        systemuserid=s.SVC_USER_ID,
    )
    maker = add_user(
        data,
        domainname=s.MAKER_UPN,
        fullname="Mia Maker",
        object_id=s.MAKER_OBJECT_ID,
        systemuserid=s.MAKER_USER_ID,
    )
    add_user(
        data,
        domainname=s.DISABLED_UPN,
        fullname="Former Employee",
        object_id=s.DISABLED_OBJECT_ID,
        systemuserid=s.DISABLED_USER_ID,
        disabled=True,
    )
    sol = add_solution(
        data,
        s.SOLUTION,
        friendlyname="Contoso Connections",
        solutionid="50000000-0000-4000-8000-000000000001",
    )
    add_solution(data, s.MANAGED_SOLUTION, ismanaged=True, solutionid="50000000-0000-4000-8000-000000000002")
    created = "2026-03-01T09:00:00Z"
    add_connection(data, s.SP, owner=svc, name=s.CONN_SP_SVC, created=created)
    add_connection(data, s.OUTLOOK, owner=svc, name=s.CONN_OUTLOOK_SVC, created=created)
    add_connection(
        data,
        s.DATAVERSE,
        owner=svc,
        name=s.CONN_DV_SVC,
        created=created,
        shared_with=[(s.APP_OBJECT_ID, "CanView")],
    )
    add_connection(data, s.SP, owner=maker, name=s.CONN_SP_MAKER, created=created)
    add_reference(
        data,
        s.REF_SP_NAME,
        s.SP,
        owner=svc,
        display_name="SharePoint ContosoConnections",
        connection=s.CONN_SP_SVC,
        solution=sol,
        connectionreferenceid=s.REF_SP,
    )
    add_reference(
        data,
        s.REF_OUTLOOK_NAME,
        s.OUTLOOK,
        owner=svc,
        display_name="Office 365 Outlook ContosoConnections",
        connection=s.CONN_OUTLOOK_SVC,
        solution=sol,
        connectionreferenceid=s.REF_OUTLOOK,
    )
    add_reference(
        data,
        s.REF_DV_NAME,
        s.DATAVERSE,
        owner=svc,
        display_name="Dataverse ContosoConnections",
        solution=sol,
        connectionreferenceid=s.REF_DV,
    )
    add_reference(
        data,
        s.REF_MAKER_NAME,
        s.SP,
        owner=maker,
        display_name="SharePoint Solution-8f4b0",
        connection=s.CONN_SP_MAKER,
        connectionreferenceid=s.REF_MAKER,
    )
    add_flow(
        data,
        "Invoice approval",
        [(s.REF_SP_NAME, s.SP), (s.REF_OUTLOOK_NAME, s.OUTLOOK)],
        owner=svc,
        active=True,
        solution=sol,
        workflowid=s.FLOW_ACTIVE,
    )
    add_flow(data, "Maker draft", [(s.REF_MAKER_NAME, s.SP)], owner=maker, active=False, workflowid=s.FLOW_DRAFT)
    return data
