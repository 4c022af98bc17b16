"""The state backend interface: where the state of each environment lives and how runs take turns on it.

Commands reach state only through a ``StateBackend`` (chosen from the config's ``state:`` section by
``reconciler.state.select.backend_for``), so a local directory and a remote store behave the same way to
them, as Terraform's local and azurerm backends do:

- ``read(env)`` gives the state and a compare-and-swap token for the version read (None: no state yet);
- ``write(state, token=..., lock=...)`` replaces exactly that version and nothing else: it is refused when
  the stored version is no longer the one the token names (another writer got in between), when the lock
  is no longer held, or when serial and lineage do not follow on; the previous version is kept;
- ``lock(env, operation, timeout=...)`` takes the environment's lock, recording who holds it (``LockInfo``);
  a run that finds it taken waits up to ``timeout`` and then stops naming the holder and the lock id;
- ``unlock(env, lock_id, force=...)`` breaks a lock left by a killed run, only when given that lock's id,
  and not one whose holder still runs on this host unless forced;
- ``environments()`` lists the environments that have state; ``backup(env)`` reads the previous version
  and ``restore(env, lock=...)`` makes it current again.
"""

from __future__ import annotations

import getpass
import os
import socket
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Protocol

from reconciler.errors import LockError, StateError
from reconciler.state.model import EnvState


@dataclass(frozen=True)
class LockInfo:
    """Who holds a lock: ``holder`` is ``user@host``; ``id`` is the nonce ``state unlock`` must be given."""

    id: str
    environment: str
    operation: str
    holder: str
    host: str
    pid: int
    created: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "environment": self.environment,
            "operation": self.operation,
            "holder": self.holder,
            "host": self.host,
            "pid": self.pid,
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LockInfo:
        return cls(
            id=str(d["id"]),
            environment=str(d["environment"]),
            operation=str(d.get("operation", "?")),
            holder=str(d.get("holder", "?")),
            host=str(d.get("host", "")),
            pid=int(d.get("pid", 0)),
            created=str(d.get("created", "?")),
        )

    def describe(self) -> str:
        return f"{self.holder} (pid {self.pid}) for {self.operation!r} since {self.created}"


def current_user() -> str:
    """The OS user running connref (``USER``, ``LOGNAME``, ``USERNAME``, else the password database)."""
    for var in ("USER", "LOGNAME", "USERNAME"):
        if os.environ.get(var):
            return os.environ[var]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def new_lock_info(env: str, operation: str) -> LockInfo:
    """The holder record of a lock this process is about to take: a fresh random id, user@host, pid, now."""
    host = socket.gethostname()
    return LockInfo(
        id=str(uuid.uuid4()),
        environment=env,
        operation=operation,
        holder=f"{current_user()}@{host}",
        host=host,
        pid=os.getpid(),
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def holder_running_here(info: LockInfo) -> bool | None:
    """Whether the process holding a lock still runs, when it ran on this host (same host name, its pid
    alive); None when it cannot be told (another host, no pid)."""
    if info.host != socket.gethostname() or info.pid <= 0:
        return None
    try:
        os.kill(info.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        return True
    except OSError:
        return None
    return True


def refuse_live_holder(env: str, info: LockInfo, where: str) -> None:
    """Refuse to break a lock whose holder still runs on this host (``state unlock`` without ``--force``):
    that run would go on writing to the environment and fail at the end, when it records its state."""
    if holder_running_here(info):
        raise LockError(
            f"the lock of {env!r} ({where}) is held by {info.describe()}, which is still running on this host: "
            f"nothing released. Let it finish, or stop it (its own exit releases the lock). If that process is "
            f"not a connref run (its pid was reused), release the lock with: "
            f"connref state unlock {env} {info.id} --force"
        )


class StateLock(Protocol):
    """A held lock of one environment; ``release()`` (or leaving the ``with`` block) gives it back."""

    @property
    def info(self) -> LockInfo: ...

    @property
    def id(self) -> str: ...

    def release(self) -> None: ...

    def __enter__(self) -> StateLock: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


@dataclass(frozen=True)
class Snapshot:
    """A state as read and the compare-and-swap token of that version (``write`` needs it back)."""

    state: EnvState
    token: str


def check_successor(current: EnvState, new: EnvState, where: str) -> None:
    """Refuse to replace ``current`` with ``new`` unless ``new`` continues its history: same lineage,
    higher serial. Every backend runs this check on top of its own compare-and-swap."""
    if current.lineage != new.lineage:
        raise StateError(
            f"state {where} is of lineage {current.lineage}, not {new.lineage}: it was replaced by "
            "another run or by hand. Plan again."
        )
    if new.serial <= current.serial:
        raise StateError(
            f"state {where} is at serial {current.serial}, which is not older than the serial "
            f"{new.serial} being written: another run wrote it meanwhile. Plan again."
        )


class StateBackend(ABC):
    """Where state lives. Implementations: ``LocalBackend`` (a directory), ``AzureBlobBackend``."""

    #: The name of the backend in the config (``state: {backend: ...}``).
    kind: str = ""

    @abstractmethod
    def location(self, env: str) -> str:
        """Where the state of ``env`` is kept (a path or a URL), for messages."""

    @abstractmethod
    def read(self, env: str) -> Snapshot | None:
        """The state of ``env`` and its token, or None when connref never wrote state there.

        Damaged state raises StateError naming where it is and how to restore the previous version."""

    @abstractmethod
    def write(self, state: EnvState, *, token: str | None, lock: StateLock) -> str:
        """Store ``state`` as the current state of its environment, if and only if the stored version is
        still the one ``token`` names (None: there must be no state yet) and ``lock`` is still held.
        The version replaced is kept as the backup. Returns the token of the version written."""

    @abstractmethod
    def lock(self, env: str, operation: str, *, timeout: float = 0.0) -> StateLock:
        """Take the lock of ``env``, waiting up to ``timeout`` seconds; LockError names the holder."""

    @abstractmethod
    def lock_info(self, env: str) -> LockInfo | None:
        """Who holds the lock of ``env``, or None when it is free."""

    @abstractmethod
    def unlock(self, env: str, lock_id: str, *, force: bool = False) -> LockInfo:
        """Break the lock of ``env``, given its id; returns what it recorded. A holder still running on this
        host is refused (``refuse_live_holder``) unless ``force``."""

    @abstractmethod
    def environments(self) -> list[str]:
        """The environments that have state (readable or not), sorted."""

    @abstractmethod
    def backup(self, env: str) -> EnvState | None:
        """The previous version of the state of ``env`` (what ``restore`` would bring back), or None."""

    @abstractmethod
    def restore(self, env: str, *, lock: StateLock) -> EnvState:
        """Make the previous version current again, with a serial past both; the replaced version is kept
        aside for inspection. Returns the restored state."""

    def load(self, env: str) -> EnvState | None:
        """``read(env)`` without the token."""
        snap = self.read(env)
        return snap.state if snap else None

    def load_many(self, envs: Iterable[str]) -> dict[str, Snapshot | None]:
        return {e: self.read(e) for e in envs}

    def close(self) -> None:
        """Give back what the backend holds open (connections, credentials). Idempotent."""
        return None

    def __enter__(self) -> StateBackend:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
