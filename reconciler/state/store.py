"""The local state backend: what connref manages in each environment and what it last applied there.

One JSON file per environment, ``<state dir>/<env>.json`` (the state dir is ``./state/`` next to the config
unless ``state_dir:`` overrides it). The file records:

- ``format_version``: the layout of the file; an unknown major is refused;
- ``serial``: goes up by one on every write, so a saved plan made against serial N is stale at N+1;
- ``lineage``: a UUID set when the state is first created and never changed, so two serials are only
  compared within one history (a state that was deleted and recreated has a new lineage);
- ``references``: logical name -> the values connref last applied (id, display name, description,
  connector, connection, owner, ETag, when);
- ``history``: the last ``HISTORY_LIMIT`` applies (when, who, serial, git commit, counts).

The model is Terraform's local backend (``internal/states/statefile/file.go``: serial for conflicting
updates, lineage for "is this the same state at all"). Writes are atomic: a temporary file in the same
directory, fsync, ``os.replace``, fsync of the directory (POSIX rename(2) replaces atomically within one
file system), and the previous good file is kept as ``<env>.json.backup`` first. Serialisation is
deterministic (sorted keys, fixed indentation) so two equal states are equal bytes and diffs stay small.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import subprocess
import tempfile
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.domain.model import Config, LiveEnvironment, LiveReference, frozen_map
from reconciler.errors import StateError

FORMAT_VERSION = "1.0"
HISTORY_LIMIT = 20
DEFAULT_STATE_DIR = "state"
STATE_SUFFIX = ".json"
BACKUP_SUFFIX = ".json.backup"


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
class EnvState:
    """The state of one environment. ``references`` is keyed by logical name as applied."""

    environment: str
    lineage: str
    serial: int
    references: Mapping[str, ManagedReference] = field(default_factory=frozen_map, hash=False)
    history: tuple[HistoryEntry, ...] = ()
    solution: str | None = None
    format_version: str = FORMAT_VERSION

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
        )


def new_state(environment: str, *, solution: str | None = None) -> EnvState:
    """An empty state with a fresh lineage and serial 0 (nothing written yet)."""
    return EnvState(environment=environment, lineage=str(uuid.uuid4()), serial=0, solution=solution)


# --------------------------------------------------------------------------- paths


def state_dir_for(config: Config) -> Path:
    """``config.state_dir`` (relative to the config file) or ``state/`` next to the config file."""
    base = Path(config.path).resolve().parent
    return base / (config.state_dir or DEFAULT_STATE_DIR)


def _check_env_name(env: str) -> None:
    # The name becomes a file name: refuse anything that could leave the state directory.
    if not env or env in {".", ".."} or "/" in env or "\\" in env or "\0" in env:
        raise StateError(f"invalid environment name for a state file: {env!r}")


def state_path(state_dir: str | os.PathLike[str], env: str) -> Path:
    _check_env_name(env)
    return Path(state_dir) / f"{env}{STATE_SUFFIX}"


def backup_path(state_dir: str | os.PathLike[str], env: str) -> Path:
    _check_env_name(env)
    return Path(state_dir) / f"{env}{BACKUP_SUFFIX}"


# --------------------------------------------------------------------------- reading


def serialize_state(state: EnvState) -> bytes:
    """Deterministic bytes: sorted keys, two-space indent, trailing newline."""
    return (json.dumps(state.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _recovery_hint(state_dir: Path, env: str) -> str:
    bak = backup_path(state_dir, env)
    if not bak.exists():
        return (
            f"No backup ({bak.name}) exists. Fix the file by hand, or move it away to start a new state "
            "(connref then forgets what it manages there)."
        )
    try:
        prev = _parse(bak.read_bytes(), bak, env)
        about = f" (serial {prev.serial}, {len(prev.references)} references)"
    except StateError:
        return f"The backup {bak} is unreadable too; fix one of the files by hand."
    return (
        f"The previous good state is in {bak}{about}: restore it with `connref state restore {env}`, "
        f"or copy {bak.name} over {state_path(state_dir, env).name}."
    )


def _parse(raw: bytes, path: Path, env: str) -> EnvState:
    """Parse and validate the bytes of a state file; any problem is a StateError naming the file."""
    if not raw.strip():
        raise StateError(f"state file {path} is empty (truncated?).")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StateError(f"state file {path} is not valid JSON (truncated or corrupted?): {e}.") from e
    if not isinstance(doc, dict):
        raise StateError(f"state file {path} does not hold a JSON object.")
    version = str(doc.get("format_version", ""))
    if version.split(".")[0] != FORMAT_VERSION.split(".")[0]:
        raise StateError(
            f"state file {path} has format_version {version!r}; this connref reads {FORMAT_VERSION} "
            "(use the connref version that wrote it)."
        )
    try:
        state = EnvState.from_dict(doc)
        # Validate types here, so a damaged file fails on load, not halfway through an apply.
        uuid.UUID(state.lineage)
        if state.serial < 0 or not isinstance(doc["references"], dict):
            raise ValueError("bad serial or references")
        for ref in state.references.values():
            if not isinstance(ref.id, str) or not isinstance(ref.connector, str):
                raise ValueError(f"reference {ref.logical_name!r} lacks id or connector")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise StateError(f"state file {path} is damaged: missing or invalid field ({e}).") from e
    if state.environment != env:
        raise StateError(f"state file {path} belongs to environment {state.environment!r}, not {env!r}.")
    return state


def load_state(state_dir: str | os.PathLike[str], env: str) -> EnvState | None:
    """The state of ``env``, or None when connref never applied there.

    A truncated or corrupt file raises StateError naming the file and offering the backup."""
    path = state_path(state_dir, env)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateError(f"cannot read state file {path}: {e.strerror or e}.") from e
    try:
        return _parse(raw, path, env)
    except StateError as e:
        raise StateError(f"{e} {_recovery_hint(Path(state_dir), env)}") from e


# --------------------------------------------------------------------------- writing


def _fsync_dir(directory: Path) -> None:
    # Make the rename itself durable (POSIX: a rename is recorded in the directory, not the file).
    with contextlib.suppress(OSError):  # not supported on every platform / file system
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old bytes or the new ones, never a mix.

    Temporary file in the same directory (rename is atomic only within one file system), fsync, rename over
    the target, fsync of the directory. On any failure the temporary file is removed and the target is
    untouched."""
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def save_state(state_dir: str | os.PathLike[str], state: EnvState) -> Path:
    """Write ``state`` as the current state of its environment and keep the previous file as the backup.

    A compare-and-swap on top of the lock: the file on disk must be of the same lineage with a lower serial,
    otherwise another run wrote in between and this write is refused. A corrupt current file is never
    overwritten (the backup must survive for ``connref state restore``). Returns the path written."""
    directory = Path(state_dir)
    path = state_path(directory, state.environment)
    try:
        current_raw: bytes | None = path.read_bytes()
    except FileNotFoundError:
        current_raw = None
    if current_raw is not None:
        try:
            current = _parse(current_raw, path, state.environment)
        except StateError as e:
            raise StateError(
                f"refusing to overwrite a damaged state file: {e} "
                f"{_recovery_hint(directory, state.environment)}"
            ) from e
        if current.lineage != state.lineage:
            raise StateError(
                f"state file {path} is of lineage {current.lineage}, not {state.lineage}: it was replaced by "
                "another run or by hand. Plan again."
            )
        if state.serial <= current.serial:
            raise StateError(
                f"state file {path} is at serial {current.serial}, which is not older than the serial "
                f"{state.serial} being written: another run wrote it meanwhile. Plan again."
            )
        atomic_write(backup_path(directory, state.environment), current_raw)
    atomic_write(path, serialize_state(state))
    return path


