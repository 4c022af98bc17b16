"""A cloud flow's definition, ``clientdata`` (docs/dataverse.md §5.2): the connections it uses, how it starts,
and moving it from one reference to another. Pure JSON work: no I/O.

- ``connections(clientdata)``: one ``FlowConnection`` per entry of ``connectionReferences``: its key (what
  triggers and actions name in ``inputs.host.connectionName``), the reference's logical name (or the
  connection an older flow binds directly), the connector, and ``runtimeSource`` (``embedded``: the bound
  connection; ``invoker``: the connection of whoever runs an instant flow, docs/dataverse.md §5.4).
- ``trigger_kind(clientdata)``: ``manual`` (a ``Request`` trigger: a button, Power Apps, Copilot Studio, a
  child flow), ``scheduled`` (``Recurrence``) or ``automated`` (any other: a connector's event).
- ``repoint(clientdata, replaced)``: the definition with every entry naming a replaced reference naming its
  replacement instead (docs/dataverse.md §5.9, §5.10). When the flow already has an entry for the kept
  reference, with the same ``runtimeSource``, the replaced entry is removed and every trigger and action
  that named its key names the kept entry's key, so a flow has one entry per reference; everything else in
  the document is kept as it was.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from reconciler.domain.model import FlowConnection
from reconciler.domain.patterns import is_guid

TRIGGER_KINDS = ("manual", "scheduled", "automated")


def _document(clientdata: str | None) -> dict[str, Any]:
    if not clientdata:
        return {}
    try:
        doc = json.loads(clientdata)
    except (TypeError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _properties(doc: dict[str, Any]) -> dict[str, Any]:
    inner = doc.get("properties")
    return inner if isinstance(inner, dict) else doc


def _source(entry: Mapping[str, Any]) -> str:
    raw = entry.get("runtimeSource") or entry.get("source") or "embedded"
    return str(raw).lower()


def _logical_name(entry: Mapping[str, Any]) -> str | None:
    conn = entry.get("connection")
    name = (conn.get("connectionReferenceLogicalName") if isinstance(conn, dict) else None) \
        or entry.get("connectionReferenceLogicalName")
    return name if isinstance(name, str) and name else None


def readable(clientdata: str | None) -> bool:
    """Whether the definition can be read for what it uses: a JSON object with a ``definition`` object
    (under ``properties``), and ``connectionReferences``, when there is one, an object. A flow with no
    connection at all has none; a definition that is null, not JSON, or of another shape says nothing of
    the references the flow needs."""
    props = _properties(_document(clientdata))
    refs = props.get("connectionReferences")
    return isinstance(props.get("definition"), dict) and (refs is None or isinstance(refs, dict))


def connections(clientdata: str | None) -> tuple[FlowConnection, ...]:
    """The entries of ``connectionReferences``, in the definition's order."""
    refs = _properties(_document(clientdata)).get("connectionReferences")
    if not isinstance(refs, dict):
        return ()
    out: list[FlowConnection] = []
    for key, entry in refs.items():
        if not isinstance(entry, dict):
            continue
        api = entry.get("api")
        connector = api.get("name") if isinstance(api, dict) else None
        if not connector and isinstance(entry.get("id"), str):
            connector = str(entry["id"]).rstrip("/").rsplit("/", 1)[-1]
        direct = entry.get("connectionName")
        out.append(FlowConnection(
            key=str(key),
            logical_name=_logical_name(entry),
            connector=str(connector) if connector else None,
            runtime_source=_source(entry),
            connection_name=direct if isinstance(direct, str) and direct else None,
        ))
    return tuple(out)


def _triggers(clientdata: str | None) -> dict[str, Any]:
    definition = _properties(_document(clientdata)).get("definition")
    triggers = definition.get("triggers") if isinstance(definition, dict) else None
    return triggers if isinstance(triggers, dict) else {}


def trigger_kind(clientdata: str | None) -> str | None:
    """``manual``, ``scheduled`` or ``automated`` from the definition's first trigger; None when it has none."""
    triggers = _triggers(clientdata)
    if not triggers:
        return None
    first = next(iter(triggers.values()))
    kind = str(first.get("type", "")).lower() if isinstance(first, dict) else ""
    return {"request": "manual", "recurrence": "scheduled"}.get(kind, "automated")


def trigger_name(clientdata: str | None) -> str | None:
    """The name of the definition's first trigger (``manual``, ``Recurrence``, ``When_an_item_is_created``)."""
    triggers = _triggers(clientdata)
    return str(next(iter(triggers))) if triggers else None


# --------------------------------------------------------------------------- re-pointing


def flow_references(clientdata: str | None) -> tuple[str, ...]:
    """The reference logical names a flow's ``clientdata`` uses, each once, in the definition's order
    (docs/dataverse.md §5.2).

    Recognised: entries of ``connectionReferences`` (under ``properties`` or at the top) whose
    ``connection.connectionReferenceLogicalName`` (current form) or ``connectionReferenceLogicalName``
    (flattened form) is set. Legacy entries (``connectionName``/``source``/``id``) bind a connection
    directly and use no reference, so they add nothing."""
    names: list[str] = []
    for entry in connections(clientdata):
        name = entry.logical_name
        if name and name.lower() not in (n.lower() for n in names):
            names.append(name)
    return tuple(names)


