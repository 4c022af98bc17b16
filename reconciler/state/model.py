"""The state of one environment: what connref manages there and what it last applied, and its serialisation.

A state document records:

- ``format_version``: the layout of the document, MAJOR.MINOR; a newer minor only adds fields, but this
  connref would drop them on its next write, so a version newer than ``FORMAT_VERSION`` (minor or major) is
  refused as written by a newer connref, and an older or unreadable one as not a connref state;
- ``serial``: goes up by one on every write, so a saved plan made against serial N is stale at N+1;
- ``lineage``: a UUID set when the state is first created and never changed, so two serials are only
  compared within one history (a state that was deleted and recreated has a new lineage);
- ``references``: logical name -> the values connref last applied (id, display name, description,
  connector, connection, owner, ETag, when);
- ``history``: the last ``HISTORY_LIMIT`` applies (when, who, serial, git commit, counts);
- ``flows_to_restore`` (only when there are any): flows that were on and that connref switches off to edit
  (docs/dataverse.md §5.9), recorded before it does, so an apply interrupted before they are on again is
  finished by the next one: workflow id -> name and since when.

The model is Terraform's state file (``internal/states/statefile/file.go``: serial for conflicting
updates, lineage for "is this the same state at all"). Serialisation is deterministic (sorted keys, fixed
indentation) so two equal states are equal bytes and diffs stay small.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.domain.model import LiveEnvironment, LiveReference, frozen_map
from reconciler.domain.patterns import is_guid
from reconciler.domain.text import inert
from reconciler.errors import StateError, StateTooNewError
from reconciler.state.jsonfile import JsonFileProblem, load_json

FORMAT_VERSION = "1.0"
HISTORY_LIMIT = 20


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class ManagedReference:
    """A reference connref manages, as it was when connref last applied it."""

    logical_name: str
    id: str
    display_name: str | None
    connector: str
    connection: str | None
    description: str | None = None
    owner: str | None = None  # systemuserid of the owner
    owner_upn: str | None = None  # for people reading the file; comparisons use ``owner``
    etag: str | None = None
    applied_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "logical_name": self.logical_name,
            "display_name": self.display_name,
            "description": self.description,
            "connector": self.connector,
            "connection": self.connection,
            "owner": self.owner,
            "owner_upn": self.owner_upn,
            "etag": self.etag,
            "applied_at": self.applied_at,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ManagedReference:
        return cls(
            logical_name=d["logical_name"],
            id=d["id"],
            display_name=d.get("display_name"),
            connector=d["connector"],
            connection=d.get("connection"),
            description=d.get("description"),
            owner=d.get("owner"),
            owner_upn=d.get("owner_upn"),
            etag=d.get("etag"),
            applied_at=d.get("applied_at"),
        )

    @classmethod
    def from_live(cls, ref: LiveReference, live: LiveEnvironment | None, applied_at: str) -> ManagedReference:
        owner = live.user(ref.owner_id) if live is not None else None
        return cls(
            logical_name=ref.logical_name,
            id=ref.id,
            display_name=ref.display_name,
            connector=ref.connector,
            connection=ref.connection,
            description=ref.description,
            owner=ref.owner_id,
            owner_upn=owner.describe() if owner else None,
            etag=ref.etag,
            applied_at=applied_at,
        )


@dataclass(frozen=True)
class HistoryEntry:
    """One apply: when, by whom (the OS user and the identity that wrote), from which commit, what it did."""

    serial: int
    at: str
    os_user: str | None = None
    identity: str | None = None
    commit: str | None = None
    operation: str = "apply"
    counts: Mapping[str, int] = field(default_factory=frozen_map, hash=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "at": self.at,
            "os_user": self.os_user,
            "identity": self.identity,
            "commit": self.commit,
            "operation": self.operation,
            "counts": dict(sorted(self.counts.items())),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HistoryEntry:
        return cls(
            serial=int(d["serial"]),
            at=d["at"],
            os_user=d.get("os_user"),
            identity=d.get("identity"),
            commit=d.get("commit"),
            operation=d.get("operation", "apply"),
            counts=frozen_map({k: int(v) for k, v in (d.get("counts") or {}).items()}),
        )


@dataclass(frozen=True)
class FlowToRestore:
    """A flow that was on when connref switched it off to edit it: it must end on again."""

    id: str
    name: str
    since: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "since": self.since}

    @classmethod
    def from_dict(cls, flow_id: str, d: Mapping[str, Any]) -> FlowToRestore:
        return cls(id=flow_id.lower(), name=str(d.get("name") or flow_id), since=d.get("since"))


@dataclass(frozen=True)
class EnvState:
    """The state of one environment. ``references`` is keyed by logical name as applied."""

    environment: str
    lineage: str
    serial: int
    references: Mapping[str, ManagedReference] = field(default_factory=frozen_map, hash=False)
    history: tuple[HistoryEntry, ...] = ()
    solution: str | None = None
    format_version: str = FORMAT_VERSION
    flows_to_restore: Mapping[str, FlowToRestore] = field(default_factory=frozen_map, hash=False)

    def reference(self, logical_name: str) -> ManagedReference | None:
        """Look a managed reference up case-insensitively (Dataverse compares logical names so)."""
        key = logical_name.lower()
        for name, ref in self.references.items():
            if name.lower() == key:
                return ref
        return None

    def manages(self, logical_name: str) -> bool:
        return self.reference(logical_name) is not None

    @property
    def last_apply(self) -> HistoryEntry | None:
        return self.history[-1] if self.history else None

    @property
    def digest(self) -> str:
        """A hash of the whole state as written: a saved plan records it next to serial and lineage."""
        return "sha256:" + hashlib.sha256(serialize_state(self)).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "environment": self.environment,
            "lineage": self.lineage,
            "serial": self.serial,
            "solution": self.solution,
            "references": {k: self.references[k].to_dict() for k in sorted(self.references, key=str.lower)},
            "history": [h.to_dict() for h in self.history],
            **({"flows_to_restore": {k: self.flows_to_restore[k].to_dict() for k in sorted(self.flows_to_restore)}}
               if self.flows_to_restore else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EnvState:
        refs = {
            name: ManagedReference.from_dict({"logical_name": name, **r})
            for name, r in d["references"].items()
        }
        return cls(
            environment=d["environment"],
            lineage=d["lineage"],
            serial=int(d["serial"]),
            references=frozen_map(refs),
            history=tuple(HistoryEntry.from_dict(h) for h in d.get("history", ())),
            solution=d.get("solution"),
            format_version=str(d.get("format_version", FORMAT_VERSION)),
            flows_to_restore=frozen_map({
                k.lower(): FlowToRestore.from_dict(k, v) for k, v in (d.get("flows_to_restore") or {}).items()
            }),
        )


def new_state(environment: str, *, solution: str | None = None) -> EnvState:
    """An empty state with a fresh lineage and serial 0 (nothing written yet)."""
    return EnvState(environment=environment, lineage=str(uuid.uuid4()), serial=0, solution=solution)


def serialize_state(state: EnvState) -> bytes:
    """Deterministic bytes: sorted keys, two-space indent, trailing newline."""
    doc = state.to_dict()
    try:
        return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from live data: \u escapes keep the file valid UTF-8
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("ascii")



def token_of(raw: bytes) -> str:
    """The compare-and-swap token of a stored state document: the SHA-256 of its bytes. The serial goes up
    on every write, so equal bytes are the same version (no ABA), whatever else the store changes around
    them (a blob's metadata, a file's timestamps)."""
    return "sha256:" + hashlib.sha256(raw).hexdigest()


#: Largest serial accepted: the largest integer every JSON reader keeps exact (2**53 - 1).
MAX_SERIAL = 2**53 - 1

_NULLABLE_TEXT = ("display_name", "description", "connection", "owner", "owner_upn", "etag", "applied_at")


def _check_document(doc: Mapping[str, Any]) -> None:
    """Refuse (ValueError naming the field) what ``from_dict`` would take in silently and what later makes
    connref say false things: a wrong type, a serial out of range, a reference whose key is not its logical
    name, two references of one logical name or of one row, a row id that is not a GUID. The same rules as
    ``reconciler/schemas/state-1.json``, plus the two it cannot say (keys, uniqueness)."""
    for key in ("environment", "lineage"):
        if not isinstance(doc.get(key), str):
            raise ValueError(f"{key} is not a string")
    _check_serial(doc.get("serial"), "serial")
    if doc.get("solution") is not None and not isinstance(doc["solution"], str):
        raise ValueError("solution is not a string or null")
    refs = doc.get("references")
    if not isinstance(refs, dict):
        raise ValueError("references is not an object")
    names: dict[str, str] = {}
    ids: dict[str, str] = {}
    for key, ref in refs.items():
        row = _check_reference(key, ref)
        for seen, value, what in ((names, key, "logical name"), (ids, row, "row (id)")):
            if value.lower() in seen:
                raise ValueError(f"references.{key} records the {what} of references.{seen[value.lower()]} again")
            seen[value.lower()] = key
    history = doc.get("history", [])
    if not isinstance(history, list):
        raise ValueError("history is not a list")
    for i, entry in enumerate(history):
        _check_history_entry(i, entry)
    flows = doc.get("flows_to_restore") or {}
    if not isinstance(flows, dict) or not all(isinstance(v, dict) for v in flows.values()):
        raise ValueError("flows_to_restore is not an object of objects")


def _check_reference(key: str, ref: object) -> str:
    """Check one entry of ``references``; returns its row id."""
    where = f"references.{key}"
    if not isinstance(ref, dict):
        raise ValueError(f"{where} is not an object")
    # A hand edit that moves an entry under another key must not make connref act on the wrong row.
    logical_name = ref.get("logical_name", key)
    if not isinstance(logical_name, str) or logical_name.lower() != key.lower():
        raise ValueError(f"{where}.logical_name is {logical_name!r}, not the key it is recorded under")
    row = ref.get("id")
    if not isinstance(row, str) or not is_guid(row):
        raise ValueError(f"{where}.id is not a GUID")
    if not isinstance(ref.get("connector"), str):
        raise ValueError(f"{where}.connector is not a string")
    for name in _NULLABLE_TEXT:
        if ref.get(name) is not None and not isinstance(ref[name], str):
            raise ValueError(f"{where}.{name} is not a string or null")
    return row


def _check_history_entry(i: int, entry: object) -> None:
    if not isinstance(entry, dict):
        raise ValueError(f"history[{i}] is not an object")
    _check_serial(entry.get("serial"), f"history[{i}].serial")
    if not isinstance(entry.get("at"), str):
        raise ValueError(f"history[{i}].at is not a string")
    counts = entry.get("counts") or {}
    if not isinstance(counts, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_SERIAL for v in counts.values()):
        raise ValueError(f"history[{i}].counts is not an object of counts")


def _check_serial(value: object, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where} is not an integer")
    if not 0 <= value <= MAX_SERIAL:
        raise ValueError(f"{where} is out of range (0 to {MAX_SERIAL})")


def _version(text: str) -> tuple[int, ...] | None:
    """The numbers of a dotted format_version (``1.0`` -> (1, 0)), compared as tuples so ``1.10`` is newer than
    ``1.9`` and ``1.0.0`` is ``1.0``; None if it is not one."""
    parts = text.split(".")
    if not all(p.isascii() and p.isdigit() and len(p) <= 9 for p in parts):
        return None
    numbers = [int(p) for p in parts]
    while len(numbers) > 1 and numbers[-1] == 0:  # 1.0.0 is 1.0
        numbers.pop()
    return tuple(numbers)


def parse_state(raw: bytes, path: str | os.PathLike[str], env: str) -> EnvState:
    """Parse and validate the bytes of a state document read from ``path`` (a file or a URL); any problem is
    a StateError naming it."""
    if not raw.strip():
        raise StateError(f"state file {path} is empty (truncated?).")
    try:
        doc = load_json(raw)
    except JsonFileProblem as e:
        raise StateError(f"state file {path} is not valid JSON (truncated or corrupted?): {e}.") from None
    if not isinstance(doc, dict):
        raise StateError(f"state file {path} does not hold a JSON object.")
    version = str(doc.get("format_version", ""))
    got, ours = _version(version), _version(FORMAT_VERSION)
    if got is not None and ours is not None and got > ours:
        # Refused before anything is taken from it: this connref would write back only the fields it knows
        # and label them FORMAT_VERSION, silently losing what the newer connref recorded.
        raise StateTooNewError(
            f"state {path} was written by a newer connref (format_version {inert(version)!r}; this connref reads "
            f"and writes {FORMAT_VERSION}): upgrade connref to use it. Nothing was read from it or written to it."
        )
    if got is None or ours is None or got[0] != ours[0]:
        raise StateError(
            f"state file {path} has format_version {inert(version)!r}; this connref reads {FORMAT_VERSION} "
            "(use the connref version that wrote it)."
        )
    try:
        # Validate here, so a damaged file fails on load, not halfway through an apply or in a report.
        _check_document(doc)
        state = EnvState.from_dict(doc)
        uuid.UUID(state.lineage)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise StateError(f"state file {path} is damaged: missing or invalid field ({inert(str(e))}).") from None
    if state.environment != env:
        raise StateError(f"state file {path} belongs to environment {inert(state.environment)!r}, not {env!r}.")
    return state


def refuse_restore_over_newer(raw: bytes, path: str | os.PathLike[str], env: str) -> None:
    """Raise StateTooNewError when the current state ``raw``, about to be set aside by ``state restore``, was
    written by a newer connref: it is not damaged, and the backup restored over it would lack what the newer
    connref recorded since. Any other problem of ``raw`` is left to the caller (a damaged state is restored
    over)."""
    try:
        parse_state(raw, path, env)
    except StateTooNewError as e:
        raise StateTooNewError(f"not restoring over it: {e}") from None
    except StateError:
        pass