def restore_backup(state_dir: str | os.PathLike[str], env: str) -> EnvState:
    """Make ``<env>.json.backup`` the current state again (``connref state restore ENV``).

    The current file, if any, is kept as ``<env>.json.damaged-<UTC time>`` (or ``.replaced-`` when it was
    readable) for inspection. The
    restored state gets a new serial (its serial + 1 or the damaged file's + 1, whichever is higher) so a
    plan saved against either is stale."""
    directory = Path(state_dir)
    bak = backup_path(directory, env)
    path = state_path(directory, env)
    try:
        raw = bak.read_bytes()
    except FileNotFoundError as e:
        raise StateError(f"no backup to restore: {bak} does not exist.") from e
    backup = _parse(raw, bak, env)
    serial = backup.serial
    if path.exists():
        current_raw = path.read_bytes()
        kind = "damaged"
        with contextlib.suppress(StateError):
            current = _parse(current_raw, path, env)
            kind = "replaced"
            if current.lineage == backup.lineage:
                serial = max(serial, current.serial)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        atomic_write(directory / f"{path.name}.{kind}-{stamp}", current_raw)
    restored = replace(backup, serial=serial + 1)
    atomic_write(path, serialize_state(restored))
    return restored


# --------------------------------------------------------------------------- recording an apply


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def os_user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER (some containers)
        return None


