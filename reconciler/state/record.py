"""The state transition of an apply: the state after it, from the previous state and what it did."""

from __future__ import annotations

import getpass
import os
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from reconciler.domain.model import LiveEnvironment, frozen_map
from reconciler.state.model import (
    FORMAT_VERSION,
    HISTORY_LIMIT,
    EnvState,
    FlowToRestore,
    HistoryEntry,
    ManagedReference,
    new_state,
)


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
    unknown: Iterable[str] = (),
    not_written: Iterable[str] = (),
    solution: str | None = None,
    identity: str | None = None,
    user: str | None = None,
    commit: str | None = None,
    at: str | None = None,
    gone: Iterable[str] = (),
    flows_on: Iterable[str] | None = None,
) -> EnvState:
    """The state after an apply, from the previous state, what the apply did and the environment re-read.

    The refresh rule (state/README.md, "When the state is refreshed"): every declared reference found in
    the environment after the apply is recorded as it is there, whether this apply wrote it or not, except
    those whose write did not happen: their previous entry is kept, so an outside change the apply tried and
    failed to undo is still drift.

    - ``declared``: the logical names the config declares for this environment;
    - ``ops``: the operations written (``ops.Operation`` objects or their ``to_dict()``);
    - ``failed``, ``unknown``, ``not_written``: logical names whose writes failed, ended with an unknown
      outcome, or were not sent or rolled back (from the ApplyResult): their previous entry is kept;
    - ``live_after``: the environment read after the apply; each declared reference found there is recorded
      with its live values and ETag, so the next drift check compares against what is really there;
    - ``gone``: managed references that are neither declared nor in the environment any more (``vanished``);
    - ``flows_on``: the flows to restore that are on again after this apply (ids): no longer recorded.

    A delete op that succeeded removes the reference from the state, and so does ``gone``. ``identity``
    defaults to the writer (or caller) of ``live_after``, ``user`` to the OS user, ``at`` to now; ``commit``
    is not looked up here (pass ``git_commit(config_dir)``). Serial goes up by one; lineage is kept (new
    for a first apply). Pure: nothing is written; call ``save_state`` with the result."""
    at = at or now_utc()
    failed_keys = {n.lower() for n in failed}
    unknown_keys = {n.lower() for n in unknown}
    kept_keys = failed_keys | unknown_keys | {n.lower() for n in not_written}
    touched: dict[str, str] = {}
    counts: dict[str, int] = {}
    deleted: set[str] = set()
    for op in ops:
        kind, name = _op_fields(op)
        if name.lower() in kept_keys:
            continue
        touched[name.lower()] = kind
        counts[kind] = counts.get(kind, 0) + 1
        if kind in ("delete", "retire"):
            deleted.add(name.lower())
    if failed_keys:
        counts["failed"] = len(failed_keys)
    if unknown_keys:
        counts["unknown"] = len(unknown_keys)

    base = prev or new_state(env, solution=solution)
    forgotten = {n.lower() for n in gone} & {n.lower() for n in base.references}
    if forgotten:
        counts["forgotten"] = len(forgotten)
    refs: dict[str, ManagedReference] = {}
    for name, ref in base.references.items():
        if name.lower() not in deleted | forgotten:
            refs[name] = ref

    live_by_name = {r.logical_name.lower(): r for r in live_after.references}
    # The recorded names by lower case, in recording order (an index, not a scan per declared name).
    spellings: dict[str, list[str]] = {}
    for k in refs:
        spellings.setdefault(k.lower(), []).append(k)
    recorded_now = 0
    for name in declared:
        key = name.lower()
        live_ref = live_by_name.get(key)
        if key in kept_keys or live_ref is None:
            continue  # not known to be as declared: keep what was recorded before, if anything
        recorded = spellings.get(key)
        old = refs.pop(recorded.pop(0)) if recorded else None
        # applied_at moves only when this apply wrote the reference (or first took it under management).
        when = at if (key in touched or old is None) else (old.applied_at or at)
        if live_ref.logical_name not in refs:
            spellings.setdefault(key, []).append(live_ref.logical_name)
        new = ManagedReference.from_live(live_ref, live_after, when)
        if key not in touched and new != old:
            recorded_now += 1
        refs[live_ref.logical_name] = new
    if recorded_now:
        counts["recorded"] = recorded_now

    who = live_after.writer or live_after.caller
    restored = {f.lower() for f in flows_on or ()}
    base = replace(base, flows_to_restore=frozen_map(
        {k: v for k, v in base.flows_to_restore.items() if k not in restored}))
    return _next(base, refs, counts, at=at, user=user, identity=identity or (who.describe() if who else None),
                 commit=commit, solution=solution)


