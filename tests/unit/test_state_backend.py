"""The state backend interface, held to one contract whatever the backend.

``BackendContract`` goes through ``StateBackend`` only: read with a token, compare-and-swap write under the
lock, the lock's holder info, unlock by id, listing, backup and restore. Each backend's test class inherits
it and provides the ``backend`` fixture: the local directory here, Azure Blob storage (on Azurite) in
tests/test_state_azurerm.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from builders import applied_state

from reconciler.errors import LockError, StateError
from reconciler.state.backend import StateBackend
from reconciler.state.local import LocalBackend
from reconciler.state.model import new_state


class BackendContract:
    """What every state backend does; subclasses provide the ``backend`` fixture."""

    def test_missing_state_reads_as_none(self, backend: StateBackend) -> None:
        assert backend.read("dev") is None
        assert backend.load("dev") is None
        assert backend.backup("dev") is None
        assert backend.environments() == []

    def test_write_then_read_gives_the_same_state_and_the_written_token(self, backend: StateBackend) -> None:
        s1 = applied_state("dev", "contoso_A")
        with backend.lock("dev", "apply") as lock:
            token = backend.write(s1, token=None, lock=lock)
        snap = backend.read("dev")
        assert snap is not None
        assert snap.state == s1 and snap.token == token
        assert backend.environments() == ["dev"]
        assert backend.lock_info("dev") is None  # released on leaving the block

    def test_a_write_with_the_token_of_an_older_version_loses(self, backend: StateBackend) -> None:
        s1 = applied_state("dev", "contoso_A")
        with backend.lock("dev", "apply") as lock:
            backend.write(s1, token=None, lock=lock)
        first = backend.read("dev")
        second = backend.read("dev")
        assert first is not None and second is not None
        s2 = applied_state("dev", "contoso_A", "contoso_B", prev=first.state)
        s2_other = applied_state("dev", "contoso_C", prev=second.state)
        with backend.lock("dev", "apply") as lock:
            backend.write(s2, token=first.token, lock=lock)
            with pytest.raises(StateError, match="nothing was written"):
                backend.write(replace(s2_other, serial=s2.serial + 1), token=second.token, lock=lock)
        now = backend.load("dev")
        assert now == s2, "the losing write changed the state"

    def test_creating_state_that_another_run_created_meanwhile_is_refused(self, backend: StateBackend) -> None:
        with backend.lock("dev", "apply") as lock:
            backend.write(applied_state("dev", "contoso_A"), token=None, lock=lock)
            with pytest.raises(StateError):
                backend.write(applied_state("dev", "contoso_B"), token=None, lock=lock)
        loaded = backend.load("dev")
        assert loaded is not None and set(loaded.references) == {"contoso_A"}

    def test_serial_and_lineage_must_follow_on(self, backend: StateBackend) -> None:
        s1 = applied_state("dev", "contoso_A")
        with backend.lock("dev", "apply") as lock:
            token = backend.write(s1, token=None, lock=lock)
            with pytest.raises(StateError, match="not older than the serial"):
                backend.write(s1, token=token, lock=lock)
            with pytest.raises(StateError, match="lineage"):
                backend.write(replace(new_state("dev"), serial=5), token=token, lock=lock)
        assert backend.load("dev") == s1

    def test_second_lock_names_the_holder_and_the_unlock_command(self, backend: StateBackend) -> None:
        with backend.lock("dev", "apply") as held:
            info = backend.lock_info("dev")
            assert info is not None and info.id == held.id and info.operation == "apply"
            assert info.holder == held.info.holder and "@" in info.holder
            with pytest.raises(LockError) as e:
                backend.lock("dev", "apply", timeout=0.0)
            assert info.holder in str(e.value) and f"connref state unlock dev {held.id}" in str(e.value)
            with backend.lock("prod", "apply"):  # locks are per environment
                pass
        assert backend.lock_info("dev") is None
        with backend.lock("dev", "apply"):  # free again
            pass

    def test_unlock_needs_the_lock_id_and_a_broken_lock_cannot_write(self, backend: StateBackend) -> None:
        lock = backend.lock("dev", "apply")
        try:
            with pytest.raises(LockError, match="does not match"):
                backend.unlock("dev", "00000000-0000-0000-0000-000000000000")
            assert backend.lock_info("dev") is not None
            # This process holds it and runs on this host: breaking it needs --force.
            with pytest.raises(LockError, match=r"still running on this host.*--force"):
                backend.unlock("dev", lock.id)
            assert backend.lock_info("dev") is not None
            released = backend.unlock("dev", lock.id, force=True)
            assert released.id == lock.id
            assert backend.lock_info("dev") is None
            with pytest.raises(LockError, match="not locked"):
                backend.unlock("dev", lock.id)
            # The run whose lock was broken must not write over whoever came next.
            with pytest.raises(StateError, match="nothing was written"):
                backend.write(applied_state("dev", "contoso_A"), token=None, lock=lock)
            assert backend.read("dev") is None
        finally:
            lock.release()
        with backend.lock("dev", "apply"):  # the broken holder's release left the lock free
            pass

    def test_backup_is_the_previous_version_and_restore_brings_it_back(self, backend: StateBackend) -> None:
        s1 = applied_state("dev", "contoso_A")
        with backend.lock("dev", "apply") as lock:
            t1 = backend.write(s1, token=None, lock=lock)
            assert backend.backup("dev") is None
            s2 = applied_state("dev", "contoso_A", "contoso_B", prev=s1)
            backend.write(s2, token=t1, lock=lock)
        assert backend.backup("dev") == s1
        with backend.lock("dev", "state restore") as lock:
            restored = backend.restore("dev", lock=lock)
        assert restored.references == s1.references and restored.lineage == s1.lineage
        assert restored.serial == s2.serial + 1  # a plan saved against either is stale
        assert backend.load("dev") == restored

    def test_restore_without_a_backup_is_refused(self, backend: StateBackend) -> None:
        with backend.lock("dev", "state restore") as lock, pytest.raises(StateError, match="no backup"):
            backend.restore("dev", lock=lock)


class TestLocalBackend(BackendContract):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[StateBackend]:
        with LocalBackend(tmp_path / "state") as b:
            yield b
