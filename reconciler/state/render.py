"""Plain text for people: ``connref state list`` and ``connref state show ENV``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from reconciler.domain.text import inert
from reconciler.errors import StateError, StateTooNewError
from reconciler.state.backend import StateBackend
from reconciler.state.model import HISTORY_LIMIT


def list_states(backend: StateBackend) -> list[dict[str, Any]]:
    """One summary per environment with state, sorted by environment (``connref state list``).

    Keys: environment, path (where the state is: a file or a URL), status (``ok``, ``damaged``, or ``newer``:
    written by a newer connref), error,
    serial, lineage, references, last_apply (``{at, identity, os_user, commit}`` or None), lock (the holder,
    or None). A damaged state is listed with its error rather than failing the whole listing."""
    out: list[dict[str, Any]] = []
    for env in backend.environments():
        summary: dict[str, Any] = {"environment": env, "path": backend.location(env), "status": "ok", "error": None}
        try:
            st = backend.load(env)
        except StateTooNewError as e:  # not damaged, and not to be restored or deleted: upgrade connref
            summary.update(status="newer", error=str(e), serial=None, lineage=None, references=None)
            st = None
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
        lock = backend.lock_info(env)
        summary["lock"] = lock.to_dict() if lock else None
        out.append(summary)
    return out


def show_state(backend: StateBackend, env: str) -> dict[str, Any]:
    """The whole state of ``env`` as JSON-ready data plus its ``path`` (``connref state show ENV``).

    Raises StateError when there is no state for the environment (or it is damaged)."""
    st = backend.load(env)
    where = backend.location(env)
    if st is None:
        raise StateError(f"no state for environment {env!r}: {where} does not exist (nothing applied there yet).")
    return {**st.to_dict(), "path": where}


def render_state_list(summaries: Sequence[Mapping[str, Any]]) -> str:
    """Plain text for ``connref state list``."""
    if not summaries:
        return "No state files.\n"
    lines = []
    for s in summaries:
        if s["status"] == "newer":
            lines.append(f"{s['environment']}: WRITTEN BY A NEWER CONNREF: {s['error']}")
            continue
        if s["status"] != "ok":
            lines.append(f"{s['environment']}: DAMAGED: {s['error']}")
            continue
        last = s.get("last_apply")
        who = (last["identity"] or last["os_user"] or "unknown") if last else ""
        when = f", last apply {last['at']} by {who}" if last else ""
        lock = s.get("lock")
        locked = f", LOCKED by {lock['holder']} ({lock['operation']}, id {lock['id']})" if lock else ""
        lines.append(f"{s['environment']}: serial {s['serial']}, {s['references']} references{when}{locked}")
    return "\n".join(inert(line) for line in lines) + "\n"


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
    # The state records names from live data: each line is shown inert (reconciler.domain.text).
    return "\n".join(inert(line) for line in lines) + "\n"