def _nodes(node: Any) -> Iterator[dict[str, Any]]:
    """Every object in a definition, depth first in document order."""
    stack = [node]
    while stack:
        cur = stack.pop()
        if isinstance(cur, dict):
            yield cur
            stack.extend(reversed(list(cur.values())))
        elif isinstance(cur, list):
            stack.extend(reversed(cur))


def flow_children(clientdata: str | None) -> tuple[str, ...]:
    """The ``workflowid`` (lower case) of each child flow a definition runs: actions of type ``Workflow``
    ("Run a Child Flow") name it in ``inputs.host.workflowReferenceName``, at any depth (docs/dataverse.md
    §5.5)."""
    definition = _properties(_document(clientdata)).get("definition")
    out: list[str] = []
    for node in _nodes(definition):
        if str(node.get("type", "")).lower() != "workflow":
            continue
        inputs = node.get("inputs")
        host = inputs.get("host") if isinstance(inputs, dict) else None
        ref = host.get("workflowReferenceName") if isinstance(host, dict) else None
        if isinstance(ref, str) and is_guid(ref) and ref.lower() not in out:
            out.append(ref.lower())
    return tuple(out)


def flow_trigger(clientdata: str | None) -> str | None:
    """The kind of a flow's trigger as the live model keeps it: ``manual`` (a ``Request`` trigger: buttons,
    Power Apps, child flows), ``recurrence`` (scheduled) or ``automated``; None when the definition names
    none. The same reading as :func:`trigger_kind`, which calls the scheduled kind ``scheduled``."""
    kind = trigger_kind(clientdata)
    return "recurrence" if kind == "scheduled" else kind


def _rename_keys(definition: Any, renamed: Mapping[str, str]) -> None:
    """Point every ``inputs.host.connectionName`` (and an older ``@parameters('$connections')['key']``
    expression in ``inputs.host.connection.name``) that names a removed key at the kept one."""
    if not renamed:
        return
    pattern = re.compile(r"\['(" + "|".join(re.escape(k) for k in renamed) + r")'\]")
    for node in _nodes(definition):
        inputs = node.get("inputs")
        host = inputs.get("host") if isinstance(inputs, dict) else None
        if not isinstance(host, dict):
            continue
        key = host.get("connectionName")
        if isinstance(key, str) and key in renamed:
            host["connectionName"] = renamed[key]
        conn = host.get("connection")
        if not isinstance(conn, dict):
            continue
        expr = conn.get("name")
        if isinstance(expr, str) and expr.startswith("@parameters('$connections')"):
            conn["name"] = pattern.sub(lambda m: f"['{renamed[m.group(1)]}']", expr)


def _set_logical_name(entry: dict[str, Any], logical_name: str) -> None:
    conn = entry.get("connection")
    if isinstance(conn, dict) and "connectionReferenceLogicalName" in conn:
        conn["connectionReferenceLogicalName"] = logical_name
    else:
        entry["connectionReferenceLogicalName"] = logical_name


def repoint(clientdata: str | None, replaced: Mapping[str, str]) -> str | None:
    """The definition moved off the replaced references (``replaced``: lower-cased logical name -> the
    logical name that replaces it), or None when it names none of them (or cannot be read)."""
    doc = _document(clientdata)
    props = _properties(doc)
    refs = props.get("connectionReferences")
    if not isinstance(refs, dict):
        return None
    wanted = {k.lower(): v for k, v in replaced.items()}
    # The entry that already names each reference, per runtime source: where a replaced entry merges.
    holder: dict[tuple[str, str], str] = {}
    for key, entry in refs.items():
        name = _logical_name(entry) if isinstance(entry, dict) else None
        if name and name.lower() not in wanted:
            holder.setdefault((name.lower(), _source(entry)), key)
    renamed: dict[str, str] = {}
    changed = False
    for key in list(refs):
        entry = refs[key]
        name = _logical_name(entry) if isinstance(entry, dict) else None
        if not name or name.lower() not in wanted:
            continue
        target = wanted[name.lower()]
        changed = True
        into = holder.get((target.lower(), _source(entry)))
        if into is not None and into != key:
            del refs[key]
            renamed[key] = into
        else:
            _set_logical_name(entry, target)
            holder.setdefault((target.lower(), _source(entry)), key)
    if not changed:
        return None
    _rename_keys(props.get("definition"), renamed)
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def logical_names(clientdata: str | None) -> tuple[str, ...]:
    """The reference logical names the definition uses, each once (first spelling), in order."""
    seen: dict[str, str] = {}
    for c in connections(clientdata):
        if c.logical_name:
            seen.setdefault(c.logical_name.lower(), c.logical_name)
    return tuple(seen.values())
