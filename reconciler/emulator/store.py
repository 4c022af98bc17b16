"""One emulated environment's data: the parsed JSON of ``docs/emulator-data.md``, a lock, and atomic save.

Every route module (Dataverse, connections, tokens) reads and mutates ``store.data`` in place while
holding ``store.lock``; ``save()`` writes the whole document back (temp file, fsync, ``os.replace``)
with sorted keys, so a file written by ``apply`` on a ``local:`` environment diffs cleanly in git.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

from . import jwt

FORMAT = "connref-emulator/1"

#: Top-level keys of the data format; anything else is an error on load (docs/emulator-data.md).
TOP_LEVEL_KEYS = frozenset(
    {
        "format",
        "environment",
        "settings",
        "signing_key_pem",
        "applications",
        "systemusers",
        "solutions",
        "connectionreferences",
        "solutioncomponents",
        "workflows",
        "canvasapps",
        "bots",
        "asyncoperations",
        "connections",
        "next_versionnumber",
        "oidc",  # emulated OIDC issuers and managed identity (docs/emulator-data.md, Identity)
        # Entra groups {id, displayName, members}, Power Platform admins (object ids) and users who consented
        # to Graph's delegated membership permissions (docs/dataverse.md §4.3, §4.10)
        "groups",
        "power_platform_admins",
        "graph_delegated",
    }
)
REQUIRED_KEYS = ("format", "environment", "signing_key_pem")
LIST_KEYS = (
    "applications",
    "systemusers",
    "solutions",
    "connectionreferences",
    "solutioncomponents",
    "workflows",
    "canvasapps",
    "bots",
    "asyncoperations",
    "connections",
)
ENVIRONMENT_REQUIRED = ("url",)

#: Behaviour switches and their defaults; a data file's ``settings`` override them.
DEFAULT_SETTINGS: dict[str, Any] = {
    # Whoever writes connectionid must own the connection or have it shared (UNCONFIRMED: docs/dataverse.md §4.6).
    "enforce_connection_access": True,
    # Duplicate connectionreferencelogicalname on create -> 412 0x80040237 (UNCONFIRMED: docs/dataverse.md §1.5).
    "enforce_duplicate_logical_name": True,
    # PATCH of connectionreferencelogicalname -> 400 (UNCONFIRMED: docs/dataverse.md §1.4).
    "logical_name_immutable": True,
    # HTTP status of DELETE of a reference flows still use (UNCONFIRMED: 400 or 405; docs/dataverse.md §2.4).
    "delete_in_use_status": 400,
    # Rows per page when the client sends no odata.maxpagesize (default and cap 5000: docs/dataverse.md §3.5).
    "page_size_default": 5000,
    # Seconds before a rebind reaches the flows that use the reference: the platform applies it to them
    # asynchronously (docs/dataverse.md §5.3, §5.7); 0 = at once, inside the PATCH.
    "rebind_propagation_seconds": 3,
    # What a parent flow needs of its child flows to be switched on: "on" (each child is on now) or
    # "published_once" (each child was on at least once). UNCONFIRMED: docs/dataverse.md §5.6.
    "child_flow_activation": "on",
    # Whether a connectionid or owner change on a managed reference also leaves an unmanaged layer
    # (UNCONFIRMED: docs/dataverse.md §2.6); display name and description changes always do.
    "binding_leaves_layer": False,
    # msdyn_componentlayers answers only a query naming one component (msdyn_componentid and
    # msdyn_solutioncomponentname in the $filter), as a virtual table may (UNCONFIRMED: docs/dataverse.md §2.6).
    "componentlayers_require_component": True,
    # A PATCH of clientdata on a flow that is on: "refuse" (it must be switched off first, as a published
    # classic workflow must) or "allow" (edited in place). UNCONFIRMED: docs/dataverse.md §5.9.
    "flow_edit_while_on": "refuse",
    # Whether connection lists carry only the Owner's permission ("owner") or every share ("all");
    # the permissions route always serves every share (docs/dataverse.md §4.8).
    "list_permissions": "owner",
    # Whom a connection may be explicitly shared with as a user: "service_principals" (a user representing a
    # service principal only) or "anyone" (UNCONFIRMED reading of Learn's note: docs/dataverse.md §4.9).
    "explicit_share_targets": "service_principals",
    # Whether a $batch answer echoes the Content-ID of a request sent outside any change set ("echo") or
    # only inside change sets ("omit"); the order of the answers is documented either way
    # (UNCONFIRMED: docs/dataverse.md §3.7).
    "batch_content_id_outside_changesets": "echo",
}


def utc_now() -> str:
    """The current time in the data format's timestamp form (ISO 8601 UTC, ``Z``)."""
    return datetime.now(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_guid() -> str:
    return str(uuid.uuid4())


def new_environment_data(
    *,
    name: str = "dev",
    url: str = "https://contoso-dev.crm4.dynamics.com",
    environment_id: str | None = None,
    tenant_id: str | None = None,
    organization_id: str | None = None,
    business_unit_id: str | None = None,
    componenttype: int = 10150,
    bot_componenttype: int = 10191,
    signing_key_pem: str | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A fresh, valid, empty environment in the data format. Generating an RSA key is slow (~50 ms+);
    pass ``signing_key_pem`` to reuse one (tests do)."""
    return {
        "format": FORMAT,
        "environment": {
            "name": name,
            "environment_id": environment_id or new_guid(),
            "url": url,
            "tenant_id": tenant_id or new_guid(),
            "organization_id": organization_id or new_guid(),
            "business_unit_id": business_unit_id or new_guid(),
            "connectionreference_componenttype": componenttype,
            "bot_componenttype": bot_componenttype,
        },
        "settings": dict(settings or {}),
        "signing_key_pem": signing_key_pem or jwt.new_signing_key_pem(),
        "applications": [],
        "systemusers": [],
        "solutions": [],
        "connectionreferences": [],
        "solutioncomponents": [],
        "workflows": [],
        "canvasapps": [],
        "bots": [],
        "asyncoperations": [],
        "connections": [],
        "next_versionnumber": 1000,
    }


def validate_data(data: Any, source: str = "<data>") -> dict[str, Any]:
    """Check the top level of a data document; raise ``ValueError`` naming ``source`` and the bad key."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: the emulator data must be a JSON object")
    fmt = data.get("format")
    if fmt != FORMAT:
        raise ValueError(f"{source}: format must be {FORMAT!r}, got {fmt!r}")
    for key in sorted(data):
        if key not in TOP_LEVEL_KEYS:
            raise ValueError(f"{source}: unknown top-level key {key!r} (allowed: {', '.join(sorted(TOP_LEVEL_KEYS))})")
    for key in REQUIRED_KEYS:
        if key not in data:
            raise ValueError(f"{source}: missing required key {key!r}")
    env = data["environment"]
    if not isinstance(env, dict):
        raise ValueError(f"{source}: 'environment' must be an object")
    for key in ENVIRONMENT_REQUIRED:
        if not isinstance(env.get(key), str) or not env[key]:
            raise ValueError(f"{source}: 'environment.{key}' must be a non-empty string")
    if not isinstance(data["signing_key_pem"], str) or "PRIVATE KEY" not in data["signing_key_pem"]:
        raise ValueError(f"{source}: 'signing_key_pem' must be a PEM private key")
    for key in LIST_KEYS:
        data.setdefault(key, [])
        if not isinstance(data[key], list) or not all(isinstance(r, dict) for r in data[key]):
            raise ValueError(f"{source}: {key!r} must be a list of objects")
    data.setdefault("settings", {})
    if not isinstance(data["settings"], dict):
        raise ValueError(f"{source}: 'settings' must be an object")
    nv = data.setdefault("next_versionnumber", 1000)
    if not isinstance(nv, int) or isinstance(nv, bool):
        raise ValueError(f"{source}: 'next_versionnumber' must be an integer")
    return data


class EnvironmentStore:
    """The data of one environment, shared by every route; hold ``lock`` for any read-modify-write."""

    def __init__(self, data: dict[str, Any], path: str | None = None) -> None:
        self.data = data
        self.path = path
        self.lock = threading.RLock()

    # ------------------------------------------------------------------ construction / persistence

    @classmethod
    def from_file(cls, path: str) -> EnvironmentStore:
        # Every way the file can be unreadable is a ValueError naming it (the CLI shows it at the config's url).
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text (byte {e.start} cannot be read as UTF-8)") from None
        except RecursionError:
            raise ValueError(f"{path}: its JSON is nested too deeply to read") from None
        except OSError as e:
            raise ValueError(f"{path}: cannot read it: {e.strerror or e}") from None
        return cls(validate_data(raw, path), path=os.path.abspath(path))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EnvironmentStore:
        """Wrap a data dict (validated; not copied: the caller's dict is the live data)."""
        return cls(validate_data(d))

    def save(self) -> None:
        """Atomically write the data back to ``path``: a crash leaves either the old or the new file."""
        if self.path is None:
            return
        with self.lock:
            text = json.dumps(self.data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate: \u escapes keep the file valid UTF-8
                text = json.dumps(self.data, indent=2, sort_keys=True) + "\n"
        directory = os.path.dirname(self.path) or "."
        fd, tmp = tempfile.mkstemp(prefix=".connref-", suffix=".json.tmp", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            if os.path.exists(self.path):
                os.chmod(tmp, os.stat(self.path).st_mode & 0o777)
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def snapshot(self) -> dict[str, Any]:
        """A deep copy of the data (change-set rollback restores it with ``restore``)."""
        with self.lock:
            return copy.deepcopy(self.data)

    def restore(self, snap: dict[str, Any]) -> None:
        with self.lock:
            self.data.clear()
            self.data.update(snap)

    # ------------------------------------------------------------------ helpers

    def next_version(self) -> int:
        """The next row version (ETag source): unique and increasing within the file."""
        with self.lock:
            v = int(self.data.get("next_versionnumber", 1000))
            self.data["next_versionnumber"] = v + 1
            return v

    @property
    def environment(self) -> dict[str, Any]:
        env: dict[str, Any] = self.data["environment"]
        return env

    @property
    def componenttype(self) -> int:
        return int(self.environment.get("connectionreference_componenttype", 10150))

    @property
    def bot_componenttype(self) -> int:
        """The org-specific component type of a Copilot Studio bot (a solution-aware table, like the
        connection reference: docs/dataverse.md §2.1, §2.5)."""
        return int(self.environment.get("bot_componenttype", 10191))

    def rows(self, table: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.data.setdefault(table, [])
        return rows

    def find(self, table: str, column: str, value: str | None) -> dict[str, Any] | None:
        """First row whose ``column`` equals ``value`` case-insensitively (ids and names compare that way)."""
        if value is None:
            return None
        key = str(value).lower()
        for row in self.rows(table):
            v = row.get(column)
            if v is not None and str(v).lower() == key:
                return row
        return None

    def user(self, systemuserid: str | None) -> dict[str, Any] | None:
        return self.find("systemusers", "systemuserid", systemuserid)

    def user_by_object_id(self, object_id: str | None) -> dict[str, Any] | None:
        return self.find("systemusers", "azureactivedirectoryobjectid", object_id)

    def user_by_app_id(self, app_id: str | None) -> dict[str, Any] | None:
        return self.find("systemusers", "applicationid", app_id)

    def solution(self, uniquename: str | None) -> dict[str, Any] | None:
        return self.find("solutions", "uniquename", uniquename)

    def connection(self, name: str | None) -> dict[str, Any] | None:
        return self.find("connections", "name", name)

    def reference(self, connectionreferenceid: str | None) -> dict[str, Any] | None:
        return self.find("connectionreferences", "connectionreferenceid", connectionreferenceid)

    def reference_by_logical_name(self, logical_name: str | None) -> dict[str, Any] | None:
        return self.find("connectionreferences", "connectionreferencelogicalname", logical_name)

    def workflow(self, workflowid: str | None) -> dict[str, Any] | None:
        return self.find("workflows", "workflowid", workflowid)

    def solutions_of(self, objectid: str) -> list[dict[str, Any]]:
        """The solutions a component belongs to (its ``solutioncomponents`` rows, docs/dataverse.md §2.2)."""
        oid = objectid.lower()
        ids = {str(c.get("_solutionid_value", "")).lower() for c in self.rows("solutioncomponents")
               if str(c.get("objectid", "")).lower() == oid}
        return [s for s in self.rows("solutions") if str(s.get("solutionid", "")).lower() in ids]
