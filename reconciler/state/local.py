"""The local state backend: one JSON file per environment in a directory.

``<state dir>/<env>.json`` (the state dir is ``./state/`` next to the config unless ``state: {dir: ...}``
overrides it) holds the state document of ``reconciler.state.model``. As Terraform's local backend, writes
are atomic: a temporary file in the same directory, fsync, ``os.replace``, fsync of the directory (POSIX
rename(2) replaces atomically within one file system), and the previous good file is kept as
``<env>.json.backup`` first.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from reconciler.domain.model import Config
from reconciler.errors import StateError, StateTooNewError
from reconciler.state.backend import LockInfo, Snapshot, StateBackend, StateLock, check_successor
from reconciler.state.lock import acquire, force_unlock, read_lock
from reconciler.state.model import EnvState, parse_state, refuse_restore_over_newer, serialize_state, token_of

DEFAULT_STATE_DIR = "state"
STATE_SUFFIX = ".json"
BACKUP_SUFFIX = ".json.backup"


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


def _recovery_hint(state_dir: Path, env: str) -> str:
    bak = backup_path(state_dir, env)
    if not bak.exists():
        return (
            f"No backup ({bak.name}) exists. Fix the file by hand, or move it away to start a new state "
            "(connref then forgets what it manages there)."
        )
    try:
        prev = parse_state(bak.read_bytes(), bak, env)
        about = f" (serial {prev.serial}, {len(prev.references)} references)"
    except (StateError, OSError):
        return f"The backup {bak} is unreadable too; fix one of the files by hand."
    return (
        f"The previous good state is in {bak}{about}: restore it with `connref state restore {env}`, "
        f"or copy {bak.name} over {state_path(state_dir, env).name}."
    )


def read_snapshot(state_dir: str | os.PathLike[str], env: str) -> Snapshot | None:
    """The state of ``env`` and the token of the file's bytes, or None when connref never applied there.

    A truncated or corrupt file raises StateError naming the file and offering the backup."""
    path = state_path(state_dir, env)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateError(f"cannot read state file {path}: {e.strerror or e}.") from e
    try:
        return Snapshot(parse_state(raw, path, env), token_of(raw))
    except StateTooNewError:
        raise  # not damaged: the backup and a new state are the wrong advice
    except StateError as e:
        raise StateError(f"{e} {_recovery_hint(Path(state_dir), env)}") from e


def load_state(state_dir: str | os.PathLike[str], env: str) -> EnvState | None:
    """The state of ``env``, or None when connref never applied there (``read_snapshot`` without the token)."""
    snap = read_snapshot(state_dir, env)
    return snap.state if snap else None


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
            current = parse_state(current_raw, path, state.environment)
        except StateTooNewError:
            raise
        except StateError as e:
            raise StateError(
                f"refusing to overwrite a damaged state file: {e} "
                f"{_recovery_hint(directory, state.environment)}"
            ) from e
        check_successor(current, state, f"file {path}")
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
    except OSError as e:
        raise StateError(f"cannot read the backup {bak}: {e.strerror or e}; nothing was restored.") from None
    backup = parse_state(raw, bak, env)
    serial = backup.serial
    if path.exists():
        current_raw = path.read_bytes()
        refuse_restore_over_newer(current_raw, path, env)
        kind = "damaged"
        with contextlib.suppress(StateError):
            current = parse_state(current_raw, path, env)
            kind = "replaced"
            if current.lineage == backup.lineage:
                serial = max(serial, current.serial)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        atomic_write(directory / f"{path.name}.{kind}-{stamp}", current_raw)
    restored = replace(backup, serial=serial + 1)
    atomic_write(path, serialize_state(restored))
    return restored


# --------------------------------------------------------------------------- the backend


def _os_error(e: OSError) -> str:
    """An OS error in words: what failed, on which file (``[Errno 28] No space left on device: 'x'``)."""
    what = e.strerror or type(e).__name__
    files = [str(f) for f in (e.filename, e.filename2) if f is not None]
    return f"{what} ({' -> '.join(files)})" if files else what


class LocalBackend(StateBackend):
    """State files in a directory, locked with the lock files of ``reconciler.state.lock``.

    The compare-and-swap token is the SHA-256 of the file's bytes. The check and the rename are not one
    atomic step on a file system, so the lock file is what keeps writers apart; the token and the check
    that the lock is still ours catch a lock broken with ``state unlock`` while its holder still ran."""

    kind = "local"

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def location(self, env: str) -> str:
        return str(state_path(self.directory, env))

    def read(self, env: str) -> Snapshot | None:
        return read_snapshot(self.directory, env)

    def write(self, state: EnvState, *, token: str | None, lock: StateLock) -> str:
        env = state.environment
        path = state_path(self.directory, env)
        held = read_lock(self.directory, env)
        if lock.info.environment != env or held is None or held.id != lock.id:
            by = f" (it is now held by {held.describe()})" if held else ""
            raise StateError(
                f"the lock of {env!r} (id {lock.id}) was released or broken while this run held it{by}: "
                f"nothing was written to {path}. Plan again."
            )
        try:
            current: str | None = token_of(path.read_bytes())
        except FileNotFoundError:
            current = None
        if current != token:
            raise StateError(
                f"state file {path} changed since this run read it (another run or a hand edit): "
                "nothing was written. Plan again."
            )
        data = serialize_state(state)
        try:
            save_state(self.directory, state)
        except OSError as e:
            # A full disk, a read-only mount, a directory where the backup belongs: said, naming what
            # failed; the state file keeps its previous version (atomic_write replaces whole or not at all).
            raise StateError(
                f"cannot write the state of {env!r} in {self.directory}: {_os_error(e)}; {path} still holds "
                "the version before this write."
            ) from None
        return token_of(data)

    def lock(self, env: str, operation: str, *, timeout: float = 0.0) -> StateLock:
        return acquire(self.directory, env, operation, timeout=timeout)

    def lock_info(self, env: str) -> LockInfo | None:
        return read_lock(self.directory, env)

    def unlock(self, env: str, lock_id: str, *, force: bool = False) -> LockInfo:
        return force_unlock(self.directory, env, lock_id, force=force)

    def environments(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.name[: -len(STATE_SUFFIX)] for p in self.directory.glob(f"*{STATE_SUFFIX}"))

    def backup(self, env: str) -> EnvState | None:
        bak = backup_path(self.directory, env)
        try:
            raw = bak.read_bytes()
        except FileNotFoundError:
            return None
        return parse_state(raw, bak, env)

    def restore(self, env: str, *, lock: StateLock) -> EnvState:
        try:
            return restore_backup(self.directory, env)
        except OSError as e:
            raise StateError(
                f"cannot restore the state of {env!r} in {self.directory}: {_os_error(e)}; nothing was restored "
                f"({state_path(self.directory, env)} is as it was)."
            ) from None

    def __repr__(self) -> str:
        return f"LocalBackend({str(self.directory)!r})"
