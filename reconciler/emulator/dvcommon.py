"""Shared pieces of the Dataverse routes: the per-request context (caller and effective user), the
``Prefer`` header, ETags, and the documented error bodies.

Error shapes and codes follow powerapps-docs
``developer/data-platform/webapi/compose-http-requests-handle-errors.md``
and ``reference/web-service-error-codes.md`` (docs/dataverse.md §3.2). Where the real code or
status is not documented the constant says UNCONFIRMED (docs/emulator.md lists them).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .web import HttpError, Principal, Request

if TYPE_CHECKING:
    from .app import EmulatorApp
    from .store import EnvironmentStore

API_ROOT = "/api/data/v9.2"

# Documented codes (web-service-error-codes.md; docs/dataverse.md §3.2).
DUPLICATE_RECORD = "0x80040237"  # DuplicateRecord, 412
OBJECT_DOES_NOT_EXIST = "0x80040217"  # 404
VALIDATION_LENGTH = "0x80044331"  # 400 "A validation error occurred. The length of ..."
PRIVILEGE_DENIED = "0x80040220"  # 403
CANNOT_ACT_ON_BEHALF = "0x8004A110"  # CannotActOnBehalfOfAnotherUser, 403
IN_USE = "0x8004F01F"  # component referenced by others (status UNCONFIRMED; docs/dataverse.md §2.4, §2.7)
# Observed with "Flow client error returned with status code "BadRequest" ..." refusals of the flow service
# (ChildFlowNeverPublished; docs/dataverse.md §5.6).
FLOW_CLIENT_ERROR = "0x80060467"
# UNCONFIRMED codes: plausible values, kept in one place so a real-tenant run can correct them.
QUERY_ERROR = "0x80060888"  # bad or unsupported query option
PAYLOAD_ERROR = "0x80048d19"  # "Error identified in Payload provided by the user ..."
INVALID_ARGUMENT = "0x80040203"  # InvalidArgument
SEGMENT_NOT_FOUND = "0x8006088a"  # "Resource not found for the segment ..."
NOT_MEMBER_OF_ORG = "0x80072560"  # "The user is not a member of the organization."
USER_DISABLED = "0x80040225"  # disabled user (caller or impersonation target)
CONCURRENCY_MISMATCH = "0x80060882"  # ConcurrencyVersionMismatch; docs show an empty code (docs/dataverse.md §3.4)

GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
PRIV_IMPERSONATE = "prvActOnBehalfOfAnotherUser"


def is_guid(s: Any) -> bool:
    return isinstance(s, str) and bool(GUID_RE.match(s))


def stable_guid(*parts: str) -> str:
    """A deterministic id for rows the emulator derives (dependencies, definitions, publishers)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "connref-emulator:" + ":".join(parts)))


def etag_of(row: dict[str, Any]) -> str:
    """The weak ETag Dataverse builds from versionnumber (``W/"470867"``)."""
    return f'W/"{row.get("versionnumber", 0)}"'


def parse_prefer(header: str | None) -> dict[str, str]:
    """``Prefer: return=representation, odata.maxpagesize=10, odata.include-annotations="*"``
    -> ``{"return": "representation", "odata.maxpagesize": "10", "odata.include-annotations": "*"}``."""
    out: dict[str, str] = {}
    if not header:
        return out
    for item in re.findall(r'(?:[^,"]|"[^"]*")+', header):
        item = item.strip()
        if not item:
            continue
        key, _, value = item.partition("=")
        out[key.strip().lower()] = value.strip().strip('"')
    return out


def wants_annotations(request: Request) -> bool:
    """The client asked for the error-detail annotations (``*`` or a list naming them)."""
    v = parse_prefer(request.headers.get("Prefer")).get("odata.include-annotations")
    return v is not None and (v == "*" or "Microsoft.PowerApps.CDS" in v)


@dataclass
class Ctx:
    """One authenticated Dataverse request: who called (token) and as whom it acts (impersonation)."""

    app: EmulatorApp
    request: Request
    principal: Principal
    caller: dict[str, Any]  # systemusers row of the token's identity
    user: dict[str, Any]  # effective systemusers row (the impersonated user, or the caller)
    in_batch: bool = False
    content_ids: dict[str, str] = field(default_factory=dict)

    @property
    def store(self) -> EnvironmentStore:
        return self.app.store

    @property
    def impersonating(self) -> bool:
        return str(self.user["systemuserid"]).lower() != str(self.caller["systemuserid"]).lower()

    @property
    def on_behalf_of(self) -> str | None:
        """The real caller, recorded in ``_createdonbehalfby_value`` when impersonating
        (impersonate-another-user-web-api.md)."""
        return str(self.caller["systemuserid"]) if self.impersonating else None

    @property
    def base(self) -> str:
        return f"{self.request.origin}{API_ROOT}"

    @property
    def prefer(self) -> dict[str, str]:
        return parse_prefer(self.request.headers.get("Prefer"))

    def setting(self, name: str) -> Any:
        return self.app.settings[name]


def not_found(entity: str, key: str) -> HttpError:
    """The documented 404 for a missing row ("account With Id = ... Does Not Exist")."""
    return HttpError(404, OBJECT_DOES_NOT_EXIST, f"{entity} With Id = {key} Does Not Exist")


def bad_request(message: str, code: str = INVALID_ARGUMENT) -> HttpError:
    return HttpError(400, code, message)


def read_json_body(request: Request, entity_set: str) -> dict[str, Any]:
    try:
        body = request.json()
    except (ValueError, UnicodeDecodeError):
        raise HttpError(
            400,
            PAYLOAD_ERROR,
            f"Error identified in Payload provided by the user for Entity :'{entity_set}': the body is not valid JSON.",
        ) from None
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise HttpError(
            400,
            PAYLOAD_ERROR,
            f"Error identified in Payload provided by the user for Entity :'{entity_set}': a JSON object is required.",
        )
    return body


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))
