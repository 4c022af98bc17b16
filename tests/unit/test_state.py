"""The local state backend: round trip, serial/lineage rules, atomic writes, backup, corruption, history."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.domain.model import (
    Config,
    LiveEnvironment,
    LiveReference,
    LiveSolution,
    LiveUser,
)
from reconciler.errors import StateError, StateTooNewError
from reconciler.state import local, model, record, render
from reconciler.state.lock import acquire

SVC = LiveUser("u-svc", "oid-svc", "svc-flows@contoso.com", application_id=None)
ALICE = LiveUser("u-alice", "oid-alice", "alice@contoso.com")


def live_ref(
    name: str, *, conn: str | None = "c1", etag: str = 'W/"1"', display: str | None = None
) -> LiveReference:
    return LiveReference(
        id=str(uuid.uuid5(uuid.NAMESPACE_URL, name)),  # a row id is a GUID (the state refuses others)
        logical_name=name,
        display_name=display or f"{name} display",
        connector="/providers/Microsoft.PowerApps/apis/shared_sharepointonline",
        connection=conn,
        description=None,
        owner_id="u-svc",
        etag=etag,
        in_solution=True,
    )


def live_env(*refs: LiveReference) -> LiveEnvironment:
    return LiveEnvironment(
        name="dev",
        solution=LiveSolution("sol-1", "ContosoConnections"),
        component_type=10150,
        references=refs,
        connections=(),
        users=(SVC, ALICE),
        writer=SVC,
        caller=SVC,
    )


def applied(
    tmp: Path, *names: str, prev: model.EnvState | None = None, at: str = "2024-05-01T10:00:00Z"
) -> model.EnvState:
    live = live_env(*(live_ref(n) for n in names))
    ops = [{"kind": "create", "logical_name": n} for n in names]
    new = record.record_apply(prev, "dev", live, declared=names, ops=ops, user="runner", commit="abc123", at=at)
    local.save_state(tmp, new)
    return new


# --------------------------------------------------------------------------- round trip and rules


def test_missing_state_is_none(tmp_path: Path) -> None:
    assert local.load_state(tmp_path, "dev") is None


def test_round_trip_is_exact_and_deterministic(tmp_path: Path) -> None:
    s1 = applied(tmp_path, "contoso_B", "contoso_A")
    loaded = local.load_state(tmp_path, "dev")
    assert loaded == s1
    raw = (tmp_path / "dev.json").read_bytes()
    assert raw == model.serialize_state(loaded)
    doc = json.loads(raw)
    assert list(doc["references"]) == ["contoso_A", "contoso_B"]  # sorted
    assert doc["format_version"] == model.FORMAT_VERSION
    assert doc["references"]["contoso_A"]["owner_upn"] == "svc-flows@contoso.com"
    assert doc["references"]["contoso_A"]["etag"] == 'W/"1"'
    h = doc["history"][0]
    assert (h["serial"], h["os_user"], h["identity"], h["commit"]) == (
        1,
        "runner",
        "svc-flows@contoso.com",
        "abc123",
    )
    assert h["counts"] == {"create": 2}


def test_serial_goes_up_and_lineage_is_kept(tmp_path: Path) -> None:
    s1 = applied(tmp_path, "contoso_A")
    s2 = applied(tmp_path, "contoso_A", "contoso_B", prev=s1)
    assert (s1.serial, s2.serial) == (1, 2)
    assert s1.lineage == s2.lineage
    assert s1.digest != s2.digest


def test_write_with_stale_serial_is_refused(tmp_path: Path) -> None:
    s1 = applied(tmp_path, "contoso_A")
    applied(tmp_path, "contoso_A", prev=s1)  # another run wrote serial 2
    late = record.record_apply(s1, "dev", live_env(live_ref("contoso_A")), declared=["contoso_A"], user="x")
    with pytest.raises(StateError, match="serial 2"):
        local.save_state(tmp_path, late)
    st = local.load_state(tmp_path, "dev")
    assert st is not None and st.serial == 2


def test_write_of_another_lineage_is_refused(tmp_path: Path) -> None:
    applied(tmp_path, "contoso_A")
    other = record.record_apply(None, "dev", live_env(live_ref("contoso_A")), declared=["contoso_A"], user="x")
    other = model.EnvState(**{**other.__dict__, "serial": 99})
    with pytest.raises(StateError, match="lineage"):
        local.save_state(tmp_path, other)


def test_history_keeps_the_last_twenty(tmp_path: Path) -> None:
    prev = None
    for i in range(25):
        prev = applied(tmp_path, "contoso_A", prev=prev, at=f"2024-05-01T10:{i:02d}:00Z")
    loaded = local.load_state(tmp_path, "dev")
    assert loaded is not None and loaded.serial == 25
    assert len(loaded.history) == model.HISTORY_LIMIT
    assert [h.serial for h in loaded.history] == list(range(6, 26))


def test_record_apply_semantics() -> None:
    prev = record.record_apply(
        None,
        "dev",
        live_env(live_ref("a"), live_ref("b"), live_ref("gone")),
        declared=["a", "b", "gone"],
        user="u",
        at="2024-01-01T00:00:00Z",
    )
    live_after = live_env(live_ref("a", conn="c2", etag='W/"9"'), live_ref("b"), live_ref("new"))
    ops = [
        {"kind": "update", "logical_name": "a"},
        {"kind": "delete", "logical_name": "gone"},
        {"kind": "create", "logical_name": "new"},
        {"kind": "update", "logical_name": "b"},
    ]
    nxt = record.record_apply(
        prev,
        "dev",
        live_after,
        declared=["A", "b", "new"],
        ops=ops,
        failed=["b"],
        user="u",
        identity="pipeline-app",
        at="2024-02-02T00:00:00Z",
    )
    assert nxt.serial == prev.serial + 1 and nxt.lineage == prev.lineage
    a = nxt.reference("a")
    assert (
        a is not None
        and a.connection == "c2"
        and a.etag == 'W/"9"'
        and a.applied_at == "2024-02-02T00:00:00Z"
    )
    b = nxt.reference("b")
    assert b == prev.reference("b")  # failed: the previous record is kept untouched
    assert nxt.reference("gone") is None  # deleted by the apply
    new = nxt.reference("NEW")
    assert new is not None and new.applied_at == "2024-02-02T00:00:00Z"
    h = nxt.last_apply
    assert h is not None and h.identity == "pipeline-app"
    assert dict(h.counts) == {"create": 1, "delete": 1, "failed": 1, "update": 1}


def test_untouched_reference_keeps_applied_at() -> None:
    prev = record.record_apply(
        None, "dev", live_env(live_ref("a")), declared=["a"], user="u", at="2024-01-01T00:00:00Z"
    )
    nxt = record.record_apply(
        prev, "dev", live_env(live_ref("a")), declared=["a"], user="u", at="2024-03-03T00:00:00Z"
    )
    kept = nxt.reference("a")
    assert kept is not None and kept.applied_at == "2024-01-01T00:00:00Z"


def test_vanished_is_what_is_managed_neither_declared_nor_present() -> None:
    state = record.record_apply(None, "dev", live_env(live_ref("a"), live_ref("b"), live_ref("c")),
                                declared=["a", "b", "c"], user="u", at="2024-01-01T00:00:00Z")
    assert record.vanished(None, [], []) == []
    # a: declared; B: still in the environment (another case); c: neither, so gone.
    assert record.vanished(state, declared=["A"], present=["B"]) == ["c"]
    assert record.vanished(state, declared=["a", "b", "c"], present=[]) == []


def test_forget_drops_only_the_gone_and_keeps_every_other_record() -> None:
    state = record.record_apply(None, "dev", live_env(live_ref("a"), live_ref("c")), declared=["a", "c"],
                                user="u", at="2024-01-01T00:00:00Z")
    nxt = record.forget(state, ["C"], identity="pipeline-app", user="u", at="2024-02-02T00:00:00Z")
    assert sorted(nxt.references) == ["a"] and nxt.reference("a") == state.reference("a")
    assert nxt.serial == state.serial + 1 and nxt.lineage == state.lineage
    h = nxt.last_apply
    assert h is not None and (h.identity, dict(h.counts)) == ("pipeline-app", {"forgotten": 1})


def test_record_apply_drops_the_gone_along_with_what_it_wrote() -> None:
    prev = record.record_apply(None, "dev", live_env(live_ref("a"), live_ref("c")), declared=["a", "c"],
                               user="u", at="2024-01-01T00:00:00Z")
    nxt = record.record_apply(prev, "dev", live_env(live_ref("a", conn="c2")), declared=["a"],
                              ops=[{"kind": "update", "logical_name": "a"}], gone=["c"], user="u",
                              at="2024-02-02T00:00:00Z")
    assert sorted(nxt.references) == ["a"]
    assert nxt.last_apply is not None and dict(nxt.last_apply.counts) == {"forgotten": 1, "update": 1}


# --------------------------------------------------------------------------- atomic writes and backup


def test_previous_good_state_is_kept_as_backup(tmp_path: Path) -> None:
    s1 = applied(tmp_path, "contoso_A")
    s2 = applied(tmp_path, "contoso_A", "contoso_B", prev=s1)
    backup = json.loads((tmp_path / "dev.json.backup").read_text())
    assert backup["serial"] == 1
    assert json.loads((tmp_path / "dev.json").read_text())["serial"] == s2.serial


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s1 = applied(tmp_path, "contoso_A")
    before = (tmp_path / "dev.json").read_bytes()
    s2 = record.record_apply(
        s1, "dev", live_env(live_ref("contoso_A"), live_ref("b")), declared=["contoso_A", "b"]
    )

    real_replace = os.replace

    def crash_on_state(src: str, dst: str) -> None:
        if str(dst).endswith("dev.json"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_state)
    with pytest.raises(OSError):
        local.save_state(tmp_path, s2)
    monkeypatch.undo()
    assert (tmp_path / "dev.json").read_bytes() == before
    assert local.load_state(tmp_path, "dev") == s1
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_atomic_write_replaces_inode_never_truncates_in_place(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    target.write_bytes(b"old")
    fd = os.open(target, os.O_RDONLY)  # a reader that opened the old file keeps reading the old bytes
    try:
        local.atomic_write(target, b"new content")
        assert os.read(fd, 100) == b"old"
    finally:
        os.close(fd)
    assert target.read_bytes() == b"new content"


# --------------------------------------------------------------------------- corruption


@pytest.mark.parametrize(
    ("damage", "expect"),
    [
        (lambda raw: raw[: len(raw) // 2], "not valid JSON"),
        (lambda raw: b"", "empty"),
        (lambda raw: b"\x00\x00\x00garbage", "not valid JSON"),
        (lambda raw: json.dumps({**json.loads(raw), "serial": "x"}).encode(), "damaged"),
        (
            lambda raw: json.dumps({k: v for k, v in json.loads(raw).items() if k != "lineage"}).encode(),
            "damaged",
        ),
        (lambda raw: json.dumps({**json.loads(raw), "format_version": "0.9"}).encode(), "format_version"),
    ],
    ids=["truncated", "empty", "garbage", "bad-serial", "no-lineage", "past-major"],
)
def test_damaged_state_names_file_and_offers_backup(
    tmp_path: Path, damage: Callable[[bytes], bytes], expect: str
) -> None:
    s1 = applied(tmp_path, "contoso_A")
    applied(tmp_path, "contoso_A", "contoso_B", prev=s1)
    path = tmp_path / "dev.json"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(StateError) as e:
        local.load_state(tmp_path, "dev")
    msg = str(e.value)
    assert str(path) in msg and expect in msg
    assert "connref state restore dev" in msg
    assert "dev.json.backup" in msg and "serial 1" in msg


def _newer(version: str) -> Callable[[bytes], bytes]:
    """The document as a newer connref would write it: a newer format_version and fields this one does not know."""
    def edit(raw: bytes) -> bytes:
        doc = json.loads(raw)
        doc["format_version"] = version
        doc["drift_policy"] = {"mode": "strict"}
        for ref in doc["references"].values():
            ref["pinned_by"] = "change-4711"
        return json.dumps(doc, indent=2).encode()
    return edit


@pytest.mark.parametrize("version", ["1.7", "1.10", "1.0.1", "2.0", "7"])
def test_state_written_by_a_newer_connref_is_neither_read_nor_overwritten(tmp_path: Path, version: str) -> None:
    # An older connref would drop the fields it does not know and label the rest 1.0 on its next write, and the
    # write after that would overwrite the backup too: nothing of what the newer connref recorded would survive.
    s1 = applied(tmp_path, "contoso_A")
    s2 = applied(tmp_path, "contoso_A", "contoso_B", prev=s1)
    path = tmp_path / "dev.json"
    newer = _newer(version)(path.read_bytes())
    path.write_bytes(newer)
    backup_before = (tmp_path / "dev.json.backup").read_bytes()

    with pytest.raises(StateTooNewError) as e:
        local.load_state(tmp_path, "dev")
    msg = str(e.value)
    assert str(path) in msg and f"'{version}'" in msg
    assert "written by a newer connref" in msg and "upgrade connref" in msg
    # Not damaged: neither the backup nor a fresh state is the fix.
    assert "damaged" not in msg and "restore" not in msg and "start a new state" not in msg
    assert "move it away" not in msg

    with pytest.raises(StateTooNewError, match="written by a newer connref"):
        local.save_state(tmp_path, applied_state_after(s2))
    with pytest.raises(StateTooNewError, match=r"not restoring over it: .*written by a newer connref"):
        local.restore_backup(tmp_path, "dev")
    assert path.read_bytes() == newer
    assert (tmp_path / "dev.json.backup").read_bytes() == backup_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev.json", "dev.json.backup"]

    listed = render.list_states(local.LocalBackend(tmp_path))
    assert [(s["environment"], s["status"]) for s in listed] == [("dev", "newer")]
    text = render.render_state_list(listed)
    assert "WRITTEN BY A NEWER CONNREF" in text and "DAMAGED" not in text


@pytest.mark.parametrize("version", ["1.0", "1", "1.0.0", "1.00"])
def test_state_of_this_format_is_read(tmp_path: Path, version: str) -> None:
    s1 = applied(tmp_path, "contoso_A")
    path = tmp_path / "dev.json"
    path.write_bytes(json.dumps({**json.loads(path.read_bytes()), "format_version": version}).encode())
    loaded = local.load_state(tmp_path, "dev")
    assert loaded is not None and loaded.references == s1.references


def applied_state_after(prev: model.EnvState) -> model.EnvState:
    """What an apply after ``prev`` would write: same lineage, the next serial."""
    return model.EnvState(environment="dev", lineage=prev.lineage, serial=prev.serial + 1,
                          references=prev.references, history=prev.history, solution=prev.solution)


def _edit_refs(edit: Callable[[dict[str, dict[str, object]]], None]) -> Callable[[bytes], bytes]:
    def damage(raw: bytes) -> bytes:
        doc = json.loads(raw)
        edit(doc["references"])
        return json.dumps(doc).encode()
    return damage


def _move_under_another_key(refs: dict[str, dict[str, object]]) -> None:
    # The reviewer's hand edit: an entry recorded under a key that is not its logical name.
    refs["contoso_Victim"] = refs.pop("contoso_A")


def _same_row_twice(refs: dict[str, dict[str, object]]) -> None:
    refs["contoso_B"]["id"] = refs["contoso_A"]["id"]


def _set(field: str, value: object) -> Callable[[bytes], bytes]:
    def damage(raw: bytes) -> bytes:
        return json.dumps({**json.loads(raw), field: value}).encode()
    return damage


def _set_ref(field: str, value: object) -> Callable[[dict[str, dict[str, object]]], None]:
    def edit(refs: dict[str, dict[str, object]]) -> None:
        refs["contoso_A"][field] = value
    return edit


@pytest.mark.parametrize(
    ("damage", "expect"),
    [
        (_edit_refs(_move_under_another_key), "references.contoso_Victim.logical_name is 'contoso_A', not the key"),
        (_edit_refs(_same_row_twice), "references.contoso_B records the row (id) of references.contoso_A"),
        (_set("serial", "1"), "serial is not an integer"),
        (_set("serial", True), "serial is not an integer"),
        (lambda raw: raw.replace(b'"serial": 2,', b'"serial": 1' + b"0" * 400 + b","), "integer of 401 digits"),
        (_set("serial", 2**53), "serial is out of range"),
        (_edit_refs(_set_ref("id", "not-a-guid")), "references.contoso_A.id is not a GUID"),
        (_edit_refs(_set_ref("etag", 5)), "references.contoso_A.etag is not a string or null"),
        (_edit_refs(_set_ref("connector", None)), "references.contoso_A.connector is not a string"),
        (lambda raw: b"[" * 100_000 + b"]" * 100_000, "nested deeper than"),
        (lambda raw: b'{"a":' * 5000 + b"1" + b"}" * 5000, "nested deeper than"),
        (lambda raw: raw.replace(b'"serial": 2,', b'"serial": NaN,'), "NaN, which is not a JSON number"),
    ],
    ids=["key-not-logical-name", "duplicate-row", "serial-string", "serial-bool", "serial-400-digits",
         "serial-too-big", "id-not-guid", "etag-number", "connector-null", "nested-lists", "nested-objects",
         "nan"],
)
def test_hand_edited_or_deep_state_is_damaged_and_restore_brings_the_backup_back(
    tmp_path: Path, damage: Callable[[bytes], bytes], expect: str
) -> None:
    s1 = applied(tmp_path, "contoso_A", "contoso_B")
    applied(tmp_path, "contoso_A", "contoso_B", prev=s1)
    path = tmp_path / "dev.json"
    damaged = damage(path.read_bytes())
    assert damaged != path.read_bytes()
    path.write_bytes(damaged)
    with pytest.raises(StateError) as e:
        local.load_state(tmp_path, "dev")
    msg = str(e.value)
    assert str(path) in msg and expect in msg, msg
    assert "connref state restore dev" in msg and "serial 1" in msg
    listed = render.list_states(local.LocalBackend(tmp_path))
    assert [s["status"] for s in listed] == ["damaged"]
    restored = local.LocalBackend(tmp_path).restore("dev", lock=acquire(tmp_path, "dev", "state restore"))
    assert restored.references == s1.references and local.load_state(tmp_path, "dev") == restored


def test_a_state_that_cannot_be_written_is_a_state_error_naming_it(tmp_path: Path) -> None:
    s1 = applied(tmp_path, "contoso_A")
    before = (tmp_path / "dev.json").read_bytes()
    # A directory where the backup belongs: the replace fails as on a full disk or a read-only mount.
    (tmp_path / "dev.json.backup" / "x").mkdir(parents=True)
    backend = local.LocalBackend(tmp_path)
    s2 = record.record_apply(s1, "dev", live_env(live_ref("contoso_A", display="new")), declared=["contoso_A"])
    with acquire(tmp_path, "dev", "apply") as lock, pytest.raises(StateError) as e:
        backend.write(s2, token=model.token_of(before), lock=lock)
    msg = str(e.value)
    assert "cannot write the state of 'dev'" in msg and str(tmp_path / "dev.json.backup") in msg
    assert "Is a directory" in msg and "still holds the version before this write" in msg
    assert (tmp_path / "dev.json").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_damaged_state_without_backup_says_so(tmp_path: Path) -> None:
    applied(tmp_path, "contoso_A")
    (tmp_path / "dev.json").write_text('{"format_version": "1.0", "seri')
    with pytest.raises(StateError, match="No backup"):
        local.load_state(tmp_path, "dev")


def test_damaged_state_is_never_overwritten(tmp_path: Path) -> None:
    s1 = applied(tmp_path, "contoso_A")
    s2 = applied(tmp_path, "contoso_A", prev=s1)
    (tmp_path / "dev.json").write_text("{trunc")
    s3 = record.record_apply(s2, "dev", live_env(live_ref("contoso_A")), declared=["contoso_A"])
    with pytest.raises(StateError, match="refusing to overwrite"):
        local.save_state(tmp_path, s3)
    assert json.loads((tmp_path / "dev.json.backup").read_text())["serial"] == 1  # backup survived


def test_restore_backup(tmp_path: Path) -> None:
    s1 = applied(tmp_path, "contoso_A")
    applied(tmp_path, "contoso_A", "contoso_B", prev=s1)
    (tmp_path / "dev.json").write_text("{trunc")
    restored = local.restore_backup(tmp_path, "dev")
    assert restored.lineage == s1.lineage and restored.references == s1.references
    assert restored.serial == 2  # a new serial: plans saved against the backup are stale
    assert local.load_state(tmp_path, "dev") == restored
    damaged = [p for p in tmp_path.iterdir() if ".damaged-" in p.name]
    assert len(damaged) == 1 and damaged[0].read_text() == "{trunc"


def test_restore_without_backup(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="no backup"):
        local.restore_backup(tmp_path, "dev")


def test_environment_name_cannot_escape_directory(tmp_path: Path) -> None:
    with pytest.raises(StateError):
        local.load_state(tmp_path, "../etc")


def test_state_of_another_environment_is_refused(tmp_path: Path) -> None:
    applied(tmp_path, "contoso_A")
    (tmp_path / "prod.json").write_bytes((tmp_path / "dev.json").read_bytes())
    with pytest.raises(StateError, match="belongs to environment 'dev'"):
        local.load_state(tmp_path, "prod")


# --------------------------------------------------------------------------- list / show / helpers


def test_list_and_show(tmp_path: Path) -> None:
    applied(tmp_path, "contoso_A")
    (tmp_path / "prod.json").write_text("{bad")
    with acquire(tmp_path, "dev", "apply") as lock:
        summaries = render.list_states(local.LocalBackend(tmp_path))
        text = render.render_state_list(summaries)
    by_env = {s["environment"]: s for s in summaries}
    assert by_env["dev"]["serial"] == 1 and by_env["dev"]["references"] == 1
    assert by_env["dev"]["last_apply"]["commit"] == "abc123"
    assert by_env["dev"]["lock"]["id"] == lock.id
    assert by_env["prod"]["status"] == "damaged" and "prod.json" in by_env["prod"]["error"]
    assert f"LOCKED by {lock.info.holder}" in text and "prod: DAMAGED" in text

    doc = render.show_state(local.LocalBackend(tmp_path), "dev")
    assert doc["references"]["contoso_A"]["connection"] == "c1"
    assert doc["path"].endswith("dev.json")
    shown = render.render_state_show(doc)
    assert "contoso_A" in shown and "serial 1" in shown and "commit abc123" in shown
    with pytest.raises(StateError, match="no state for environment 'test'"):
        render.show_state(local.LocalBackend(tmp_path), "test")


def test_state_dir_for_config(tmp_path: Path) -> None:
    cfg = Config(path=str(tmp_path / "connref.yaml"), version=1, solution="S", references={}, environments={})
    assert local.state_dir_for(cfg) == tmp_path / "state"
    cfg2 = Config(
        path=str(tmp_path / "connref.yaml"),
        version=1,
        solution="S",
        references={},
        environments={},
        state_dir="ops/state",
    )
    assert local.state_dir_for(cfg2) == tmp_path / "ops" / "state"


def test_restore_over_a_readable_state_keeps_it_and_moves_the_serial_past_it(tmp_path: Path) -> None:
    s1 = applied(tmp_path, "contoso_A")
    s2 = applied(tmp_path, "contoso_A", "contoso_B", prev=s1)
    restored = local.restore_backup(tmp_path, "dev")
    assert restored.references == s1.references and restored.serial == s2.serial + 1
    kept = [p for p in tmp_path.iterdir() if ".replaced-" in p.name]
    assert len(kept) == 1 and json.loads(kept[0].read_text())["serial"] == s2.serial


# --------------------------------------------------------------------------- flows to restore


def test_flows_to_restore_are_recorded_before_and_cleared_once_on() -> None:
    empty = record.record_apply(None, "dev", LiveEnvironment("dev", None, None, (), (), ()), declared=[],
                                at="2026-03-01T00:00:00Z", user="u")
    assert "flows_to_restore" not in empty.to_dict()  # absent while there are none
    marked = record.mark_flows_to_restore(empty, "dev", {"F1-ID": "Intake", "f2-id": "Approval"},
                                          at="2026-03-02T00:00:00Z")
    assert marked.serial == empty.serial + 1 and marked.history == empty.history
    assert marked.to_dict()["flows_to_restore"] == {
        "f1-id": {"name": "Intake", "since": "2026-03-02T00:00:00Z"},
        "f2-id": {"name": "Approval", "since": "2026-03-02T00:00:00Z"}}
    again = model.parse_state(model.serialize_state(marked), "dev.json", "dev")
    assert again == marked and set(again.flows_to_restore) == {"f1-id", "f2-id"}
    # Marking a flow again keeps when it was first switched off.
    remarked = record.mark_flows_to_restore(marked, "dev", {"f1-id": "Intake"}, at="2026-03-03T00:00:00Z")
    assert remarked.flows_to_restore["f1-id"].since == "2026-03-02T00:00:00Z"
    after = record.record_apply(remarked, "dev", LiveEnvironment("dev", None, None, (), (), ()), declared=[],
                                flows_on=["F1-ID"], at="2026-03-04T00:00:00Z", user="u")
    assert set(after.flows_to_restore) == {"f2-id"} and after.serial == remarked.serial + 1
    done = record.record_apply(after, "dev", LiveEnvironment("dev", None, None, (), (), ()), declared=[],
                               flows_on=["f2-id"], user="u")
    assert "flows_to_restore" not in done.to_dict()
