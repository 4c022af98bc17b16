"""Per-environment locks in the state directory, so two runs never apply to one environment at once.

A lock is the file ``<state dir>/<env>.lock``. It is written whole to a private temporary file first and
then linked into place with ``link(2)``, which fails when the name exists (atomic: of two processes
creating it, exactly one succeeds), so a reader never sees a lock file half-written. Where the file
system cannot link, it is created with ``O_CREAT | O_EXCL`` and written, and a reader that finds it
empty or cut short reads it again for a moment before calling it unreadable. It holds who took it
(user@host, pid), for which operation, when, and a random lock id. As in Terraform
(``website/docs/language/state/locking.mdx``), a run that finds the lock taken waits up to its timeout,
then stops naming the holder; a lock left by a killed run is released with
``connref state unlock ENV LOCK_ID``, the id acting as a nonce so that only that lock is released.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from reconciler.errors import LockError
from reconciler.state.backend import LockInfo, holder_running_here, new_lock_info, refuse_live_holder
from reconciler.state.jsonfile import load_json

LOCK_SUFFIX = ".lock"


def lock_path(state_dir: str | os.PathLike[str], env: str) -> Path:
    if not env or env in {".", ".."} or "/" in env or "\\" in env or "\0" in env:
        raise LockError(f"invalid environment name for a lock file: {env!r}")
    return Path(state_dir) / f"{env}{LOCK_SUFFIX}"


#: How long a lock file that cannot be parsed yet is given to be written whole (counted from when it
#: was last modified): a writer on a file system without links writes it just after creating it.
SETTLE_SECONDS = 2.0


def _parse(raw: str) -> LockInfo | None:
    try:
        doc = load_json(raw)
        return LockInfo.from_dict(doc) if isinstance(doc, dict) else None
    except (ValueError, KeyError, TypeError):  # JsonFileProblem is a ValueError
        return None


def read_lock(
    state_dir: str | os.PathLike[str],
    env: str,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
) -> LockInfo | None:
    """The lock of ``env`` if one is held, else None.

    A lock file that cannot be parsed while it is fresh is read again (every 20 ms, until it is
    ``SETTLE_SECONDS`` old): its writer may still be writing it. One that stays unparsable (a holder killed
    between creating and writing it, or a hand edit) is still a lock: it is returned with id ``"unknown"``
    so nobody mistakes it for free."""
    path = lock_path(state_dir, env)
    start = clock()
    while True:
        try:
            raw = path.read_text(encoding="utf-8")
            modified = path.stat().st_mtime
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError):
            raw, modified = "", 0.0
        info = _parse(raw)
        if info is not None:
            return info
        now = clock()
        if now - modified >= SETTLE_SECONDS or now - start >= SETTLE_SECONDS:
            break
        sleep(0.02)
    try:
        created = datetime.fromtimestamp(path.stat().st_mtime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except OSError:
        created = "?"
    return LockInfo(
        id="unknown",
        environment=env,
        operation="?",
        holder="unknown (unreadable lock file)",
        host="",
        pid=0,
        created=created,
    )


def _locked_message(state_dir: Path, env: str, info: LockInfo, waited: float) -> str:
    path = lock_path(state_dir, env)
    if info.id == "unknown":
        release = f"If no other run is in progress, delete {path} by hand."
    else:
        release = f"If no other run is in progress, release it with: connref state unlock {env} {info.id}"
    gone = ""
    if holder_running_here(info) is False:
        gone = f" The holding process (pid {info.pid} on this host) is no longer running."
    return (
        f"environment {env!r} is locked by {info.describe()}, lock id {info.id} ({path}); "
        f"gave up after waiting {waited:.1f}s (--lock-timeout).{gone} {release}"
    )


class Lock:
    """A held lock; release it with ``release()`` or by leaving the ``with`` block."""

    def __init__(self, path: Path, info: LockInfo) -> None:
        self.path = path
        self.info = info
        self.released = False

    @property
    def id(self) -> str:
        return self.info.id

    def release(self) -> None:
        """Delete the lock file if it is still ours. Idempotent.

        If someone force-unlocked it and another run took it meanwhile, that run's lock is left alone."""
        if self.released:
            return
        self.released = True
        current = read_lock(self.path.parent, self.info.environment)
        if current is not None and current.id == self.info.id:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def __enter__(self) -> Lock:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Lock({self.info.environment!r}, id={self.info.id}, released={self.released})"


def _lock_bytes(info: LockInfo) -> bytes:
    return (json.dumps(info.to_dict(), indent=2, sort_keys=True) + "\n").encode("utf-8")


def _try_create(path: Path, info: LockInfo) -> bool:
    """Create the lock file holding ``info``, whole, unless it exists (then False)."""
    tmp = path.with_name(f".{path.name}.{info.id}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, _lock_bytes(info))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # atomic, and fails when the lock exists: readers see it whole or not at all
            return True
        except FileExistsError:
            return False
        except OSError:
            return _create_in_place(path, info)  # a file system without hard links
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _create_in_place(path: Path, info: LockInfo) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, _lock_bytes(info))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    os.close(fd)
    return True


def acquire(
    state_dir: str | os.PathLike[str],
    env: str,
    operation: str,
    timeout: float = 0.0,
    poll: float = 0.5,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Lock:
    """Take the lock of ``env``, waiting up to ``timeout`` seconds (polling every ``poll``).

    Raises LockError naming the holder, the operation, since when, the lock id and the exact
    ``connref state unlock`` command when the lock is still held after the timeout."""
    directory = Path(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = lock_path(directory, env)
    info = new_lock_info(env, operation)
    start = clock()
    while True:
        if _try_create(path, info):
            return Lock(path, info)
        waited = clock() - start
        if waited >= timeout:
            holder = read_lock(directory, env, sleep=sleep)
            if holder is None:
                continue  # released between our attempt and the read: try again at once
            raise LockError(_locked_message(directory, env, holder, waited))
        sleep(max(0.0, min(poll, timeout - waited)))


def force_unlock(state_dir: str | os.PathLike[str], env: str, lock_id: str, *, force: bool = False) -> LockInfo:
    """Release the lock of ``env``, given its id (``connref state unlock ENV LOCK_ID``).

    Refuses when no lock is held or when the id is not the held lock's: the id proves the caller looked at
    the lock it means to break; and, unless ``force``, when its holder still runs on this host. Returns
    what the removed lock recorded."""
    current = read_lock(state_dir, env)
    path = lock_path(state_dir, env)
    if current is None:
        raise LockError(f"environment {env!r} is not locked ({path} does not exist).")
    if current.id == "unknown":
        raise LockError(
            f"the lock file {path} is unreadable, so its id cannot be checked: delete it by hand."
        )
    if current.id != lock_id:
        raise LockError(
            f"lock id {lock_id!r} does not match the lock held on {env!r} (id {current.id}, "
            f"{current.describe()}); nothing released."
        )
    if not force:
        refuse_live_holder(env, current, str(path))
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return current
