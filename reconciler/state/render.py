"""Plain text for people: ``connref state list`` and ``connref state show ENV``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from reconciler.state.model import HISTORY_LIMIT


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