def git_commit(cwd: str | os.PathLike[str] | None = None) -> str | None:
    """``git rev-parse HEAD`` in ``cwd``, else the commit a CI system announces, else None."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=False
        )
        sha = out.stdout.strip()
        if out.returncode == 0 and sha:
            return sha
    except (OSError, subprocess.SubprocessError):
        pass
    # GitHub Actions and Azure Pipelines set these even when the checkout is shallow or absent.
    return os.environ.get("GITHUB_SHA") or os.environ.get("BUILD_SOURCEVERSION") or None


def _op_fields(op: Any) -> tuple[str, str]:
    """(kind, logical_name) of an operation object or its ``to_dict()``."""
    d = op if isinstance(op, Mapping) else op.to_dict()
    return str(d["kind"]), str(d["logical_name"])


def record_apply(
    prev: EnvState | None,
    env: str,
    live_after: LiveEnvironment,
    *,
    declared: Iterable[str],
    ops: Sequence[Any] = (),
    failed: Iterable[str] = (),
    solution: str | None = None,
    identity: str | None = None,
    user: str | None = None,
    commit: str | None = None,
    at: str | None = None,
) -> EnvState:
    """The state after an apply, from the previous state, what the apply did and the environment re-read.

    - ``declared``: the logical names the config declares for this environment;
    - ``ops``: the operations applied (``ops.Operation`` objects or their ``to_dict()``);
    - ``failed``: logical names whose writes failed (from the ApplyResult): their previous entry is kept;
    - ``live_after``: the environment read after the apply; each declared reference found there is recorded
      with its live values and ETag, so the next drift check compares against what is really there.

    A delete op that succeeded removes the reference from the state. ``identity`` defaults to the writer
    (or caller) of ``live_after``, ``user`` to the OS user, ``at`` to now; ``commit`` is not looked up
    here (pass ``git_commit(config_dir)``). Serial goes up by one; lineage is kept (new for a first apply).
    Pure: nothing is written; call ``save_state`` with the result."""
    at = at or now_utc()
    failed_keys = {n.lower() for n in failed}
    touched: dict[str, str] = {}
    counts: dict[str, int] = {}
    deleted: set[str] = set()
    for op in ops:
        kind, name = _op_fields(op)
        if name.lower() in failed_keys:
            continue
        touched[name.lower()] = kind
        counts[kind] = counts.get(kind, 0) + 1
        if kind == "delete":
            deleted.add(name.lower())
    if failed_keys:
        counts["failed"] = len(failed_keys)

    base = prev or new_state(env, solution=solution)
    refs: dict[str, ManagedReference] = {}
    for name, ref in base.references.items():
        if name.lower() not in deleted:
            refs[name] = ref

    live_by_name = {r.logical_name.lower(): r for r in live_after.references}
    for name in declared:
        key = name.lower()
        live_ref = live_by_name.get(key)
        if key in failed_keys or live_ref is None:
            continue  # not known to be as declared: keep what was recorded before, if anything
        old_key = next((k for k in refs if k.lower() == key), None)
        old = refs.pop(old_key) if old_key is not None else None
        # applied_at moves only when this apply wrote the reference (or first took it under management).
        when = at if (key in touched or old is None) else (old.applied_at or at)
        refs[live_ref.logical_name] = ManagedReference.from_live(live_ref, live_after, when)

    who = live_after.writer or live_after.caller
    entry = HistoryEntry(
        serial=base.serial + 1,
        at=at,
        os_user=user if user is not None else os_user(),
        identity=identity or (who.describe() if who else None),
        commit=commit,
        counts=frozen_map(dict(sorted(counts.items()))),
    )
    return replace(
        base,
        serial=base.serial + 1,
        references=frozen_map(refs),
        history=(*base.history, entry)[-HISTORY_LIMIT:],
        solution=solution or base.solution,
        format_version=FORMAT_VERSION,
    )


# --------------------------------------------------------------------------- reading for people


def list_states(state_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """One summary per ``<env>.json`` in the state dir, sorted by environment (``connref state list``).

    Keys: environment, path, status (``ok`` or ``damaged``), error, serial, lineage, references, last_apply
    (``{at, identity, os_user, commit}`` or None), lock (the holder, or None). A damaged file is listed
    with its error rather than failing the whole listing."""
    from reconciler.state.lock import read_lock  # local import: lock.py is independent of state.py

    directory = Path(state_dir)
    out: list[dict[str, Any]] = []
    if not directory.is_dir():
        return out
    for path in sorted(directory.glob(f"*{STATE_SUFFIX}")):
        env = path.name[: -len(STATE_SUFFIX)]
        summary: dict[str, Any] = {"environment": env, "path": str(path), "status": "ok", "error": None}
        try:
            st = load_state(directory, env)
        except StateError as e:
            summary.update(status="damaged", error=str(e), serial=None, lineage=None, references=None)
            st = None
        if st is not None:
            last = st.last_apply
            summary.update(
                serial=st.serial,
                lineage=st.lineage,
                references=len(st.references),
                last_apply=(
                    {"at": last.at, "identity": last.identity, "os_user": last.os_user, "commit": last.commit}
                    if last
                    else None
                ),
            )
        else:
            summary.setdefault("last_apply", None)
        lock = read_lock(directory, env)
        summary["lock"] = lock.to_dict() if lock else None
        out.append(summary)
    return out


def show_state(state_dir: str | os.PathLike[str], env: str) -> dict[str, Any]:
    """The whole state of ``env`` as JSON-ready data plus its ``path`` (``connref state show ENV``).

    Raises StateError when there is no state for the environment (or it is damaged)."""
    st = load_state(state_dir, env)
    path = state_path(state_dir, env)
    if st is None:
        raise StateError(
            f"no state for environment {env!r}: {path} does not exist (nothing applied there yet)."
        )
    return {**st.to_dict(), "path": str(path)}


def render_state_list(summaries: Sequence[Mapping[str, Any]]) -> str:
    """Plain text for ``connref state list``."""
    if not summaries:
        return "No state files.\n"
    lines = []
    for s in summaries:
        if s["status"] != "ok":
            lines.append(f"{s['environment']}: DAMAGED: {s['error']}")
            continue
        last = s.get("last_apply")
        who = (last["identity"] or last["os_user"] or "unknown") if last else ""
        when = f", last apply {last['at']} by {who}" if last else ""
        lock = s.get("lock")
        locked = f", LOCKED by {lock['holder']} ({lock['operation']}, id {lock['id']})" if lock else ""
        lines.append(f"{s['environment']}: serial {s['serial']}, {s['references']} references{when}{locked}")
    return "\n".join(lines) + "\n"


def render_state_show(doc: Mapping[str, Any]) -> str:
    """Plain text for ``connref state show ENV`` (``--json`` prints ``doc`` itself)."""
    lines = [
        f"Environment: {doc['environment']}",
        f"File:        {doc.get('path', '')}",
        f"Serial:      {doc['serial']}",
        f"Lineage:     {doc['lineage']}",
        f"Solution:    {doc.get('solution') or '-'}",
        f"References ({len(doc['references'])}):",
    ]
    for name, r in doc["references"].items():
        owner = r.get("owner_upn") or r.get("owner") or "-"
        lines.append(f"  {name}")
        lines.append(f"    display name: {r.get('display_name')}")
        lines.append(f"    connector:    {r.get('connector')}")
        lines.append(f"    connection:   {r.get('connection') or '(unbound)'}")
        lines.append(f"    owner:        {owner}")
        lines.append(f"    applied at:   {r.get('applied_at')}   etag: {r.get('etag')}")
    lines.append(f"History (last {HISTORY_LIMIT}):")
    for h in doc["history"]:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(h.get("counts", {}).items())) or "no changes"
        commit = f", commit {h['commit'][:12]}" if h.get("commit") else ""
        lines.append(
            f"  serial {h['serial']} at {h['at']} by {h.get('identity') or '-'} "
            f"(os user {h.get('os_user') or '-'}{commit}): {counts}"
        )
    return "\n".join(lines) + "\n"