#: The fields of a record a person reads, in the order shown (the ETag and times are not shown).
SHOWN_FIELDS = ("display_name", "description", "connector", "connection", "owner")


def same_records(a: EnvState | None, b: EnvState | None) -> bool:
    """Whether two states record the same references with the same values (serial and history aside)."""
    if a is None or b is None:
        return a is b
    return {k.lower(): v for k, v in a.references.items()} == {k.lower(): v for k, v in b.references.items()}


def recorded_changes(prev: EnvState | None, new: EnvState, written: Iterable[str]) -> list[tuple[str, str, Any, Any]]:
    """What ``new`` records differently from ``prev`` for references this apply did not write (``written``:
    logical names): one ``(logical name, field, before, after)`` per field a person reads (``owner`` as the
    UPN when known), for references recorded before. What an apply's refresh took into the state."""
    if prev is None:
        return []
    wrote = {n.lower() for n in written}
    out: list[tuple[str, str, Any, Any]] = []
    for name, ref in sorted(new.references.items(), key=lambda kv: kv[0].lower()):
        old = prev.reference(name)
        if old is None or name.lower() in wrote or old == ref:
            continue
        for f in SHOWN_FIELDS:
            before, after = getattr(old, f), getattr(ref, f)
            if f == "owner":
                before, after = (old.owner_upn or before), (ref.owner_upn or after)
            if (before or None) != (after or None) and str(before or "").lower() != str(after or "").lower():
                out.append((ref.logical_name, f, before, after))
    return out


def mark_flows_to_restore(prev: EnvState | None, env: str, flows: Mapping[str, str], *, solution: str | None = None,
                          at: str | None = None) -> EnvState:
    """The state before an apply switches flows that are on off to edit them (docs/dataverse.md §5.9): ``prev``
    with ``flows`` (workflow id -> name) recorded as flows to restore, serial one up. Written before the first
    of those writes, so an apply interrupted before the flows are on again is finished by the next one."""
    at = at or now_utc()
    base = prev or new_state(env, solution=solution)
    restore = dict(base.flows_to_restore)
    for flow_id, name in flows.items():
        restore.setdefault(flow_id.lower(), FlowToRestore(flow_id.lower(), name, at))
    return replace(base, serial=base.serial + 1, flows_to_restore=frozen_map(restore),
                   solution=solution or base.solution, format_version=FORMAT_VERSION)


def vanished(state: EnvState | None, declared: Iterable[str], present: Iterable[str]) -> list[str]:
    """The references ``state`` manages that the config no longer declares and that are not among the
    logical names ``present`` in the environment: deleted there, nothing is left to manage. Prune has
    nothing to delete and drift nothing to compare them with, so an apply drops them from the state
    (``forget``), as Terraform's refresh drops a resource that no longer exists."""
    if state is None:
        return []
    keep = {n.lower() for n in declared} | {n.lower() for n in present}
    return sorted((n for n in state.references if n.lower() not in keep), key=str.lower)


def forget(
    state: EnvState,
    names: Iterable[str],
    *,
    identity: str | None = None,
    user: str | None = None,
    commit: str | None = None,
    at: str | None = None,
) -> EnvState:
    """The state after an apply that wrote nothing but found managed references gone (``vanished``):
    those are dropped, every other record stays as it was (its drift is still drift)."""
    drop = {n.lower() for n in names}
    refs = {n: r for n, r in state.references.items() if n.lower() not in drop}
    counts = {"forgotten": len(state.references) - len(refs)}
    return _next(state, refs, counts, at=at or now_utc(), user=user, identity=identity, commit=commit)


def _next(
    base: EnvState,
    refs: Mapping[str, ManagedReference],
    counts: Mapping[str, int],
    *,
    at: str,
    user: str | None,
    identity: str | None,
    commit: str | None,
    solution: str | None = None,
) -> EnvState:
    """``base`` with ``refs``, the serial one up and a history entry for this apply."""
    entry = HistoryEntry(
        serial=base.serial + 1,
        at=at,
        os_user=user if user is not None else os_user(),
        identity=identity,
        commit=commit,
        counts=frozen_map(dict(sorted(counts.items()))),
    )
    return replace(
        base,
        serial=base.serial + 1,
        references=frozen_map(dict(refs)),
        history=(*base.history, entry)[-HISTORY_LIMIT:],
        solution=solution or base.solution,
        format_version=FORMAT_VERSION,
    )
