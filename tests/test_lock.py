"""Per-environment locks: exclusion between real processes, timeout, holder in the error, force-unlock."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from reconciler.domain.model import LiveEnvironment, LiveReference, LiveSolution, LiveUser
from reconciler.errors import LockError
from reconciler.state import local, record
from reconciler.state.lock import acquire, force_unlock, lock_path, read_lock

# fork: the children inherit the test's imports and closures; the processes are still separate (own pid,
# own file descriptors), which is what O_EXCL exclusion is about.
CTX = mp.get_context("fork")
WAIT = 20  # seconds: an upper bound for events that normally arrive in milliseconds


def _live(n: int) -> LiveEnvironment:
    svc = LiveUser("u-svc", "oid-svc", "svc@contoso.com")
    refs = tuple(
        LiveReference(
            id=f"00000000-0000-0000-0000-{i:012d}",
            logical_name=f"contoso_R{i}",
            display_name=f"R{i}",
            connector="/providers/Microsoft.PowerApps/apis/shared_office365",
            connection="c1",
            description=None,
            owner_id="u-svc",
            etag=f'W/"{i}"',
            in_solution=True,
        )
        for i in range(n)
    )
    return LiveEnvironment("dev", LiveSolution("s", "S"), 10150, refs, (), (svc,), writer=svc)


def _apply_under_lock(state_dir: str, who: str, n_refs: int) -> int:
    """What an apply does with the state: read it, record the apply, write it. Returns the serial written."""
    prev = local.load_state(state_dir, "dev")
    new = record.record_apply(
        prev, "dev", _live(n_refs), declared=[f"contoso_R{i}" for i in range(n_refs)], identity=who, user=who
    )
    local.save_state(state_dir, new)
    return new.serial


# --------------------------------------------------------------------------- two real processes


def _holder(state_dir: str, holding: Any, release: Any, out: Any) -> None:
    with acquire(state_dir, "dev", "apply", timeout=0) as lock:
        out.put(("lock", lock.id, os.getpid()))
        _apply_under_lock(state_dir, "A", 2)
        holding.set()
        release.wait(WAIT)
        out.put(("serial", _apply_under_lock(state_dir, "A", 3)))


def _contender(state_dir: str, holding: Any, out: Any, timeout: float) -> None:
    holding.wait(WAIT)
    try:
        with acquire(state_dir, "dev", "apply", timeout=timeout, poll=0.02):
            out.put(("acquired", _apply_under_lock(state_dir, "B", 4)))
    except LockError as e:
        # The state must stay readable while the other process holds the lock and writes.
        prev = local.load_state(state_dir, "dev")
        out.put(("locked", str(e), prev.serial if prev else None))


def _drain(q: Any, n: int) -> list[tuple[Any, ...]]:
    return [q.get(timeout=WAIT) for _ in range(n)]


def test_second_process_is_locked_out_and_state_stays_intact(tmp_path: Path) -> None:
    d = str(tmp_path)
    holding, release, out = CTX.Event(), CTX.Event(), CTX.Queue()
    a = CTX.Process(target=_holder, args=(d, holding, release, out))
    b = CTX.Process(target=_contender, args=(d, holding, out, 0.3))
    a.start()
    b.start()
    b.join(WAIT)
    release.set()  # only after B gave up: B is locked out for its whole timeout
    a.join(WAIT)
    assert a.exitcode == 0 and b.exitcode == 0
    msgs = _drain(out, 3)
    lock_msg = next(m for m in msgs if m[0] == "lock")
    locked = next(m for m in msgs if m[0] == "locked")
    _, lock_id, a_pid = lock_msg
    text = locked[1]
    assert f"pid {a_pid}" in text and "'apply'" in text and lock_id in text
    assert f"connref state unlock dev {lock_id}" in text
    assert "0.3s" in text or "waiting 0." in text
    assert locked[2] == 1  # B saw A's first write, whole
    final = local.load_state(d, "dev")
    assert final is not None and final.serial == 2
    assert [h.identity for h in final.history] == ["A", "A"]
    assert len(final.references) == 3
    assert not lock_path(d, "dev").exists()


def test_waiting_process_gets_the_lock_after_release_and_writes_after(tmp_path: Path) -> None:
    d = str(tmp_path)
    holding, release, q = CTX.Event(), CTX.Event(), CTX.Queue()
    a = CTX.Process(target=_holder, args=(d, holding, release, q))
    b = CTX.Process(target=_contender, args=(d, holding, q, WAIT))
    a.start()
    b.start()
    holding.wait(WAIT)
    release.set()
    a.join(WAIT)
    b.join(WAIT)
    assert a.exitcode == 0 and b.exitcode == 0
    msgs = _drain(q, 3)
    assert ("acquired", 3) in msgs  # B wrote serial 3 on top of A's two writes: no interleaving
    final = local.load_state(d, "dev")
    assert final is not None and final.serial == 3
    assert [h.identity for h in final.history] == ["A", "A", "B"]
    assert json.loads((tmp_path / "dev.json.backup").read_text())["serial"] == 2


def _racer(state_dir: str, barrier: Any, done: Any, q: Any) -> None:
    barrier.wait(WAIT)  # start together
    try:
        lock = acquire(state_dir, "dev", "apply", timeout=0)
    except LockError:
        q.put("lost")
        return
    q.put("won")
    done.wait(WAIT)  # hold until every racer has tried
    lock.release()


def test_exactly_one_of_several_simultaneous_processes_wins(tmp_path: Path) -> None:
    n = 4
    barrier, done, q = CTX.Barrier(n), CTX.Event(), CTX.Queue()
    procs = [CTX.Process(target=_racer, args=(str(tmp_path), barrier, done, q)) for _ in range(n)]
    for p in procs:
        p.start()
    results = [q.get(timeout=WAIT) for _ in range(n)]
    done.set()
    for p in procs:
        p.join(WAIT)
    assert sorted(results) == ["lost"] * (n - 1) + ["won"]
    assert all(p.exitcode == 0 for p in procs)
    assert read_lock(tmp_path, "dev") is None


# --------------------------------------------------------------------------- in one process


def test_lock_file_records_holder(tmp_path: Path) -> None:
    with acquire(tmp_path, "dev", "apply") as lock:
        info = read_lock(tmp_path, "dev")
        assert info == lock.info
        doc = json.loads(lock_path(tmp_path, "dev").read_text())
        assert doc["pid"] == os.getpid() and doc["operation"] == "apply" and "@" in doc["holder"]
        assert doc["id"] == lock.id and doc["created"].endswith("Z")
    assert read_lock(tmp_path, "dev") is None
    with acquire(tmp_path, "dev", "apply"):  # free again
        pass


def test_locks_are_per_environment(tmp_path: Path) -> None:
    with acquire(tmp_path, "dev", "apply"), acquire(tmp_path, "prod", "apply"):
        assert read_lock(tmp_path, "dev") is not None and read_lock(tmp_path, "prod") is not None


def test_timeout_polls_then_fails(tmp_path: Path) -> None:
    now = [0.0]
    sleeps: list[float] = []

    def sleep(s: float) -> None:
        sleeps.append(s)
        now[0] += s

    with acquire(tmp_path, "dev", "apply"), pytest.raises(LockError, match=r"waiting 2\.0s"):
        acquire(tmp_path, "dev", "plan", timeout=2.0, poll=0.5, sleep=sleep, clock=lambda: now[0])
    assert sleeps == [0.5, 0.5, 0.5, 0.5]


def test_zero_timeout_fails_at_once(tmp_path: Path) -> None:
    with acquire(tmp_path, "dev", "apply"), pytest.raises(LockError):
        acquire(tmp_path, "dev", "apply", timeout=0, sleep=lambda s: pytest.fail("must not sleep"))


def test_force_unlock_needs_the_right_id(tmp_path: Path) -> None:
    lock = acquire(tmp_path, "dev", "apply")
    with pytest.raises(LockError, match="does not match"):
        force_unlock(tmp_path, "dev", "not-the-id")
    assert read_lock(tmp_path, "dev") is not None
    removed = force_unlock(tmp_path, "dev", lock.id, force=True)  # its holder (this process) runs
    assert removed.id == lock.id and read_lock(tmp_path, "dev") is None
    with pytest.raises(LockError, match="not locked"):
        force_unlock(tmp_path, "dev", lock.id)


def test_release_after_force_unlock_leaves_the_new_holder_alone(tmp_path: Path) -> None:
    old = acquire(tmp_path, "dev", "apply")
    force_unlock(tmp_path, "dev", old.id, force=True)
    new = acquire(tmp_path, "dev", "apply")
    old.release()
    assert read_lock(tmp_path, "dev") == new.info
    new.release()
    assert read_lock(tmp_path, "dev") is None


def test_lock_of_a_dead_process_is_reported_as_such(tmp_path: Path) -> None:
    p = CTX.Process(target=lambda: None)
    p.start()
    p.join(WAIT)
    with acquire(tmp_path, "dev", "apply") as lock:
        doc = json.loads(lock_path(tmp_path, "dev").read_text())
        lock_path(tmp_path, "dev").write_text(json.dumps({**doc, "pid": p.pid}))
        with pytest.raises(LockError, match=f"pid {p.pid} on this host\\) is no longer running"):
            acquire(tmp_path, "dev", "apply")
        force_unlock(tmp_path, "dev", lock.id)


def test_unreadable_lock_file_still_locks(tmp_path: Path) -> None:
    path = lock_path(tmp_path, "dev")
    path.write_text("")  # a holder killed between create and write, a minute ago
    old = time.time() - 60
    os.utime(path, (old, old))
    with pytest.raises(LockError, match=r"delete .*dev\.lock by hand"):
        acquire(tmp_path, "dev", "apply")
    with pytest.raises(LockError, match="unreadable"):
        force_unlock(tmp_path, "dev", "whatever")


def _half_written(tmp_path: Path) -> tuple[Path, str]:
    """A lock file as a writer that creates it in place leaves it mid-write, and the whole text it will
    have once written."""
    from reconciler.state.backend import new_lock_info

    info = new_lock_info("dev", "apply")
    whole = json.dumps(info.to_dict(), indent=2, sort_keys=True) + "\n"
    path = lock_path(tmp_path, "dev")
    path.write_text(whole[: len(whole) // 3])
    return path, whole


def test_a_lock_file_still_being_written_is_read_once_whole(tmp_path: Path) -> None:
    path, whole = _half_written(tmp_path)
    waits: list[float] = []

    def writer_finishes(seconds: float) -> None:
        waits.append(seconds)
        path.write_text(whole)

    info = read_lock(tmp_path, "dev", sleep=writer_finishes)
    assert info is not None
    assert info.id == json.loads(whole)["id"]
    assert info.pid == os.getpid() and info.holder != "unknown (unreadable lock file)"
    assert len(waits) == 1


def test_a_run_meeting_a_lock_mid_write_names_the_holder(tmp_path: Path) -> None:
    path, whole = _half_written(tmp_path)
    def writer_finishes(_seconds: float) -> None:
        path.write_text(whole)

    with pytest.raises(LockError) as info:
        acquire(tmp_path, "dev", "apply", timeout=0.0, sleep=writer_finishes)
    text = str(info.value)
    lock_id = json.loads(whole)["id"]
    assert f"connref state unlock dev {lock_id}" in text
    assert "unknown" not in text and "(pid 0)" not in text and "by hand" not in text


def test_a_lock_file_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    seen: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            found = read_lock(tmp_path, "dev", sleep=lambda _s: None, clock=lambda: 1e12)
            if found is not None:
                seen.append(found.id)

    t = threading.Thread(target=reader)
    t.start()
    try:
        taken = []
        for _ in range(200):
            with acquire(tmp_path, "dev", "apply") as lock:
                taken.append(lock.id)
    finally:
        stop.set()
        t.join()
    assert "unknown" not in seen
    assert set(seen) <= set(taken)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_force_unlock_refuses_a_holder_still_running_here_unless_forced_and_frees_others(tmp_path: Path) -> None:
    p = CTX.Process(target=time.sleep, args=(WAIT,))
    p.start()
    try:
        with acquire(tmp_path, "dev", "apply") as lock:
            doc = json.loads(lock_path(tmp_path, "dev").read_text())
            lock_path(tmp_path, "dev").write_text(json.dumps({**doc, "pid": p.pid}))
            with pytest.raises(LockError, match=f"pid {p.pid}.*still running on this host.*--force"):
                force_unlock(tmp_path, "dev", lock.id)
            assert read_lock(tmp_path, "dev") is not None
            assert force_unlock(tmp_path, "dev", lock.id, force=True).pid == p.pid
            assert read_lock(tmp_path, "dev") is None
    finally:
        p.kill()
        p.join(WAIT)
    # Without --force all the same: a lock taken on another host, or left by a process that is gone.
    dead = CTX.Process(target=lambda: None)
    dead.start()
    dead.join(WAIT)
    for holder in ({"host": "another-runner", "pid": os.getpid()}, {"pid": dead.pid}):
        with acquire(tmp_path, "dev", "apply") as lock:
            doc = json.loads(lock_path(tmp_path, "dev").read_text())
            lock_path(tmp_path, "dev").write_text(json.dumps({**doc, **holder}))
            force_unlock(tmp_path, "dev", lock.id)
            assert read_lock(tmp_path, "dev") is None


def test_a_deeply_nested_lock_file_is_an_unreadable_lock(tmp_path: Path) -> None:
    path = lock_path(tmp_path, "dev")
    path.write_text("[" * 100_000 + "]" * 100_000)
    old = time.time() - 60
    os.utime(path, (old, old))
    info = read_lock(tmp_path, "dev")
    assert info is not None and info.id == "unknown"
    with pytest.raises(LockError, match=r"delete .*dev\.lock by hand"):
        acquire(tmp_path, "dev", "apply")
