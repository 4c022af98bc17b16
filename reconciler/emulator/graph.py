"""The emulator's Microsoft Graph: the one function connref asks of it, whether a principal belongs to groups.

``POST /v1.0/directoryObjects/{id}/checkMemberGroups`` with ``{"groupIds": [...]}`` (at most 20) answers
``{"value": [the ids among them the object belongs to, transitively]}`` (docs/dataverse.md §4.10).

- Only a token for https://graph.microsoft.com is accepted; another audience gets Graph's 401
  ``InvalidAuthenticationToken`` "Access token validation failure. Invalid audience." (docs/dataverse.md §6.6).
- An application needs one of the application permissions ``GroupMember.Read.All``, ``Group.Read.All`` or
  ``Directory.Read.All`` (the data's ``applications[].graph_permissions``); a signed-in user needs the same as
  delegated permissions (``graph_delegated``: object ids of users who consented). Without one: 403
  ``Authorization_RequestDenied`` "Insufficient privileges to complete the operation.".
- An unknown object: 404 ``Request_ResourceNotFound``; more than 20 ids or a bad body: 400 ``Request_BadRequest``.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

from . import jwt, sharing
from .web import HttpError, Principal, Request, Response

AUDIENCE = "https://graph.microsoft.com"
#: Any one of these lets an application read group membership (Learn: directoryobject-checkmembergroups).
READ_MEMBERSHIP = frozenset({"GroupMember.Read.All", "Group.Read.All", "Directory.Read.All"})
MAX_GROUP_IDS = 20

_CHECK = re.compile(r"^/v1\.0/directoryObjects/(?P<id>[^/]+)/(?:microsoft\.graph\.)?checkMemberGroups/?$",
                    re.IGNORECASE)


class GraphError(HttpError):
    """Graph's error body: ``{"error": {"code", "message", "innerError": {"date", "request-id", ...}}}``."""

    def response(self, annotations: bool = False) -> Response:
        rid = str(uuid.uuid4())
        inner = {"date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"), "request-id": rid,
                 "client-request-id": rid}
        return Response.json(self.status, {"error": {"code": self.code, "message": self.message,
                                                     "innerError": inner}}, self.headers)


def handle(app: Any, request: Request) -> Response | None:
    m = _CHECK.match(request.path)
    if m is None:
        return None if not request.path.startswith("/v1.0/") else _not_found(request.path)
    if request.method != "POST":
        raise GraphError(405, "Request_BadRequest", f"The HTTP method '{request.method}' is not allowed.")
    caller = _caller(app, request)
    request.state["caller_object_id"] = caller.object_id
    with app.store.lock:
        data = app.store.data
        if not _may_read_membership(data, caller):
            raise GraphError(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
        target = m.group("id").lower()
        if not _exists(data, target):
            raise GraphError(404, "Request_ResourceNotFound",
                             f"Resource '{m.group('id')}' does not exist or one of its queried reference-property "
                             "objects are not present.")
        ids = _group_ids(request)
        member = sharing.member_of(data, target)
        return Response.json(200, {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(Edm.String)",
                                   "value": [g for g in ids if g.lower() in member]})


def _not_found(path: str) -> Response:
    raise GraphError(400, "BadRequest", f"Resource not found for the segment '{path.strip('/').split('/')[-1]}'.")


def _caller(app: Any, request: Request) -> Principal:
    try:
        return jwt.verify_bearer(app.store.data["signing_key_pem"], request.headers.get("Authorization"), [AUDIENCE])
    except HttpError as e:
        message = ("Access token validation failure. Invalid audience." if "audience" in e.message
                   else "Access token is empty." if "missing" in e.message
                   else "Lifetime validation failed, the token is expired." if "expired" in e.message
                   else "Access token validation failure.")
        raise GraphError(401, "InvalidAuthenticationToken", message, e.headers) from None


def _may_read_membership(data: dict[str, Any], caller: Principal) -> bool:
    if caller.app_id:
        application = next((a for a in data.get("applications") or []
                            if str(a.get("client_id", "")).lower() == str(caller.app_id).lower()), None)
        granted = set((application or {}).get("graph_permissions") or [])
        return bool(granted & READ_MEMBERSHIP)
    return caller.object_id.lower() in {str(x).lower() for x in data.get("graph_delegated") or []}


def _exists(data: dict[str, Any], object_id: str) -> bool:
    if sharing.group(data, object_id) is not None or sharing.is_service_principal(data, object_id):
        return True
    return any(str(u.get("azureactivedirectoryobjectid") or "").lower() == object_id
               for u in data.get("systemusers") or [])


def _group_ids(request: Request) -> list[str]:
    try:
        body = request.json()
    except ValueError:
        body = None
    ids = body.get("groupIds") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise GraphError(400, "Request_BadRequest", "The request body must have groupIds: an array of strings.")
    if len(ids) > MAX_GROUP_IDS:
        raise GraphError(400, "Request_BadRequest",
                         f"The number of group ids must not exceed {MAX_GROUP_IDS}.")
    return list(ids)
